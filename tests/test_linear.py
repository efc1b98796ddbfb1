"""The Linear form, ``lower(model, gemm="linear")``: each conv's GEMM an ``nn.Linear``.

Against ``F.conv2d`` in float64 over the configuration space (gradients too); the modules sit at
the convs' names, one per group; ``state_dict`` both ways; the record; the errors; and the tools
the form is for (torchao, PEFT, ``torch.nn.utils.prune``) finding every non-depthwise conv of
real models, with no convolution op left running.
"""

from __future__ import annotations

import copy
import importlib
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

import lowerconv
from conv_space import conv_configs, make_input
from lowerconv import LoweringError, cli, conv_state_dict, linear_module_names, lowering_record
from lowerconv.lowering.linear import LINEAR_STRATEGIES
from lowerconv.verification.audit import ConvOpAudit

torchvision = pytest.importorskip("torchvision", reason="the model tests lower torchvision models")

RTOL, ATOL = 1e-10, 1e-11


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def _grads_by_name(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


# -- equivalence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", LINEAR_STRATEGIES)
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_linear_form_matches_conv2d_with_gradients(config, seed, strategy):
    kwargs, shape, layout = config
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(**kwargs)).double()
    lowered = lowerconv.lower(model, strategy=strategy, gemm="linear")
    (conv,) = lowering_record(lowered).lowered
    assert conv.gemm == ("matmul" if _is_depthwise(model[0]) else "linear"), conv.note

    x = make_input(shape, layout)
    want = model(x)
    got = lowered(x)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    cotangent = torch.randn_like(want)
    want_dx, *_ = torch.autograd.grad(want, x, cotangent, retain_graph=True, allow_unused=True)
    want.backward(cotangent)
    got_dx, *_ = torch.autograd.grad(got, x, cotangent, retain_graph=True, allow_unused=True)
    got.backward(cotangent)
    if want_dx is not None:
        torch.testing.assert_close(got_dx, want_dx, rtol=RTOL, atol=ATOL)
    # The Linears' gradients, in the conv's shape and keys, are the conv's.
    got_grads = conv_state_dict(lowered, _grads_by_name(lowered))
    want_grads = _grads_by_name(model)
    assert got_grads.keys() == want_grads.keys()
    for name, want_grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], want_grad, rtol=RTOL, atol=ATOL, msg=name)


GATHER_CASES = [
    # (id, Conv2d kwargs, strategy, the gather the record names)
    ("3x3_unfold", dict(kernel_size=3, padding=1), "unfold", "unfold"),
    ("3x3_auto", dict(kernel_size=3, padding=1), "auto", "strided"),
    ("1x1_auto", dict(kernel_size=1), "auto", "pointwise"),
    ("1x1_strided_auto", dict(kernel_size=1, stride=2), "auto", "pointwise"),
    ("1x1_unfold", dict(kernel_size=1), "unfold", "unfold"),
    ("patch_auto", dict(kernel_size=2, stride=2), "auto", "patchify"),
    ("patch_pointwise", dict(kernel_size=2, stride=2), "pointwise", "strided"),
    ("3x3_patchify", dict(kernel_size=3, padding=1), "patchify", "strided"),
]


@pytest.mark.parametrize(
    ("kwargs", "strategy", "gather"),
    [c[1:] for c in GATHER_CASES],
    ids=[c[0] for c in GATHER_CASES],
)
def test_gather_follows_the_strategy(kwargs, strategy, gather):
    model = nn.Sequential(nn.Conv2d(6, 4, **kwargs)).double()
    lowered = lowerconv.lower(model, strategy=strategy, gemm="linear")
    (conv,) = lowering_record(lowered).lowered
    assert (conv.strategy, conv.gemm, conv.gemm_modules) == (gather, "linear", ["0"])
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(lowered(x), F.conv2d(x, *model[0].parameters(), **_f_args(kwargs)))
    uses_unfold = "torch.nn.functional.unfold" in lowered.code
    assert uses_unfold == (gather == "unfold")


def _f_args(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in ("stride", "padding")}


