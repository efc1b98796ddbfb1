"""Lowered graphs leave PyTorch with portable ops only, whatever the strategy.

``auto`` runs oneDNN's private ``mkldnn._linear_pointwise`` GEMM in eager on CPU, where it is
fast; a tracer (torch.export, torch.compile) must record plain ``aten`` ops instead, or the
graph dead-ends in every exporter and compiler that lacks that op.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowerconv
from op_names import OpNames


def small_cnn() -> nn.Module:
    """One conv per fast strategy under auto: nchw stem, taps (32x32 outputs), depthwise, 1x1,
    and a kernel == stride conv (nchw)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 8, 1),
        nn.Conv2d(8, 8, 4, stride=4),
    ).eval()


def private_or_conv(names) -> list[str]:
    return [n for n in names if "mkldnn" in n or "conv" in n]


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("strategy", ["auto", "unfold"])
def test_exported_graph_has_only_portable_ops(strategy: str, grad: bool) -> None:
    model = small_cnn()
    x = torch.randn(2, 3, 32, 32)
    lowered = lowerconv.lower(model, strategy=strategy)
    with torch.set_grad_enabled(grad):
        program = torch.export.export(lowered, (x,))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert private_or_conv(targets) == [], targets
    decomposed = program.run_decompositions()
    targets = [str(n.target) for n in decomposed.graph.nodes if n.op == "call_function"]
    assert private_or_conv(targets) == [], targets
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_eager_auto_keeps_the_fast_cpu_gemm(onednn_gemm) -> None:
    # The guard hides oneDNN from tracers only: eager inference still takes it.
    lowered = lowerconv.lower(small_cnn(), strategy="auto")
    with torch.no_grad(), OpNames() as seen:
        lowered(torch.randn(2, 3, 32, 32))
    assert any("mkldnn._linear_pointwise" in name for name in seen.names), seen.names


@pytest.mark.slow
def test_compiled_auto_lowering_matches_the_original() -> None:
    model = small_cnn()
    x = torch.randn(2, 3, 32, 32)
    lowered = lowerconv.lower(model, strategy="auto")
    with torch.no_grad():
        compiled = torch.compile(lowered)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["auto", "unfold"])
def test_onnx_export_has_no_conv_and_runs_in_onnxruntime(strategy: str) -> None:
    pytest.importorskip(
        "onnxscript", reason='ONNX export needs the onnx extra: pip install -e ".[onnx]"'
    )
    ort = pytest.importorskip(
        "onnxruntime", reason='needs the onnx extra: pip install -e ".[onnx]"'
    )
    model = small_cnn()
    x = torch.randn(2, 3, 32, 32)
    lowered = lowerconv.lower(model, strategy=strategy)
    with torch.no_grad():
        program = torch.onnx.export(lowered, (x,), dynamo=True, verbose=False)
    op_types = {node.op_type for node in program.model_proto.graph.node}
    assert not {"Conv", "ConvTranspose"} & op_types, op_types
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)
