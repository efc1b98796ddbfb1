"""The benchmark harness: its measurements print nothing but what the benchmark prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


COMPILE_ROW = """
import sys
import run

run.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_the_compile_row_times_lowered_and_native_compiled(tmp_path: Path):
    # Opt-in, and minutes long even for squeezenet at 32 pixels: Inductor compiles two models.
    out = tmp_path / "compile.json"
    argv = ["--models", "", "--training-models", "", "--compile-models", "squeezenet1_1"]
    argv += ["--image-size", "32", "--repeats", "2", "--threads", "1", "--devices", "cpu"]
    argv += ["--no-docs", "--json", str(out)]
    subprocess.run(
        [sys.executable, "-c", COMPILE_ROW, *argv],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=1200,
        check=True,
    )
    (row,) = json.loads(out.read_text())["compiled"]
    assert row["model"] == "squeezenet1_1" and row["strategy"] == "auto"
    assert set(row["compile_seconds"]) == {"native", "auto"}
    assert row["lowered"]["median_ms"] > 0 and row["native"]["median_ms"] > 0
    assert row["max_abs_error"] < 1e-4


def test_the_depthwise_floor_script_finds_every_layer_and_its_toeplitz_is_the_conv(monkeypatch):
    # The script's claims rest on these two: the layers it sums per model are the model's
    # depthwise convs, and its banded-matrix formulation computes the conv.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import depthwise_floor
    import torch
    import torch.nn.functional as F

    layers = depthwise_floor.depthwise_layers("mobilenet_v2")
    assert sum(layers.values()) == 17
    assert layers[(32, 112, 3, 1, 1)] == 1 and layers[(960, 7, 3, 1, 1)] == 3
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64)
    weight = torch.randn(5, 1, 5, 5, dtype=torch.float64)
    got = depthwise_floor.toeplitz_depthwise(x, weight, 2)
    torch.testing.assert_close(got, F.conv2d(x, weight, None, 1, 2, 1, 5))


def test_a_run_on_one_device_keeps_the_other_devices_results(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run

    def results(device: str, ratio: float) -> dict:
        return {
            "environment": {"device": device},
            "config": {"batches": [1, 32] if device == "cuda" else [1, 8]},
            "models": [{"model": "resnet18", "device": device, "ratio": ratio}],
            "kind_models": [],
            "compiled": [{"model": "resnet18", "device": device}],
            "training": {device: {"ratio": ratio}},
            "summary": {device: {"auto": {"geomean": ratio}}},
        }

    path = tmp_path / "results.json"
    path.write_text(json.dumps(run.merge_other_devices(results("cpu", 1.3), path, {"cpu"})))
    merged = run.merge_other_devices(results("cuda", 1.5), path, {"cuda"})
    assert set(merged["summary"]) == {"cpu", "cuda"}
    assert [m["device"] for m in merged["models"]] == ["cpu", "cuda"]
    assert merged["environment"] == {"device": "cpu"}  # the page's header: the CPU run
    assert merged["configs"]["cuda"]["batches"] == [1, 32]
    path.write_text(json.dumps(merged))
    again = run.merge_other_devices(results("cpu", 1.2), path, {"cpu"})
    assert again["summary"]["cpu"]["auto"]["geomean"] == 1.2
    assert again["summary"]["cuda"]["auto"]["geomean"] == 1.5
    assert [c["device"] for c in again["compiled"]] == ["cuda", "cpu"]


def test_folding_device_runs_keeps_what_they_did_not_measure(tmp_path: Path, monkeypatch):
    """``fold_runs.py``: a device run made with ``--no-docs`` replaces that device's tables, adds
    its mode rows and compile rows, and keeps the CPU tables and the device's training table."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import fold_runs

    def entry(model: str, device: str, ratio: float) -> dict:
        batch = {"native": {"median_ms": 1.0}, "strategies": {"auto": {"ratio": ratio}}}
        return {"model": model, "device": device, "batches": {"1": batch}}

    def run(device: str, ratio: float, training: dict) -> dict:
        return {
            "environment": {"device": device},
            "config": {"batches": [1], "command": f"python benchmarks/run.py --{device}"},
            "models": [entry("resnet18", device, ratio), entry("vit_b_16", device, 2 * ratio)],
            "kind_models": [],
            "compiled": [],
            "training": training,
            "summary": {device: {"auto": {"geomean": ratio}}},
        }

    old = run("cpu", 1.1, {"cpu": {"ratio": 1.1}})
    old = {**old, "models": old["models"] + [entry("resnet18", "cuda", 1.6)]}
    old["summary"]["cuda"] = {"auto": {"geomean": 1.6}}
    old["training"]["cuda"] = {"ratio": 1.7}
    old["compiled"] = [{"model": "resnet18", "device": "cuda", "batch": 32, "strategy": "auto"}]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(old))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(run("cuda", 1.4, {})))
    compiled = tmp_path / "compiled.json"
    rows = [{"model": "resnet18", "device": "cuda", "batch": 32, "strategy": "auto", "ratio": 1.2}]
    compiled.write_text(json.dumps({"compiled": rows}))
    argv = ["--device-run", str(new), "--mode", f"fp32={new}", "--compiled", str(compiled)]
    args = fold_runs.parse_args([*argv, "--json", str(results)])
    folded = fold_runs.fold(json.loads(results.read_text()), args)
    assert folded["summary"]["cpu"]["auto"]["geomean"] == 1.1
    assert folded["summary"]["cuda"]["auto"]["geomean"] == 1.4
    assert [(m["model"], m["device"]) for m in folded["models"]] == [
        ("resnet18", "cpu"), ("vit_b_16", "cpu"), ("resnet18", "cuda"), ("vit_b_16", "cuda"),
    ]  # fmt: skip
    assert folded["training"] == {"cpu": {"ratio": 1.1}, "cuda": {"ratio": 1.7}}
    assert folded["compiled"] == rows
    (mode,) = folded["gpu_modes"]
    assert mode["mode"] == "fp32" and mode["summary"]["auto"]["max"] == 2.8
