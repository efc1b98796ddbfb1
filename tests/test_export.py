"""Lowered graphs in and out of torch.export: the export tier, lower(ExportedProgram), artifacts.

The reference is always the original module run eagerly.  Models are a few small convs, so
each capture takes well under a second; ONNX tests skip without the ``onnx`` extra.
"""

from __future__ import annotations

import inspect
import io

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.export import Dim

import lowerconv
from lowerconv.errors import LoweringError
from lowerconv.lowering.emit import META_KEY
from lowerconv.lowering.export import (
    CUSTOM_META_KEY,
    export_lowered,
    op_counts,
    run_artifact,
    write_artifact,
)
from lowerconv.lowering.inspect import lowered_code
from lowerconv.models.realworld import REALWORLD_MODELS

ONNX_MISSING = 'ONNX export needs the onnx extra: pip install -e ".[onnx]"'


def conv_ops(program: torch.export.ExportedProgram) -> list[str]:
    return [op for op in op_counts(program) if "conv" in op or "mkldnn" in op]


class ShapeBranch(nn.Module):
    """torch.fx cannot branch on a shape; torch.export follows the branch the input takes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)])
        self.head = nn.Conv2d(8, 4, 2, stride=2)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = F.relu(self.bn(self.stem(x)))
        if y.shape[-1] % 2 == 0:
            for block in self.blocks:
                y = y + block(y)
        return {"out": self.head(y) * self.scale, "skip": y}


class DataBranch(nn.Module):
    """A branch on a tensor's value: neither torch.fx nor torch.export can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.relu() if y.sum() > 0 else y


