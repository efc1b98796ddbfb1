"""Measurement helpers for ``benchmarks/run.py``: interleaved timing, peak memory, layer times.

Timing follows ``torch.utils.benchmark.Timer``'s rules: warm up, synchronize CUDA inside the
clock, repeat, report the median and the spread.  The candidates of one comparison (native and
each lowering) run *interleaved*, one call of each per round, so that a shared machine's load,
which drifts over seconds, falls on all of them alike; each ratio is a ratio of medians.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lowerconv.lowering.spec import ConvSpec
from lowerconv.lowering.strategies import STRATEGIES, choose_strategy

# The CPU profiler behind peak_memory_bytes logs through Kineto, which writes `USDT: ...
# profiler_start` lines and, without a GPU, `gpuGetDeviceCount failed` to stderr on every call:
# noise in a benchmark's output. Level 6 is above Kineto's highest (USDT = 5); a user's own
# KINETO_LOG_LEVEL wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

__all__ = [
    "LayerTime",
    "Timing",
    "compare_forwards",
    "layer_times",
    "peak_memory_bytes",
    "peak_memory_ratios",
    "time_interleaved",
]


@dataclass
class Timing:
    """Seconds per call: the median and the interquartile range of the repeats."""

    median: float
    q1: float
    q3: float
    repeats: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        ordered = sorted(samples)
        if len(ordered) >= 4:
            q1, _, q3 = statistics.quantiles(ordered, n=4)
        else:
            q1, q3 = ordered[0], ordered[-1]
        return cls(statistics.median(ordered), q1, q3, len(ordered))

    def to_dict(self) -> dict:
        return {
            "median_ms": self.median * 1e3,
            "q1_ms": self.q1 * 1e3,
            "q3_ms": self.q3 * 1e3,
            "repeats": self.repeats,
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    candidates: dict[str, Callable[[], object]],
    *,
    repeats: int,
    device: torch.device,
    warmup: int = 2,
    min_seconds: float = 0.0,
) -> dict[str, Timing]:
    """Time each candidate ``repeats`` times, one call of each per round, in a rotating order.

    ``min_seconds`` makes each sample loop over as many calls as fill it (for calls of a few
    milliseconds, whose single timings are mostly noise).
    """
    names = list(candidates)
    loops: dict[str, int] = {}
    for name in names:
        for _ in range(warmup):
            candidates[name]()
        _synchronize(device)
        start = time.perf_counter()
        candidates[name]()
        _synchronize(device)
        once = time.perf_counter() - start
        loops[name] = max(1, int(min_seconds / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        # Rotate who goes first, so no candidate always runs right after the same other one.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            fn, n = candidates[name], loops[name]
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _synchronize(device)
            samples[name].append((time.perf_counter() - start) / n)
    return {name: Timing.of(samples[name]) for name in names}


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes ``fn`` had allocated at once, beyond what was allocated before it.

    On CUDA this is the caching allocator's peak statistic.  On CPU it is the running sum of the
    allocation and free events that PyTorch's allocator reports to the profiler (oneDNN's
    scratch buffers included: PyTorch routes them through the same allocator).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@dataclass
class LayerTime:
    """One convolution of a model: its native and lowered time on the input it really gets."""

    name: str
    spec: str
    strategy: str
    input_shape: tuple[int, ...]
    native: Timing
    lowered: Timing

    @property
    def excess_ms(self) -> float:
        return (self.lowered.median - self.native.median) * 1e3

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "spec": self.spec,
            "strategy": self.strategy,
            "input_shape": list(self.input_shape),
            "native_ms": self.native.median * 1e3,
            "lowered_ms": self.lowered.median * 1e3,
            "ratio": self.lowered.median / self.native.median,
            "excess_ms": self.excess_ms,
        }


def layer_times(
    model: nn.Module,
    example: torch.Tensor,
    strategy: str,
    *,
    repeats: int,
    device: torch.device,
) -> list[LayerTime]:
    """Each ``nn.Conv2d`` of ``model`` against its lowering by ``strategy`` (``"auto"``: the
    rule's choice), on the input that layer receives for ``example``, interleaved."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(
                module.register_forward_pre_hook(
                    lambda mod, args, name=name: inputs.setdefault(name, args[0].detach())
                )
            )
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    results = []
    with torch.no_grad():
        for name, x in inputs.items():
            conv = modules[name]
            spec = ConvSpec.from_module(conv)
            chosen = strategy
            if strategy == "auto":
                chosen = "cuda" if x.device.type == "cuda" else choose_strategy(spec)
            fn = STRATEGIES[chosen]
            timings = time_interleaved(
                {
                    "native": lambda conv=conv, x=x: conv(x),
                    "lowered": lambda fn=fn, conv=conv, x=x, spec=spec: fn(
                        x, conv.weight, conv.bias, spec
                    ),
                },
                repeats=repeats,
                device=device,
                warmup=1,
                min_seconds=0.005,
            )
            results.append(
                LayerTime(
                    name,
                    spec.describe(),
                    chosen,
                    tuple(x.shape),
                    timings["native"],
                    timings["lowered"],
                )
            )
    return results


def compare_forwards(
    model: nn.Module,
    lowered: dict[str, nn.Module],
    x: torch.Tensor,
    *,
    repeats: int,
    device: torch.device,
) -> dict:
    """``model`` against each lowering on ``x``, interleaved, under ``no_grad``: the native
    timing, and per strategy its timing, ratio (of medians) and largest absolute error."""
    with torch.no_grad():
        reference = model(x)
        errors = {s: (m(x) - reference).abs().max().item() for s, m in lowered.items()}
        candidates = {"native": lambda: model(x)}
        candidates.update({s: (lambda m=m: m(x)) for s, m in lowered.items()})
        timings = time_interleaved(candidates, repeats=repeats, device=device)
    native = timings["native"]
    return {
        "native": native.to_dict(),
        "strategies": {
            s: {
                **timings[s].to_dict(),
                "ratio": timings[s].median / native.median,
                "max_abs_error": errors[s],
            }
            for s in lowered
        },
    }


def peak_memory_ratios(
    model: nn.Module, lowered: dict[str, nn.Module], x: torch.Tensor, device: torch.device
) -> dict:
    """The peak memory of one forward of ``model`` and of each lowering on ``x`` (after a warm
    forward of each: oneDNN's primitive caches, the allocator's pools), and lowered/native."""
    with torch.no_grad():
        for m in [model, *lowered.values()]:
            m(x)
        peaks = {"native": peak_memory_bytes(lambda: model(x), device)}
        peaks.update({s: peak_memory_bytes(lambda m=m: m(x), device) for s, m in lowered.items()})
    return {
        "batch": x.shape[0],
        "bytes": peaks,
        "ratio": {s: peaks[s] / peaks["native"] for s in lowered},
    }


def lower_each(model: nn.Module, strategies: Sequence[str]) -> tuple[dict, dict, dict[str, int]]:
    """``model`` lowered once per strategy: the lowered models, the seconds each ``lower()``
    took, and how many convs ``auto`` gave each strategy (empty without ``auto``)."""
    import lowerconv

    lowered, seconds = {}, {}
    for strategy in strategies:
        start = time.perf_counter()
        lowered[strategy] = lowerconv.lower(model, strategy=strategy)
        seconds[strategy] = time.perf_counter() - start
    auto = lowered.get("auto")
    chosen = lowerconv.lowering_record(auto).strategies_used() if auto is not None else {}
    return lowered, seconds, chosen
