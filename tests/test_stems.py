"""``nchw``'s phase gather for strided stems (few channels, many taps per phase): the columns
come from the input split into its stride's phases.  Checked against ``F.conv2d`` in float64
over strides, kernels, paddings and odd sizes, with the gather forced on, and the rule that
picks it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowerconv.lowering.strategies as strategies
from lowerconv import ConvSpec


@settings(max_examples=120, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    size=st.tuples(st.integers(1, 23), st.integers(1, 23)),
    kernel=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    bias=st.booleans(),
)
def test_phase_columns_equal_conv2d(batch, channels, size, kernel, stride, padding, bias):
    if any(s + 2 * p < k for s, p, k in zip(size, padding, kernel, strict=True)):
        return  # PyTorch rejects a kernel larger than the padded input
    conv = torch.nn.Conv2d(channels, 5, kernel, stride, padding, bias=bias).double()
    x = torch.randn(batch, channels, *size, dtype=torch.float64)
    spec = ConvSpec.from_module(conv)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(strategies, "_phase_gather", lambda *args: spec.stride != (1, 1))
        got = strategies.STRATEGIES["nchw"](x, conv.weight, conv.bias, spec)
        want = conv(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_phase_gather_serves_stems_with_many_taps_per_phase_only():
    x = torch.randn(1, 3, 32, 32)

    def picked(conv, x=x):
        spec = ConvSpec.from_module(conv)
        with torch.no_grad():
            return strategies._phase_gather(x, conv.weight, conv.bias, spec)

    assert picked(torch.nn.Conv2d(3, 8, 7, 2, 3))  # resnet's stem: 49 taps over 4 phases
    assert not picked(torch.nn.Conv2d(3, 8, 3, 2, 1))  # 9 taps over 4 phases: plain gather
    assert not picked(torch.nn.Conv2d(16, 8, 7, 2, 3))  # not a stem
    assert not picked(torch.nn.Conv2d(3, 8, 7, 1, 3))  # unstrided
    assert not picked(torch.nn.Conv2d(3, 8, 7, 2, 3, dilation=2))
    # A call that needs gradients records the plain gather (GemmConv2d's or autograd's own).
    conv = torch.nn.Conv2d(3, 8, 7, 2, 3)
    assert not strategies._phase_gather(x, conv.weight, conv.bias, ConvSpec.from_module(conv))
