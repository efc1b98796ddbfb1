"""The ``taps`` strategy: one GEMM per kernel tap on shifted views
(lowerconv.lowering.kernels.tap_gemms).

Its outputs and gradients against PyTorch's convolution in float64, with the CPU's small-output
threshold (``plain_kernels.TAPS_MIN_PIXELS``) patched to 0 so that the tap GEMMs really run on small
images and ``im2col_gemm`` is made to fail; the threshold itself and the fallback's workspace
cap; half precision; ``auto``'s rule and ``workspace_bytes``; and a lowered model through
``torch.export``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowerconv
from conv_space import conv_configs
from lowerconv import ConvSpec
from lowerconv.lowering import engine, plain_kernels
from lowerconv.lowering.strategies import (
    STRATEGIES,
    StrategyOptions,
    choose_strategy,
    workspace_bytes,
)
from lowerconv.lowering.tiling import DEFAULT_WORKSPACE_BYTES
from op_names import CONV_OP, OpNames

RTOL, ATOL = 1e-9, 1e-10
TAPS = STRATEGIES["taps"]


# -- helpers ---------------------------------------------------------------------------------------


class Spy:
    """Wraps a function, recording each call's arguments; ``fail=True`` raises instead."""

    def __init__(self, fn, fail: bool = False) -> None:
        self.fn, self.fail = fn, fail
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.fail:
            raise AssertionError(f"{self.fn.__name__} ran; the tap GEMMs should have")
        return self.fn(*args, **kwargs)


@contextlib.contextmanager
def patched(threshold: int | None = None, forbid_im2col: bool = False):
    """Patch the tap threshold (None: keep it), and spy on ``im2col_gemm`` (failing it with
    ``forbid_im2col``) and on ``tap_gemms``.

    Yields ``(im2col_spy, tap_spy)``.  The spies wrap the arithmetic in
    ``lowerconv.lowering.plain_kernels``, which every caller reaches through that module's
    attributes at call time: the graph leaves of ``lowerconv.lowering.kernels`` (the strategies'
    calls, and ``GemmConv2d``'s forward), ``tap_gemms``' own fallback to ``im2col_gemm``, and the
    backward's dX.  So each run of the arithmetic is one call.
    """
    im2col = Spy(plain_kernels.im2col_gemm, fail=forbid_im2col)
    taps = Spy(plain_kernels.tap_gemms)
    with pytest.MonkeyPatch.context() as mp:
        if threshold is not None:
            mp.setattr(plain_kernels, "TAPS_MIN_PIXELS", threshold)
        mp.setattr(plain_kernels, "im2col_gemm", im2col)
        mp.setattr(plain_kernels, "tap_gemms", taps)
        yield im2col, taps


def make_conv(kwargs: dict, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(**kwargs).double()
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.uniform_(-1, 1)  # not near zero, so a lost bias shows
    return conv


def make_input(shape: tuple[int, ...], layout: str = "contiguous", dtype=torch.float64):
    if layout == "contiguous":
        x = torch.randn(shape, dtype=dtype)
    elif layout == "transposed":
        x = torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype).transpose(-1, -2)
    elif layout == "sliced":
        *lead, c, h, w = shape
        x = torch.randn(*lead, 2 * c, h, 2 * w + 1, dtype=dtype)[..., ::2, :, 1::2]
    elif layout == "channels_last":
        x = torch.randn(shape, dtype=dtype).to(memory_format=torch.channels_last)
    else:
        raise AssertionError(layout)
    assert x.shape == shape
    return x


def taps_output(conv: nn.Conv2d, x: torch.Tensor, options: StrategyOptions | None = None):
    return TAPS(x, conv.weight, conv.bias, ConvSpec.from_module(conv), options)


def assert_close(actual, expected, what: str = "output", rtol=RTOL, atol=ATOL) -> None:
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def output_and_grads(fn, conv: nn.Conv2d, x: torch.Tensor, cotangent: torch.Tensor | None):
    """``fn(x)`` and the gradients of ``<fn(x), cotangent>`` wrt x, weight (and bias)."""
    x = x.detach().requires_grad_()
    inputs = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    out = fn(x)
    if cotangent is None:
        cotangent = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True)
    return out.detach(), grads, cotangent


