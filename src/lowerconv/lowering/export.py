"""Lowered graphs in and out of ``torch.export``: the export tier, ExportedPrograms, artifacts.

Three things share one route, ``torch.export`` -> ``ep.module()`` -> :func:`lower_graph`:

- **the export tier of** :func:`lowerconv.lower`: a model ``torch.fx`` cannot trace is captured
  with ``torch.export.export(model, example_inputs, strict=False)``, which runs the forward in
  Python and records the ATen ops it calls, whatever control flow chose them; the captured
  graph (``ep.module()``) is lowered by the same pass as a traced one (:func:`capture_and_lower`);
- :func:`lower_program`: ``lowerconv.lower(ep)`` for an ``ExportedProgram`` returns one, with
  its convolutions lowered;
- :func:`export_lowered` and :func:`write_artifact`: what ``lowerconv export`` writes (a
  ``.pt2`` archive or an ``.onnx`` file) and what ``lowerconv verify --against`` runs.

Why re-export instead of ``ep.run_decompositions({aten.convolution.default: ...})``: a
decomposition table sees one conv at a time, as ATen arguments, after the program has already
been lowered to the core ATen opset; the pass instead works on the whole graph with the nodes
named after each conv and its provenance (``node.meta["lowerconv"]``), the same ``lower_graph``
the other paths run, so the strategies, the workspace cap and the record are the same.
Re-exporting the lowered ``ep.module()`` keeps the nodes' ``nn_module_stack`` and
``stack_trace``, and its ``from_node`` meta leads every new node back to the lowered node it
came from, which is how the provenance is carried over (:func:`_carry_provenance`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.export import Dim, ExportedProgram

from ..errors import LoweringError, MissingDependencyError
from .emit import META_KEY, Provenance
from .inputs import normalize_example_inputs
from .record import RECORD_ATTR, LoweringRecord
from .rewrite import lower_graph
from .sites import skipped_conv_modules
from .strategies import STRATEGY_NAMES, StrategyOptions

__all__ = [
    "ARTIFACT_FORMATS",
    "CUSTOM_META_KEY",
    "Artifact",
    "capture",
    "capture_and_lower",
    "export_lowered",
    "lower_program",
    "op_counts",
    "run_artifact",
    "write_artifact",
]

# node.meta["custom"] survives torch.export.save/load (as JSON); the record's copy is in
# ep.graph_module.meta["custom"][CUSTOM_META_KEY + "_record"].
CUSTOM_META_KEY = "lowerconv"
ARTIFACT_FORMATS = {".pt2": "pt2", ".onnx": "onnx"}


# -- capture --------------------------------------------------------------------------------------


def capture(model: nn.Module, inputs: tuple, *, dynamic_batch: bool = False) -> ExportedProgram:
    """``torch.export.export(model, inputs, strict=False)``; a failure is a :class:`LoweringError`.

    Non-strict export runs ``model``'s forward as Python, so ``isinstance`` checks, loops over
    a tensor's shape and calls into other libraries are followed for these inputs: the graph is
    specialised to their shapes, dtype and device.  ``dynamic_batch=True`` keeps dimension 0 of
    every tensor input symbolic (one shared ``Dim("batch")``), so the program takes any batch.
    """
    dynamic_shapes = _batch_dims(inputs) if dynamic_batch else None
    try:
        with _quiet_export_warnings(), _consistent_cudnn_tf32():
            return torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        batch = " with a dynamic batch" if dynamic_batch else ""
        raise LoweringError(
            f"torch.export.export(strict=False) could not capture {type(model).__name__}{batch}: "
            f"{type(exc).__name__}: {first}"
        ) from exc


def _batch_dims(inputs: tuple) -> tuple:
    batch = Dim("batch")
    return pytree.tree_map(
        lambda leaf: {0: batch} if isinstance(leaf, torch.Tensor) and leaf.dim() else None,
        inputs,
        is_leaf=lambda leaf: leaf is None,
    )


@contextlib.contextmanager
def _quiet_export_warnings():
    # Export warns about every tensor attribute a forward assigns (ultralytics' anchors); they
    # are the model's business, and the lowered graph reads the captured values either way.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        yield


@contextlib.contextmanager
def _consistent_cudnn_tf32():
    # Export saves and restores cuDNN's flags through the legacy allow_tf32 getter, which raises
    # when cuDNN's conv and RNN fp32_precision differ, as they do while verify pins the conv's
    # alone.  A capture computes nothing (fake tensors), so the conv's may agree with the RNN's
    # for its length.
    try:
        torch._C._get_cudnn_allow_tf32()
    except RuntimeError:
        conv, rnn = torch.backends.cudnn.conv, torch.backends.cudnn.rnn
        saved = conv.fp32_precision
        conv.fp32_precision = rnn.fp32_precision
        try:
            yield
        finally:
            conv.fp32_precision = saved
    else:
        yield


# -- the export tier of lower() ---------------------------------------------------------------


def capture_and_lower(
    work: nn.Module,
    inputs: tuple,
    strategy: str,
    options: StrategyOptions,
    record: LoweringRecord,
    *,
    kinds: Iterable[str] | None = None,
) -> fx.GraphModule:
    """The export tier: capture ``work`` with :func:`capture`, lower ``ep.module()``, return it.

    ``record`` gets ``path = "export"``, the lowered convs (named by ``nn_module_stack``, as
    ``layer1.0.conv1``) and those left alone.  The returned ``GraphModule`` holds ``work``'s own
    parameter and buffer objects under their qualified names (``state_dict()`` keys are the
    original's), runs on inputs shaped like ``inputs`` (``_guards_fn`` checks them), and is in
    ``work``'s train/eval mode, which the capture fixed: ``train()``/``eval()`` on it raise.
    Raises :class:`LoweringError` when ``torch.export`` cannot capture ``work``.
    """
    program = capture(work, inputs)
    gm = program.module()
    control_flow = _higher_order_ops(gm)
    if control_flow:
        raise LoweringError(
            f"torch.export captured {type(work).__name__} with control-flow operators "
            f"({', '.join(control_flow)}), whose bodies are graphs of their own that the pass "
            "does not lower, and that eager op audits cannot run"
        )
    lowered, skipped = lower_graph(gm, strategy, options=options, kinds=kinds)
    record.path = "export"
    record.lowered = lowered
    record.skipped.extend(skipped)
    already = {s.name for s in record.skipped}
    record.skipped.extend(skipped_conv_modules(work, already, kinds=kinds))
    record.notes.append(
        f"captured with torch.export (non-strict) on inputs {_describe(inputs)}: the lowered "
        "graph is specialised to those shapes, that dtype and device"
    )
    for module in gm.modules():
        # ep.module() refuses train()/eval(); the flag says which mode the capture fixed.
        object.__setattr__(module, "training", work.training)
    setattr(gm, RECORD_ATTR, record)
    preserved = gm.meta.setdefault("_user_preserved_attributes", {})
    preserved[RECORD_ATTR] = record
    return gm


def _higher_order_ops(gm: fx.GraphModule) -> list[str]:
    """The higher-order operators (``cond``, ``while_loop``...) ``gm``'s graph calls, by name."""
    found = {
        str(getattr(node.target, "__name__", node.target))
        for node in gm.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator)
    }
    return sorted(found)


