"""Step 3 of the pass, on a GPU: the CUDA plan, what ``auto`` runs on CUDA tensors.

On a GPU the cost of an explicit lowering is kernel launches and bytes, not FLOPs (see
``docs/performance.md#gpu``): a native conv is one cuDNN implicit-GEMM kernel, ``F.unfold``
launches one im2col kernel per image, and the CPU plan's tap loops launch one GEMM or
multiply-add per kernel tap.  So every form here is a handful of batch-wide ops, whatever the
batch size, with no loop over images, taps or chunks, and no ``im2col``/``col2im`` op:

``gemm``
    Pad (one copy, skipped when there is no padding), gather the columns from strided views of
    the padded input in ``(N, groups, C/g * K, P)`` order (one copy), and multiply:
    ``W (g, C_out/g, C/g * K) @ columns``.  The product is already the NCHW output; with one
    group the bias rides in the GEMM (``baddbmm``).  Any dimension count (1-D, 2-D, 3-D).
``gemm_nhwc``
    A channels-last 2-D input (one group): the columns gathered in ``(N*P, K*C)`` order, where
    each patch is ``kh*kw`` runs of ``C`` contiguous values, and ``addmm(bias, columns, Wᵀ)``
    writes ``(N*P, C_out)``: the channels-last output, with no permute copy, as cuDNN returns a
    channels-last input's output.
``pointwise``
    A 1x1 kernel: no gather at all.  ``W (C_out, C) @ x (N, C, H*W)``, one batched GEMM on the
    planes as they lie (a channels-last input: ``addmm`` on its ``(N*H*W, C)`` rows).
``depthwise_banded``
    A depthwise 1-D or 2-D conv on an input at most :data:`BANDED_MAX_WIDTH` wide: for each
    channel, one GEMM of the padded rows ``(N*Hp, Wp)`` with a banded matrix ``(Wp, kh*OW)``
    that holds the kernel's taps (row ``i``'s taps on band ``i``), then the sum of the ``kh``
    row products that meet at each output row (a diagonal of an unfolded view).  A few kernels
    and input-sized traffic, where columns would be ``kh*kw`` times the output; the band spends
    ``Wp/kw`` times the FLOPs of a direct depthwise conv, which a GPU has to spare.
``depthwise_gemm``
    Other depthwise convs: columns ``(N, C, K, P)`` by one copy, then the batched GEMV
    ``W (C, m, K) @ columns``.
``depthwise_taps``
    Under ``torch.compile``: the sum over taps of shifted views times per-channel weights,
    which Inductor fuses into one kernel (eager, that would be ``2*kh*kw`` launches).

A transposed conv of stride 1 is the plain conv of its padded (or cropped) input with the
flipped kernel.  A strided one is its GEMM, ``Wᵀ @ x`` (one batched GEMM: the columns of every
output tap), then col2im written as one strided, in-place add per kernel tap into the full
output (``kh*kw`` adds, batch-wide, where ``F.fold`` launches one kernel per image), cropped
with the bias in one last pass.

An eager call that needs no gradient takes a fast path (:func:`planned`): its conv's shapes are
worked out once per input shape, and a *small* call (column matrix at most
:data:`SMALL_CALL_BYTES`, as at batch 1), which on a GPU waits on the host, not on bytes, takes
the fewest ops: the columns gathered from the unpadded input by one ``grid_sampler`` call
(nearest sampling at integer coordinates with zero padding: an exact indexed copy, padding
included), then the GEMM; a depthwise conv takes that too instead of the banded form.

Autograd differentiates these ops directly: their backward is GEMMs, a scatter of the column
gradient back through the views (``unfold_backward``), and a slice, again a fixed number of
kernels per conv.

Everything is plain eager PyTorch on standard ops; :func:`cuda_conv` is called from the lowered
graph (a leaf of it) when the input is on a CUDA device, or always with ``target="cuda"``, so
the plan's arithmetic runs, and is tested, on CPU tensors too.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .engine import traced
from .nd import flipped_kernel
from .spec import ConvSpec
from .tiling import chunk_limit

__all__ = [
    "BANDED_MAX_WIDTH",
    "CUDA_FORMS",
    "CUDA_WORKSPACE_FRACTION",
    "SAMPLED_GATHER_DTYPES",
    "SMALL_CALL_BYTES",
    "cuda_conv",
    "cuda_form",
    "cuda_workspace_bytes",
    "cuda_workspace_limit",
    "planned",
]

CUDA_FORMS = (
    "gemm",
    "gemm_nhwc",
    "pointwise",
    "depthwise_banded",
    "depthwise_gemm",
    "depthwise_taps",
)

# The widest padded input the banded depthwise form takes: its GEMMs spend ``Wp / kw`` times a
# direct depthwise conv's FLOPs (at 224x224 ImageNet sizes Wp <= 116), so wide images go to
# ``depthwise_gemm``'s columns instead.
BANDED_MAX_WIDTH = 160


def cuda_form(
    spec: ConvSpec,
    channels_last: bool = False,
    compiling: bool = False,
    padded_width: int | None = None,
) -> str:
    """Which of :data:`CUDA_FORMS` :func:`cuda_conv` runs for this conv; a depthwise one is
    banded only on a padded input at most :data:`BANDED_MAX_WIDTH` wide (``None``: unknown,
    taken as narrow enough)."""
    if spec.transposed:
        return cuda_form(spec.equivalent_conv(), channels_last, compiling, padded_width)
    if spec.is_depthwise:
        if compiling:
            return "depthwise_taps"
        narrow = padded_width is None or padded_width <= BANDED_MAX_WIDTH
        return "depthwise_banded" if spec.ndim <= 2 and narrow else "depthwise_gemm"
    if all(k == 1 for k in spec.kernel_size) and not any(spec.pad):
        return "pointwise"
    if channels_last and spec.ndim == 2 and spec.groups == 1:
        return "gemm_nhwc"
    return "gemm"


def cuda_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
) -> torch.Tensor:
    """The convolution ``spec`` (any kind) by the CUDA plan; equal to ``F.conv*`` to rounding.

    ``input`` is batched ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
    """
    unbatched = input.dim() == spec.ndim + 1
    if unbatched:
        input = input.unsqueeze(0)
    if spec.transposed and any(s != 1 for s in spec.stride):
        out = _transposed_gemm(input, weight, bias, spec)
    elif spec.transposed:
        out = _plain_conv(input, flipped_kernel(weight, spec), bias, spec.equivalent_conv())
    else:
        out = _plain_conv(input, weight, bias, spec)
    return out.squeeze(0) if unbatched else out


def _plain_conv(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    channels_last = spec.ndim == 2 and _is_channels_last(input)
    width = input.shape[-1] + spec.pad[0] + spec.pad[1]
    form = cuda_form(spec, channels_last, torch.compiler.is_compiling(), width)
    if form == "pointwise":
        return _pointwise(input, weight, bias, spec, channels_last)
    # (An empty batch goes to the columns: the banded form pads a channel-major copy, and
    # reflect padding refuses an empty dimension there.)
    if form == "depthwise_banded" and input.shape[0] > 0:
        if spec.ndim == 1:
            lifted = spec.lifted_to_2d()
            out = _depthwise_banded(input.unsqueeze(-2), weight.unsqueeze(-2), bias, lifted)
            return out.squeeze(-2)
        return _depthwise_banded(input, weight, bias, spec)
    input = _padded(input, spec)
    if form in ("depthwise_banded", "depthwise_gemm"):
        return _gemm(input, weight, bias, spec)  # g = C groups of K-value columns each
    if form == "depthwise_taps":
        return _depthwise_taps(input, weight, bias, spec)
    if form == "gemm_nhwc":
        return _gemm_nhwc(input, weight, bias, spec)
    return _gemm(input, weight, bias, spec)


def _is_channels_last(input: torch.Tensor) -> bool:
    return (
        input.dim() == 4
        and input.shape[1] > 1
        and input.is_contiguous(memory_format=torch.channels_last)
        and not input.is_contiguous()
    )


def _padded(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """The input with the conv's padding applied (one copy; none without padding)."""
    if not any(spec.pad):
        return input
    mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode
    return F.pad(input, spec.pad, mode=mode)


