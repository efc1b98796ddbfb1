"""lowerconv.verify: correct lowerings pass, wrong ones fail at the right layer, nothing changes.

The references are PyTorch itself: the original model (in float64, as the oracle) and its own
modules.  Timings are never asserted on.
"""

from __future__ import annotations

import copy
import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

import lowerconv
from json_keys import json_keys
from lowerconv.errors import LoweringError
from lowerconv.testing import assert_lowering_close
from lowerconv.verification.report import SCHEMA, VerificationReport
from lowerconv.verification.verify import VerificationError, pinned_precision, verify

ROOT = Path(__file__).parent.parent
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def _seeded(make):
    def build():
        torch.manual_seed(0)
        return make()

    return build


# -- small models ----------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Convs of every kind the pass lowers, BatchNorm and Dropout: cheap, and train-mode-sensitive."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.reflect = nn.Conv2d(8, 8, (3, 1), padding=1, padding_mode="reflect")
        self.pointwise = nn.Conv2d(8, 4, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        y = self.bn(self.stem(x)).relu()
        y = self.depthwise(y) + y
        y = self.reflect(y)[..., 1:-1, :]
        return self.drop(self.pointwise(y))


class Branchy(nn.Module):
    """Data-dependent control flow: not traceable, so lowered on the fallback path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)

    def forward(self, x):
        y = self.conv1(x)
        if y.sum() > 0:
            y = y.relu()
        return {"a": self.conv2(y), "b": y.mean()}


# -- correct lowerings pass ------------------------------------------------------------------

# (id, model factory, input shape, expected output paths)
MODEL_CASES = [
    (
        "resnet18-eval",
        lambda: torchvision.models.resnet18().eval(),
        (1, 3, 32, 32),
        ["output"],
    ),
    (
        "mobilenet_v3_small-train",
        lambda: torchvision.models.mobilenet_v3_small(),
        (2, 3, 32, 32),
        ["output"],
    ),
    (
        "googlenet-train-aux",
        lambda: torchvision.models.googlenet(aux_logits=True, init_weights=True),
        (2, 3, 32, 32),
        ["output.logits", "output.aux_logits2", "output.aux_logits1"],
    ),
    (
        "lraspp-dict",
        lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None
        ).eval(),
        (1, 3, 32, 32),
        ["output['out']"],
    ),
]


@pytest.mark.parametrize(
    ("make", "shape", "paths"),
    [case[1:] for case in MODEL_CASES],
    ids=[case[0] for case in MODEL_CASES],
)
def test_correct_lowering_passes_float32(make, shape, paths):
    model = _seeded(make)()
    report = verify(model, torch.randn(shape), timing=False)
    assert report.ok, report.failure_message()
    assert report.first_failure is None
    assert [o.path for o in report.outputs] == paths
    num_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(report.layers) == num_convs
    assert {c.status for c in report.layers} == {"pass"}
    assert all(c.local_lowered.rel_l2 > 0 for c in report.layers)  # float32 arithmetic differs
    report.raise_if_failed()


@pytest.fixture(scope="module")
def resnet18():
    return _seeded(lambda: torchvision.models.resnet18().eval())()


@pytest.fixture(scope="module")
def resnet18_lowered(resnet18):
    return lowerconv.lower(resnet18)


X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_correct_lowering_passes_float64_and_bfloat16(resnet18, resnet18_lowered, dtype):
    report = verify(resnet18, X32, lowered=resnet18_lowered, dtype=dtype, timing=False)
    assert report.ok, report.failure_message()
    assert report.dtype == str(dtype).removeprefix("torch.")
    if dtype == torch.float64:
        # Native is the oracle there: only the tight floor is left.
        assert all(c.judgement.native_error == 0.0 for c in report.layers)
        assert report.outputs[0].judgement.bound == pytest.approx(1e-10)


@pytest.mark.parametrize("strategy", ["unfold", "strided", "auto"])
def test_strategies_and_conv_kinds_pass_in_train_mode(strategy):
    model = _seeded(TinyNet)().train()
    report = verify(model, torch.randn(2, 3, 12, 12), strategy=strategy, timing=False)
    assert report.ok, report.failure_message()
    assert [c.name for c in report.layers] == ["stem", "depthwise", "reflect", "pointwise"]
    assert {c.status for c in report.layers} == {"pass"}
    assert report.strategy == strategy


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Conv2d(3, 4, 3), lambda: nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)), TinyNet],
    ids=["bare-conv-F.conv2d-site", "module-site", "tinynet"],
)
def test_local_check_runs_the_lowered_arithmetic_bit_for_bit(make):
    # The first conv sees the model's input, so its local and accumulated values are the same
    # computation: equal errors mean the check ran exactly what the lowered model runs.
    report = verify(_seeded(make)().eval(), torch.randn(2, 3, 8, 8), timing=False)
    first = report.layers[0]
    assert first.local_lowered.rel_l2 == first.accumulated_lowered
    assert first.local_native.rel_l2 == first.accumulated_native


def test_conv_fed_by_a_conv_gets_the_original_conv_output():
    model = _seeded(lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3, padding=1)))()
    x = torch.randn(1, 3, 9, 9)
    lowered = lowerconv.lower(model)
    lowered.get_submodule("0").weight.data[0, 0, 0, 0] += 0.1
    report = verify(model, x, lowered=lowered, timing=False)
    # "1" reads "0"'s lowered output in the lowered graph, and the original "0"'s when checked.
    assert [(c.name, c.status) for c in report.layers] == [("0", "fail"), ("1", "pass")]


def test_fallback_path_is_checked_with_hooks_and_sabotage_named():
    model = _seeded(Branchy)()
    x = torch.randn(2, 3, 10, 10)
    lowered = lowerconv.lower(model)
    assert lowerconv.lowering_record(lowered).path == "fallback"
    report = verify(model, x, lowered=lowered, timing=False)
    assert report.ok, report.failure_message()
    assert report.path == "fallback"
    assert [c.status for c in report.layers] == ["pass", "pass"]
    assert [o.path for o in report.outputs] == ["output['a']", "output['b']"]

    lowered.conv1.weight.data[0, 0, 0, 0] += 0.1
    report = verify(model, x, lowered=lowered, timing=False)
    assert not report.ok and report.first_failure == "conv1"


# -- wrong lowerings fail, at the right layer ------------------------------------------------


def _perturb_weight(lowered: nn.Module, name: str, relative: float) -> None:
    weight = lowered.get_submodule(name).weight
    weight.data[0, 0, 0, 0] *= 1 + relative


def _flip_kernel(lowered: fx.GraphModule, name: str) -> None:
    """The classic bug: a true convolution (flipped kernel) where PyTorch cross-correlates."""
    weight = next(n for n in lowered.graph.nodes if n.name == name.replace(".", "_") + "_weight")
    with lowered.graph.inserting_after(weight):
        flipped = lowered.graph.call_function(torch.flip, (weight, (-2, -1)))
    weight.replace_all_uses_with(flipped, delete_user_cb=lambda user: user is not flipped)
    lowered.recompile()


# (id, sabotage, conv, dtype)
SABOTAGE_CASES = [
    (
        "weight+10%-float32",
        lambda g: _perturb_weight(g, "layer2.0.conv1", 0.1),
        "layer2.0.conv1",
        torch.float32,
    ),
    (
        "weight+1e-6-float64",
        lambda g: _perturb_weight(g, "layer2.0.conv1", 1e-6),
        "layer2.0.conv1",
        torch.float64,
    ),
    ("first-conv-flipped-kernel", lambda g: _flip_kernel(g, "conv1"), "conv1", torch.float32),
    (
        # Not layer4: at 32x32 its 3x3 convs see 1x1 inputs, where only the centre tap counts.
        "deep-conv-flipped-kernel",
        lambda g: _flip_kernel(g, "layer3.1.conv2"),
        "layer3.1.conv2",
        torch.float32,
    ),
]


@pytest.mark.parametrize(
    ("sabotage", "conv", "dtype"),
    [case[1:] for case in SABOTAGE_CASES],
    ids=[case[0] for case in SABOTAGE_CASES],
)
def test_wrong_replacement_is_named_first(resnet18, resnet18_lowered, sabotage, conv, dtype):
    lowered = copy.deepcopy(resnet18_lowered)
    sabotage(lowered)
    report = verify(resnet18, X32, lowered=lowered, dtype=dtype, timing=False)
    assert not report.ok
    assert report.first_failure == conv
    failing = [c.name for c in report.layers if c.status == "fail"]
    assert failing == [conv]  # every other conv got the original's input, and passed
    assert not report.outputs[0].ok
    with pytest.raises(VerificationError, match=re.escape(f"first failing layer {conv!r}")) as err:
        report.raise_if_failed()
    assert isinstance(err.value, AssertionError)
    assert "rel-L2 error" in str(err.value) and "bound" in str(err.value)


def test_user_edit_outside_convs_fails_end_to_end_only(resnet18, resnet18_lowered):
    lowered = copy.deepcopy(resnet18_lowered)
    out = next(n for n in lowered.graph.nodes if n.op == "output")
    with lowered.graph.inserting_before(out):
        scaled = lowered.graph.call_function(torch.mul, (out.args[0], 1.001))
    out.args = (scaled,)
    lowered.recompile()
    report = verify(resnet18, X32, lowered=lowered, timing=False)
    assert not report.ok
    assert report.first_failure == "output"
    assert {c.status for c in report.layers} == {"pass"}


# -- nothing changes -------------------------------------------------------------------------


def _snapshot(module: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "modes": [m.training for m in module.modules()],
        "grads": [p.grad for p in module.parameters()],
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"]
    assert before["grads"] == after["grads"]
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key


def test_verify_changes_nothing_in_train_mode():
    model = _seeded(TinyNet)().train()
    lowered = lowerconv.lower(model)
    before, lowered_before = _snapshot(model), _snapshot(lowered)
    x = torch.randn(4, 3, 12, 12)
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if CUDA else None
    report = verify(model, x, lowered=lowered, device="all", repeats=2, warmup=1)
    assert report.ok, report.failure_message()
    _assert_same(before, _snapshot(model))
    _assert_same(lowered_before, _snapshot(lowered))
    assert torch.equal(torch.get_rng_state(), rng)
    if CUDA:
        assert all(map(torch.equal, torch.cuda.get_rng_state_all(), cuda_rng))
    assert model.bn.num_batches_tracked.item() == 0  # its copies ran, not the model


def test_dropout_masks_match_between_models():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Dropout(0.5), nn.Conv2d(16, 4, 1)).train()
    report = verify(model, torch.randn(2, 3, 8, 8), timing=False)
    assert report.ok, report.failure_message()
    # With unmatched masks the outputs would differ by O(1); with matched ones, by rounding.
    assert report.outputs[0].lowered_vs_native.rel_l2 < 1e-5


def _legacy_flags():
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )


def _set_legacy_flags(matmul_tf32: bool, cudnn_tf32: bool, precision: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.set_float32_matmul_precision(precision)


def test_precision_flags_pinned_then_restored():
    saved = _legacy_flags()
    try:
        _set_legacy_flags(True, True, "medium")  # "medium" also lets oneDNN use bf16 on CPU
        per_backend = hasattr(torch.backends.cuda.matmul, "fp32_precision")
        with pinned_precision() as flags:
            if per_backend:
                assert torch.backends.cuda.matmul.fp32_precision == "ieee"
                assert torch.backends.cudnn.conv.fp32_precision == "ieee"
                assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
            else:
                assert _legacy_flags() == (False, False, "highest")
            assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction is False
        assert flags["torch.backends.cuda.matmul.allow_tf32"] is False
        assert flags["torch.get_float32_matmul_precision"] == "highest"
        assert _legacy_flags() == (True, True, "medium")

        broken = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(7, 2))
        with pytest.raises(LoweringError):
            verify(broken, torch.randn(1, 3, 8, 8), timing=False)
        assert _legacy_flags() == (True, True, "medium")

        report = verify(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 6, 6), timing=False)
        assert report.ok
        assert report.precision_flags["torch.backends.cudnn.allow_tf32"] is False
        assert report.precision_flags["torch.get_float32_matmul_precision"] == "highest"
        assert _legacy_flags() == (True, True, "medium")

        with pinned_precision(allow_tf32=True) as flags:
            assert flags["torch.backends.cuda.matmul.allow_tf32"] is True
    finally:
        _set_legacy_flags(*saved)


# -- the report ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timed_report(resnet18, resnet18_lowered) -> VerificationReport:
    return verify(resnet18, X32, lowered=resnet18_lowered, repeats=3, warmup=1, device="all")


def test_json_round_trip_and_schema(timed_report):
    data = timed_report.to_dict()
    assert json.loads(timed_report.to_json()) == data
    assert json.loads(timed_report.to_json(indent=None)) == data
    assert data["schema"] == SCHEMA == "lowerconv.verification/1"
    assert data["ok"] is True and data["first_failure"] is None
    run = data["runs"][0]
    assert run["device"] == "cpu"
    assert run["layers"][0]["name"] == "conv1"
    assert run["layers"][0]["local"]["judgement"]["ok"] is True
    assert run["timing"]["repeats"] == 3 and run["timing"]["ratio"] is not None


def test_every_json_field_is_documented(timed_report):
    docs = (ROOT / "docs" / "verification.md").read_text()
    data = timed_report.to_dict()
    # Maps keyed by data (flag names, devices, strategies) are documented as maps.
    data["precision_flags"] = data["devices_skipped"] = data["lowering"]["strategies"] = {}
    keys = json_keys(data, set())
    undocumented = sorted(k for k in keys if f"`{k}`" not in docs)
    assert not undocumented, f"fields missing from docs/verification.md: {undocumented}"


def test_text_and_markdown(timed_report):
    text = str(timed_report)
    names = [c.name for c in timed_report.layers]
    positions = [text.index(f"\n{name} ") for name in names]
    assert positions == sorted(positions)  # graph order
    assert text.index("\nverdict ") > positions[-1]  # then the summary
    assert "PASS" in text and "cpu time" in text
    markdown = timed_report.to_markdown()
    assert markdown.startswith("### lowerconv verification: PASS")
    assert "<details>" in markdown and "| layer2.0.conv1 " in markdown


# (median, IQR) in ms -> how the timing line prints them: one unit, no exponents.
TIMING_TEXT_CASES = [
    ((222.4, 121.0), "222 ms (IQR 120 ms)"),
    ((14.44, 0.583), "14.4 ms (IQR 0.58 ms)"),
    ((1234.0, 5.0), "1230 ms (IQR 5 ms)"),
]


@pytest.mark.parametrize(
    ("stats", "expected"), TIMING_TEXT_CASES, ids=[c[1] for c in TIMING_TEXT_CASES]
)
def test_timing_line_reads_in_milliseconds(timed_report, stats, expected):
    report = copy.deepcopy(timed_report)
    timing = report.runs[0].timing
    timing.native.median_ms, timing.native.iqr_ms = stats
    line = next(line for line in str(report).splitlines() if line.startswith("cpu time"))
    assert f"native {expected}, lowered " in line
    assert "e+" not in line and "e-" not in line


def test_cuda_absent_is_a_note_not_an_error(timed_report):
    if CUDA:
        pytest.skip("CUDA is present")
    assert [r.device for r in timed_report.runs] == ["cpu"]
    assert "CUDA is not available" in timed_report.devices_skipped["cuda"]
    assert "cuda skipped" in str(timed_report)
    alone = verify(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 6, 6), device="cuda")
    assert alone.runs == [] and "cuda" in alone.devices_skipped


@needs_cuda
def test_cuda_run_has_timing_and_peak_memory(timed_report):
    cuda = next(r for r in timed_report.runs if r.device == "cuda")
    assert cuda.ok, timed_report.failure_message()
    assert cuda.timing.peak_memory_native_bytes > 0
    assert cuda.timing.peak_memory_lowered_bytes > 0
    assert not timed_report.devices_skipped


def test_im2col_bytes_are_computed_from_the_captured_shape(timed_report):
    conv1 = timed_report.layer("conv1")
    # 7x7 conv, stride 2, padding 3 on 1x3x32x32: 3*49 rows, 16*16 columns, float32.
    assert conv1.input_shape == (1, 3, 32, 32)
    assert conv1.im2col_bytes == 3 * 49 * 16 * 16 * 4
    assert timed_report.to_dict()["runs"][0]["max_im2col_bytes"] >= conv1.im2col_bytes


def test_per_layer_off_and_progress_lines():
    lines: list[str] = []
    report = verify(
        nn.Conv2d(3, 4, 3),
        torch.randn(1, 3, 6, 6),
        per_layer=False,
        timing=False,
        progress=lines.append,
    )
    assert report.ok and report.layers == []
    assert any("end to end" in line for line in lines)


def test_module_without_record_is_compared_end_to_end():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    lowered = lowerconv.lower(model)
    rebuilt = fx.GraphModule(lowered, lowered.graph)  # a rebuild drops the record
    report = verify(model, torch.randn(1, 3, 6, 6), lowered=rebuilt, timing=False)
    assert report.ok and report.layers == [] and report.path == "unknown"
    assert "no lowering record" in report.notes[0]
    # Without a record the op audit still runs: a traced, unlowered copy runs a conv and fails.
    traced = verify(model, torch.randn(1, 3, 6, 6), lowered=fx.symbolic_trace(model), timing=False)
    assert not traced.ok and traced.first_failure.startswith("conv op aten.convolution")


# -- errors ----------------------------------------------------------------------------------

# (id, call, message pattern)
ERROR_CASES = [
    ("not-a-module", lambda: verify("resnet18", torch.randn(1)), "takes the original nn.Module"),
    ("inputs-not-tensors", lambda: verify(nn.Conv2d(3, 4, 3), {"x": 1}), "tuple of tensors"),
    (
        "integer-dtype",
        lambda: verify(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 6, 6), dtype=torch.int32),
        "floating-point",
    ),
    (
        "bad-device",
        lambda: verify(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 6, 6), device="gpu7"),
        "unknown device",
    ),
    (
        "wrong-input-shape",
        lambda: verify(nn.Conv2d(3, 4, 3), torch.randn(1, 5, 6, 6), timing=False),
        r"Conv2d.*float32\[1, 5, 6, 6\].*Fix: pass example_inputs",
    ),
]


@pytest.mark.parametrize(
    ("call", "pattern"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors_say_what_and_how_to_fix(call, pattern):
    with pytest.raises(LoweringError, match=pattern):
        call()


# -- for users' test suites, and the example -------------------------------------------------


def test_assert_lowering_close():
    model = _seeded(TinyNet)().eval()
    x = torch.randn(1, 3, 12, 12)
    report = assert_lowering_close(model, x)
    assert report.ok and report.runs[0].timing is None
    lowered = lowerconv.lower(model)
    lowered.pointwise.bias.data += 1.0
    with pytest.raises(AssertionError, match="first failing layer 'pointwise'"):
        assert_lowering_close(model, x, lowered=lowered)


def test_example_verify_resnet18(monkeypatch, capsys, tmp_path):
    out = tmp_path / "report.json"
    argv = ["verify_resnet18.py", "--image-size", "32", "--repeats", "2", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "examples" / "verify_resnet18.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "ok=True first_failure=None" in printed and "layer4.1.conv2" in printed
    assert json.loads(out.read_text())["ok"] is True


def test_functional_conv_in_a_traced_subclass_is_checked():
    class Standardized(nn.Conv2d):
        def forward(self, x):
            w = self.weight
            w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (
                w.std(dim=(1, 2, 3), keepdim=True) + 1e-5
            )
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    model = nn.Sequential(Standardized(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))
    report = verify(model, torch.randn(2, 3, 8, 8), timing=False)
    assert report.ok, report.failure_message()
    assert [c.status for c in report.layers] == ["pass", "pass"]
    lowered = lowerconv.lower(model)
    lowered.get_submodule("0").weight.data[0] *= -1  # the standardized weight changes sign
    report = verify(model, torch.randn(2, 3, 8, 8), lowered=lowered, timing=False)
    assert report.first_failure == lowerconv.lowering_record(lowered).lowered[0].name


def test_nonfinite_tolerance_values_rejected():
    with pytest.raises(LoweringError, match="rtol must be a finite number"):
        verify(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 6, 6), rtol=math.inf)


def test_versions_name_torchvision_and_the_models_library():
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 9, 9)
    own = verify(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), x, timing=False).versions
    from_timm = verify(timm.layers.Conv2dSame(3, 4, 4).eval(), x, timing=False).versions
    assert own["torchvision"] == from_timm["torchvision"] == torchvision.__version__.split("+")[0]
    assert "timm" not in own
    assert from_timm["timm"] == timm.__version__


def test_layer_im2col_is_what_the_strategy_allocates():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 3)).eval()
    x = torch.randn(2, 4, 10, 10)
    by_auto = verify(model, x, strategy="auto", timing=False)
    by_unfold = verify(model, x, strategy="unfold", timing=False)
    assert [c.strategy for c in by_auto.layers] == ["depthwise", "nchw"]
    assert by_auto.layers[0].im2col_bytes == 0  # taps over views: no buffer
    full = [c.im2col_bytes for c in by_unfold.layers]
    assert full == [2 * 36 * 100 * 4, 2 * 36 * 64 * 4]  # batch x C*kh*kw x OH*OW x 4 bytes
    assert by_auto.layers[1].im2col_bytes == full[1]  # one chunk holds it all