class CondBranch(nn.Module):
    """torch.export captures a value branch written with torch.cond as a ``cond`` operator, whose
    branches are graphs of their own; the isinstance check defeats torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        return torch.cond(x.sum() > 0, lambda t: self.conv(t), lambda t: self.conv(t) * 2, (x,))


def shape_branch() -> nn.Module:
    torch.manual_seed(0)
    model = ShapeBranch()
    with torch.no_grad():  # non-trivial statistics, so a lost buffer shows
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 4, 1),
    ).eval()


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# -- the export tier of lower() ---------------------------------------------------------------


def test_untraceable_model_is_one_lowered_graph_on_the_export_path() -> None:
    model = shape_branch()
    lowered = lowerconv.lower(model, example_inputs=X)
    record = lowerconv.lowering_record(lowered)
    assert isinstance(lowered, fx.GraphModule)
    assert record.path == "export"
    assert "torch.fx could not trace" in record.trace_error and record.export_error is None
    assert [c.name for c in record.lowered] == ["stem", "blocks.0", "blocks.1", "head"]
    convs = [n for n in lowered.graph.nodes if "aten.conv" in str(n.target)]
    assert not convs, convs
    # Every emitted node carries its conv's provenance, named by nn_module_stack.
    sources = {n.meta[META_KEY].source for n in lowered.graph.nodes if META_KEY in n.meta}
    assert sources == {"stem", "blocks.0", "blocks.1", "head"}
    with torch.no_grad():
        expected, got = model(X), lowered(X)
    assert type(got) is dict and list(got) == ["out", "skip"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def test_export_path_keeps_the_state_and_leaves_the_original_alone() -> None:
    model = shape_branch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lowered = lowerconv.lower(model, example_inputs=X)
    state = lowered.state_dict()
    assert set(state) == set(before)
    for key, value in before.items():
        assert torch.equal(state[key], value), key
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not model.training and not lowered.training
    assert isinstance(model.stem, nn.Conv2d)  # the user's modules are untouched


def test_export_path_graph_and_code_are_whole() -> None:
    lowered = lowerconv.lower(shape_branch(), example_inputs=X)
    code = lowered_code(lowered)
    assert "could not be traced" not in code
    assert "stem_unfold = torch.nn.functional.unfold(" in code
    assert "head_matmul = torch.matmul(" in code


def test_export_path_verifies_layer_by_layer() -> None:
    model = shape_branch()
    report = lowerconv.verify(model, X, timing=False)
    assert report.ok, report.failure_message()
    assert report.path == "export"
    (run,) = report.runs
    assert [layer.name for layer in run.layers] == ["stem", "blocks.0", "blocks.1", "head"]
    assert {layer.status for layer in run.layers} == {"pass"}, [
        (layer.name, layer.reason) for layer in run.layers
    ]
    assert report.lowering["trace_error"] and report.lowering["export_error"] is None


def test_each_tier_that_failed_says_why() -> None:
    lowered = lowerconv.lower(DataBranch().eval(), example_inputs=X)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    assert "torch.fx could not trace" in record.trace_error
    assert "torch.export.export(strict=False) could not capture DataBranch" in record.export_error
    assert record.to_dict()["export_error"] == record.export_error
    report = lowerconv.verify(DataBranch().eval(), X, timing=False)
    assert report.ok and report.lowering["export_error"] == record.export_error
    assert "torch.export tier failed" in str(report)


def test_a_capture_with_control_flow_operators_falls_back() -> None:
    model = CondBranch().eval()
    lowered = lowerconv.lower(model, example_inputs=X)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    assert "control-flow operators (cond)" in record.export_error
    with torch.no_grad():
        torch.testing.assert_close(lowered(X), model(X), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_program_with_control_flow_operators_is_refused() -> None:
    program = torch.export.export(CondBranch().eval(), (X,))
    with pytest.raises(LoweringError, match=r"control-flow operators \(cond\)"):
        lowerconv.lower(program)


def test_without_example_inputs_export_is_not_tried() -> None:
    record = lowerconv.lowering_record(lowerconv.lower(shape_branch()))
    assert record.path == "fallback"
    assert record.export_error == "not tried: no example_inputs= given"


def test_strict_still_raises_instead_of_exporting() -> None:
    with pytest.raises(LoweringError, match="could not trace"):
        lowerconv.lower(shape_branch(), example_inputs=X, strict=True)


def test_traceable_models_stay_on_the_graph_path() -> None:
    record = lowerconv.lowering_record(lowerconv.lower(small_cnn(), example_inputs=X))
    assert record.path == "graph" and record.trace_error is None and record.export_error is None


# -- lower(ExportedProgram) ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["unfold", "auto"])
def test_lowered_program_keeps_a_dynamic_batch(strategy: str) -> None:
    model = small_cnn()
    program = torch.export.export(model, (X,), dynamic_shapes=({0: Dim("batch", max=64)},))
    lowered = lowerconv.lower(program, strategy=strategy)
    assert isinstance(lowered, torch.export.ExportedProgram)
    assert conv_ops(lowered) == []
    assert list(lowered.state_dict) == list(program.state_dict)
    assert [s.target for s in lowered.graph_signature.input_specs] == [
        s.target for s in program.graph_signature.input_specs
    ]
    assert [str(r) for r in lowered.range_constraints.values()] == ["VR[0, 64]"]
    original_signature = inspect.signature(program.module().forward)
    assert inspect.signature(lowered.module().forward) == original_signature
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(lowered.module()(x), model(x), rtol=1e-4, atol=1e-5)
    assert torch.export.export(model, (X,)).graph_signature  # the original is still exportable


def test_lowered_program_carries_its_record_and_provenance() -> None:
    program = torch.export.export(small_cnn(), (X,))
    lowered = lowerconv.lower(program, strategy="auto")
    record = lowerconv.lowering_record(lowered)
    assert record.path == "export" and [c.name for c in record.lowered] == ["0", "3", "4"]
    nodes = {n.name: n for n in lowered.graph.nodes}
    for conv in record.lowered:
        output = nodes[conv.output_node]
        assert output.meta[META_KEY].source == conv.name
        assert output.meta["custom"][CUSTOM_META_KEY]["source"] == conv.name
        assert all(nodes[name].meta[META_KEY].source == conv.name for name in conv.nodes)
    with torch.no_grad():
        torch.testing.assert_close(lowered.module()(X), small_cnn()(X), rtol=1e-4, atol=1e-5)
    # The original program is not changed.
    assert any("conv2d" in str(n.target) for n in program.graph.nodes)


def test_lowered_program_round_trips_through_save_and_load() -> None:
    model = small_cnn()
    program = torch.export.export(model, (X,), dynamic_shapes=({0: Dim("batch")},))
    lowered = lowerconv.lower(program)
    buffer = io.BytesIO()
    torch.export.save(lowered, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    assert conv_ops(loaded) == []
    sources = {
        n.meta["custom"][CUSTOM_META_KEY]["source"]
        for n in loaded.graph.nodes
        if CUSTOM_META_KEY in n.meta.get("custom", {})
    }
    assert sources == {"0", "3", "4"}
    saved_record = loaded.graph_module.meta["custom"]["lowerconv_record"]
    assert [c["name"] for c in saved_record["lowered"]] == ["0", "3", "4"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_lower_of_a_program_refuses_module_only_options() -> None:
    program = torch.export.export(small_cnn(), (X,))
    with pytest.raises(LoweringError, match="inplace=True, example_inputs="):
        lowerconv.lower(program, inplace=True, example_inputs=X)
    with pytest.raises(LoweringError, match="unknown strategy 'nope'"):
        lowerconv.lower(program, strategy="nope")


# -- artifacts: lowerconv export, verify --against -------------------------------------------


def test_export_lowered_writes_a_pt2_that_loads_and_runs(tmp_path) -> None:
    model = shape_branch()
    program = export_lowered(model, X, strategy="auto")
    artifact = write_artifact(program, tmp_path / "model.pt2")
    assert artifact.format == "pt2" and artifact.conv_ops == []
    assert artifact.ops["aten.matmul.default"] >= 2
    loaded = torch.export.load(str(tmp_path / "model.pt2"))
    with torch.no_grad():
        got, expected = loaded.module()(X), model(X)
    torch.testing.assert_close(got["out"], expected["out"], rtol=1e-4, atol=1e-5)


def test_dynamic_batch_needs_a_batch_of_two() -> None:
    with pytest.raises(LoweringError, match="batch of at least 2"):
        export_lowered(small_cnn(), X[:1], dynamic_batch=True)
    program = export_lowered(small_cnn(), X, dynamic_batch=True)
    x = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), small_cnn()(x), rtol=1e-4, atol=1e-5)


def test_unknown_artifact_suffix_is_refused(tmp_path) -> None:
    with pytest.raises(LoweringError, match=r"name the file \.pt2"):
        write_artifact(export_lowered(small_cnn(), X), tmp_path / "model.bin")


@pytest.mark.slow  # test_cli runs an ONNX file in onnxruntime by default; each export is seconds
def test_onnx_artifact_has_no_conv_and_matches_in_onnxruntime(tmp_path) -> None:
    pytest.importorskip("onnxscript", reason=ONNX_MISSING)
    pytest.importorskip("onnxruntime", reason=ONNX_MISSING)
    model = shape_branch()
    program = export_lowered(model, X, strategy="unfold")
    artifact = write_artifact(program, tmp_path / "model.onnx")
    assert artifact.format == "onnx"
    assert not {"Conv", "ConvTranspose"} & set(artifact.ops), artifact.ops
    assert artifact.ops["MatMul"] >= 4
    out, skip = run_artifact(program, "onnx", (X,))
    with torch.no_grad():
        expected = model(X)
    torch.testing.assert_close(out, expected["out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(skip, expected["skip"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # test_cli's --against onnx --against pt2 is the default run's
def test_verify_against_the_artifacts_adds_a_row_each() -> None:
    pytest.importorskip("onnxscript", reason=ONNX_MISSING)
    pytest.importorskip("onnxruntime", reason=ONNX_MISSING)
    report = lowerconv.verify(shape_branch(), X, timing=False, against=("onnx", "pt2"))
    assert report.ok, report.failure_message()
    paths = [o.path for o in report.runs[0].outputs]
    assert paths == [
        "output['out']",
        "output['skip']",
        "onnxruntime: output['out']",
        "onnxruntime: output['skip']",
        "pt2 (saved, loaded): output['out']",
        "pt2 (saved, loaded): output['skip']",
    ]
    assert "onnxruntime: output['out']" in str(report)
    onnx_row = report.runs[0].outputs[2]
    assert onnx_row.lowered is not None and onnx_row.lowered.rel_l2 < 1e-5


def test_verify_against_fails_when_the_artifact_is_wrong(monkeypatch) -> None:
    import lowerconv.lowering.export as export_module

    real = export_module.run_artifact

    def off_by_a_little(program, kind, inputs):
        return [t + 1e-2 for t in real(program, kind, inputs)]

    monkeypatch.setattr(export_module, "run_artifact", off_by_a_little)
    report = lowerconv.verify(small_cnn(), X, timing=False, against=("pt2",))
    assert not report.ok
    assert report.first_failure == "pt2 (saved, loaded): output"


def test_verify_against_an_unknown_artifact_is_an_error() -> None:
    with pytest.raises(LoweringError, match="'onnx' or 'pt2'"):
        lowerconv.verify(small_cnn(), X, timing=False, against=("tflite",))


@pytest.mark.slow
def test_compiled_lowered_program_matches_the_original() -> None:
    model = small_cnn()
    lowered = lowerconv.lower(torch.export.export(model, (X,)), strategy="auto").module()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(lowered)(X), model(X), rtol=1e-4, atol=1e-5)


# -- the real-world models: most that fx cannot trace come out as one exported graph ------------

# Not on the export path, and why: fx traces smp's U-Nets (the graph path); kornia's Canny is
# captured with a while_loop, whose body the pass does not lower (the fallback path).
NOT_EXPORTED = {"smp_unet": "graph", "smp_efficientnet_unet": "graph", "kornia_canny": "fallback"}
REALWORLD = list(REALWORLD_MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", REALWORLD, ids=REALWORLD)
def test_realworld_models_take_the_export_path(name: str) -> None:
    entry = REALWORLD_MODELS[name]
    pytest.importorskip(
        entry.library, reason=f'{name} needs the zoo extra: pip install -e ".[zoo]"'
    )
    model, inputs = entry.build()
    lowered = lowerconv.lower(model, example_inputs=inputs)
    record = lowerconv.lowering_record(lowered)
    assert record.path == NOT_EXPORTED.get(name, "export"), record.export_error
    if record.path == "export":
        convs = [n for n in lowered.graph.nodes if "aten.conv" in str(n.target)]
        assert not convs, convs
    with torch.no_grad():
        expected, got = model(*inputs), lowered(*inputs)
    want = [t for t in torch.utils._pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    have = [t for t in torch.utils._pytree.tree_leaves(got) if isinstance(t, torch.Tensor)]
    assert len(have) == len(want)
    for a, b in zip(have, want, strict=True):
        scale = max(b.abs().max().item(), 1e-3) if b.numel() and b.is_floating_point() else 1.0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
