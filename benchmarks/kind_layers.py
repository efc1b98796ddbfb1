"""The layer measurements behind ``auto``'s rules for 3-D and transposed convs.

    python benchmarks/kind_layers.py [--threads N] [--repeats N]

Each conv alone, native against each strategy of :mod:`lowerconv.lowering.functional`, median of
``--repeats`` calls, as a ratio lowered/native: r3d_18's layer shapes (batch 1) under every
strategy, and a DCGAN generator's strided transposed layers (batch 8) under ``unfold`` (matmul +
``F.fold``), ``nhwc`` (the fast GEMM + fold) and the alternative that was rejected, the plain
conv of a zero-stuffed input.  A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lowerconv.lowering import functional as lowered

VIDEO_LAYERS = [  # (C_in, C_out, kernel, stride, frames, side)
    (3, 64, (3, 7, 7), (1, 2, 2), 16, 112),
    (64, 64, (3, 3, 3), (1, 1, 1), 16, 56),
    (128, 128, (3, 3, 3), (1, 1, 1), 8, 28),
    (64, 128, (1, 1, 1), (2, 2, 2), 16, 56),
    (256, 256, (3, 3, 3), (1, 1, 1), 4, 14),
]
GENERATOR_LAYERS = [(512, 256, 4), (256, 128, 8), (128, 64, 16), (64, 3, 32)]  # C_in, C_out, side


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def video_row(c_in, c_out, kernel, stride, frames, side, repeats: int) -> str:
    x, w = torch.randn(1, c_in, frames, side, side), torch.randn(c_out, c_in, *kernel)
    pad = tuple(k // 2 for k in kernel)
    native = median_seconds(lambda: F.conv3d(x, w, None, stride, pad), repeats)
    cells = [f"conv3d {c_in}->{c_out} k{kernel} s{stride} {frames}x{side}x{side}"]
    cells.append(f"native {native * 1e3:.1f} ms")
    for strategy in ("unfold", "strided", "nhwc", "nchw", "auto"):
        run = lambda s=strategy: lowered.conv3d(x, w, None, stride, pad, strategy=s)  # noqa: E731
        cells.append(f"{strategy} {median_seconds(run, repeats) / native:.2f}x")
    return "  ".join(cells)


def generator_row(c_in: int, c_out: int, side: int, repeats: int) -> str:
    x, w = torch.randn(8, c_in, side, side), torch.randn(c_in, c_out, 4, 4)
    native = median_seconds(lambda: F.conv_transpose2d(x, w, None, 2, 1), repeats)
    cells = [f"conv_transpose2d {c_in}->{c_out} 4x4 s2 {side}x{side} batch 8"]
    cells.append(f"native {native * 1e3:.2f} ms")
    for strategy in ("unfold", "nhwc", "auto"):
        run = lambda s=strategy: lowered.conv_transpose2d(x, w, None, 2, 1, strategy=s)  # noqa: E731
        cells.append(f"{strategy} {median_seconds(run, repeats) / native:.2f}x")

    def zero_stuffed():
        z = x.new_zeros(8, c_in, 2 * side - 1, 2 * side - 1)
        z[..., ::2, ::2] = x
        return lowered.conv2d(z, w.transpose(0, 1).flip(-1, -2), None, 1, 2, strategy="nhwc")

    cells.append(f"zero-stuffed {median_seconds(zero_stuffed, repeats) / native:.2f}x")
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in VIDEO_LAYERS:
            print(video_row(*layer, args.repeats), flush=True)
        for layer in GENERATOR_LAYERS:
            print(generator_row(*layer, args.repeats), flush=True)


if __name__ == "__main__":
    main()