def test_code_shows_the_linear_called_between_gather_and_reshape():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    lowered = lowerconv.lower(model, strategy="unfold", gemm="linear")
    assert lowered.code.strip() == (
        """\
def forward(self, input):
    input_1 = input
    _0_unfold = torch.nn.functional.unfold(input_1, (3, 3), dilation = (1, 1), padding = (1, 1), stride = (1, 1))
    _0_conv_output_width = conv_output_width(input_1, 3, 1, 2, 1);  input_1 = None
    _0_transpose = _0_unfold.transpose(-1, -2);  _0_unfold = None
    _0_unflatten = _0_transpose.unflatten(-2, (-1, _0_conv_output_width));  _0_transpose = _0_conv_output_width = None
    _0_linear = getattr(self, "0")(_0_unflatten);  _0_unflatten = None
    _0_movedim = _0_linear.movedim(-1, -3);  _0_linear = None
    _0_reshape = _0_movedim.contiguous();  _0_movedim = None
    return _0_reshape"""
    )
    assert type(lowered.get_submodule("0")) is nn.Linear


# -- modules, state_dict, record -------------------------------------------------------------------


class Block(nn.Module):
    """A dense, a grouped, a depthwise and a 1x1 conv, and a functional one."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(4, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=False)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pointwise = nn.Conv2d(12, 6, 1)
        self.kernel = nn.Parameter(torch.randn(6, 6, 1, 1))
        self.conv1d = nn.Conv1d(6, 6, 3, padding=1)

    def forward(self, x):
        x = self.pointwise(self.depthwise(self.grouped(self.dense(x))))
        x = F.conv2d(x, self.kernel)
        return self.conv1d(x.flatten(2)).unflatten(-1, x.shape[-2:])


def test_modules_sit_at_the_convs_names_one_linear_per_group():
    model = Block().double()
    lowered = lowerconv.lower(model, gemm="linear")
    assert type(lowered.dense) is nn.Linear
    assert (lowered.dense.in_features, lowered.dense.out_features) == (4 * 9, 8)
    assert isinstance(lowered.grouped, nn.ModuleList) and len(lowered.grouped) == 4
    assert all((m.in_features, m.out_features) == (2 * 9, 3) for m in lowered.grouped)
    assert linear_module_names(lowered) == [
        "dense",
        *[f"grouped.{g}" for g in range(4)],
        "pointwise",
    ]
    record = lowering_record(lowered)
    form = {c.name: (c.gemm, c.note) for c in record.lowered}
    assert form["dense"] == ("linear", "")
    assert form["depthwise"][0] == "matmul" and "depthwise" in form["depthwise"][1]
    assert form["conv2d"][0] == "matmul" and "functional" in form["conv2d"][1]  # F.conv2d
    assert form["conv1d"][0] == "matmul" and "conv1d" in form["conv1d"][1]
    assert record.summary().endswith("; 3 with an nn.Linear GEMM, 3 a matmul")
    assert record.to_dict()["gemm"] == "linear"
    assert record.to_dict()["lowered"][0]["gemm_modules"] == ["dense"]
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(lowered(x), model(x), rtol=RTOL, atol=ATOL)


def test_state_dict_round_trips_both_ways_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = Block().double()
    before = copy.deepcopy(model.state_dict())
    lowered = lowerconv.lower(model, gemm="linear")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.grouped, nn.Conv2d)

    # Lowered -> original: the conv-shaped state_dict, keys in the original's order.
    back = conv_state_dict(lowered)
    assert list(back) == list(before)
    fresh = Block().double()
    fresh.load_state_dict(back)
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)

    # Original -> lowered: a conv-shaped state_dict loads, grouped weights split per group.
    other = Block().double()
    result = lowered.load_state_dict(other.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(lowered(x), other(x), rtol=RTOL, atol=ATOL)
    assert torch.equal(lowered.grouped[1].weight, other.grouped.weight[3:6].flatten(1))
    # Its own state_dict loads too, and survives a deep copy (the hooks go with it).
    twin = copy.deepcopy(lowered)
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(x), model(x), rtol=RTOL, atol=ATOL)
    twin.load_state_dict(lowered.state_dict())
    torch.testing.assert_close(twin(x), lowered(x), rtol=0, atol=0)
    # And through torch.save / torch.load.
    buffer = io.BytesIO()
    torch.save(lowered, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.load_state_dict(other.state_dict())
    torch.testing.assert_close(loaded(x), other(x), rtol=RTOL, atol=ATOL)


def test_matmul_is_the_default_and_unchanged():
    model = Block().double()
    lowered = lowerconv.lower(model)
    assert lowering_record(lowered).gemm == "matmul"
    assert all(c.gemm == "matmul" and not c.gemm_modules for c in lowering_record(lowered).lowered)
    assert isinstance(lowered.get_submodule("dense").weight, nn.Parameter)
    assert lowered.get_submodule("dense").weight.shape == (8, 4, 3, 3)
    assert conv_state_dict(lowered).keys() == lowered.state_dict().keys()


ERRORS = [
    # (id, lower() keyword arguments, words the message must hold)
    ("taps", dict(strategy="taps"), ["strategy='taps'", "gemm='linear'", "Fix", "'unfold'"]),
    ("cuda", dict(strategy="cuda"), ["strategy='cuda'", "Fix"]),
    ("workspace", dict(max_workspace_bytes=2**20), ["max_workspace_bytes=1048576", "Fix"]),
]


@pytest.mark.parametrize(("kwargs", "words"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_what_the_linear_form_cannot_serve_is_refused_with_the_fix(kwargs, words):
    with pytest.raises(LoweringError) as err:
        lowerconv.lower(Block(), gemm="linear", **kwargs)
    for word in words:
        assert word in str(err.value)


def test_unknown_gemm_and_exported_programs_are_refused():
    with pytest.raises(LoweringError, match=r"gemm='dense'.*valid: 'matmul', 'linear'"):
        lowerconv.lower(Block(), gemm="dense")
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    program = torch.export.export(conv, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(LoweringError, match=r"gemm='linear'.*Fix: lower the nn.Module"):
        lowerconv.lower(program, gemm="linear")


def test_the_lowered_linear_form_exports():
    model = Block().eval()
    lowered = lowerconv.lower(model, gemm="linear")
    x = torch.randn(1, 4, 6, 5)
    program = torch.export.export(lowered, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.linear.default" in ops
    assert not [op for op in ops if "conv" in op.split(".")[1]]
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


# -- the tools the form is for ---------------------------------------------------------------------

MODELS = ["resnet18", "mobilenet_v2", "regnet_y_400mf"]


def _lowered(name: str) -> tuple[nn.Module, nn.Module, list[str]]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    lowered = lowerconv.lower(model, strategy="auto", gemm="linear")
    dense = [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not _is_depthwise(m)
    ]
    record = lowering_record(lowered)
    assert sorted(c.name for c in record.lowered if c.gemm == "linear") == sorted(dense)
    return model, lowered, dense


def _expected_linears(model: nn.Module) -> int:
    return sum(
        m.groups if m.groups > 1 else 1
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and not _is_depthwise(m)
    )


def _run_audited(module: nn.Module, lowered: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with ConvOpAudit(module, lowering_record(lowered).skipped) as audit:
        out = module(x)
    assert [r for r in audit.runs() if r.status == "fail"] == []
    assert audit.runs() == []  # not even a conv left alone: every conv ran as a GEMM
    return out


@pytest.mark.parametrize("name", MODELS)
def test_torchao_int8_weight_only_quantizes_every_dense_conv(name):
    quantization = pytest.importorskip(
        "torchao.quantization", reason="needs torchao (the quant extra)"
    )
    model, lowered, dense = _lowered(name)
    names = set(linear_module_names(lowered))
    assert len(names) == _expected_linears(model) >= len(dense)
    quantized = copy.deepcopy(lowered)
    quantization.quantize_(quantized, quantization.Int8WeightOnlyConfig())
    hit = {
        n
        for n, m in quantized.named_modules()
        # torchao swaps the weight for its own tensor subclass (Int8Tensor in 0.18)
        if isinstance(m, nn.Linear) and type(m.weight) not in (nn.Parameter, torch.Tensor)
    }
    assert names <= hit, f"not quantized: {sorted(names - hit)[:5]}"
    x = torch.randn(1, 3, 64, 64)
    out = _run_audited(quantized, lowered, x)
    reference = model(x)
    # int8 weights move the logits, but not far: the quantized model still computes the model.
    assert torch.isfinite(out).all()
    assert (out - reference).norm() < 0.2 * reference.norm()
    assert all(type(p) is nn.Parameter for p in lowered.parameters())  # the copy only


@pytest.mark.parametrize("name", MODELS)
def test_peft_lora_wraps_every_dense_conv_and_only_adapters_train(name):
    peft = pytest.importorskip("peft", reason="needs peft (the peft extra)")
    model, lowered, _ = _lowered(name)
    names = linear_module_names(lowered)
    tuned = peft.get_peft_model(copy.deepcopy(lowered), peft.LoraConfig(r=2, target_modules=names))
    wrapped = [
        n for n, m in tuned.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
    ]
    assert len(wrapped) == len(names) == _expected_linears(model)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x = torch.randn(1, 3, 64, 64)
    # LoRA's B starts at zero: the wrapped model computes the model itself.
    torch.testing.assert_close(_run_audited(tuned, lowered, x), model(x), rtol=1e-4, atol=1e-4)


def test_pruned_linears_are_the_pruned_convs():
    torch.manual_seed(0)
    model = Block().double()
    lowered = lowerconv.lower(model, gemm="linear")
    for name in linear_module_names(lowered):
        module = lowered.get_submodule(name)
        prune.l1_unstructured(module, "weight", amount=0.5)
        prune.remove(module, "weight")
    assert (lowered.dense.weight == 0).float().mean() == 0.5
    pruned = Block().double()
    pruned.load_state_dict(conv_state_dict(lowered))
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(lowered(x), pruned(x), rtol=RTOL, atol=ATOL)
    assert not torch.allclose(lowered(x), model(x))


# -- the verifier ----------------------------------------------------------------------------------


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=4),
        nn.Conv2d(8, 8, 3, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    ).eval()


def test_verify_passes_the_linear_form_forward_and_backward():
    report = lowerconv.verify(
        _small_cnn(), torch.randn(2, 3, 10, 10), gemm="linear", gradients=True, timing=False
    )
    assert report.ok, str(report)
    (run,) = report.to_dict()["runs"]
    # The grouped conv's per-group Linears are judged as the conv's dW, in its shape.
    grads = {(layer["name"], g["grad"]): g for layer in run["layers"] for g in layer["gradients"]}
    assert grads[("2", "dW")]["status"] == "pass" and grads[("2", "dW")]["shape"] == [8, 2, 3, 3]
    judged = {g["path"]: g for g in run["gradients"]}
    assert judged["2.weight.grad"]["ok"] and judged["2.weight.grad"]["shape"] == [8, 2, 3, 3]


class _OffByOnePercent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.01


class _SkewedLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, _OffByOnePercent.apply(self.weight), self.bias)


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_verify_catches_one_group_of_a_linear_off_by_one_percent(where):
    model = _small_cnn()
    lowered = lowerconv.lower(model, gemm="linear")
    linear = lowered.get_submodule("2.1")
    if where == "forward":
        with torch.no_grad():
            linear.weight.mul_(1.01)
    else:
        # Forward exact, its weight's gradient 1% off.
        skewed = _SkewedLinear(linear.in_features, linear.out_features)
        skewed.load_state_dict(linear.state_dict())
        lowered.get_submodule("2")[1] = skewed
    report = lowerconv.verify(
        model, torch.randn(2, 3, 10, 10), lowered=lowered, gradients=True, timing=False
    )
    assert not report.ok
    assert report.first_failure.startswith("2"), report.first_failure


class Shared(nn.Module):
    """One grouped conv reachable by two names, called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.alias = self.conv

    def forward(self, x):
        return self.alias(self.conv(x))


