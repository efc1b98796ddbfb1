"""How a lowered conv's work is cut up, as index arithmetic: no GEMM and no autograd in here.

- :class:`ConvGeometry`: what a kernel and its backward need to know of a conv beyond its tensors;
- :func:`chunk_limit`, :func:`plan_chunks`, :func:`output_tiles`, :func:`input_window`: the im2col
  buffer split into chunks of images, output rows or columns that fit a byte limit, and the input
  window each chunk reads;
- :func:`phase_layout`, :func:`to_phases`: a strided conv's padded input split into its ``sh x sw``
  phases, so that every kernel tap reads one contiguous run of one phase.

The kernels (:mod:`.plain_kernels`, :mod:`.kernels`), their backward (:mod:`.autograd`) and the
strategies share them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "ChunkPlan",
    "ConvGeometry",
    "chunk_limit",
    "input_window",
    "output_tiles",
    "phase_layout",
    "plan_chunks",
    "to_phases",
]


@dataclass(frozen=True)
class ConvGeometry:
    """What the backward needs to know of a conv beyond its tensors: ``zero_pad`` is
    ``(left, right, top, bottom)``, ``workspace_bytes`` the largest im2col chunk to build."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    zero_pad: tuple[int, int, int, int]
    groups: int
    workspace_bytes: int

    @property
    def span(self) -> tuple[int, int]:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        return dh * (kh - 1) + 1, dw * (kw - 1) + 1

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        left, right, top, bottom = self.zero_pad
        (span_h, span_w), (sh, sw) = self.span, self.stride
        return (height + top + bottom - span_h) // sh + 1, (width + left + right - span_w) // sw + 1


# The im2col chunk the fast strategies aim for on CPU: large enough that the GEMM runs at full
# speed, small enough to stay in a 32 MiB L3 cache next to its output.
DEFAULT_WORKSPACE_BYTES = 8 * 2**20


def chunk_limit(device: torch.device, max_workspace_bytes: int | None) -> int:
    """The im2col bytes per chunk: the cap, and on CPU at most :data:`DEFAULT_WORKSPACE_BYTES`
    (a GPU has no cache to fit, so it chunks only under a cap)."""
    limit = max_workspace_bytes if max_workspace_bytes is not None else sys.maxsize
    return min(limit, DEFAULT_WORKSPACE_BYTES) if device.type == "cpu" else limit


@dataclass(frozen=True)
class ChunkPlan:
    """How :func:`im2col_gemm` splits one convolution: ``images`` whole images per chunk, or, when
    one image is too much, ``rows`` output rows of one image (``images == 1``), or ``columns``
    output columns of one row (``rows == 1``).  ``workspace_bytes`` is the largest chunk's im2col
    buffer."""

    images: int
    rows: int
    columns: int
    workspace_bytes: int
    chunks: int


def plan_chunks(
    batch: int, out_h: int, out_w: int, patch_size: int, itemsize: int, max_bytes: int
) -> ChunkPlan:
    """Split ``batch`` images of ``out_h x out_w`` outputs into the fewest chunks whose im2col
    buffer (``pixels * patch_size * itemsize`` bytes) fits ``max_bytes``.

    >>> plan_chunks(8, 56, 56, 576, 4, 8 * 2**20)
    ChunkPlan(images=1, rows=56, columns=56, workspace_bytes=7225344, chunks=8)
    >>> plan_chunks(1, 56, 56, 576, 4, 2**20).rows
    8

    Raises ``ValueError`` when not even one output pixel's patch fits.
    """
    pixel = patch_size * itemsize
    if not isinstance(batch, int):
        # A symbolic batch (torch.export with a Dim): a graph cannot loop a symbolic number of
        # times, so the batch is one chunk, whatever max_bytes says.
        return ChunkPlan(batch, out_h, out_w, batch * out_h * out_w * pixel, 1)
    if pixel > max_bytes:
        raise ValueError(
            f"max_workspace_bytes={max_bytes} is smaller than one output pixel's im2col column "
            f"({patch_size} values x {itemsize} bytes = {pixel} bytes); raise it to at least {pixel}"
        )
    row, image = out_w * pixel, out_h * out_w * pixel
    if image <= max_bytes or out_h * out_w == 0:
        images = max(1, min(batch, max_bytes // max(image, 1)))
        chunks = math.ceil(batch / images) if batch else 0
        return ChunkPlan(images, out_h, out_w, images * image, chunks)
    if row <= max_bytes:
        rows = max_bytes // row
        return ChunkPlan(1, rows, out_w, rows * row, batch * math.ceil(out_h / rows))
    columns = max_bytes // pixel
    return ChunkPlan(1, 1, columns, columns * pixel, batch * out_h * math.ceil(out_w / columns))


def output_tiles(plan: ChunkPlan, batch: int, out_h: int, out_w: int):
    """``(images, rows, columns)`` slices of the output, one per chunk of ``plan``."""
    for n0 in range(0, batch, plan.images):
        images = slice(n0, min(batch, n0 + plan.images))
        for r0 in range(0, out_h, plan.rows):
            rows = slice(r0, min(out_h, r0 + plan.rows))
            for c0 in range(0, out_w, plan.columns):
                yield images, rows, slice(c0, min(out_w, c0 + plan.columns))


def input_window(out: slice, stride: int, span: int) -> slice:
    """The input rows (or columns) that the outputs ``out`` read."""
    return slice(out.start * stride, (out.stop - 1) * stride + span)


def phase_layout(height: int, width: int, geometry: ConvGeometry):
    """The padded input split into its ``sh x sw`` phases, each flattened: tap ``(i, j)`` of
    output row ``oh``, column ``ow`` reads phase ``(i*dh % sh, j*dw % sw)`` at ``offset + oh*wq +
    ow``, so an output plane widened to ``wq`` columns is one contiguous run of every phase.
    Returns ``(hq, wq, [(phase_row, phase_col, offset) per tap])``; one spare phase row covers
    the last tap's overhang."""
    left, right, top, bottom = geometry.zero_pad
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    hp, wp = height + top + bottom, width + left + right
    hq, wq = -(-hp // sh) + 1, -(-wp // sw)
    taps = []
    for i in range(kh):
        for j in range(kw):
            a, b = i * dh, j * dw
            taps.append((a % sh, b % sw, (a // sh) * wq + b // sw))
    return hq, wq, taps


def to_phases(planes: torch.Tensor, geometry: ConvGeometry, hq: int, wq: int) -> torch.Tensor:
    """``(P, H, W)`` -> zero-padded ``(P, sh, sw, hq*wq)``."""
    left, right, top, bottom = geometry.zero_pad
    sh, sw = geometry.stride
    height, width = planes.shape[-2:]
    extra_h = hq * sh - (height + top + bottom)
    extra_w = wq * sw - (width + left + right)
    padded = F.pad(planes, (left, right + extra_w, top, bottom + extra_h))
    if (sh, sw) == (1, 1):
        return padded.reshape(planes.shape[0], 1, 1, hq * wq)
    phases = padded.reshape(planes.shape[0], hq, sh, wq, sw).permute(0, 2, 4, 1, 3)
    # Contiguous: with one phase in a dimension the reshape could be a strided view instead.
    return phases.contiguous().reshape(planes.shape[0], sh, sw, hq * wq)
