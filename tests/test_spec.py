"""ConvSpec: output sizes, padding arithmetic and costs, checked against what F.conv2d does."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lowerconv import ConvSpec
from lowerconv.lowering.spec import PADDING_MODES, conv_output_size, pair


def _reference_output(spec_args: dict, in_channels: int, out_channels: int, kernel, hw):
    """The real ``nn.Conv2d`` output for these arguments, and its module (PyTorch is the oracle)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, **spec_args)
    with torch.no_grad():
        out = conv(torch.randn(2, in_channels, *hw))
    return out, conv


# (id, nn.Conv2d keyword arguments, in_channels, out_channels, kernel, (H, W))
SHAPE_CASES = [
    ("3x3", {}, 3, 4, 3, (9, 11)),
    ("stride2", {"stride": 2}, 3, 4, 3, (9, 10)),
    ("stride_tuple", {"stride": (1, 3)}, 3, 4, 3, (9, 10)),
    ("pad_int", {"padding": 2}, 3, 4, 3, (7, 8)),
    ("pad_tuple", {"padding": (0, 3)}, 3, 4, (2, 3), (7, 8)),
    ("dilation", {"dilation": (2, 3), "padding": 1}, 3, 4, 3, (12, 13)),
    ("same_odd", {"padding": "same"}, 3, 4, 5, (8, 9)),
    ("same_even", {"padding": "same"}, 3, 4, 4, (8, 9)),
    ("same_even_dilated", {"padding": "same", "dilation": 3}, 3, 4, (2, 4), (12, 13)),
    ("valid", {"padding": "valid"}, 3, 4, (3, 2), (8, 9)),
    ("reflect", {"padding": 1, "padding_mode": "reflect"}, 3, 4, 3, (5, 6)),
    (
        "circular_stride",
        {"padding": (2, 1), "padding_mode": "circular", "stride": 2},
        3,
        4,
        3,
        (6, 7),
    ),
    ("depthwise", {"groups": 6, "padding": 1}, 6, 12, 3, (5, 5)),
    ("patchify", {"stride": 4}, 3, 8, 4, (16, 12)),
    ("kernel_covers_input", {}, 2, 2, (5, 6), (5, 6)),
]


@pytest.mark.parametrize(
    "args, cin, cout, kernel, hw", [c[1:] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES]
)
def test_output_hw_matches_conv2d(args, cin, cout, kernel, hw):
    out, conv = _reference_output(args, cin, cout, kernel, hw)
    spec = ConvSpec.from_module(conv)
    assert spec.output_hw(*hw) == tuple(out.shape[-2:])


@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 5),
    padding=st.integers(0, 4),
    dilation=st.integers(1, 4),
)
def test_conv_output_size_matches_conv2d(size, kernel, stride, padding, dilation):
    span = dilation * (kernel - 1) + 1
    if size + 2 * padding < span:
        return  # PyTorch refuses a kernel larger than the padded input; nothing to compare
    out = F.conv2d(
        torch.zeros(1, 1, 1, size),
        torch.zeros(1, 1, 1, kernel),
        stride=(1, stride),
        padding=(0, padding),
        dilation=(1, dilation),
    )
    assert conv_output_size(size, kernel, stride, 2 * padding, dilation) == out.shape[-1]


# (id, kernel, dilation, expected pad as (left, right, top, bottom))
SAME_CASES = [
    ("odd_3", (3, 3), (1, 1), (1, 1, 1, 1)),
    ("even_4", (4, 4), (1, 1), (1, 2, 1, 2)),
    ("even_2x4", (2, 4), (1, 1), (1, 2, 0, 1)),
    ("even_dilated", (2, 4), (3, 1), (1, 2, 1, 2)),
    ("odd_dilated", (3, 5), (2, 2), (4, 4, 2, 2)),
    ("even_dilation_2", (4, 2), (2, 2), (1, 1, 3, 3)),
    ("one_by_one", (1, 1), (1, 1), (0, 0, 0, 0)),
]


