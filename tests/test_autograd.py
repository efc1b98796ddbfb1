"""The lowered convs' own backward (lowerconv.lowering.autograd): GEMMs and col2im, equal to
PyTorch's.

``tests/test_strategies.py`` compares every strategy's gradients with ``F.conv2d``'s; here: that
the fast strategies really take :class:`~lowerconv.lowering.autograd.GemmConv2d`'s formulas (so
those comparisons test them), that its backward runs no convolution op and no scatter through
per-tap views, and the formulas alone, in float64, on the configurations that stress their index
arithmetic (strides that do not divide the input, dilation, asymmetric padding, multipliers).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowerconv
from lowerconv import ConvSpec
from lowerconv.lowering.autograd import ConvGeometry, conv2d_input_grad, conv2d_weight_grad
from lowerconv.lowering.strategies import STRATEGIES, StrategyOptions
from op_names import CONV_OP, OpNames, StorageSizes

RTOL, ATOL = 1e-10, 1e-11

# (id, nn.Conv2d keyword arguments, input shape)
CASES = [
    ("3x3", dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), (2, 4, 9, 8)),
    ("stride_uneven", dict(in_channels=3, out_channels=5, kernel_size=3, stride=(2, 3)), (2, 3, 12, 13)),
    ("dilation", dict(in_channels=3, out_channels=4, kernel_size=3, dilation=(2, 3), padding=(1, 4)), (1, 3, 11, 12)),
    ("same_even", dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"), (2, 3, 7, 6)),
    ("pad_beyond_kernel", dict(in_channels=2, out_channels=3, kernel_size=2, padding=3), (2, 2, 5, 4)),
    ("stem_7x7_s2", dict(in_channels=3, out_channels=8, kernel_size=7, stride=2, padding=3), (2, 3, 17, 18)),
    ("grouped", dict(in_channels=6, out_channels=9, kernel_size=3, groups=3, padding=1), (2, 6, 8, 7)),
    ("grouped_strided", dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, stride=2, padding=1), (2, 8, 9, 9)),
    ("pointwise", dict(in_channels=5, out_channels=7, kernel_size=1), (2, 5, 6, 7)),
    ("pointwise_strided", dict(in_channels=5, out_channels=3, kernel_size=1, stride=2), (2, 5, 7, 6)),
    ("depthwise", dict(in_channels=5, out_channels=5, kernel_size=3, groups=5, padding=1), (2, 5, 8, 9)),
    ("depthwise_7x7", dict(in_channels=4, out_channels=4, kernel_size=7, groups=4, padding=3), (2, 4, 9, 10)),
    ("depthwise_5x5_s2", dict(in_channels=4, out_channels=4, kernel_size=5, groups=4, stride=2, padding=2), (2, 4, 11, 10)),
    ("depthwise_multiplier_dilated", dict(in_channels=3, out_channels=6, kernel_size=(3, 2), groups=3, stride=(2, 1), dilation=2, padding=(2, 1)), (2, 3, 10, 9)),
    ("depthwise_1x1_stride_w", dict(in_channels=2, out_channels=2, kernel_size=1, groups=2, stride=(1, 2)), (2, 2, 3, 4)),
    ("depthwise_stride_3", dict(in_channels=2, out_channels=2, kernel_size=3, groups=2, stride=3), (1, 2, 11, 10)),
]  # fmt: skip
CASE_IDS = [c[0] for c in CASES]
CASE_ARGS = [c[1:] for c in CASES]


def _conv_and_input(kwargs, shape, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**kwargs).double()
    return conv, torch.randn(shape, dtype=torch.float64, requires_grad=True)


def _geometry(spec: ConvSpec, workspace_bytes: int) -> ConvGeometry:
    return ConvGeometry(
        spec.kernel_size, spec.stride, spec.dilation, spec.pad, spec.groups, workspace_bytes
    )


@pytest.mark.parametrize("workspace_bytes", [2**30, 256], ids=["whole", "chunked"])
@pytest.mark.parametrize("kwargs, shape", CASE_ARGS, ids=CASE_IDS)
def test_formulas_equal_conv2d_gradients(kwargs, shape, workspace_bytes):
    conv, x = _conv_and_input(kwargs, shape)
    spec = ConvSpec.from_module(conv)
    out = conv(x)
    grad = torch.randn_like(out)
    want_x, want_w = torch.autograd.grad(out, (x, conv.weight), grad)
    geometry = _geometry(spec, workspace_bytes)
    with torch.no_grad():
        got_x = conv2d_input_grad(grad, conv.weight, x.shape, geometry)
        got_w = conv2d_weight_grad(grad, x, conv.weight.shape, geometry)
    torch.testing.assert_close(got_x, want_x, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got_w, want_w, rtol=RTOL, atol=ATOL)


# Strategies whose eager calls take GemmConv2d's backward; unfold does with a workspace cap.
GEMM_BACKWARD = [
    ("nhwc", None),
    ("nchw", None),
    ("pointwise", None),
    ("depthwise", None),
    ("unfold", 4096),
]


@pytest.mark.parametrize("strategy, cap", GEMM_BACKWARD, ids=[s for s, _ in GEMM_BACKWARD])
@pytest.mark.parametrize("kwargs, shape", CASE_ARGS, ids=CASE_IDS)
def test_fast_strategies_take_the_gemm_backward(kwargs, shape, strategy, cap):
    conv, x = _conv_and_input(kwargs, shape)
    spec = ConvSpec.from_module(conv)
    if strategy == "depthwise" and not spec.is_depthwise:
        pytest.skip("depthwise runs nhwc here, covered by its own case")
    if strategy == "pointwise" and spec.kernel_size == (1, 1) and spec.groups > 1:
        pytest.skip("a grouped 1x1 conv is one batched matmul, which autograd differentiates")
    out = STRATEGIES[strategy](x, conv.weight, conv.bias, spec, StrategyOptions(cap))
    assert type(out.grad_fn).__name__ == "GemmConv2dBackward", out.grad_fn
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
    want = torch.autograd.grad(conv(x), (x, conv.weight, conv.bias), grad)
    for name, a, b in zip(("input", "weight", "bias"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")


def test_gemm_backward_passes_gradcheck():
    conv, x = _conv_and_input(
        dict(in_channels=2, out_channels=3, kernel_size=3, stride=2), (1, 2, 7, 6)
    )
    dw, dx = _conv_and_input(
        dict(in_channels=3, out_channels=3, kernel_size=3, groups=3, padding=1), (1, 3, 5, 6)
    )
    for module, inp, strategy in [(conv, x, "nhwc"), (dw, dx, "depthwise")]:
        spec = ConvSpec.from_module(module)
        fn = STRATEGIES[strategy]
        assert torch.autograd.gradcheck(
            lambda i, w, b, fn=fn, spec=spec: fn(i, w, b, spec), (inp, module.weight, module.bias)
        )  # fmt: skip


# (strategy, nn.Conv2d keyword arguments, input shape): each fast strategy on a conv it
# serves with its own kernel (taps: stride 1 and 28x28 outputs, so the tap GEMMs run).
SECOND_DERIVATIVE_CASES = [
    ("nhwc", dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (1, 2, 7, 6)),
    (
        "nchw",
        dict(in_channels=4, out_channels=4, kernel_size=3, groups=2, padding=(1, 0)),
        (2, 4, 5, 6),
    ),
    ("taps", dict(in_channels=2, out_channels=2, kernel_size=3, padding=1), (1, 2, 28, 28)),
    ("pointwise", dict(in_channels=3, out_channels=2, kernel_size=1), (2, 3, 4, 5)),
    (
        "depthwise",
        dict(in_channels=3, out_channels=6, kernel_size=3, groups=3, stride=(1, 2), padding=1),
        (1, 3, 6, 7),
    ),
    ("unfold", dict(in_channels=2, out_channels=2, kernel_size=2, dilation=2), (1, 2, 6, 5)),
]


@pytest.mark.parametrize(
    "strategy, kwargs, shape", SECOND_DERIVATIVE_CASES, ids=[c[0] for c in SECOND_DERIVATIVE_CASES]
)
def test_second_derivatives_through_the_gemm_backward(strategy, kwargs, shape):
    # create_graph=True (gradient penalties, Hessian-vector products): GemmConv2d's backward
    # recomputes the forward's plain ops and differentiates them, so double backward works and
    # equals the native conv's.
    conv, x = _conv_and_input(kwargs, shape)
    spec = ConvSpec.from_module(conv)
    fn = STRATEGIES[strategy]
    options = StrategyOptions(4096) if strategy == "unfold" else None
    out = fn(x, conv.weight, conv.bias, spec, options)
    assert type(out.grad_fn).__name__ == "GemmConv2dBackward", out.grad_fn
    assert torch.autograd.gradgradcheck(
        lambda i, w, b: fn(i, w, b, spec, options), (x, conv.weight, conv.bias)
    )
    # A gradient penalty's gradient, against the native conv's.
    params = (x, conv.weight, conv.bias)
    results = []
    for forward in (lambda: fn(x, conv.weight, conv.bias, spec, options), lambda: conv(x)):
        (grad_x,) = torch.autograd.grad(forward().square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad_x.square().sum(), params, allow_unused=True))
    for name, got, want in zip(("input", "weight", "bias"), *results, strict=True):
        if want is None:
            assert got is None or not got.any(), name
        else:
            torch.testing.assert_close(
                got, want, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
            )


@pytest.mark.parametrize("strategy", ["nhwc", "depthwise"])
def test_second_derivatives_under_nested_torch_func_grad(strategy):
    # torch.func runs every backward in grad mode, and a gradient that is not wanted at the
    # inner level (here the weight's) may be wanted at the outer one: d/dw |d/dx f(w, x)|^2.
    groups = 3 if strategy == "depthwise" else 1
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=groups).double()
    spec = ConvSpec.from_module(conv)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    c = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    bias = conv.bias.detach()

    def lowered(w, x):
        return (STRATEGIES[strategy](x, w, bias, spec) * c).square().sum()

    def native(w, x):
        return (F.conv2d(x, w, bias, 1, 1, 1, groups) * c).square().sum()

    def outer(f):
        def penalty(w, x):
            return torch.func.grad(f, argnums=1)(w, x).square().sum()

        return torch.func.grad(penalty)(conv.weight.detach(), x)

    want = outer(native)
    assert want.abs().max() > 1  # a second derivative that is not zero
    torch.testing.assert_close(outer(lowered), want, rtol=RTOL, atol=1e-9)


def test_second_derivatives_of_a_depthwise_output_wholly_in_the_padding():
    conv = nn.Conv2d(2, 2, 1, stride=4, padding=3, groups=2).double()
    x = torch.randn(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    out = STRATEGIES["depthwise"](x, conv.weight, conv.bias, ConvSpec.from_module(conv))
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert not grad_x.any()
    (grad_w,) = torch.autograd.grad(grad_x.sum(), conv.weight, allow_unused=True)
    assert grad_w is None or not grad_w.any()


def test_second_derivatives_record_no_conv_op():
    conv, x = _conv_and_input(
        dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (1, 2, 6, 6)
    )
    spec = ConvSpec.from_module(conv)
    with OpNames() as ops:
        out = STRATEGIES["nhwc"](x, conv.weight, conv.bias, spec)
        (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        torch.autograd.grad(grad_x.square().sum(), conv.weight)
    assert not ops.convs, ops.convs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_step_of_a_lowered_model_runs_no_conv_and_no_view_scatter(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 5, padding=2, groups=8),
        nn.Conv2d(8, 16, 3, groups=4, stride=2),
        nn.Conv2d(16, 4, 1),
    ).to(dtype)
    lowered = lowerconv.lower(model, strategy="auto")
    x = torch.randn(2, 3, 32, 32, dtype=dtype, requires_grad=True)
    out = lowered(x)
    with OpNames() as seen:
        out.sum().backward()
    conv_ops = [name for name in seen.names if CONV_OP.search(name)]
    assert conv_ops == [], conv_ops
    # Autograd through the forward's gathers would scatter into its views chunk by chunk and
    # tap by tap: unfold_backward, slice_backward, select_backward.
    view_ops = ("unfold_backward", "slice_backward", "select_backward", "scatter")
    scatters = [name for name in seen.names if any(op in name for op in view_ops)]
    assert scatters == [], scatters
    assert {"aten.col2im.default", "aten.bmm.default"} & set(seen.names), seen.names
    grads = [p.grad for p in lowered.parameters()] + [x.grad]
    x.grad = None
    model(x).sum().backward()
    want = [p.grad for p in model.parameters()] + [x.grad]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=RTOL, atol=ATOL)
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got, expected, **tol)


def test_workspace_bytes_with_a_gradient_is_the_forward_buffer_it_allocates(onednn_gemm):
    # The kernel-row GEMMs, whose buffer is the one predicted, need oneDNN's linear op.
    from lowerconv.lowering.strategies import workspace_bytes

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(1, 16, 40, 40, requires_grad=True)
    spec = ConvSpec.from_module(conv)
    with OpNames() as seen, StorageSizes() as sizes:
        STRATEGIES["nhwc"](x, conv.weight, conv.bias, spec)
    predicted = workspace_bytes(spec, "nhwc", 1, 40, 40, torch.float32, needs_grad=True)
    assert predicted == workspace_bytes(spec, "nhwc", 1, 40, 40, torch.float32)
    assert predicted in sizes.sizes, (sorted(sizes.sizes), predicted, seen.names)
    assert predicted < spec.im2col_bytes(1, 40, 40, torch.float32)


@pytest.mark.parametrize("strategy", ["nhwc", "nchw", "pointwise", "depthwise"])
def test_inplace_activation_after_a_lowered_conv(strategy):
    # efficientnet's SiLU(inplace=True) follows its convs: autograd must allow it.
    conv, x = _conv_and_input(
        dict(in_channels=4, out_channels=4, kernel_size=1, groups=1), (2, 4, 5, 5)
    )
    if strategy == "depthwise":
        conv, x = _conv_and_input(
            dict(in_channels=4, out_channels=4, kernel_size=3, groups=4), (2, 4, 5, 5)
        )
    out = STRATEGIES[strategy](x, conv.weight, conv.bias, ConvSpec.from_module(conv))
    got = torch.autograd.grad(F.silu(out, inplace=True).sum(), (x, conv.weight))
    want = torch.autograd.grad(F.silu(conv(x)).sum(), (x, conv.weight))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_compiled_training_step_holds_standard_ops_and_the_original_gradients():
    # Under torch.compile the lowered forward records its plain ops (GemmConv2d is eager
    # only), so AOTAutograd's forward and backward graphs hold no conv and no private op.
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 8, 1),
        nn.Conv2d(8, 8, 4, stride=4),
    )
    lowered = lowerconv.lower(model, strategy="auto")
    targets: list[str] = []

    def record(graph, _inputs):
        targets.extend(str(n.target) for n in graph.graph.nodes if n.op == "call_function")
        return make_boxed_func(graph)

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=record, bw_compiler=record)

    x = torch.randn(2, 3, 32, 32)
    torch.compile(lowered, backend=backend)(x).sum().backward()
    assert targets, "nothing was compiled"
    assert [t for t in targets if CONV_OP.search(t) or "mkldnn" in t] == [], targets
    model(x).sum().backward()
    for got, want in zip(lowered.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)