def check_taps_against_conv(conv: nn.Conv2d, x: torch.Tensor, threshold: int | None) -> None:
    """``taps`` on ``conv``, with no gradient and with: the output and the gradients of
    PyTorch's convolution, and no convolution op run."""
    ref_out, ref_grads, cotangent = output_and_grads(conv, conv, x, None)
    with patched(threshold), OpNames() as seen:
        with torch.no_grad():
            assert_close(taps_output(conv, x), ref_out)
        out, grads, _ = output_and_grads(lambda t: taps_output(conv, t), conv, x, cotangent)
    assert seen.convs == [], seen.convs
    assert_close(out, ref_out)
    names = ["dX", "dW", "db"][: len(ref_grads)]  # no db without a bias
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        assert_close(got, want, name)


# -- 1. the tap GEMMs on every stride-1, one-group configuration ------------------------------


@st.composite
def taps_configs(draw):
    """``(Conv2d kwargs, input shape, layout)``: stride 1, one group, kernels of 1-5 a side,
    dilation 1-3, every padding form and mode, bias or not, batch 0-3 or unbatched, and
    non-square images down to a kernel's own span (a one-pixel output)."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kwargs = dict(
        in_channels=draw(st.integers(1, 3)),
        out_channels=draw(st.integers(1, 3)),
        kernel_size=draw(st.sampled_from([(kh, kw), kh])),
        padding=draw(st.sampled_from(["same", "valid", 0, 1, 2, (0, 1), (2, 0), (1, 2)])),
        dilation=draw(st.sampled_from([(dh, dw), dh])),
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
    )
    conv = nn.Conv2d(**kwargs)
    span_h = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    span_w = conv.dilation[1] * (conv.kernel_size[1] - 1) + 1
    # At least the span (an output) and 3 (reflect padding of 2 needs a larger side).
    h = max(span_h, 3) + draw(st.integers(0, 4))
    w = max(span_w, 3) + draw(st.integers(0, 4))
    batch = draw(st.sampled_from([None, 0, 1, 2, 3]))
    channels = kwargs["in_channels"]
    shape = (channels, h, w) if batch is None else (batch, channels, h, w)
    layout = draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced"]))
    if batch is not None and draw(st.booleans()):
        layout = "channels_last"
    return kwargs, shape, layout


@settings(max_examples=40, deadline=None)
@given(config=taps_configs(), seed=st.integers(0, 2**16))
def test_tap_gemms_match_conv2d_on_every_stride_1_config(config, seed):
    kwargs, shape, layout = config
    conv = make_conv(kwargs, seed)
    x = make_input(shape, layout)
    with torch.no_grad():
        expected = conv(x)
    with patched(threshold=0, forbid_im2col=True) as (_, taps), OpNames() as seen, torch.no_grad():
        out = taps_output(conv, x)
    assert_close(out, expected)
    assert out.is_contiguous()
    assert len(taps.calls) == 1
    assert seen.convs == [], seen.convs
    kh, kw = conv.kernel_size
    batch = shape[0] if len(shape) == 4 else 1
    # One GEMM per image and kernel tap.
    assert seen.gemms == batch * kh * kw, seen.names

    # The same configuration with gradients: GemmConv2d's forward and backward, and its dX by
    # the tap GEMMs too (im2col_gemm still forbidden).
    torch.manual_seed(seed)
    ref_out, ref_grads, cotangent = output_and_grads(conv, conv, x, None)
    with patched(threshold=0, forbid_im2col=True), OpNames() as seen:
        out, grads, _ = output_and_grads(lambda t: taps_output(conv, t), conv, x, cotangent)
    assert seen.convs == [], seen.convs
    assert_close(out, ref_out)
    for name, got, want in zip(["dX", "dW", "db"], grads, ref_grads, strict=False):
        assert got is not None, name
        assert_close(got, want, name)


@settings(max_examples=30, deadline=None)
@given(config=conv_configs(), seed=st.integers(0, 2**16), threshold=st.sampled_from([None, 0]))
def test_taps_matches_conv2d_on_every_config(config, seed, threshold):
    """Every Conv2d configuration (groups, strides, layouts) through ``taps``, whatever it hands
    them to: the output and the gradients of PyTorch's convolution, and no convolution op."""
    kwargs, shape, layout = config
    conv = make_conv(kwargs, seed)
    x = make_input(shape, layout)
    torch.manual_seed(seed)
    check_taps_against_conv(conv, x, threshold)


