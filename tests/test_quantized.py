"""Integer convs to integer GEMMs: torch.ao quantised models lowered, and proven in steps.

The reference is always the quantised module the engine runs (``quantized::conv2d``...); the
lowered model must run no quantised conv op and match it exactly or within one step.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowerconv
from lowerconv.lowering.quantized import IntegerConvSpec, UnpackedQuantizedConv, x86_uses_onednn
from lowerconv.models.quantized import build_int8_model
from lowerconv.verification.audit import ConvOpAudit
from lowerconv.verification.integer import IntegerVerificationReport, step_diff
from op_names import OpNames

nnq = pytest.importorskip("torch.ao.nn.quantized")
nniq = pytest.importorskip("torch.ao.nn.intrinsic.quantized")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

# (torchvision quantisable model, image side): fast ones run by default, the rest are slow.
FAST_MODELS = [("resnet18", 64), ("mobilenet_v2", 64), ("shufflenet_v2_x0_5", 64)]
SLOW_MODELS = [
    ("resnet50", 64),
    ("resnext101_32x8d", 64),
    ("resnext101_64x4d", 64),
    ("mobilenet_v3_large", 64),
    ("shufflenet_v2_x1_0", 64),
    ("shufflenet_v2_x1_5", 64),
    ("shufflenet_v2_x2_0", 64),
    ("googlenet", 64),
    ("inception_v3", 160),
]
MODEL_CASES = [pytest.param(*case, id=case[0]) for case in FAST_MODELS] + [
    pytest.param(*case, id=case[0], marks=pytest.mark.slow) for case in SLOW_MODELS
]


@pytest.mark.parametrize(("name", "size"), MODEL_CASES)
def test_torchvision_quantised_model_lowers_to_integer_gemms(name, size):
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    model = build_int8_model(name, image_size=size, calibration_inputs=(x,))
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in _state(model)}
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.num_lowered == sum(
        isinstance(m, nnq.Conv1d | nnq.Conv2d | nnq.Conv3d) for m in model.modules()
    )
    assert {c.strategy for c in record.lowered} == {"integer"}
    with OpNames() as ops, torch.no_grad():
        lowered(x)
    assert ops.convs == []
    report = lowerconv.verify(model, x)
    assert isinstance(report, IntegerVerificationReport)
    assert report.verdict == "PASS", str(report)
    assert all(c.max_steps <= 1 for c in report.layers)
    # Non-degenerate: outputs and most layers carry more than the zero point.
    assert not any(c.degenerate for c in report.outputs)
    after = dict(_state(model))
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key
        else:
            assert value == after[key], key


def _state(model: nn.Module):
    """Everything of a quantised model a lowering could change, packed weights unpacked."""
    for name, module in model.named_modules():
        if isinstance(module, nnq.Conv1d | nnq.Conv2d | nnq.Conv3d):
            weight = module.weight()
            yield f"{name}.weight", weight.int_repr()
            yield f"{name}.scale", module.scale
            yield f"{name}.zero_point", module.zero_point
            if module.bias() is not None:
                yield f"{name}.bias", module.bias().detach()
        yield f"{name}.training", module.training


# -- single convs, over the configuration space ------------------------------------------------


@st.composite
def quantised_convs(draw):
    """A quantised Conv2d or ConvReLU2d, random configuration, weights, scales and zero points,
    and a quantised input for it."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.sampled_from([1, 2, 3, (1, 2)]))
    padding = draw(st.sampled_from([0, 1, 2, (0, 2)]))
    dilation = draw(st.sampled_from([1, 2, (2, 1)]))
    cls = draw(st.sampled_from([nnq.Conv2d, nniq.ConvReLU2d]))
    bias = draw(st.booleans())
    conv = cls(cin, cout, kernel, stride, padding, dilation, groups, bias)
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin // groups, *kernel, generator=gen)
    per_channel = draw(st.booleans()) and torch.backends.quantized.engine != "qnnpack"
    if per_channel:
        scales = weight.abs().flatten(1).amax(1).clamp_min(1e-3) / 127
        zeros = torch.zeros(cout, dtype=torch.long)
        qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
    else:
        qweight = torch.quantize_per_tensor(
            weight, float(weight.abs().max().clamp_min(1e-3)) / 127, 0, torch.qint8
        )
    conv.set_weight_bias(qweight, torch.randn(cout, generator=gen) if bias else None)
    conv.scale = draw(st.floats(0.01, 0.5))
    conv.zero_point = draw(st.integers(0, 255))
    h = conv.dilation[0] * (kernel[0] - 1) + 1 + draw(st.integers(0, 5))
    w = conv.dilation[1] * (kernel[1] - 1) + 1 + draw(st.integers(0, 5))
    x_scale = draw(st.floats(0.005, 0.1))
    # Codes up to 127 (reduce_range, as the engines' observers keep them): x86 kernels without
    # VNNI may saturate int16 pair sums above it, where the exact integer GEMM and the engine part.
    x_zero = draw(st.integers(0, 127))
    real = torch.rand(draw(st.integers(1, 2)), cin, h, w, generator=gen) * 127 - x_zero
    x = torch.quantize_per_tensor(real * x_scale, x_scale, x_zero, torch.quint8)
    return conv, x


