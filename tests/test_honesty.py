"""No silent paths: what lowerconv cannot lower honestly is refused with a LoweringError that says
what, where and how to fix it, and what it can lower is lowered everywhere it runs.

The reference is always PyTorch itself: the original module's output, and an op counter that
proves no convolution op ran in the lowered one.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import lowerconv
from lowerconv import LoweringError, lowering_record

# -- TorchScript ----------------------------------------------------------------------------------


def _scripted() -> nn.Module:
    return torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3)))


def _traced() -> nn.Module:
    return torch.jit.trace(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))


TORCHSCRIPT_CASES = [
    ("script", _scripted, "torch.jit.script"),
    ("trace", _traced, "torch.jit.trace"),
]


@pytest.mark.parametrize(
    ("make", "maker"), [c[1:] for c in TORCHSCRIPT_CASES], ids=[c[0] for c in TORCHSCRIPT_CASES]
)
@pytest.mark.parametrize("entry", ["lower", "verify"])
def test_torchscript_is_refused_up_front(make, maker: str, entry: str):
    module = make()
    with pytest.raises(LoweringError) as caught:
        if entry == "lower":
            lowerconv.lower(module)
        else:
            lowerconv.verify(module, torch.randn(1, 3, 8, 8), timing=False)
    message = str(caught.value)
    assert message.startswith(f"{entry}() got a TorchScript module")
    assert maker in message
    assert "lower the Python nn.Module" in message and "torch.export" in message


# -- lazy modules ---------------------------------------------------------------------------------


def _lazy_model() -> nn.Module:
    return nn.Sequential(nn.LazyConv2d(4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.LazyConv2d(2, 1))


def test_lazy_modules_without_example_inputs_are_refused_by_name():
    model = _lazy_model()
    with pytest.raises(LoweringError, match="uninitialised lazy modules") as caught:
        lowerconv.lower(model)
    message = str(caught.value)
    assert "'0' (LazyConv2d), '3' (LazyConv2d)" in message
    assert "call the model once" in message and "example_inputs=" in message
    assert is_lazy(model[0].weight), "the user's model was changed"


def test_lazy_modules_are_initialised_on_the_copy_with_example_inputs():
    torch.manual_seed(0)
    model = _lazy_model().train()
    x = torch.randn(2, 3, 8, 8)
    rng = torch.random.get_rng_state()
    lowered = lowerconv.lower(model, example_inputs=x)
    assert torch.equal(torch.random.get_rng_state(), rng), "the caller's RNG moved"
    assert is_lazy(model[0].weight) and is_lazy(model[3].weight), "the user's model was changed"
    record = lowering_record(lowered)
    assert record.num_lowered == 2
    assert any("'0', '3' were initialised on the copy" in n for n in record.notes), record.notes
    assert any("still uninitialised" in n for n in record.notes)
    assert lowered.training and lowered.get_submodule("1").training, "train mode not restored"
    assert torch.equal(lowered.get_buffer("1.running_mean"), torch.zeros(4)), "BN stats moved"
    # The RNG did not move, so the original's first call draws the lowered model's weights.
    model.eval(), lowered.eval()
    want = model(x)
    for name, param in model.named_parameters():
        assert torch.equal(param, lowered.get_parameter(name)), name
    torch.testing.assert_close(lowered(x), want)


def test_lazy_modules_a_run_does_not_reach_are_named():
    class SkipsTheHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.head = nn.LazyConv2d(2, 1)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(LoweringError, match=r"'head' \(LazyConv2d\) are still uninitialised"):
        lowerconv.lower(SkipsTheHead(), example_inputs=torch.randn(1, 3, 8, 8))


def test_verify_initialises_a_lazy_model_once_for_every_copy():
    torch.manual_seed(0)
    model = _lazy_model().eval()
    report = lowerconv.verify(model, torch.randn(2, 3, 8, 8), timing=False)
    assert report.ok and not report.warnings, report
    assert any("lazy modules '0', '3' were initialised" in n for n in report.notes)
    assert is_lazy(model[0].weight), "the user's model was changed"
    with pytest.raises(LoweringError, match="lowered= was given"):
        lowerconv.verify(model, torch.randn(2, 3, 8, 8), lowered=nn.Identity(), timing=False)


# -- inconclusive is not PASS ------------------------------------------------------------------


def _vanishing(depth: int = 3) -> nn.Module:
    """Convs with tiny weights between batch norms at their initial statistics: the activations
    shrink 1e-3 per layer, below float16's smallest value (6e-8) after three (random init at
    its worst, as in mobilenet_v2 at float16)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(depth - 1):
        layers += [nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)]
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                layer.weight.mul_(1e-3)
                layer.bias.zero_()
    return nn.Sequential(*layers).eval()


