"""Each im2col strategy, on its own, against PyTorch's convolution: outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conv_space import conv_configs
from lowerconv import ConvSpec
from lowerconv.lowering.functional import conv2d
from lowerconv.lowering.strategies import STRATEGIES

RTOL, ATOL = 1e-9, 1e-10
STRATEGY_FNS = sorted(STRATEGIES)
FUNCTIONAL_STRATEGIES = [*STRATEGY_FNS, "auto"]

# (id, nn.Conv2d keyword arguments, input shape)
CASES = [
    ("3x3", dict(in_channels=3, out_channels=5, kernel_size=3), (2, 3, 8, 9)),
    ("stride", dict(in_channels=3, out_channels=4, kernel_size=3, stride=(2, 3)), (2, 3, 11, 10)),
    (
        "dilation",
        dict(in_channels=2, out_channels=3, kernel_size=3, dilation=(2, 3)),
        (1, 2, 9, 10),
    ),
    ("pad_int", dict(in_channels=3, out_channels=4, kernel_size=3, padding=2), (2, 3, 5, 6)),
    (
        "pad_tuple",
        dict(in_channels=3, out_channels=4, kernel_size=(3, 5), padding=(0, 2)),
        (2, 3, 6, 7),
    ),
    ("same_odd", dict(in_channels=3, out_channels=4, kernel_size=5, padding="same"), (2, 3, 7, 6)),
    ("same_even", dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"), (2, 3, 7, 6)),
    (
        "same_even_dilated",
        dict(in_channels=3, out_channels=4, kernel_size=(2, 4), padding="same", dilation=(3, 1)),
        (2, 3, 9, 8),
    ),
    ("valid", dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"), (2, 3, 6, 6)),
    (
        "reflect",
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode="reflect"),
        (2, 3, 6, 7),
    ),
    (
        "replicate_strided",
        dict(
            in_channels=3,
            out_channels=4,
            kernel_size=3,
            padding=(1, 2),
            stride=2,
            padding_mode="replicate",
        ),
        (2, 3, 7, 8),
    ),
    (
        "circular_same_even",
        dict(in_channels=3, out_channels=4, kernel_size=4, padding="same", padding_mode="circular"),
        (2, 3, 6, 7),
    ),
    ("groups", dict(in_channels=4, out_channels=6, kernel_size=3, groups=2), (2, 4, 7, 7)),
    (
        "depthwise",
        dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, padding=1),
        (2, 4, 6, 6),
    ),
    (
        "depthwise_multiplier",
        dict(in_channels=3, out_channels=6, kernel_size=(3, 2), groups=3, stride=2),
        (2, 3, 9, 8),
    ),
    ("no_bias", dict(in_channels=3, out_channels=4, kernel_size=3, bias=False), (2, 3, 6, 6)),
    ("pointwise", dict(in_channels=5, out_channels=3, kernel_size=1), (2, 5, 4, 6)),
    (
        "pointwise_strided",
        dict(in_channels=5, out_channels=3, kernel_size=1, stride=2),
        (2, 5, 5, 6),
    ),
    ("patchify", dict(in_channels=3, out_channels=8, kernel_size=4, stride=4), (2, 3, 12, 8)),
    ("kernel_covers_input", dict(in_channels=2, out_channels=3, kernel_size=(4, 5)), (2, 2, 4, 5)),
    ("batch_0", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (0, 3, 5, 5)),
    ("unbatched", dict(in_channels=3, out_channels=4, kernel_size=3, groups=1), (3, 6, 5)),
    (
        "unbatched_grouped_reflect",
        dict(
            in_channels=4,
            out_channels=6,
            kernel_size=3,
            groups=2,
            padding=1,
            padding_mode="reflect",
        ),
        (4, 6, 5),
    ),
]
CASE_IDS = [c[0] for c in CASES]
CASE_ARGS = [c[1:] for c in CASES]


def _conv_and_input(kwargs: dict, shape: tuple[int, ...], seed: int = 0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**kwargs).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    return conv, x


def _output_and_grads(out: torch.Tensor, inputs: list[torch.Tensor], cotangent: torch.Tensor):
    grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True)
    return out.detach(), grads


def _assert_matches(actual, expected, inputs_names):
    out, grads = actual
    ref_out, ref_grads = expected
    assert out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out, rtol=RTOL, atol=ATOL)
    for name, got, want in zip(inputs_names, grads, ref_grads, strict=True):
        assert got is not None, f"no gradient reached {name}"
        torch.testing.assert_close(
            got, want, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )


def _reference(conv: nn.Conv2d, x: torch.Tensor):
    ref = conv(x)
    cotangent = torch.randn_like(ref)
    inputs = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return _output_and_grads(ref, inputs, cotangent), inputs, cotangent


@pytest.mark.parametrize("strategy", STRATEGY_FNS)
@pytest.mark.parametrize("kwargs, shape", CASE_ARGS, ids=CASE_IDS)
def test_strategy_matches_conv2d(kwargs, shape, strategy):
    conv, x = _conv_and_input(kwargs, shape)
    expected, inputs, cotangent = _reference(conv, x)
    out = STRATEGIES[strategy](x, conv.weight, conv.bias, ConvSpec.from_module(conv))
    names = ["input", "weight", "bias"][: len(inputs)]
    _assert_matches(_output_and_grads(out, inputs, cotangent), expected, names)


@pytest.mark.parametrize("strategy", FUNCTIONAL_STRATEGIES)
@pytest.mark.parametrize("kwargs, shape", CASE_ARGS, ids=CASE_IDS)
def test_functional_conv2d_matches_conv2d(kwargs, shape, strategy):
    _check_functional_conv2d(kwargs, shape, strategy)


def test_functional_conv2d_defaults_match_f_conv2d():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv2d(x, w), torch.nn.functional.conv2d(x, w), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("strategy", STRATEGY_FNS)
def test_strategy_accepts_non_contiguous_and_channels_last(strategy):
    conv, _ = _conv_and_input(dict(in_channels=4, out_channels=6, kernel_size=3, groups=2), (1,))
    spec = ConvSpec.from_module(conv)
    base = torch.randn(2, 9, 4, 10, dtype=torch.float64)
    inputs = {
        "transposed": base.transpose(1, 2),
        "sliced": torch.randn(2, 8, 9, 20, dtype=torch.float64)[:, ::2, :, ::2],
        "channels_last": torch.randn(2, 4, 9, 10, dtype=torch.float64).to(
            memory_format=torch.channels_last
        ),
    }
    with torch.no_grad():
        for name, x in inputs.items():
            out = STRATEGIES[strategy](x, conv.weight, conv.bias, spec)
            ref = conv(x)
            torch.testing.assert_close(
                out, ref, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
            )


@given(
    config=conv_configs().map(lambda c: c[:2]),  # this file builds contiguous inputs
    strategy=st.sampled_from(FUNCTIONAL_STRATEGIES),
)
def test_functional_conv2d_sweep(config, strategy):
    kwargs, shape = config
    _check_functional_conv2d(kwargs, shape, strategy)


def _check_functional_conv2d(kwargs, shape, strategy):
    """``lowerconv.lowering.functional.conv2d`` with a conv's arguments equals the conv, with
    gradients."""
    conv, x = _conv_and_input(kwargs, shape)
    expected, inputs, cotangent = _reference(conv, x)
    out = conv2d(
        x,
        conv.weight,
        conv.bias,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        padding_mode=conv.padding_mode,
        strategy=strategy,
    )
    names = ["input", "weight", "bias"][: len(inputs)]
    _assert_matches(_output_and_grads(out, inputs, cotangent), expected, names)