@pytest.mark.parametrize(
    "kernel, dilation, expected", [c[1:] for c in SAME_CASES], ids=[c[0] for c in SAME_CASES]
)
def test_same_padding_split(kernel, dilation, expected):
    spec = ConvSpec.from_conv_args((4, 3, *kernel), bias=False, padding="same", dilation=dilation)
    assert spec.pad == expected
    # PyTorch itself: 'same' equals an explicit pad by exactly this split, then a valid conv.
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    w = torch.randn(4, 3, *kernel, dtype=torch.float64)
    same = F.conv2d(x, w, padding="same", dilation=dilation)
    explicit = F.conv2d(F.pad(x, spec.pad), w, dilation=dilation)
    torch.testing.assert_close(explicit, same, rtol=1e-12, atol=1e-12)
    assert spec.output_hw(9, 10) == (9, 10)


def test_same_padding_even_kernel_is_asymmetric():
    spec = ConvSpec.from_conv_args((4, 3, 4, 4), bias=True, padding="same")
    assert spec.symmetric_padding is None
    assert spec.needs_explicit_pad


def test_valid_padding_is_zero():
    spec = ConvSpec.from_conv_args((4, 3, 3, 3), bias=True, padding="valid")
    assert spec.pad == (0, 0, 0, 0)
    assert not spec.needs_explicit_pad
    assert spec == ConvSpec.from_conv_args((4, 3, 3, 3), bias=True, padding=0)


def test_tuple_padding_order():
    spec = ConvSpec.from_conv_args((4, 3, 3, 3), bias=False, padding=(1, 2))
    # (left, right, top, bottom): padding=(ph, pw) pads H by 1 and W by 2.
    assert spec.pad == (2, 2, 1, 1)
    assert spec.symmetric_padding == (1, 2)


@pytest.mark.parametrize("mode", PADDING_MODES, ids=list(PADDING_MODES))
def test_padding_mode_and_explicit_pad(mode):
    spec = ConvSpec.from_conv_args((4, 3, 3, 3), bias=False, padding=1, padding_mode=mode)
    assert spec.padding_mode == mode
    assert spec.needs_explicit_pad == (mode != "zeros")


def test_from_module_matches_from_conv_args():
    conv = nn.Conv2d(6, 9, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)
    expected = ConvSpec(
        in_channels=6,
        out_channels=9,
        kernel_size=(3, 5),
        stride=(2, 1),
        dilation=(1, 2),
        pad=(2, 2, 1, 1),
        padding_mode="zeros",
        groups=3,
        bias=True,
    )
    assert ConvSpec.from_module(conv) == expected
    assert expected.in_per_group == 2
    assert expected.out_per_group == 3
    assert expected.patch_size == 2 * 3 * 5


# (id, weight shape, keyword arguments, fragments the message must contain)
ERROR_CASES = [
    ("weight_2d", (4, 3), {}, ["1 to 3 kernel dimensions", "(4, 3)"]),
    ("weight_6d", (4, 3, 3, 3, 3, 3), {}, ["1 to 3 kernel dimensions"]),
    ("transposed_same", (4, 3, 3, 3), {"padding": "same", "transposed": True}, ["'same'"]),
    (
        "transposed_reflect",
        (4, 3, 3, 3),
        {"padding": 1, "padding_mode": "reflect", "transposed": True},
        ["zeros only", "'reflect'"],
    ),
    (
        "output_padding_too_large",
        (4, 3, 3, 3),
        {"stride": 2, "output_padding": 2, "transposed": True},
        ["output_padding (2, 2)", "stride (2, 2)"],
    ),
    ("padding_mode", (4, 3, 3, 3), {"padding_mode": "mirror"}, ["padding_mode", "'mirror'"]),
    ("groups_zero", (4, 3, 3, 3), {"groups": 0}, ["groups=0"]),
    ("groups_not_dividing", (3, 3, 3, 3), {"groups": 2}, ["groups=2", "out_channels=3"]),
    ("padding_negative", (4, 3, 3, 3), {"padding": -1}, ["padding", "-1"]),
    ("padding_word", (4, 3, 3, 3), {"padding": "full"}, ["padding", "'full'"]),
    ("padding_triple", (4, 3, 3, 3), {"padding": (1, 2, 3)}, ["padding", "(1, 2, 3)"]),
    ("stride_bool", (4, 3, 3, 3), {"stride": True}, ["stride", "True"]),
    ("dilation_str", (4, 3, 3, 3), {"dilation": "2"}, ["dilation", "'2'"]),
    ("same_strided", (4, 3, 3, 3), {"padding": "same", "stride": 2}, ["same", "stride"]),
]


