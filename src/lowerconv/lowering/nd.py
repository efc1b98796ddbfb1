"""Every convolution kind through the same strategies: 1-D, 3-D and transposed convolutions.

The strategies of :mod:`lowerconv.lowering.strategies` are written for 2-D convolutions, where most
of the speed work went.  Each other kind reaches them, or their N-d form here, by arithmetic that is
exact for any configuration:

- **1-D** is 2-D on an input of height 1: ``unsqueeze`` the input and the weight, run the 2-D
  strategy on :meth:`~lowerconv.lowering.spec.ConvSpec.lifted_to_2d`, ``squeeze`` the result.  Every
  2-D strategy serves 1-D convolutions unchanged.
- **3-D** (and any N-d) convolutions use the N-d im2col below: strided views
  (``Tensor.unfold`` along each spatial dimension) gathered into a column matrix, one matmul
  per group (``unfold``, ``nchw``) or one GEMM over channels-last rows (``strided``, ``nhwc``),
  computed in chunks of images or output planes when a workspace cap asks for it
  (:func:`im2col_conv_nd`).  ``pointwise`` (a 1x1x1 kernel is a matmul), ``patchify``
  (kernel == stride: a reshape) and ``depthwise`` (a sum of shifted views over the taps,
  :func:`depthwise_taps_nd`) have N-d forms too.
- **Transposed** convolutions are a GEMM, then col2im: ``columns = weightᵀ @ input`` (per
  group), whose ``C_out*kh*kw`` rows each hold one kernel tap's contribution at every input
  pixel, summed into the output by ``F.fold`` (1-D and 2-D) or by one strided slice-add per tap
  (:func:`col2im_nd`, 3-D).  With stride 1 a transposed convolution is also the plain
  convolution of its zero-padded input with the flipped, channel-swapped kernel
  (:meth:`~lowerconv.lowering.spec.ConvSpec.equivalent_conv`); the fast strategies take that route,
  where every 2-D/3-D strategy applies.

No convolution op runs anywhere: unfold, fold, views, pads, matmul and slice-adds only.  As in
the 2-D strategies, dimensions are indexed from the end, so batched and unbatched inputs of any
size go through one traced graph.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import SimpleNamespace

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .engine import gemm, without_autograd
from .spec import ConvSpec, transposed_output_size
from .tiling import chunk_limit

__all__ = [
    "col2im_nd",
    "conv_nd",
    "conv_transpose",
    "conv_transpose_output_padding",
    "conv_transpose_output_size",
    "depthwise_taps_nd",
    "flipped_kernel",
    "im2col_conv_nd",
    "lift_1d",
]


def _pad_mode(spec: ConvSpec) -> str:
    return "constant" if spec.padding_mode == "zeros" else spec.padding_mode


def lift_1d(fn2d, input, weight, bias, spec: ConvSpec, options=None) -> torch.Tensor:
    """A 1-D convolution by the 2-D strategy ``fn2d`` on an input of height 1."""
    out = fn2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, spec.lifted_to_2d(), options)
    return out.squeeze(-2)


# -- N-d convolutions ------------------------------------------------------------------------------


def conv_nd(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    channel_major: bool = True,
) -> torch.Tensor:
    """An N-d convolution as one im2col + matmul, traced op by op (the textbook ``unfold``).

    ``channel_major``: columns ``(..., g, C/g*K, L)`` and ``weight @ columns``, which is already
    the channel-first output; else rows ``(..., g, L, C/g*K)`` times the weight transposed.
    """
    n, g = spec.ndim, spec.groups
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    patches = _windows(input, spec)  # (..., C, *O, *K)
    out_sizes = patches.shape[-2 * n : -n]
    if channel_major:
        # (..., C, *K, *O) -> (..., g, C/g*K, L)
        columns = patches.movedim(tuple(range(-n, 0)), tuple(range(-2 * n, -n)))
        columns = columns.flatten(-n).flatten(-n - 2, -2).unflatten(-2, (g, spec.patch_size))
        weight_matrix = weight.reshape(g, spec.out_per_group, spec.patch_size)
        out = torch.matmul(weight_matrix, columns).flatten(-3, -2)
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        return out.unflatten(-1, out_sizes)
    # (..., C, *O, *K) -> (..., g, *O, C/g*K): the one copy, a row per output pixel.
    rows = patches.unflatten(-2 * n - 1, (g, spec.in_per_group)).movedim(-2 * n - 1, -n - 1)
    rows = rows.flatten(-n - 1).flatten(-n - 1, -2)  # (..., g, L, C/g*K)
    weight_matrix = weight.reshape(g, spec.out_per_group, spec.patch_size).transpose(-1, -2)
    out = torch.matmul(rows, weight_matrix)  # (..., g, L, C_out/g)
    if bias is not None:
        out = out + bias.reshape(g, 1, spec.out_per_group)
    return out.movedim(-1, -2).flatten(-3, -2).unflatten(-1, out_sizes)


def _windows(x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    n = spec.ndim
    for k, s, d in zip(spec.kernel_size, spec.stride, spec.dilation, strict=True):
        # The spatial dim to unfold next is always n places before the end: each unfold
        # replaces one spatial dim by its output size and appends the window at the end.
        x = x.unfold(-n, d * (k - 1) + 1, s)
    if any(d != 1 for d in spec.dilation):
        x = x[(..., *(slice(None, None, d) for d in spec.dilation))]
    return x


def im2col_conv_nd(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    max_workspace_bytes: int | None,
    channel_major: bool,
    cache_chunks: bool,
) -> torch.Tensor:
    """:func:`conv_nd` in chunks of images, then of output planes along the first spatial
    dimension, so that no chunk's im2col buffer exceeds ``max_workspace_bytes`` (with
    ``cache_chunks``, on CPU, :data:`~lowerconv.lowering.tiling.DEFAULT_WORKSPACE_BYTES`
    either).  The row-per-pixel form multiplies with :func:`~lowerconv.lowering.engine.gemm`.  One
    graph node."""
    n = spec.ndim
    unbatched = input.dim() == n + 1
    if unbatched:
        input = input.unsqueeze(0)
    input, weight, bias = without_autograd(input, weight, bias)
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    unpadded = ConvSpec(
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        spec.stride,
        spec.dilation,
        (0,) * (2 * n),
        "zeros",
        spec.groups,
        spec.bias,
    )
    spans = [d * (k - 1) + 1 for k, d in zip(spec.kernel_size, spec.dilation, strict=True)]
    out_sizes = [
        (size - span) // s + 1
        for size, span, s in zip(input.shape[2:], spans, spec.stride, strict=True)
    ]
    limit = max_workspace_bytes if max_workspace_bytes is not None else sys.maxsize
    if cache_chunks:
        limit = chunk_limit(input.device, max_workspace_bytes)
    plane = spec.in_channels * spec.kernel_numel * input.element_size()
    for size in out_sizes[1:]:
        plane *= size
    batch = input.shape[0]
    compute = _rows_gemm if not channel_major and spec.groups == 1 else None

    def run(x: torch.Tensor) -> torch.Tensor:
        if compute is not None:
            return compute(x, weight, bias, unpadded)
        return conv_nd(x, weight, bias, unpadded, channel_major=True)

    image = plane * out_sizes[0]
    if image * batch <= limit or min(out_sizes) <= 0 or batch == 0:
        result = run(input)
    else:
        dtype = torch.result_type(input, weight)
        result = input.new_empty((batch, spec.out_channels, *out_sizes), dtype=dtype)
        if image <= limit:
            images = max(1, limit // image)
            for n0 in range(0, batch, images):
                result[n0 : n0 + images] = run(input[n0 : n0 + images])
        else:
            planes = max(1, limit // max(plane, 1))
            s0, span0 = spec.stride[0], spans[0]
            for b in range(batch):
                for p0 in range(0, out_sizes[0], planes):
                    p1 = min(out_sizes[0], p0 + planes)
                    window = input[b : b + 1, :, p0 * s0 : (p1 - 1) * s0 + span0]
                    result[b : b + 1, :, p0:p1] = run(window)
    return result.squeeze(0) if unbatched else result


def chunk_workspace(
    spec: ConvSpec, batch: int, spatial: list[int], itemsize: int, limit: int
) -> int:
    """The largest im2col chunk :func:`im2col_conv_nd` builds for this input, in bytes."""
    out_sizes = list(spec.output_size(*spatial))
    plane = spec.in_channels * spec.kernel_numel * itemsize
    for size in out_sizes[1:]:
        plane *= size
    image = plane * out_sizes[0]
    if image * batch <= limit or min(out_sizes) <= 0 or batch == 0:
        return image * batch
    if image <= limit:
        return min(batch, max(1, limit // image)) * image
    return min(out_sizes[0], max(1, limit // max(plane, 1))) * plane


def _rows_gemm(x, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """One group: rows ``(N, *O, C*K)`` times the weight as ``(C_out, C*K)`` by ``gemm``."""
    n = spec.ndim
    patches = _windows(x, spec)  # (N, C, *O, *K)
    out_sizes = patches.shape[-2 * n : -n]
    rows = patches.movedim(1, n + 1).flatten(-n - 1)  # (N, *O, C*K)
    out = gemm(rows, weight.flatten(1), bias)  # (N, *O, C_out)
    return out.movedim(-1, 1).contiguous().reshape(x.shape[0], spec.out_channels, *out_sizes)


def pointwise_nd(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """A 1x1x1 convolution: strided slice, then ``weight (C_out, C/g) @ input (C, pixels)``."""
    n, g = spec.ndim, spec.groups
    if any(s != 1 for s in spec.stride):
        input = input[(..., *(slice(None, None, s) for s in spec.stride))]
    flat = input.flatten(-n).unflatten(-2, (g, spec.in_per_group))
    weight_matrix = weight.reshape(g, spec.out_per_group, spec.in_per_group)
    out = torch.matmul(weight_matrix, flat).flatten(-3, -2)
    if bias is not None:
        out = out + bias.unsqueeze(-1)
    return out.unflatten(-1, input.shape[-n:])


def patchify_nd(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """Kernel == stride, no padding, one group: patches by reshape + permute, one GEMM."""
    n = spec.ndim
    counts = [input.shape[i - n] // k for i, k in enumerate(spec.kernel_size)]
    input = input[(..., *(slice(0, c * k) for c, k in zip(counts, spec.kernel_size, strict=True)))]
    # (..., C, O1, k1, O2, k2, ...) -> (..., O1, O2, ..., C, k1, k2, ...)
    # (..., C, S1, S2, ...) -> (..., C, O1, k1, O2, k2, ...), the last dim split first.
    for i in reversed(range(n)):
        input = input.unflatten(-(1 + 2 * (n - 1 - i)), (counts[i], spec.kernel_size[i]))
    # -> (..., O1, O2, ..., C, k1, k2, ...): each patch is one run of C*K values.
    patches = input.movedim(
        tuple(-2 * n + 2 * i for i in range(n)), tuple(-2 * n - 1 + i for i in range(n))
    )
    rows = patches.flatten(-n - 1)
    out = gemm(rows, weight.flatten(1), bias)  # (..., *O, C_out)
    return out.movedim(-1, -n - 1).contiguous()


def depthwise_taps_nd(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """``groups == in_channels``: the sum over kernel taps of shifted input views times
    per-channel weights, channels-last.  No im2col buffer.  One graph node."""
    n = spec.ndim
    unbatched = input.dim() == n + 1
    if unbatched:
        input = input.unsqueeze(0)
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    channels = input.shape[1]
    multiplier = weight.shape[0] // channels
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    # (N, *S, C, 1) and taps (K, C, m)
    x = input.movedim(1, -1).unsqueeze(-1).to(acc_dtype)
    taps = weight.reshape(channels, multiplier, spec.kernel_numel).permute(2, 0, 1)
    taps = taps.to(acc_dtype).contiguous()
    out_sizes = [
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(
            input.shape[2:], spec.kernel_size, spec.stride, spec.dilation, strict=True
        )
    ]
    acc = None
    for t, offsets in enumerate(_taps(spec.kernel_size)):
        index = tuple(
            slice(o * d, o * d + s * (size - 1) + 1, s)
            for o, d, s, size in zip(offsets, spec.dilation, spec.stride, out_sizes, strict=True)
        )
        view = x[(slice(None), *index)]
        acc = view * taps[t] if acc is None else acc.addcmul(view, taps[t])
    assert acc is not None
    # (N, *O, C, m) -> (N, C*m, *O)
    out = acc.flatten(-2).movedim(-1, 1).contiguous()
    if bias is not None:
        out = out + bias.reshape(-1, *([1] * n)).to(acc_dtype)
    out = out.to(input.dtype)
    return out.squeeze(0) if unbatched else out


def _taps(kernel_size: tuple[int, ...]) -> list[tuple[int, ...]]:
    taps: list[tuple[int, ...]] = [()]
    for k in kernel_size:
        taps = [(*t, i) for t in taps for i in range(k)]
    return taps


# -- transposed convolutions ---------------------------------------------------------------------


def conv_transpose_output_size(
    input: torch.Tensor,
    dim: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    output_padding: int,
) -> int:
    """A transposed convolution's output size along spatial ``dim`` (negative, from the end),
    read from the input's shape at run time."""
    return transposed_output_size(
        input.shape[dim], kernel, stride, padding, dilation, output_padding
    )


