"""The lowering pass, end to end: ``lowerconv.lower(model)`` against the original model.

The reference is always PyTorch itself: the original ``nn.Conv2d`` modules (or the model that
holds them), run in float64, for outputs and for every gradient.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
from conv_space import conv_configs, make_input
from lowerconv import STRATEGY_NAMES, ConvSpec, LoweringError, lowering_record
from lowerconv.lowering.emit import Provenance
from lowerconv.lowering.strategies import choose_strategy
from lowerconv.lowering.trace import trace

RTOL, ATOL = 1e-9, 1e-10
STRATEGIES = list(STRATEGY_NAMES)


# -- helpers ---------------------------------------------------------------------------------------


def run_with_grads(model: nn.Module, inputs: tuple[torch.Tensor, ...], cotangent=None):
    """Output, cotangent used, and the gradients wrt every input and named parameter."""
    out = model(*inputs)
    if cotangent is None:
        cotangent = torch.randn_like(out)
    names = [f"input{i}" for i in range(len(inputs))]
    params = list(model.named_parameters())
    names += [name for name, _ in params]
    wrt = [*inputs, *(p for _, p in params)]
    grads = torch.autograd.grad(out, wrt, cotangent, allow_unused=True)
    return out.detach(), cotangent, dict(zip(names, grads, strict=True))


def assert_same_function(
    lowered: nn.Module, model: nn.Module, *inputs: torch.Tensor, rtol=RTOL, atol=ATOL
) -> None:
    """Same output and same gradient for every input and parameter, by name."""
    want, cotangent, want_grads = run_with_grads(model, inputs)
    got, _, got_grads = run_with_grads(lowered, inputs, cotangent)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    assert list(got_grads) == list(want_grads)
    for name, want_grad in want_grads.items():
        got_grad = got_grads[name]
        if want_grad is None:  # unused by the original on this input, e.g. a branch not taken
            assert got_grad is None, f"{name} has a gradient only in the lowered model"
            continue
        assert got_grad is not None, f"no gradient reached {name} in the lowered model"
        torch.testing.assert_close(
            got_grad, want_grad, rtol=rtol, atol=atol, msg=lambda m, n=name: f"grad {n}: {m}"
        )


def assert_no_conv2d_modules(module: nn.Module) -> None:
    left = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    assert not left, f"nn.Conv2d modules left in the lowered model: {left}"


# -- the configuration table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    conv: dict
    shape: tuple[int, ...]
    layout: str = "contiguous"


def conv(cin: int, cout: int, kernel, **kwargs) -> dict:
    return dict(in_channels=cin, out_channels=cout, kernel_size=kernel, **kwargs)


CASES = [
    Case("plain_3x3", conv(3, 5, 3), (2, 3, 8, 9)),
    Case("stride_2", conv(3, 4, 3, stride=2), (2, 3, 9, 10)),
    Case("stride_tuple", conv(3, 4, 3, stride=(1, 3), padding=1), (2, 3, 9, 10)),
    Case("dilation_2", conv(3, 4, 3, dilation=2), (2, 3, 9, 9)),
    Case("dilation_tuple_strided", conv(3, 4, 3, dilation=(1, 3), stride=2), (2, 3, 9, 12)),
    Case("padding_int", conv(3, 4, 3, padding=2), (2, 3, 6, 7)),
    Case("padding_tuple", conv(3, 4, 3, padding=(0, 2)), (2, 3, 6, 7)),
    Case("same_odd", conv(3, 4, 5, padding="same"), (2, 3, 7, 8)),
    Case("same_even", conv(3, 4, 4, padding="same"), (2, 3, 7, 8)),
    Case("same_even_nonsquare", conv(3, 4, (2, 4), padding="same"), (2, 3, 7, 8)),
    Case("same_odd_dilated", conv(3, 4, 3, padding="same", dilation=(2, 3)), (2, 3, 8, 9)),
    Case("same_even_dilated", conv(3, 4, (4, 2), padding="same", dilation=(1, 3)), (2, 3, 8, 9)),
    Case("valid", conv(3, 4, (3, 2), padding="valid"), (2, 3, 6, 7)),
    Case("mode_zeros", conv(3, 4, 3, padding=(1, 2), padding_mode="zeros"), (2, 3, 6, 7)),
    Case("mode_reflect", conv(3, 4, 3, padding=(1, 2), padding_mode="reflect"), (2, 3, 6, 7)),
    Case("mode_replicate", conv(3, 4, 3, padding=(1, 2), padding_mode="replicate"), (2, 3, 6, 7)),
    Case("mode_circular", conv(3, 4, 3, padding=(1, 2), padding_mode="circular"), (2, 3, 6, 7)),
    Case(
        "reflect_strided", conv(3, 4, 3, padding=2, stride=2, padding_mode="reflect"), (2, 3, 7, 8)
    ),
    Case("reflect_same_even", conv(3, 4, 4, padding="same", padding_mode="reflect"), (2, 3, 7, 8)),
    Case(
        "circular_same_dilated",
        conv(3, 4, 3, padding="same", dilation=2, padding_mode="circular"),
        (2, 3, 7, 8),
    ),
    Case("groups_2", conv(4, 6, 3, groups=2, padding=1), (2, 4, 6, 7)),
    Case("groups_3_strided", conv(6, 3, (3, 2), groups=3, stride=(2, 1)), (2, 6, 9, 8)),
    Case("depthwise", conv(4, 4, 3, groups=4, padding=1), (2, 4, 6, 7)),
    Case("depthwise_multiplier", conv(3, 6, 3, groups=3, padding=1, stride=2), (2, 3, 8, 7)),
    Case(
        "depthwise_same_reflect",
        conv(4, 8, 4, groups=4, padding="same", padding_mode="reflect"),
        (2, 4, 7, 6),
    ),
    Case("no_bias", conv(3, 4, 3, bias=False, padding=1), (2, 3, 6, 7)),
    Case("no_bias_depthwise", conv(4, 4, 3, bias=False, groups=4), (2, 4, 6, 7)),
    Case("nonsquare_kernel", conv(3, 4, (1, 5), padding=(0, 2)), (2, 3, 6, 7)),
    Case("nonsquare_kernel_tall", conv(3, 4, (5, 2), stride=(2, 1)), (2, 3, 9, 7)),
    Case("pointwise", conv(5, 3, 1), (2, 5, 6, 7)),
    Case("pointwise_strided", conv(5, 3, 1, stride=2), (2, 5, 7, 6)),
    Case("patchify", conv(3, 8, 4, stride=4), (2, 3, 12, 8)),
    Case("kernel_covers_input", conv(2, 3, (4, 5)), (2, 2, 4, 5)),
    Case("batch_0", conv(3, 4, 3, padding=1), (0, 3, 6, 7)),
    Case("batch_0_grouped", conv(4, 6, 3, groups=2), (0, 4, 6, 7)),
    Case("batch_1", conv(3, 4, 3, padding=1), (1, 3, 6, 7)),
    Case("unbatched", conv(3, 4, 3, padding=1), (3, 6, 7)),
    Case(
        "unbatched_depthwise_circular",
        conv(3, 6, 3, groups=3, padding=1, padding_mode="circular"),
        (3, 6, 7),
    ),
    Case("unbatched_same_even", conv(3, 4, 2, padding="same"), (3, 5, 6)),
    Case("transposed_input", conv(3, 4, 3, padding=1), (2, 3, 6, 7), "transposed"),
    Case("sliced_input", conv(3, 4, 3, stride=2), (2, 3, 7, 8), "sliced"),
    Case("sliced_unbatched_grouped", conv(4, 2, 3, groups=2), (4, 6, 7), "sliced"),
    Case("channels_last", conv(3, 4, 3, padding=1), (2, 3, 6, 7), "channels_last"),
    Case(
        "channels_last_depthwise",
        conv(4, 8, 3, groups=4, padding="same"),
        (2, 4, 6, 7),
        "channels_last",
    ),
]


# How the conv reaches the pass: as a call_module of an nn.Conv2d inside a container, or as the
# model itself (then the tracer traces into Conv2d.forward and finds the F.conv2d call).
WRAPPERS = {
    "module": lambda c: nn.Sequential(c),
    "root": lambda c: c,
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_lowered_conv_matches_nn_conv2d(case: Case, wrapper: str, strategy: str):
    torch.manual_seed(0)
    model = WRAPPERS[wrapper](nn.Conv2d(**case.conv)).double()
    lowered = lowerconv.lower(model, strategy=strategy)
    assert_no_conv2d_modules(lowered)
    assert lowering_record(lowered).num_lowered == 1
    assert_same_function(lowered, model, make_input(case.shape, case.layout))


# -- the whole configuration space -------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_lowering_sweep(config, seed, strategy):
    kwargs, shape, layout = config
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(**kwargs)).double()
    lowered = lowerconv.lower(model, strategy=strategy)
    assert_no_conv2d_modules(lowered)
    assert_same_function(lowered, model, make_input(shape, layout))


# -- low precision -------------------------------------------------------------------------------

LOW_PRECISION = [torch.float32, torch.float16, torch.bfloat16]
LOW_PRECISION_CASES = [
    Case("dense_3x3", conv(16, 16, 3, padding=1), (2, 16, 13, 11)),
    Case("depthwise_5x5", conv(24, 24, 5, padding=2, groups=24), (2, 24, 13, 11)),
    Case(
        "reflect_dilated_strided",
        conv(32, 16, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
        (2, 32, 13, 11),
    ),
    Case("pointwise_wide", conv(96, 32, 1), (2, 96, 9, 7)),
    Case("same_even_grouped", conv(16, 8, 4, padding="same", groups=2), (1, 16, 9, 7)),
]


def cpu_conv_supports(dtype: torch.dtype) -> bool:
    try:
        F.conv2d(torch.ones(1, 2, 4, 4, dtype=dtype), torch.ones(2, 1, 3, 3, dtype=dtype), groups=2)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=[c.id for c in LOW_PRECISION_CASES])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=[str(d).split(".")[1] for d in LOW_PRECISION])
def test_low_precision_error_is_comparable_to_native_conv(dtype, case, strategy):
    if not cpu_conv_supports(dtype):
        pytest.skip(f"PyTorch's CPU conv does not support {dtype}")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(**case.conv)).to(dtype)
    x = torch.randn(case.shape).to(dtype)
    # The float64 reference sees the same rounded weights and inputs as the low precision runs.
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(x.double())
        native = model(x)
        lowered = lowerconv.lower(model, strategy=strategy)(x)
    assert lowered.dtype == dtype
    assert lowered.shape == reference.shape

    def max_error(t: torch.Tensor) -> float:
        return (t.double() - reference).abs().max().item()

    def rms_error(t: torch.Tensor) -> float:
        return (t.double() - reference).square().mean().sqrt().item()

    eps = torch.finfo(dtype).eps
    scale = reference.abs().max().item()
    # A separate bias add rounds once more than a fused conv (typically sqrt(2) times the RMS
    # error); the maximum is noisier, so it gets a wider multiple and a floor of one ulp.
    max_bound = 4 * max_error(native) + eps * scale
    rms_bound = 2.5 * rms_error(native) + 0.01 * eps * scale
    assert max_error(lowered) <= max_bound, (
        f"{dtype}: lowered max error {max_error(lowered):.3g} vs native conv "
        f"{max_error(native):.3g} (output scale {scale:.3g}, bound {max_bound:.3g})"
    )
    assert rms_error(lowered) <= rms_bound, (
        f"{dtype}: lowered RMS error {rms_error(lowered):.3g} vs native conv "
        f"{rms_error(native):.3g} (bound {rms_bound:.3g})"
    )


# -- shapes are not baked in ---------------------------------------------------------------------


def test_one_lowered_model_serves_any_batch_and_spatial_size():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 4, padding="same", padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=3, dilation=2, padding=(1, 2), padding_mode="circular"),
    ).double()
    for strategy in STRATEGIES:
        lowered = lowerconv.lower(model, strategy=strategy)
        for shape in [(1, 3, 9, 9), (3, 3, 16, 11), (2, 3, 10, 23), (0, 3, 8, 8), (3, 12, 7)]:
            assert_same_function(lowered, model, make_input(shape))


# -- no convolution runs at the ATen level -------------------------------------------------------

CONV_OP_FRAGMENTS = ("convolution", "conv2d", "conv_depthwise", "slow_conv")


class OpRecorder(TorchDispatchMode):
    """Records the name of every ATen op dispatched while active (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def conv_ops(self) -> list[str]:
        return sorted({op for op in self.ops if any(f in op for f in CONV_OP_FRAGMENTS)})


class WeightStandardizedConv2d(nn.Conv2d):
    """A Conv2d subclass with its own forward: the kernel is normalised on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        var = weight.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def same_pad_amount(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TensorFlow's 'SAME' total padding for one axis; it depends on the input's size."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


torch.fx.wrap("same_pad_amount")


class RuntimeSamePadConv2d(nn.Conv2d):
    """A Conv2d subclass padding by an amount computed from the input at run time (timm style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        ph = same_pad_amount(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same_pad_amount(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvZoo(nn.Module):
    """Every kind of 2-D convolution the pass handles, one feeding another directly."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, padding=1, padding_mode="reflect")
        self.grouped = nn.Conv2d(8, 8, 3, groups=2, dilation=2, padding=2, bias=False)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.ws = WeightStandardizedConv2d(8, 8, 3, padding="same")
        self.tf_same = RuntimeSamePadConv2d(8, 4, 3, stride=2)
        self.kernel = nn.Parameter(torch.randn(4, 4, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.pointwise(self.grouped(x)))
        x = torch.sigmoid(self.ws(x))
        x = torch.relu(self.tf_same(x))
        return F.conv2d(x, self.kernel, padding="same")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_convolution_op_runs_in_forward_or_backward(strategy):
    torch.manual_seed(0)
    model = ConvZoo().double()
    lowered = lowerconv.lower(model, strategy=strategy)
    assert_no_conv2d_modules(lowered)
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())
    for module, expect_conv in ((model, True), (lowered, False)):
        x = torch.randn(2, 3, 11, 10, dtype=torch.float64, requires_grad=True)
        with OpRecorder() as forward:
            out = module(x)
        with OpRecorder() as backward:
            out.square().sum().backward()
        if expect_conv:  # the control: the recorder does see PyTorch's own convolutions
            assert forward.conv_ops() and backward.conv_ops()
            assert any("backward" in op for op in backward.conv_ops())
        else:
            assert forward.conv_ops() == [], f"{strategy}: forward ran {forward.conv_ops()}"
            assert backward.conv_ops() == [], f"{strategy}: backward ran {backward.conv_ops()}"
            assert any("mm" in op for op in forward.ops), "the recorder saw no matmul at all"
    assert_same_function(lowered, model, make_input((2, 3, 11, 10)))
    assert_same_function(lowered, model, make_input((1, 3, 12, 9)))


# -- state_dict, parameters, buffers -----------------------------------------------------------


class TiedNet(nn.Module):
    """Tied weights, a conv called twice, one conv under two names, buffers of both kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.b.weight = self.a.weight
        self.shared = nn.Conv2d(4, 4, 1)
        self.alias = self.shared
        self.head = nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor(1.5))
        self.register_buffer("offset", torch.tensor(0.25), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        x = self.alias(torch.relu(self.shared(x))) * self.scale + self.offset
        return self.head(x.mean(dim=(-1, -2)))


def test_state_dict_keys_values_and_names_are_unchanged():
    torch.manual_seed(0)
    model = TiedNet().double().eval()
    lowered = lowerconv.lower(model)
    assert list(lowered.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(lowered.state_dict()[key], value), key
    assert [n for n, _ in lowered.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert [n for n, _ in lowered.named_parameters(remove_duplicate=False)] == [
        n for n, _ in model.named_parameters(remove_duplicate=False)
    ]
    assert [n for n, _ in lowered.named_buffers()] == [n for n, _ in model.named_buffers()]
    assert_same_function(lowered, model, make_input((2, 3, 7, 6)))


def test_tied_and_shared_parameters_stay_shared():
    torch.manual_seed(0)
    model = TiedNet().double().eval()
    lowered = lowerconv.lower(model)
    assert lowered.get_parameter("a.weight") is lowered.get_parameter("b.weight")
    assert lowered.get_parameter("shared.weight") is lowered.get_parameter("alias.weight")
    assert lowered.get_parameter("a.bias") is not lowered.get_parameter("b.bias")
    # Shared means one tensor: a gradient step through either name moves both uses.
    with torch.no_grad():
        model.a.weight.mul_(0.5)
        lowered.get_parameter("a.weight").mul_(0.5)
    assert_same_function(lowered, model, make_input((2, 3, 7, 6)))
    x = make_input((1, 3, 5, 5))
    lowered(x).sum().backward()
    model(x.detach()).sum().backward()
    torch.testing.assert_close(
        lowered.get_parameter("b.weight").grad, model.b.weight.grad, rtol=RTOL, atol=ATOL
    )


def test_load_state_dict_both_ways_strict():
    torch.manual_seed(0)
    model = TiedNet().double().eval()
    lowered = lowerconv.lower(model)
    torch.manual_seed(1)
    other = TiedNet().double().eval()
    with torch.no_grad():
        other.bn.running_mean.uniform_()
        other.scale.fill_(-2.0)

    result = lowered.load_state_dict(other.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert lowered.get_parameter("a.weight") is lowered.get_parameter("b.weight")
    assert_same_function(lowered, other, make_input((2, 3, 6, 6)))

    fresh = TiedNet().double().eval()
    result = fresh.load_state_dict(lowered.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_function(lowered, fresh, make_input((2, 3, 6, 6)))


# -- the input model is never changed ------------------------------------------------------------


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [(n, id(p), p.requires_grad) for n, p in model.named_parameters()],
        "buffers": [(n, id(b)) for n, b in model.named_buffers()],
        "modules": [(n, type(m), m.training) for n, m in model.named_modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["params"] == before["params"]
    assert after["buffers"] == before["buffers"]
    assert after["modules"] == before["modules"]
    assert list(after["state"]) == list(before["state"])
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lower_does_not_change_its_input(strategy, mode):
    torch.manual_seed(0)
    model = TiedNet().double().train(mode == "train")
    before = snapshot(model)
    lowered = lowerconv.lower(model, strategy=strategy)
    assert_unchanged(model, before)
    assert lowered.training == model.training
    assert all(m.training == model.training for m in lowered.modules())
    # Running the copy (which updates its BatchNorm statistics in train mode) and a backward
    # through it leave the original alone too.
    lowered(make_input((2, 3, 6, 6))).sum().backward()
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())
    own = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert not own & {id(t) for t in [*lowered.parameters(), *lowered.buffers()]}


def test_inplace_shares_parameters():
    torch.manual_seed(0)
    model = TiedNet().double().eval()
    x = make_input((2, 3, 6, 6))
    with torch.no_grad():
        expected = model(x)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    lowered = lowerconv.lower(model, inplace=True)
    for name, param in params.items():
        assert lowered.get_parameter(name) is param, name
    for name, buffer in buffers.items():
        assert lowered.get_buffer(name) is buffer, name
    assert_no_conv2d_modules(lowered)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), expected, rtol=RTOL, atol=ATOL)
        # A change through the lowered model is a change to the parameters the caller holds.
        lowered.get_parameter("stem.bias").add_(1.0)
    assert torch.equal(params["stem.bias"], lowered.get_parameter("stem.bias"))


# -- training ------------------------------------------------------------------------------------


def small_trainable_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, padding=1, padding_mode="reflect"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_sgd_step_gives_the_same_model(strategy):
    torch.manual_seed(0)
    model = small_trainable_net().double().train()
    lowered = lowerconv.lower(model, strategy=strategy)
    assert lowered.training
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    for net in (model, lowered):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        optimizer.zero_grad()
        F.cross_entropy(net(x), target).backward()
        optimizer.step()
    assert list(lowered.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(lowered.state_dict()[key], value, rtol=RTOL, atol=ATOL)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert "0.weight" in moved and "1.running_mean" in moved  # the step did something
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), rtol=RTOL, atol=ATOL)


# -- provenance and names ------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean(dim=(-1, -2)))


RESNET_CONVS = [
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer1.1.conv1",
    "layer1.1.conv2",
    "layer2.0.downsample.0",
    "layer2.0.conv1",
    "layer2.0.conv2",
]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_new_nodes_are_named_after_the_conv_and_carry_provenance(strategy):
    torch.manual_seed(0)
    model = TinyResNet().double().eval()
    traced = trace(copy.deepcopy(model))
    original_nodes = {n.name: n for n in traced.graph.nodes}
    lowered = lowerconv.lower(model, strategy=strategy)
    record = lowering_record(lowered)
    nodes = {n.name: n for n in lowered.graph.nodes}

    assert [c.name for c in record.lowered] == RESNET_CONVS
    for conv_record in record.lowered:
        base = conv_record.name.replace(".", "_")
        conv = model.get_submodule(conv_record.name)
        spec = ConvSpec.from_module(conv)
        assert conv_record.spec == spec
        assert conv_record.node == base
        assert conv_record.output_node == f"{base}_reshape"
        assert conv_record.nodes, conv_record
        expected_strategy = choose_strategy(spec) if strategy == "auto" else strategy
        assert conv_record.strategy == expected_strategy
        replaced = original_nodes[conv_record.node]
        for name in conv_record.nodes:
            assert name.startswith(f"{base}_"), name
            node = nodes[name]
            prov = node.meta["lowerconv"]
            assert isinstance(prov, Provenance)
            assert prov.source == conv_record.name
            assert prov.source_node == base
            assert prov.strategy == expected_strategy
            assert prov.is_output == (name == conv_record.output_node)
            assert node.meta["nn_module_stack"] == replaced.meta["nn_module_stack"]
        output = nodes[conv_record.output_node]
        assert output.meta["lowerconv"].spec == spec.to_dict()
        assert output.meta["lowerconv"].role == "reshape"
        # The output feeds what the conv fed (the following BatchNorm).
        assert {u.name for u in output.users} == {u.name for u in replaced.users}
        assert conv_record.input_node in nodes

    if strategy == "unfold":
        for suffix in ("weight", "unfold", "matmul", "reshape"):
            assert f"layer1_0_conv1_{suffix}" in nodes
        assert nodes["layer1_0_conv1_unfold"].target is F.unfold
        assert nodes["layer1_0_conv1_matmul"].target is torch.matmul
    conv_calls = [
        n for n in lowered.graph.nodes if n.op == "call_module" and n.target in RESNET_CONVS
    ]
    assert not conv_calls
    assert all("lowerconv" not in n.meta for n in nodes.values() if n.name.startswith("bn"))
    assert_same_function(lowered, model, make_input((2, 3, 16, 14)))


def test_stack_trace_is_copied_from_the_replaced_node():
    torch.manual_seed(0)
    model = TinyResNet().double().eval()
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    gm = fx.GraphModule(model, tracer.trace(model))
    conv_node = next(n for n in gm.graph.nodes if n.target == "layer1.0.conv2")
    stack_trace = conv_node.meta["stack_trace"]
    assert "conv2" in stack_trace
    lowered = lowerconv.lower(gm)
    new_nodes = [n for n in lowered.graph.nodes if n.name.startswith("layer1_0_conv2_")]
    assert new_nodes
    for node in new_nodes:
        assert node.meta["stack_trace"] == stack_trace, node.name
        assert node.meta["lowerconv"].source == "layer1.0.conv2"


def test_golden_code_of_a_tiny_model():
    lowered = lowerconv.lower(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    assert lowered.code.strip() == (
        """
def forward(self, input):
    input_1 = input
    _0_weight = getattr(self, "0").weight
    _0_bias = getattr(self, "0").bias
    _0_unfold = torch.nn.functional.unfold(input_1, (3, 3), dilation = (1, 1), padding = (1, 1), stride = (1, 1))
    _0_weight_flatten = _0_weight.flatten(1);  _0_weight = None
    _0_matmul = torch.matmul(_0_weight_flatten, _0_unfold);  _0_weight_flatten = _0_unfold = None
    _0_bias_unsqueeze = _0_bias.unsqueeze(-1);  _0_bias = None
    _0_add = _0_matmul + _0_bias_unsqueeze;  _0_matmul = _0_bias_unsqueeze = None
    _0_conv_output_width = conv_output_width(input_1, 3, 1, 2, 1);  input_1 = None
    _0_reshape = _0_add.unflatten(-1, (-1, _0_conv_output_width));  _0_add = _0_conv_output_width = None
    _1 = getattr(self, "1")(_0_reshape);  _0_reshape = None
    return _1
""".strip()
    )


# -- the record --------------------------------------------------------------------------------


class MixedConvs(nn.Module):
    """2-D convs called out of definition order, a functional conv, and convs of other kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.first_defined = nn.Conv2d(4, 4, 3, padding=1)
        self.second_defined = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.c1d = nn.Conv1d(4, 4, 3, padding=1)
        self.c3d = nn.Conv3d(1, 1, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3) / 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.second_defined(x))
        x = torch.relu(self.first_defined(x))
        x = torch.tanh(F.conv2d(x, self.kernel, stride=1, padding=(1, 0)))
        x = self.up(x)
        n, c, h, w = x.shape
        x = x + self.c1d(x.flatten(2)).reshape(n, c, h, w)
        return x + self.c3d(x.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_record_lists_every_kind_lowered_in_graph_order(strategy):
    torch.manual_seed(0)
    model = MixedConvs().double()
    lowered = lowerconv.lower(model, strategy=strategy)
    record = lowering_record(lowered)
    assert record.path == "graph" and not record.skipped
    assert record.kinds == list(lowerconv.KINDS)
    assert [(c.name, c.kind) for c in record.lowered] == [
        ("second_defined", "conv2d"),
        ("first_defined", "conv2d"),
        ("conv2d", "conv2d"),
        ("up", "conv_transpose2d"),
        ("c1d", "conv1d"),
        ("c3d", "conv3d"),
    ]
    assert [c.target for c in record.lowered][2:] == [
        "F.conv2d",
        "ConvTranspose2d",
        "Conv1d",
        "Conv3d",
    ]
    for conv_record in record.lowered:
        expected = choose_strategy(conv_record.spec) if strategy == "auto" else strategy
        assert conv_record.strategy == expected
    assert not any(isinstance(m, nn.modules.conv._ConvNd) for m in lowered.modules())
    assert_same_function(lowered, model, make_input((2, 4, 6, 5)))
    assert record.to_dict()["lowered"][3]["kind"] == "conv_transpose2d"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kinds_conv2d_lists_other_kinds_as_left_alone(strategy):
    torch.manual_seed(0)
    model = MixedConvs().double()
    lowered = lowerconv.lower(model, strategy=strategy, kinds={"conv2d"})
    record = lowering_record(lowered)
    assert record.path == "graph"
    assert record.strategy == strategy
    assert record.model == "MixedConvs"

    lowered_names = [c.name for c in record.lowered]
    assert lowered_names[:2] == ["second_defined", "first_defined"]
    assert len(lowered_names) == 3
    functional = record.lowered[2]
    assert functional.target == "F.conv2d"
    assert functional.spec == ConvSpec.from_conv_args(
        model.kernel.shape, bias=False, padding=(1, 0)
    )
    for conv_record in record.lowered:
        expected = choose_strategy(conv_record.spec) if strategy == "auto" else strategy
        assert conv_record.strategy == expected
    used = record.strategies_used()
    assert sum(used.values()) == 3
    assert set(used) == {c.strategy for c in record.lowered}

    skipped = {s.name: s for s in record.skipped}
    assert set(skipped) == {"c1d", "c3d", "up"}
    for name, kind in (("c1d", "Conv1d"), ("c3d", "Conv3d"), ("up", "ConvTranspose2d")):
        assert skipped[name].kind == kind
        assert skipped[name].reason.startswith(f"not lowered: {kind} (kinds= leaves")
        assert type(lowered.get_submodule(name)).__name__ == kind
    assert_no_conv2d_modules(lowered)
    assert_same_function(lowered, model, make_input((2, 4, 6, 5)))
    text = str(record)
    assert "second_defined" in text and "not lowered: Conv1d" in text
    assert record.to_dict()["lowered"][0]["name"] == "second_defined"


def test_conv2d_subclasses_keep_their_semantics_and_are_lowered():
    torch.manual_seed(0)
    model = nn.Sequential(
        WeightStandardizedConv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        RuntimeSamePadConv2d(6, 4, 3, stride=2, dilation=1),
        nn.ReLU(),
        RuntimeSamePadConv2d(4, 4, (4, 3), stride=(1, 3), dilation=(1, 2)),
    ).double()
    lowered = lowerconv.lower(model)
    record = lowering_record(lowered)
    assert [c.name for c in record.lowered] == ["0", "2", "4"]
    assert all(c.target == "F.conv2d" for c in record.lowered)
    assert not record.skipped
    assert_no_conv2d_modules(lowered)
    # Different sizes give different run-time padding: the graph must compute it, not bake it.
    for shape in [(2, 3, 11, 13), (1, 3, 12, 8), (3, 10, 17)]:
        assert_same_function(lowered, model, make_input(shape))
    # The weight standardisation really is in the graph (a plain conv would differ).
    plain = nn.Conv2d(3, 6, 3, padding=1).double()
    plain.load_state_dict(model[0].state_dict())
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    assert not torch.allclose(plain(x), lowered.get_submodule("0")(x))


def test_dynamic_weight_from_the_input_is_lowered():
    class DynamicKernel(nn.Module):
        def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, kernel, stride=2, padding=1)

    model = DynamicKernel()
    lowered = lowerconv.lower(model)
    record = lowering_record(lowered)
    assert record.num_lowered == 1
    assert record.lowered[0].spec is None
    x = make_input((2, 3, 9, 8))
    kernel = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_same_function(lowered, model, x, kernel)
    with OpRecorder() as ops:
        lowered(x, kernel).sum().backward()
    assert ops.conv_ops() == []


# -- refusals --------------------------------------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return -x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, padding=1)
        self.gate = DataDependent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(torch.relu(self.stem(x)))


def test_untraceable_model_raises_with_where_and_how_to_fix():
    model = Untraceable()
    with pytest.raises(LoweringError) as info:
        lowerconv.lower(model, strict=True)
    message = str(info.value)
    assert "Untraceable" in message  # the model
    assert "'gate'" in message and "DataDependent" in message  # the module
    assert "x.sum() > 0" in message  # the line
    assert "fix:" in message and "leaf_modules" in message and "strict=False" in message
    assert isinstance(model.stem, nn.Conv2d)  # nothing was changed on the way


def test_untraceable_model_with_strict_false_lowers_each_conv():
    torch.manual_seed(0)
    model = Untraceable().double()
    lowered = lowerconv.lower(model, strict=False)
    record = lowering_record(lowered)
    assert record.path == "fallback"
    assert "control flow" in record.trace_error
    assert sorted(c.name for c in record.lowered) == ["gate.conv", "stem"]
    assert_no_conv2d_modules(lowered)
    # The stem's bias picks the gate's branch: relu(stem) is all zeros for a very negative one.
    for bias in (5.0, -100.0):
        with torch.no_grad():
            model.stem.bias.fill_(bias)
            lowered.stem.get_parameter("bias").fill_(bias)
        assert_same_function(lowered, model, make_input((2, 3, 5, 6)))


@pytest.mark.parametrize("bad", ["unfol", "UNFOLD", "", "conv"], ids=repr)
def test_unknown_strategy_lists_the_valid_ones(bad):
    with pytest.raises(LoweringError) as info:
        lowerconv.lower(nn.Conv2d(3, 3, 3), strategy=bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in STRATEGY_NAMES:
        assert repr(name) in message


@pytest.mark.parametrize(
    "not_a_module",
    [lambda x: x, "resnet18", nn.Conv2d, None],
    ids=["function", "string", "class", "none"],
)
def test_non_module_input_is_refused(not_a_module):
    with pytest.raises(LoweringError, match=r"nn\.Module"):
        lowerconv.lower(not_a_module)


def test_bad_leaf_modules_entry_is_refused():
    with pytest.raises(LoweringError, match="leaf_modules"):
        lowerconv.lower(nn.Sequential(nn.Conv2d(3, 3, 3)), leaf_modules=[42])


def test_lowering_record_of_a_plain_module_is_a_lookup_error():
    with pytest.raises(LookupError, match=r"lowerconv\.lower"):
        lowering_record(nn.Conv2d(3, 3, 3))


# -- GraphModule input -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_graph_module_input_is_lowered(strategy):
    torch.manual_seed(0)
    model = TinyResNet().double().eval()
    gm = fx.symbolic_trace(model)
    code_before = gm.code
    lowered = lowerconv.lower(gm, strategy=strategy)
    assert [c.name for c in lowering_record(lowered).lowered] == RESNET_CONVS
    assert_no_conv2d_modules(lowered)
    assert gm.code == code_before
    assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == len(RESNET_CONVS)
    assert list(lowered.state_dict()) == list(gm.state_dict())
    assert_same_function(lowered, gm, make_input((2, 3, 12, 10)))
    # Lowering twice finds nothing left to do and changes nothing.
    again = lowerconv.lower(lowered, strategy=strategy)
    assert lowering_record(again).num_lowered == 0
    assert_same_function(again, gm, make_input((1, 3, 9, 9)))


# -- regressions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainCase:
    id: str
    build: object
    shape: tuple[int, ...] = (2, 3, 8, 8)


class FunctionalChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.w2 = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, self.w1, padding=1), self.w2)


class MixedChain(nn.Module):
    """Module conv -> functional conv -> subclass conv -> the same module conv again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
        self.kernel = nn.Parameter(torch.randn(3, 1, 3, 3))
        self.ws = WeightStandardizedConv2d(3, 3, 2, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(self.conv(x), self.kernel, padding=1, groups=3)
        return self.conv(self.ws(x))


# A conv whose input is another conv's output: lowering the first replaces the node the second
# reads, so the pass must read operands when it lowers a conv, not when it finds it.
CHAIN_CASES = [
    ChainCase("module_into_module", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))),
    ChainCase("functional_into_functional", FunctionalChain),
    ChainCase("mixed_and_repeated", MixedChain),
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", CHAIN_CASES, ids=[c.id for c in CHAIN_CASES])
def test_conv_feeding_a_conv_directly(case: ChainCase, strategy):
    torch.manual_seed(0)
    model = case.build().double()
    lowered = lowerconv.lower(model, strategy=strategy)
    assert_no_conv2d_modules(lowered)
    assert_same_function(lowered, model, make_input(case.shape))


def test_every_conv_in_a_leaf_module_is_accounted_for():
    torch.manual_seed(0)
    model = Untraceable().double()
    lowered = lowerconv.lower(model, leaf_modules=[DataDependent])
    x = make_input((1, 3, 6, 6))
    with torch.no_grad():
        x.abs_()
    assert_same_function(lowered, model, x)
    record = lowering_record(lowered)
    lowered_names = {c.name for c in record.lowered}
    skipped_names = {s.name for s in record.skipped}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        assert name in lowered_names | skipped_names, f"{name} is missing from the record"
        still_conv = isinstance(lowered.get_submodule(name), nn.Conv2d)
        assert still_conv == (name in skipped_names), name


class KeywordCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(5, 4, 3, 3))
        self.bias = nn.Parameter(torch.randn(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(input=x)
        return F.conv2d(input=y, weight=self.weight, bias=self.bias, stride=2, padding=1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_convs_called_with_keyword_arguments(strategy):
    torch.manual_seed(0)
    model = KeywordCalls().double()
    lowered = lowerconv.lower(model, strategy=strategy)
    record = lowering_record(lowered)
    assert [c.name for c in record.lowered] == ["conv", "conv2d"]
    # The second conv reads what now produces the first one's output.
    assert record.lowered[0].input_node == "x"
    assert record.lowered[1].input_node == record.lowered[0].output_node
    assert_same_function(lowered, model, make_input((2, 3, 9, 8)))


def test_lowered_model_converts_dtype_and_deepcopies_like_the_original():
    torch.manual_seed(0)
    model = TiedNet().double().eval()
    lowered = lowerconv.lower(model).float()
    model = model.float()
    assert all(p.dtype == torch.float32 for p in lowered.parameters())
    assert lowered.get_parameter("a.weight") is lowered.get_parameter("b.weight")
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-6)
    clone = copy.deepcopy(lowered)
    assert list(clone.state_dict()) == list(model.state_dict())
    assert clone.get_parameter("a.weight") is clone.get_parameter("b.weight")
    assert clone.get_parameter("a.weight") is not lowered.get_parameter("a.weight")
    assert lowering_record(clone).num_lowered == lowering_record(lowered).num_lowered
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=1e-5, atol=1e-6)


GLOBAL_SCALE = torch.tensor([1.0, 2.0, 3.0])


class UsesATensorConstant(nn.Module):
    """Reads a module-level tensor: the tracer keeps it as a root attribute ``_tensor_constant0``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * GLOBAL_SCALE.view(1, 3, 1, 1)


def test_deepcopy_keeps_tensor_constants_and_state_dict() -> None:
    model = UsesATensorConstant()
    lowered = lowerconv.lower(model)
    copied = copy.deepcopy(lowered)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(copied(x), model(x))
    assert list(copied.state_dict()) == list(model.state_dict()) == ["conv.weight", "conv.bias"]
    assert lowerconv.lowering_record(copied).num_lowered == 1


def test_a_lowering_traced_under_a_patch_does_not_serve_later_lowerings():
    # The traced strategy graphs are cached per lowering only: one traced while F.unfold was
    # patched (a mock in a test, as examples/catch_a_wrong_lowering.py does) holds the patch.
    from unittest import mock

    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    real_unfold = F.unfold
    with mock.patch("torch.nn.functional.unfold", lambda *a, **k: real_unfold(*a, **k) * 2):
        wrong = lowerconv.lower(model, strategy="unfold")
        with torch.no_grad():
            assert not torch.allclose(wrong(x), model(x))
    right = lowerconv.lower(model, strategy="unfold")
    with torch.no_grad():
        torch.testing.assert_close(right(x), model(x))
