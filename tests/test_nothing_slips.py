"""Nothing slips through: every convolution is lowered or accounted for, on every path.

Each failure class that once let a user be told something untrue has a small synthetic model
here: a functional conv with a kernel built in ``forward`` inside an untraceable model, an
untraceable model holding a ``ConvTranspose2d``, a user leaf module calling ``F.conv2d``.  The
reference is the original model, and an ATen-level recorder that is shown to see a conv when
one runs.
"""

from __future__ import annotations

import copy
import io
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
from lowerconv.lowering.runtime import runtime_lowering


class ConvOps(TorchDispatchMode):
    """Every ATen convolution op dispatched, with whether its weight is 2-D and not transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if "convolution" in name or "conv" in name.split("::")[-1]:
            two_d = False
            if name.endswith("::convolution") and len(args) > 6:
                two_d = args[1].dim() == 4 and not args[6]
            elif name.endswith("::convolution_backward") and len(args) > 7:
                two_d = args[2].dim() == 4 and not args[7]
            self.ops.append((name, two_d))
        return func(*args, **(kwargs or {}))

    @property
    def two_d(self) -> list[str]:
        return [name for name, two_d in self.ops if two_d]


def conv_ops(model: nn.Module, x: torch.Tensor, backward: bool = False) -> ConvOps:
    with ConvOps() as seen:
        out = model(x)
        if backward:
            out.sum().backward()
    return seen


def gaussian_kernel(size: int, sigma: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


class Blur(nn.Module):
    """kornia's filters, in small: a kernel built in forward, a type check, a branch on data."""

    def __init__(self) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(1.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x)}")
        if bool(x.abs().max() > 1e6):  # data-dependent: torch.fx cannot trace this
            return x
        kernel = gaussian_kernel(5, self.sigma).to(x.dtype)
        kernel = kernel.expand(x.shape[1], 1, 5, 5)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


class Sobel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)
        k = torch.stack([k, k.t()]).unsqueeze(1).repeat(x.shape[1], 1, 1, 1)
        return torch.conv2d(x, k, padding=1, groups=x.shape[1])


class FilterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blur = Blur()
        self.edges = Sobel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.edges(self.blur(self.stem(x)))


