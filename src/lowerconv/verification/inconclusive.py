"""When nothing failed and nothing was proven: the degenerate values that make a verdict
``INCONCLUSIVE`` rather than ``PASS``.

A value is degenerate when its float64 oracle is all zeros (any lowering matches it), or when
the native model, in the dtype verified, is itself off the oracle by rel-L2
:data:`INCONCLUSIVE_REL_L2` or more: the bound the rule allows the lowered model, a factor times
the native error, then admits anything.  Float16 at random init is the usual cause: activations
shrink layer by layer until they underflow to zero.  ``docs/verification.md``, "Inconclusive".
"""

from __future__ import annotations

import torch

from .devices import dtype_name
from .metrics import TensorDiff
from .report import LayerCheck, OutputCheck

__all__ = ["INCONCLUSIVE_REL_L2", "degenerate", "inconclusive_causes"]

# A native error against the oracle at or above this rel-L2 (or an oracle that is all zeros)
# makes a value degenerate: the rule's bound (factor x native error) is then so loose, or the
# reference so empty, that any lowering passes, so the verdict is INCONCLUSIVE, not PASS.
INCONCLUSIVE_REL_L2 = 0.5


def inconclusive_causes(
    outputs: list[OutputCheck], layers: list[LayerCheck], dtype: torch.dtype
) -> list[str]:
    """Why a run that found no failure proves nothing: each degenerate output, and the checked
    layers that are, with their numbers (layers summarised after the first three)."""
    causes = []
    for check in outputs:
        if check.ok and "float" in (check.dtype or ""):
            cause = degenerate(check.native, dtype)
            if cause:
                causes.append(f"{check.path}: {cause}")
    flat = [
        (layer.name, cause)
        for layer in layers
        if layer.status == "pass" and (cause := degenerate(layer.local_native, dtype))
    ]
    causes += [f"layer {name!r}: {cause}" for name, cause in flat[:3]]
    if len(flat) > 3:
        names = ", ".join(repr(name) for name, _ in flat[3:9])
        more = f" and {len(flat) - 9} more" if len(flat) > 9 else ""
        causes.append(f"{len(flat) - 3} more degenerate layer(s): {names}{more}")
    return causes


def degenerate(native: TensorDiff | None, dtype: torch.dtype) -> str | None:
    """Why one value (its native diff against the oracle) proves nothing; None when it can."""
    if native is None or native.numel == 0:
        return None
    if native.reference_peak == 0:
        return "the float64 oracle's value is all zeros, so any lowering matches it"
    if native.rel_l2 >= INCONCLUSIVE_REL_L2:
        return (
            f"the original model in {dtype_name(dtype)} is itself off its float64 oracle by "
            f"rel-L2 {native.rel_l2:.3g} (>= {INCONCLUSIVE_REL_L2:g}; the oracle's RMS is "
            f"{native.reference_rms:.3g}), so a lowered error within a factor of it proves "
            "nothing: values that underflow or overflow in this dtype (activations at random "
            "init), or a model that is not one function"
        )
    return None
