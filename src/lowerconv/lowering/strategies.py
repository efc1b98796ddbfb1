"""Step 3 of the pass: the arithmetic each lowered convolution is replaced with, as eager code.

Each strategy is a plain function ``(input, weight, bias, spec, options=None) -> output`` built
only from unfold/view/reshape/matmul/add/pad: no convolution op anywhere.  The pass traces the
chosen function with the conv's :class:`~lowerconv.lowering.spec.ConvSpec` (and
:class:`StrategyOptions`) fixed and splices the resulting nodes into the model's graph, so what runs
in the lowered model is exactly the code below, and each strategy can be tested against ``F.conv2d``
on its own.

Every function indexes dimensions from the end, so one lowered graph serves batched ``(N, C, H,
W)`` and unbatched ``(C, H, W)`` inputs, and any batch or spatial size: nothing about the
input's shape is baked in.  Every strategy computes every convolution; the specialised ones
hand the configurations they are not for to a general one (named below).  Each returns a
contiguous ``(N, C_out, OH, OW)`` tensor.

Strategies:

``unfold``
    The textbook lowering: ``F.unfold`` (im2col) to ``(N, C*kh*kw, OH*OW)``, a matmul with the
    weight flattened to ``(C_out, C*kh*kw)``, then a reshape to ``(N, C_out, OH, OW)``.
``strided``
    The same product, with the im2col buffer gathered from strided views (``Tensor.unfold``)
    and one copy, in ``(N, OH, OW, C*kh*kw)`` order; the matmul is one large GEMM.
``nhwc``
    Channels-last im2col: the input is copied once to ``(N, H, W, C)`` order (free if it is
    channels-last already), so that each patch is ``kh*kw`` contiguous runs of ``C`` values,
    gathered chunk by chunk (of images or output rows, at most
    :data:`~lowerconv.lowering.tiling.DEFAULT_WORKSPACE_BYTES` each) and multiplied by
    :func:`~lowerconv.lowering.engine.gemm`, oneDNN's matmul on CPU float32.  One graph node,
    :func:`~lowerconv.lowering.kernels.im2col_gemm`, does the chunked part.  Grouped convs:
    ``nchw``.
``taps``
    No im2col at all: a conv is the sum over its ``kh*kw`` kernel taps of ``W[:, :, i, j]
    (C_out, C) @`` a shifted view of the flattened, padded input (split into its stride's
    phases first, one copy), one GEMM per tap and image (a batched one per group) added in
    place into a "wide" output (:func:`~lowerconv.lowering.kernels.tap_gemms`).  On CPU, a one-group
    conv with an output under 28x28 pixels runs ``nhwc``'s im2col instead (its GEMMs would be
    too thin), and so does every one-group float32 conv where float32 GEMMs run on oneDNN
    (:func:`~lowerconv.lowering.plain_kernels.taps_hand_off`).  Depthwise convs: ``depthwise``.
``nchw``
    Channel-major im2col from strided views of the NCHW input, chunk by chunk, each chunk's
    columns in ``(g, C/g*kh*kw, OH*OW)`` order so that one matmul per group writes the NCHW
    output directly (no transposes).  For grouped convs and patches of few values.
``pointwise``
    A 1x1 convolution is a matmul on a reshape: ``weight (C_out, C) @ input (N, C, H*W)``, one
    GEMM per image on the planes as they lie (:func:`~lowerconv.lowering.kernels.pointwise_gemm`),
    and the output is already ``(N, C_out, H*W)``; a strided one slices the input first.  Other
    kernels: ``nhwc``.
``patchify``
    Kernel equal to stride with no padding (a ViT patch embedding): the input is split into
    patches by reshape + permute (one copy of the input, no overlap) and multiplied by
    :func:`~lowerconv.lowering.engine.gemm`.  Other configurations: ``nhwc``.
``depthwise``
    ``groups == in_channels`` (with any channel multiplier): the sum over the ``kh*kw`` kernel
    taps of a shifted view of the input times a per-channel weight
    (:func:`~lowerconv.lowering.kernels.depthwise_taps`), so there is no ``kh*kw``-times buffer at
    all.  Other configurations: ``nhwc``.
``auto`` (not a function here)
    :func:`choose_strategy` picks one of the above per convolution, by rule.

:class:`StrategyOptions` carries what is not part of the convolution itself:
``max_workspace_bytes`` caps every im2col buffer (strategies that build one then compute in
chunks with :func:`run_in_chunks`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.fx
import torch.nn.functional as F

from . import cuda_plan, engine, nd
from .autograd import GemmConv2d
from .engine import gemm, needs_grad, traced, without_autograd
from .kernels import (
    depthwise_taps,
    gemm_backward,
    im2col_gemm,
    pointwise_gemm,
    tap_gemms,
)
from .nd import flipped_kernel
from .plain_kernels import ROW_GEMMS_MIN_PIXELS, taps_hand_off
from .spec import ConvSpec, conv_output_size
from .tiling import (
    ConvGeometry,
    chunk_limit,
    input_window,
    output_tiles,
    plan_chunks,
    to_phases,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "TARGETS",
    "StrategyFn",
    "StrategyOptions",
    "auto_conv",
    "choose_strategy",
    "chunk_arithmetic",
    "conv2d_strategy",
    "conv_output_width",
    "cuda_conv2d",
    "depthwise_conv2d",
    "flipped_kernel",
    "graph_leaves",
    "nchw_conv2d",
    "nhwc_conv2d",
    "patchify_conv2d",
    "planned_conv",
    "pointwise_conv2d",
    "resolve_auto",
    "run_in_chunks",
    "strategy_function",
    "strided_conv2d",
    "taps_conv2d",
    "unfold_conv2d",
]


@dataclass(frozen=True)
class StrategyOptions:
    """Options of a lowering that change the emitted code but are not part of the conv.

    ``max_workspace_bytes``: the largest im2col buffer one lowered conv may allocate; ``None``
    lets ``unfold``, ``strided`` and ``patchify`` build theirs whole.  Frozen and hashable: it is
    part of the key under which traced strategies are cached.
    """

    max_workspace_bytes: int | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        cap = self.max_workspace_bytes
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
            raise ValueError(f"max_workspace_bytes must be a positive int or None, got {cap!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")


# ``target=None``: each call follows its input's device; "cpu"/"cuda": that device's plan always.
TARGETS = (None, "cpu", "cuda")


DEFAULT_OPTIONS = StrategyOptions()

StrategyFn = Callable[..., torch.Tensor]


def conv_output_width(input: torch.Tensor, kernel: int, stride: int, padding: int, dilation: int):
    """The convolution's output width for this input, read from its shape at run time."""
    return conv_output_size(input.shape[-1], kernel, stride, padding, dilation)


