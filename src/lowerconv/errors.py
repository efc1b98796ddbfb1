"""The two error types lowerconv raises, in a module of their own so any module can import them.

:class:`LoweringError` is a user's mistake or a model lowerconv cannot handle;
:class:`VerificationError` is a lowered model that does not match its original.
"""

from __future__ import annotations

__all__ = ["LoweringError", "VerificationError"]


class LoweringError(Exception):
    """A model, argument or graph that lowerconv cannot lower, with where, what and how to fix it.

    Messages name the model, the module or node involved, the offending values, and a fix.
    """


class VerificationError(AssertionError):
    """A lowered model that does not match its original; raised by ``report.raise_if_failed()``.

    An ``AssertionError``, so pytest shows it as a failed assertion.  The message names the
    first failing layer by its original qualified name, with its errors and their bound.
    """
