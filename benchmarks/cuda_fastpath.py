"""The measurements behind the CUDA plan's eager fast path: small-call forms against large-call forms.

    python benchmarks/cuda_fastpath.py                         # 5 models, batch 1 and 32
    python benchmarks/cuda_fastpath.py --models resnet18 --batches 1 --tf32 on

The fast path (:func:`lowerconv.lowering.cuda_plan.planned`, eager calls without gradients)
gives a call whose column matrix is at most ``SMALL_CALL_BYTES`` the fewest ops: the columns by
one sampled gather (``grid_sampler``, no pad), and depthwise convs by their columns and one
batched GEMM.  Larger calls pad and copy, and depthwise convs take the banded form.  Each model
is lowered once with ``strategy="auto"`` and timed, interleaved, with the native model, with
``unfold``, and with the plan under three settings of that threshold:

``planned``  the library's threshold;
``large``    every call takes the large-call forms (threshold 0: what the plan did before);
``small``    every call takes the small-call forms (no threshold).

Medians of synchronized rounds, as ratios to native, plus the host time of one forward (the
time to launch it, without waiting for the GPU): where that is close to the synchronized time,
the forward is bound by the host, and fewer ops is what helps.  Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import time_interleaved

import lowerconv
from lowerconv.lowering import cuda_plan

MODELS = ("resnet18", "mobilenet_v2", "convnext_tiny", "regnet_y_400mf", "densenet121")
SETTINGS = {"planned": cuda_plan.SMALL_CALL_BYTES, "large": 0, "small": sys.maxsize}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--tf32", choices=("default", "on", "off"), default="default")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cuda", help="cuda (cpu: a dry run of the script)")
    return parser.parse_args(argv)


def host_ms(fn, device: torch.device, calls: int = 5) -> float:
    """Milliseconds to launch one call, not waiting for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = (time.perf_counter() - start) / calls * 1e3
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return elapsed


def compare(name, batch, model, auto, unfold, x, repeats: int) -> None:
    """Print one row: each candidate's median time as a ratio to native, and its host time."""

    def under(setting: str):
        def call():
            cuda_plan.SMALL_CALL_BYTES = SETTINGS[setting]
            return auto(x)

        return call

    candidates = {"native": lambda: model(x), "unfold": lambda: unfold(x)}
    candidates |= {setting: under(setting) for setting in SETTINGS}
    with torch.no_grad():
        timings = time_interleaved(candidates, repeats=repeats, device=x.device)
        hosts = {k: host_ms(fn, x.device) for k, fn in candidates.items()}
    cuda_plan.SMALL_CALL_BYTES = SETTINGS["planned"]
    native = timings["native"].median
    ratios = " ".join(f"{k} {timings[k].median / native:.2f}x" for k in candidates if k != "native")
    launch = " ".join(f"{k} {v:.2f}" for k, v in hosts.items())
    print(
        f"{name:16s} b{batch:<3d} native {native * 1e3:6.2f} ms | {ratios} | "
        f"host ms per forward: {launch}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    # target="cuda" runs the plan on a CPU too, so the script can be tried without a GPU.
    target = None if device.type == "cuda" else "cuda"
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        auto = lowerconv.lower(model, strategy="auto", target=target).to(device, dtype)
        unfold = lowerconv.lower(model, strategy="unfold").to(device, dtype)
        model = model.to(device, dtype)
        for batch in map(int, args.batches.split(",")):
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            compare(name, batch, model, auto, unfold, x, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
