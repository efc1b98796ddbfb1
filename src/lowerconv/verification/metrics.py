"""Pure tensor comparison math for the verifier: no models, no torch.fx in here.

Two questions are answered, each about one tensor and its float64 *oracle* (the same value
computed by a float64 copy of the original model):

- :func:`compare` -- how far is ``actual`` from ``reference``?  A :class:`TensorDiff`: max abs diff
  and where, max rel diff, rel-L2, normalised max abs, cosine similarity, the fraction of
  elements outside ``atol + rtol * |reference|``, and NaN/Inf counts.
- :func:`judge` -- is the lowered model's error acceptable, given the native model's error on the
  same value?  The rule, after ``torch._dynamo.utils.same(..., fp64_ref=...)``::

      lowered_error <= factor * native_error + rtol + atol / scale

  applied to two error measures, rel-L2 and normalised max abs (see :class:`Tolerance`).  A
  correct lowering only reorders float arithmetic, so its error is the native model's error
  give or take a small factor; a wrong one is off by far more than rounding.

:data:`DEFAULT_TOLERANCES` holds the defaults per dtype; ``docs/verification.md`` explains them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "DEFAULT_TOLERANCES",
    "Judgement",
    "TensorDiff",
    "Tolerance",
    "compare",
    "default_tolerance",
    "judge",
    "quartiles",
]


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the native model the lowered model may be, on one value.

    ``factor`` scales the native model's own error against the oracle; ``rtol`` is a floor on the
    relative error (it matters when the native error is ~0, as in float64, where native and
    oracle are the same computation); ``atol`` is an absolute floor, divided by the value's scale
    (its RMS for rel-L2, its largest magnitude for normalised max abs).
    """

    factor: float
    rtol: float
    atol: float = 0.0

    def bound(self, native_error: float, scale: float) -> float:
        """The largest acceptable lowered error, for a native error on a value of ``scale``."""
        return self.factor * native_error + self.rtol + self.atol / _denominator(scale)

    def to_dict(self) -> dict:
        return asdict(self)


# Why these numbers: docs/verification.md, "Tolerances".  In short: float64 has no native error
# (native == oracle), so only the floor counts and it is tight; in the other dtypes both models
# carry rounding error of the same size and the factor absorbs the lowered one's reordering.
DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(factor=2.0, rtol=1e-10),
    torch.float32: Tolerance(factor=3.0, rtol=1e-5),
    torch.float16: Tolerance(factor=3.0, rtol=2e-3),
    torch.bfloat16: Tolerance(factor=3.0, rtol=1.6e-2),
}


def default_tolerance(
    dtype: torch.dtype,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    factor: float | None = None,
) -> Tolerance:
    """The default :class:`Tolerance` for ``dtype``, with any of its fields overridden."""
    if dtype not in DEFAULT_TOLERANCES:
        known = ", ".join(str(d).removeprefix("torch.") for d in DEFAULT_TOLERANCES)
        raise ValueError(
            f"no default tolerance for {dtype}: verify in one of {known}, or pass rtol= and "
            "atol= (and factor=) explicitly"
        )
    base = DEFAULT_TOLERANCES[dtype]
    values = {"factor": factor, "rtol": rtol, "atol": atol}
    for name, value in values.items():
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return Tolerance(
        factor=base.factor if factor is None else float(factor),
        rtol=base.rtol if rtol is None else float(rtol),
        atol=base.atol if atol is None else float(atol),
    )


@dataclass(frozen=True)
class TensorDiff:
    """How far ``actual`` is from ``reference``, element by element and as a whole.

    Errors are measured where both tensors are finite.  ``rel_l2`` is
    ``||a - r|| / ||r||``; ``normalized_max_abs`` is ``max|a - r| / max|r|`` (both absolute when
    the reference is all zeros); ``max_rel`` is ``max |a - r| / |r|`` over non-zero ``r``;
    ``mismatched_fraction`` counts elements with ``|a - r| > atol + rtol * |r|`` (or with
    non-finite values that differ); ``nan``/``inf`` count ``actual``'s non-finite elements and
    ``new_nonfinite`` those where the reference is finite.  ``reference_rms`` and
    ``reference_peak`` (``max|r|``) are the scales the relative measures divide by.
    """

    shape: tuple[int, ...]
    numel: int
    max_abs: float
    max_abs_index: tuple[int, ...] | None
    max_rel: float
    rel_l2: float
    normalized_max_abs: float
    cosine: float
    mismatched_fraction: float
    nan: int
    inf: int
    new_nonfinite: int
    reference_rms: float
    reference_peak: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["max_abs_index"] = None if self.max_abs_index is None else list(self.max_abs_index)
        return out


