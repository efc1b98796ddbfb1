"""Native convolution against its lowerings, on torchvision models: time, memory, lower() itself.

    python benchmarks/run.py                      # the full table: 10 models, batch 1 and 8
    python benchmarks/run.py --models resnet18 --batches 8 --repeats 5 --no-docs

For each model and batch size, the native model and each lowering (``--strategies``, default
``unfold`` and ``auto``) run interleaved in one process, one forward of each per round, and the
ratio lowered/native is a ratio of medians.  Also measured: the geometric mean of the ratios per
strategy and batch, each model's slowest lowered layers (the conv against its own lowering, on
the input it really gets), the time ``lower()`` itself takes, the peak memory of a forward at the
largest batch, and, for five models (``--training-models``), a training step in train mode
(forward, cross-entropy, backward, SGD step) at batch 8 with its peak memory.  Opt-in,
``--compile-models resnet18,mobilenet_v2``: each model lowered and ``torch.compile``d against the
native model ``torch.compile``d, compile time included (minutes on a small CPU).

Writes ``benchmarks/results.json`` and ``docs/performance.md`` (plus ``docs/performance.png`` when
matplotlib, the ``plot`` extra, is installed).  Runs on CPU, and also on CUDA when one is present
(``--devices``).  Nothing here asserts a timing: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import lowerconv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    compare_forwards,
    layer_times,
    lower_each,
    peak_memory_bytes,
    peak_memory_ratios,
    time_interleaved,
)
from kind_models import KIND_MODELS, measure_kind_model
from report import write_markdown, write_plot

MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
    "vit_b_16",
    "densenet121",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
]
# The models whose SGD training step is timed, native against lowered.
TRAINING_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny"]
ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--strategies", default="unfold,auto", help="comma-separated")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per comparison")
    parser.add_argument("--layer-repeats", type=int, default=5, help="rounds per layer, 0: skip")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, +cuda if any)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="write only the JSON")
    parser.add_argument(
        "--training-models",
        default=",".join(TRAINING_MODELS),
        help="comma-separated models whose training step is timed ('' to skip)",
    )
    parser.add_argument(
        "--kind-models",
        default=",".join(KIND_MODELS),
        help="comma-separated models of the other conv kinds, timed at --batches ('' to skip): "
        + ", ".join(KIND_MODELS),
    )
    parser.add_argument("--training-strategies", default="auto", help="comma-separated")
    parser.add_argument("--training-batch", type=int, default=8)
    parser.add_argument("--training-repeats", type=int, default=5, help="timed training steps")
    parser.add_argument(
        "--compile-models",
        default="",
        help="comma-separated models to time under torch.compile, lowered against native "
        "(default none: compiling takes minutes)",
    )
    parser.add_argument("--compile-strategy", default="auto", help="the lowering compiled")
    parser.add_argument("--compile-batch", type=int, default=1)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="models and inputs in this dtype (lowered on the CPU in float32, then moved with "
        ".to(device, dtype), as users do)",
    )
    parser.add_argument(
        "--tf32",
        choices=("default", "on", "off"),
        default="default",
        help="torch.backends.cuda.matmul.allow_tf32 for the run (cuDNN's flag is left as is: "
        "native float32 convs use TF32 by default)",
    )
    return parser.parse_args(argv)


def make_model(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval().to(device, dtype)


def lowered_like_users(model: nn.Module, strategy: str, device: torch.device, dtype) -> nn.Module:
    """``strategy``'s lowering of ``model``, made as users make it: on the CPU, in float32,
    then moved with ``.to(device, dtype)``."""
    on_cpu = copy.deepcopy(model).to("cpu", torch.float32)
    return lowerconv.lower(on_cpu, strategy=strategy).to(device, dtype)


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def measure_model(name, device, batches, strategies, args) -> dict:
    dtype = DTYPES[args.dtype]
    model = make_model(name, torch.device("cpu"))
    lowered, lower_seconds, chosen = lower_each(model, strategies)
    if device.type == "cuda" and chosen:  # auto's node runs the CUDA plan on CUDA inputs
        chosen = {"cuda": sum(chosen.values())}
    model = model.to(device, dtype)
    lowered = {s: m.to(device, dtype) for s, m in lowered.items()}
    entry: dict = {"model": name, "device": device.type, "lower_seconds": lower_seconds}
    entry["chosen"] = chosen
    entry["batches"] = {}
    for batch in batches:
        x = torch.randn(batch, 3, args.image_size, args.image_size, device=device, dtype=dtype)
        result = compare_forwards(model, lowered, x, repeats=args.repeats, device=device)
        if args.layer_repeats and "auto" in strategies:
            layers = layer_times(model, x, "auto", repeats=args.layer_repeats, device=device)
            layers.sort(key=lambda layer: layer.excess_ms, reverse=True)
            result["slowest_layers"] = [layer.to_dict() for layer in layers[:3]]
            result["layer_totals_ms"] = {
                "native": sum(layer.native.median for layer in layers) * 1e3,
                "lowered": sum(layer.lowered.median for layer in layers) * 1e3,
            }
        entry["batches"][str(batch)] = result
        line = " ".join(f"{s}={result['strategies'][s]['ratio']:.2f}x" for s in strategies)
        native_ms = result["native"]["median_ms"]
        print(f"  {name:20s} batch {batch}: native {native_ms:8.1f} ms  {line}", flush=True)
    x = torch.randn(max(batches), 3, args.image_size, args.image_size, device=device, dtype=dtype)
    entry["peak_memory"] = peak_memory_ratios(model, lowered, x, device)
    return entry


def measure_training(name, device, strategies, args) -> dict:
    """One SGD training step of ``name`` (train mode: forward, cross-entropy, backward, the
    optimizer's step), native against each lowering, interleaved; and each one's peak memory."""
    batch = args.training_batch
    model = make_model(name, device).train()
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    models = {"native": model}
    models.update({s: lowered_like_users(model, s, device, torch.float32) for s in strategies})
    # lr=0: every step sees the same weights, so the rounds time the same work.
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.0) for k, m in models.items()}

    def step(key):
        optimizers[key].zero_grad(set_to_none=True)
        loss_fn(models[key](x), target).backward()
        optimizers[key].step()

    timings = time_interleaved(
        {key: (lambda key=key: step(key)) for key in models},
        repeats=args.training_repeats,
        device=device,
        warmup=1,
    )
    peaks = {key: peak_memory_bytes(lambda key=key: step(key), device) for key in models}
    native = timings["native"].median
    return {
        "model": name,
        "batch": batch,
        "native": timings["native"].to_dict(),
        "peak_memory_bytes": peaks,
        "strategies": {
            s: {
                **timings[s].to_dict(),
                "ratio": timings[s].median / native,
                "peak_memory_ratio": peaks[s] / peaks["native"],
            }
            for s in strategies
        },
    }


def measure_compiled(name, device, strategy, args) -> dict:
    """``torch.compile`` of the lowered model against ``torch.compile`` of the native one:
    each one's compile time (its first call), then both timed interleaved, and the error."""
    model = make_model(name, device)
    lowered = lowered_like_users(model, strategy, device, torch.float32)
    x = torch.randn(args.compile_batch, 3, args.image_size, args.image_size, device=device)
    compiled = {"native": torch.compile(model), strategy: torch.compile(lowered)}
    compile_seconds, outputs = {}, {}
    with torch.no_grad():
        for key, module in compiled.items():
            start = time.perf_counter()
            outputs[key] = module(x)
            compile_seconds[key] = time.perf_counter() - start
        timings = time_interleaved(
            {key: (lambda m=m: m(x)) for key, m in compiled.items()},
            repeats=args.repeats,
            device=device,
        )
    native = timings["native"].median
    return {
        "model": name,
        "device": device.type,
        "batch": args.compile_batch,
        "strategy": strategy,
        "compile_seconds": compile_seconds,
        "native": timings["native"].to_dict(),
        "lowered": timings[strategy].to_dict(),
        "ratio": timings[strategy].median / native,
        "max_abs_error": (outputs[strategy] - outputs["native"]).abs().max().item(),
    }


def summarize_training(runs: list[dict], strategies: list[str]) -> dict:
    return {
        s: {
            "geomean": geomean([r["strategies"][s]["ratio"] for r in runs]),
            "max": max(r["strategies"][s]["ratio"] for r in runs),
            "peak_memory_ratio_max": max(r["strategies"][s]["peak_memory_ratio"] for r in runs),
        }
        for s in strategies
    }


def summarize(entries: list[dict], strategies: list[str], batches: list[int]) -> dict:
    summary: dict = {}
    for device in sorted({e["device"] for e in entries}):
        per_device = [e for e in entries if e["device"] == device]
        summary[device] = {}
        for strategy in strategies:
            ratios = {
                str(b): [e["batches"][str(b)]["strategies"][strategy]["ratio"] for e in per_device]
                for b in batches
            }
            everything = [r for rs in ratios.values() for r in rs]
            summary[device][strategy] = {
                "geomean": geomean(everything),
                "geomean_by_batch": {b: geomean(rs) for b, rs in ratios.items()},
                "peak_memory_ratio_max": max(
                    e["peak_memory"]["ratio"][strategy] for e in per_device
                ),
                "lower_seconds_max": max(e["lower_seconds"][strategy] for e in per_device),
            }
    return summary


def environment(threads: int) -> dict:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lowerconv": lowerconv.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
    }