def conv_output_height(input: torch.Tensor, kernel: int, stride: int, padding: int, dilation: int):
    """The convolution's output height for this input, read from its shape at run time."""
    return conv_output_size(input.shape[-2], kernel, stride, padding, dilation)


def _pad_mode(spec: ConvSpec) -> str:
    return "constant" if spec.padding_mode == "zeros" else spec.padding_mode


def _pad_unless_zeros(
    input: torch.Tensor, spec: ConvSpec
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The input padded now if its padding mode is not zeros, and the zero padding the kernel
    still has to apply (none then): the eager kernels add zeros themselves, never other modes."""
    if spec.padding_mode != "zeros" and any(spec.pad):
        return F.pad(input, spec.pad, mode=_pad_mode(spec)), (0, 0, 0, 0)
    return input, spec.pad


def _workspace_cap(options: StrategyOptions | None) -> int | None:
    return None if options is None else options.max_workspace_bytes


def run_in_chunks(
    strategy: str,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    max_workspace_bytes: int | None,
    cache_chunks: bool = False,
) -> torch.Tensor:
    """The convolution by ``strategy``, computed chunk by chunk of images or output rows so that
    no chunk's im2col buffer (``pixels * in_channels*kh*kw`` values) exceeds
    ``max_workspace_bytes`` (see :func:`~lowerconv.lowering.tiling.plan_chunks`); with
    ``cache_chunks``, on CPU, not :data:`~lowerconv.lowering.tiling.DEFAULT_WORKSPACE_BYTES`
    either.

    The input is padded once; each chunk of it (with the rows the kernel overlaps) runs through
    the strategy's eager arithmetic with a spec that pads nothing, into its place in the output.
    """
    compute = _CHUNK_ARITHMETIC[strategy]
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    unpadded = replace(spec, pad=(0, 0, 0, 0), padding_mode="zeros")
    if gemm_backward(input, weight, bias):
        # Gradients by GEMMs and col2im (lowerconv.lowering.autograd), not through the chunk loop.
        limit = chunk_limit(input.device, max_workspace_bytes)
        geometry = ConvGeometry(
            spec.kernel_size, spec.stride, spec.dilation, (0, 0, 0, 0), spec.groups, limit
        )

        def compute(x, w, b):
            return run_in_chunks(strategy, x, w, b, unpadded, max_workspace_bytes, cache_chunks)

        result = GemmConv2d.apply(input, weight, bias, geometry, compute)
        return result.squeeze(0) if unbatched else result
    input, weight, bias = without_autograd(input, weight, bias)
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    n, _, hp, wp = input.shape
    out_h, out_w = (hp - span_h) // sh + 1, (wp - span_w) // sw + 1
    patch = spec.in_channels * kh * kw
    limit = max_workspace_bytes if max_workspace_bytes is not None else sys.maxsize
    if cache_chunks:
        limit = chunk_limit(input.device, max_workspace_bytes)
    plan = plan_chunks(n, out_h, out_w, patch, input.element_size(), limit)
    if plan.chunks <= 1:
        result = compute(input, weight, bias, unpadded)
    else:
        # Autograd records the writes into this fresh tensor as copies into slices.
        dtype = torch.result_type(input, weight)
        result = input.new_empty((n, spec.out_channels, out_h, out_w), dtype=dtype)
        for images, rows, cols in output_tiles(plan, n, out_h, out_w):
            tile = input[images, :, input_window(rows, sh, span_h), input_window(cols, sw, span_w)]
            result[images, :, rows, cols] = compute(tile, weight, bias, unpadded)
    return result.squeeze(0) if unbatched else result


def unfold_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """Conv2d as ``F.unfold`` + matmul + reshape."""
    cap = _workspace_cap(options)
    if cap is not None:
        return run_in_chunks("unfold", input, weight, bias, spec, cap)
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
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """Conv2d as strided-view im2col (``Tensor.unfold``) + one GEMM + a layout permute."""
    cap = _workspace_cap(options)
    if cap is not None:
        return run_in_chunks("strided", input, weight, bias, spec, cap)
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


def nhwc_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """Conv2d as channels-last im2col + GEMM, in chunks of bounded size (one graph node)."""
    if spec.groups > 1:
        return nchw_conv2d(input, weight, bias, spec, options)
    input, zero_pad = _pad_unless_zeros(input, spec)
    cap = _workspace_cap(options)
    return im2col_gemm(
        input, weight, bias, spec.kernel_size, spec.stride, spec.dilation, zero_pad, cap
    )


def taps_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """A conv as one GEMM per kernel tap on shifted views of the padded input (split into its
    stride's phases first), summed in place (one graph node,
    :func:`~lowerconv.lowering.kernels.tap_gemms`): no im2col buffer."""
    if spec.is_depthwise:
        return depthwise_conv2d(input, weight, bias, spec, options)
    input, zero_pad = _pad_unless_zeros(input, spec)
    cap = _workspace_cap(options)
    kernel, stride, dilation, groups = spec.kernel_size, spec.stride, spec.dilation, spec.groups
    return tap_gemms(input, weight, bias, kernel, stride, dilation, zero_pad, groups, cap)


def nchw_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """Conv2d as channel-major im2col + one matmul per group, in chunks of bounded size.

    Each chunk's columns are gathered from strided views of the NCHW input into ``(g,
    C/g*kh*kw, OH*OW)`` order, so ``weight (g, C_out/g, C/g*kh*kw) @ columns`` is already the
    chunk's NCHW output: no transposes, which is what pays for grouped convs and for patches of
    few values (a 3-channel stem).
    """
    return run_in_chunks("nchw", input, weight, bias, spec, _workspace_cap(options), True)


def _nchw_columns_matmul(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    # Eager, on one chunk of an already padded input.
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    patches = input.unfold(-2, dh * (kh - 1) + 1, sh).unfold(-2, dw * (kw - 1) + 1, sw)
    if (dh, dw) != (1, 1):
        patches = patches[..., ::dh, ::dw]
    out_h, out_w = patches.shape[-4], patches.shape[-3]
    if _phase_gather(input, weight, bias, spec):
        columns = _phase_columns(input, spec.kernel_size, spec.stride, out_h, out_w)
        columns = columns.flatten(-5, -3).flatten(-2).unsqueeze(-3)
    else:
        # (..., C, OH, OW, kh, kw) -> (..., g, C/g*kh*kw, OH*OW): each group's rows are one
        # block, and the product of each group is its slice of the NCHW output.
        columns = patches.movedim((-2, -1), (-4, -3)).flatten(-4, -3).flatten(-2)
        columns = columns.unflatten(-3, (spec.groups, spec.in_per_group)).flatten(-3, -2)
    weight_matrix = weight.reshape(spec.groups, spec.out_per_group, spec.patch_size)
    out = torch.matmul(weight_matrix, columns).flatten(-3, -2)
    if bias is not None:
        out = out + bias.unsqueeze(-1)
    return out.unflatten(-1, (out_h, out_w))


def _phase_gather(input, weight, bias, spec: ConvSpec) -> bool:
    """Whether a strided stem's columns are gathered from its input's phases (eager calls):
    where at least four taps share each phase on average (measured: a 7x7 stride-2 stem at batch
    8 ran 1.2x native this way and 1.7x without; a 3x3 stride-2 one ran 2.2x against 1.6x)."""
    (kh, kw), (sh, sw) = spec.kernel_size, spec.stride
    return (
        spec.stride != (1, 1)
        and kh * kw >= 4 * sh * sw
        and spec.dilation == (1, 1)
        and spec.groups == 1
        and spec.in_channels <= _FEW_CHANNELS
        and input.dim() == 4
        and not needs_grad(input, weight, bias)
        and not traced(input, weight, bias)
    )


def _phase_columns(
    input: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    out_h: int,
    out_w: int,
) -> torch.Tensor:
    """A padded ``(N, C, Hp, Wp)`` input's ``(N, C, kh, kw, OH, OW)`` im2col columns, gathered
    from its ``sh x sw`` phases: one copy splits the input into phases, then each phase's taps
    are one copy of contiguous rows, where a gather straight from strided views reads every
    ``sw``-th value of each row, which does not vectorise."""
    n, channels, hp, wp = input.shape
    (kh, kw), (sh, sw) = kernel_size, stride
    hq, wq = -(-hp // sh), -(-wp // sw)
    # (N, C, sh, sw, hq, wq): phase (a, b) holds padded rows a, a+sh, ... and columns b, b+sw, ...
    geometry = ConvGeometry(kernel_size, stride, (1, 1), (0, 0, 0, 0), 1, 0)
    phases = to_phases(input.reshape(n * channels, hp, wp), geometry, hq, wq)
    phases = phases.reshape(n, channels, sh, sw, hq, wq)
    columns = input.new_empty((n, channels, kh, kw, out_h, out_w))
    for a in range(min(sh, kh)):
        for b in range(min(sw, kw)):
            # Taps (a + q*sh, b + r*sw) read phase (a, b) from row q and column r on.
            windows = phases[:, :, a, b].unfold(-2, out_h, 1).unfold(-2, out_w, 1)
            taps_h, taps_w = len(range(a, kh, sh)), len(range(b, kw, sw))
            columns[:, :, a::sh, b::sw] = windows[:, :, :taps_h, :taps_w]
    return columns


def pointwise_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """A 1x1 conv as ``weight (C_out, C) @ input (..., C, H*W)``: no im2col at all."""
    if spec.kernel_size != (1, 1):
        return nhwc_conv2d(input, weight, bias, spec, options)
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    if spec.stride != (1, 1):
        input = input[..., :: spec.stride[0], :: spec.stride[1]]
    g = spec.groups
    if g == 1:
        return pointwise_gemm(input, weight, bias)
    flat = input.flatten(-2).unflatten(-2, (g, spec.in_per_group))
    weight_matrix = weight.reshape(g, spec.out_per_group, spec.in_per_group)
    matmul = torch.matmul(weight_matrix, flat).flatten(-3, -2)
    if bias is not None:
        matmul = matmul + bias.unsqueeze(-1)
    return matmul.unflatten(-1, input.shape[-2:])


def patchify_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """Kernel == stride, no padding: patches by reshape + permute, then one GEMM."""
    if not spec.is_patchify or spec.groups > 1:
        return nhwc_conv2d(input, weight, bias, spec, options)
    cap = _workspace_cap(options)
    if cap is not None:
        return run_in_chunks("patchify", input, weight, bias, spec, cap)
    kh, kw = spec.kernel_size
    out_h, out_w = input.shape[-2] // kh, input.shape[-1] // kw
    # Rows and columns that no patch covers are dropped, as the convolution drops them.
    input = input[..., : out_h * kh, : out_w * kw]
    # (..., C, OH, kh, OW, kw) -> (..., OH, OW, C, kh, kw): each patch is kh runs of kw values.
    patches = input.unflatten(-1, (out_w, kw)).unflatten(-3, (out_h, kh))
    patches = patches.movedim(-4, -5).movedim(-2, -4)
    rows = patches.flatten(-3)
    matmul = gemm(rows, weight.flatten(1), bias)
    return matmul.movedim(-1, -3).contiguous()


def depthwise_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """``groups == in_channels``: the sum over kernel taps of shifted input views times weights
    (:func:`~lowerconv.lowering.kernels.depthwise_taps`): ``kh*kw`` multiply-adds over output-sized
    tensors, and no im2col buffer at all."""
    if not spec.is_depthwise:
        return nhwc_conv2d(input, weight, bias, spec, options)
    input, zero_pad = _pad_unless_zeros(input, spec)
    return depthwise_taps(
        input, weight, bias, spec.kernel_size, spec.stride, spec.dilation, zero_pad
    )


def cuda_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """The CUDA plan (:mod:`lowerconv.lowering.cuda_plan`) for any convolution, on any device: a few
    batch-wide ops (pad, one gather copy, one batched GEMM), one graph node
    (:func:`planned_conv`)."""
    return planned_conv(input, weight, bias, spec, _workspace_cap(options))


def planned_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    max_workspace_bytes: int | None = None,
) -> torch.Tensor:
    """:func:`lowerconv.lowering.cuda_plan.cuda_conv`, unless its intermediate would exceed the workspace
    limit (the cap, and on a GPU :func:`~lowerconv.lowering.cuda_plan.cuda_workspace_limit`): then
    ``nchw``'s im2col, chunked under that limit."""
    out = cuda_plan.planned(input, weight, bias, spec, max_workspace_bytes)
    if out is None:
        limit = cuda_plan.cuda_workspace_limit(input.device, max_workspace_bytes)
        return STRATEGIES["nchw"](input, weight, bias, spec, StrategyOptions(limit))
    return out