# -- 2. gradients ---------------------------------------------------------------------------------

# (id, nn.Conv2d keyword arguments, input shape); C_in != C_out, so that dX's call of
# tap_gemms (on the transposed, flipped kernel) is told apart from the forward's.
GRAD_CASES = [
    ("3x3_pad1", dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), (2, 3, 7, 9)),
    ("valid_5x2", dict(in_channels=4, out_channels=2, kernel_size=(5, 2)), (2, 4, 9, 6)),
    ("dilated", dict(in_channels=3, out_channels=4, kernel_size=3, dilation=(2, 3), padding=(2, 1)), (2, 3, 9, 11)),
    ("same_even", dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"), (2, 3, 7, 6)),
    ("same_even_dilated", dict(in_channels=2, out_channels=5, kernel_size=(2, 4), dilation=(3, 2), padding="same"), (1, 2, 9, 10)),
    ("same_no_bias", dict(in_channels=3, out_channels=2, kernel_size=(5, 3), padding="same", bias=False), (3, 3, 6, 8)),
    ("reflect", dict(in_channels=2, out_channels=3, kernel_size=3, padding=2, padding_mode="reflect"), (2, 2, 6, 5)),
    ("circular_same", dict(in_channels=3, out_channels=2, kernel_size=(3, 4), padding="same", padding_mode="circular"), (2, 3, 6, 7)),
    ("unbatched", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, dilation=2), (3, 8, 7)),
    ("one_pixel_out", dict(in_channels=2, out_channels=3, kernel_size=(4, 5)), (2, 2, 4, 5)),
]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, shape", [c[1:] for c in GRAD_CASES], ids=[c[0] for c in GRAD_CASES]
)
def test_gradients_equal_conv2d_and_dx_runs_the_tap_gemms(kwargs, shape):
    conv = make_conv(kwargs)
    x = make_input(shape)
    ref_out, ref_grads, cotangent = output_and_grads(conv, conv, x, None)
    x = x.detach().requires_grad_()
    inputs = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    with patched(threshold=0, forbid_im2col=True) as (_, taps):
        out = taps_output(conv, x)
        forward_calls = len(taps.calls)
        grads = torch.autograd.grad(out, inputs, cotangent)
    assert_close(out.detach(), ref_out)
    names = ["dX", "dW", "db"][: len(ref_grads)]
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        assert got is not None, f"no gradient reached {name}"
        assert_close(got, want, name)
    # The backward called tap_gemms on dY with the transposed, flipped kernel.
    flipped = conv.weight.transpose(0, 1).flip(-2, -1)
    backward = [args for args, _ in taps.calls[forward_calls:]]
    assert len(backward) == 1, [a[1].shape for a in backward]
    grad_arg, weight_arg, bias_arg = backward[0][:3]
    assert bias_arg is None
    assert grad_arg.shape[-3:] == ref_out.shape[-3:]
    assert not grad_arg.requires_grad
    torch.testing.assert_close(weight_arg, flipped.detach(), rtol=0, atol=0)


