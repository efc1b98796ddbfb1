"""The fast strategies and ``max_workspace_bytes``: exact against ``F.conv2d``, bounded buffers.

Every strategy already runs the shared suite of ``test_strategies.py``; the cases here are the
configurations the fast strategies special-case (1x1, patches, depthwise, groups, chunking), the
float32 paths that only run without autograd (oneDNN's GEMM, the planar depthwise blocks), and
the workspace cap, checked against the size of every tensor the arithmetic allocates.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
from lowerconv import ConvSpec
from lowerconv.lowering.engine import gemm
from lowerconv.lowering.strategies import STRATEGIES, StrategyOptions, choose_strategy
from lowerconv.lowering.tiling import plan_chunks
from op_names import StorageSizes

RTOL, ATOL = 1e-9, 1e-10
FAST = ["nhwc", "nchw", "pointwise", "patchify", "depthwise"]

# (id, nn.Conv2d keyword arguments, input shape): the configurations the fast strategies treat
# specially, each next to its awkward relatives.
SPECIAL_CASES = [
    ("pointwise", dict(in_channels=6, out_channels=4, kernel_size=1), (2, 6, 5, 7)),
    ("pointwise_no_bias", dict(in_channels=6, out_channels=4, kernel_size=1, bias=False), (3, 6, 4, 4)),
    ("pointwise_strided", dict(in_channels=6, out_channels=4, kernel_size=1, stride=(2, 3)), (2, 6, 7, 8)),
    ("pointwise_padded_reflect", dict(in_channels=3, out_channels=4, kernel_size=1, padding=1, padding_mode="reflect"), (2, 3, 5, 5)),
    ("pointwise_grouped", dict(in_channels=6, out_channels=9, kernel_size=1, groups=3), (2, 6, 4, 5)),
    ("pointwise_unbatched", dict(in_channels=5, out_channels=3, kernel_size=1), (5, 4, 6)),
    ("patchify", dict(in_channels=3, out_channels=8, kernel_size=4, stride=4), (2, 3, 12, 8)),
    ("patchify_ragged", dict(in_channels=3, out_channels=5, kernel_size=(2, 3), stride=(2, 3)), (2, 3, 7, 11)),
    ("patchify_unbatched", dict(in_channels=2, out_channels=4, kernel_size=2, stride=2, bias=False), (2, 6, 5)),
    ("depthwise", dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, padding=1), (2, 4, 6, 7)),
    ("depthwise_multiplier", dict(in_channels=3, out_channels=6, kernel_size=(3, 2), groups=3, stride=2), (2, 3, 9, 8)),
    ("depthwise_strided_dilated", dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, stride=(2, 3), dilation=2, padding=(2, 1)), (2, 4, 11, 13)),
    ("depthwise_same_even", dict(in_channels=2, out_channels=2, kernel_size=4, groups=2, padding="same"), (1, 2, 7, 6)),
    ("depthwise_circular", dict(in_channels=3, out_channels=3, kernel_size=5, groups=3, padding=2, padding_mode="circular"), (2, 3, 6, 7)),
    ("depthwise_unbatched", dict(in_channels=3, out_channels=6, kernel_size=3, groups=3, padding=1), (3, 5, 4)),
    ("grouped", dict(in_channels=6, out_channels=9, kernel_size=3, groups=3, padding=1), (2, 6, 7, 6)),
    ("grouped_strided_replicate", dict(in_channels=4, out_channels=4, kernel_size=3, groups=2, stride=2, padding=(1, 2), padding_mode="replicate"), (2, 4, 9, 8)),
    ("dense_asymmetric_same", dict(in_channels=3, out_channels=4, kernel_size=(2, 4), padding="same", dilation=(3, 1)), (2, 3, 9, 8)),
    ("dense_strided_dilated", dict(in_channels=3, out_channels=5, kernel_size=3, stride=(2, 1), dilation=(1, 2), padding=2), (2, 3, 10, 9)),
    ("batch_0", dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (0, 3, 5, 5)),
]  # fmt: skip
CASE_IDS = [c[0] for c in SPECIAL_CASES]
CASE_ARGS = [c[1:] for c in SPECIAL_CASES]


def conv_and_input(kwargs: dict, shape: tuple[int, ...], dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**kwargs).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    return conv, x


def assert_matches_conv(strategy, conv, x, options=None, rtol=RTOL, atol=ATOL):
    """Output and gradients (input, weight, bias) of ``strategy`` against ``conv`` itself."""
    spec = ConvSpec.from_module(conv)
    params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    ref = conv(x)
    cotangent = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, *params], cotangent)
    out = STRATEGIES[strategy](x, conv.weight, conv.bias, spec, options)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    grads = torch.autograd.grad(out, [x, *params], cotangent)
    for name, got, want in zip(["input", "weight", "bias"], grads, ref_grads, strict=False):
        torch.testing.assert_close(
            got, want, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("strategy", FAST)
@pytest.mark.parametrize("kwargs, shape", CASE_ARGS, ids=CASE_IDS)
def test_fast_strategy_matches_conv2d_in_float64(kwargs, shape, strategy):
    conv, x = conv_and_input(kwargs, shape)
    assert_matches_conv(strategy, conv, x)


@pytest.mark.parametrize("kwargs, shape", CASE_ARGS, ids=CASE_IDS)
def test_auto_rule_matches_conv2d_with_a_small_workspace(kwargs, shape):
    # A cap a few patches wide: every chunking loop runs its row and column tiles.
    conv, x = conv_and_input(kwargs, shape)
    spec = ConvSpec.from_module(conv)
    cap = 3 * spec.in_channels * math.prod(spec.kernel_size) * 8
    assert_matches_conv(choose_strategy(spec), conv, x, StrategyOptions(max_workspace_bytes=cap))


# -- the float32 paths that run only without autograd --------------------------------------------

FLOAT32_CASES = [
    ("dense_3x3", dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), (2, 16, 20, 18)),
    # Outputs of 28x28 and more, stride 1 in height: the kernel-row GEMMs of ``nhwc``.
    ("dense_rows", dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), (2, 16, 30, 29)),
    ("dense_rows_dilated_sw2", dict(in_channels=8, out_channels=8, kernel_size=(3, 2), dilation=(2, 3), stride=(1, 2), padding=(2, 3)), (1, 8, 40, 60)),
    ("dense_7x7_s2", dict(in_channels=3, out_channels=8, kernel_size=7, stride=2, padding=3), (2, 3, 33, 30)),
    ("pointwise", dict(in_channels=32, out_channels=16, kernel_size=1), (3, 32, 9, 7)),
    ("pointwise_one_image", dict(in_channels=32, out_channels=16, kernel_size=1), (1, 32, 9, 7)),
    ("pointwise_unbatched", dict(in_channels=32, out_channels=16, kernel_size=1), (32, 9, 7)),
    ("pointwise_s2", dict(in_channels=32, out_channels=16, kernel_size=1, stride=2, bias=False), (2, 32, 9, 8)),
    ("patchify", dict(in_channels=3, out_channels=32, kernel_size=8, stride=8), (2, 3, 32, 40)),
    # Large planes take the planar depthwise path: blocks of planes, phases for strides.
    ("depthwise_planar", dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, padding=1), (2, 8, 50, 52)),
    ("depthwise_planar_multiplier", dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, padding=1, bias=False), (1, 4, 30, 31)),
    ("depthwise_planar_s2", dict(in_channels=6, out_channels=12, kernel_size=5, groups=6, stride=2, padding=2), (2, 6, 101, 99)),
    ("depthwise_planar_dilated", dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, dilation=(2, 3), padding=(3, 1)), (1, 4, 60, 55)),
    ("depthwise_small", dict(in_channels=32, out_channels=32, kernel_size=7, groups=32, padding=3), (2, 32, 7, 7)),
    ("grouped", dict(in_channels=16, out_channels=16, kernel_size=3, groups=4, stride=2, padding=1), (2, 16, 15, 16)),
    ("stem_3x3_s2", dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1), (2, 3, 17, 16)),
]  # fmt: skip


class OpRecorder(TorchDispatchMode):
    """Every ATen op dispatched while active, and the largest storage any of them allocated."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(str(func))
        # Views (unfold, slices) allocate nothing: only storages no operand already had count.
        seen = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out

    def conv_ops(self) -> list[str]:
        fragments = ("convolution", "conv2d", "conv_depthwise", "slow_conv")
        return sorted({op for op in self.ops if any(f in op for f in fragments)})