def _all_zero() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
    return model.eval()


INCONCLUSIVE_CASES = [
    # (id, model, dtype, the cause named first)
    ("underflow", _vanishing, torch.float16, "itself off its float64 oracle by rel-L2 1"),
    ("zero_oracle", _all_zero, torch.float32, "float64 oracle's value is all zeros"),
]


@pytest.mark.parametrize(
    ("make", "dtype", "cause"),
    [c[1:] for c in INCONCLUSIVE_CASES],
    ids=[c[0] for c in INCONCLUSIVE_CASES],
)
def test_degenerate_outputs_are_inconclusive_not_pass(make, dtype, cause):
    report = lowerconv.verify(make(), torch.randn(2, 3, 8, 8), dtype=dtype, timing=False)
    assert report.verdict == "INCONCLUSIVE", report
    assert not report.ok and report.first_failure is None
    assert report.inconclusive[0].startswith("[cpu] output: ") and cause in report.inconclusive[0]
    assert any(c.startswith("[cpu] layer ") for c in report.inconclusive), report.inconclusive
    assert str(report).startswith("lowerconv verification: INCONCLUSIVE ([cpu] output: ")
    assert report.to_dict()["verdict"] == "INCONCLUSIVE"
    assert report.to_dict()["inconclusive"] == report.inconclusive
    assert report.to_markdown().startswith("### lowerconv verification: INCONCLUSIVE")
    with pytest.raises(lowerconv.VerificationError, match="is inconclusive") as caught:
        report.raise_if_failed()
    assert "calibrate_bn=True" in str(caught.value)
    assert report.raise_if_failed(allow_inconclusive=True) is report
    with pytest.raises(lowerconv.VerificationError, match="is inconclusive"):
        lowerconv.testing.assert_lowering_close(make(), torch.randn(2, 3, 8, 8), dtype=dtype)
    lowerconv.testing.assert_lowering_close(
        make(), torch.randn(2, 3, 8, 8), dtype=dtype, allow_inconclusive=True
    )


def test_a_healthy_model_in_float16_still_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    report = lowerconv.verify(model, torch.randn(2, 3, 8, 8), dtype=torch.float16, timing=False)
    assert report.verdict == "PASS" and report.inconclusive == [], report


def test_calibrate_bn_sets_statistics_on_the_verifiers_copies_only():
    model = _vanishing()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    report = lowerconv.verify(model, x, dtype=torch.float16, timing=False, calibrate_bn=True)
    assert report.verdict == "PASS", report
    assert any("running statistics of 2 batch-norm module(s) were set" in n for n in report.notes)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"the user's model changed: {key}"
    # A lowered model passed in gets the same statistics, in the verifier's copy of it.
    lowered = lowerconv.lower(model)
    report = lowerconv.verify(
        model, x, lowered=lowered, dtype=torch.float16, timing=False, calibrate_bn=True
    )
    assert report.verdict == "PASS" and report.lowered_model.startswith("Lowered"), report
    assert torch.equal(lowered.get_buffer("1.running_var"), torch.ones(8))


VANISHING_SOURCE = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(2):
        layers += [nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)]
    with torch.no_grad():
        for layer in layers[::2]:
            layer.weight.mul_(1e-3)
            layer.bias.zero_()
    return nn.Sequential(*layers)
"""

CLI_INCONCLUSIVE_CASES = [
    # (id, extra options, exit code, verdict on stdout)
    ("default", [], 3, "INCONCLUSIVE"),
    ("allowed", ["--allow-inconclusive"], 0, "INCONCLUSIVE"),
    ("calibrated", ["--calibrate-bn"], 0, "PASS"),
]


@pytest.mark.parametrize(
    ("extra", "code", "verdict"),
    [c[1:] for c in CLI_INCONCLUSIVE_CASES],
    ids=[c[0] for c in CLI_INCONCLUSIVE_CASES],
)
def test_cli_inconclusive_exits_3(tmp_path, capsys, extra, code, verdict):
    from lowerconv.cli import main

    path = tmp_path / "vanishing.py"
    path.write_text(VANISHING_SOURCE)
    argv = ["verify", f"{path}:make", "--dtype", "float16", "--image-size", "8", "--no-timing"]
    assert main([*argv, *extra]) == code
    out, err = capsys.readouterr()
    assert out.startswith(f"lowerconv verification: {verdict}")
    if verdict == "INCONCLUSIVE":
        assert "is inconclusive" in err and "--calibrate-bn" in err
        assert "--allow-inconclusive" in err and "calibrate_bn=" not in err
    else:
        assert "calibrate_bn: the running statistics of 2 batch-norm module(s)" in out


# -- exit codes: the environment is not the model ----------------------------------------------

TINY_SOURCE = """
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3))