class Decoder(nn.Module):
    """Untraceable, with ConvTranspose2d modules and a functional transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.extra = nn.Parameter(torch.randn(2, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        y = self.up2(self.up1(self.conv(x)))
        return F.conv_transpose2d(y, self.extra, padding=1)


class StemAndEdges(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.edges = Sobel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.edges(self.stem(x))


def test_untraceable_functional_convs_are_lowered_at_run_time() -> None:
    model = FilterNet().eval()
    x = torch.randn(2, 3, 12, 10)
    seen = conv_ops(model, x)
    assert len(seen.two_d) == 3  # the recorder sees all three convs when they run

    lowered = lowerconv.lower(model)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    assert record.runtime == [""]
    assert conv_ops(lowered, x).ops == []
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)
    # Without inputs the record cannot list them yet, and says so.
    assert not record.runtime_calls_listed
    assert any("example_inputs=" in note for note in record.notes)
    assert "run time" in record.summary()


def test_run_time_convs_are_listed_with_the_module_they_came_from() -> None:
    model = FilterNet().eval()
    x = torch.randn(2, 3, 12, 10)
    lowered = lowerconv.lower(model, example_inputs=x)
    record = lowerconv.lowering_record(lowered)
    assert record.runtime_calls_listed
    by_name = {c.name: c for c in record.lowered}
    assert list(by_name) == ["stem", "blur", "edges"]
    assert by_name["blur"].mechanism == "run time"
    assert by_name["blur"].strategy == "unfold (run time)"
    assert by_name["blur"].spec.groups == 4 and by_name["blur"].spec.kernel_size == (5, 5)
    assert "called from module 'blur'" in by_name["blur"].note
    assert __file__ in by_name["edges"].note  # the model's own line that made the call
    assert by_name["stem"].mechanism == "graph"
    assert record.to_dict()["lowered"][1]["mechanism"] == "run time"
    assert "unfold (run time)" in str(record)


def test_run_time_strategy_auto_names_the_concrete_strategy() -> None:
    model = FilterNet().eval()
    x = torch.randn(1, 3, 12, 10)
    lowered = lowerconv.lower(model, strategy="auto", example_inputs=(x,))
    record = lowerconv.lowering_record(lowered)
    assert conv_ops(lowered, x).ops == []
    run_time = [c.strategy for c in record.lowered if c.mechanism == "run time"]
    assert run_time == ["depthwise (run time)", "depthwise (run time)"]
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_parameters_that_built_the_kernel() -> None:
    model = FilterNet().double().train()
    lowered = lowerconv.lower(model)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    model(x).pow(2).sum().backward()
    seen = conv_ops(lowered, x, backward=False)
    assert seen.ops == []
    with ConvOps() as seen:
        lowered(x).pow(2).sum().backward()
    assert seen.ops == []  # forward and backward
    for name, param in lowered.named_parameters():
        original = model.get_parameter(name)
        torch.testing.assert_close(param.grad, original.grad, rtol=1e-9, atol=1e-10)
    assert model.blur.sigma.grad is not None


def test_run_time_lowering_survives_deepcopy_pickle_and_errors() -> None:
    model = FilterNet().eval()
    lowered = lowerconv.lower(model)
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(lowered, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(lowered), torch.load(buffer, weights_only=False)):
        assert runtime_lowering(copied) is not None
        assert conv_ops(copied, x).ops == []
        torch.testing.assert_close(copied(x), expected, rtol=1e-5, atol=1e-5)
    # A forward that raises leaves the mode: later plain convs run natively again.
    with pytest.raises(RuntimeError):
        lowered(torch.randn(1, 5, 8, 8))
    assert conv_ops(nn.Conv2d(3, 3, 1), x).two_d != []
    # The model's class, state_dict and mode are the original's.
    assert type(lowered) is FilterNet
    assert list(lowered.state_dict()) == list(model.state_dict())


def test_untraceable_model_lowers_every_kind_at_run_time() -> None:
    model = Decoder().eval()
    x = torch.randn(1, 3, 6, 6)
    lowered = lowerconv.lower(model, example_inputs=x)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback" and not record.skipped
    by_name = {c.name: c for c in record.lowered}
    assert {name: c.kind for name, c in by_name.items()} == {
        "conv": "conv2d",
        "up1": "conv_transpose2d",
        "up2": "conv_transpose2d",
        "forward": "conv_transpose2d",
    }
    assert by_name["up1"].mechanism == "run time" and by_name["forward"].mechanism == "run time"
    assert "called from the model's own forward" in by_name["forward"].note
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)
    seen = conv_ops(lowered, x.clone().requires_grad_())
    assert seen.ops == []


def test_untraceable_model_lists_every_kind_left_out_as_left_alone() -> None:
    model = Decoder().eval()
    x = torch.randn(1, 3, 6, 6)
    lowered = lowerconv.lower(model, example_inputs=x, kinds={"conv2d"})
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    skipped = [(s.name, s.kind) for s in record.skipped]
    assert skipped == [
        ("up1", "ConvTranspose2d"),
        ("up2", "ConvTranspose2d"),
        ("forward", "conv_transpose2d"),
    ]
    assert "called from the model's own forward" in record.skipped[2].reason
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)
    assert conv_ops(lowered, x).two_d == []
    # Without inputs the modules are still listed.
    unlisted = lowerconv.lowering_record(lowerconv.lower(model, kinds={"conv2d"})).skipped
    assert [s.name for s in unlisted] == ["up1", "up2"]


def test_graph_path_lists_unused_and_nested_other_kinds_once() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
            self.unused = nn.Conv1d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(self.conv(x))

    record = lowerconv.lowering_record(lowerconv.lower(Net(), kinds=["conv2d"]))
    assert record.path == "graph"
    assert [(s.name, s.kind) for s in record.skipped] == [
        ("up", "ConvTranspose2d"),
        ("unused", "Conv1d"),
    ]


def test_user_leaf_modules_run_their_functional_convs_lowered() -> None:
    model = StemAndEdges().eval()
    x = torch.randn(1, 3, 8, 8)
    lowered = lowerconv.lower(model, leaf_modules=[Sobel], example_inputs=x)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "graph"
    assert record.runtime == ["edges"]
    assert [(c.name, c.mechanism) for c in record.lowered] == [
        ("stem", "graph"),
        ("edges", "run time"),
    ]
    assert conv_ops(lowered, x).ops == []
    torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)


def test_lower_rejects_bad_example_inputs_and_names_the_fix() -> None:
    with pytest.raises(lowerconv.LoweringError, match="tuple of tensors"):
        lowerconv.lower(FilterNet(), example_inputs={"x": 1})
    with pytest.raises(lowerconv.LoweringError, match="failed on example_inputs"):
        lowerconv.lower(FilterNet(), example_inputs=torch.randn(1, 5, 8, 8))


def test_listing_run_time_convs_changes_nothing() -> None:
    class Norm(FilterNet):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(8)  # Sobel doubles the channels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(super().forward(x))

    model = Norm().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    state = torch.get_rng_state()
    lowered = lowerconv.lower(model, example_inputs=x)
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in lowered.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert lowered.training and model.training


def test_graph_inspection_shows_run_time_convs_with_their_shapes() -> None:
    from lowerconv.lowering.inspect import inspect_lowered

    model = FilterNet().eval()
    x = torch.randn(2, 3, 8, 8)
    inspection = inspect_lowered(lowerconv.lower(model), (x,))
    rows = {row.name: row for row in inspection.rows}
    assert list(rows) == ["stem", "blur", "edges"]
    assert rows["blur"].input_shape == (2, 4, 12, 12)  # after its reflect padding
    assert rows["blur"].output_shape == (2, 4, 8, 8)
    assert rows["edges"].gemm_shape == (8, 9, 128)
    assert rows["edges"].strategy == "unfold (run time)"
    assert "3 conv(s) lowered" in inspection.summary()


# -- the verifier: no PASS without a check ----------------------------------------------------


def test_verify_checks_run_time_convs_layer_by_layer() -> None:
    model = FilterNet().eval()
    report = lowerconv.verify(model, torch.randn(2, 3, 10, 9), timing=False)
    assert report.ok, report.failure_message()
    assert [(c.name, c.status) for c in report.layers] == [
        ("stem", "pass"),
        ("blur", "pass"),
        ("edges", "pass"),
    ]
    blur = report.layer("blur")
    assert blur.strategy == "unfold (run time)"
    assert blur.input_shape == (2, 4, 14, 13) and blur.output_shape == (2, 4, 10, 9)
    assert blur.local_lowered.rel_l2 < 1e-5 and blur.accumulated_lowered is not None
    assert report.runs[0].conv_ops == []
    data = report.to_dict()
    assert data["runs"][0]["conv_ops"] == []
    assert data["runs"][0]["layers"][1]["status"] == "pass"


class StillConvolves(nn.Module):
    """A 'lowered' model that still runs a 2-D convolution: what the audit is for."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_verify_fails_a_lowered_model_that_still_runs_a_conv() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    report = lowerconv.verify(model, x, lowered=copy.deepcopy(model), timing=False)
    assert not report.ok
    (op,) = report.runs[0].conv_ops
    assert (op.op, op.kind, op.status, op.called_from) == (
        "aten.convolution.default",
        "conv2d",
        "fail",
        "0",
    )
    assert "conv op" in report.first_failure
    message = report.failure_message()
    assert "aten.convolution.default" in message and "module '0'" in message
    assert "FAIL" in str(report) and "FAIL" in report.to_markdown().splitlines()[0]
    with pytest.raises(lowerconv.VerificationError, match=r"aten\.convolution"):
        report.raise_if_failed()
    data = report.to_dict()
    assert data["ok"] is False and data["runs"][0]["conv_ops"][0]["status"] == "fail"


