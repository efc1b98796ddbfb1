"""lowerconv.verify(..., gradients=True): the backward pass is checked as the forward is.

Correct lowerings pass on every path; a backward wrong by 1 % in one conv's dX, dW or db fails
and names that conv; a backward that runs a native convolution fails the audit.  The references
are PyTorch's own: the original model, its float64 copy, the native conv's backward.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lowerconv
from json_keys import json_keys
from lowerconv.cli import main
from lowerconv.lowering import autograd as lowered_autograd
from lowerconv.lowering.emit import META_KEY
from lowerconv.lowering.record import SkippedConv
from lowerconv.verification.audit import ConvOpAudit
from lowerconv.verification.junit import verification_junit


class SmallCNN(nn.Module):
    """Convs with biases (so db is checked) of several shapes, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).relu()
        y = self.down(y).relu()
        y = self.depthwise(y) + y
        y = self.pointwise(y).mean((2, 3))
        return self.head(y)


class DataBranch(nn.Module):
    """A branch on a value: neither torch.fx nor torch.export captures it (the fallback path)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv1(x)
        if y.sum() > 0:
            y = y.relu()
        return {"a": self.conv2(y), "b": y.mean()}


class ShapeBranch(nn.Module):
    """A branch on a shape: torch.fx cannot trace it, torch.export can (the export path)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)])
        self.head = nn.Conv2d(8, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).relu()
        if y.shape[-1] % 2 == 0:
            for block in self.blocks:
                y = y + block(y)
        return self.head(y)


class SamePadConv(nn.Conv2d):
    """TensorFlow's 'SAME' padding from math.ceil: not traceable, so lowered at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = max(
            (math.ceil(x.shape[-1] / self.stride[1]) - 1) * self.stride[1] + 3 - x.shape[-1], 0
        )
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride)


class StandardizedConv(nn.Conv2d):
    """A weight computed in the graph from the parameter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, padding=1)


class MixedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.same = SamePadConv(3, 8, 3, stride=2)
        self.standardized = StandardizedConv(8, 8, 3)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.standardized(self.same(x))
        return self.conv1d(y.flatten(2))


def seeded(make):
    def build() -> nn.Module:
        torch.manual_seed(0)
        return make()

    return build


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


X_SMALL = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
X_64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
SMALL_CONVS = ["stem", "down", "depthwise", "pointwise"]


def _assert_all_checked_and_pass(report, convs: list[str], biases: bool = True) -> None:
    assert report.ok, report.failure_message()
    assert report.gradients and report.first_failure is None
    (run,) = report.runs
    assert [c.name for c in run.layers] == convs
    for layer in run.layers:
        expected = ["dX", "dW", "db"] if biases else ["dX", "dW"]
        assert [g.grad for g in layer.gradients] == expected, layer.name
        assert {g.status for g in layer.gradients} == {"pass"}, layer.gradients
    assert run.gradients and all(g.ok and g.judgement is not None for g in run.gradients)
    assert not [op for op in run.conv_ops if op.phase == "backward"]


# -- correct lowerings pass ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("strategy", ["unfold", "auto"])
def test_small_cnn_forward_and_backward_pass(strategy, dtype):
    model = small_cnn()
    report = lowerconv.verify(
        model, X_SMALL, strategy=strategy, dtype=dtype, timing=False, gradients=True
    )
    _assert_all_checked_and_pass(report, SMALL_CONVS)
    paths = [g.path for g in report.runs[0].gradients]
    parameters = [f"{name}.grad" for name, _ in model.named_parameters()]
    assert paths == ["input[0].grad", *parameters]
    if dtype == torch.float64:  # native is the oracle: only the tight floor is left
        assert all(g.judgement.native_error == 0.0 for g in report.runs[0].layer_gradients)