def merge_other_devices(results: dict, path: Path, measured: set[str]) -> dict:
    """``results`` plus what ``path`` (an earlier run's JSON) holds for the devices this run did
    not measure: a CUDA run keeps the CPU tables, a CPU run the CUDA ones."""
    results["environments"] = {d: results["environment"] for d in measured}
    results["configs"] = {d: results["config"] for d in measured}
    if not path.exists():
        return results
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return results
    kept = {d for d in old.get("summary", {}) if d not in measured}
    for key in ("models", "kind_models", "compiled"):
        earlier = [e for e in old.get(key, []) if e.get("device", "cpu") in kept]
        results[key] = earlier + results.get(key, [])
    for key in ("training", "summary"):
        results[key] = {**{d: v for d, v in old.get(key, {}).items() if d in kept}, **results[key]}
    for key, single in (("environments", "environment"), ("configs", "config")):
        earlier = {d: old.get(key, {}).get(d, old.get(single)) for d in kept}
        results[key] = {**earlier, **results[key]}
    if "cpu" in kept:  # the page's header describes the CPU run
        results["environment"], results["config"] = old["environment"], old["config"]
    return results


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    training_models = [m for m in args.training_models.split(",") if m]
    training_strategies = [s for s in args.training_strategies.split(",") if s]
    unknown = [s for s in strategies + training_strategies if s not in lowerconv.STRATEGY_NAMES]
    if unknown:
        print(f"unknown strategies {unknown}; valid: {lowerconv.STRATEGY_NAMES}", file=sys.stderr)
        return 2
    if args.devices:
        devices = [torch.device(d) for d in args.devices.split(",")]
    else:
        devices = [torch.device("cpu")] + (
            [torch.device("cuda")] if torch.cuda.is_available() else []
        )
    env = environment(torch.get_num_threads())
    print(f"torch {env['torch']}, {env['processor']}, {env['threads']} threads", flush=True)
    compile_models = [m for m in args.compile_models.split(",") if m]
    kind_models = [m for m in args.kind_models.split(",") if m]
    unknown_models = [m for m in kind_models if m not in KIND_MODELS]
    if unknown_models:
        print(
            f"unknown --kind-models {unknown_models}; valid: {list(KIND_MODELS)}", file=sys.stderr
        )
        return 2
    entries, training, compiled, kinds = [], {}, [], []
    for device in devices:
        print(f"{device.type}:", flush=True)
        for name in models:
            entries.append(measure_model(name, device, batches, strategies, args))
        for name in kind_models:
            kinds.append(measure_kind_model(name, device, batches, strategies, args))
        runs = []
        for name in training_models:
            runs.append(measure_training(name, device, training_strategies, args))
            ratios = " ".join(
                f"{s}={v['ratio']:.2f}x (memory {v['peak_memory_ratio']:.2f}x)"
                for s, v in runs[-1]["strategies"].items()
            )
            native_ms = runs[-1]["native"]["median_ms"]
            print(
                f"  {name:20s} training step, batch {args.training_batch}: native "
                f"{native_ms:8.1f} ms  {ratios}",
                flush=True,
            )
        for name in compile_models:
            compiled.append(measure_compiled(name, device, args.compile_strategy, args))
            c = compiled[-1]
            print(
                f"  {name:20s} torch.compile, batch {c['batch']}: native "
                f"{c['native']['median_ms']:8.1f} ms  {c['strategy']}={c['ratio']:.2f}x "
                f"(compile {c['compile_seconds']['native']:.0f} s native, "
                f"{c['compile_seconds'][c['strategy']]:.0f} s lowered)",
                flush=True,
            )
        if runs:
            training[device.type] = {
                "runs": runs,
                "summary": summarize_training(runs, training_strategies),
            }
    results = {
        "environment": env,
        "config": {
            "models": models,
            "batches": batches,
            "strategies": strategies,
            "image_size": args.image_size,
            "repeats": args.repeats,
            "command": "python benchmarks/run.py "
            + shlex.join(argv if argv is not None else sys.argv[1:]),
            "kind_models": kind_models,
            "training_models": training_models,
            "training_strategies": training_strategies,
            "training_batch": args.training_batch,
            "training_repeats": args.training_repeats,
            "dtype": args.dtype,
            "tf32": args.tf32,
        },
        "models": entries,
        "kind_models": kinds,
        "training": training,
        "summary": summarize(entries, strategies, batches),
    }
    if compiled:
        results["compiled"] = compiled
    for device, per_strategy in results["summary"].items():
        for strategy, s in per_strategy.items():
            print(
                f"{device} {strategy}: geomean {s['geomean']:.2f}x, peak memory <= "
                f"{s['peak_memory_ratio_max']:.2f}x native, lower() <= {s['lower_seconds_max']:.2f} s"
            )
    for device, per_device in training.items():
        for strategy, s in per_device["summary"].items():
            print(
                f"{device} {strategy} training step: geomean {s['geomean']:.2f}x, max "
                f"{s['max']:.2f}x, peak memory <= {s['peak_memory_ratio_max']:.2f}x native"
            )
    results = merge_other_devices(results, args.json, {d.type for d in devices})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")
    if not args.no_docs:
        plot = write_plot(results, args.markdown.with_suffix(".png"))
        write_markdown(results, args.markdown, plot)
        print(f"wrote {args.markdown}" + (f" and {plot}" if plot else " (no plot: no matplotlib)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
