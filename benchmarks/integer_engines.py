"""How exactly does each quantised engine's conv agree with its integer GEMM, model by model?

    python benchmarks/integer_engines.py [--engines x86,fbgemm,qnnpack,onednn]
                                         [--models resnet18,...] [--json out.json]

Every torchvision quantisable classification model (``lowerconv.models.quantized``), random
weights (seed 0), batch norms and observers calibrated on random data and on the input it is
verified on, ``1x3x64x64`` (inception_v3: 160), lowered and verified with
:func:`lowerconv.verify` (which runs the integer verifier) for each engine this torch build
has.  Per cell: the verdict, how many conv output values (each conv run on the engine's own
input to it) are not exact, and the logits: exact, or how many of them are and how far off.
A measurement, not a test: nothing is asserted.  ``docs/integer.md`` quotes its table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

import lowerconv
from lowerconv.models.quantized import INT8_MODELS, build_int8_model

SIZES = {"inception_v3": 160}


def cell(report) -> tuple[str, dict]:
    """The table's text for one report, and the numbers behind it."""
    off = sum(c.numel - c.exact for c in report.layers)
    values = sum(c.numel for c in report.layers)
    outputs = report.outputs
    out_exact = sum(c.exact for c in outputs)
    out_total = sum(c.numel for c in outputs)
    out_steps = max((c.max_steps for c in outputs), default=0.0)
    convs = "convs all exact" if off == 0 else f"{off} conv value(s) 1 step off"
    if out_exact == out_total:
        logits = "output exact"
    else:
        status = {c.status for c in outputs}
        logits = f"output {out_exact}/{out_total} exact, <={out_steps:g}"
        if "propagated" in status:
            logits += " (propagated)"
    numbers = {
        "verdict": report.verdict,
        "conv_values": values,
        "conv_values_off": off,
        "output_exact": out_exact,
        "output_total": out_total,
        "output_max_steps": out_steps,
    }
    return f"{report.verdict}: {convs}; {logits}", numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default=",".join(e for e in torch.backends.quantized.supported_engines if e != "none"),
    )
    parser.add_argument("--models", default=",".join(INT8_MODELS.values()))
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    models = args.models.split(",")
    print(f"# torch {torch.__version__}, {platform.machine()}, engines {', '.join(engines)}")
    rows: dict[str, dict[str, str]] = {}
    numbers: dict[str, dict[str, dict]] = {}
    previous = torch.backends.quantized.engine
    try:
        for engine in engines:
            torch.backends.quantized.engine = engine
            for name in models:
                size = SIZES.get(name, 64)
                x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
                start = time.perf_counter()
                model = build_int8_model(name, image_size=size, calibration_inputs=(x,))
                report = lowerconv.verify(model, x)
                text, nums = cell(report)
                rows.setdefault(name, {})[engine] = text
                numbers.setdefault(name, {})[engine] = nums
                took = time.perf_counter() - start
                print(f"{engine:8s} {name:20s} {text} ({took:.0f} s)", file=sys.stderr)
    finally:
        torch.backends.quantized.engine = previous
    print(f"\n| model | {' | '.join(engines)} |")
    print(f"|---|{'---|' * len(engines)}")
    for name in models:
        print(f"| {name} | {' | '.join(rows[name][e] for e in engines)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "models": numbers}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