def auto_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    cpu_strategy: str,
    max_workspace_bytes: int | None = None,
    target: str | None = None,
) -> torch.Tensor:
    """``auto`` for one conv, planned for the device its input is on (or ``target``): the CUDA
    plan (:func:`planned_conv`) on a GPU, ``cpu_strategy`` (:func:`choose_strategy`'s pick,
    fixed when the conv was lowered) on a CPU.  One graph node, so a model lowered on the CPU
    and moved with ``.cuda()`` runs the CUDA plan."""
    if (target or input.device.type) == "cuda":
        return planned_conv(input, weight, bias, spec, max_workspace_bytes)
    options = (
        DEFAULT_OPTIONS if max_workspace_bytes is None else StrategyOptions(max_workspace_bytes)
    )
    return STRATEGIES[cpu_strategy](input, weight, bias, spec, options)


def _auto(input, weight, bias, spec: ConvSpec, options: StrategyOptions | None = None):
    cap, target = (None, None) if options is None else (options.max_workspace_bytes, options.target)
    return auto_conv(input, weight, bias, spec, choose_strategy(spec), cap, target)


def resolve_auto(spec: ConvSpec, options: StrategyOptions | None = None) -> str:
    """What ``auto`` lowers one conv to: ``"cuda"`` under ``target="cuda"``,
    :func:`choose_strategy`'s pick under ``target="cpu"``, and ``"auto"`` (the node
    :func:`auto_conv`, which picks per call by the input's device) without a target."""
    target = options.target if options is not None else None
    if target == "cuda":
        return "cuda"
    if target == "cpu":
        return choose_strategy(spec)
    return "auto"