def make_int():
    return 3
"""


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_SOURCE)
    return f"{path}:make"


def test_a_missing_onnxruntime_is_exit_2_with_the_install_command(tiny, monkeypatch, capsys):
    from lowerconv.cli import main
    from lowerconv.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    argv = ["verify", tiny, "--image-size", "8", "--no-timing", "--against", "onnx"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith('lowerconv: error: pip install -e ".[onnx]"')
    assert "--against onnx needs onnxruntime, which is not installed" in err
    assert "does not match" not in err
    with pytest.raises(MissingDependencyError, match=r"verify\(against='onnx'\) needs onnxrun"):
        lowerconv.verify(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), against="onnx")


@pytest.fixture
def broken_torchvision(monkeypatch):
    """torchvision.models fails to import as a torchvision built for another torch does."""
    import importlib

    from lowerconv.models import resolve as models

    class BrokenImport:
        util = importlib.util

        @staticmethod
        def import_module(name: str, *args):
            if name.startswith("torchvision"):
                raise RuntimeError("operator torchvision::nms does not exist")
            return importlib.import_module(name, *args)

    monkeypatch.setattr(models, "importlib", BrokenImport)
    models.torchvision_models.cache_clear()
    yield
    models.torchvision_models.cache_clear()


@pytest.mark.parametrize("argv", [["verify", "resnet18"], ["models"], ["--version"]])
def test_a_torchvision_that_does_not_import_is_exit_2_with_the_versions(
    broken_torchvision, capsys, argv
):
    from importlib.metadata import version

    from lowerconv.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lowerconv: error: torchvision failed to import (RuntimeError: operator " in err
    assert f"Found torch {torch.__version__} and torchvision {version('torchvision')}" in err
    assert "pip install" in err and "Traceback" not in err


def test_messages_say_an_int(tiny, capsys):
    from lowerconv.cli import main

    assert main(["verify", tiny.replace(":make", ":make_int"), "--no-timing"]) == 2
    assert "make_int() returned an int, not an nn.Module" in capsys.readouterr().err


# -- direct calls of torch.convolution and the ATen ops ------------------------------------------

# (id, the call, input shape, weight shape): each convolves x with w (and b where it takes one).
aten = torch.ops.aten
DIRECT_CALLS = [
    (
        "torch.convolution",
        lambda x, w, b: torch.convolution(x, w, b, [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
        (2, 3, 8, 8),
        (4, 3, 3, 3),
    ),
    (
        "torch.convolution_transposed",
        lambda x, w, b: torch.convolution(x, w, None, [2, 2], [1, 1], [1, 1], True, [1, 1], 1),
        (2, 3, 5, 5),
        (3, 4, 3, 3),
    ),
    (
        "torch._convolution",
        lambda x, w, b: torch._convolution(
            x, w, b, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, False, False, True, True
        ),
        (2, 3, 8, 8),
        (4, 3, 3, 3),
    ),
    (
        "aten.convolution",
        lambda x, w, b: aten.convolution(x, w, b, [2], [1], [1], False, [0], 1),
        (2, 3, 9),
        (4, 3, 3),
    ),
    (
        "aten.convolution.default",
        lambda x, w, b: aten.convolution.default(x, w, b, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1),
        (1, 3, 4, 5, 6),
        (4, 3, 3, 3, 3),
    ),
    ("aten.conv2d.default", lambda x, w, b: aten.conv2d.default(x, w, b, [1, 1], [1, 1]), (2, 3, 8, 8), (4, 3, 3, 3)),
    ("torch.conv_transpose2d", lambda x, w, b: torch.conv_transpose2d(x, w, None, 2, 1), (2, 3, 5, 5), (3, 4, 3, 3)),
]  # fmt: skip


class DirectCall(nn.Module):
    def __init__(self, call, weight_shape: tuple[int, ...], traceable: bool) -> None:
        super().__init__()
        self.call, self.traceable = call, traceable
        self.weight = nn.Parameter(torch.randn(weight_shape, dtype=torch.float64) / 3)
        self.bias = nn.Parameter(torch.randn(weight_shape[0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.traceable and x.sum() > 1e9:  # data-dependent: torch.fx cannot trace it
            return x
        return self.call(x, self.weight, self.bias)


@pytest.mark.parametrize("traceable", [False, True], ids=["fallback", "graph"])
@pytest.mark.parametrize(
    ("call", "input_shape", "weight_shape"),
    [c[1:] for c in DIRECT_CALLS],
    ids=[c[0] for c in DIRECT_CALLS],
)
def test_direct_convolution_calls_are_lowered(call, input_shape, weight_shape, traceable):
    from op_names import OpNames

    torch.manual_seed(0)
    model = DirectCall(call, weight_shape, traceable)
    x = torch.randn(input_shape, dtype=torch.float64)
    lowered = lowerconv.lower(model, example_inputs=x)
    record = lowering_record(lowered)
    assert record.path == ("graph" if traceable else "fallback")
    assert record.num_lowered == 1 and not record.skipped, record
    with OpNames() as ops:
        got = lowered(x)
    assert ops.convs == [], f"convolution ops ran in the lowered model: {ops.convs}"
    with OpNames() as control:
        want = model(x)
    assert control.convs, "the original ran no convolution op: the counter sees nothing"
    torch.testing.assert_close(got, want)


# -- transposed convs called with output_size= ---------------------------------------------------


class UpsampleTo(nn.Module):
    """A transposed conv inside a model, called with ``output_size=``."""

    def __init__(self, up: nn.Module) -> None:
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return self.up(x, output_size=output_size)


# (id, module, input shape, the output_size= of each call: None, spatial sizes, a whole shape)
OUTPUT_SIZE_CASES = [
    ("2d", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), (2, 3, 5, 6), [None, (10, 12), (2, 4, 9, 11)]),
    ("1d", lambda: nn.ConvTranspose1d(3, 2, 4, stride=3), (2, 3, 7), [None, [23], [24]]),
    ("3d", lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, dilation=1), (1, 2, 2, 3, 2), [None, (5, 6, 5)]),
    ("unbatched", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (3, 5, 5), [(12, 11), (4, 11, 12)]),
]  # fmt: skip


@pytest.mark.parametrize("strategy", ["unfold", "auto"])
@pytest.mark.parametrize("where", ["bare", "in_a_model"])
@pytest.mark.parametrize(
    ("make", "input_shape", "sizes"),
    [c[1:] for c in OUTPUT_SIZE_CASES],
    ids=[c[0] for c in OUTPUT_SIZE_CASES],
)
def test_output_size_is_lowered_bare_and_in_a_model(make, input_shape, sizes, where, strategy):
    from op_names import OpNames

    torch.manual_seed(0)
    conv = make().double()
    model = conv if where == "bare" else UpsampleTo(conv)
    lowered = lowerconv.lower(model, strategy=strategy)
    assert lowering_record(lowered).path == "graph"
    x = torch.randn(input_shape, dtype=torch.float64)
    for output_size in sizes:
        with OpNames() as ops:
            got = lowered(x, output_size=output_size)
        assert ops.convs == [], f"output_size={output_size}: conv ops ran: {ops.convs}"
        torch.testing.assert_close(got, model(x, output_size=output_size))
    if where == "bare":  # positionally too, as ConvTranspose*d.forward takes it
        torch.testing.assert_close(lowered(x, sizes[-1]), model(x, sizes[-1]))


def test_an_output_size_out_of_range_fails_as_pytorch_does():
    conv = nn.ConvTranspose2d(3, 4, 3, stride=2)
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError) as native:
        conv(x, output_size=(14, 11))
    with pytest.raises(ValueError) as lowered:
        lowerconv.lower(conv)(x, output_size=(14, 11))
    assert str(lowered.value) == str(native.value)


def test_an_environment_that_forces_tf32_on_cublas_is_stated_in_the_report(monkeypatch):
    """``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` (NVIDIA's containers set it) makes cuBLAS run
    float32 GEMMs in TF32 whatever the pinned flags say: the report must not claim full
    precision silently."""
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    report = lowerconv.verify(
        nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), timing=False
    )
    assert report.precision_flags["env TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] == "1"
    assert "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 in the environment" in str(report)
    monkeypatch.delenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
    report = lowerconv.verify(
        nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), timing=False
    )
    assert not [k for k in report.precision_flags if k.startswith("env ")]