@settings(max_examples=60, deadline=None)
@given(quantised_convs())
def test_one_quantised_conv_matches_the_engine_in_steps(case):
    conv, x = case
    lowered = lowerconv.lower(nn.Sequential(conv))
    with OpNames() as ops:
        got = lowered(x)
    assert ops.convs == []
    exact = _exact_reference(conv, x)
    # The real arithmetic (float64 on the dequantised values) is within one step of ours always.
    assert (got.int_repr().long() - exact).abs().max() <= 1
    if _on_onednn(conv) and _window_in_padding(conv, x):
        # oneDNN's kernel crashes the process on some of these (a 2x1 kernel, stride (1, 2),
        # padding 1, dilation 2 over a width-1 input: a segmentation fault in torch 2.14) and
        # gets others wrong (docs/integer.md): the real arithmetic above is the reference.
        return
    native = conv(x)
    engine_error = (native.int_repr().long() - exact).abs().max()
    if engine_error <= 1:
        check = step_diff("conv", native, got)
        assert check.status == "pass", (check, conv)
    else:
        # x86 (onednn's path) gets some strided grouped convs wrong, docs/integer.md: then the
        # engine, not the lowering, is off the real arithmetic.
        assert _on_onednn(conv), (conv, engine_error)


def _on_onednn(conv: nn.Module) -> bool:
    engine = torch.backends.quantized.engine
    return engine == "onednn" or (engine == "x86" and x86_uses_onednn(conv))