def strategy_function(name: str) -> StrategyFn:
    """The eager function of strategy ``name`` (one of :data:`STRATEGIES`, or ``"auto"``)."""
    return _auto if name == "auto" else STRATEGIES[name]


_CONV2D_STRATEGIES: dict[str, StrategyFn] = {
    "unfold": unfold_conv2d,
    "strided": strided_conv2d,
    "nhwc": nhwc_conv2d,
    "taps": taps_conv2d,
    "nchw": nchw_conv2d,
    "pointwise": pointwise_conv2d,
    "patchify": patchify_conv2d,
    "depthwise": depthwise_conv2d,
    "cuda": cuda_conv2d,
}


def _every_kind(name: str, conv2d_fn: StrategyFn) -> StrategyFn:
    """The strategy ``name`` for every convolution kind: 2-D convolutions run ``conv2d_fn``,
    the other kinds go through :func:`other_kind` (the spec is fixed when a graph is traced, so
    the traced code holds only the branch taken)."""

    def strategy(input, weight, bias, spec: ConvSpec, options: StrategyOptions | None = None):
        if (spec.ndim == 2 and not spec.transposed) or name == "cuda":
            return conv2d_fn(input, weight, bias, spec, options)
        return other_kind(name, input, weight, bias, spec, options)

    strategy.__name__ = strategy.__qualname__ = conv2d_fn.__name__
    strategy.__doc__ = conv2d_fn.__doc__
    return strategy