def test_verify_fails_an_unlowered_functional_conv_in_an_opaque_module() -> None:
    model = StemAndEdges().eval()
    lowered = lowerconv.lower(model, leaf_modules=[Sobel])
    x = torch.randn(1, 3, 8, 8)
    lowerconv.testing.assert_lowering_close(model, x, lowered=lowered)
    lowered.edges = Sobel()  # an edit that drops the leaf's run-time lowering: outputs still match
    with pytest.raises(lowerconv.VerificationError, match="module 'edges'"):
        lowerconv.testing.assert_lowering_close(model, x, lowered=lowered)


def test_verify_of_every_kind_runs_no_conv_op_and_checks_each_layer() -> None:
    model = Decoder().eval()
    report = lowerconv.verify(model, torch.randn(1, 3, 6, 6), timing=False)
    assert report.ok, report.failure_message()
    assert report.runs[0].conv_ops == []
    layers = {layer.name: layer for layer in report.runs[0].layers}
    assert set(layers) == {"conv", "up1", "up2", "forward"}
    assert all(layer.status == "pass" for layer in layers.values()), layers


def test_verify_lists_other_conv_kinds_as_left_alone_and_passes() -> None:
    model = Decoder().eval()
    options = {"kinds": {"conv2d"}}
    report = lowerconv.verify(model, torch.randn(1, 3, 6, 6), timing=False, lower_options=options)
    assert report.ok, report.failure_message()
    ops = report.runs[0].conv_ops
    assert {(op.kind, op.status) for op in ops} == {("conv_transpose2d", "left alone")}
    assert sum(op.count for op in ops) == 3
    assert "left alone" in str(report)


