"""The measurements behind the tolerances in ``docs/verification.md``, rerun.

    python benchmarks/tolerance_margins.py                 # a minute or two on 2 CPU cores
    python benchmarks/tolerance_margins.py --image-size 64

The models are those of the float32 cases in ``tests/test_verify.py`` (resnet18 in eval mode,
mobilenet_v3_small and googlenet in train mode, lraspp_mobilenet_v3_large), seeded 0, with
random inputs of their batch size at ``--image-size`` (default 32, as in the tests).  It prints:

1. float32: each lowered conv's local error and its native counterpart (rel-L2 against the
   float64 conv), the largest lowered/native ratio per conv (rel-L2 and normalised max abs), each
   output's end-to-end errors, and the largest fraction of its bound a lowered error used;
2. float64 (resnet18): the lowered convs' local errors, where the native conv is the oracle;
3. float64 (resnet18): one weight element of ``layer2.0.conv1`` scaled by ``1 + 1e-6`` in the
   lowered model: that conv's local error, which the ``1e-10`` floor must catch;
4. bfloat16 (googlenet, train mode): each output's end-to-end rel-L2 error, native and lowered.

Errors are measurements of this machine's arithmetic; nothing here is asserted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import lowerconv
from lowerconv.verification.verify import verify

# (name, model factory, batch size): the float32 cases of tests/test_verify.py
MODELS: list[tuple[str, Callable[[], nn.Module], int]] = [
    ("resnet18 (eval)", lambda: torchvision.models.resnet18().eval(), 1),
    ("mobilenet_v3_small (train)", lambda: torchvision.models.mobilenet_v3_small(), 2),
    (
        "googlenet (train)",
        lambda: torchvision.models.googlenet(aux_logits=True, init_weights=True),
        2,
    ),
    (
        "lraspp_mobilenet_v3_large (eval)",
        lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None
        ).eval(),
        1,
    ),
]


def build(make: Callable[[], nn.Module], batch: int, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make()
    return model, torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def bound_used(judgement) -> float:
    """The largest fraction of its bound the lowered error used, over both measures."""
    return max(judgement.error / judgement.bound, judgement.max_error / judgement.max_bound)


def float32_margins(size: int) -> None:
    print(f"1. float32, {size}x{size} inputs: per conv (local) and end to end")
    print(
        f"   {'model':34} {'convs':>5} {'native rel-L2':>17} {'lowered rel-L2':>17} "
        f"{'ratio L2':>8} {'ratio max':>9}"
    )
    worst_l2 = worst_max = worst_used = 0.0
    for name, make, batch in MODELS:
        model, x = build(make, batch, size)
        report = verify(model, x, timing=False)
        layers = [c for c in report.layers if c.local_native and c.local_lowered]
        native = [c.local_native.rel_l2 for c in layers]
        lowered = [c.local_lowered.rel_l2 for c in layers]
        ratio_l2 = max(
            c.local_lowered.rel_l2 / c.local_native.rel_l2
            for c in layers
            if c.local_native.rel_l2 > 0
        )
        ratio_max = max(
            c.local_lowered.normalized_max_abs / c.local_native.normalized_max_abs
            for c in layers
            if c.local_native.normalized_max_abs > 0
        )
        worst_l2, worst_max = max(worst_l2, ratio_l2), max(worst_max, ratio_max)
        print(
            f"   {name:34} {len(layers):5} {min(native):.1e}..{max(native):.1e} "
            f"{min(lowered):.1e}..{max(lowered):.1e} {ratio_l2:8.2f} {ratio_max:9.2f}"
        )
        for output in report.outputs:
            used = bound_used(output.judgement)
            worst_used = max(worst_used, used)
            print(
                f"     {output.path:32} end to end: native {output.native.rel_l2:.1e}, "
                f"lowered {output.lowered.rel_l2:.1e}, bound used {used:.0%}"
            )
    print(
        f"   largest lowered/native ratio per conv: {worst_l2:.2f} (rel-L2), "
        f"{worst_max:.2f} (max abs); largest share of its bound used end to end: {worst_used:.0%}"
    )


def float64_margins(size: int) -> None:
    model, x = build(MODELS[0][1], 1, size)
    report = verify(model, x, dtype=torch.float64, timing=False)
    lowered = [c.local_lowered.rel_l2 for c in report.layers]
    print(
        f"2. float64, resnet18 {size}x{size}: lowered convs' local rel-L2 "
        f"{min(lowered):.1e}..{max(lowered):.1e} (native: {max(c.local_native.rel_l2 for c in report.layers):.0e})"
    )

    sabotaged = lowerconv.lower(model)
    with torch.no_grad():
        sabotaged.get_submodule("layer2.0.conv1").weight[0, 0, 0, 0] *= 1 + 1e-6
    report = verify(model, x, lowered=sabotaged, dtype=torch.float64, timing=False)
    conv = next(c for c in report.layers if c.name == "layer2.0.conv1")
    print(
        f"3. float64, resnet18 with layer2.0.conv1.weight[0, 0, 0, 0] x (1 + 1e-6): local rel-L2 "
        f"{conv.local_lowered.rel_l2:.1e}, max abs {conv.local_lowered.normalized_max_abs:.1e} "
        f"(bound {conv.judgement.bound:.1e}): {conv.status}; first failure {report.first_failure}"
    )


def bfloat16_errors(size: int) -> None:
    name, make, batch = MODELS[2]
    model, x = build(make, batch, size)
    report = verify(model, x, dtype=torch.bfloat16, timing=False)
    print(f"4. bfloat16, {name}, batch {batch}, {size}x{size}: end-to-end rel-L2")
    for output in report.outputs:
        print(
            f"     {output.path:32} native {output.native.rel_l2:.1%}, "
            f"lowered {output.lowered.rel_l2:.1%}, {'pass' if output.ok else 'FAIL'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32, metavar="PX")
    args = parser.parse_args(argv)
    float32_margins(args.image_size)
    float64_margins(args.image_size)
    bfloat16_errors(args.image_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