STRATEGIES: dict[str, StrategyFn] = {
    name: _every_kind(name, fn) for name, fn in _CONV2D_STRATEGIES.items()
}

# What lower(strategy=...) accepts: a strategy for every conv, or "auto" (choose_strategy's pick).
STRATEGY_NAMES = (*STRATEGIES, "auto")


def other_kind(
    name: str,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    options: StrategyOptions | None = None,
) -> torch.Tensor:
    """Strategy ``name`` for a 1-D, 3-D or transposed convolution (see
    :mod:`lowerconv.lowering.nd`).

    - transposed, stride 1, any strategy but ``unfold``: the plain convolution of the padded
      (or cropped) input with the flipped, channel-swapped kernel, by the same strategy;
    - transposed otherwise: a GEMM (``torch.matmul`` for ``unfold``, the fast GEMM otherwise)
      and col2im;
    - 1-D: the 2-D strategy on an input of height 1;
    - 3-D: ``unfold`` im2col + matmul traced op by op, ``strided``/``nhwc`` row-per-pixel
      im2col + GEMM and ``nchw`` (and grouped convs) channel-major im2col + matmul, both in
      chunks; ``pointwise``, ``patchify`` and ``depthwise`` on the convs they are for.
    """
    cap = _workspace_cap(options)
    if spec.transposed:
        if name != "unfold" and all(s == 1 for s in spec.stride):
            equivalent = spec.equivalent_conv()
            input = F.pad(input, equivalent.pad)  # negative amounts crop
            unpadded = replace(equivalent, pad=(0,) * len(equivalent.pad))
            return STRATEGIES[name](input, flipped_kernel(weight, spec), bias, unpadded, options)
        return nd.conv_transpose(input, weight, bias, spec, use_gemm=name != "unfold")
    if spec.ndim == 1:
        return nd.lift_1d(_CONV2D_STRATEGIES[name], input, weight, bias, spec, options)
    if name == "pointwise" and all(k == 1 for k in spec.kernel_size):
        if any(spec.pad):
            input = F.pad(input, spec.pad, mode=_pad_mode(spec))
        return nd.pointwise_nd(input, weight, bias, spec)
    if name == "patchify" and spec.is_patchify and spec.groups == 1 and cap is None:
        return nd.patchify_nd(input, weight, bias, spec)
    if name == "depthwise" and spec.is_depthwise:
        return nd.depthwise_taps_nd(input, weight, bias, spec)
    if name == "unfold" and cap is None:
        return nd.conv_nd(input, weight, bias, spec, channel_major=True)
    if name == "strided" and cap is None and spec.groups == 1:
        return nd.conv_nd(input, weight, bias, spec, channel_major=False)
    channel_major = name in ("unfold", "nchw") or spec.groups > 1
    cache_chunks = name not in ("unfold", "strided", "patchify")
    return nd.im2col_conv_nd(input, weight, bias, spec, cap, channel_major, cache_chunks)