def test_backward_of_the_tap_gemms_runs_no_convolution_at_real_size():
    """With the real threshold: a 30x30 output, forward and dX both by the tap GEMMs."""
    conv = make_conv(dict(in_channels=4, out_channels=6, kernel_size=3, padding=1))
    x = make_input((2, 4, 30, 30))
    ref_out, ref_grads, cotangent = output_and_grads(conv, conv, x, None)
    with patched(forbid_im2col=True) as (_, taps), OpNames() as seen:
        out, grads, _ = output_and_grads(lambda t: taps_output(conv, t), conv, x, cotangent)
    assert seen.convs == [], seen.convs
    assert any(args[1].shape[0] == 4 for args, _ in taps.calls), "dX did not run tap_gemms"
    assert_close(out, ref_out)
    for name, got, want in zip(["dX", "dW", "db"], grads, ref_grads, strict=True):
        assert_close(got, want, name)


# -- 3. the CPU threshold -----------------------------------------------------------------------

# (id, nn.Conv2d keyword arguments, input shape, output pixels)
THRESHOLD_CASES = [
    ("30x30", dict(kernel_size=3, padding=1), (1, 4, 30, 30), 900),
    ("exactly_28x28", dict(kernel_size=3, padding=1), (2, 4, 28, 28), 784),
    ("dilated_to_28x28", dict(kernel_size=3, dilation=2), (1, 4, 32, 32), 784),
    ("14x56_non_square", dict(kernel_size=(3, 5), padding=(1, 2)), (1, 4, 14, 56), 784),
    ("unbatched_29x29", dict(kernel_size=3, padding="same"), (4, 29, 29), 841),
    ("27x29", dict(kernel_size=3, padding=1), (1, 4, 27, 29), 783),
    ("20x20", dict(kernel_size=3, padding=1), (2, 4, 20, 20), 400),
    ("unbatched_7x7", dict(kernel_size=3), (4, 9, 9), 49),
    ("batch_0_small", dict(kernel_size=3, padding=1), (0, 4, 8, 8), 64),
]


@pytest.mark.parametrize(
    "kwargs, shape, pixels",
    [c[1:] for c in THRESHOLD_CASES],
    ids=[c[0] for c in THRESHOLD_CASES],
)
def test_outputs_of_at_least_28x28_take_the_tap_path_smaller_ones_im2col(kwargs, shape, pixels):
    assert plain_kernels.TAPS_MIN_PIXELS == 28 * 28
    conv = make_conv(dict(in_channels=4, out_channels=3, **kwargs))
    x = make_input(shape)
    with torch.no_grad():
        expected = conv(x)
    assert expected.shape[-2] * expected.shape[-1] == pixels
    with patched() as (im2col, taps), OpNames() as seen, torch.no_grad():
        out = taps_output(conv, x)
    assert_close(out, expected)
    assert len(taps.calls) == 1
    if pixels >= 28 * 28:
        assert im2col.calls == [], "a large output fell back to im2col_gemm"
        batch = shape[0] if len(shape) == 4 else 1
        assert seen.gemms == batch * conv.kernel_size[0] * conv.kernel_size[1], seen.names
    else:
        assert len(im2col.calls) == 1
        args = im2col.calls[0][0]
        geometry = args[3]
        assert geometry.stride == (1, 1)
        assert geometry.workspace_bytes == DEFAULT_WORKSPACE_BYTES  # no cap: the CPU chunk limit


# -- 4. the fallback honours max_workspace_bytes --------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_fallback_receives_the_workspace_cap(requires_grad):
    conv = make_conv(dict(in_channels=4, out_channels=3, kernel_size=3, padding=1))
    x = make_input((3, 4, 10, 12)).requires_grad_(requires_grad)
    pixel = 4 * 9 * x.element_size()
    cap = 5 * pixel  # a few output pixels per chunk: im2col_gemm must split the images' rows
    with torch.no_grad():
        expected = conv(x)
    with patched() as (im2col, _), OpNames() as seen:
        out = taps_output(conv, x, StrategyOptions(max_workspace_bytes=cap))
    assert_close(out.detach(), expected)
    assert im2col.calls, "the small output did not fall back to im2col_gemm"
    assert {args[3].workspace_bytes for args, _ in im2col.calls} == {cap}
    # Chunked under the cap: more than one GEMM (one per chunk).
    assert seen.gemms + seen.names["aten.linear.default"] > 1, seen.names
    if requires_grad:
        out.sum().backward()
        x.grad = None