def test_no_device_verified_is_not_a_pass(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    report = lowerconv.verify(model, x, device="cuda", timing=False)
    assert not report.ok
    assert report.runs == []
    assert "NOTHING VERIFIED" in str(report)
    assert "PASS" not in str(report)
    assert "PASS" not in report.to_markdown()
    assert report.to_dict()["ok"] is False
    assert "no device" in report.failure_message()
    with pytest.raises(lowerconv.VerificationError):
        report.raise_if_failed()
    with pytest.raises(lowerconv.VerificationError):
        lowerconv.testing.assert_lowering_close(model, x, device="cuda")


def test_an_output_with_no_tensor_compared_is_not_a_pass() -> None:
    class Nothing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> None:
            self.conv(x)

    report = lowerconv.verify(Nothing(), torch.randn(1, 3, 4, 4), timing=False)
    assert not report.ok
    assert "no output tensor" in report.failure_message()


class KeylessOutput:
    """Like diffusers' outputs: registered with pytree, without a flatten-with-keys function."""

    def __init__(self, sample: torch.Tensor, extra: torch.Tensor) -> None:
        self.sample, self.extra = sample, extra


torch.utils._pytree.register_pytree_node(
    KeylessOutput,
    lambda o: ([o.sample, o.extra], None),
    lambda values, _: KeylessOutput(*values),
)


class Unregistered:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


def test_outputs_registered_without_keys_verify_by_position() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> KeylessOutput:
            y = self.conv(x)
            return KeylessOutput(y, y.relu())

    report = lowerconv.verify(Net().eval(), torch.randn(1, 3, 8, 8), timing=False)
    assert report.ok, report.failure_message()
    assert [o.path for o in report.outputs] == ["output[0]", "output[1]"]


def test_outputs_pytree_cannot_flatten_get_a_clear_error() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> Unregistered:
            return Unregistered(self.conv(x))

    with pytest.raises(lowerconv.LoweringError, match=r"Unregistered.*register_pytree_node"):
        lowerconv.verify(Net().eval(), torch.randn(1, 3, 8, 8), timing=False)


class DriftsPerCall(nn.Module):
    """Flips its output's sign on every call of any copy of it: the verifier's float64 oracle is
    then not the function its native copy computes (as with random numbers a model draws)."""

    calls: ClassVar[list[int]] = [0]  # class state, shared by every copy the verifier makes

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        DriftsPerCall.calls[0] += 1
        return self.conv(x) * (-1) ** DriftsPerCall.calls[0]


def test_a_meaningless_oracle_is_flagged() -> None:
    # (An uninitialised lazy module used to be the example; verify() now initialises it once.)
    model = DriftsPerCall().eval()
    report = lowerconv.verify(model, torch.randn(2, 3, 8, 8), timing=False)
    assert report.warnings, str(report)
    assert "float64 oracle" in report.warnings[0]
    assert "warning" in str(report).lower()
    assert report.to_dict()["warnings"] == report.warnings
    assert "warning" in report.to_markdown().lower()
    healthy = lowerconv.verify(
        nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), torch.randn(2, 3, 8, 8), timing=False
    )
    assert healthy.warnings == []