RESNET_CASES = [
    pytest.param("unfold", torch.float32, id="unfold-float32"),
    pytest.param("auto", torch.float32, id="auto-float32"),
    pytest.param("unfold", torch.float64, id="unfold-float64", marks=pytest.mark.slow),
    pytest.param("auto", torch.float64, id="auto-float64", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("strategy", "dtype"), RESNET_CASES)
def test_resnet18_forward_and_backward_pass(strategy, dtype):
    model = resnet18()
    report = lowerconv.verify(
        model, X_64, strategy=strategy, dtype=dtype, timing=False, gradients=True
    )
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    _assert_all_checked_and_pass(report, convs, biases=False)
    assert len(report.runs[0].gradients) == 1 + len(list(model.parameters()))


def test_train_mode_and_gradients_combine():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False),
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = lowerconv.verify(model, X_SMALL, timing=False, gradients=True)
    _assert_all_checked_and_pass(report, ["0", "3"], biases=False)
    assert report.training
    assert all(p.grad is None for p in model.parameters())  # the caller's model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_gradients_off_by_default_and_rows_absent():
    report = lowerconv.verify(small_cnn(), X_SMALL, timing=False)
    assert report.ok and not report.gradients
    assert report.runs[0].gradients == [] and report.runs[0].layer_gradients == []
    assert "gradient" not in str(report)


def test_fallback_path_checks_gradients():
    report = lowerconv.verify(seeded(DataBranch)(), X_SMALL, timing=False, gradients=True)
    assert report.path == "fallback"
    _assert_all_checked_and_pass(report, ["conv1", "conv2"])


def test_export_path_checks_gradients():
    report = lowerconv.verify(seeded(ShapeBranch)(), X_SMALL, timing=False, gradients=True)
    assert report.path == "export"
    _assert_all_checked_and_pass(report, ["stem", "blocks.0", "blocks.1", "head"])


def test_run_time_lowered_computed_weight_and_kinds_left_alone():
    model = seeded(MixedConvs)()
    report = lowerconv.verify(model, X_SMALL, timing=False, gradients=True)
    assert report.ok, report.failure_message()
    grads = {c.name: [(g.grad, g.status) for g in c.gradients] for c in report.layers}
    assert report.layer("same").strategy == "unfold (run time)"
    assert grads["same"] == [("dX", "pass"), ("dW", "pass"), ("db", "pass")]
    # The standardized weight is no parameter: no dW of the conv; its parameter's gradient is
    # checked end to end.
    assert grads["standardized"] == [("dX", "pass"), ("db", "pass")]
    assert report.runs[0].gradients[3].path == "standardized.weight.grad"
    assert grads["conv1d"] == [("dX", "pass"), ("dW", "pass"), ("db", "pass")]

    # Lowering conv2d only: conv1d's convolution and its backward are left alone, not failures.
    report = lowerconv.verify(
        model,
        X_SMALL,
        timing=False,
        gradients=True,
        lower_options={"kinds": frozenset({"conv2d"})},
    )
    assert report.ok, report.failure_message()
    ops = {(op.phase, op.kind, op.status) for op in report.runs[0].conv_ops}
    assert ops == {("forward", "conv1d", "left alone"), ("backward", "conv1d", "left alone")}


