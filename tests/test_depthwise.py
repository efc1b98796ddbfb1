"""``kernels.depthwise_taps``' two paths, each forced, against ``F.conv2d`` in float64.

Both sum each kernel tap over the output rectangle its input pixels reach (no padded copy):
plane by plane in cache-sized blocks for large outputs, channels-last for small ones.  Which one
runs depends on the output's size, so each is forced here by its threshold, over the whole space
of depthwise configurations: channel multipliers, strides, dilations, asymmetric zero padding,
and padding wider than the kernel (taps that reach no input pixel for some outputs, or none).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowerconv.lowering import kernels, plain_kernels


def _force(monkeypatch, path: str) -> None:
    """Thresholds that send every call down ``path``, and the other path made to fail."""
    other = "_depthwise_channels_last" if path == "planes" else "_depthwise_planes"

    def wrong_path(*args, **kwargs):
        raise AssertionError(f"{other} ran where {path} was forced")

    monkeypatch.setattr(plain_kernels, other, wrong_path)
    threshold = 0 if path == "planes" else 2**62
    monkeypatch.setattr(plain_kernels, "SMALL_KERNEL_MIN_PIXELS", threshold)
    monkeypatch.setattr(plain_kernels, "PLANAR_MIN_PIXELS", threshold)


@pytest.fixture(params=["planes", "channels_last"])
def path(request, monkeypatch):
    _force(monkeypatch, request.param)
    return request.param


@pytest.fixture
def channels_last_path(monkeypatch):
    # Half precision and calls that autograd must record never run planar: thresholds of 0
    # still send them channels-last (and the planar path fails if it runs).
    monkeypatch.setattr(plain_kernels, "SMALL_KERNEL_MIN_PIXELS", 0)
    monkeypatch.setattr(plain_kernels, "PLANAR_MIN_PIXELS", 0)

    def wrong_path(*args, **kwargs):
        raise AssertionError("_depthwise_planes ran on a half-precision or recorded call")

    monkeypatch.setattr(plain_kernels, "_depthwise_planes", wrong_path)


def _reference(x, weight, bias, stride, dilation, zero_pad):
    return F.conv2d(F.pad(x, zero_pad), weight, bias, stride, 0, dilation, groups=x.shape[1])


@st.composite
def depthwise_configs(draw):
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    zero_pad = tuple(draw(st.integers(0, 6)) for _ in range(4))
    left, right, top, bottom = zero_pad
    # Inputs at least as large as the padded kernel's span, so that PyTorch accepts the conv.
    min_h = max(1, dilation[0] * (kernel[0] - 1) + 1 - top - bottom)
    min_w = max(1, dilation[1] * (kernel[1] - 1) + 1 - left - right)
    height = draw(st.integers(min_h, min_h + 9))
    width = draw(st.integers(min_w, min_w + 9))
    return dict(
        batch=draw(st.integers(1, 3)),
        channels=draw(st.integers(1, 4)),
        multiplier=draw(st.integers(1, 3)),
        size=(height, width),
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        zero_pad=zero_pad,
        bias=draw(st.booleans()),
    )


# The fixture only sets thresholds, the same for every example.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=depthwise_configs())
def test_each_path_equals_conv2d_over_the_configuration_space(path, config):
    c, m = config["channels"], config["multiplier"]
    x = torch.randn(config["batch"], c, *config["size"], dtype=torch.float64)
    weight = torch.randn(c * m, 1, *config["kernel"], dtype=torch.float64)
    bias = torch.randn(c * m, dtype=torch.float64) if config["bias"] else None
    args = (config["kernel"], config["stride"], config["dilation"], config["zero_pad"])
    got = kernels.depthwise_taps(x, weight, bias, *args)
    want = _reference(x, weight, bias, *args[1:])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_padding_wider_than_the_kernel_leaves_zeros_where_no_tap_reaches(path):
    # Output rows 0-1 and the last two see only padding: nothing but the bias lands there.
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    weight = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    zero_pad = (3, 3, 3, 3)
    got = kernels.depthwise_taps(x, weight, bias, (2, 2), (1, 1), (1, 1), zero_pad)
    torch.testing.assert_close(got, _reference(x, weight, bias, (1, 1), (1, 1), zero_pad))
    torch.testing.assert_close(
        got[:, :, :2], bias.reshape(1, 3, 1, 1).expand(2, 3, 2, got.shape[-1])
    )


def test_planes_in_several_blocks(monkeypatch):
    # Blocks of a few planes each: the block loop's offsets into the planes and the taps.
    monkeypatch.setattr(plain_kernels, "SMALL_KERNEL_MIN_PIXELS", 0)
    monkeypatch.setattr(plain_kernels, "PLANAR_MIN_PIXELS", 0)
    monkeypatch.setattr(plain_kernels, "PLANAR_BLOCK_BYTES", 3 * (9 * 9 + 2 * 9 * 9) * 8)
    x = torch.randn(3, 5, 9, 9, dtype=torch.float64)
    weight = torch.randn(10, 1, 3, 3, dtype=torch.float64)
    got = kernels.depthwise_taps(x, weight, None, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    torch.testing.assert_close(got, _reference(x, weight, None, (1, 1), (1, 1), (1, 1, 1, 1)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_summed_in_float32(channels_last_path, dtype):
    x = torch.randn(2, 6, 12, 11).to(dtype)
    weight = torch.randn(6, 1, 3, 3).to(dtype)
    got = kernels.depthwise_taps(x, weight, None, (3, 3), (2, 1), (1, 1), (1, 1, 1, 1))
    want = _reference(x.double(), weight.double(), None, (2, 1), (1, 1), (1, 1, 1, 1))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)


def test_a_gradient_through_the_taps_when_autograd_must_record_them(monkeypatch):
    # Double backward differentiates the plain ops (no out=, sliced views, channels-last),
    # while the forward inside GemmConv2d may run planar (thresholds of 0 here).
    monkeypatch.setattr(plain_kernels, "SMALL_KERNEL_MIN_PIXELS", 0)
    monkeypatch.setattr(plain_kernels, "PLANAR_MIN_PIXELS", 0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def conv(x, weight):
        return kernels.depthwise_taps(x, weight, None, (3, 3), (1, 2), (1, 1), (1, 1, 1, 1))

    assert torch.autograd.gradgradcheck(conv, (x, weight))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_a_channels_last_input(path, batch, multiplier):
    # The channels-last path sums it as it lies and keeps its layout, as a native conv does;
    # the planar path copies it to NCHW first (viewed as planes as it lies, at batch 1, every
    # plane would have a stride of C).
    x = torch.randn(batch, 6, 30, 29, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    weight = torch.randn(6 * multiplier, 1, 3, 3, dtype=torch.float64)
    bias = torch.randn(6 * multiplier, dtype=torch.float64)
    got = kernels.depthwise_taps(x, weight, bias, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    want = _reference(x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if path == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous()
    assert not x.is_contiguous()
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input itself is untouched


def test_an_output_that_lies_wholly_in_the_padding(channels_last_path):
    # No tap reaches an input pixel: the output is the bias alone, and recorded by autograd
    # (bf16 takes autograd's own path) its gradients are zeros, as a native conv's are.
    x = torch.randn(1, 2, 1, 1, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(2, 1, 1, 1, dtype=torch.bfloat16, requires_grad=True)
    out = kernels.depthwise_taps(x, weight, None, (1, 1), (4, 4), (1, 1), (3, 3, 3, 3))
    assert out.shape == (1, 2, 2, 2) and not out.any()
    out.sum().backward()
    assert x.grad is not None and not x.grad.any()
    assert weight.grad is not None and not weight.grad.any()


def test_sizes_may_be_lists():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64)
    got = kernels.depthwise_taps(x, weight, None, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1])
    torch.testing.assert_close(got, _reference(x, weight, None, (1, 1), (1, 1), (1, 1, 1, 1)))
