"""lowerconv.verification.metrics: the comparison math, checked against PyTorch's (and numpy's)
own."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lowerconv.verification.metrics import (
    DEFAULT_TOLERANCES,
    TensorDiff,
    Tolerance,
    compare,
    default_tolerance,
    judge,
    quartiles,
)

# -- compare: hand-computed cases -----------------------------------------------------------

INF, NAN = math.inf, math.nan

# (id, actual, reference, expected fields)
COMPARE_CASES = [
    (
        "identical",
        [1.0, -2.0, 3.0],
        [1.0, -2.0, 3.0],
        {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0, "mismatched_fraction": 0.0},
    ),
    (
        "one-off",
        [1.0, 2.0, 4.0],
        [1.0, 2.0, 3.0],
        {"max_abs": 1.0, "max_abs_index": (2,), "max_rel": 1 / 3, "normalized_max_abs": 1 / 3},
    ),
    (
        "max-rel-skips-zero-reference",
        [0.5, 2.2],
        [0.0, 2.0],
        {"max_abs": 0.5, "max_abs_index": (0,), "max_rel": pytest.approx(0.1)},
    ),
    (
        "all-zero-reference-is-absolute",
        [0.0, 3.0, 4.0],
        [0.0, 0.0, 0.0],
        {"rel_l2": pytest.approx(5 / math.sqrt(3)), "normalized_max_abs": 4.0, "cosine": 0.0},
    ),
    ("both-zero", [0.0, 0.0], [0.0, 0.0], {"rel_l2": 0.0, "cosine": 1.0}),
    (
        "nan-and-inf-counted",
        [NAN, INF, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
        {"nan": 1, "inf": 1, "new_nonfinite": 2, "max_abs": 0.0, "mismatched_fraction": 0.5},
    ),
    (
        "matching-nonfinite-agree",
        [NAN, -INF, 2.0],
        [NAN, -INF, 1.0],
        {"nan": 1, "inf": 1, "new_nonfinite": 0, "max_abs": 1.0, "mismatched_fraction": 1 / 3},
    ),
    ("negated", [1.0, -1.0], [-1.0, 1.0], {"cosine": pytest.approx(-1.0), "rel_l2": 2.0}),
]


@pytest.mark.parametrize(
    ("actual", "reference", "expected"),
    [case[1:] for case in COMPARE_CASES],
    ids=[case[0] for case in COMPARE_CASES],
)
def test_compare_hand_computed(actual, reference, expected):
    diff = compare(torch.tensor(actual), torch.tensor(reference, dtype=torch.float64))
    for name, value in expected.items():
        assert getattr(diff, name) == value, name


def test_compare_index_is_multidimensional():
    reference = torch.zeros(2, 3, 4)
    actual = reference.clone()
    actual[1, 2, 0] = -5.0
    diff = compare(actual, reference)
    assert diff.max_abs_index == (1, 2, 0)
    assert diff.shape == (2, 3, 4)
    assert diff.numel == 24


def test_compare_refuses_different_shapes():
    with pytest.raises(ValueError, match=r"actual \(2,\) vs reference \(3,\)"):
        compare(torch.zeros(2), torch.zeros(3))


def test_compare_integer_and_bool_tensors():
    diff = compare(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
    assert diff.max_abs == 2.0 and diff.mismatched_fraction == pytest.approx(1 / 3)
    assert compare(torch.tensor([True, False]), torch.tensor([True, False])).max_abs == 0.0


def test_to_dict_is_plain_data():
    d = compare(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.5]])).to_dict()
    assert d["shape"] == [1, 2] and d["max_abs_index"] == [0, 1]
    assert set(d) == set(TensorDiff.__dataclass_fields__)


# -- compare: properties against torch's own reductions -------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(finite, min_size=n, max_size=n), st.lists(finite, min_size=n, max_size=n)
        )
    ),
    st.sampled_from([(1e-5, 1e-8), (1e-2, 0.0), (0.0, 0.5)]),
)
def test_compare_matches_torch(pair, tols):
    a = torch.tensor(pair[0], dtype=torch.float64)
    r = torch.tensor(pair[1], dtype=torch.float64)
    rtol, atol = tols
    diff = compare(a, r, rtol=rtol, atol=atol)
    assert diff.max_abs == (a - r).abs().max().item()
    assert (a - r).abs()[diff.max_abs_index].item() == diff.max_abs
    norm_r = torch.linalg.norm(r).item()
    if norm_r > 0:
        assert diff.rel_l2 == pytest.approx(torch.linalg.norm(a - r).item() / norm_r, rel=1e-12)
    if norm_r > 0 and torch.linalg.norm(a).item() > 0:
        expected = F.cosine_similarity(a, r, dim=0, eps=0.0).item()
        assert diff.cosine == pytest.approx(expected, rel=1e-9, abs=1e-12)
    close = torch.isclose(a, r, rtol=rtol, atol=atol)
    assert diff.mismatched_fraction == pytest.approx((~close).double().mean().item())
    assert diff.reference_peak == r.abs().max().item()


# -- judge ----------------------------------------------------------------------------------


def _diff(rel_l2: float, normalized_max_abs: float | None = None, new_nonfinite: int = 0):
    return TensorDiff(
        shape=(4,),
        numel=4,
        max_abs=normalized_max_abs or rel_l2,
        max_abs_index=(0,),
        max_rel=rel_l2,
        rel_l2=rel_l2,
        normalized_max_abs=rel_l2 if normalized_max_abs is None else normalized_max_abs,
        cosine=1.0,
        mismatched_fraction=0.0,
        nan=new_nonfinite,
        inf=0,
        new_nonfinite=new_nonfinite,
        reference_rms=1.0,
        reference_peak=1.0,
    )


TOL = Tolerance(factor=3.0, rtol=1e-5)

# (id, native diff, lowered diff, ok, words expected in the reason)
JUDGE_CASES = [
    ("equal-errors", _diff(1e-6), _diff(1e-6), True, None),
    ("within-factor", _diff(1e-4), _diff(2.9e-4), True, None),
    ("beyond-factor", _diff(1e-4), _diff(3.2e-4), False, "rel-L2 error 0.00032 > bound 0.00031"),
    ("floor-when-native-exact", _diff(0.0), _diff(9e-6), True, None),
    ("over-floor-when-native-exact", _diff(0.0), _diff(2e-5), False, "rtol 1e-05"),
    ("one-bad-element", _diff(1e-6), _diff(1e-6, normalized_max_abs=0.5), False, "max abs"),
    ("new-nan", _diff(1e-6), _diff(1e-6, new_nonfinite=1), False, "NaN/Inf"),
    (
        "nan-where-native-has-it",
        _diff(1e-6, new_nonfinite=1),
        _diff(1e-6, new_nonfinite=1),
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("native", "lowered", "ok", "reason"),
    [case[1:] for case in JUDGE_CASES],
    ids=[case[0] for case in JUDGE_CASES],
)
def test_judge(native, lowered, ok, reason):
    verdict = judge(native, lowered, TOL)
    assert verdict.ok is ok
    assert verdict.error == lowered.rel_l2 and verdict.native_error == native.rel_l2
    assert verdict.bound == pytest.approx(3 * native.rel_l2 + 1e-5)
    if reason is None:
        assert verdict.reason is None
    else:
        assert reason in verdict.reason


def test_atol_is_divided_by_the_scale():
    tol = Tolerance(factor=1.0, rtol=0.0, atol=1e-3)
    assert tol.bound(0.0, scale=10.0) == pytest.approx(1e-4)
    assert tol.bound(0.0, scale=0.0) == pytest.approx(1e-3)  # all-zero reference: absolute


# -- tolerances -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DEFAULT_TOLERANCES), ids=str)
def test_default_floor_is_above_one_rounding_and_float64_is_tight(dtype):
    tol = default_tolerance(dtype)
    assert tol.rtol >= torch.finfo(dtype).eps / 2 or dtype == torch.float64
    assert tol.factor >= 1.0
    if dtype == torch.float64:
        assert tol.rtol <= 1e-9


def test_default_tolerance_overrides_and_errors():
    tol = default_tolerance(torch.float32, rtol=1e-3, atol=1e-6, factor=5)
    assert tol == Tolerance(factor=5.0, rtol=1e-3, atol=1e-6)
    assert default_tolerance(torch.float32, rtol=None) == DEFAULT_TOLERANCES[torch.float32]
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0, got -1"):
        default_tolerance(torch.float32, rtol=-1)
    with pytest.raises(ValueError, match=r"no default tolerance for torch\.int32"):
        default_tolerance(torch.int32)


# -- quartiles ------------------------------------------------------------------------------


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=30))
def test_quartiles_match_numpy(values):
    expected = np.percentile(values, [25, 50, 75])
    assert quartiles(values) == pytest.approx(tuple(expected), rel=1e-12, abs=1e-12)


def test_quartiles_of_nothing():
    with pytest.raises(ValueError):
        quartiles([])