def test_a_conv_reachable_by_two_names_is_one_set_of_linears():
    model = Shared().double()
    lowered = lowerconv.lower(model, gemm="linear")
    assert lowered.conv is lowered.alias and isinstance(lowered.conv, nn.ModuleList)
    assert [c.gemm_modules for c in lowering_record(lowered).lowered] == [["conv.0", "conv.1"]] * 2
    assert list(conv_state_dict(lowered)) == list(model.state_dict())
    fresh = Shared().double()
    fresh.load_state_dict(conv_state_dict(lowered))
    lowered.load_state_dict(Shared().double().state_dict())  # conv-shaped, at both names
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x if x.sum() > 0 else -x)  # control flow on a value: fx cannot trace it


def test_off_the_graph_path_every_conv_keeps_the_matmul_form_and_says_so():
    model = Untraceable()
    lowered = lowerconv.lower(model, gemm="linear")
    record = lowering_record(lowered)
    assert record.path == "fallback"
    assert [(c.gemm, c.note) for c in record.lowered] == [
        ("matmul", "the fallback path keeps the matmul form")
    ]
    assert any("gemm='linear' is served on the graph path only" in n for n in record.notes)
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-6)


# -- the command line ------------------------------------------------------------------------------

MY_NET = f"{Path(__file__).resolve().parent.parent / 'examples' / 'my_models.py'}:make_net"
SMALL = ["--image-size", "28"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_verify_gemm_linear_passes_forward_and_backward(capsys):
    argv = ["verify", MY_NET, *SMALL, "--no-timing", "--gemm", "linear", "--gradients"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "2 with an nn.Linear GEMM, 1 a matmul" in err  # the depthwise conv stays matmul
    assert "PASS" in out


def test_cli_graph_marks_the_linear_convs(capsys):
    code, out, err = _run(
        ["graph", MY_NET, *SMALL, "--gemm", "linear", "--strategy", "auto"], capsys
    )
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert rows["0"].endswith("strided + nn.Linear")
    assert rows["2"].endswith("depthwise")  # groups == in_channels: the matmul form
    assert rows["3"].endswith("pointwise + nn.Linear")


def test_cli_export_gemm_linear_writes_linear_ops(tmp_path, capsys):
    path = tmp_path / "net.pt2"
    code, out, err = _run(["export", MY_NET, *SMALL, "--gemm", "linear", "-o", str(path)], capsys)
    assert code == 0, err
    assert path.exists() and "aten.linear.default x 3" in out + err  # 2 convs and the head


def test_cli_refuses_a_strategy_without_a_gemm_to_expose(capsys):
    code, _, err = _run(
        ["verify", MY_NET, *SMALL, "--gemm", "linear", "--strategy", "taps"], capsys
    )
    assert code == 2
    assert "strategy='taps' cannot take gemm='linear'" in err and "Fix:" in err


def test_verify_against_pt2_exports_the_linear_form(monkeypatch):
    verify_module = importlib.import_module("lowerconv.verification.verify")
    programs = []

    def export_linear_form(*args, **kwargs):
        programs.append(real(*args, **kwargs))
        return programs[-1]

    real = verify_module.export_linear_form
    monkeypatch.setattr(verify_module, "export_linear_form", export_linear_form)
    report = lowerconv.verify(
        _small_cnn(), torch.randn(2, 3, 10, 10), gemm="linear", against=("pt2",), timing=False
    )
    assert report.ok, str(report)
    assert any(o.path.startswith("pt2") for o in report.outputs)
    (program,) = programs
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert ops.count("aten.linear.default") == 1 + 4 + 1  # dense, 4 groups, the head


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["unfold", "auto"])
def test_the_linear_form_moves_to_cuda_with_its_linears(strategy):
    model = Block().double()
    lowered = lowerconv.lower(model, strategy=strategy, gemm="linear").cuda()
    assert lowered.grouped[0].weight.is_cuda
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(lowered(x.cuda()).cpu(), model(x), rtol=RTOL, atol=1e-9)