def _describe(inputs: Any) -> str:
    parts = [
        "x".join(map(str, leaf.shape)) if isinstance(leaf, torch.Tensor) else repr(leaf)
        for leaf in pytree.tree_leaves(inputs)
    ]
    return "(" + ", ".join(parts) + ")"


# -- lower(ExportedProgram) -----------------------------------------------------------------------


def lower_program(
    program: ExportedProgram,
    *,
    strategy: str = "unfold",
    max_workspace_bytes: int | None = None,
    kinds: Iterable[str] | None = None,
) -> ExportedProgram:
    """``lowerconv.lower(ep)``: an ``ExportedProgram`` computing every convolution by GEMMs.

    The program is unlifted (``ep.module()``), lowered by
    :func:`lowerconv.lowering.rewrite.lower_graph`
    (every kind of convolution, or those of ``kinds=``)
    and exported again, non-strict, on example inputs rebuilt from its placeholders, with each
    symbolic dimension given back as a ``Dim`` of the same range (an input exported with a
    dynamic batch still takes any batch; its im2col is then not chunked by images, whatever
    ``max_workspace_bytes`` says, as a graph cannot loop a symbolic number of times).  The result has the same call signature, and the same
    parameters and buffers (``ep.state_dict`` keys) as its state; ``ep`` is not changed.

    The record is the attribute ``_lowerconv_record`` of the returned program, which
    :func:`lowerconv.lowering_record` reads; its JSON is also kept in
    ``graph_module.meta["custom"]["lowerconv_record"]``, and every node the pass made carries
    its provenance in ``node.meta["lowerconv"]`` and, as a dict, in
    ``node.meta["custom"]["lowerconv"]``: those two survive ``torch.export.save``/``load``.

    Example: ``conv2d = torch.ops.aten.conv2d.default(x, p_conv_weight, p_conv_bias)`` becomes
    ``im2col = torch.ops.aten.im2col.default(x, [3, 3], ...)``, ``flatten``, ``matmul``,
    ``add``, ``unflatten`` (the ``unfold`` strategy).
    """
    if strategy not in STRATEGY_NAMES:
        raise LoweringError(
            f"unknown strategy {strategy!r} for the ExportedProgram; valid strategies: "
            f"{', '.join(repr(s) for s in STRATEGY_NAMES)}"
        )
    try:
        options = StrategyOptions(max_workspace_bytes=max_workspace_bytes)
    except ValueError as err:
        raise LoweringError(f"{err}; e.g. max_workspace_bytes=64 * 2**20 for 64 MiB") from err
    args, kwargs = _example_inputs(program)
    dynamic_shapes = _dynamic_shapes(program, args, kwargs)
    gm = program.module()
    control_flow = _higher_order_ops(gm)
    if control_flow:
        raise LoweringError(
            f"the ExportedProgram calls control-flow operators ({', '.join(control_flow)}), "
            "whose bodies are graphs of their own that the pass does not lower. Fix: export "
            "the model without them (torch.cond, while_loop), e.g. for the input it will see"
        )
    lowered, skipped = lower_graph(gm, strategy, options=options, kinds=kinds)
    record = LoweringRecord(
        model="ExportedProgram",
        strategy=strategy,
        path="export",
        max_workspace_bytes=max_workspace_bytes,
        lowered=lowered,
        skipped=skipped,
    )
    provenance = {n.name: n.meta[META_KEY] for n in gm.graph.nodes if META_KEY in n.meta}
    try:
        with _quiet_export_warnings(), _consistent_cudnn_tf32():
            result = torch.export.export(
                gm, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False
            )
    except Exception as exc:
        dynamic = " with its symbolic dimensions" if dynamic_shapes is not None else ""
        raise LoweringError(
            f"re-exporting the lowered ExportedProgram ({len(lowered)} conv(s), strategy "
            f"{strategy!r}){dynamic} failed: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0]}. Fix: try "
            "lowerconv.lower(ep, strategy='unfold'), the plainest graph"
        ) from exc
    renamed = _carry_provenance(result.graph, provenance)
    for conv in record.lowered:
        conv.nodes = [new for old in conv.nodes for new in renamed.get(old, [])]
        conv.output_node = (renamed.get(conv.output_node) or [conv.output_node])[-1]
    setattr(result, RECORD_ATTR, record)
    result.graph_module.meta.setdefault("custom", {})[f"{CUSTOM_META_KEY}_record"] = (
        record.to_dict()
    )
    return result


