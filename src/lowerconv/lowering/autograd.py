"""The backward of a lowered convolution, as GEMMs and col2im: its own autograd formula.

A lowered conv's forward gathers patches from strided views, in chunks; autograd through those
gathers would scatter every gradient back through the same views, one chunk and one view at a
time.  :class:`GemmConv2d` instead runs the forward with gradients off (so it takes the same
fast paths as inference) and gives the conv its textbook gradients:

- ``db = dY.sum(N, OH, OW)``;
- ``dW = dY @ colsᵀ``: per image, ``(C_out/g, OH*OW) @ (OH*OW, C/g*kh*kw)`` for each group, with
  the im2col columns *recomputed* chunk by chunk (never saved: the memory rule is the forward's
  chunk limit, :func:`~.tiling.chunk_limit`), so a training step keeps only what
  a native conv keeps, the input and the weight;
- ``dX = col2im(Wᵀ @ dY)`` (``F.fold``), or, for a stride-1 one-group conv, the same thing
  computed as a convolution of ``dY`` with the flipped, transposed kernel, by one GEMM per
  kernel tap on shifted views (:func:`~.plain_kernels.tap_gemms`, which hands small
  outputs to the im2col GEMM);
- depthwise convs (one input channel per group): ``dW`` as one dot product per plane and tap
  and ``dX`` as the taps' shifted multiply-adds scattered back, both on flattened planes in
  blocks that stay in cache, with a strided conv's input split into its ``sh x sw`` phases so
  that every tap reads and writes one contiguous run.

No convolution op runs in either direction.  Only eager calls take this path: a tracer
(torch.export, torch.compile) records the forward's plain ops and differentiates them itself,
so a traced graph holds standard ops only (see :func:`~.engine.traced`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F

from . import plain_kernels
from .engine import GRAD_DTYPES as GRAD_DTYPES  # a name of this module in lowerconv 0.1
from .engine import use_onednn
from .tiling import (
    ConvGeometry,
    chunk_limit,
    input_window,
    output_tiles,
    phase_layout,
    plan_chunks,
    to_phases,
)

__all__ = [
    "ConvGeometry",
    "GemmConv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "plain_autograd",
    "recording_plain_ops",
]


_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)

_PLAIN = threading.local()


@contextlib.contextmanager
def plain_autograd() -> Iterator[None]:
    """Within it, the kernels record their plain ops for autograd instead of taking
    :class:`GemmConv2d`'s formulas (what a second derivative differentiates)."""
    previous = getattr(_PLAIN, "active", False)
    _PLAIN.active = True
    try:
        yield
    finally:
        _PLAIN.active = previous


def recording_plain_ops() -> bool:
    """Whether :func:`plain_autograd` is active in this thread."""
    return getattr(_PLAIN, "active", False)


class GemmConv2d(torch.autograd.Function):
    """A batched ``(N, C, H, W)`` convolution whose forward is ``compute(input, weight, bias)``
    (any lowering of it, run with gradients off) and whose backward is the GEMM formulas above.

    A backward that must itself be differentiable (``create_graph=True``: gradient penalties,
    Hessian-vector products; and every backward under ``torch.func``) recomputes the forward's
    plain ops under :func:`plain_autograd` and pulls the gradient back through them with
    ``torch.func.vjp``, so the second derivative is autograd's, still with no conv op.
    """

    @staticmethod
    def forward(input, weight, bias, geometry: ConvGeometry, compute: Callable):
        output = compute(input, weight, bias)
        # A view of a tensor made in here (a reshaped GEMM result) could not be modified in
        # place afterwards (an inplace activation); detached, it is a tensor of its own, and
        # nothing else holds its storage.
        return output.detach() if output._is_view() else output

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, geometry, compute = inputs
        ctx.save_for_backward(input, weight)
        ctx.geometry = geometry
        ctx.compute = compute
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        geometry = ctx.geometry
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad, input, weight)
        grad = grad.contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = conv2d_input_grad(grad, weight, input.shape, geometry)
        if ctx.needs_input_grad[1]:
            grad_weight = conv2d_weight_grad(grad, input, weight.shape, geometry)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


