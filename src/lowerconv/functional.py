"""Eager im2col convolution: ``F.conv2d``'s signature, computed without any convolution op.

Lowered graphs call :func:`conv2d` for a convolution whose weight is only known at run time
(a weight computed from the input); it is also handy on its own, to compare strategies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import LoweringError
from .spec import ConvSpec
from .strategies import STRATEGIES, StrategyOptions, choose_strategy

__all__ = ["conv2d"]


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    strategy: str = "unfold",
    max_workspace_bytes: int | None = None,
) -> torch.Tensor:
    """``F.conv2d(input, weight, bias, stride, padding, dilation, groups)`` by im2col + matmul.

    >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    >>> torch.allclose(conv2d(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5)
    True
    """
    if strategy not in STRATEGIES and strategy != "auto":
        valid = ", ".join(repr(s) for s in (*STRATEGIES, "auto"))
        raise LoweringError(f"unknown strategy {strategy!r}; valid strategies: {valid}")
    spec = ConvSpec.from_conv_args(
        weight.shape,
        bias=bias is not None,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )
    if strategy == "auto":
        strategy = choose_strategy(spec)
    options = StrategyOptions(max_workspace_bytes=max_workspace_bytes)
    return STRATEGIES[strategy](input, weight, bias, spec, options)