# What run_in_chunks runs on each chunk (already padded, so the spec pads nothing).
_CHUNK_ARITHMETIC: dict[str, StrategyFn] = {
    "unfold": unfold_conv2d,
    "strided": strided_conv2d,
    "patchify": patchify_conv2d,
    "nchw": _nchw_columns_matmul,
}


def choose_strategy(spec: ConvSpec) -> str:
    """The concrete strategy ``"auto"`` uses for one conv.

    The rules, first match wins:

    - a 1x1 kernel (any stride, groups or padding): ``pointwise``, a matmul with no copy;
    - ``groups == in_channels``: ``depthwise``, shifted multiply-adds with no im2col buffer;
    - kernel == stride, no padding or dilation, one group (a patch embedding, a downsampling
      layer): ``nchw`` for patches of up to 1024 values, else ``nhwc`` (``patchify``'s
      reshape-and-permute copy is slow for small kernels over many channels);
    - stride 1, more than 4 input channels, and a group of them or patches of more than 64
      values: ``taps``, one GEMM per kernel tap (a batched one per group) on shifted views, no
      im2col (on CPU it hands one-group outputs under 28x28 pixels, and one-group float32
      convs on the oneDNN GEMM engine, to ``nhwc`` at run time);
    - other grouped convs, patches of at most 64 values and inputs of at most 4 channels
      (3-channel stems, 3x3 to 7x7): ``nchw``, chunked channel-major im2col + a matmul per
      group, which writes NCHW directly;
    - anything else (strided convs): ``nhwc``, chunked channels-last im2col + GEMM.

    The numbers behind these rules are ``python benchmarks/auto_rules.py``'s.
    """
    if spec.ndim != 2 or spec.transposed:
        return _choose_other_kind(spec)
    if spec.kernel_size == (1, 1):
        return "pointwise"
    if spec.is_depthwise:
        return "depthwise"
    if spec.is_patchify and spec.groups == 1:
        # Channel-major im2col beats patchify's channels-last copy, whose runs are kw values
        # long (convnext's 2x2 downsampling: 1.1-1.5x native against 2.7-4.5x), up to patches
        # of about a thousand values, where nhwc's GEMM takes over.
        return "nchw" if spec.patch_size <= _NCHW_PATCHIFY_VALUES else "nhwc"
    few_channels = spec.in_channels <= _FEW_CHANNELS
    few_values = spec.patch_size <= _FEW_VALUES_PER_PATCH
    if spec.stride == (1, 1) and not few_channels and (spec.groups > 1 or not few_values):
        return "taps"
    if spec.groups > 1 or few_values or few_channels:
        return "nchw"
    return "nhwc"


def _choose_other_kind(spec: ConvSpec) -> str:
    """``auto`` for the other kinds, by rule (measured on r3d_18's and a DCGAN generator's
    layers, CPU float32, by ``python benchmarks/kind_layers.py``):

    - a 1-D conv: what the 2-D rules pick for it on a height-1 input;
    - a stride-1 transposed conv: what they pick for its equivalent plain conv;
    - a strided transposed conv: ``unfold``, ``torch.matmul`` then ``F.fold`` (the fast GEMM's
      transposes cost more than they save here);
    - a 3-D conv: ``pointwise`` (1x1x1), ``patchify``, ``depthwise`` where they apply, else
      ``nchw``: channel-major im2col in cache-sized chunks and one matmul per group, which
      writes the channel-first output directly (row-per-pixel ``nhwc`` pays a transposed copy
      of every chunk in 3-D).
    """
    if spec.transposed:
        if all(s == 1 for s in spec.stride):
            return choose_strategy(spec.equivalent_conv())
        return "unfold"
    if spec.ndim == 1:
        return choose_strategy(spec.lifted_to_2d())
    if all(k == 1 for k in spec.kernel_size):
        return "pointwise"
    if spec.is_patchify and spec.groups == 1:
        return "patchify"
    if spec.is_depthwise:
        return "depthwise"
    return "nchw"