def test_copies_of_a_fallback_model_keep_the_conv_configuration() -> None:
    # transformers' MobileNetV2 pads by reading conv.stride and conv.kernel_size at run time;
    # verify() and lower(example_inputs=...) run deep copies of the lowered model.
    class ReadsStride(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.abs().max() > 1e6:
                return x
            pad = self.conv.kernel_size[0] - self.conv.stride[0]
            return self.conv(F.pad(x, (pad, 0, pad, 0)))

    model = ReadsStride().eval()
    x = torch.randn(1, 3, 9, 9)
    lowered = lowerconv.lower(model, example_inputs=x)
    copied = copy.deepcopy(lowered)
    assert copied.conv.stride == (2, 2) and copied.conv.kernel_size == (3, 3)
    torch.testing.assert_close(copied(x), model(x), rtol=1e-5, atol=1e-5)
    assert lowerconv.verify(model, x, timing=False).ok


def test_run_time_convs_in_the_root_forward_unbatched_and_by_keyword_are_checked() -> None:
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding="same", dilation=2)
            self.kernel = nn.Parameter(torch.randn(4, 2, 3, 3))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if x.abs().max() > 1e6:
                return x, x
            y = self.conv(x)
            same = F.conv2d(y, self.kernel, None, 1, "same", 2, 2)
            strided = torch.conv2d(input=y, weight=self.kernel, stride=(2, 1), groups=2)
            return same, strided

    model = Root().eval()
    for x in (torch.randn(2, 3, 9, 8), torch.randn(3, 9, 8)):
        report = lowerconv.verify(model, x, timing=False)
        assert report.ok, report.failure_message()
        assert [(c.name, c.status) for c in report.layers] == [
            ("conv", "pass"),
            ("forward", "pass"),
            ("forward#2", "pass"),
        ]


def test_graph_inspection_of_a_conv_subclass_lowered_at_run_time() -> None:
    # A Conv2d subclass whose forward fx cannot trace runs as a RuntimeLoweredConv2d leaf: it
    # has no graph of its own, so its row's shapes come from its observed call.
    from lowerconv.lowering.inspect import inspect_lowered

    class PadsInPython(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pad = max(0, int(x.shape[-1]) % 2)  # plain Python on a size: untraceable
            return self._conv_forward(F.pad(x, (0, pad, 0, pad)), self.weight, self.bias)

    model = nn.Sequential(PadsInPython(3, 8, 3, stride=2), nn.ReLU()).eval()
    lowered = lowerconv.lower(model)
    (conv,) = lowerconv.lowering_record(lowered).lowered
    assert (conv.mechanism, conv.graph_module) == ("run time", "0")
    (row,) = inspect_lowered(lowered, (torch.randn(1, 3, 17, 17),)).rows
    assert (row.input_shape, row.output_shape) == ((1, 3, 18, 18), (1, 8, 8, 8))
    assert row.strategy == "unfold (run time)"


def test_an_unlowered_conv_op_is_located_at_the_models_own_line():
    """The audit names the model's source line that ran a conv op, not a line of lowerconv's
    own verifier (which calls the model)."""

    class Native(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return torch.nn.functional.conv2d(x, self.weight)  # the line the audit must name

    model = Native()
    report = lowerconv.verify(model, torch.randn(1, 3, 8, 8), lowered=Native(), timing=False)
    failing = [op for run in report.runs for op in run.failing_conv_ops]
    assert failing, report.summary()
    for op in failing:
        assert op.location is not None and op.location.startswith(__file__), op.location
