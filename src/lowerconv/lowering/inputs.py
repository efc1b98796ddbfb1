"""A model's example inputs, as the tuple of its positional arguments, checked once.

:func:`~.lower.lower` runs a model on them to list the convolutions lowered at run time and
captures it on them on the export tier; :func:`~.export.export_lowered` exports on them, and the
verifier (:func:`lowerconv.verify`) runs every copy on them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..errors import LoweringError

__all__ = ["normalize_example_inputs"]


def normalize_example_inputs(model: nn.Module, example_inputs: Any) -> tuple:
    """``example_inputs`` as the tuple of ``model``'s positional arguments (one tensor becomes a
    1-tuple, a list a tuple); anything else is a :class:`LoweringError` with the fix."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if not isinstance(inputs, tuple):
        raise LoweringError(
            f"example_inputs for {type(model).__name__} must be a tensor or a tuple of tensors "
            f"(the model's positional arguments), got {type(example_inputs).__name__}; e.g. "
            "(torch.randn(1, 3, 224, 224),)"
        )
    for i, leaf in enumerate(pytree.tree_leaves(inputs)):
        if not isinstance(leaf, torch.Tensor | int | float | bool | str | type(None)):
            raise LoweringError(
                f"example_inputs for {type(model).__name__}: leaf {i} is a "
                f"{type(leaf).__name__}; pass tensors (and plain Python values) only"
            )
    return inputs