def workspace_bytes(
    spec: ConvSpec,
    strategy: str,
    batch: int,
    *spatial_and_dtype: int | torch.dtype,
    device: str = "cpu",
    max_workspace_bytes: int | None = None,
    needs_grad: bool = False,
) -> int:
    """The largest im2col buffer ``strategy`` allocates for one call of this conv, in bytes:
    ``workspace_bytes(spec, strategy, batch, *spatial_sizes, dtype)``.

    2-D convolutions: see :func:`_workspace_bytes_2d`.  A 1-D conv counts as the 2-D conv it
    runs as; a stride-1 transposed one (but ``unfold``) as its equivalent conv on the padded
    input; another transposed one allocates its column matrix (``C_out*K x pixels``); a 3-D
    conv builds nothing under ``depthwise``/``pointwise`` on the convs they are for, its whole
    im2col under ``unfold``/``strided``/``patchify`` (a chunk of it under a cap), and one chunk
    of images or output planes under ``nhwc``/``nchw``.  ``cuda``, and ``auto`` on a CUDA
    device, build the CUDA plan's intermediate (:func:`~.cuda_plan.cuda_workspace_bytes`), or
    ``nchw``'s chunk where that would exceed the limit.
    """
    *spatial, dtype = spatial_and_dtype
    sizes = [int(s) for s in spatial]
    options = {"device": device, "max_workspace_bytes": max_workspace_bytes}
    name = strategy.split(" (")[0]
    if name == "cuda" or (name == "auto" and device.startswith("cuda")):
        itemsize = torch.empty((), dtype=dtype).element_size()
        planned = cuda_plan.cuda_workspace_bytes(spec, batch, tuple(sizes), itemsize)
        limit = cuda_plan.cuda_workspace_limit(torch.device(device), max_workspace_bytes)
        if planned <= limit:
            return planned
        return workspace_bytes(
            spec, "nchw", batch, *sizes, dtype, **{**options, "max_workspace_bytes": limit}
        )
    if spec.ndim == 2 and not spec.transposed:
        return _workspace_bytes_2d(
            spec, strategy, batch, *sizes, dtype, needs_grad=needs_grad, **options
        )
    name = strategy.split(" (")[0]
    if name == "auto":
        name = choose_strategy(spec)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if spec.transposed:
        if name != "unfold" and all(s == 1 for s in spec.stride):
            equivalent = spec.equivalent_conv()
            padded = [
                n + low + high for n, (low, high) in zip(sizes, equivalent.pad_per_dim, strict=True)
            ]
            unpadded = replace(equivalent, pad=(0,) * len(equivalent.pad))
            return workspace_bytes(unpadded, name, batch, *padded, dtype, **options)
        return spec.im2col_bytes(batch, *sizes, dtype)
    if spec.ndim == 1:
        return workspace_bytes(spec.lifted_to_2d(), name, batch, 1, *sizes, dtype, **options)
    if name == "depthwise" and spec.is_depthwise:
        return 0
    if name == "pointwise" and all(k == 1 for k in spec.kernel_size):
        return 0
    if name == "patchify" and spec.is_patchify and spec.groups == 1 and max_workspace_bytes is None:
        return spec.im2col_bytes(batch, *sizes, dtype)
    if name in ("unfold", "strided") and max_workspace_bytes is None:
        return spec.im2col_bytes(batch, *sizes, dtype)
    limit = max_workspace_bytes if max_workspace_bytes is not None else sys.maxsize
    if name not in ("unfold", "strided", "patchify"):
        limit = chunk_limit(torch.device(device), max_workspace_bytes)
    return nd.chunk_workspace(spec, batch, sizes, itemsize, limit)