def compare(
    actual: torch.Tensor, reference: torch.Tensor, *, rtol: float = 0.0, atol: float = 0.0
) -> TensorDiff:
    """Compare ``actual`` with ``reference`` (same shape) in float64; see :class:`TensorDiff`.

    >>> d = compare(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 2.0, 3.0]))
    >>> d.max_abs, d.max_abs_index, round(d.max_rel, 3), d.normalized_max_abs
    (1.0, (2,), 0.333, 0.3333333333333333)
    """
    if actual.shape != reference.shape:
        raise ValueError(
            f"cannot compare tensors of different shapes: actual {tuple(actual.shape)} vs "
            f"reference {tuple(reference.shape)}"
        )
    a = _as_float64(actual).to(reference.device)
    r = _as_float64(reference)
    numel = a.numel()
    finite_a, finite_r = torch.isfinite(a), torch.isfinite(r)
    all_finite = bool(finite_a.all()) and bool(finite_r.all())
    if all_finite:
        mismatched = 0
        new_nonfinite = nan = inf = 0
    else:
        both = finite_a & finite_r
        # Non-finite values agree only when they are the same value (inf == inf, NaN and NaN).
        differ = ~both & ~((a == r) | (torch.isnan(a) & torch.isnan(r)))
        mismatched = int(differ.sum())
        new_nonfinite = int((~finite_a & finite_r).sum())
        nan, inf = int(torch.isnan(a).sum()), int(torch.isinf(a).sum())
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        a, r = torch.where(both, a, zero), torch.where(both, r, zero)
    diff = (a - r).abs()

    max_abs, index = 0.0, None
    if numel:
        flat = int(diff.argmax())
        max_abs = float(diff.reshape(-1)[flat])
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    abs_r = r.abs()
    nonzero = abs_r > 0
    max_rel = float((diff[nonzero] / abs_r[nonzero]).max()) if bool(nonzero.any()) else 0.0
    ref_norm = float(torch.linalg.vector_norm(r))
    act_norm = float(torch.linalg.vector_norm(a))
    err_norm = float(torch.linalg.vector_norm(diff))
    root = math.sqrt(numel) if numel else 1.0
    ref_rms, err_rms = ref_norm / root, err_norm / root
    ref_peak = float(abs_r.max()) if numel else 0.0
    if ref_norm == 0.0 and act_norm == 0.0:
        cosine = 1.0
    elif ref_norm == 0.0 or act_norm == 0.0:
        cosine = 0.0
    else:
        cosine = float(torch.dot(a.reshape(-1), r.reshape(-1))) / (act_norm * ref_norm)
    mismatched += int((diff > atol + rtol * abs_r).sum())
    return TensorDiff(
        shape=tuple(a.shape),
        numel=numel,
        max_abs=max_abs,
        max_abs_index=index,
        max_rel=max_rel,
        rel_l2=err_rms / _denominator(ref_rms),
        normalized_max_abs=max_abs / _denominator(ref_peak),
        cosine=cosine,
        mismatched_fraction=mismatched / numel if numel else 0.0,
        nan=nan,
        inf=inf,
        new_nonfinite=new_nonfinite,
        reference_rms=ref_rms,
        reference_peak=ref_peak,
    )


@dataclass(frozen=True)
class Judgement:
    """The verdict on one value: the lowered error against its bound, for both measures.

    ``error``/``native_error``/``bound`` are rel-L2; ``max_error``/``native_max_error``/
    ``max_bound`` are normalised max abs.  ``reason`` says what failed, None when ``ok``.
    """

    ok: bool
    error: float
    native_error: float
    bound: float
    max_error: float
    native_max_error: float
    max_bound: float
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def judge(native: TensorDiff, lowered: TensorDiff, tolerance: Tolerance) -> Judgement:
    """Whether ``lowered``'s error against the oracle is within ``tolerance`` of ``native``'s.

    Both diffs must be against the same oracle value.  Fails when either rel-L2 or normalised
    max abs exceeds ``factor * native + rtol + atol / scale``, or when the lowered value has
    NaN/Inf where the oracle is finite and the native value is not also non-finite there.
    """
    bound = tolerance.bound(native.rel_l2, lowered.reference_rms)
    max_bound = tolerance.bound(native.normalized_max_abs, lowered.reference_peak)
    reasons = []
    if lowered.new_nonfinite > native.new_nonfinite:
        reasons.append(
            f"{lowered.new_nonfinite} NaN/Inf where the oracle is finite "
            f"(native: {native.new_nonfinite})"
        )
    if not lowered.rel_l2 <= bound:
        reasons.append(
            f"rel-L2 error {lowered.rel_l2:.3g} > bound {bound:.3g} "
            f"(native {native.rel_l2:.3g} x {tolerance.factor:g} + rtol {tolerance.rtol:g}"
            + (f" + atol {tolerance.atol:g}/scale" if tolerance.atol else "")
            + ")"
        )
    if not lowered.normalized_max_abs <= max_bound:
        reasons.append(
            f"max abs error {lowered.max_abs:.3g} at {_index(lowered.max_abs_index)} is "
            f"{lowered.normalized_max_abs:.3g} of the peak |value| {lowered.reference_peak:.3g} "
            f"> bound {max_bound:.3g} (native {native.normalized_max_abs:.3g})"
        )
    return Judgement(
        ok=not reasons,
        error=lowered.rel_l2,
        native_error=native.rel_l2,
        bound=bound,
        max_error=lowered.normalized_max_abs,
        native_max_error=native.normalized_max_abs,
        max_bound=max_bound,
        reason="; ".join(reasons) or None,
    )


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``values``, linearly interpolated (numpy's default method).

    >>> quartiles([4.0, 1.0, 3.0, 2.0])
    (1.75, 2.5, 3.25)
    """
    if not values:
        raise ValueError("quartiles of no values")
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


def _index(index: tuple[int, ...] | None) -> str:
    return "[]" if index is None else "[" + ", ".join(map(str, index)) + "]"


def _denominator(scale: float) -> float:
    # An all-zero reference has no scale: its errors are measured absolutely.
    return scale if scale > 0.0 else 1.0


def _as_float64(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64)