def _differentiable_backward(ctx, grad, input, weight):
    # The forward again, as the plain ops autograd records, pulled back through torch.func.vjp:
    # the gradients are functions of grad, input and weight that can be differentiated again.
    # vjp rather than torch.autograd.grad, to compose with torch.func's transforms (under
    # nested torch.func.grad every backward runs in grad mode); a tensor whose gradient is not
    # wanted here is captured as it is, never detached, since an outer level may still need it.
    needs_input, needs_weight = ctx.needs_input_grad[:2]

    def forward(x, w):
        with plain_autograd():
            return ctx.compute(x, w, None)

    grad_input = grad_weight = None
    if needs_input and needs_weight:
        grad_input, grad_weight = torch.func.vjp(forward, input, weight)[1](grad)
    elif needs_input:
        (grad_input,) = torch.func.vjp(lambda x: forward(x, weight), input)[1](grad)
    elif needs_weight:
        (grad_weight,) = torch.func.vjp(lambda w: forward(input, w), weight)[1](grad)
    grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_input, grad_weight, grad_bias, None, None


def _is_depthwise(weight_shape, geometry: ConvGeometry) -> bool:
    return geometry.groups > 1 and weight_shape[1] == 1


def _is_pointwise(geometry: ConvGeometry) -> bool:
    return (
        geometry.kernel_size == (1, 1)
        and geometry.stride == (1, 1)
        and not any(geometry.zero_pad)
        and geometry.groups == 1
    )


