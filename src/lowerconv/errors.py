"""The one error type lowerconv raises for a user's mistake or a model it cannot handle."""

from __future__ import annotations

__all__ = ["LoweringError"]


class LoweringError(Exception):
    """A model, argument or graph that lowerconv cannot lower, with where, what and how to fix it.

    Messages name the model, the module or node involved, the offending values, and a fix.
    """