@pytest.mark.parametrize(
    "weight_shape, kwargs, fragments",
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_bad_arguments_raise_clear_errors(weight_shape, kwargs, fragments):
    with pytest.raises(ValueError) as info:
        ConvSpec.from_conv_args(weight_shape, bias=False, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


# PyTorch's own conv refuses these ("non-positive stride is not supported", "dilation should be
# greater than zero"); a spec that accepts them later divides by zero or computes negative sizes.
NON_POSITIVE_CASES = [
    ("stride_zero", {"stride": 0}, "stride"),
    ("stride_negative", {"stride": (1, -1)}, "stride"),
    ("dilation_zero", {"dilation": 0}, "dilation"),
]


@pytest.mark.parametrize(
    "kwargs, name", [c[1:] for c in NON_POSITIVE_CASES], ids=[c[0] for c in NON_POSITIVE_CASES]
)
def test_pytorch_refuses_non_positive_stride_or_dilation(kwargs, name):
    with pytest.raises(RuntimeError, match=name):
        F.conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3), **kwargs)


@pytest.mark.parametrize(
    "kwargs, name", [c[1:] for c in NON_POSITIVE_CASES], ids=[c[0] for c in NON_POSITIVE_CASES]
)
def test_spec_refuses_non_positive_stride_or_dilation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ConvSpec.from_conv_args((4, 3, 3, 3), bias=False, **kwargs)


@pytest.mark.parametrize(
    "value, expected",
    [(3, (3, 3)), ((1, 2), (1, 2)), ([4], (4, 4)), (torch.Size([2, 5]), (2, 5))],
    ids=["int", "tuple", "one_element_list", "size"],
)
def test_pair(value, expected):
    assert pair(value, "stride") == expected


