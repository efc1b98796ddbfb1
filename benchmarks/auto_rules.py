"""The layer measurements behind ``auto``'s rules for 2-D convs that are neither 1x1, patchify nor
depthwise: when ``taps`` (one GEMM per kernel tap, no im2col), ``nhwc`` or ``nchw``.

    python benchmarks/auto_rules.py [--threads N] [--repeats N] [--only GROUP]

Each conv alone, on a random input of its shape, native ``F.conv2d`` against each candidate
strategy (the functions of :data:`lowerconv.lowering.strategies.STRATEGIES`), interleaved, one call
of each per round, median of ``--repeats`` rounds, as a ratio lowered/native.  The groups:

- ``dense``: unstrided 3x3 convs of 16-256 channels on 14-112 pixel planes, batch 1 and 8
  (where ``taps`` beats ``nhwc``: the 28x28 output threshold of ``tap_gemms``);
- ``strided``: resnet's stride-2 3x3 convs (``nhwc`` stays);
- ``grouped``: regnet_y_400mf's grouped 3x3 convs, unstrided and strided (``taps`` for the
  unstrided ones, ``nchw`` for the strided);
- ``stems``: 3-channel stems, 3x3 and 7x7 stride 2 (``nchw``, whatever the kernel).

A measurement, not a test: nothing is asserted.  ``taps`` is forced to run its tap GEMMs here
(``tap_gemms``' small-output fallback is switched off), so its column is the tap GEMMs' own.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import time_interleaved

import lowerconv.lowering.plain_kernels
from lowerconv.lowering.spec import ConvSpec
from lowerconv.lowering.strategies import STRATEGIES, choose_strategy

# (batch, C_in, side, C_out, kernel, stride, groups)
GROUPS = {
    "dense": [
        (batch, c_in, side, c_out, 3, 1, 1)
        for batch in (1, 8)
        for side in (14, 28, 56, 112)
        for c_in, c_out in ((16, 16), (64, 64), (128, 32), (128, 128), (256, 256))
        if batch * c_in * side * side <= 8 * 128 * 56 * 56
    ],
    "strided": [
        (8, 64, 56, 128, 3, 2, 1),
        (1, 64, 56, 128, 3, 2, 1),
        (8, 128, 28, 256, 3, 2, 1),
        (8, 256, 14, 512, 3, 2, 1),
    ],
    "grouped": [
        (8, 104, 28, 104, 3, 1, 13),
        (8, 208, 14, 208, 3, 1, 26),
        (8, 440, 7, 440, 3, 1, 55),
        (1, 104, 28, 104, 3, 1, 13),
        (8, 48, 112, 48, 3, 2, 6),
        (8, 104, 56, 104, 3, 2, 13),
        (8, 440, 14, 440, 3, 2, 55),
    ],
    "stems": [
        (8, 3, 224, 64, 7, 2, 1),
        (1, 3, 224, 64, 7, 2, 1),
        (8, 3, 224, 32, 3, 2, 1),
        (8, 3, 224, 24, 3, 2, 1),
    ],
}
CANDIDATES = ("nhwc", "nchw", "taps")


def row(batch, c_in, side, c_out, kernel, stride, groups, repeats: int) -> list[str]:
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
    spec = ConvSpec.from_module(conv)
    x, w = torch.randn(batch, c_in, side, side), conv.weight.detach()
    candidates = {"native": lambda: F.conv2d(x, w, None, stride, kernel // 2, 1, groups)}
    for name in CANDIDATES:
        candidates[name] = lambda n=name: STRATEGIES[n](x, w, None, spec)
    with torch.no_grad():
        timings = time_interleaved(candidates, repeats=repeats, device=x.device, min_seconds=0.05)
    native = timings["native"].median
    shape = f"{batch}x{c_in}x{side}x{side}"
    conv_text = f"{kernel}x{kernel} s{stride}" + (f" g{groups}" if groups > 1 else "")
    cells = [shape, f"{conv_text} -> {c_out}", f"{native * 1e3:.2f}"]
    cells += [f"{timings[n].median / native:.2f}x" for n in CANDIDATES]
    cells.append(choose_strategy(spec))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=sorted(GROUPS), action="append")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Measure the tap GEMMs themselves, not their small-output fallback.
    lowerconv.lowering.plain_kernels.TAPS_MIN_PIXELS = 0
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {machine}, {args.threads} thread(s), median of")
    print(f"{args.repeats} interleaved rounds, lowered/native\n")
    header = ["input", "conv", "native ms", *CANDIDATES, "auto picks"]
    for group in args.only or GROUPS:
        print(f"### {group}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for shape in GROUPS[group]:
            print("| " + " | ".join(row(*shape, args.repeats)) + " |", flush=True)
        print()


if __name__ == "__main__":
    main()