def _windows(padded: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """``(N, C, *out, *kernel)`` strided views of a padded input: no copy."""
    views = padded
    for axis, (k, s, d) in enumerate(
        zip(spec.kernel_size, spec.stride, spec.dilation, strict=True)
    ):
        views = views.unfold(2 + axis, d * (k - 1) + 1, s)
    if any(d != 1 for d in spec.dilation):
        views = views[(..., *(slice(None, None, d) for d in spec.dilation))]
    return views


def _gemm(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """Channel-major columns ``(N, g, C/g*K, P)`` by one copy, then ``W @ columns``."""
    n, nd, g = input.shape[0], spec.ndim, spec.groups
    windows = _windows(input, spec)
    out_sizes = windows.shape[2 : 2 + nd]
    # (N, C, *out, *kernel) -> (N, C, *kernel, *out) -> (N, g, C/g * K, P): the one copy.
    order = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    columns = windows.permute(order).reshape(n, g, spec.patch_size, math.prod(out_sizes))
    weight_matrix = weight.reshape(g, spec.out_per_group, spec.patch_size)
    return _grouped_product(weight_matrix, columns, bias).view(n, spec.out_channels, *out_sizes)


def _grouped_product(weight_matrix, columns, bias) -> torch.Tensor:
    """``W (g, O/g, K) @ columns (N, g, K, P)`` as ``(N, O, P)``: one ``baddbmm`` with the bias
    fused for one group, else a batched matmul per group and the bias added."""
    if weight_matrix.shape[0] == 1 and bias is not None:
        n = columns.shape[0]
        return torch.baddbmm(
            bias.view(1, -1, 1), weight_matrix.expand(n, -1, -1), columns.squeeze(1)
        )
    product = torch.matmul(weight_matrix, columns).flatten(1, 2)
    return product if bias is None else product + bias.view(-1, 1)


def _gemm_nhwc(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """Row-per-pixel columns ``(N*OH*OW, kh*kw*C)`` from a channels-last input (each patch is
    ``kh*kw`` runs of ``C`` contiguous values), ``addmm`` into the channels-last output."""
    n = input.shape[0]
    windows = _windows(input, spec)  # (N, C, OH, OW, kh, kw)
    out_h, out_w = windows.shape[2], windows.shape[3]
    columns = windows.permute(0, 2, 3, 4, 5, 1).reshape(n * out_h * out_w, spec.patch_size)
    weight_matrix = weight.permute(0, 2, 3, 1).reshape(spec.out_channels, -1)
    if bias is None:
        product = torch.mm(columns, weight_matrix.t())
    else:
        product = torch.addmm(bias, columns, weight_matrix.t())
    return product.view(n, out_h, out_w, spec.out_channels).permute(0, 3, 1, 2)


def _pointwise(input, weight, bias, spec: ConvSpec, channels_last: bool) -> torch.Tensor:
    """A 1x1 conv: no gather; a strided one reads every ``s``-th pixel (a view, copied by the
    GEMM's operand reshape only when strided)."""
    if any(s != 1 for s in spec.stride):
        input = input[(..., *(slice(None, None, s) for s in spec.stride))]
    n, out_sizes, g = input.shape[0], input.shape[2:], spec.groups
    if channels_last and g == 1:
        rows = input.permute(0, 2, 3, 1).reshape(-1, spec.in_channels)
        weight_matrix = weight.reshape(spec.out_channels, spec.in_channels)
        if bias is None:
            product = torch.mm(rows, weight_matrix.t())
        else:
            product = torch.addmm(bias, rows, weight_matrix.t())
        return product.view(n, *out_sizes, spec.out_channels).permute(0, 3, 1, 2)
    planes = input.reshape(n, g, spec.in_per_group, math.prod(out_sizes))
    weight_matrix = weight.reshape(g, spec.out_per_group, spec.in_per_group)
    return _grouped_product(weight_matrix, planes, bias).view(n, spec.out_channels, *out_sizes)


def _depthwise_taps(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """The sum over taps of shifted views times per-channel weights (for Inductor to fuse)."""
    windows = _windows(input, spec)  # (N, C, *out, *kernel)
    nd, m = spec.ndim, spec.out_per_group
    if m > 1:
        windows = windows.repeat_interleave(m, dim=1)
    taps = weight.reshape(spec.out_channels, spec.kernel_numel)
    flat = windows.flatten(2 + nd)  # (N, C_out, *out, K)
    shape = (1, spec.out_channels) + (1,) * nd
    out = flat[..., 0] * taps[:, 0].view(shape)
    for t in range(1, spec.kernel_numel):
        out = out + flat[..., t] * taps[:, t].view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


def _depthwise_banded(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """A 2-D depthwise conv by one batched GEMM per channel with a banded matrix: ``rows (C,
    N*Hp, Wp) @ band (C, Wp, m*kh*OW)`` on the padded rows, then the sum over the kernel's rows
    of the products that land on each output row."""
    # (N, C, H, W) -> (C, N, Hp, Wp): the padding and the channel-major layout in one copy.
    rows = _padded(input.transpose(0, 1), spec)
    c, n, hp, wp = rows.shape
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    m = spec.out_per_group
    out_h = (hp - dh * (kh - 1) - 1) // sh + 1
    out_w = (wp - dw * (kw - 1) - 1) // sw + 1
    # band[c, p, t, i, q] = weight[c*m + t, 0, i, j] where p == q*sw + j*dw: row i's taps.
    selector = _band_selector(kw, sw, dw, wp, out_w, weight)
    taps = weight.reshape(c * m * kh, kw)
    band = torch.matmul(taps, selector)  # (C*m*kh, Wp*OW)
    band = band.view(c, m * kh, wp, out_w).permute(0, 2, 1, 3).reshape(c, wp, m * kh * out_w)
    product = torch.bmm(rows.reshape(c, n * hp, wp), band).view(c, n, hp, m, kh, out_w)
    # Output row r takes kernel row i from padded row r*sh + i*dh: a diagonal of the unfolded
    # rows, summed over i.
    spans = product.unfold(2, dh * (kh - 1) + 1, sh)[..., ::dh]  # (C, N, OH, m, kh, OW, kh)
    taps_per_row = spans.diagonal(dim1=4, dim2=6)  # (C, N, OH, m, OW, kh)
    # Summed in the output's own order, so the reduction writes NCHW directly.
    out = taps_per_row.permute(1, 0, 3, 2, 4, 5).sum(-1).reshape(n, c * m, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _band_selector(kw, sw, dw, wp, out_w, weight: torch.Tensor) -> torch.Tensor:
    """``S[j, p*OW + q] = 1`` where ``p == q*sw + j*dw``: taps times ``S`` is the band.  Built
    from ``arange``s; eager calls cache it per shape, device and dtype (a tracer records the
    ``arange``s instead of a constant)."""
    device, dtype = weight.device, weight.dtype
    if traced(weight):
        return _build_selector(kw, sw, dw, wp, out_w, device, dtype)
    return _cached_selector(kw, sw, dw, wp, out_w, device, dtype)


def _build_selector(kw, sw, dw, wp, out_w, device, dtype) -> torch.Tensor:
    p = torch.arange(wp, device=device).view(1, wp, 1)
    q = torch.arange(out_w, device=device).view(1, 1, out_w)
    j = torch.arange(kw, device=device).view(kw, 1, 1)
    return (p == q * sw + j * dw).to(dtype).view(kw, wp * out_w)


@functools.lru_cache(maxsize=256)
def _cached_selector(kw, sw, dw, wp, out_w, device, dtype) -> torch.Tensor:
    return _build_selector(kw, sw, dw, wp, out_w, device, dtype)


def _transposed_gemm(input, weight, bias, spec: ConvSpec) -> torch.Tensor:
    """A strided transposed conv: ``columns = Wᵀ @ x``, each tap's columns added into its
    strided place in the full output, then the crop (``padding``, ``output_padding``) and the
    bias in one pass."""
    n, nd, g = input.shape[0], spec.ndim, spec.groups
    sizes = tuple(input.shape[2:])
    taps = tuple(spec.kernel_size)
    weight_matrix = weight.reshape(g, spec.in_per_group, spec.out_per_group * spec.kernel_numel)
    planes = input.reshape(n, g, spec.in_per_group, math.prod(sizes))
    columns = torch.matmul(weight_matrix.transpose(1, 2), planes)
    columns = columns.view(n, spec.out_channels, *taps, *sizes)
    out_sizes = spec.output_size(*sizes)
    lows = [low for low, _ in spec.pad_per_dim]
    spans = [
        (size - 1) * s + d * (k - 1) + 1
        for size, s, d, k in zip(sizes, spec.stride, spec.dilation, taps, strict=True)
    ]
    full_sizes = [
        max(span, low + out) for span, low, out in zip(spans, lows, out_sizes, strict=True)
    ]
    full = columns.new_zeros((n, spec.out_channels, *full_sizes))
    for tap in itertools.product(*(range(k) for k in taps)):
        place = tuple(
            slice(t * d, t * d + (size - 1) * s + 1, s)
            for t, d, s, size in zip(tap, spec.dilation, spec.stride, sizes, strict=True)
        )
        # (.add_ on the view: ``full[place] += ...`` would also copy the sum back onto itself.)
        full[(slice(None), slice(None), *place)].add_(columns[(slice(None), slice(None), *tap)])
    crop = tuple(slice(low, low + out) for low, out in zip(lows, out_sizes, strict=True))
    out = full[(slice(None), slice(None), *crop)]
    if bias is None:
        return out.contiguous()
    return out + bias.view(-1, *(1,) * nd)


# Without a cap, the plan builds its intermediate whole unless it would take more than this share
# of the GPU's memory (then ``nchw`` computes the conv in chunks under that size).  On a CPU
# (``target="cuda"``, the tests) only a cap limits it.
CUDA_WORKSPACE_FRACTION = 1 / 8


def cuda_workspace_limit(device: torch.device, max_workspace_bytes: int | None) -> int:
    """The largest intermediate the plan builds whole: the cap (none by default), and on a GPU
    at most :data:`CUDA_WORKSPACE_FRACTION` of its memory."""
    if device.type == "cuda" and torch.cuda.is_available():
        device_limit = int(_device_memory(device.index) * CUDA_WORKSPACE_FRACTION)
        return (
            device_limit if max_workspace_bytes is None else min(max_workspace_bytes, device_limit)
        )
    return chunk_limit(device, max_workspace_bytes) if max_workspace_bytes else sys.maxsize


@functools.lru_cache(maxsize=16)
def _device_memory(index: int | None) -> int:
    return torch.cuda.get_device_properties(index or 0).total_memory


def cuda_workspace_bytes(
    spec: ConvSpec,
    batch: int,
    spatial: tuple[int, ...],
    itemsize: int,
    channels_last: bool = False,
) -> int:
    """The largest intermediate the CUDA plan builds for one call, in bytes: the column matrix
    (``gemm``, ``gemm_nhwc``, ``depthwise_gemm``), the banded product (``depthwise_banded``),
    nothing for ``pointwise``."""
    if spec.transposed and any(s != 1 for s in spec.stride):
        return spec.im2col_elements(batch, *spatial) * itemsize
    if spec.transposed:
        padded = tuple(
            n + low + high
            for n, (low, high) in zip(spatial, spec.equivalent_conv().pad_per_dim, strict=True)
        )
        unpadded = replace(spec.equivalent_conv(), pad=(0,) * len(spec.pad))
        return cuda_workspace_bytes(unpadded, batch, padded, itemsize)
    padded = [n + low + high for n, (low, high) in zip(spatial, spec.pad_per_dim, strict=True)]
    form = cuda_form(spec, channels_last, padded_width=padded[-1])
    if form == "pointwise":
        return 0
    if form == "depthwise_banded":
        out_w = spec.output_size(*spatial)[-1]
        kh = spec.kernel_size[0] if spec.ndim == 2 else 1
        rows = padded[0] if spec.ndim == 2 else 1
        return batch * spec.out_channels * rows * kh * out_w * itemsize
    return spec.im2col_elements(batch, *spatial) * itemsize


# -- the eager fast path ---------------------------------------------------------------------------
#
# On a GPU a batch-32 forward of a small model is bound by the host: Python and launches, not
# the GPU (a native resnet18 took 2.5 ms at batch 1 and 2.8 ms at batch 32 on an H200).  So an
# eager call that needs no gradient looks its conv up once per input shape (the form, the padding,
# the window strides, the shapes to view) and then runs a few tensor calls with no other Python.


class _Recipe(NamedTuple):
    form: str  # "gemm", "pointwise", "depthwise_banded", "general" or "chunked"
    pad: tuple[int, ...]
    window_sizes: tuple[int, ...] = ()
    window_strides: tuple[int, ...] = ()
    columns: tuple[int, ...] = ()
    weight: tuple[int, ...] = ()
    bias: tuple[int, ...] = ()
    out: tuple[int, ...] = ()
    selector: tuple = ()
    grid: torch.Tensor | None = None  # the sampled gather's coordinates (see _sample_grid)


# A call whose column matrix is at most this many bytes is bound by the host on a GPU: launches
# and Python, not bytes, are its cost, so the eager fast path takes the fewest ops.  It gathers
# the columns with one sampled gather (no pad), and a depthwise conv takes its columns and one
# batched GEMM (3 ops) instead of the banded form (about 12).  Larger calls, where bytes count,
# pad and copy (the copy kernel streams faster than sampling) and keep the banded form.  Measured
# on an H200 (docs/performance.md, "The eager fast path"): at batch 1 every column matrix of the
# zoo but convnext's first 7x7 depthwise stage is below 64 MiB; at batch 32 most are above.
SMALL_CALL_BYTES = 64 * 2**20

# The dtypes whose sampled gather is exact: a coordinate ``(2*i + 1)/W - 1`` in float32 comes back
# to ``i`` within ``W * 2**-23`` of a pixel, far inside nearest rounding's half pixel.  Half
# precision coordinates are ``W * 2**-11`` (float16) or ``W * 2**-8`` (bfloat16) off, a whole
# pixel for a 224-wide bfloat16 image, so those dtypes pad and gather by strided views instead.
SAMPLED_GATHER_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=4096)
def _recipe(spec: ConvSpec, shape, contiguous: bool, dtype, device, cap, small_bytes) -> _Recipe:
    itemsize = torch.empty((), dtype=dtype).element_size()
    batched = len(shape) == spec.ndim + 2
    batch = shape[0] if batched else 1
    channels_last = spec.ndim == 2 and batched and not contiguous
    workspace = cuda_workspace_bytes(
        spec, batch, tuple(shape[-spec.ndim :]), itemsize, channels_last
    )
    if workspace > cuda_workspace_limit(device, cap):
        return _Recipe("chunked", ())
    simple = (
        batched
        and contiguous
        and spec.ndim == 2
        and not spec.transposed
        and spec.padding_mode == "zeros"
        and batch > 0
    )
    if not simple:
        return _Recipe("general", ())
    pad = spec.pad if any(spec.pad) else ()
    n, c, h, w = shape
    (top, bottom), (left, right) = spec.pad_per_dim
    hp, wp = h + top + bottom, w + left + right
    form = cuda_form(spec, padded_width=wp)
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    out_h = (hp - dh * (kh - 1) - 1) // sh + 1
    out_w = (wp - dw * (kw - 1) - 1) // sw + 1
    o, g = spec.out_channels, spec.groups
    small = n * spec.patch_size * g * out_h * out_w * itemsize <= small_bytes
    if form == "depthwise_banded" and small:
        form = "depthwise_gemm"
    if form == "pointwise" and (g != 1 or (sh, sw) != (1, 1)):
        form = "gemm"  # the strided pixels gathered (K = 1), or the groups' GEMMs
    if form in ("gemm", "depthwise_gemm"):
        grid = None
        if small and dtype in SAMPLED_GATHER_DTYPES:
            grid = _sample_grid(spec, h, w, out_h, out_w, dtype, device).expand(n, -1, -1, -1)
        return _Recipe(
            "gemm",
            pad,
            (n, c, kh, kw, out_h, out_w),
            (c * hp * wp, hp * wp, dh * wp, dw, sh * wp, sw),
            (n, spec.patch_size, out_h * out_w) if g == 1 else (n, g, spec.patch_size, -1),
            (o, spec.patch_size) if g == 1 else (g, spec.out_per_group, spec.patch_size),
            (1, o, 1),
            (n, o, out_h, out_w),
            grid=grid,
        )
    if form == "pointwise" and g == 1 and (sh, sw) == (1, 1):
        return _Recipe(
            "pointwise", (), columns=(n, c, h * w), weight=(o, c), bias=(o, 1), out=(n, o, h, w)
        )
    if form == "depthwise_banded":
        m = spec.out_per_group
        s_kh = out_w
        s_m = kh * s_kh
        s_hp = m * s_m
        s_n = hp * s_hp
        s_c = n * s_n
        return _Recipe(
            "depthwise_banded",
            pad,
            (n, c, m, out_h, out_w, kh),
            (s_n, s_c, s_m, sh * s_hp, 1, dh * s_hp + s_kh),
            (c, n * hp, wp),
            (c * m * kh, kw),
            (o, 1, 1),
            (n, o, out_h, out_w),
            (kw, sw, dw, wp, out_w, m * kh),
        )
    return _Recipe("general", ())


def _sample_grid(spec: ConvSpec, h, w, out_h, out_w, dtype, device) -> torch.Tensor:
    """Where each column value comes from, as ``grid_sampler`` coordinates ``(1, K, P, 2)``:
    tap ``(i, j)`` of output pixel ``(y, x)`` reads input pixel ``(y*sh - top + i*dh,
    x*sw - left + j*dw)``, normalised as ``(2*p + 1)/size - 1`` (``align_corners=False``).  A
    pixel off the image is a padding zero: nearest sampling with zero padding reads it as 0, so
    the sampled ``(N, C, K, P)`` is the zero-padded columns, gathered by one kernel from the
    unpadded input."""
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    (top, _), (left, _) = spec.pad_per_dim
    f64 = torch.float64
    rows = torch.arange(out_h, dtype=f64).view(1, 1, -1, 1) * sh - top
    rows = rows + torch.arange(kh, dtype=f64).view(-1, 1, 1, 1) * dh
    cols = torch.arange(out_w, dtype=f64).view(1, 1, 1, -1) * sw - left
    cols = cols + torch.arange(kw, dtype=f64).view(1, -1, 1, 1) * dw
    shape = (kh, kw, out_h, out_w)
    xs = (2 * cols.expand(shape) + 1) / w - 1
    ys = (2 * rows.expand(shape) + 1) / h - 1
    grid = torch.stack((xs, ys), dim=-1).reshape(1, kh * kw, out_h * out_w, 2)
    return grid.to(device=device, dtype=dtype)


def _gathered_columns(input: torch.Tensor, recipe: _Recipe) -> torch.Tensor:
    """The zero-padded column matrix of a fast-path ``gemm`` recipe: one sampled gather from the
    unpadded input (small calls, float32/64), or a pad and one copy from strided views.  The
    padded copy is not kept, so it is free again before the GEMM allocates its output."""
    if recipe.grid is not None:
        # grid_sampler(input, grid, interpolation=nearest, padding=zeros, align_corners=False)
        return torch.grid_sampler(input, recipe.grid, 1, 0, False).view(recipe.columns)
    padded = torch.constant_pad_nd(input, recipe.pad) if recipe.pad else input
    windows = padded.as_strided(recipe.window_sizes, recipe.window_strides)
    return windows.reshape(recipe.columns)


def planned(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    max_workspace_bytes: int | None = None,
) -> torch.Tensor | None:
    """:func:`cuda_conv`, or ``None`` when its intermediate would exceed the workspace limit
    (:func:`cuda_workspace_limit`).  Eager calls that need no gradient take the fast path."""
    if traced(weight, input):
        return cuda_conv(input, weight, bias, spec)
    recipe = _recipe(
        spec,
        tuple(input.shape),
        input.is_contiguous(),
        input.dtype,
        input.device,
        max_workspace_bytes,
        SMALL_CALL_BYTES,
    )
    form = recipe.form
    if form == "chunked":
        return None
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if form == "general" or needs_grad or not weight.is_contiguous():
        return cuda_conv(input, weight, bias, spec)
    if form in ("gemm", "pointwise"):
        gemm = form == "gemm"
        columns = _gathered_columns(input, recipe) if gemm else input.view(recipe.columns)
        if len(recipe.weight) == 3:  # groups: (g, O/g, K) @ (N, g, K, P), broadcast over N
            out = torch.matmul(weight.view(recipe.weight), columns).view(recipe.out)
            return out if bias is None else out.add_(bias.view(-1, 1, 1))
        weights = weight.view(recipe.weight).expand(recipe.columns[0], *recipe.weight)
        if bias is None:
            return torch.bmm(weights, columns).view(recipe.out)
        return torch.baddbmm(bias.view(recipe.bias), weights, columns).view(recipe.out)
    else:  # depthwise_banded
        kw, sw, dw, wp, out_w, rows_per_channel = recipe.selector
        selector = _cached_selector(kw, sw, dw, wp, out_w, weight.device, weight.dtype)
        c = recipe.columns[0]
        band = torch.matmul(weight.view(recipe.weight), selector).view(
            c, rows_per_channel, wp, out_w
        )
        band = band.transpose(1, 2).reshape(c, wp, rows_per_channel * out_w)
        rows = input.transpose(0, 1)
        rows = F.pad(rows, recipe.pad) if recipe.pad else rows.contiguous()
        product = torch.bmm(rows.view(recipe.columns), band)
        summands = product.as_strided(recipe.window_sizes, recipe.window_strides)
        out = summands.sum(-1).reshape(recipe.out)
        if bias is not None:
            out += bias.view(recipe.bias)
        return out