# -- wrong backwards fail, at the right conv -------------------------------------------------


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; a backward that scales the gradient by ``factor``."""

    @staticmethod
    def forward(x, factor):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _ScaleGradient.apply(x, factor)


def _sabotage(lowered: nn.Module, conv_name: str, role: str, factor: float = 1.01) -> None:
    """Make the backward of ``conv_name``'s lowered nodes wrong by ``factor`` in the gradient of
    its ``role`` (``input``, ``weight`` or ``bias``), the forward unchanged: a node that scales
    the gradient goes between that tensor and the lowered nodes reading it, with their
    provenance, so it is part of the conv."""
    record = lowerconv.lowering_record(lowered)
    conv = next(c for c in record.lowered if c.name == conv_name)
    owner = lowered.get_submodule(conv.graph_module) if conv.graph_module else lowered
    members = [
        n for n in owner.graph.nodes if META_KEY in n.meta and n.meta[META_KEY].source == conv_name
    ]
    feeding = {arg for n in members for arg in n.all_input_nodes} | set(members)
    if role == "input":
        (target,) = [n for n in owner.graph.nodes if n.name == conv.input_node]
    else:
        (target,) = [
            n for n in feeding if n.op == "get_attr" and str(n.target).split(".")[-1] == role
        ]
    users = [n for n in members if target in n.all_input_nodes]
    with owner.graph.inserting_before(users[0]):
        scaled = owner.graph.call_function(scale_gradient, (target, factor))
    scaled.meta[META_KEY] = dataclasses.replace(
        users[0].meta[META_KEY], role="sabotage", is_output=False
    )
    for user in users:
        user.replace_input_with(target, scaled)
    owner.graph.lint()
    owner.recompile()


# (id, model, input, lower() keyword arguments, conv, role, dtype, expected path)
SABOTAGE_CASES = [
    ("resnet18-dW", resnet18, X_64, {}, "layer2.0.conv1", "weight", torch.float32, "graph"),
    ("small-dX", small_cnn, X_SMALL, {}, "down", "input", torch.float32, "graph"),
    ("small-db", small_cnn, X_SMALL, {}, "depthwise", "bias", torch.float64, "graph"),
    (
        "small-auto-dW",
        small_cnn,
        X_SMALL,
        {"strategy": "auto"},
        "stem",
        "weight",
        torch.float32,
        "graph",
    ),
    ("fallback-dW", DataBranch, X_SMALL, {}, "conv2", "weight", torch.float32, "fallback"),
    (
        "export-dX",
        ShapeBranch,
        X_SMALL,
        {"example_inputs": X_SMALL},
        "blocks.1",
        "input",
        torch.float32,
        "export",
    ),
]
_GRAD = {"input": "dX", "weight": "dW", "bias": "db"}


@pytest.mark.parametrize(
    ("make", "x", "options", "conv", "role", "dtype", "path"),
    [case[1:] for case in SABOTAGE_CASES],
    ids=[case[0] for case in SABOTAGE_CASES],
)
def test_backward_wrong_by_one_percent_fails_and_names_the_conv(
    make, x, options, conv, role, dtype, path
):
    torch.manual_seed(0)
    model = make()
    lowered = lowerconv.lower(model, **options)
    assert lowerconv.lowering_record(lowered).path == path
    _sabotage(lowered, conv, role)

    forward_only = lowerconv.verify(model, x, lowered=lowered, dtype=dtype, timing=False)
    assert forward_only.ok, forward_only.failure_message()  # the forward is right

    report = lowerconv.verify(model, x, lowered=lowered, dtype=dtype, timing=False, gradients=True)
    grad = _GRAD[role]
    assert not report.ok
    assert report.first_failure == f"{conv} ({grad})"
    (run,) = report.runs
    assert {c.status for c in run.layers} == {"pass"}  # forward per layer: still right
    failing = [g.label for g in run.layer_gradients if g.status == "fail"]
    assert failing == [f"{conv} ({grad})"]  # every other gradient got the original's input
    (wrong,) = [g for g in run.layer_gradients if g.status == "fail"]
    assert wrong.judgement.error == pytest.approx(0.01, rel=0.05)
    assert any(not g.ok for g in run.gradients)  # end to end too
    message = report.failure_message()
    assert f"first failing conv gradient '{conv} ({grad})'" in message
    assert "rel-L2 error" in message and "bound" in message


def test_wrong_strategy_backward_formula_is_named(monkeypatch):
    # The GEMM backward of auto's kernels (lowerconv.autograd.GemmConv2d) returns a dW 1% off.
    real = lowered_autograd.conv2d_weight_grad
    monkeypatch.setattr(lowered_autograd, "conv2d_weight_grad", lambda *args: real(*args) * 1.01)
    report = lowerconv.verify(small_cnn(), X_SMALL, strategy="auto", timing=False, gradients=True)
    assert not report.ok
    failing = [g.label for g in report.runs[0].layer_gradients if g.status == "fail"]
    assert failing and all(label.endswith("(dW)") for label in failing)
    assert report.first_failure == failing[0]


def _native_conv_backward(ctx, grad):
    """GemmConv2d's backward computed by ATen's convolution_backward: right numbers, wrong op."""
    input, weight = ctx.saved_tensors
    g = ctx.geometry
    left, right, top, bottom = g.zero_pad
    padded = torch.nn.functional.pad(input, (left, right, top, bottom))
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad,
        padded,
        weight,
        None,
        list(g.stride),
        [0, 0],
        list(g.dilation),
        False,
        [0, 0],
        g.groups,
        [True, True, ctx.has_bias],
    )
    grad_input = grad_input[
        ..., top : grad_input.shape[-2] - bottom, left : grad_input.shape[-1] - right
    ]
    return grad_input, grad_weight, grad_bias if ctx.has_bias else None, None, None


def test_backward_running_a_native_conv_fails_the_audit(monkeypatch):
    monkeypatch.setattr(
        lowered_autograd.GemmConv2d, "backward", staticmethod(_native_conv_backward)
    )
    model = small_cnn()
    forward_only = lowerconv.verify(model, X_SMALL, strategy="auto", timing=False)
    assert forward_only.ok, forward_only.failure_message()

    report = lowerconv.verify(model, X_SMALL, strategy="auto", timing=False, gradients=True)
    assert not report.ok
    (run,) = report.runs
    failing = run.failing_conv_ops
    assert failing and {op.phase for op in failing} == {"backward"}
    assert failing[0].op == "aten.convolution_backward.default"
    assert "GemmConv2dBackward" in failing[0].where
    assert report.first_failure.startswith(
        "conv op aten.convolution_backward.default in the backward pass"
    )
    # The numbers are right: only the audit fails.
    assert {g.status for g in run.layer_gradients} == {"pass"}
    assert all(g.ok for g in run.gradients)
    assert "convolution_backward" in report.failure_message()


def test_audit_lets_the_backward_of_a_conv_left_alone_pass_and_no_more():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    left_alone = [SkippedConv(name="0", node="_0", kind="Conv2d", reason="left alone here")]
    audit = ConvOpAudit(model, left_alone)
    with audit:
        model(x).sum().backward()
    by_phase = {(op.phase, op.status): op.count for op in audit.runs()}
    # Module "0"'s conv and its backward are left alone; module "2"'s forward and the one
    # backward op too many fail.
    assert by_phase == {
        ("forward", "left alone"): 1,
        ("forward", "fail"): 1,
        ("backward", "left alone"): 1,
        ("backward", "fail"): 1,
    }


# -- the reports ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_report():
    model = small_cnn()
    lowered = lowerconv.lower(model)
    _sabotage(lowered, "down", "weight")
    return lowerconv.verify(model, X_SMALL, lowered=lowered, timing=False, gradients=True)


def test_rows_in_text_json_markdown_and_junit(failing_report):
    text = str(failing_report)
    assert "forward and backward checked" in text
    assert "down.weight.grad" in text and "input[0].grad" in text
    assert re.search(r"^down\s+dW\s+8x4x3x3\s.*\sfail$", text, re.MULTILINE), text
    data = json.loads(failing_report.to_json())
    assert data["gradients"] is True and data["first_failure"] == "down (dW)"
    (run,) = data["runs"]
    assert [g["path"] for g in run["gradients"]][:2] == ["input[0].grad", "stem.weight.grad"]
    down = next(layer for layer in run["layers"] if layer["name"] == "down")
    assert [(g["grad"], g["status"]) for g in down["gradients"]] == [
        ("dX", "pass"),
        ("dW", "fail"),
        ("db", "pass"),
    ]
    markdown = failing_report.to_markdown()
    assert "Per-layer gradients on cpu" in markdown and "down.weight.grad" in markdown
    suite = ET.fromstring(verification_junit(failing_report)).find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["down (dW)"].find("failure") is not None
    assert cases["down (dX)"].find("failure") is None
    assert cases["down.weight.grad"].find("failure") is not None
    assert cases["input[0].grad"].get("classname") == "lowerconv.verify.cpu.gradients"


def test_every_gradient_json_field_is_documented(failing_report):
    docs = (Path(__file__).parent.parent / "docs" / "verification.md").read_text()
    data = failing_report.to_dict()
    data["precision_flags"] = data["devices_skipped"] = data["lowering"]["strategies"] = {}
    undocumented = sorted(k for k in json_keys(data, set()) if f"`{k}`" not in docs)
    assert not undocumented, f"fields missing from docs/verification.md: {undocumented}"


def test_cli_gradients_flag(tmp_path, capsys):
    paths = {ext: tmp_path / f"report.{ext}" for ext in ("json", "md", "xml")}
    status = main(
        [
            "verify",
            "examples/my_models.py:make_net",
            "--image-size",
            "32",
            "--no-timing",
            "--gradients",
            "--train",
            "--json",
            str(paths["json"]),
            "--markdown",
            str(paths["md"]),
            "--junit-xml",
            str(paths["xml"]),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "forward and backward checked" in out and ".weight.grad" in out
    data = json.loads(paths["json"].read_text())
    assert data["gradients"] is True and data["training"] is True
    assert data["runs"][0]["gradients"]
    assert "gradients" in paths["xml"].read_text()


def test_nothing_to_differentiate_is_no_pass():
    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3).requires_grad_(False)

        def forward(self, x):
            return self.conv(x.detach())  # no gradient reaches the input either

    report = lowerconv.verify(Frozen(), X_SMALL, timing=False, gradients=True)
    assert not report.ok
    assert report.first_failure == "gradients (no gradient to compare)"
