"""Step 3 of the pass: the arithmetic each lowered convolution is replaced with, as eager code.

Each strategy is a plain function ``(input, weight, bias, spec) -> output`` built only from
unfold/view/reshape/matmul/add/pad: no convolution op anywhere.  The pass traces the chosen
function with the conv's :class:`~lowerconv.spec.ConvSpec` fixed and splices the resulting nodes
into the model's graph, so what runs in the lowered model is exactly the code below, and each
strategy can be tested against ``F.conv2d`` on its own.

Every function indexes dimensions from the end, so one lowered graph serves batched ``(N, C, H,
W)`` and unbatched ``(C, H, W)`` inputs, and any batch or spatial size: nothing about the
input's shape is baked in.

Strategies:

``unfold``
    The textbook lowering: ``F.unfold`` (im2col) to ``(N, C*kh*kw, OH*OW)``, a matmul with the
    weight flattened to ``(C_out, C*kh*kw)``, then a reshape to ``(N, C_out, OH, OW)``.
``strided``
    The same product, with the im2col buffer gathered from strided views (``Tensor.unfold``)
    and one copy, in ``(N, OH, OW, C*kh*kw)`` order; the matmul is one large GEMM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F

from .spec import ConvSpec, conv_output_size

__all__ = [
    "STRATEGIES",
    "StrategyFn",
    "conv_output_width",
    "strided_conv2d",
    "unfold_conv2d",
]

StrategyFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", ConvSpec], torch.Tensor]


def conv_output_width(input: torch.Tensor, kernel: int, stride: int, padding: int, dilation: int):
    """The convolution's output width for this input, read from its shape at run time."""
    return conv_output_size(input.shape[-1], kernel, stride, padding, dilation)


# One readable node in the lowered graph instead of the shape arithmetic spelled out, printed
# in generated code under its own name with an import rather than a mangled global.
torch.fx.wrap("conv_output_width")
try:
    from torch.fx.graph import _register_custom_builtin

    _register_custom_builtin(
        "conv_output_width", "from lowerconv.strategies import conv_output_width", conv_output_width
    )
except ImportError:  # private API; without it the code still runs, under a longer name
    pass


def _pad_mode(spec: ConvSpec) -> str:
    return "constant" if spec.padding_mode == "zeros" else spec.padding_mode


def unfold_conv2d(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    """Conv2d as ``F.unfold`` + matmul + reshape."""
    padding = spec.symmetric_padding
    if padding is None:
        # Reflect/replicate/circular modes and asymmetric 'same' padding need a real pad.
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
        padding = (0, 0)
    unfold = F.unfold(
        input, spec.kernel_size, dilation=spec.dilation, padding=padding, stride=spec.stride
    )
    if spec.groups == 1:
        weight_matrix = weight.flatten(1)
    else:
        # Unfold orders rows channel-major, so each group's rows are one contiguous block.
        weight_matrix = weight.reshape(spec.groups, spec.out_per_group, spec.patch_size)
        unfold = unfold.unflatten(-2, (spec.groups, spec.patch_size))
    matmul = torch.matmul(weight_matrix, unfold)
    if spec.groups > 1:
        matmul = matmul.flatten(-3, -2)
    if bias is not None:
        matmul = matmul + bias.unsqueeze(-1)
    out_width = conv_output_width(
        input,
        spec.kernel_size[1],
        spec.stride[1],
        2 * padding[1],
        spec.dilation[1],
    )
    reshape = matmul.unflatten(-1, (-1, out_width))
    return reshape


def strided_conv2d(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    """Conv2d as strided-view im2col (``Tensor.unfold``) + one GEMM + a layout permute."""
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    # (..., C, H, W) -> (..., C, OH, OW, kh, kw), all views of the input.
    patches = input.unfold(-2, dh * (kh - 1) + 1, sh).unfold(-2, dw * (kw - 1) + 1, sw)
    if (dh, dw) != (1, 1):
        patches = patches[..., ::dh, ::dw]
    g = spec.groups
    patches = patches.unflatten(-5, (g, spec.in_per_group))
    # The one copy: (..., g, OH, OW, C/g * kh * kw), the im2col buffer in row-per-pixel order.
    im2col = patches.movedim(-5, -3).flatten(-3)
    weight_matrix = weight.reshape(g, spec.out_per_group, spec.patch_size).transpose(-1, -2)
    matmul = torch.matmul(im2col, weight_matrix.unsqueeze(-3))
    if bias is not None:
        matmul = matmul + bias.reshape(g, 1, 1, spec.out_per_group)
    # (..., g, OH, OW, C_out/g) -> (..., C_out, OH, OW)
    reshape = matmul.movedim(-1, -3).flatten(-4, -3)
    return reshape


STRATEGIES: dict[str, StrategyFn] = {
    "unfold": unfold_conv2d,
    "strided": strided_conv2d,
}


def choose_strategy(spec: ConvSpec) -> str:
    """The concrete strategy ``"auto"`` uses for one conv."""
    return "strided"