# (id, groups, in_channels, out_channels, kernel, stride, padding, padding_mode, (N, H, W))
COST_CASES = [
    ("dense", 1, 3, 16, (3, 3), 1, 0, "zeros", (25, 32, 32)),
    ("padded_strided", 1, 4, 8, (3, 5), 2, 1, "zeros", (2, 11, 13)),
    ("grouped", 2, 6, 4, (3, 3), 1, 1, "reflect", (3, 9, 9)),
    ("depthwise_multiplier", 5, 5, 10, (5, 5), (2, 1), 2, "zeros", (1, 12, 10)),
    ("pointwise", 1, 8, 3, (1, 1), 1, 0, "zeros", (2, 7, 7)),
    ("empty_batch", 1, 3, 4, (3, 3), 1, 0, "zeros", (0, 8, 8)),
]
COST_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", COST_DTYPES, ids=[str(d).split(".")[1] for d in COST_DTYPES])
@pytest.mark.parametrize(
    "groups, cin, cout, kernel, stride, padding, mode, nhw",
    [c[1:] for c in COST_CASES],
    ids=[c[0] for c in COST_CASES],
)
def test_costs_match_the_real_im2col(groups, cin, cout, kernel, stride, padding, mode, nhw, dtype):
    conv = nn.Conv2d(
        cin, cout, kernel, stride=stride, padding=padding, padding_mode=mode, groups=groups
    )
    spec = ConvSpec.from_module(conv)
    n, h, w = nhw
    x = torch.randn(n, cin, h, w)
    with torch.no_grad():
        out = conv(x)
    cols = F.unfold(F.pad(x, spec.pad), spec.kernel_size, stride=spec.stride)
    assert spec.im2col_elements(n, h, w) == cols.numel()
    expected_bytes = cols.numel() * torch.empty((), dtype=dtype).element_size()
    assert spec.im2col_bytes(n, h, w, dtype) == expected_bytes

    # One multiply-add per weight tap per output element: C_in/groups * kh * kw of them.
    macs = out.numel() * (cin // groups) * kernel[0] * kernel[1]
    assert spec.flops(n, h, w) == 2 * macs
    m, k, cols_n = spec.gemm_shape(n, h, w)
    assert (m, cols_n) == (cout, n * out.shape[-2] * out.shape[-1])
    assert k == (cin // groups) * kernel[0] * kernel[1]
    assert 2 * m * k * cols_n == spec.flops(n, h, w)


def test_gemm_shape_is_the_textbook_product():
    # The worked example: (25, 3, 32, 32) by (16, 3, 3, 3) is (16, 27) @ (27, 25 * 900).
    spec = ConvSpec.from_conv_args((16, 3, 3, 3), bias=False)
    assert spec.gemm_shape(25, 32, 32) == (16, 27, 25 * 900)
    assert spec.im2col_bytes(25, 32, 32, torch.float32) == 25 * 27 * 900 * 4


# (id, spec arguments, is_pointwise, is_patchify, is_depthwise)
PREDICATE_CASES = [
    ("pointwise", ((8, 4, 1, 1), {}), True, False, False),
    ("pointwise_strided", ((8, 4, 1, 1), {"stride": 2}), True, False, False),
    ("pointwise_padded", ((8, 4, 1, 1), {"padding": 1}), False, False, False),
    ("patchify", ((8, 3, 14, 14), {"stride": 14}), False, True, False),
    ("patchify_padded", ((8, 3, 4, 4), {"stride": 4, "padding": 1}), False, False, False),
    ("patchify_dilated", ((8, 3, 4, 4), {"stride": 4, "dilation": 2}), False, False, False),
    ("depthwise", ((8, 1, 3, 3), {"groups": 8}), False, False, True),
    ("depthwise_multiplier", ((16, 1, 3, 3), {"groups": 8}), False, False, True),
    ("grouped", ((8, 2, 3, 3), {"groups": 4}), False, False, False),
    ("dense", ((8, 4, 3, 3), {"padding": 1}), False, False, False),
]


@pytest.mark.parametrize(
    "args, pointwise, patchify, depthwise",
    [c[1:] for c in PREDICATE_CASES],
    ids=[c[0] for c in PREDICATE_CASES],
)
def test_shape_predicates(args, pointwise, patchify, depthwise):
    weight_shape, kwargs = args
    spec = ConvSpec.from_conv_args(weight_shape, bias=False, **kwargs)
    assert (spec.is_pointwise, spec.is_patchify, spec.is_depthwise) == (
        pointwise,
        patchify,
        depthwise,
    )


def test_to_dict_is_json_and_complete():
    spec = ConvSpec.from_conv_args((4, 3, 2, 4), bias=True, padding="same", dilation=(1, 2))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["pad"] == list(spec.pad)
    rebuilt = ConvSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    assert rebuilt == spec


def test_describe_mentions_the_configuration():
    spec = ConvSpec.from_conv_args(
        (8, 1, 3, 3), bias=True, stride=2, padding=1, groups=8, padding_mode="reflect"
    )
    assert spec.describe() == "3x3 s2 d1 p1 reflect dw bias"


# (padding argument, kernel) -> what describe() and `lowerconv graph` print: one notation.
PADDING_TEXT_CASES = [
    ((1, 2), (3, 5), "p1x2", "1x2"),  # pad (2,2,1,1): HxW, top x left
    (3, (7, 7), "p3", "3x3"),
    (0, (3, 3), None, "0"),
    ("same", (2, 4), "p(1,2,0,1)", "(1,2,0,1)"),  # even kernels pad one more right and bottom
]


@pytest.mark.parametrize(
    ("padding", "kernel", "in_describe", "in_graph"),
    PADDING_TEXT_CASES,
    ids=[c[3] for c in PADDING_TEXT_CASES],
)
def test_padding_reads_the_same_in_describe_and_graph(padding, kernel, in_describe, in_graph):
    from lowerconv.lowering.inspect import _padding

    spec = ConvSpec.from_conv_args((4, 2, *kernel), bias=False, padding=padding)
    assert _padding(spec) == in_graph
    parts = spec.describe().split()
    assert [p for p in parts if p.startswith("p")] == ([in_describe] if in_describe else [])