def conv_transpose_output_padding(
    input: torch.Tensor,
    output_size: Sequence[int] | None,
    output_padding: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
) -> list[int]:
    """The output padding of one call of a transposed convolution module: its own
    ``output_padding``, or the one ``output_size=`` asks for, with the same checks and errors
    as ``nn.ConvTranspose*d.forward`` (whose own arithmetic this calls)."""
    owner = SimpleNamespace(output_padding=tuple(output_padding))  # all the method reads
    return nn.modules.conv._ConvTransposeNd._output_padding(
        owner,  # type: ignore[arg-type]
        input,
        output_size,
        list(stride),
        list(padding),
        list(kernel_size),
        len(kernel_size),
        list(dilation),
    )


def transposed_columns(input, weight, spec: ConvSpec, use_gemm: bool = False) -> torch.Tensor:
    """``(..., C_in, *S)`` -> ``(..., C_out*K, L)``: each group's ``weightᵀ @ input``.

    Row ``c*K + t`` holds, for every input pixel, what kernel tap ``t`` of output channel ``c``
    adds to the output: the columns that col2im sums into place.
    """
    n, g = spec.ndim, spec.groups
    flat = input.flatten(-n)  # (..., C_in, L)
    # weight (C_in, C_out/g, *K) -> (g, C_out/g*K, C_in/g)
    weight_matrix = weight.reshape(g, spec.in_per_group, spec.patch_size).transpose(-1, -2)
    if g == 1 and use_gemm:
        # (..., L, C_in) @ (C_out*K, C_in)ᵀ by the fast GEMM, then back to rows.
        return gemm(flat.transpose(-1, -2), weight_matrix[0]).transpose(-1, -2)
    columns = torch.matmul(weight_matrix, flat.unflatten(-2, (g, spec.in_per_group)))
    return columns.flatten(-3, -2)


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    use_gemm: bool = False,
) -> torch.Tensor:
    """A transposed convolution as GEMM + col2im: ``F.fold`` for 1-D and 2-D (when
    ``output_padding < stride``, which fold's block count needs), else :func:`col2im_nd`."""
    n = spec.ndim
    columns = transposed_columns(input, weight, spec, use_gemm)
    foldable = n <= 2 and all(
        op < s for op, s in zip(spec.output_padding, spec.stride, strict=True)
    )
    if foldable:
        lifted = spec.lifted_to_2d() if n == 1 else spec
        pads = tuple(low for low, _ in lifted.pad_per_dim)
        sizes = tuple(
            conv_transpose_output_size(input, i - n, k, s, p, d, op)
            for i, (k, s, p, d, op) in enumerate(
                zip(
                    spec.kernel_size,
                    spec.stride,
                    pads[-n:],
                    spec.dilation,
                    spec.output_padding,
                    strict=True,
                )
            )
        )
        if n == 1:
            sizes = (1, *sizes)
        out = F.fold(
            columns,
            sizes,
            lifted.kernel_size,
            dilation=lifted.dilation,
            padding=pads,
            stride=lifted.stride,
        )
        if n == 1:
            out = out.squeeze(-2)
    else:
        out = col2im_nd(
            columns,
            input.shape[-n:],
            spec.out_channels,
            spec.kernel_size,
            spec.stride,
            spec.dilation,
            tuple(low for low, _ in spec.pad_per_dim),
            spec.output_padding,
        )
    if bias is not None:
        out = out + bias.reshape(-1, *([1] * n))
    return out


