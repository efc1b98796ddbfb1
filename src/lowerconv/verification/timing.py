"""Verification step 3: time the native and the lowered forward, and their CUDA peak memory.

Like ``torch.utils.benchmark.Timer``: warm-up runs first, then ``repeats`` runs of each model,
A/B interleaved in one process (ABBA order, so drift hits both alike), CUDA synchronised inside
the clock; the median and spread of the repeats, never a single run.  On CUDA, peak memory is
``max_memory_allocated`` during one forward above what was allocated before it.  The caller
runs this under ``torch.no_grad()``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .determinism import seed_generators
from .metrics import quartiles
from .report import Timing, TimingStats

__all__ = ["time_forward"]


def time_forward(
    native: nn.Module,
    low: nn.Module,
    x: tuple,
    dev: torch.device,
    *,
    repeats: int,
    warmup: int,
    seed: int,
) -> Timing:
    """A/B timing of the two forwards, interleaved so drift (clocks, caches) hits both alike."""
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def once(module: nn.Module) -> float:
        seed_generators(dev, seed)
        sync()
        start = time.perf_counter()
        module(*x)
        sync()
        return (time.perf_counter() - start) * 1e3

    for _ in range(warmup):
        once(native)
        once(low)
    native_ms: list[float] = []
    lowered_ms: list[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            native_ms.append(once(native))
            lowered_ms.append(once(low))
        else:
            lowered_ms.append(once(low))
            native_ms.append(once(native))
    native_stats, lowered_stats = _stats(native_ms), _stats(lowered_ms)
    timing = Timing(
        repeats=repeats,
        warmup=warmup,
        native=native_stats,
        lowered=lowered_stats,
        ratio=lowered_stats.median_ms / native_stats.median_ms
        if native_stats.median_ms > 0
        else None,
    )
    if cuda:
        timing.peak_memory_native_bytes = _peak_memory(native, x, dev, seed)
        timing.peak_memory_lowered_bytes = _peak_memory(low, x, dev, seed)
    return timing


def _stats(ms: list[float]) -> TimingStats:
    q1, median, q3 = quartiles(ms)
    return TimingStats(median_ms=median, iqr_ms=q3 - q1, min_ms=min(ms), max_ms=max(ms))


def _peak_memory(module: nn.Module, x: tuple, dev: torch.device, seed: int) -> int:
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    seed_generators(dev, seed)
    module(*x)
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) - before