@pytest.mark.parametrize("strategy", [*FAST, "auto"])
@pytest.mark.parametrize(
    "kwargs, shape", [c[1:] for c in FLOAT32_CASES], ids=[c[0] for c in FLOAT32_CASES]
)
def test_float32_fast_paths_match_conv2d_and_run_no_conv(kwargs, shape, strategy, gemm_engine):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    x = torch.randn(shape)
    spec = ConvSpec.from_module(conv)
    name = choose_strategy(spec) if strategy == "auto" else strategy
    with torch.no_grad():
        ref = conv(x)
        with OpRecorder() as recorder:
            out = STRATEGIES[name](x, conv.weight, conv.bias, spec)
    assert recorder.conv_ops() == []
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_float32_gradients_through_the_onednn_gemm():
    conv, x = conv_and_input(FLOAT32_CASES[0][1], FLOAT32_CASES[0][2], dtype=torch.float32)
    assert_matches_conv("nhwc", conv, x, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_gemm_is_linear_and_uses_onednn_for_float32(onednn_gemm):
    torch.manual_seed(0)
    a, b, bias = torch.randn(2, 5, 16), torch.randn(7, 16), torch.randn(7)
    with OpRecorder() as recorder:
        out = gemm(a, b, bias)
    torch.testing.assert_close(out, F.linear(a, b, bias))
    assert any("_linear_pointwise" in op for op in recorder.ops)
    with OpRecorder() as recorder:  # float64 is not oneDNN's: plain addmm
        out = gemm(a.double(), b.double())
    torch.testing.assert_close(out, F.linear(a.double(), b.double()))
    assert not any("_linear_pointwise" in op for op in recorder.ops)


# -- the workspace cap -----------------------------------------------------------------------------


@given(
    batch=st.integers(0, 9),
    out_h=st.integers(1, 40),
    out_w=st.integers(1, 40),
    patch=st.integers(1, 600),
    itemsize=st.sampled_from([2, 4, 8]),
    slack=st.integers(0, 40_000),
)
def test_plan_chunks_fits_the_cap_and_covers_the_output(
    batch, out_h, out_w, patch, itemsize, slack
):
    pixel = patch * itemsize
    cap = pixel + slack
    plan = plan_chunks(batch, out_h, out_w, patch, itemsize, cap)
    assert plan.workspace_bytes <= cap
    assert plan.workspace_bytes == plan.images * plan.rows * plan.columns * pixel
    assert plan.rows == out_h or plan.images == 1
    assert plan.columns == out_w or plan.rows == 1
    tiles = math.ceil(batch / plan.images) * math.ceil(out_h / plan.rows)
    assert plan.chunks == tiles * math.ceil(out_w / plan.columns)
    # Fewest chunks: one more image, row or column per chunk would not fit.
    if plan.images < batch:
        grown = (plan.images + 1) * out_h * out_w * pixel if plan.rows == out_h else math.inf
        assert grown > cap or plan.rows < out_h


def test_plan_chunks_refuses_a_cap_below_one_pixel():
    with pytest.raises(ValueError, match=r"smaller than one output pixel.*at least 576"):
        plan_chunks(1, 4, 4, 72, 8, 575)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1MB"])
def test_strategy_options_refuse_a_non_positive_or_non_int_cap(bad):
    with pytest.raises(ValueError, match="max_workspace_bytes"):
        StrategyOptions(max_workspace_bytes=bad)


CAPPED_STRATEGIES = ["unfold", "strided", "nhwc", "nchw", "patchify"]
# (id, conv kwargs, input shape): each with a full im2col buffer several times larger than its
# (padded) input and its output, so that a cap in between is what bounds the largest tensor.
CAPPED_CASES = [
    ("dense_3x3", dict(in_channels=32, out_channels=8, kernel_size=3, padding=1), (3, 32, 12, 11)),
    ("dense_5x5_s2_dilated", dict(in_channels=16, out_channels=4, kernel_size=5, stride=(1, 2), dilation=2, padding=4), (2, 16, 15, 18)),
    ("grouped_reflect", dict(in_channels=16, out_channels=8, kernel_size=3, groups=4, padding=1, padding_mode="reflect"), (2, 16, 14, 13)),
    ("patchify", dict(in_channels=16, out_channels=8, kernel_size=2, stride=2), (4, 16, 14, 12)),
]  # fmt: skip


def tensor_bytes(shape: tuple[int, ...], itemsize: int = 8) -> int:
    return math.prod(shape) * itemsize


@pytest.mark.parametrize("strategy", CAPPED_STRATEGIES)
@pytest.mark.parametrize(
    "kwargs, shape", [c[1:] for c in CAPPED_CASES], ids=[c[0] for c in CAPPED_CASES]
)
def test_max_workspace_bytes_bounds_every_buffer(kwargs, shape, strategy):
    """No tensor the arithmetic allocates is larger than the cap, except copies of the (padded)
    input and the output itself, which are not im2col buffers."""
    conv, x = conv_and_input(kwargs, shape)
    spec = ConvSpec.from_module(conv)
    n, c, h, w = shape
    oh, ow = spec.output_hw(h, w)
    full = spec.im2col_bytes(n, h, w, torch.float64)
    cap = full // 4
    padded = tensor_bytes((n, c, h + spec.pad[2] + spec.pad[3], w + spec.pad[0] + spec.pad[1]))
    bound = max(cap, padded, tensor_bytes((n, spec.out_channels, oh, ow)))
    with torch.no_grad():
        with OpRecorder() as uncapped:
            STRATEGIES[strategy](x, conv.weight, conv.bias, spec)
        with OpRecorder() as capped:
            out = STRATEGIES[strategy](x, conv.weight, conv.bias, spec, StrategyOptions(cap))
        ref = conv(x)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert capped.largest <= bound, f"{strategy}: a {capped.largest}-byte tensor, cap {cap}"
    # The computed plan says the same: several chunks, the largest one's buffer fits.
    plan = plan_chunks(n, oh, ow, spec.in_channels * math.prod(spec.kernel_size), 8, cap)
    assert plan.chunks > 1 and plan.workspace_bytes <= cap
    # The control: without a cap, each of these builds the whole im2col buffer at once.
    assert uncapped.largest >= full > cap


@pytest.mark.parametrize("divisor", [4, 16, 256], ids=["images", "row_blocks", "columns"])
def test_max_workspace_bytes_bounds_the_float32_fast_path(divisor):
    # float32 without autograd: oneDNN's GEMM, and for this size the kernel-row buffers.
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(2, 16, 32, 32)
    spec = ConvSpec.from_module(conv)
    cap = spec.im2col_bytes(2, 32, 32, torch.float32) // divisor
    bound = max(cap, tensor_bytes((2, 16, 34, 34), 4), tensor_bytes((2, 8, 32, 32), 4))
    with torch.no_grad():
        with OpRecorder() as recorder:
            out = STRATEGIES["nhwc"](x, conv.weight, conv.bias, spec, StrategyOptions(cap))
        ref = conv(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert recorder.largest <= bound
    assert recorder.conv_ops() == []


def test_max_workspace_bytes_too_small_for_one_pixel_says_so():
    conv, x = conv_and_input(CAPPED_CASES[0][1], CAPPED_CASES[0][2])
    spec = ConvSpec.from_module(conv)
    with pytest.raises(ValueError, match="max_workspace_bytes=100 is smaller than one output"):
        STRATEGIES["unfold"](x, conv.weight, conv.bias, spec, StrategyOptions(100))


def test_capped_strategy_traces_to_one_chunked_node_that_serves_new_sizes():
    conv, _ = conv_and_input(CAPPED_CASES[0][1], CAPPED_CASES[0][2])
    spec = ConvSpec.from_module(conv)
    options = StrategyOptions(20_000)

    def lowered(x, weight, bias):
        return STRATEGIES["unfold"](x, weight, bias, spec, options)

    gm = torch.fx.symbolic_trace(lowered)
    assert "run_in_chunks('unfold'" in gm.code and "20000" in gm.code
    for shape in [(1, 32, 12, 11), (5, 32, 20, 9), (32, 9, 13)]:
        x = torch.randn(shape, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(gm(x, conv.weight, conv.bias), conv(x), rtol=RTOL, atol=ATOL)


def test_auto_rules():
    def spec(**kwargs) -> ConvSpec:
        kwargs.setdefault("bias", False)
        shape = kwargs.pop("shape")
        return ConvSpec.from_conv_args(shape, **kwargs)

    assert choose_strategy(spec(shape=(64, 256, 1, 1))) == "pointwise"
    assert choose_strategy(spec(shape=(64, 256, 1, 1), stride=2)) == "pointwise"
    assert choose_strategy(spec(shape=(768, 3, 16, 16), stride=16)) == "nchw"
    assert choose_strategy(spec(shape=(192, 96, 2, 2), stride=2)) == "nchw"
    assert choose_strategy(spec(shape=(768, 384, 2, 2), stride=2)) == "nhwc"
    assert choose_strategy(spec(shape=(96, 1, 7, 7), padding=3, groups=96)) == "depthwise"
    assert choose_strategy(spec(shape=(48, 8, 3, 3), padding=1, groups=6)) == "taps"
    assert choose_strategy(spec(shape=(48, 8, 3, 3), stride=2, padding=1, groups=6)) == "nchw"
    assert choose_strategy(spec(shape=(32, 3, 3, 3), stride=2, padding=1)) == "nchw"
    assert choose_strategy(spec(shape=(64, 64, 3, 3), padding=1)) == "taps"
    assert choose_strategy(spec(shape=(128, 64, 3, 3), stride=2, padding=1)) == "nhwc"
    assert choose_strategy(spec(shape=(64, 3, 7, 7), stride=2, padding=3)) == "nchw"


# -- through lower() --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["unfold", "strided", "auto"])
def test_lower_honours_max_workspace_bytes(strategy):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 8, 3, padding=1, groups=2, padding_mode="reflect"),
    ).double()
    x = torch.randn(3, 16, 12, 11, dtype=torch.float64)
    spec = ConvSpec.from_module(model[0])
    cap = spec.im2col_bytes(3, 12, 11, torch.float64) // 8
    uncapped = lowerconv.lower(model, strategy=strategy)
    capped = lowerconv.lower(model, strategy=strategy, max_workspace_bytes=cap)
    # The padded input of the second conv, with the spare zero row of auto's tap GEMMs.
    bound = max(cap, tensor_bytes((3, 32, 15, 13)))
    with torch.no_grad():
        with OpRecorder() as big:
            uncapped(x)
        with OpRecorder() as small:
            out = capped(x)
        torch.testing.assert_close(out, model(x), rtol=RTOL, atol=ATOL)
        # The lowered graph serves other sizes under the same cap.
        y = torch.randn(2, 16, 17, 9, dtype=torch.float64)
        torch.testing.assert_close(capped(y), model(y), rtol=RTOL, atol=ATOL)
    assert big.largest > bound >= small.largest
    assert small.conv_ops() == []


def test_lower_refuses_a_bad_max_workspace_bytes():
    with pytest.raises(lowerconv.LoweringError, match="max_workspace_bytes"):
        lowerconv.lower(nn.Conv2d(3, 4, 3), max_workspace_bytes=0)


# -- what lowerconv graph reports: each strategy's real im2col buffer -------------------------


# (strategy, nn.Conv2d keyword arguments, input shape)
WORKSPACE_CASES = [
    ("unfold", dict(in_channels=8, out_channels=4, kernel_size=3, padding=1), (2, 8, 12, 12)),
    ("strided", dict(in_channels=8, out_channels=4, kernel_size=3, stride=2), (2, 8, 13, 11)),
    ("nchw", dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, padding=1), (2, 8, 12, 12)),
    ("nhwc", dict(in_channels=8, out_channels=4, kernel_size=3, stride=2, padding=1), (2, 8, 12, 12)),
    ("nhwc", dict(in_channels=16, out_channels=8, kernel_size=3, padding=1), (1, 16, 40, 40)),
    ("patchify", dict(in_channels=3, out_channels=8, kernel_size=4, stride=4), (2, 3, 16, 16)),
    ("depthwise", dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, padding=1), (2, 8, 12, 12)),
    ("pointwise", dict(in_channels=8, out_channels=4, kernel_size=1), (2, 8, 12, 12)),
    # The tap GEMMs build nothing; a one-group output under 28x28 runs nhwc's im2col.
    ("taps", dict(in_channels=16, out_channels=8, kernel_size=3, padding=1), (1, 16, 40, 40)),
    ("taps", dict(in_channels=16, out_channels=8, kernel_size=3, padding=1), (2, 16, 12, 12)),
    ("taps", dict(in_channels=16, out_channels=16, kernel_size=3, groups=4, padding=1), (2, 16, 12, 12)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "kwargs", "shape"),
    WORKSPACE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(WORKSPACE_CASES)],
)
def test_workspace_bytes_is_the_largest_buffer_the_strategy_allocates(strategy, kwargs, shape):
    from lowerconv.lowering.strategies import workspace_bytes

    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    x = torch.randn(shape)
    spec = ConvSpec.from_module(conv)
    with torch.no_grad():
        out = conv(x)
        with StorageSizes() as seen:
            STRATEGIES[strategy](x, conv.weight, conv.bias, spec)
    predicted = workspace_bytes(spec, strategy, shape[0], shape[2], shape[3], torch.float32)
    # Tensors the size of the input (a padded or channels-last copy) or of the output are not
    # im2col buffers; the largest of the rest is.
    plain = {x.nbytes, out.nbytes}
    padded = (shape[2] + 2) * (shape[3] + 2) * shape[0] * shape[1] * 4
    if strategy == "taps":
        # The tap GEMMs' padded copy has a spare zero row, their output rows the padded width.
        plain.add((shape[2] + 3) * (shape[3] + 2) * shape[0] * shape[1] * 4)
        plain.add(out.nbytes // shape[3] * (shape[3] + 2))
    buffers = [size for size in seen.sizes if size not in plain and size != padded]
    if predicted == 0:
        assert max(buffers, default=0) <= max(x.nbytes, out.nbytes), seen.sizes
    elif predicted in plain:  # patchify: the patches, without overlap, are the input's size
        assert predicted in seen.sizes and max(buffers, default=0) < predicted, seen.sizes
    else:
        assert max(buffers) == predicted, (sorted(seen.sizes), predicted)
    assert predicted <= spec.im2col_bytes(shape[0], shape[2], shape[3], torch.float32)


# The other kinds: (strategy, module, input shape).
KIND_WORKSPACE_CASES = [
    ("unfold", lambda: nn.Conv3d(4, 6, 3, padding=1), (2, 4, 5, 6, 7)),
    ("nchw", lambda: nn.Conv3d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 6, 7)),
    ("strided", lambda: nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2)), (1, 4, 3, 9, 9)),
    ("depthwise", lambda: nn.Conv3d(4, 4, 3, padding=1, groups=4), (2, 4, 5, 6, 7)),
    ("unfold", lambda: nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), (2, 4, 5, 6)),
    ("unfold", lambda: nn.ConvTranspose3d(4, 3, 3, stride=2), (2, 4, 3, 4, 5)),
    ("unfold", lambda: nn.ConvTranspose1d(4, 3, 4, stride=2), (2, 4, 9)),
    ("nchw", lambda: nn.Conv1d(4, 6, 5, padding=2), (2, 4, 30)),
]


