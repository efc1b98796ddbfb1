"""Fold the JSON of device runs made elsewhere into ``results.json``, and rewrite the page.

    python benchmarks/fold_runs.py --device-run tf32.json \\
        --mode "float32, TF32 on (cuBLAS and cuDNN)=tf32.json" \\
        --mode "float16=fp16.json" --compiled compile_resnet50.json

A GPU session runs ``benchmarks/run.py --devices cuda ... --json OUT --no-docs`` once per mode
(each run takes minutes of scarce device time, so nothing else is written there).  This puts
them together here: ``--device-run`` becomes that device's section (its per-model tables,
summary, environment and configuration; the other devices' sections are kept), each ``--mode
LABEL=PATH`` a row of the GPU precision-and-batch-modes table (replacing a row of the same
label), and each ``--compiled PATH`` its compile rows (replacing rows of the same model, device,
batch and strategy).  Then ``docs/performance.md`` and its plot are written again from the result.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_markdown, write_plot
from run import merge_other_devices

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device-run", type=Path, help="a run.py JSON: its devices' sections")
    parser.add_argument("--mode", action="append", default=[], help="LABEL=PATH, repeatable")
    parser.add_argument("--compiled", action="append", default=[], type=Path, help="repeatable")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "performance.md")
    return parser.parse_args(argv)


def mode_row(label: str, run: dict) -> dict:
    """One row of the modes table: each strategy's geomeans over the run's models, its worst
    model and its peak memory, with the run's command."""
    (device,) = run["summary"]
    summary = {}
    for strategy, s in run["summary"][device].items():
        ratios = [
            row["strategies"][strategy]["ratio"]
            for entry in run["models"]
            if entry.get("device", "cpu") == device
            for row in entry["batches"].values()
        ]
        summary[strategy] = {**s, "max": max(ratios)}
    return {"mode": label, "command": run["config"]["command"], "summary": summary}


def fold(results: dict, args: argparse.Namespace) -> dict:
    if args.device_run:
        run = json.loads(args.device_run.read_text())
        measured = set(run["summary"])
        for key in ("gpu_modes", "gpu_floor"):  # kept: they are not part of a run
            if key in results:
                run[key] = results[key]
        run["compiled"] = [c for c in results.get("compiled", []) if c["device"] in measured]
        old = copy.deepcopy(results)
        results = merge_other_devices(run, args.json, measured)
        # A device run that timed no training step or other kinds keeps the earlier tables.
        for device in measured:
            if not run["training"].get(device) and old.get("training", {}).get(device):
                results["training"][device] = old["training"][device]
            if not [e for e in run["kind_models"] if e.get("device", "cpu") == device]:
                results["kind_models"] += [
                    e for e in old.get("kind_models", []) if e.get("device", "cpu") == device
                ]
    for mode in args.mode:
        label, _, path = mode.partition("=")
        row = mode_row(label, json.loads(Path(path).read_text()))
        modes = [m for m in results.get("gpu_modes", []) if m["mode"] != label]
        results["gpu_modes"] = [*modes, row]
    for path in args.compiled:
        new = json.loads(path.read_text()).get("compiled", [])

        def key(c: dict) -> tuple:
            return (c["model"], c["device"], c["batch"], c["strategy"])

        replaced = {key(c) for c in new}
        kept = [c for c in results.get("compiled", []) if key(c) not in replaced]
        results["compiled"] = kept + new
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = fold(json.loads(args.json.read_text()), args)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    plot = write_plot(results, args.markdown.with_suffix(".png"))  # None without matplotlib
    if plot is None and args.markdown.with_suffix(".png").exists():
        plot = args.markdown.with_suffix(".png")  # keep the page's plot
    write_markdown(results, args.markdown, plot)
    print(f"wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