def conv2d_weight_grad(
    grad: torch.Tensor, input: torch.Tensor, weight_shape: torch.Size, geometry: ConvGeometry
) -> torch.Tensor:
    """``dW`` of the conv for output gradient ``grad``: ``dY @ colsᵀ``, columns recomputed."""
    if _is_depthwise(weight_shape, geometry):
        return _depthwise_weight_grad(grad, input, weight_shape, geometry)
    if _is_pointwise(geometry):
        # The input is its own im2col: per image, dY (C_out, H*W) @ X (C, H*W)ᵀ, no copy.
        flat_grad, flat_input = grad.flatten(2), input.flatten(2)
        if input.shape[0] == 0:
            return grad.new_zeros(weight_shape)
        if not use_onednn(flat_grad, flat_input, None) or not flat_input.is_contiguous():
            # One GEMM per image, accumulated: 2-5x faster than einsum's transposed copies.
            grad_weight = torch.mm(flat_grad[0], flat_input[0].mT)
            for image in range(1, input.shape[0]):
                grad_weight.addmm_(flat_grad[image], flat_input[image].mT)
            return grad_weight.reshape(weight_shape)
        grad_weight = _LINEAR(flat_grad[0], flat_input[0], None, "none", [], "")
        for image in range(1, input.shape[0]):
            grad_weight = _LINEAR.binary(
                flat_grad[image], grad_weight, flat_input[image], None, "add"
            )
        return grad_weight.reshape(weight_shape)

    n, channels = input.shape[:2]
    c_out = weight_shape[0]
    g = geometry.groups
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    span_h, span_w = geometry.span
    x = F.pad(input, geometry.zero_pad) if any(geometry.zero_pad) else input
    out_h, out_w = grad.shape[-2:]
    patch = channels * kh * kw
    pixel_bytes = patch * input.element_size()
    limit = max(geometry.workspace_bytes, pixel_bytes)
    plan = plan_chunks(n, out_h, out_w, patch, input.element_size(), limit)
    onednn = g == 1 and use_onednn(grad, input, None)
    # (g, C_out/g, C/g*kh*kw): the rows of each group's weight matrix, in (C, kh, kw) order.
    grad_weight = None if onednn else grad.new_zeros((g, c_out // g, patch // g))
    for images, rows, cols in output_tiles(plan, n, out_h, out_w):
        tile = x[images, :, input_window(rows, sh, span_h), input_window(cols, sw, span_w)]
        patches = tile.unfold(2, span_h, sh).unfold(3, span_w, sw)
        if (dh, dw) != (1, 1):
            patches = patches[..., ::dh, ::dw]
        # (b, C, oh, ow, kh, kw) -> (g, C/g*kh*kw, b*oh*ow), and the output gradient to (g,
        # C_out/g, b*oh*ow): the chunk's pixels are the GEMM's inner dimension, contiguous in
        # both operands.
        columns = patches.permute(1, 4, 5, 0, 2, 3).reshape(g, patch // g, -1)
        grad_rows = grad[images, :, rows, cols].transpose(0, 1).reshape(g, c_out // g, -1)
        if not onednn:
            grad_weight.baddbmm_(grad_rows, columns.mT)
        elif grad_weight is None:
            grad_weight = _LINEAR(grad_rows[0], columns[0], None, "none", [], "").unsqueeze(0)
        else:
            grad_weight = _LINEAR.binary(grad_rows[0], grad_weight[0], columns[0], None, "add")
            grad_weight = grad_weight.unsqueeze(0)
    if grad_weight is None:  # no pixels at all
        return grad.new_zeros(weight_shape)
    return grad_weight.reshape(weight_shape)


def conv2d_input_grad(
    grad: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size, geometry: ConvGeometry
) -> torch.Tensor:
    """``dX`` of the conv for output gradient ``grad``: ``col2im(Wᵀ @ dY)``."""
    if _is_depthwise(weight.shape, geometry):
        return _depthwise_input_grad(grad, weight, input_shape, geometry)
    if _is_pointwise(geometry):
        # Wᵀ (C, C_out) @ dY (C_out, H*W) per image: the forward's own 1x1 GEMM.
        return plain_kernels.pointwise_gemm(grad, weight.transpose(0, 1), None)

    n, channels, height, width = input_shape
    left, right, top, bottom = geometry.zero_pad
    span_h, span_w = geometry.span
    flipped_pad = (span_w - 1 - left, span_w - 1 - right, span_h - 1 - top, span_h - 1 - bottom)
    if geometry.groups == 1 and geometry.stride == (1, 1) and min(flipped_pad) >= 0:
        # A stride-1 conv's dX is the "full" correlation of dY with the flipped kernel, its
        # input and output channels swapped: the forward's tap GEMMs (which hand small outputs
        # to the im2col GEMM), no col2im.
        flipped = weight.transpose(0, 1).flip(-2, -1)
        # Its patches have C_out*kh*kw values, which may be more than the forward's.
        pixel_bytes = flipped[0].numel() * grad.element_size()
        limit = max(geometry.workspace_bytes, pixel_bytes)
        kernel, dilation = geometry.kernel_size, geometry.dilation
        flipped_geometry = ConvGeometry(
            kernel, (1, 1), dilation, flipped_pad, 1, chunk_limit(grad.device, limit)
        )
        return plain_kernels.tap_gemms(grad, flipped, None, flipped_geometry)
    g = geometry.groups
    c_out = weight.shape[0]
    kh, kw = geometry.kernel_size
    patch = channels // g * kh * kw
    hp, wp = height + top + bottom, width + left + right
    out_pixels = grad.shape[-2] * grad.shape[-1]
    image_bytes = channels * kh * kw * out_pixels * grad.element_size()
    images = max(1, geometry.workspace_bytes // max(image_bytes, 1))
    # (g, C/g*kh*kw, C_out/g): each group's weight matrix, transposed.
    weight_t = weight.reshape(g, c_out // g, patch).mT
    grad_input = grad.new_empty((n, channels, height, width))
    for n0 in range(0, n, images):
        n1 = min(n, n0 + images)
        grad_chunk = grad[n0:n1].reshape(n1 - n0, g, c_out // g, out_pixels)
        columns = torch.matmul(weight_t, grad_chunk).reshape(n1 - n0, channels * kh * kw, -1)
        folded = F.fold(
            columns,
            (hp, wp),
            geometry.kernel_size,
            dilation=geometry.dilation,
            stride=geometry.stride,
        )
        grad_input[n0:n1] = folded[..., top : top + height, left : left + width]
    return grad_input


# Bytes of planes per block of the depthwise formulas: about half an L2 cache.
_DEPTHWISE_BLOCK_BYTES = 2 * 2**20


def _widened(grad: torch.Tensor, wq: int) -> torch.Tensor:
    """``(P, m, OH, OW)`` -> ``(P, m, OH*wq)``, zeros in the columns past ``OW``."""
    out_w = grad.shape[-1]
    if out_w == wq:
        return grad.flatten(-2)
    return F.pad(grad, (0, wq - out_w)).flatten(-2)


def _depthwise_weight_grad(grad, input, weight_shape, geometry: ConvGeometry) -> torch.Tensor:
    n, channels, height, width = input.shape
    multiplier = weight_shape[0] // channels
    kh, kw = geometry.kernel_size
    sh, sw = geometry.stride
    out_h, out_w = grad.shape[-2:]
    hq, wq, taps = phase_layout(height, width, geometry)
    run = out_h * wq
    # One padded, phase-split copy of the input and one widened copy of the output gradient.
    phases = to_phases(input.reshape(n * channels, height, width), geometry, hq, wq)
    phases = phases.reshape(n, channels, sh, sw, hq * wq)
    widened = _widened(grad.reshape(n * channels, multiplier, out_h, out_w), wq)
    widened = widened.reshape(n, channels, multiplier, run)
    # Each tap's products are summed over the images first, elementwise (fast), and reduced
    # over the pixels once per tap; channels go in blocks whose images stay in cache across the
    # taps.
    channel_bytes = (n + 1) * multiplier * run + n * sh * sw * hq * wq
    block = max(_MIN_CHANNEL_BLOCK, _DEPTHWISE_BLOCK_BYTES // (channel_bytes * grad.element_size()))
    grad_weight = grad.new_zeros((kh * kw, channels, multiplier))
    if n == 0:
        return grad_weight.permute(1, 2, 0).reshape(weight_shape)
    image_stride, channel_stride = phases.stride(0), phases.stride(1)
    for c0 in range(0, channels, block):
        c1 = min(channels, c0 + block)
        grads = widened[:, c0:c1]
        products = grad.new_empty(grads.shape)
        for t, (a, b, offset) in enumerate(taps):
            # (N, block, 1, run): the tap's window of every image's planes, one view.
            start = phases.storage_offset() + c0 * channel_stride + (a * sw + b) * hq * wq + offset
            view = phases.as_strided(
                (n, c1 - c0, 1, run), (image_stride, channel_stride, 0, 1), start
            )
            torch.mul(grads, view, out=products)
            torch.sum(products, (0, 3), out=grad_weight[t, c0:c1])
    return grad_weight.permute(1, 2, 0).reshape(weight_shape)


# Fewer channels per block than this cost more in per-op overhead than the cache saves.
_MIN_CHANNEL_BLOCK = 8


def _depthwise_input_grad(grad, weight, input_shape, geometry: ConvGeometry) -> torch.Tensor:
    n, channels, height, width = input_shape
    multiplier = weight.shape[0] // channels
    left, right, top, bottom = geometry.zero_pad
    (span_h, span_w), (sh, sw) = geometry.span, geometry.stride
    out_h, out_w = grad.shape[-2:]
    flipped_pad = (span_w - 1 - left, span_w - 1 - right, span_h - 1 - top, span_h - 1 - bottom)
    if (sh, sw) == (1, 1) and multiplier == 1 and min(flipped_pad) >= 0:
        # Stride 1: the full correlation of dY with the flipped taps, by the forward's
        # cache-blocked kernel: exactly the forward's work.  (Strided, that correlation would
        # run over the input's size, sh*sw times the taps' own work: the phases below do less.)
        flipped = weight.flip(-2, -1)
        flipped_geometry = replace(geometry, stride=(1, 1), zero_pad=flipped_pad)
        return plain_kernels.depthwise_taps(grad, flipped, None, flipped_geometry)
    kh, kw = geometry.kernel_size
    hq, wq, taps = phase_layout(height, width, geometry)
    grads = grad.reshape(n * channels, multiplier, out_h, out_w)
    # (kh*kw, C, m, 1), each tap's scale of each plane's gradient.
    scales = weight.reshape(channels, multiplier, kh * kw).permute(2, 0, 1).unsqueeze(-1)
    plane_bytes = (2 * hq * wq * sh * sw + multiplier * out_h * wq) * grad.element_size()
    block = max(1, _DEPTHWISE_BLOCK_BYTES // plane_bytes)
    run = out_h * wq
    grad_input = grad.new_empty((n * channels, height, width))
    for p0 in range(0, n * channels, block):
        p1 = min(n * channels, p0 + block)
        widened = _widened(grads[p0:p1], wq)
        # Plane p is channel p % C of its image.
        block_scales = scales[:, torch.arange(p0, p1, device=grad.device) % channels]
        phases = grad.new_zeros((p1 - p0, sh, sw, hq * wq))
        for t, (a, b, offset) in enumerate(taps):
            target = phases[:, a, b, offset : offset + run]
            tap = block_scales[t]  # (P, m, 1)
            if multiplier == 1:
                target.addcmul_(widened[:, 0], tap[:, 0])
            else:
                target.add_((widened * tap).sum(1))
        # Back from phases to the padded plane, then crop the padding.
        padded = phases.reshape(p1 - p0, sh, sw, hq, wq).permute(0, 3, 1, 4, 2)
        padded = padded.reshape(p1 - p0, hq * sh, wq * sw)
        grad_input[p0:p1] = padded[:, top : top + height, left : left + width]
    return grad_input.reshape(input_shape)