def col2im_nd(
    columns: torch.Tensor,
    input_sizes: torch.Size | tuple[int, ...],
    channels: int,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
) -> torch.Tensor:
    """Sum ``columns`` ``(..., C*K, L)`` into the transposed convolution's output: tap ``t``'s
    rows are added at the strided positions it reaches, then ``padding`` is cropped from each
    side (and ``output_padding`` zeros kept at the end).  One slice-add per tap.  One graph
    node."""
    n = len(kernel_size)
    batch_shape = columns.shape[:-2]
    taps = columns.unflatten(-2, (channels, -1)).unflatten(-1, tuple(input_sizes))
    full = [
        (size - 1) * s + d * (k - 1) + 1
        for size, k, s, d in zip(input_sizes, kernel_size, stride, dilation, strict=True)
    ]
    out_sizes = [
        transposed_output_size(size, k, s, p, d, op)
        for size, k, s, p, d, op in zip(
            input_sizes, kernel_size, stride, padding, dilation, output_padding, strict=True
        )
    ]
    # Room for the cropped output where output_padding reaches past the full result.
    room = [max(f, p + o) for f, p, o in zip(full, padding, out_sizes, strict=True)]
    out = columns.new_zeros((*batch_shape, channels, *room))
    lead = (slice(None),) * (len(batch_shape) + 1)
    for t, offsets in enumerate(_taps(kernel_size)):
        index = tuple(
            slice(o * d, o * d + s * (size - 1) + 1, s)
            for o, d, s, size in zip(offsets, dilation, stride, input_sizes, strict=True)
        )
        out[lead + index] += taps[(..., t, *([slice(None)] * n))]
    crop = tuple(slice(p, p + o) for p, o in zip(padding, out_sizes, strict=True))
    return out[lead + crop]


# Leaves of the traced graph, like the 2-D kernels (see strategies._LEAVES), printed in
# generated code under their own names with an import.
_LEAVES = (
    "im2col_conv_nd",
    "depthwise_taps_nd",
    "col2im_nd",
    "conv_transpose_output_size",
    "conv_transpose_output_padding",
)
for _name in _LEAVES:
    torch.fx.wrap(_name)
try:
    from torch.fx.graph import _register_custom_builtin

    for _name in _LEAVES:
        _register_custom_builtin(
            _name, f"from lowerconv.lowering.nd import {_name}", globals()[_name]
        )
except ImportError:  # private API; without it the code still runs, under a longer name
    pass


def flipped_kernel(weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """A transposed convolution's weight ``(C_in, C_out/g, *K)`` as the kernel of its equivalent
    plain convolution: ``(C_out, C_in/g, *K)``, channels swapped within each group and every
    spatial dimension reversed."""
    g, n = spec.groups, spec.ndim
    swapped = weight.unflatten(0, (g, spec.in_per_group)).transpose(1, 2).flatten(0, 1)
    return swapped.flip(tuple(range(-n, 0)))