def test_a_workspace_cap_below_one_pixel_is_refused_by_the_fallback_only():
    """The tap GEMMs build no im2col buffer, so a cap below one pixel's column does not matter
    to them; the im2col fallback refuses it as ``nhwc`` does."""
    conv = make_conv(dict(in_channels=4, out_channels=3, kernel_size=3, padding=1))
    options = StrategyOptions(max_workspace_bytes=8)
    large = make_input((1, 4, 30, 30))
    with torch.no_grad():
        assert_close(taps_output(conv, large, options), conv(large))
        with pytest.raises(ValueError, match="max_workspace_bytes"):
            taps_output(conv, make_input((1, 4, 10, 10)), options)


# -- 5. half precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape, threshold", [((2, 8, 30, 31), None), ((8, 9, 7), 0)], ids=["30x31", "unbatched_small"]
)
def test_half_precision_is_close_to_a_float32_conv_and_keeps_its_dtype(dtype, shape, threshold):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    x = torch.randn(shape)
    xh, wh, bh = x.to(dtype), conv.weight.detach().to(dtype), conv.bias.detach().to(dtype)
    spec = ConvSpec.from_module(conv)
    with patched(threshold, forbid_im2col=True), torch.no_grad():
        out = TAPS(xh, wh, bh, spec)
    assert out.dtype == dtype
    assert out.shape == (*shape[:-3], 6, *shape[-2:])
    # The same rounded operands, summed in float32.
    expected = F.conv2d(xh.float(), wh.float(), bh.float(), padding=1)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradients_through_the_tap_gemms(dtype):
    """Half precision keeps autograd's own path (not GemmConv2d): through the per-tap matmuls,
    close to a float32 conv's gradients on the same rounded operands."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 28, 29).to(dtype).requires_grad_()
    w = (torch.randn(5, 8, 3, 3) / 8).to(dtype).requires_grad_()
    b = torch.randn(5).to(dtype).requires_grad_()
    spec = ConvSpec.from_conv_args(w.shape, bias=True, padding="same", dilation=(1, 2))
    with patched(forbid_im2col=True) as (_, taps):
        out = TAPS(x, w, b, spec)
    assert len(taps.calls) == 1
    assert out.dtype == dtype
    cotangent = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, (x, w, b), cotangent)
    refs = [t.detach().float().requires_grad_() for t in (x, w, b)]
    ref = F.conv2d(*refs, padding="same", dilation=(1, 2))
    ref_grads = torch.autograd.grad(ref, refs, cotangent.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for name, got, want in zip(["dX", "dW", "db"], grads, ref_grads, strict=True):
        assert got.dtype == dtype, name
        scale = want.abs().max().item()
        torch.testing.assert_close(
            got.float(), want, rtol=3e-2, atol=3e-2 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


# -- 6. auto's rule and workspace_bytes -----------------------------------------------------------


def spec(shape, **kwargs) -> ConvSpec:
    kwargs.setdefault("bias", False)
    return ConvSpec.from_conv_args(shape, **kwargs)


def test_auto_picks_taps_for_stride_1_one_group_convs_of_large_patches():
    assert choose_strategy(spec((64, 64, 3, 3), padding=1)) == "taps"
    assert choose_strategy(spec((128, 64, 3, 3))) == "taps"
    assert choose_strategy(spec((32, 16, 5, 5), padding="same", dilation=2)) == "taps"
    assert choose_strategy(spec((8, 8, 3, 3), padding=1)) == "taps"  # 72 values > 64
    assert choose_strategy(spec((64, 64, 3, 3), padding=1, padding_mode="reflect")) == "taps"
    # Not: strided, grouped, depthwise, 1x1, patches of at most 64 values (3-channel stems).
    assert choose_strategy(spec((64, 64, 3, 3), stride=2, padding=1)) == "nhwc"
    assert choose_strategy(spec((64, 64, 3, 3), stride=(1, 2), padding=1)) == "nhwc"
    assert choose_strategy(spec((64, 1, 3, 3), padding=1, groups=64)) == "depthwise"
    assert choose_strategy(spec((64, 64, 1, 1))) == "pointwise"
    assert choose_strategy(spec((16, 7, 3, 3), padding=1)) == "nchw"  # 63 values
    # 3-channel stems, stride 1 or not, whatever their patch size: never taps.
    for stem in (
        spec((32, 3, 3, 3), padding=1),
        spec((64, 3, 7, 7), padding=3),
        spec((64, 3, 7, 7), stride=2, padding=3),
    ):
        assert choose_strategy(stem) != "taps", stem
    assert choose_strategy(spec((768, 3, 16, 16), stride=16)) == "nchw"  # kernel == stride


def test_workspace_bytes_of_taps(monkeypatch):
    monkeypatch.setattr(engine, "ONEDNN", False)  # the BLAS engine: see the test below
    s = spec((64, 64, 3, 3), padding=1)
    f32 = torch.float32
    # A 56x56 output runs the tap GEMMs: no buffer, whatever the batch or the cap.
    assert workspace_bytes(s, "taps", 1, 56, 56, f32) == 0
    assert workspace_bytes(s, "taps", 8, 56, 56, f32, max_workspace_bytes=4096) == 0
    assert workspace_bytes(s, "taps", 1, 28, 28, f32) == 0  # exactly 28x28
    assert workspace_bytes(s, "auto", 1, 56, 56, f32) == 0
    # A 7x7 output falls back to nhwc's im2col, and allocates what it does.
    for batch, cap in [(1, None), (4, None), (4, 10_000)]:
        nhwc = workspace_bytes(s, "nhwc", batch, 7, 7, f32, max_workspace_bytes=cap)
        assert nhwc > 0
        assert workspace_bytes(s, "taps", batch, 7, 7, f32, max_workspace_bytes=cap) == nhwc
    assert workspace_bytes(s, "taps", 1, 27, 29, f32) == workspace_bytes(s, "nhwc", 1, 27, 29, f32)
    # Not on CPU, there is no threshold.
    assert workspace_bytes(s, "taps", 1, 7, 7, f32, device="cuda") == 0


def test_on_the_onednn_engine_one_group_float32_convs_run_the_im2col_gemm(monkeypatch):
    # Where float32 GEMMs run on oneDNN (CPUs that are not Intel's), tap_gemms' addmm calls
    # would run on the slower BLAS: one-group float32 convs take the im2col GEMM at any size,
    # and workspace_bytes says so.  Grouped convs and other dtypes keep the tap GEMMs.
    monkeypatch.setattr(engine, "ONEDNN", True)
    s = spec((64, 64, 3, 3), padding=1)
    f32 = torch.float32
    assert workspace_bytes(s, "taps", 1, 56, 56, f32) == workspace_bytes(s, "nhwc", 1, 56, 56, f32)
    assert workspace_bytes(s, "taps", 1, 56, 56, torch.float64) == 0
    assert workspace_bytes(spec((64, 8, 3, 3), padding=1, groups=8), "taps", 1, 56, 56, f32) == 0
    conv = make_conv(dict(in_channels=8, out_channels=4, kernel_size=3, padding=1)).float()
    x = make_input((1, 8, 32, 32)).float()
    with torch.no_grad():
        expected = conv(x)
    with patched() as (im2col, taps), torch.no_grad():
        out = taps_output(conv, x)
    assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert len(taps.calls) == 1 and len(im2col.calls) == 1
    monkeypatch.setattr(engine, "ONEDNN", False)
    with patched() as (im2col, taps), torch.no_grad():
        taps_output(conv, x)
    assert len(taps.calls) == 1 and im2col.calls == []


@pytest.mark.parametrize("height, width", [(28, 28), (14, 56), (27, 29), (7, 7)])
def test_workspace_bytes_predicts_the_fallback(height, width):
    """``workspace_bytes`` says 0 exactly where the tap GEMMs run (no im2col_gemm call)."""
    conv = make_conv(dict(in_channels=8, out_channels=4, kernel_size=3, padding=1))
    s = ConvSpec.from_module(conv)
    predicted = workspace_bytes(s, "taps", 1, height, width, torch.float64)
    with patched() as (im2col, _), torch.no_grad():
        taps_output(conv, make_input((1, 8, height, width)))
    assert (predicted == 0) == (not im2col.calls), (predicted, len(im2col.calls))
    if predicted:
        assert predicted == workspace_bytes(s, "nhwc", 1, height, width, torch.float64)


STRIDED_OR_GROUPED = [
    ("strided", dict(in_channels=4, out_channels=3, kernel_size=3, stride=2, padding=1), (2, 4, 9, 8)),
    ("stride_1x3_dilated", dict(in_channels=5, out_channels=2, kernel_size=(2, 3), stride=(1, 3), dilation=2), (1, 5, 9, 13)),
    ("grouped", dict(in_channels=6, out_channels=4, kernel_size=3, padding=1, groups=2), (2, 6, 7, 9)),
    ("grouped_strided_same_pad", dict(in_channels=6, out_channels=9, kernel_size=(3, 2), stride=(2, 1), padding=(2, 1), groups=3, padding_mode="reflect"), (6, 8, 7)),
    ("depthwise", dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=4), (2, 4, 8, 7)),
]  # fmt: skip


@pytest.mark.parametrize("threshold", [None, 0])
@pytest.mark.parametrize(
    "kwargs, shape", [c[1:] for c in STRIDED_OR_GROUPED], ids=[c[0] for c in STRIDED_OR_GROUPED]
)
def test_strided_and_grouped_convs_through_taps_match_conv2d(kwargs, shape, threshold):
    """Whatever ``taps`` hands them to, strided, grouped and depthwise convs are computed right,
    gradients included, and run no convolution op."""
    conv = make_conv(kwargs)
    x = make_input(shape)
    check_taps_against_conv(conv, x, threshold)


# -- 7. a lowered model through torch.export ------------------------------------------------------


def two_convs() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, padding=1, dilation=1, bias=False),
        )
        .double()
        .eval()
    )


def test_lowered_model_runs_the_tap_gemms_and_exports_without_a_convolution():
    export = pytest.importorskip("torch.export")
    if not hasattr(export, "export"):
        pytest.skip("torch.export.export is not available")
    model = two_convs()
    x = torch.randn(1, 8, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    lowered = lowerconv.lower(model, strategy="taps")
    assert [c.strategy for c in lowerconv.lowering_record(lowered).lowered] == ["taps"] * 2
    assert "tap_gemms" in lowered.code
    with patched(forbid_im2col=True), OpNames() as seen, torch.no_grad():
        assert_close(lowered(x), expected)
    assert seen.convs == [], seen.convs

    program = export.export(lowered, (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not [op for op in ops if CONV_OP.search(op) or "mkldnn" in op], ops
    assert any("matmul" in op or "mm" in op for op in ops), ops
    with torch.no_grad():
        assert_close(program.module()(x), expected)
        # Another batch and size than the example: the program was captured for one shape only,
        # so run the lowered graph itself on it.
        y = torch.randn(2, 8, 10, 12, dtype=torch.float64)
        assert_close(lowered(y), model(y))


def test_export_lowered_with_taps_holds_no_convolution():
    pytest.importorskip("torch.export")
    from lowerconv.lowering.export import export_lowered, op_counts

    model = two_convs()
    x = torch.randn(1, 8, 32, 32, dtype=torch.float64)
    program = export_lowered(model, x, strategy="taps")
    ops = op_counts(program)
    assert not [op for op in ops if CONV_OP.search(op) or "mkldnn" in op], ops
    with torch.no_grad():
        assert_close(program.module()(x), model(x))
