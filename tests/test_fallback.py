"""Models torch.fx cannot trace, and convolutions found in the wild.

The reference is always the original model: the lowered one must compute the same thing, keep
its state_dict and parameter sharing, and run no convolution op.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
from lowerconv.lowering.runtime import RuntimeLoweredConv2d


class ConvOpRecorder(TorchDispatchMode):
    """Records the name of every ATen op dispatched that is a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if "convolution" in name or "conv2d" in name or "conv_depthwise" in name:
            self.conv_ops.append(name)
        return func(*args, **(kwargs or {}))


def conv_ops_run(model: nn.Module, *inputs: torch.Tensor) -> list[str]:
    with ConvOpRecorder() as recorder:
        out = model(*inputs)
        leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        sum(t.float().sum() for t in leaves if t.requires_grad).backward()
    return recorder.conv_ops


class DataDependentGate(nn.Module):
    """Control flow on a tensor's value: symbolic tracing fails here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.conv(x)
        return self.conv(-x)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect")
        self.gate = DataDependentGate()
        self.head = nn.Conv2d(4, 6, 1)
        self.tied = nn.Conv2d(6, 6, 1, bias=False)
        self.twin = nn.Conv2d(6, 6, 1, bias=False)
        self.twin.weight = self.tied.weight  # one parameter in two modules
        self.shared = self.tied  # one module at two paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.gate(F.relu(self.stem(x))))
        return self.twin(self.shared(self.tied(y)))


class TFSamePadConv(nn.Conv2d):
    """TensorFlow-style 'SAME' padding computed with math.ceil at run time: not traceable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + kh - ih, 0)
        pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + kw - iw, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class WeightStandardizedConv(nn.Conv2d):
    """Normalises its weight before the conv: traceable, and must keep that arithmetic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WildConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.same = TFSamePadConv(3, 8, 3, stride=2)
        self.ws = WeightStandardizedConv(8, 8, 3, padding=1, groups=2)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ws(self.same(x))
        h, w = y.shape[-2:]
        y = self.conv1d(y.flatten(2)).unflatten(2, (h, w))
        return self.up(y)


def _assert_same_model(model: nn.Module, lowered: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = model(x), lowered(x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    assert list(lowered.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(lowered.state_dict()[key], value), key


def test_untraceable_model_falls_back_and_matches() -> None:
    torch.manual_seed(0)
    model = Untraceable().double().eval()
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    assert "DataDependentGate" in record.trace_error and "gate" in record.trace_error
    assert type(lowered) is Untraceable and lowered is not model
    assert {c.name for c in record.lowered} == {"stem", "gate.conv", "head", "tied", "twin"}
    assert all(c.graph_module == c.name for c in record.lowered)
    assert not any(isinstance(m, nn.Conv2d) for m in lowered.modules())
    x = torch.randn(2, 3, 17, 12, dtype=torch.float64)
    _assert_same_model(model, lowered, x)
    _assert_same_model(model, lowered, -x)  # the other branch
    assert lowered.shared is lowered.tied  # one module at two paths stays one
    assert lowered.twin.weight is lowered.tied.weight  # a tied parameter stays tied
    assert conv_ops_run(lowered, x.requires_grad_()) == []


def test_strict_raises_where_the_fallback_would_be_taken() -> None:
    with pytest.raises(lowerconv.LoweringError, match=r"could not trace Untraceable") as info:
        lowerconv.lower(Untraceable(), strict=True)
    message = str(info.value)
    assert "inside module 'gate' (DataDependentGate)" in message
    assert "x.mean() > 0" in message
    assert "fix:" in message


def test_fallback_trains_like_the_original() -> None:
    torch.manual_seed(0)
    model = Untraceable().double().train()
    lowered = lowerconv.lower(model)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    model(x).square().sum().backward()
    lowered(x).square().sum().backward()
    grads = dict(lowered.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-9, atol=1e-10)


def test_conv_subclasses_keep_their_semantics() -> None:
    torch.manual_seed(0)
    model = WildConvs().double().eval()
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "graph"
    by_name = {c.name: c for c in record.lowered}
    # The untraceable subclass keeps its forward and runs its F.conv2d lowered at run time.
    assert by_name["same"].strategy == "unfold (run time)"
    assert "could not trace TFSamePadConv" in by_name["same"].note
    assert isinstance(lowered.get_submodule("same"), RuntimeLoweredConv2d)
    # The traceable one is traced into: its weight arithmetic stays, its F.conv2d is lowered.
    assert by_name["ws"].strategy == "unfold" and by_name["ws"].target == "F.conv2d"
    assert "ws_unfold" in lowered.code and "mean" in lowered.code
    assert not record.skipped
    assert (by_name["conv1d"].kind, by_name["conv1d"].mechanism) == ("conv1d", "graph")
    assert (by_name["up"].kind, by_name["up"].mechanism) == ("conv_transpose2d", "graph")
    assert not any(isinstance(m, nn.modules.conv._ConvNd) for m in lowered.modules())
    for size in [(1, 3, 15, 15), (3, 16, 11)]:  # batched and unbatched, odd sizes
        x = torch.randn(size, dtype=torch.float64)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        _assert_same_model(model, lowered, x)
    assert not any(isinstance(m, nn.Conv2d) for m in lowered.modules())
    ops = conv_ops_run(lowered, torch.randn(1, 3, 12, 12, dtype=torch.float64))
    assert all("conv_transpose" in op or "convolution" in op for op in ops)  # only the leftovers
    assert len(ops) < len(conv_ops_run(model, torch.randn(1, 3, 12, 12, dtype=torch.float64)))


def test_run_time_lowering_runs_no_conv2d() -> None:
    conv = TFSamePadConv(3, 5, 3, stride=2).double()
    holder = RuntimeLoweredConv2d(conv, "unfold")
    x = torch.randn(2, 3, 10, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(holder(x), conv(x), rtol=1e-9, atol=1e-10)
    assert conv_ops_run(holder, x) == []
    assert conv_ops_run(conv, x) != []  # the recorder can see a conv when one runs
    assert list(holder.state_dict()) == ["weight", "bias"]
    assert holder.out_channels == 5 and holder.stride == (2, 2)


def test_torchvision_ops_stay_leaves_and_deform_conv_is_reported() -> None:
    class WithDeform(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = nn.Conv2d(4, 18, 3, padding=1)
            self.deform = torchvision.ops.DeformConv2d(4, 4, 3, padding=1)
            self.norm = torchvision.ops.FrozenBatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.deform(x, self.offset(x)))

    model = WithDeform().eval()
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert [c.name for c in record.lowered] == ["offset"]
    assert [(s.name, s.kind) for s in record.skipped] == [("deform", "DeformConv2d")]
    assert "norm" in {n.target for n in lowered.graph.nodes if n.op == "call_module"}
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(lowered(x), model(x))


def test_user_leaf_modules_are_not_traced_into() -> None:
    model = Untraceable().eval()
    lowered = lowerconv.lower(model, leaf_modules=[DataDependentGate], strict=True)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "graph"
    # The leaf's conv is still lowered: by its own module, called from the graph.
    assert "gate.conv" in {c.name for c in record.lowered}
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(lowered(x), model(x))


@pytest.mark.parametrize(
    "builder",
    [
        lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None
        ),
        lambda: torchvision.models.optical_flow.raft_small(weights=None),
    ],
    ids=["fasterrcnn_mobilenet_v3_large_320_fpn", "raft_small"],
)
def test_untraceable_torchvision_models_fall_back(builder) -> None:
    torch.manual_seed(0)
    model = builder().eval()
    raft = "RAFT" in type(model).__name__
    if not raft:  # RAFT builds some grids in float32 whatever its parameters' dtype
        model = model.double()
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback" and record.trace_error
    assert record.num_lowered == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in lowered.modules())
    assert list(lowered.state_dict()) == list(model.state_dict())
    if raft:
        inputs = (torch.rand(1, 3, 128, 128),) * 2
        with torch.no_grad():
            expected, got = model(*inputs, num_flow_updates=1), lowered(*inputs, num_flow_updates=1)
    else:
        inputs = ([torch.rand(3, 96, 96, dtype=torch.float64)],)
        with torch.no_grad():
            expected, got = model(*inputs), lowered(*inputs)
    for e, g in zip(
        torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(got), strict=True
    ):
        if raft:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        else:
            torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)


def test_timm_conv2d_subclasses() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_b0", pretrained=False).eval().double()
    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "graph"
    assert record.strategies_used().get("unfold (run time)", 0) > 0  # timm's Conv2dSame
    assert not any(isinstance(m, nn.Conv2d) for m in lowered.modules())
    x = torch.randn(1, 3, 65, 47, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(
    "parametrization",
    [
        torch.nn.utils.parametrizations.weight_norm,
        torch.nn.utils.parametrizations.spectral_norm,
    ],
    ids=["weight_norm", "spectral_norm"],
)
def test_parametrized_weights_are_computed_each_call_and_trained(parametrization) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(parametrization(nn.Conv2d(3, 4, 3, padding=1)), nn.ReLU()).double()
    lowered = lowerconv.lower(model)
    assert list(lowered.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model(x).square().sum().backward()
    lowered(x).square().sum().backward()
    grads = dict(lowered.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-9, atol=1e-12)
    # The weight is recomputed from the parameters: editing them changes the lowered output.
    with torch.no_grad():
        for params in (model.parameters(), lowered.parameters()):
            for p in params:
                p.mul_(1.5)
        torch.testing.assert_close(lowered(x), model(x), rtol=1e-9, atol=1e-12)
    assert conv_ops_run(lowered, x.requires_grad_()) == []


def test_forward_hooks_that_compute_the_weight_keep_running() -> None:
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        conv = torch.nn.utils.weight_norm(nn.Conv2d(3, 4, 3)).double()
    model = nn.Sequential(conv, nn.ReLU())
    lowered = lowerconv.lower(model, inplace=True)  # old-style weight_norm cannot be deep-copied
    record = lowerconv.lowering_record(lowered)
    assert record.lowered[0].strategy == "unfold (run time)"
    assert "forward hooks" in record.lowered[0].note
    reference = nn.Conv2d(3, 4, 3).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        conv_module = lowered.get_submodule("0")
        conv_module.weight_g.mul_(2.0)  # the hook recomputes weight from weight_g and weight_v
        v = conv_module.weight_v
        w = conv_module.weight_g * v / torch.linalg.vector_norm(v, dim=(1, 2, 3), keepdim=True)
        reference.weight.copy_(w)
        reference.bias.copy_(conv_module.bias)
        torch.testing.assert_close(lowered(x), F.relu(reference(x)), rtol=1e-9, atol=1e-12)
    assert conv_ops_run(lowered, x) == []