def _window_in_padding(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether some output reads nothing but padding, along a strided dimension (the family
    oneDNN's crashes and wrong codes were found in; 8,000 drawn cases outside it ran cleanly)."""
    for size, k, s, d, p in zip(
        x.shape[2:], conv.kernel_size, conv.stride, conv.dilation, conv.padding, strict=True
    ):
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        for o in range(out):
            if s > 1 and all(not 0 <= o * s - p + j * d < size for j in range(k)):
                return True
    return False


def _exact_reference(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The quantised conv's output codes by the real arithmetic, in float64."""
    weight, bias = conv.weight(), conv.bias()
    real = torch.nn.functional.conv2d(
        x.dequantize().double(),
        weight.dequantize().double(),
        None if bias is None else bias.double(),
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )
    codes = torch.round(real / conv.scale) + conv.zero_point
    low = conv.zero_point if isinstance(conv, nniq.ConvReLU2d) else 0
    return codes.clamp(low, 255).long()


def test_padding_is_the_input_zero_point_so_a_real_zero():
    # All-zero real input: every code is the zero point, and so is every padded value, so the
    # output is the bias alone, everywhere, borders included.
    conv = nnq.Conv2d(2, 3, 3, padding=2)
    weight = torch.quantize_per_tensor(torch.randn(3, 2, 3, 3), 0.02, 0, torch.qint8)
    conv.set_weight_bias(weight, torch.tensor([0.5, -0.25, 1.0]))
    conv.scale, conv.zero_point = 0.01, 100
    x = torch.quantize_per_tensor(torch.zeros(1, 2, 5, 5), 0.1, 77, torch.quint8)
    got = lowerconv.lower(nn.Sequential(conv))(x)
    assert torch.equal(got.int_repr(), conv(x).int_repr())
    assert torch.equal(got.dequantize()[0, :, 0, 0], torch.tensor([0.5, -0.25, 1.0]))


# -- the audit, the record, what the graph reads ----------------------------------------------


def test_the_audit_fails_a_quantised_conv_op_left_running():
    model = build_int8_model("resnet18", image_size=32)
    x = torch.randn(1, 3, 32, 32)
    audit = ConvOpAudit(model)
    with audit, torch.no_grad():
        model(x)
    failing = {run.op for run in audit.runs() if run.status == "fail"}
    assert "quantized.conv2d_relu.new" in failing
    assert "quantized.conv2d.new" in failing


def test_record_lists_each_integer_conv_and_its_form():
    model = build_int8_model("resnet18", image_size=32)
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    first = record.lowered[0]
    assert (first.name, first.target, first.kind) == ("conv1", "ConvReLU2d", "conv2d")
    assert "int8 im2col padded with the input's zero point" in first.note
    assert "_int_mm" in first.note
    holder = lowered.get_submodule("conv1")
    assert isinstance(holder, UnpackedQuantizedConv)
    assert holder.weight.dtype == torch.int8
    assert torch.equal(holder.weight, model.conv1.weight().int_repr())
    code = lowered.code
    for step in ("int8_codes(", "integer_im2col(", "int8_gemm(", "to_quantized("):
        assert step in code


def test_quantised_transposed_conv_is_left_alone_with_a_reason():
    deconv = nnq.ConvTranspose2d(2, 3, 3)
    model = nn.Sequential(deconv)
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.lowered == []
    (skip,) = record.skipped
    assert skip.kind == "conv_transpose2d" and "integer col2im" in skip.reason


def test_accumulator_limit_is_checked_by_name():
    spec = IntegerConvSpec(
        "conv2d", 20000, 8, (3, 3), (1, 1), (1, 1), (0,) * 4, 1, False, False, "x"
    )
    with pytest.raises(ValueError, match=r"big\.conv.*K=180000"):
        spec.check_accumulator("big.conv")


# -- sabotage: the verifier names the layer ---------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return build_int8_model("resnet18", image_size=32, calibration_inputs=(x,)), x


@pytest.mark.parametrize(
    ("buffer", "change", "message"),
    [
        ("zero_point", lambda t: t + 1, "zero point"),
        ("scale", lambda t: t * 1.25, "scale"),
        ("weight_sum", lambda t: t + 3, "exact"),
    ],
    ids=["zero_point+1", "scale*1.25", "weight_sum+3"],
)
def test_a_wrong_requantisation_fails_naming_the_layer(resnet, buffer, change, message):
    model, x = resnet
    lowered = lowerconv.lower(model)
    holder = lowered.get_submodule("layer2.0.conv1")
    setattr(holder, buffer, change(getattr(holder, buffer)))
    report = lowerconv.verify(model, x, lowered=lowered)
    assert report.verdict == "FAIL"
    assert report.first_failure.startswith("layer 'layer2.0.conv1'"), report.first_failure
    assert message in report.first_failure


def test_degenerate_outputs_are_inconclusive():
    conv = nniq.ConvReLU2d(2, 2, 1)
    weight = torch.quantize_per_tensor(-torch.ones(2, 2, 1, 1), 0.01, 0, torch.qint8)
    conv.set_weight_bias(weight, None)
    conv.scale, conv.zero_point = 0.05, 3
    model = nn.Sequential(conv)
    x = torch.quantize_per_tensor(torch.rand(1, 2, 4, 4), 0.01, 0, torch.quint8)
    report = lowerconv.verify(model, x)  # ReLU of a negative conv: all zero point
    assert report.verdict == "INCONCLUSIVE"
    assert "zero point" in report.inconclusive[0]


def test_nothing_passed_is_changed_and_copies_still_run(resnet):
    model, x = resnet
    engine = torch.backends.quantized.engine
    reference = model(x)
    lowered = lowerconv.lower(model)
    again = copy.deepcopy(lowered)
    assert torch.equal(again(x).int_repr() if again(x).is_quantized else again(x), lowered(x))
    assert torch.equal(model(x), reference)
    assert torch.backends.quantized.engine == engine


def test_cli_verifies_an_int8_model():
    result = subprocess.run(
        [sys.executable, "-m", "lowerconv", "verify", "int8_resnet18", "--image-size", "32",
         "--no-timing"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PASS: QuantizableResNet, 20 integer conv(s)" in result.stdout


# (module class, input spatial shape): the 1-D and 3-D kinds, each with a fused ReLU too.
KIND_CASES = [
    (nnq.Conv1d, (11,)),
    (nniq.ConvReLU1d, (11,)),
    (nnq.Conv3d, (5, 6, 7)),
    (nniq.ConvReLU3d, (5, 6, 7)),
]


@pytest.mark.parametrize(
    ("cls", "spatial"), KIND_CASES, ids=[c[0].__name__ + str(len(c[1])) + "d" for c in KIND_CASES]
)
def test_1d_and_3d_quantised_convs_lower_too(cls, spatial):
    torch.manual_seed(0)
    ndim = len(spatial)
    conv = cls(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    weight = torch.randn(6, 2, *(3,) * ndim)
    conv.set_weight_bias(
        torch.quantize_per_tensor(weight, float(weight.abs().max()) / 127, 0, torch.qint8),
        torch.randn(6),
    )
    conv.scale, conv.zero_point = 0.05, 60
    x = torch.quantize_per_tensor(torch.rand(2, 4, *spatial) * 3, 0.03, 10, torch.quint8)
    lowered = lowerconv.lower(nn.Sequential(conv))
    (record,) = lowerconv.lowering_record(lowered).lowered
    assert record.kind == f"conv{ndim}d"
    with OpNames() as ops:
        got = lowered(x)
    assert ops.convs == []
    check = step_diff("conv", conv(x), got)
    assert check.status == "pass", check
    assert not check.degenerate


# -- PT2E: convs between dequantize and quantize nodes ------------------------------------------


def _pt2e(model: nn.Module, x: torch.Tensor, quantizer=None):
    pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    if quantizer is None:
        x86 = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = pt2e.prepare_pt2e(torch.export.export(model.eval(), (x,)).module(), quantizer)
    with torch.no_grad():
        prepared(x)
    return pt2e.convert_pt2e(prepared)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=4, dilation=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )


def test_pt2e_convs_become_integer_gemms_and_verify_in_steps():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    converted = _pt2e(_small_cnn(), x)
    lowered = lowerconv.lower(converted)
    record = lowerconv.lowering_record(lowered)
    assert [c.strategy for c in record.lowered] == ["integer (pt2e)"] * 3
    assert "dequantized_integer_conv(" in lowered.code
    with OpNames() as ops, torch.no_grad():
        got = lowered(x)
    assert ops.convs == []
    assert torch.allclose(got, converted(x), atol=1e-5)
    report = lowerconv.verify(converted, x)
    assert report.verdict == "PASS", str(report)
    assert len(report.layers) == 3 and all(c.max_steps <= 1 for c in report.layers)


def test_a_wrong_pt2e_weight_sum_fails_naming_the_conv():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    converted = _pt2e(_small_cnn(), x)
    lowered = lowerconv.lower(converted)
    lowered.get_buffer("2_weight_sum").add_(5)
    report = lowerconv.verify(converted, x, lowered=lowered)
    assert report.verdict == "FAIL"
    assert report.first_failure.startswith("layer '2'"), report.first_failure


@pytest.mark.slow
def test_pt2e_resnet18_through_an_exported_program():
    import torchvision

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # X86InductorQuantizer refuses resnet18's residual adds in torchao 0.18 ("Input partition
    # has more than one output node"); the XNNPACK quantizer, per-channel symmetric, takes it.
    xnnpack = pytest.importorskip("torchao.testing.pt2e._xnnpack_quantizer")
    quantizer = xnnpack.XNNPACKQuantizer().set_global(
        xnnpack.get_symmetric_quantization_config(is_per_channel=True)
    )
    torch.manual_seed(0)
    converted = _pt2e(torchvision.models.resnet18(), x, quantizer)
    report = lowerconv.verify(converted, x)
    assert report.verdict == "PASS", str(report)
    program = torch.export.export(converted, (x,))
    lowered = lowerconv.lower(program)
    record = lowerconv.lowering_record(lowered)
    assert len(record.lowered) == 20
    assert {c.strategy for c in record.lowered} == {"integer (pt2e)"}
    with OpNames() as ops, torch.no_grad():
        got = lowered.module()(x)
    assert ops.convs == []
    reference = converted(x)
    # Only float rounding before the graph's quantize nodes differs: at most a step of theirs.
    assert (got - reference).abs().max() <= 0.05 * reference.abs().max()


class _Untraceable(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        if x.q_scale() > 0:  # control flow on a value: torch.fx cannot trace it
            return self.conv(x)
        return x


def test_an_untraceable_quantised_model_says_its_convs_were_left_alone():
    conv = nnq.Conv2d(2, 2, 1)
    lowered = lowerconv.lower(_Untraceable(conv))
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    (skip,) = record.skipped
    assert skip.name == "conv" and "could not trace" in skip.reason


# (M, K, N, groups): a 3x3 conv's GEMM, a thin stem, grouped, depthwise.
GEMM_CASES = [(64, 576, 300, 1), (8, 27, 100, 1), (32, 72, 64, 4), (96, 9, 49, 96)]


def _gemm_operands(m, k, n, groups):
    gen = torch.Generator().manual_seed(m + k + n)
    weight = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    cols = torch.randint(-128, 128, (2, k * groups, n), dtype=torch.int8, generator=gen)
    exact = torch.einsum(
        "gck,ngkl->ngcl",
        weight.view(groups, -1, k).double(),
        cols.view(2, groups, k, n).double(),
    ).reshape(2, m, n)
    return weight, cols, exact


@pytest.mark.parametrize(("m", "k", "n", "groups"), GEMM_CASES, ids=str)
def test_int8_gemm_is_exact_by_int_mm_and_by_its_float64_fallback(m, k, n, groups, monkeypatch):
    from lowerconv.lowering import quantized

    weight, cols, exact = _gemm_operands(m, k, n, groups)
    by_int_mm = quantized.int8_gemm(weight, cols, groups)
    assert by_int_mm.dtype == torch.int32 and torch.equal(by_int_mm.double(), exact)
    monkeypatch.setattr(quantized, "_int_mm_applies", lambda a, b: False)
    by_float64 = quantized.int8_gemm(weight, cols, groups)
    assert by_float64.dtype == torch.int32 and torch.equal(by_float64, by_int_mm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("m", "k", "n", "groups"), GEMM_CASES, ids=str)
def test_int8_gemm_on_cuda_equals_the_cpu(m, k, n, groups):
    from lowerconv.lowering.quantized import int8_gemm

    weight, cols, exact = _gemm_operands(m, k, n, groups)
    on_cuda = int8_gemm(weight.cuda(), cols.cuda(), groups).cpu()
    assert on_cuda.dtype == torch.int32 and torch.equal(on_cuda.double(), exact)


# Quantised conv ops, as the audit sees them (no namespace, no overload), and their kinds.
QUANTIZED_OPS = [
    ("conv1d", "conv1d"),
    ("conv1d_relu", "conv1d"),
    ("conv2d", "conv2d"),
    ("conv2d_relu", "conv2d"),
    ("conv3d", "conv3d"),
    ("conv3d_relu", "conv3d"),
    ("conv_transpose1d", "conv_transpose1d"),
    ("conv_transpose2d", "conv_transpose2d"),
    ("conv_transpose3d", "conv_transpose3d"),
]


@pytest.mark.parametrize(("op", "kind"), QUANTIZED_OPS, ids=[op for op, _ in QUANTIZED_OPS])
def test_the_audit_knows_quantised_conv_ops_as_convolutions(op, kind):
    from lowerconv.verification.audit import conv_op_kind
    from op_names import CONV_OP

    packed = object()  # a packed weight is a ScriptObject, no tensor
    assert conv_op_kind(op, (torch.zeros(1), packed)) == kind
    assert CONV_OP.search(f"quantized.{op}.new")


@pytest.fixture(params=torch.backends.quantized.supported_engines)
def engine(request):
    """Each quantised engine this torch has, set for the test and restored after."""
    if request.param == "none":
        pytest.skip("no engine")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    yield request.param
    torch.backends.quantized.engine = previous


# (groups, stride, padding, dilation, ReLU): plain, strided, grouped, dilated, depthwise.
ENGINE_CASES = [(1, 1, 1, 1, False), (1, 2, 1, 1, True), (2, 1, 2, 2, False), (8, 2, 1, 1, True)]


@pytest.mark.parametrize("case", ENGINE_CASES, ids=str)
def test_each_engine_matches_its_own_recipe(engine, case):
    groups, stride, padding, dilation, relu = case
    gen = torch.Generator().manual_seed(7)
    cls = nniq.ConvReLU2d if relu else nnq.Conv2d
    conv = cls(8, 8, 3, stride, padding, dilation, groups)
    weight = torch.randn(8, 8 // groups, 3, 3, generator=gen)
    if engine == "qnnpack":  # per-tensor weights, as its default qconfig makes them
        qweight = torch.quantize_per_tensor(weight, float(weight.abs().max()) / 127, 0, torch.qint8)
    else:  # per-channel, as fbgemm's, x86's and onednn's do
        scales = weight.abs().flatten(1).amax(1) / 127
        qweight = torch.quantize_per_channel(
            weight, scales, torch.zeros(8, dtype=torch.long), 0, torch.qint8
        )
    conv.set_weight_bias(qweight, torch.randn(8, generator=gen))
    conv.scale, conv.zero_point = 0.08, 50
    real = torch.rand(2, 8, 12, 12, generator=gen) * 127 - 20
    x = torch.quantize_per_tensor(real * 0.02, 0.02, 20, torch.quint8)
    lowered = lowerconv.lower(nn.Sequential(conv))
    assert f"{engine} engine" in lowerconv.lowering_record(lowered).lowered[0].note
    check = step_diff("conv", conv(x), lowered(x))
    # The recipe is the engine's own: not one value a step off (the 1 in 10^6 an engine's
    # order of float operations still rounds differently is too rare to show here).
    assert check.exact == check.numel, check
    assert not check.degenerate


# One 1x1 conv each (weight code, weight scale, bias, input scale and zero point, output scale
# and zero point) whose output, for one of the 256 input codes, is a hair from a half step:
# found by searching random scales for a case where an engine parts from the recipe it was
# first given.  oneDNN adds the zero point in float32 before rounding and computes with sx
# round-tripped through float32 reciprocals; fbgemm rounds first; qnnpack quantises the bias
# and the multiplier in float32.
NEAR_TIES = {
    "onednn": (54, 0.01918541407585144, 1.7788219451904297, 0.006740881800651551, 101,
               0.1953673100471497, 145),
    "qnnpack": (37, 0.0011746702194213867, -0.2094161957502365, 0.05411960959434509, 200,
                0.05018609523773194, 227),
}  # fmt: skip


@pytest.mark.parametrize("case", NEAR_TIES.values(), ids=NEAR_TIES.keys())
def test_each_engine_rounds_a_near_tie_as_its_kernel_does(engine, case):
    code, sw, bias, sx, zx, sy, zy = case
    conv = nnq.Conv2d(1, 1, 1)
    weight = torch.quantize_per_tensor(torch.tensor([[[[code * sw]]]]), sw, 0, torch.qint8)
    conv.set_weight_bias(weight, torch.tensor([bias]))
    conv.scale, conv.zero_point = sy, zy
    codes = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = torch._make_per_tensor_quantized_tensor(codes, sx, zx)
    lowered = lowerconv.lower(nn.Sequential(conv))
    assert torch.equal(lowered(x).int_repr(), conv(x).int_repr())


def test_a_kernel_taller_than_the_input_is_gathered_as_a_copy():
    # A 2x1 kernel, padding 1, over a 2x1 input: the strided view of the patches has rows that
    # overlap, and torch._int_mm misreads such a view.  Found by the hypothesis test above.
    conv = nnq.Conv2d(1, 1, (2, 1), padding=1, bias=False)
    weight = torch.quantize_per_tensor(torch.tensor([[[[0.5], [1.0]]]]), 0.01, 0, torch.qint8)
    conv.set_weight_bias(weight, None)
    conv.scale, conv.zero_point = 0.5, 0
    x = torch.quantize_per_tensor(torch.tensor([[[[2.4375], [5.0625]]]]), 0.0625, 0, torch.quint8)
    got = lowerconv.lower(nn.Sequential(conv))(x)
    assert got.int_repr().flatten().tolist() == [0, 5, 0, 0, 13, 0, 0, 5, 0]
    assert torch.equal(got.int_repr(), conv(x).int_repr())


def test_float_only_options_are_named_as_not_applying(resnet):
    model, x = resnet
    report = lowerconv.verify(model, x, dtype=torch.float64, gradients=True)
    assert report.verdict == "PASS", str(report)
    assert any("dtype=torch.float64, gradients=True do not apply" in n for n in report.notes)
