"""The CUDA plan (``lowerconv.lowering.cuda_plan``): pinned on CPU tensors with ``target="cuda"``.

What a GPU pays for is launches and bytes, so the plan is pinned by what it dispatches: no
``im2col``/``col2im`` (one kernel per image on CUDA), and a number of non-view ATen ops per conv
that does not grow with the batch and stays within a budget per form.  Its arithmetic is checked
against ``F.conv*`` in float64 over the configuration space, and ``auto`` is checked to follow
the input's device.  Tests named ``*cuda_device*`` need a GPU and skip without one.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowerconv
from lowerconv import ConvSpec, LoweringError
from lowerconv.lowering import cuda_plan
from lowerconv.lowering.cuda_plan import (
    BANDED_MAX_WIDTH,
    cuda_conv,
    cuda_form,
    cuda_workspace_bytes,
    planned,
)
from lowerconv.lowering.strategies import workspace_bytes
from op_names import OpNames, StorageSizes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (module, input side, form, the most non-view ops the form may dispatch per call)
FORMS = [
    (nn.Conv2d(16, 32, 3, padding=1), 12, "gemm", 3),  # pad, gather, baddbmm
    (nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), 12, "gemm", 3),  # pad, gather, bmm
    (nn.Conv2d(3, 8, 7, stride=2, padding=3), 16, "gemm", 3),  # a stem
    (nn.Conv2d(3, 8, 4, stride=4), 16, "gemm", 2),  # a patch embedding: gather, baddbmm
    (nn.Conv2d(16, 16, 3, padding=1, groups=4), 12, "gemm", 5),  # + the weight per image, bias
    (nn.Conv2d(16, 32, 1), 12, "pointwise", 1),  # baddbmm on the planes as they lie
    (nn.Conv2d(16, 32, 1, stride=2), 12, "pointwise", 2),  # the strided pixels, then the GEMM
    (nn.Conv2d(16, 16, 3, padding=1, groups=16), 12, "depthwise_banded", 6),
    (nn.Conv2d(16, 32, 7, padding=3, groups=16), 12, "depthwise_banded", 6),
    (nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), 12, "depthwise_banded", 5),
    (nn.Conv1d(16, 16, 5, padding=2, groups=16), 12, "depthwise_banded", 6),
    (nn.Conv3d(8, 8, 3, padding=1, groups=8), 6, "depthwise_gemm", 5),
    (nn.Conv3d(8, 16, 3, padding=1), 6, "gemm", 3),
    (nn.Conv1d(8, 16, 3, padding=1), 12, "gemm", 3),
    # The GEMM, the zeroed full output, one add per tap (16), the crop with the bias.
    (nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), 8, "gemm", 19),
    (nn.ConvTranspose2d(16, 8, 3, padding=1), 8, "gemm", 5),  # a conv: + the flipped kernel
]
FORM_IDS = [f"{type(m).__name__}-{ConvSpec.from_module(m).describe()}" for m, *_ in FORMS]


def spatial(module: nn.Module, side: int) -> tuple[int, ...]:
    return (side,) * (module.weight.dim() - 2)


def plan_ops(module: nn.Module, x: torch.Tensor) -> OpNames:
    """What one call dispatches, after a first call (which builds the banded form's cached
    tap selector)."""
    spec = ConvSpec.from_module(module)
    with torch.no_grad():
        cuda_conv(x, module.weight, module.bias, spec)
        with OpNames() as ops:
            cuda_conv(x, module.weight, module.bias, spec)
    return ops


@pytest.mark.parametrize(("module", "side", "form", "budget"), FORMS, ids=FORM_IDS)
def test_plan_dispatches_a_fixed_number_of_ops_and_no_im2col(module, side, form, budget):
    spec = ConvSpec.from_module(module)
    assert cuda_form(spec) == form
    counts = {}
    for batch in (2, 4, 16):
        x = torch.randn(batch, spec.in_channels, *spatial(module, side))
        ops = plan_ops(module, x)
        assert not ops.convs, ops.names
        assert not [n for n in ops.names if "im2col" in n or "col2im" in n], ops.names
        counts[batch] = sum(ops.non_views.values())
    assert len(set(counts.values())) == 1, f"ops per call grow with the batch: {counts}"
    assert counts[2] <= budget, f"{form}: {counts[2]} non-view ops, budget {budget}"


def test_channels_last_input_gets_a_channels_last_output_and_no_layout_copy_of_it():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(4, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    spec = ConvSpec.from_module(conv)
    assert cuda_form(spec, channels_last=True) == "gemm_nhwc"
    ops = plan_ops(conv, x)
    # pad, the columns, the weight's (kh, kw, C) order, addmm: no permute copy of the output.
    assert sum(ops.non_views.values()) <= 4, ops.non_views
    with torch.no_grad():
        out = cuda_conv(x, conv.weight, conv.bias, spec)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, conv(x), rtol=1e-4, atol=1e-5)


def test_a_1x1_conv_on_channels_last_is_one_addmm():
    conv = nn.Conv2d(16, 32, 1)
    x = torch.randn(4, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    ops = plan_ops(conv, x)
    assert dict(ops.non_views) == {"aten.addmm.default": 1}


CONV_TYPES = {
    (1, False): nn.Conv1d,
    (2, False): nn.Conv2d,
    (3, False): nn.Conv3d,
    (1, True): nn.ConvTranspose1d,
    (2, True): nn.ConvTranspose2d,
    (3, True): nn.ConvTranspose3d,
}


@st.composite
def conv_configs(draw):
    ndim = draw(st.sampled_from([1, 2, 2, 2, 3]))
    transposed = draw(st.booleans()) and draw(st.booleans())
    depthwise = draw(st.booleans())
    channels = draw(st.sampled_from([1, 2, 3, 4, 6]))
    if depthwise:
        groups, out = channels, channels * draw(st.sampled_from([1, 2]))
    else:
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.sampled_from([1, 2, 3, 5])) for _ in range(ndim))
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(ndim))
    dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
    size = tuple(draw(st.integers(k * d, k * d + 7)) for k, d in zip(kernel, dilation, strict=True))
    if transposed:
        padding = tuple(
            draw(st.integers(0, d * (k - 1))) for k, d in zip(kernel, dilation, strict=True)
        )
        extra = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
        )
        module = CONV_TYPES[ndim, True](
            channels, out, kernel, stride, padding, extra, groups, draw(st.booleans()), dilation
        )
    else:
        mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
        padding = tuple(
            draw(st.integers(0, min(k * d // 2, n - 1)))
            for k, d, n in zip(kernel, dilation, size, strict=True)
        )
        module = CONV_TYPES[ndim, False](
            channels, out, kernel, stride, padding, dilation, groups, draw(st.booleans()), mode
        )
    batch = draw(st.sampled_from([0, 1, 2, 3]))
    channels_last = ndim == 2 and draw(st.booleans())
    return module.double(), (batch, channels, *size), channels_last


@settings(max_examples=150, deadline=None)
@given(conv_configs())
def test_plan_equals_the_conv_in_float64(config):
    module, shape, channels_last = config
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    spec = ConvSpec.from_module(module)
    out = cuda_conv(x, module.weight, module.bias, spec)
    torch.testing.assert_close(out, module(x), rtol=1e-10, atol=1e-10)
    if shape[0] == 1:  # unbatched
        torch.testing.assert_close(
            cuda_conv(x[0], module.weight, module.bias, spec), module(x[0]), rtol=1e-10, atol=1e-10
        )


@settings(max_examples=120, deadline=None)
@given(
    conv_configs(),
    st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    st.sampled_from([cuda_plan.SMALL_CALL_BYTES, 0]),
)
def test_the_eager_fast_path_equals_the_conv(config, dtype, small_call_bytes):
    """``planned`` without gradients: the per-shape recipe; for small calls the sampled gather
    (float32/64) or the pad and strided gather (bfloat16) and depthwise by columns, for large
    ones the pad and strided gather and the banded depthwise form."""
    with mock.patch.object(cuda_plan, "SMALL_CALL_BYTES", small_call_bytes):
        check_fast_path(config, dtype)


def check_fast_path(config, dtype):
    module, shape, channels_last = config
    module = module.to(dtype)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    spec = ConvSpec.from_module(module)
    with torch.no_grad():
        out = planned(x, module.weight, module.bias, spec)
        expected = module.double()(x.double())
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


# (module, the fast path's non-view ops per call): one gather, one GEMM, and for groups the
# weight broadcast per image and the bias.
FAST_PATH = [
    (nn.Conv2d(16, 32, 3, padding=1), {"aten.grid_sampler_2d.default", "aten.baddbmm.default"}),
    (
        nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
        {"aten.grid_sampler_2d.default", "aten.bmm.default"},
    ),
    (nn.Conv2d(16, 32, 3, padding=1, dilation=2, groups=4), None),
    (nn.Conv2d(16, 32, 1), {"aten.baddbmm.default"}),
    (
        nn.Conv2d(16, 32, 1, stride=2, bias=False),
        {"aten.grid_sampler_2d.default", "aten.bmm.default"},
    ),
    (nn.Conv2d(16, 16, 3, padding=1, groups=16), None),  # small: columns, not the band
]


@pytest.mark.parametrize(
    ("conv", "ops_expected"),
    FAST_PATH,
    ids=[ConvSpec.from_module(c).describe() for c, _ in FAST_PATH],
)
def test_the_eager_fast_path_gathers_once_without_padding_or_im2col(conv, ops_expected):
    spec = ConvSpec.from_module(conv)
    counts = {}
    for batch in (1, 2, 16):
        x = torch.randn(batch, spec.in_channels, 12, 12)
        with torch.no_grad():
            planned(x, conv.weight, conv.bias, spec)
            with OpNames() as ops:
                out = planned(x, conv.weight, conv.bias, spec)
            torch.testing.assert_close(out, conv(x), rtol=1e-4, atol=1e-5)
        assert not ops.convs and not [n for n in ops.names if "im2col" in n], ops.names
        assert "aten.constant_pad_nd.default" not in ops.names, ops.names
        assert "aten.sum.dim_IntList" not in ops.names, ops.names  # no banded form
        counts[batch] = sum(ops.non_views.values())
        if ops_expected is not None:
            assert set(ops.non_views) == ops_expected, ops.non_views
    # (At batch 1 a grouped GEMM needs no copy of the weight per image.)
    assert counts[2] == counts[16] and max(counts.values()) <= 4, counts


def test_large_calls_pad_and_copy_and_keep_the_banded_depthwise_form(monkeypatch):
    """Above :data:`SMALL_CALL_BYTES` bytes count: the pad and one copy (a copy kernel streams
    faster than sampling), and depthwise convs the banded form."""
    monkeypatch.setattr(cuda_plan, "SMALL_CALL_BYTES", 0)
    for conv, expected in (
        (nn.Conv2d(16, 32, 3, padding=1, bias=False), "aten.constant_pad_nd.default"),
        (nn.Conv2d(16, 16, 3, padding=1, groups=16), "aten.sum.dim_IntList"),
    ):
        spec = ConvSpec.from_module(conv)
        x = torch.randn(2, 16, 12, 12)
        with torch.no_grad(), OpNames() as ops:
            out = planned(x, conv.weight, conv.bias, spec)
        assert expected in ops.names and "aten.grid_sampler_2d.default" not in ops.names
        torch.testing.assert_close(out, conv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("width", [BANDED_MAX_WIDTH - 2, BANDED_MAX_WIDTH + 8])
def test_wide_depthwise_inputs_use_columns_and_agree(width):
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4).double()
    x = torch.randn(2, 4, 5, width, dtype=torch.float64)
    spec = ConvSpec.from_module(conv)
    ops = plan_ops(conv, x)
    banded = width + 2 <= BANDED_MAX_WIDTH
    expected_form = "depthwise_banded" if banded else "depthwise_gemm"
    assert cuda_form(spec, padded_width=width + 2) == expected_form
    assert ("aten.sum.dim_IntList" in ops.names) == banded, ops.names
    torch.testing.assert_close(cuda_conv(x, conv.weight, conv.bias, spec), conv(x))
    itemsize, padded_rows = 8, 7
    expected = 2 * 4 * padded_rows * 3 * width * itemsize if banded else 2 * 36 * 5 * width * 8
    assert cuda_workspace_bytes(spec, 2, (5, width), itemsize) == expected


def test_plan_gradients_match_the_conv_in_float64():
    for conv in (
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 8, 5, stride=2, padding=2, groups=4),
        nn.Conv2d(4, 6, 1, stride=2),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
    ):
        conv = conv.double()
        spec = ConvSpec.from_module(conv)
        x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
        inputs = (x, conv.weight, conv.bias)
        assert torch.autograd.gradcheck(lambda *a, spec=spec: cuda_conv(*a, spec), inputs)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)

    def forward(self, x):
        return self.grouped(F.relu(self.pw(self.dw(F.relu(self.stem(x))))))


def test_target_cuda_lowers_every_conv_to_the_plan_and_runs_on_cpu():
    torch.manual_seed(0)
    model = SmallNet().eval()
    lowered = lowerconv.lower(model, strategy="auto", target="cuda")
    record = lowerconv.lowering_record(lowered)
    assert record.strategies_used() == {"cuda": 4}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), OpNames() as ops:
        out = lowered(x)
    assert not ops.convs and not [n for n in ops.names if "im2col" in n]
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


def test_auto_without_target_plans_per_call_by_the_inputs_device():
    torch.manual_seed(0)
    model = SmallNet().eval()
    lowered = lowerconv.lower(model, strategy="auto")
    record = lowerconv.lowering_record(lowered)
    # Recorded as the CPU choice; on a GPU the same node runs the CUDA plan.
    assert all(c.cuda_strategy == "cuda" for c in record.lowered)
    assert {c.strategy for c in record.lowered} <= set(lowerconv.STRATEGY_NAMES)
    assert "auto_conv(" in lowered.code
    cpu_only = lowerconv.lower(model, strategy="auto", target="cpu")
    assert "auto_conv(" not in cpu_only.code
    assert all(c.cuda_strategy == "" for c in lowerconv.lowering_record(cpu_only).lowered)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), cpu_only(x))


def test_an_unknown_target_is_refused_with_the_fix():
    with pytest.raises(LoweringError, match=r"target must be one of .*'gpu'.*target='cuda'"):
        lowerconv.lower(SmallNet(), strategy="auto", target="gpu")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_device_model_lowered_on_cpu_then_moved_runs_the_plan(dtype):
    torch.manual_seed(0)
    model = SmallNet().eval()
    lowered = lowerconv.lower(model, strategy="auto").to("cuda", dtype)
    model = model.to("cuda", dtype)
    x = torch.randn(4, 3, 32, 32, device="cuda", dtype=dtype)
    with torch.no_grad(), OpNames() as ops:
        out = lowered(x)
    assert not ops.convs and not [n for n in ops.names if "im2col" in n], ops.names
    assert "aten.bmm.default" in ops.names or "aten.baddbmm.default" in ops.names
    with torch.no_grad():
        expected = model(x)
    tolerance = 1e-2 if dtype == torch.float16 else 1e-3
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


@needs_cuda
def test_cuda_device_training_step_gradients_match_native():
    torch.manual_seed(0)
    model = SmallNet().cuda().double()
    lowered = lowerconv.lower(model, strategy="auto")
    x = torch.randn(4, 3, 16, 16, device="cuda", dtype=torch.float64)
    grad = torch.randn_like(model(x))
    with OpNames() as ops:
        lowered(x).backward(grad)
    assert not ops.convs, ops.names
    model(x).backward(grad)
    for (name, p), q in zip(model.named_parameters(), lowered.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Conv2d(16, 16, 5, padding=2, groups=16),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
    ],
    ids=lambda c: ConvSpec.from_module(c).describe(),
)
def test_workspace_bytes_is_the_largest_buffer_the_plan_allocates(conv):
    spec = ConvSpec.from_module(conv)
    x = torch.randn(4, spec.in_channels, 12, 12)
    with torch.no_grad():
        cuda_conv(x, conv.weight, conv.bias, spec)  # caches the banded selector
        with StorageSizes() as sizes:
            cuda_conv(x, conv.weight, conv.bias, spec)
    assert max(sizes.sizes) == workspace_bytes(spec, "cuda", 4, 12, 12, torch.float32)
    assert workspace_bytes(spec, "auto", 4, 12, 12, torch.float32, device="cuda") == max(
        sizes.sizes
    )