def _example_inputs(program: ExportedProgram) -> tuple[tuple, dict]:
    """The program's own example inputs, or zeros shaped like its placeholders' fake values."""
    if program.example_inputs is not None:
        args, kwargs = program.example_inputs
        return tuple(args), dict(kwargs)
    user = set(program.graph_signature.user_inputs)
    leaves = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shape = [_hint(size) for size in value.shape]
            leaves.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
        else:
            leaves.append(_hint(value) if isinstance(value, torch.SymInt) else value)
    args, kwargs = pytree.tree_unflatten(leaves, program.call_spec.in_spec)
    return tuple(args), dict(kwargs)


def _hint(size: Any) -> Any:
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else 2
    return size


def _dynamic_shapes(program: ExportedProgram, args: tuple, kwargs: dict) -> Any:
    """``dynamic_shapes=`` for re-exporting: every symbolic input dimension as a ``Dim``.

    One ``Dim`` per symbol, with the symbol's range from ``program.range_constraints``, so
    dimensions that were equal stay equal.  None when every dimension is static.
    """
    dims: dict[Any, Any] = {}
    user = set(program.graph_signature.user_inputs)
    per_leaf = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            per_leaf.append(None)
            continue
        spec = {}
        for i, size in enumerate(value.shape):
            if isinstance(size, torch.SymInt):
                spec[i] = _dim_for(size, program, dims, node.name)
        per_leaf.append(spec or None)
    if not dims:
        return None
    args_spec, kwargs_spec = pytree.tree_unflatten(per_leaf, program.call_spec.in_spec)
    if not kwargs_spec:
        return tuple(args_spec)
    names = list(inspect.signature(program.module().forward).parameters)
    return {**dict(zip(names, args_spec, strict=False)), **kwargs_spec}


