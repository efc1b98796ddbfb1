"""The benchmark harness: its measurements print nothing but what the benchmark prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

PEAK_MEMORY = """
import torch
from harness import peak_memory_bytes

print(peak_memory_bytes(lambda: torch.ones(256, 256) @ torch.ones(256, 256), torch.device("cpu")))
"""


def test_peak_memory_on_cpu_prints_no_profiler_noise():
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert int(done.stdout) >= 256 * 256 * 4  # the product's buffer, at least
    assert "USDT" not in done.stderr and "gpuGetDeviceCount" not in done.stderr, done.stderr
