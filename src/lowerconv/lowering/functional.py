"""Eager im2col convolutions of every kind: ``F.conv*``'s signatures, no convolution op.

Lowered graphs call these for a convolution whose weight is only known at run time (a weight
computed from the input), run-time lowering sends a model's ``F.conv*`` calls here, and they are
handy on their own, to compare strategies.  Each takes the matching ``torch.nn.functional``
function's arguments plus ``padding_mode`` (non-transposed kinds), ``strategy`` and
``max_workspace_bytes``, and computes the same result by the strategies of
:mod:`lowerconv.lowering.strategies`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import LoweringError
from .spec import ConvSpec, kind_of
from .strategies import STRATEGIES, StrategyOptions, strategy_function

__all__ = [
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "convolution",
]

Size = int | Sequence[int]


def convolution(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: Size = 1,
    padding: str | Size = 0,
    dilation: Size = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    output_padding: Size = 0,
    strategy: str = "unfold",
    max_workspace_bytes: int | None = None,
    target: str | None = None,
) -> torch.Tensor:
    """Any convolution, its kind read from the weight's dimensions and ``transposed``.

    ``strategy="auto"`` plans for the input's device (``target`` forces one: see
    :func:`lowerconv.lower`)."""
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
        transposed=transposed,
        output_padding=output_padding,
    )
    _check_input(input, weight, spec)
    options = StrategyOptions(max_workspace_bytes=max_workspace_bytes, target=target)
    return strategy_function(strategy)(input, weight, bias, spec, options)


def _check_input(input: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> None:
    n = spec.ndim
    if input.dim() not in (n + 1, n + 2):
        raise ValueError(
            f"{spec.kind} takes a {n + 1}-D (unbatched) or {n + 2}-D (batched) input, got "
            f"shape {tuple(input.shape)} (PyTorch refuses it too)"
        )
    channels = input.shape[-n - 1]
    if channels != spec.in_channels:
        raise ValueError(
            f"{spec.kind}: input has {channels} channels (shape {tuple(input.shape)}) but the "
            f"weight {tuple(weight.shape)} with groups={spec.groups} expects {spec.in_channels}"
        )


def _functional(ndim: int, transposed: bool):
    kind = kind_of(ndim, transposed)
    if transposed:

        def conv(
            input: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor | None = None,
            stride: Size = 1,
            padding: Size = 0,
            output_padding: Size = 0,
            groups: int = 1,
            dilation: Size = 1,
            *,
            strategy: str = "unfold",
            max_workspace_bytes: int | None = None,
        ) -> torch.Tensor:
            _check_weight(weight, ndim, kind)
            return convolution(
                input,
                weight,
                bias,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                transposed=True,
                output_padding=output_padding,
                strategy=strategy,
                max_workspace_bytes=max_workspace_bytes,
            )

    else:

        def conv(
            input: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor | None = None,
            stride: Size = 1,
            padding: str | Size = 0,
            dilation: Size = 1,
            groups: int = 1,
            *,
            padding_mode: str = "zeros",
            strategy: str = "unfold",
            max_workspace_bytes: int | None = None,
        ) -> torch.Tensor:
            _check_weight(weight, ndim, kind)
            return convolution(
                input,
                weight,
                bias,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                padding_mode=padding_mode,
                strategy=strategy,
                max_workspace_bytes=max_workspace_bytes,
            )

    conv.__name__ = conv.__qualname__ = kind
    conv.__doc__ = (
        f"``F.{kind}`` by im2col + matmul{' + col2im' if transposed else ''}, no convolution op."
    )
    return conv


def _check_weight(weight: torch.Tensor, ndim: int, kind: str) -> None:
    if weight.dim() != ndim + 2:
        raise ValueError(
            f"{kind} takes a {ndim + 2}-D weight, got shape {tuple(weight.shape)} "
            "(PyTorch refuses it too)"
        )


conv1d = _functional(1, False)
conv2d = _functional(2, False)
conv3d = _functional(3, False)
conv_transpose1d = _functional(1, True)
conv_transpose2d = _functional(2, True)
conv_transpose3d = _functional(3, True)
conv2d.__doc__ = """``F.conv2d(input, weight, bias, stride, padding, dilation, groups)`` by im2col + matmul.

    >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    >>> torch.allclose(conv2d(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5)
    True
    """