def _dim_for(size: torch.SymInt, program: ExportedProgram, dims: dict, where: str) -> Any:
    expr = size.node.expr
    if expr in dims:
        return dims[expr]
    if not expr.is_Symbol:
        raise LoweringError(
            f"input {where!r} of the ExportedProgram has a dimension {expr} derived from "
            "another; lowering keeps plain symbolic dimensions (Dim('batch')) only. Fix: "
            "export with independent Dims, or with static shapes"
        )
    bounds = program.range_constraints.get(expr)
    low = int(bounds.lower) if bounds is not None else 0
    high = bounds.upper if bounds is not None else math.inf
    high = None if not math.isfinite(float(high)) else int(high)
    dims[expr] = Dim(str(expr), min=low, max=high) if high is not None else Dim(str(expr), min=low)
    return dims[expr]


def _carry_provenance(graph: fx.Graph, provenance: dict[str, Provenance]) -> dict[str, list[str]]:
    """Stamp re-exported nodes with the provenance of the lowered nodes they came from.

    Returns each lowered node's name -> the names of the re-exported nodes made from it.
    """
    renamed: dict[str, list[str]] = {}
    for node in graph.nodes:
        for source in node.meta.get("from_node") or ():
            prov = provenance.get(source.name)
            if prov is None:
                continue
            node.meta[META_KEY] = prov
            node.meta.setdefault("custom", {})[CUSTOM_META_KEY] = prov.to_dict()
            renamed.setdefault(source.name, []).append(node.name)
            break
    return renamed


# -- artifacts: what `lowerconv export` writes and `verify --against` runs ----------------------


@dataclass
class Artifact:
    """A lowered model exported: the program, what it was written as, and its op counts."""

    program: ExportedProgram
    format: str  # "pt2" or "onnx"
    ops: Counter[str]
    onnx_model: Any = None  # onnx.ModelProto for "onnx"
    path: str | None = None

    @property
    def conv_ops(self) -> list[str]:
        return [op for op in self.ops if "conv" in op.lower() or "mkldnn" in op.lower()]


