"""Run-time kernels that the fast strategies call as single graph nodes.

The strategies in :mod:`lowerconv.lowering.strategies` are traced into the model's graph op by
op.  A few steps cannot be traced that way, because what they do depends on the tensors at run
time; each is one function here, kept a leaf of the graph with :func:`torch.fx.wrap`:

:func:`gemm`
    ``a @ b.T + bias``: the one matrix product of a lowered convolution, by oneDNN's matmul or
    by BLAS (:mod:`.engine` says which, and why); never a convolution op.
:func:`im2col_gemm`
    A whole channels-last im2col convolution, computed in chunks of images or output rows so
    that each chunk's im2col buffer stays under a byte limit (see :func:`plan_chunks`).
:func:`pointwise_gemm`
    A 1x1 convolution as one GEMM per image on the NCHW planes as they lie in memory.
:func:`tap_gemms`
    A stride-1 one-group convolution as one GEMM per kernel tap, each on a shifted view of the
    flattened padded input, summed in place: no im2col buffer at all.
:func:`depthwise_taps`
    A depthwise convolution as a sum of shifted views times per-channel weights, in blocks of
    planes that fit the cache.

The last four compute by their namesakes in :mod:`.plain_kernels`, given the conv's
:class:`~.tiling.ConvGeometry`.  A call that needs a gradient (eager, float32 or float64) runs
that code with gradients off inside
:class:`~lowerconv.lowering.autograd.GemmConv2d`, whose backward is GEMMs and col2im rather than
autograd through the gathers; a tracer's call records the plain ops.

Nothing here knows about ``torch.fx``; every function is plain eager PyTorch.
"""

from __future__ import annotations

import torch

from . import plain_kernels
from .autograd import GemmConv2d, recording_plain_ops
from .engine import GRAD_DTYPES, gemm, needs_grad, traced
from .engine import without_autograd as without_autograd  # a name of this module in 0.1
from .tiling import (
    DEFAULT_WORKSPACE_BYTES,
    ChunkPlan,
    ConvGeometry,
    chunk_limit,
    input_window,
    output_tiles,
    plan_chunks,
)

# DEFAULT_WORKSPACE_BYTES, ChunkPlan, chunk_limit, input_window, output_tiles, plan_chunks and
# gemm live in .tiling and .engine; they stay names of this module, as in lowerconv 0.1.
__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "ChunkPlan",
    "chunk_limit",
    "depthwise_taps",
    "gemm",
    "gemm_backward",
    "im2col_gemm",
    "input_window",
    "output_tiles",
    "plan_chunks",
    "pointwise_gemm",
    "tap_gemms",
]


def gemm_backward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether this call gets :class:`~lowerconv.lowering.autograd.GemmConv2d`'s backward: eager
    calls that need a gradient, in a dtype its formulas serve (tracers differentiate the plain
    ops)."""
    return (
        needs_grad(input, weight, bias)
        and not recording_plain_ops()
        and not traced(input, weight, bias)
        and input.dtype in GRAD_DTYPES
        and weight.dtype == input.dtype
        and (bias is None or bias.dtype == input.dtype)
    )


def _leaf(
    name: str,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
) -> torch.Tensor:
    """``plain_kernels.<name>(input, weight, bias, geometry)``, run inside
    :class:`~.autograd.GemmConv2d` when an eager call needs a gradient (:func:`gemm_backward`).

    The arithmetic is looked up when called, so that a patched ``plain_kernels`` is what runs.
    """
    arithmetic = getattr(plain_kernels, name)
    if not gemm_backward(input, weight, bias):
        return arithmetic(input, weight, bias, geometry)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)

    def compute(x, w, b):
        return arithmetic(x, w, b, geometry)

    result = GemmConv2d.apply(input, weight, bias, geometry, compute)
    return result.squeeze(0) if unbatched else result


def im2col_gemm(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    zero_pad: tuple[int, int, int, int],
    max_workspace_bytes: int | None,
) -> torch.Tensor:
    """A one-group convolution as channels-last im2col + :func:`gemm`, in chunks of at most
    :func:`chunk_limit` bytes (:func:`.plain_kernels.im2col_gemm`)."""
    limit = chunk_limit(input.device, max_workspace_bytes)
    geometry = ConvGeometry(kernel_size, stride, dilation, zero_pad, 1, limit)
    return _leaf("im2col_gemm", input, weight, bias, geometry)


def tap_gemms(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    zero_pad: tuple[int, int, int, int],
    groups: int = 1,
    max_workspace_bytes: int | None = None,
) -> torch.Tensor:
    """A convolution as ``kh*kw`` GEMMs on shifted views of its input, summed in place
    (:func:`.plain_kernels.tap_gemms`); ``max_workspace_bytes`` caps the im2col GEMM it hands
    small outputs to on CPU."""
    limit = chunk_limit(input.device, max_workspace_bytes)
    geometry = ConvGeometry(kernel_size, stride, dilation, zero_pad, groups, limit)
    return _leaf("tap_gemms", input, weight, bias, geometry)


def pointwise_gemm(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """A one-group 1x1 convolution, ``weight (C_out, C) @ input (..., C, H*W)``
    (:func:`.plain_kernels.pointwise_gemm`), with :class:`~.autograd.GemmConv2d`'s backward when
    an eager call on a batched input needs a gradient (:func:`gemm_backward`)."""
    if gemm_backward(input, weight, bias) and input.dim() == 4:
        geometry = ConvGeometry((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1, 0)
        return GemmConv2d.apply(input, weight, bias, geometry, pointwise_gemm)
    return plain_kernels.pointwise_gemm(input, weight, bias)


def depthwise_taps(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    zero_pad: tuple[int, int, int, int],
) -> torch.Tensor:
    """A depthwise convolution (``groups == C``, ``C_out = m*C``) as a sum over kernel taps
    (:func:`.plain_kernels.depthwise_taps`)."""
    kernel_size, stride, dilation, zero_pad = map(tuple, (kernel_size, stride, dilation, zero_pad))
    # input.shape[-3]: the channels, batched or not.
    geometry = ConvGeometry(kernel_size, stride, dilation, zero_pad, input.shape[-3], 0)
    return _leaf("depthwise_taps", input, weight, bias, geometry)
