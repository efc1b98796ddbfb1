"""The error types lowerconv raises, in a module of their own so any module can import them.

:class:`LoweringError` is a user's mistake or a model lowerconv cannot handle (and
:class:`MissingDependencyError`, one of them, a package that is missing or does not import);
:class:`VerificationError` is a lowered model that does not match its original.
:func:`with_article` words a value's type in their messages.
"""

from __future__ import annotations

__all__ = ["LoweringError", "MissingDependencyError", "VerificationError", "with_article"]


class LoweringError(Exception):
    """A model, argument or graph that lowerconv cannot lower, with where, what and how to fix it.

    Messages name the model, the module or node involved, the offending values, and a fix.
    """


class MissingDependencyError(LoweringError):
    """A package lowerconv needs for what was asked is not installed, or fails to import.

    The message leads with the install command.  Nothing about the model is wrong: the command
    line exits 2 (an environment error), never 1 (a mismatch).
    """


def with_article(value: object) -> str:
    """``"an int"``, ``"a Tensor"``, ``"an OrderedDict"``: ``value``'s type for a message."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiouAEIO' else 'a'} {name}"


class VerificationError(AssertionError):
    """A lowered model that does not match its original; raised by ``report.raise_if_failed()``.

    An ``AssertionError``, so pytest shows it as a failed assertion.  The message names the
    first failing layer by its original qualified name, with its errors and their bound.
    """