def export_lowered(
    model: nn.Module,
    example_inputs: Any,
    *,
    strategy: str = "unfold",
    dynamic_batch: bool = False,
    max_workspace_bytes: int | None = None,
) -> ExportedProgram:
    """``model`` captured by ``torch.export`` (on a copy), then lowered: ``lower(export(model))``.

    The same route for every model ``torch.export`` can capture, whether ``torch.fx`` traces it
    or not.  ``dynamic_batch=True`` captures dimension 0 of the inputs as a ``Dim`` (a batch of
    at least 2 in ``example_inputs``: export specialises a size-1 dimension).
    """
    inputs = normalize_example_inputs(model, example_inputs)
    if dynamic_batch and any(
        isinstance(t, torch.Tensor) and t.dim() and t.shape[0] < 2
        for t in pytree.tree_leaves(inputs)
    ):
        raise LoweringError(
            "a dynamic batch needs example inputs with a batch of at least 2 (torch.export "
            "specialises a size-1 dimension); e.g. --batch-size 2"
        )
    try:
        work = copy.deepcopy(model)
    except Exception as exc:
        raise LoweringError(
            f"could not deep-copy {type(model).__name__} to export it without changing it: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    program = capture(work, inputs, dynamic_batch=dynamic_batch)
    lowered = lower_program(program, strategy=strategy, max_workspace_bytes=max_workspace_bytes)
    getattr(lowered, RECORD_ATTR).model = type(model).__name__
    return lowered


def op_counts(program: ExportedProgram) -> Counter[str]:
    """How many times each op is called in ``program``'s graph (``aten.matmul.default``: 3)."""
    return Counter(
        str(node.target).replace("aten::", "aten.")
        for node in program.graph.nodes
        if node.op == "call_function"
    )


def onnx_op_counts(model_proto: Any) -> Counter[str]:
    """How many nodes of each type an ONNX model's main graph holds (``MatMul``: 3)."""
    return Counter(node.op_type for node in model_proto.graph.node)


def write_artifact(program: ExportedProgram, path: str | Path) -> Artifact:
    """Write ``program`` as ``.pt2`` (``torch.export.save``) or ``.onnx`` (dynamo exporter).

    ONNX needs the ``onnx`` extra (``pip install -e ".[onnx]"``).
    """
    path = Path(path)
    kind = ARTIFACT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise LoweringError(
            f"cannot tell what to write from {str(path)!r}: name the file .pt2 (a torch.export "
            "archive) or .onnx"
        )
    if kind == "pt2":
        torch.export.save(program, str(path))
        return Artifact(program, "pt2", op_counts(program), path=str(path))
    proto = to_onnx(program)
    path.write_bytes(proto.SerializeToString())
    return Artifact(program, "onnx", onnx_op_counts(proto), onnx_model=proto, path=str(path))


def to_onnx(program: ExportedProgram) -> Any:
    """The ``onnx.ModelProto`` of ``program``, from ``torch.onnx.export(..., dynamo=True)``."""
    _require_onnx("onnxscript", "export to ONNX")
    try:
        with _quiet_export_warnings(), _consistent_cudnn_tf32():
            onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    except Exception as exc:
        raise LoweringError(
            f"torch.onnx.export(dynamo=True) failed on the lowered program: "
            f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        ) from exc
    return onnx_program.model_proto


def run_artifact(program: ExportedProgram, kind: str, inputs: tuple) -> list[torch.Tensor]:
    """Run the lowered ``program`` as it leaves PyTorch; return its output tensors, flattened.

    ``"onnx"``: exported to ONNX and run in onnxruntime (CPU); ``"pt2"``: saved with
    ``torch.export.save``, loaded back and run.  Inputs are the program's positional ones.
    """
    if kind == "pt2":
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        loaded = torch.export.load(buffer)
        with torch.no_grad():
            output = loaded.module()(*inputs)
        return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]
    if kind != "onnx":
        raise LoweringError(f"unknown artifact kind {kind!r}; use 'onnx' or 'pt2'")
    ort = _require_onnx("onnxruntime", "run ONNX")
    proto = to_onnx(program)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = [leaf for leaf in pytree.tree_leaves(inputs) if isinstance(leaf, torch.Tensor)]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(tensors):
        raise LoweringError(
            f"the ONNX model takes {len(names)} input(s) ({', '.join(names)}), the example "
            f"inputs have {len(tensors)} tensor(s)"
        )
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(names, tensors, strict=True)}
    return [torch.from_numpy(value) for value in session.run(None, feeds)]


ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_onnx(what: str) -> None:
    """Raise :class:`MissingDependencyError`, install command first, unless every package of
    the ``onnx`` extra is importable; ``what`` says what needs them (``"--against onnx"``).
    Cheap: it finds the packages without importing them."""
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(_onnx_hint(what, ", ".join(missing)))


def _require_onnx(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(_onnx_hint(f"to {what}", module)) from exc


def _onnx_hint(what: str, missing: str) -> str:
    return (
        f'pip install -e ".[onnx]" (or pip install onnx onnxscript onnxruntime): {what} needs '
        f"{missing}, which is not installed"
    )


def describe_ops(ops: Counter[str]) -> str:
    """``aten.matmul.default x 3, aten.add.Tensor x 3, ...``, most frequent first."""
    return ", ".join(f"{op} x {n}" for op, n in ops.most_common())
