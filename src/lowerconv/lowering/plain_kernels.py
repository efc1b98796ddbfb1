"""The run-time kernels' arithmetic, as plain eager ops: whatever runs them records what they do.

Each function computes one convolution without a convolution op, from its tensors and its
:class:`~.tiling.ConvGeometry` (kernel, stride, dilation, the zero padding still to apply, groups,
and the im2col chunk limit):

:func:`im2col_gemm`
    A whole channels-last im2col convolution, computed in chunks of images or output rows so
    that each chunk's im2col buffer stays under a byte limit (see :func:`~.tiling.plan_chunks`).
:func:`tap_gemms`
    A convolution as one GEMM per kernel tap, each on a shifted view of the flattened padded
    input, summed in place: no im2col buffer at all.
:func:`pointwise_gemm`
    A 1x1 convolution as one GEMM per image on the NCHW planes as they lie in memory.
:func:`depthwise_taps`
    A depthwise convolution as a sum of shifted views times per-channel weights, in blocks of
    planes that fit the cache.

:mod:`.kernels` makes each a leaf of the lowered graph and, for an eager call that needs a
gradient, runs it with gradients off inside :class:`~.autograd.GemmConv2d`, whose backward calls
these functions again on the output gradient; a tracer's call, or one autograd records, runs
them as they are.  Nothing here knows about ``torch.fx`` or ``GemmConv2d``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import engine
from .engine import GRAD_DTYPES, gemm, needs_grad, traced, use_onednn, without_autograd
from .tiling import ConvGeometry, input_window, output_tiles, phase_layout, plan_chunks, to_phases

__all__ = [
    "PLANAR_BLOCK_BYTES",
    "PLANAR_MIN_PIXELS",
    "ROW_GEMMS_MIN_PIXELS",
    "SMALL_KERNEL_MIN_PIXELS",
    "TAPS_MIN_PIXELS",
    "depthwise_taps",
    "im2col_gemm",
    "pointwise_gemm",
    "tap_gemms",
    "taps_hand_off",
]


def im2col_gemm(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry
) -> torch.Tensor:
    """A one-group convolution as channels-last im2col + :func:`gemm`, chunk by chunk.

    ``input`` is ``(N, C, H, W)`` or ``(C, H, W)``, ``weight`` the conv's ``(C_out, C, kh,
    kw)``, ``geometry.zero_pad`` the ``(left, right, top, bottom)`` zero padding still to apply.
    The input is copied once to padded channels-last order (free when it is channels-last
    already), so that a patch is ``kh*kw`` contiguous runs of ``C`` values; each chunk of images
    or output rows is gathered into an im2col buffer of at most ``geometry.workspace_bytes``
    bytes (see :func:`plan_chunks`), multiplied by the weight as ``(C_out, kh*kw*C)``, and
    written to its place in the contiguous ``(N, C_out, OH, OW)`` output.
    """
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    kernel_size, stride, dilation = geometry.kernel_size, geometry.stride, geometry.dilation
    zero_pad, limit = geometry.zero_pad, geometry.workspace_bytes
    input, weight, bias = without_autograd(input, weight, bias)
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    left, right, top, bottom = zero_pad
    nhwc = input.movedim(1, -1)
    nhwc = F.pad(nhwc, (0, 0, left, right, top, bottom)) if any(zero_pad) else nhwc.contiguous()
    n, hp, wp, _ = nhwc.shape
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    out_h, out_w = (hp - span_h) // sh + 1, (wp - span_w) // sw + 1
    if (
        sh == 1
        and kh > 1
        and out_h * out_w >= ROW_GEMMS_MIN_PIXELS
        and use_onednn(nhwc, weight, bias)
        and not needs_grad(nhwc, weight, bias)
    ):
        result = _kernel_row_gemms(nhwc, weight, bias, kernel_size, dilation, sw, limit)
        if result is not None:
            return result.squeeze(0) if unbatched else result
    weight_matrix = weight.permute(0, 2, 3, 1).flatten(1)
    c_out, patch = weight_matrix.shape
    plan = plan_chunks(n, out_h, out_w, patch, nhwc.element_size(), limit)

    def columns(x: torch.Tensor) -> torch.Tensor:
        # (n, h, w, C) -> (n, oh, ow, kh*kw*C): the one copy of each chunk.
        patches = x.unfold(1, span_h, sh).unfold(2, span_w, sw)
        if (dh, dw) != (1, 1):
            patches = patches[..., ::dh, ::dw]
        return patches.movedim(3, -1).flatten(3)

    if plan.chunks <= 1:
        result = gemm(columns(nhwc), weight_matrix, bias).movedim(-1, 1).contiguous()
    else:
        # Autograd records the writes into this fresh tensor as copies into slices.
        result = nhwc.new_empty((n, c_out, out_h, out_w))
        for images, rows, cols in output_tiles(plan, n, out_h, out_w):
            tile = nhwc[images, input_window(rows, sh, span_h), input_window(cols, sw, span_w)]
            result[images, :, rows, cols] = gemm(columns(tile), weight_matrix, bias).movedim(-1, 1)
    return result.squeeze(0) if unbatched else result


# Outputs of at least this many pixels use the kernel-row GEMMs below (measured: below it, the
# thin GEMMs cost more than the smaller buffer saves).
ROW_GEMMS_MIN_PIXELS = 28 * 28


def _kernel_row_gemms(
    nhwc: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    stride_w: int,
    max_workspace_bytes: int,
) -> torch.Tensor | None:
    """A stride-1-in-height conv as ``kh`` accumulated GEMMs over a ``kw``-wide im2col.

    The buffer holds, for every input row, the ``kw*C`` values each output column reads from
    it: ``kh`` times smaller than the full im2col.  Kernel row ``i`` then reads the rows
    ``i*dh ..`` of it as one contiguous matrix, and oneDNN's GEMM adds its product into the
    previous rows' sum.  One image, or a block of output rows, at a time; None when not one
    output row fits ``max_workspace_bytes`` (the caller then splits columns too).
    """
    n, hp, wp, channels = nhwc.shape
    (kh, kw), (dh, dw) = kernel_size, dilation
    span_w = dw * (kw - 1) + 1
    out_h, out_w = hp - dh * (kh - 1), (wp - span_w) // stride_w + 1
    row_bytes = out_w * kw * channels * nhwc.element_size()
    rows = min(out_h, max_workspace_bytes // row_bytes - dh * (kh - 1))
    if rows < 1:
        return None
    c_out = weight.shape[0]
    # (C_out, C, kh, kw) -> (kh, C_out, kw*C), each kernel row in the buffer's (kw, C) order.
    row_weights = weight.permute(2, 0, 3, 1).reshape(kh, c_out, kw * channels)
    linear = torch.ops.mkldnn._linear_pointwise
    result = nhwc.new_empty((n, c_out, out_h, out_w))
    for image in range(n):
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            windows = nhwc[image, r0 : r1 + dh * (kh - 1)].unfold(1, span_w, stride_w)
            if dw != 1:
                windows = windows[..., ::dw]
            # (h, OW, C, kw) -> (h*OW, kw*C): the one copy.
            buffer = windows.movedim(-1, -2).reshape(-1, kw * channels)
            pixels = (r1 - r0) * out_w
            acc = linear(buffer[:pixels], row_weights[0], bias, "none", [], "")
            for i in range(1, kh):
                start = i * dh * out_w
                acc = linear.binary(
                    buffer[start : start + pixels], acc, row_weights[i], None, "add"
                )
            result[image, :, r0:r1] = acc.view(r1 - r0, out_w, c_out).movedim(-1, 0)
    return result


# On CPU, outputs of fewer pixels than this run im2col + GEMM instead (measured on 3x3 convs
# of 16-256 channels at 14-112 pixels a side, batch 1 and 8, one thread, Intel AVX-512: below
# 28x28 the per-image, per-tap GEMMs are too thin).
TAPS_MIN_PIXELS = 28 * 28


def taps_hand_off(device: str, dtype: torch.dtype, groups: int, out_pixels: int) -> bool:
    """Whether an eager call of :func:`tap_gemms` on ``device`` runs :func:`im2col_gemm` instead.

    One-group convs only (grouped convs keep their batched tap GEMMs): where the output has
    fewer than :data:`TAPS_MIN_PIXELS` pixels, and where float32 GEMMs run on oneDNN's engine
    (:data:`.engine.ONEDNN`: CPUs that are not Intel's).  The tap GEMMs are ``torch.addmm`` on
    strided views, which oneDNN's matmul does not take; on an AMD EPYC, where MKL's sgemm runs
    at about half oneDNN's speed, they lost to the im2col GEMM at 2 threads (resnet18 in the
    model 1.41-1.83x native against 1.30-1.40x at batch 8) and tied at one.
    """
    if device != "cpu" or groups != 1:
        return False
    return out_pixels < TAPS_MIN_PIXELS or (engine.ONEDNN and dtype == torch.float32)


def tap_gemms(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry
) -> torch.Tensor:
    """A convolution as ``kh*kw`` GEMMs on shifted views of its input, summed in place.

    Unstrided, each image's padded planes are flattened to ``(C, Hp*Wp)``.  Output pixel ``(oh,
    ow)``, placed at ``oh*Wp + ow`` of a "wide" output plane (``Wp`` columns, of which the first
    ``OW`` are outputs), reads input element ``oh*Wp + ow + i*dh*Wp + j*dw`` for kernel tap
    ``(i, j)``.  So tap ``(i, j)``'s contribution to the whole wide plane is one GEMM,
    ``W[:, :, i, j] (C_out, C) @ X[:, off : off + OH*Wp]``, whose second operand is a plain
    strided view of the input (row stride ``Hp*Wp``): BLAS reads it in place, and each product
    is added into the same output.  A strided conv first splits the padded input into its
    ``sh x sw`` phases (one copy), each flattened the same way: every tap then reads one phase,
    unstrided.  Grouped convs make each tap a batched GEMM, one per group.  Nothing is copied
    but the padded (or phase-split) input, with a spare zero row for the last tap's overhang,
    and the ``OW`` columns of each wide row; the cost is ``Wp/OW`` times the GEMM work.

    ``input`` is ``(N, C, H, W)`` or ``(C, H, W)``, ``geometry.zero_pad`` ``(left, right, top,
    bottom)``.  Eager CPU calls run image by image (each image's planes stay in cache across the
    taps); tracers and other devices record one batched ``matmul`` per tap and their sum.  Half
    precision is summed in float32, as a native convolution does.  On CPU, a one-group conv
    with an output of fewer than ``28*28`` pixels runs :func:`im2col_gemm` instead, under
    ``geometry.workspace_bytes`` (which the tap GEMMs, building no im2col buffer, never need).
    """
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    input, weight, bias = without_autograd(input, weight, bias)
    kernel_size, stride, groups = geometry.kernel_size, geometry.stride, geometry.groups
    n, channels, height, width = input.shape
    out_h, out_w = geometry.output_hw(height, width)
    eager_cpu = input.device.type == "cpu" and not traced(input, weight, bias)
    if eager_cpu and taps_hand_off("cpu", input.dtype, groups, out_h * out_w):
        # Thin GEMMs (small planes), or a slower GEMM engine: the im2col GEMM does better.
        result = im2col_gemm(input, weight, bias, geometry)
        return result.squeeze(0) if unbatched else result
    out_dtype = input.dtype
    if input.dtype not in GRAD_DTYPES:
        input, weight = input.float(), weight.float()
        bias = bias.float() if bias is not None else None
    hq, wq, offsets = phase_layout(height, width, geometry)
    sh, sw = stride
    # (N, g, C/g, sh*sw, hq*wq): every phase of every plane, flattened.
    phases = to_phases(input.reshape(n * channels, height, width), geometry, hq, wq)
    phases = phases.reshape(n, groups, channels // groups, sh * sw, hq * wq)
    wide = out_h * wq
    c_out = weight.shape[0]
    kh, kw = kernel_size
    # (kh*kw, g, C_out/g, C/g): each tap's weight matrices.
    taps = weight.reshape(groups, c_out // groups, channels // groups, kh * kw).permute(3, 0, 1, 2)
    if eager_cpu and not needs_grad(input, weight, bias):
        taps = taps.contiguous()
        out = input.new_empty((n, groups, c_out // groups, wide))
        # Each group's bias as a column, the addend of the first tap's product.
        addend = None if bias is None else bias.reshape(groups, -1, 1)
        if groups == 1:
            taps, phases = taps[:, 0], phases[:, 0]
            addend = None if addend is None else addend[0]
        first = torch.addmm if groups == 1 else torch.baddbmm
        for image in range(n):
            acc = out[image, 0] if groups == 1 else out[image]
            for t, (a, b, offset) in enumerate(offsets):
                view = phases[image, ..., a * sw + b, offset : offset + wide]
                if t > 0:
                    (acc.addmm_ if groups == 1 else acc.baddbmm_)(taps[t], view)
                elif addend is None:
                    torch.matmul(taps[t], view, out=acc)
                else:
                    first(addend, taps[t], view, out=acc)
    else:
        out = None
        for t, (a, b, offset) in enumerate(offsets):
            product = torch.matmul(taps[t], phases[:, :, :, a * sw + b, offset : offset + wide])
            out = product if out is None else out + product
        if bias is not None:
            out = out + bias.reshape(groups, -1, 1)
    result = out.reshape(n, c_out, out_h, wq)[..., :out_w].contiguous().to(out_dtype)
    return result.squeeze(0) if unbatched else result


def pointwise_gemm(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """A one-group 1x1 convolution, ``weight (C_out, C) @ input (..., C, H*W)``.

    On the oneDNN path each image's ``(C, H*W)`` plane is the GEMM's second operand as it lies
    in memory (oneDNN reorders it while packing, so no transposed copy is made), and the
    product ``(C_out, H*W)`` is already the image's NCHW output.  Elsewhere: ``torch.matmul``.
    """
    input, weight, bias = without_autograd(input, weight, bias)
    weight_matrix = weight.flatten(1)
    flat = input.flatten(-2)
    if not use_onednn(flat, weight_matrix, bias) or needs_grad(flat, weight_matrix, bias):
        out = torch.matmul(weight_matrix, flat)
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        return out.unflatten(-1, input.shape[-2:])
    linear = torch.ops.mkldnn._linear_pointwise
    if flat.dim() == 2:
        out = linear(weight_matrix, flat.mT, None, "none", [], "")
    elif flat.shape[0] == 1:
        out = linear(weight_matrix, flat[0].mT, None, "none", [], "").unsqueeze(0)
    else:
        out = flat.new_empty((*flat.shape[:-2], weight_matrix.shape[0], flat.shape[-1]))
        for image in range(flat.shape[0]):
            out[image] = linear(weight_matrix, flat[image].mT, None, "none", [], "")
    if bias is not None:
        out += bias.unsqueeze(-1)
    return out.unflatten(-1, input.shape[-2:])


def depthwise_taps(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry
) -> torch.Tensor:
    """A depthwise convolution (``groups == C``, ``C_out = m*C``) as a sum over kernel taps.

    Each tap ``(i, j)`` multiplies the view of the input that the kernel's ``(i, j)`` element
    visits by a per-channel weight and adds it into the output, over the rectangle of outputs
    whose input pixel lies inside the image (the zero padding is never copied).  Small outputs
    are done channels-last (the weights then scale the contiguous innermost dimension, and a
    channels-last input stays as it lies); large ones plane by plane in blocks that fit the
    cache, writing straight into the output.  Half-precision inputs are summed in float32, as a
    native convolution does.
    """
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    kernel_size, stride = geometry.kernel_size, geometry.stride
    dilation, zero_pad = geometry.dilation, geometry.zero_pad
    n, channels, height, width = input.shape
    multiplier = weight.shape[0] // channels
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    left, right, top, bottom = zero_pad
    hp, wp = height + top + bottom, width + left + right
    out_h, out_w = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    # (kh*kw, C, m): one per-channel scale per tap.
    # Contiguous, so that each tap's scales are a contiguous vector over the channels.
    taps = weight.reshape(channels, multiplier, kh * kw).permute(2, 0, 1).to(acc_dtype)
    taps = taps.contiguous()
    small_kernel = (sh, sw) == (1, 1) and kh * kw <= 9
    # A channels-last input (a model in torch.channels_last, or convnext's permuted blocks):
    # the channels-last path sums it as it lies and its output keeps that layout, as a native
    # conv's does; the planar path copies it to NCHW first (viewed as planes as it lies, at
    # batch 1, every plane would have a stride of C: measured 26x native on convnext_tiny).
    channels_last = not input.is_contiguous() and input.is_contiguous(
        memory_format=torch.channels_last
    )
    planar = (
        input.device.type == "cpu"
        and input.dtype == acc_dtype
        and out_h * out_w >= (SMALL_KERNEL_MIN_PIXELS if small_kernel else PLANAR_MIN_PIXELS)
        and not needs_grad(input, weight, bias)
    )
    if planar:
        result = _depthwise_planes(input, taps, kernel_size, stride, dilation, zero_pad)
    else:
        result = _depthwise_channels_last(input, taps, kernel_size, stride, dilation, zero_pad)
        if not channels_last:
            result = result.contiguous()
    result = result.reshape(n, channels * multiplier, out_h, out_w)
    if bias is not None and needs_grad(result, bias):
        result = result + bias.reshape(-1, 1, 1)
    elif bias is not None:
        result += bias.reshape(-1, 1, 1)
    result = result.to(input.dtype)
    return result.squeeze(0) if unbatched else result


# Outputs of at least this many pixels per plane are computed plane by plane (unstrided kernels
# of at most 3x3: the first number), smaller ones channels-last: measured on the depthwise layers of
# mobilenet_v2/v3, mnasnet, efficientnet_b0 and convnext_tiny (AVX-512).
SMALL_KERNEL_MIN_PIXELS = 28 * 28
PLANAR_MIN_PIXELS = 48 * 48
# Bytes of input and output planes per block of the planar path: about two L2 caches (smaller
# blocks cost more in per-op overhead than the cache saves).
PLANAR_BLOCK_BYTES = 4 * 2**20


def _tap_rectangles(height, width, out_h, out_w, kernel_size, stride, dilation, zero_pad):
    args = (height, width, out_h, out_w, kernel_size, stride, dilation, zero_pad)
    if all(type(size) is int for size in (height, width, out_h, out_w)):
        return _cached_tap_rectangles(*args)
    return _cached_tap_rectangles.__wrapped__(*args)  # symbolic sizes (export): not hashable


@functools.lru_cache(maxsize=1024)
def _cached_tap_rectangles(height, width, out_h, out_w, kernel_size, stride, dilation, zero_pad):
    """For each kernel tap ``(i, j)`` whose window meets the input: the tap's index, the output
    rectangle ``(row0, row1, col0, col1)`` of the outputs whose input pixel is inside the
    unpadded input, and that rectangle's first input ``(row, col)``.  Largest rectangles first,
    so that the first tap covers the whole output whenever any does.

    Output row ``r`` of tap row ``i`` reads input row ``r*sh + i*dh - top``; the zero padding
    adds nothing, so a tap skips the outputs whose pixel lies in it instead of reading zeros.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    left, _, top, _ = zero_pad

    def span(offset: int, step: int, size: int, outputs: int) -> tuple[int, int]:
        # The outputs o with 0 <= o*step + offset < size.
        first = -(offset // step) if offset < 0 else 0
        last = min(outputs, (size - 1 - offset) // step + 1) if offset < size else 0
        return first, max(first, last)

    rectangles = []
    for i in range(kh):
        r0, r1 = span(i * dh - top, sh, height, out_h)
        for j in range(kw):
            c0, c1 = span(j * dw - left, sw, width, out_w)
            if r0 < r1 and c0 < c1:
                first = (r0 * sh + i * dh - top, c0 * sw + j * dw - left)
                rectangles.append((i * kw + j, (r0, r1, c0, c1), first))
    rectangles.sort(key=lambda t: -(t[1][1] - t[1][0]) * (t[1][3] - t[1][2]))
    return tuple(rectangles)


def _sum_taps(acc, x, taps, rectangles, stride, full):
    """``acc[..., rows, cols, :, :] += x[window] * taps[t]`` over the rectangles, in place, with
    ``acc``'s and ``x``'s spatial dimensions at ``(-4, -3)``; the first tap is a product into
    ``acc`` when it covers it all (``full``) and autograd need not record it."""
    sh, sw = stride
    for k, (t, (r0, r1, c0, c1), (row, col)) in enumerate(rectangles):
        rows = slice(row, row + sh * (r1 - r0 - 1) + 1, sh)
        cols = slice(col, col + sw * (c1 - c0 - 1) + 1, sw)
        view, target = x[..., rows, cols, :, :], acc[..., r0:r1, c0:c1, :, :]
        if k == 0 and full and not needs_grad(view, taps):
            torch.mul(view, taps[t], out=target)
        else:
            target.addcmul_(view, taps[t])


def _depthwise_channels_last(input, taps, kernel_size, stride, dilation, zero_pad):
    n, channels, height, width = input.shape
    multiplier = taps.shape[-1]
    out_h, out_w = _output_size(height, width, kernel_size, stride, dilation, zero_pad)
    # (N, H, W, C, 1): every tap scales the contiguous channel dimension, and no padding is
    # copied: each tap sums over the outputs its pixels reach.
    x = input.movedim(1, -1).to(taps.dtype).contiguous().unsqueeze(-1)
    rectangles = _tap_rectangles(
        height, width, out_h, out_w, kernel_size, stride, dilation, zero_pad
    )
    full = bool(rectangles) and _covers(rectangles[0], out_h, out_w)
    if full and not needs_grad(x, taps):
        acc = x.new_empty((n, out_h, out_w, channels, multiplier))
    else:
        acc = x.new_zeros((n, out_h, out_w, channels, multiplier))
    if not rectangles and needs_grad(x, taps):
        # No tap reaches an input pixel (the output lies in the padding): zeros that stay in
        # the graph, so that autograd gives the zero gradients a native conv gives.  Sums of
        # empty slices: zero whatever the values (an inf in x stays out of it).
        acc = acc + (x[:, :0].sum() + taps[:0].sum())
    _sum_taps(acc, x, taps, rectangles, stride, full)
    # (N, OH, OW, C, m) -> (N, C, m, OH, OW), a channels-last view.
    return acc.permute(0, 3, 4, 1, 2)


def _depthwise_planes(input, taps, kernel_size, stride, dilation, zero_pad):
    n, channels, height, width = input.shape
    multiplier = taps.shape[-1]
    out_h, out_w = _output_size(height, width, kernel_size, stride, dilation, zero_pad)
    # (N*C, H, W, 1, 1) planes and (N*C, OH, OW, m, 1) outputs: the same code as the
    # channels-last path with a plane in the spatial dimensions and a scale per plane.
    planes = input.contiguous().reshape(n * channels, height, width, 1, 1)
    out = input.new_empty((n * channels, out_h, out_w, multiplier, 1))
    # (kh*kw, N*C, 1, 1, m, 1): each plane's scale, for each tap.
    plane_taps = taps.repeat(1, n, 1)[:, :, None, None, :, None]
    rectangles = _tap_rectangles(
        height, width, out_h, out_w, kernel_size, stride, dilation, zero_pad
    )
    full = bool(rectangles) and _covers(rectangles[0], out_h, out_w)
    plane_bytes = (height * width + multiplier * out_h * out_w) * input.element_size()
    block = max(1, PLANAR_BLOCK_BYTES // plane_bytes)
    for p0 in range(0, n * channels, block):
        p1 = min(n * channels, p0 + block)
        acc = out[p0:p1]
        if not full:
            acc.zero_()
        _sum_taps(acc, planes[p0:p1], plane_taps[:, p0:p1], rectangles, stride, full)
    # (N*C, OH, OW, m, 1) -> (N, C, m, OH, OW)
    out = out.reshape(n, channels, out_h, out_w, multiplier)
    return out.movedim(-1, 2) if multiplier == 1 else out.movedim(-1, 2).contiguous()


def _output_size(height, width, kernel_size, stride, dilation, zero_pad):
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    left, right, top, bottom = zero_pad
    hp, wp = height + top + bottom, width + left + right
    return (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1


def _covers(rectangle, out_h: int, out_w: int) -> bool:
    return rectangle[1] == (0, out_h, 0, out_w)
