"""What run-time lowering costs on the fallback path: the same lowered model with and without it.

    python benchmarks/runtime_overhead.py
    python benchmarks/runtime_overhead.py --repeats 9 --threads 2

On the fallback path (models ``torch.fx`` cannot trace) the lowered model's whole forward runs
under ``Im2colMode``, so every ``F.conv2d`` call it makes is lowered; the mode's Python dispatch
costs something on every op.  This runs, interleaved in one process, the native model, the
lowered model, and the same lowered model with the run-time hooks removed (whose functional
convs would run natively: a measurement, not something to ship), and prints the medians and the
ratio with/without.  Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

import lowerconv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import time_interleaved

MODELS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None
        ),
        lambda: ([torch.rand(3, 320, 320)],),
    ),
    "raft_small": (
        lambda: torchvision.models.optical_flow.raft_small(weights=None),
        lambda: (torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    for name, (build, make_inputs) in MODELS.items():
        torch.manual_seed(0)
        model = build().eval()
        inputs = make_inputs()
        lowered = lowerconv.lower(model)
        without = lowerconv.lower(model)
        without._forward_pre_hooks.clear()
        without._forward_hooks.clear()
        path = lowerconv.lowering_record(lowered).path
        with torch.no_grad():
            times = time_interleaved(
                {
                    "native": lambda m=model, x=inputs: m(*x),
                    "lowered": lambda m=lowered, x=inputs: m(*x),
                    "without run-time mode": lambda m=without, x=inputs: m(*x),
                },
                repeats=args.repeats,
                device=cpu,
            )
        ms = {k: t.median * 1e3 for k, t in times.items()}
        cells = ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
        ratio = ms["lowered"] / ms["without run-time mode"]
        print(f"{name} ({path} path): {cells}; run-time mode costs {ratio:.2f}x")


if __name__ == "__main__":
    main()