@pytest.mark.parametrize(
    ("strategy", "make", "shape"),
    KIND_WORKSPACE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(KIND_WORKSPACE_CASES)],
)
def test_workspace_bytes_of_the_other_kinds(strategy, make, shape):
    from lowerconv.lowering.strategies import workspace_bytes

    torch.manual_seed(0)
    conv = make()
    x = torch.randn(shape)
    spec = ConvSpec.from_module(conv)
    with torch.no_grad():
        out = conv(x)
        with StorageSizes() as seen:
            STRATEGIES[strategy](x, conv.weight, conv.bias, spec)
    predicted = workspace_bytes(spec, strategy, shape[0], *shape[2:], torch.float32)
    padded_shape = [n + lo + hi for n, (lo, hi) in zip(shape[2:], spec.pad_per_dim, strict=True)]
    padded = shape[0] * shape[1] * 4 * int(torch.tensor(padded_shape).prod())
    plain = {x.nbytes, out.nbytes, padded}
    buffers = [size for size in seen.sizes if size not in plain]
    if predicted == 0:
        assert max(buffers, default=0) <= max(x.nbytes, out.nbytes), seen.sizes
    else:
        assert max(buffers) == predicted, (sorted(seen.sizes), predicted)
    assert predicted <= spec.im2col_bytes(shape[0], *shape[2:], torch.float32)


def test_the_gemm_engine_follows_lowerconv_gemm(monkeypatch):
    from lowerconv.lowering import engine

    monkeypatch.setenv("LOWERCONV_GEMM", "blas")
    assert engine.choose_gemm_engine() is False
    monkeypatch.setenv("LOWERCONV_GEMM", "onednn")
    assert engine.choose_gemm_engine() is engine.onednn_linear_available()
    monkeypatch.setenv("LOWERCONV_GEMM", "")
    intel = engine.cpu_vendor() == "GenuineIntel"
    assert engine.choose_gemm_engine() is (engine.onednn_linear_available() and not intel)
    monkeypatch.setenv("LOWERCONV_GEMM", "mkl")
    with pytest.raises(ValueError, match="LOWERCONV_GEMM must be 'onednn' or 'blas', got 'mkl'"):
        engine.choose_gemm_engine()