def _workspace_bytes_2d(
    spec: ConvSpec,
    strategy: str,
    batch: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    *,
    device: str = "cpu",
    max_workspace_bytes: int | None = None,
    needs_grad: bool = False,
) -> int:
    """The largest im2col buffer ``strategy`` allocates for one call of this conv, in bytes.

    What each strategy really builds, following the same dispatch as the strategies themselves
    (``pointwise`` on a 3x3 kernel runs ``nhwc``, ``nhwc`` on a grouped conv runs ``nchw``...):
    ``depthwise`` and ``pointwise`` build none (0); ``unfold``, ``strided`` and ``patchify`` the
    whole im2col (its chunk under ``max_workspace_bytes``); ``nchw`` and ``nhwc`` one chunk of it
    (:func:`~lowerconv.lowering.tiling.chunk_limit`), and ``nhwc``'s stride-1 kernel-row GEMMs
    (CPU, float32) a ``kw``-wide buffer ``kh`` times smaller; ``taps`` none where it runs its tap
    GEMMs (grouped convs, and on CPU one-group convs with outputs of at least 28x28 pixels,
    unless they are float32 on the oneDNN engine: :func:`.plain_kernels.taps_hand_off`),
    else ``nhwc``'s.
    ``needs_grad`` changes none of it: a conv that needs a gradient runs this same forward with gradients off, and its backward
    (:mod:`lowerconv.lowering.autograd`) recomputes the columns in chunks under the same limit.
    """
    strategy = strategy.split(" (")[0]  # "unfold (run time)" -> "unfold"
    if strategy == "auto":
        strategy = choose_strategy(spec)
    if strategy == "depthwise":
        if spec.is_depthwise:
            return 0
        strategy = "nhwc"
    if strategy == "pointwise":
        if spec.kernel_size == (1, 1):
            return 0
        strategy = "nhwc"
    if strategy == "patchify" and not (spec.is_patchify and spec.groups == 1):
        strategy = "nhwc"
    if strategy == "taps":
        out_h, out_w = spec.output_hw(height, width)
        if spec.is_depthwise:
            return 0
        if not taps_hand_off(device, dtype, spec.groups, out_h * out_w):
            return 0
        strategy = "nhwc"
    if strategy == "nhwc" and spec.groups > 1:
        strategy = "nchw"
    itemsize = torch.empty((), dtype=dtype).element_size()
    out_h, out_w = spec.output_hw(height, width)
    (kh, kw), dh = spec.kernel_size, spec.dilation[0]

    def chunk(limit: int | None) -> int:
        if limit is None:
            return spec.im2col_bytes(batch, height, width, dtype)
        per_group = spec.patch_size * spec.groups
        return plan_chunks(batch, out_h, out_w, per_group, itemsize, limit).workspace_bytes

    if strategy in ("unfold", "strided", "patchify"):
        return chunk(max_workspace_bytes)
    limit = chunk_limit(torch.device(device), max_workspace_bytes)
    row_gemms = (
        strategy == "nhwc"
        and spec.stride[0] == 1
        and kh > 1
        and out_h * out_w >= ROW_GEMMS_MIN_PIXELS
        and engine.ONEDNN
        and device == "cpu"
        and dtype == torch.float32
    )
    if row_gemms:
        row_bytes = out_w * kw * spec.in_channels * itemsize
        rows = min(out_h, limit // row_bytes - dh * (kh - 1))
        if rows >= 1:
            return (rows + dh * (kh - 1)) * row_bytes
    return chunk(limit)


# Patches of at most this many values (a 3x3 stem over 3 channels has 27) go to ``nchw``: they
# make a GEMM too thin for oneDNN to pay for ``nhwc``'s transposes (measured on 3-channel stems).
_FEW_VALUES_PER_PATCH = 64
# Inputs of at most this many channels go to ``nchw`` whatever the kernel: channels-last runs of
# 3 values make ``nhwc``'s gather slow (a 7x7 stride-2 RGB stem: nhwc 2.9-3.2x native, nchw
# 1.6-2.0x, at batch 1 and 8: `python benchmarks/auto_rules.py`).
_FEW_CHANNELS = 4
# Kernel == stride convs with patches of at most this many values go to ``nchw``, others to
# ``nhwc`` (measured on convnext's stem and downsampling layers and vit_b_16's patch embedding).
_NCHW_PATCHIFY_VALUES = 1024


# Each is one readable node in the lowered graph (shape arithmetic, a GEMM, a chunked loop),
# printed in generated code under its own name with an import rather than a mangled global.
_LEAVES = {
    "conv_output_width": "lowerconv.lowering.strategies",
    "conv_output_height": "lowerconv.lowering.strategies",
    "depthwise_taps": "lowerconv.lowering.kernels",
    "gemm": "lowerconv.lowering.kernels",
    "im2col_gemm": "lowerconv.lowering.kernels",
    "pointwise_gemm": "lowerconv.lowering.kernels",
    "tap_gemms": "lowerconv.lowering.kernels",
    "run_in_chunks": "lowerconv.lowering.strategies",
    "planned_conv": "lowerconv.lowering.strategies",
    "auto_conv": "lowerconv.lowering.strategies",
}
for _name in _LEAVES:
    torch.fx.wrap(_name)


def conv2d_strategy(name: str) -> StrategyFn:
    """Strategy ``name``'s function for 2-D convolutions (``taps_conv2d`` for ``"taps"``)."""
    return _CONV2D_STRATEGIES[name]


def chunk_arithmetic(name: str) -> StrategyFn:
    """What :func:`run_in_chunks` runs on each chunk for strategy ``name``."""
    return _CHUNK_ARITHMETIC[name]


def graph_leaves() -> dict[str, StrategyFn]:
    """The functions a lowered graph calls as single nodes, by the name it prints them under."""
    return {name: getattr(sys.modules[module], name) for name, module in _LEAVES.items()}


try:
    from torch.fx.graph import _register_custom_builtin

    for _name, _module in _LEAVES.items():
        _register_custom_builtin(_name, f"from {_module} import {_name}", globals()[_name])
    # run_in_chunks takes the spec itself, which generated code then builds as ``ConvSpec(...)``.
    _register_custom_builtin("ConvSpec", "from lowerconv.lowering.spec import ConvSpec", ConvSpec)
except ImportError:  # private API; without it the code still runs, under a longer name
    pass
