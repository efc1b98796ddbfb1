"""Prove a lowering held: run the original and the lowered model and compare them, layer by layer.

:func:`verify` works on copies only.  On each device it makes three of them: the *native* model
(the original, in the dtype verified), the *lowered* model (same dtype) and the *oracle* (the
original in float64, the ground truth).  Then:

1. **End to end.**  All three run on the same inputs, each after the same seed, so dropout masks
   match.  Every tensor leaf of the output (tuples, dicts, namedtuples) is compared with the
   oracle's, for the native and the lowered model; the lowered model passes when its error is
   within a small factor of the native model's plus a dtype floor (:func:`lowerconv.metrics.judge`).
2. **Per layer.**  Each lowered conv, found through the pass's ``node.meta["lowerconv"]``
   provenance (:func:`~lowerconv.subgraph.conv_subgraph`), runs on the input the original model
   gives that conv; its output is compared with the original conv's in the native dtype and in
   float64, by the same rule (the *local* error).  The first conv whose local error fails is
   named by its original qualified name.  The *accumulated* error, each model's own value at
   that conv's output against the oracle's, shows how errors grow along the run.
3. **Time and memory.**  Native and lowered forwards, warmed up, A/B interleaved, CUDA
   synchronised inside the clock; median, IQR, ratio; CUDA peak memory; im2col bytes per conv.

Precision flags (TF32, reduced-precision reductions) are pinned while verifying and restored
after; RNG state is forked and restored.  ``docs/verification.md`` documents it all.
"""

from __future__ import annotations

import contextlib
import copy
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from .errors import LoweringError
from .lower import lower
from .metrics import Tolerance, compare, default_tolerance, judge, quartiles
from .record import LoweredConv, LoweringRecord, lowering_record
from .report import (
    DeviceRun,
    LayerCheck,
    OutputCheck,
    Timing,
    TimingStats,
    VerificationReport,
)
from .spec import ConvSpec
from .subgraph import conv_subgraph, provenance
from .trace import trace

__all__ = [
    "MatchedRandomness",
    "VerificationError",
    "VerificationReport",
    "pinned_precision",
    "verify",
]


class VerificationError(AssertionError):
    """A lowered model that does not match its original; raised by ``report.raise_if_failed()``.

    An ``AssertionError``, so pytest shows it as a failed assertion.  The message names the
    first failing layer by its original qualified name, with its errors and their bound.
    """


Progress = Callable[[str], None]


def verify(
    model: nn.Module,
    example_inputs: Any,
    *,
    lowered: nn.Module | None = None,
    strategy: str = "unfold",
    device: str | torch.device | Sequence[str | torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    rtol: float | None = None,
    atol: float | None = None,
    timing: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    per_layer: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
    factor: float | None = None,
    allow_tf32: bool = False,
    lower_options: dict[str, Any] | None = None,
) -> VerificationReport:
    """Verify that ``lowered`` (by default ``lowerconv.lower(model, strategy=strategy)``)
    computes what ``model`` computes; return a :class:`~lowerconv.report.VerificationReport`.

    ``example_inputs`` is a tuple of tensors (or one tensor) that ``model`` accepts; floating
    point inputs are cast to ``dtype``.  ``device`` is ``"cpu"``, ``"cuda"``, ``"all"`` (both)
    or a list; a CUDA device that is not available is skipped with the reason in
    ``report.devices_skipped``, not an error.  ``rtol``/``atol``/``factor`` override the
    per-dtype defaults of :data:`lowerconv.metrics.DEFAULT_TOLERANCES`.  ``timing=False`` skips
    timing; ``per_layer=False`` skips the per-layer checks.  ``seed`` is set before every forward
    so dropout matches between models.  ``progress`` gets one line per step.  ``allow_tf32=True``
    leaves TF32 on (it is off while verifying by default).  ``lower_options`` (e.g.
    ``leaf_modules``, ``concrete_args``, ``strict``) are passed to :func:`lowerconv.lower` and to
    the re-trace of the original the per-layer checks use: pass the options the lowered model
    was made with.

    Nothing passed in is changed: not parameters, buffers, train/eval mode, nor the RNG state.
    Raises :class:`~lowerconv.errors.LoweringError` for a model that cannot be lowered or run
    on the inputs; a wrong lowering is not an error but a failing report (``report.ok`` is
    False; ``report.raise_if_failed()`` raises :class:`VerificationError`).

    Example::

        report = lowerconv.verify(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
        print(report)                  # per-layer table, then the summary
        report.raise_if_failed()
    """
    say = progress or (lambda line: None)
    _check_arguments(model, lowered, dtype, repeats, warmup)
    inputs = _normalize_inputs(model, example_inputs)
    tolerance = _tolerance(dtype, rtol, atol, factor)
    devices, skipped = _resolve_devices(device)
    options = dict(lower_options or {})
    for name in skipped:
        say(f"skipping {name}: {skipped[name]}")

    if lowered is None:
        say(f"lowering {type(model).__name__} with strategy {strategy!r}")
        lowered = lower(model, strategy=strategy, **options)
    record = _record_of(lowered)
    notes = []
    if record is None:
        notes.append(
            f"{type(lowered).__name__} carries no lowering record (it did not come from "
            "lowerconv.lower, or was rebuilt): per-layer checks skipped, outputs compared only"
        )
    if lowered.training != model.training:
        notes.append(
            f"the lowered model is in {'train' if lowered.training else 'eval'} mode and the "
            f"original in {'train' if model.training else 'eval'} mode; each runs in its own"
        )

    plan = _Plan(
        tolerance=tolerance,
        dtype=dtype,
        seed=seed,
        per_layer=per_layer and record is not None,
        timing=timing,
        repeats=repeats,
        warmup=warmup,
        trace_options={k: options[k] for k in ("leaf_modules", "concrete_args") if k in options},
        say=say,
    )
    runs = []
    with pinned_precision(allow_tf32=allow_tf32) as flags, _preserved_rng(devices):
        for dev in devices:
            runs.append(_verify_on(dev, model, lowered, record, inputs, plan))

    from . import __version__

    return VerificationReport(
        model=type(model).__name__,
        lowered_model=type(lowered).__name__,
        strategy=record.strategy if record else strategy,
        path=record.path if record else "unknown",
        dtype=_dtype_name(dtype),
        tolerance=tolerance,
        seed=seed,
        training=model.training,
        inputs=[_describe_input(x) for x in inputs],
        precision_flags=flags,
        lowering=_lowering_summary(record),
        runs=runs,
        devices_skipped=skipped,
        notes=notes,
        versions={
            "lowerconv": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    )


@dataclass
class _Plan:
    """The settings of one call to :func:`verify` that every device run shares."""

    tolerance: Tolerance
    dtype: torch.dtype
    seed: int
    per_layer: bool
    timing: bool
    repeats: int
    warmup: int
    trace_options: dict[str, Any]
    say: Progress


def _verify_on(
    dev: torch.device,
    model: nn.Module,
    lowered: nn.Module,
    record: LoweringRecord | None,
    inputs: tuple,
    plan: _Plan,
) -> DeviceRun:
    say = plan.say
    say(f"[{dev}] copying the model ({_dtype_name(plan.dtype)}, float64 oracle) and the lowering")
    native = _copy_to(model, dev, plan.dtype, "the model")
    oracle = _copy_to(model, dev, torch.float64, "the model")
    low = _copy_to(lowered, dev, plan.dtype, "the lowered model")
    x = _cast_inputs(inputs, dev, plan.dtype)
    x64 = _cast_inputs(inputs, dev, torch.float64)
    run = DeviceRun(device=str(dev), device_name=_device_name(dev), ok=True, first_failure=None)

    convs = record.lowered if record is not None and plan.per_layer else []
    fallback = [c for c in convs if c.graph_module]
    hooks = _ModuleCapture(native, oracle, low, fallback) if fallback else None

    say(f"[{dev}] end to end: native, float64 oracle, lowered")
    with torch.no_grad(), MatchedRandomness():
        out_native = _forward(native, x, dev, plan.seed, "the model", inputs)
        out_oracle, promoted = _oracle_forward(oracle, x64, dev, plan.seed, inputs)
        out_lowered = _forward(low, x, dev, plan.seed, "the lowered model", inputs)
    if hooks is not None:
        hooks.remove()
    run.outputs, notes = _check_outputs(out_native, out_lowered, out_oracle, plan.tolerance)
    run.notes.extend(notes)
    if promoted:
        run.notes.append(
            "the model creates float32 tensors of its own (e.g. coordinate grids), so its float64 "
            "copy failed as is; the oracle ran with every float32 tensor promoted to float64"
        )
    del out_native, out_oracle, out_lowered

    if convs:
        say(f"[{dev}] per layer: {len(convs)} lowered conv(s)")
        with torch.no_grad(), MatchedRandomness():
            graph_convs = [c for c in convs if not c.graph_module]
            checks = {}
            if graph_convs:
                leaves = [c.graph_module for c in fallback]
                checks.update(
                    _check_graph_layers(graph_convs, leaves, native, oracle, low, x, x64, dev, plan)
                )
            if hooks is not None:
                checks.update(_check_fallback_layers(fallback, hooks, oracle, low, plan))
        run.layers = [checks[id(c)] for c in convs]

    if plan.timing:
        say(f"[{dev}] timing: {plan.warmup} warm-up + {plan.repeats} interleaved repeats")
        with torch.no_grad():
            run.timing = _time_forward(native, low, x, dev, plan)

    failing_layer = next((c.name for c in run.layers if c.status == "fail"), None)
    failing_output = next((o.path for o in run.outputs if not o.ok), None)
    run.first_failure = failing_layer or failing_output
    run.ok = run.first_failure is None
    verdict = "pass" if run.ok else f"FAIL, first failure {run.first_failure}"
    say(f"[{dev}] {verdict}")
    return run


# -- end to end ------------------------------------------------------------------------------


def _check_outputs(
    native: Any, lowered: Any, oracle: Any, tol: Tolerance
) -> tuple[list[OutputCheck], list[str]]:
    """One :class:`OutputCheck` per leaf of the output, matched by its path in the pytree.

    Leaves are matched by path (``['out']``, ``.aux1``, ``[0]``), not by container type: FX's
    generated code returns a ``dict`` where the original returned an ``OrderedDict``, which is a
    note, not a failure.
    """
    native_leaves, native_spec = pytree.tree_flatten_with_path(native)
    lowered_leaves, lowered_spec = pytree.tree_flatten_with_path(lowered)
    oracle_leaves, _ = pytree.tree_flatten_with_path(oracle)
    native_paths = [pytree.keystr(path) for path, _ in native_leaves]
    lowered_paths = [pytree.keystr(path) for path, _ in lowered_leaves]
    if native_paths != lowered_paths:
        return [
            OutputCheck(
                path="output",
                shape=None,
                dtype=None,
                ok=False,
                reason=f"the lowered model returns {_structure(lowered_spec)}, the original "
                f"{_structure(native_spec)}",
            )
        ], []
    notes = []
    if native_spec != lowered_spec:
        notes.append(
            f"output containers differ, leaves match: the lowered model returns "
            f"{_structure(lowered_spec)}, the original {_structure(native_spec)}"
        )
    checks = []
    for (path, n), (_, lo), (_, o) in zip(
        native_leaves, lowered_leaves, oracle_leaves, strict=True
    ):
        label = "output" + pytree.keystr(path)
        if not isinstance(n, torch.Tensor):
            same = type(n) is type(lo) and n == lo
            checks.append(
                OutputCheck(
                    path=label,
                    shape=None,
                    dtype=type(n).__name__,
                    ok=bool(same),
                    reason=None if same else f"original returns {n!r}, lowered {lo!r}",
                )
            )
            continue
        checks.append(_check_tensor(label, n, lo, o, tol))
    return checks, notes


def _check_tensor(
    label: str, native: Any, lowered: Any, oracle: Any, tol: Tolerance
) -> OutputCheck:
    shape, dtype = tuple(native.shape), _dtype_name(native.dtype)
    if not isinstance(lowered, torch.Tensor) or lowered.shape != native.shape:
        got = tuple(lowered.shape) if isinstance(lowered, torch.Tensor) else type(lowered).__name__
        return OutputCheck(
            label, shape, dtype, ok=False, reason=f"lowered value is {got}, original {shape}"
        )
    native_diff = compare(native, oracle, rtol=tol.rtol, atol=tol.atol)
    lowered_diff = compare(lowered, oracle, rtol=tol.rtol, atol=tol.atol)
    verdict = judge(native_diff, lowered_diff, tol)
    return OutputCheck(
        path=label,
        shape=shape,
        dtype=dtype,
        ok=verdict.ok,
        reason=verdict.reason,
        native=native_diff,
        lowered=lowered_diff,
        lowered_vs_native=compare(lowered, native, rtol=tol.rtol, atol=tol.atol),
        judgement=verdict,
    )


# -- per layer: the graph path ---------------------------------------------------------------


class _Capture(fx.Interpreter):
    """Runs a graph and keeps (a copy of) the values of the nodes named in ``wanted`` only."""

    def __init__(self, gm: fx.GraphModule, wanted: Iterable[str]) -> None:
        super().__init__(gm)
        self.wanted = set(wanted)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = _snapshot(result)
        return result


@dataclass
class _LayerPlan:
    """Where the values one conv's local check needs come from, by node name."""

    conv: LoweredConv
    check: LayerCheck
    original: fx.Node | None = None
    subgraph: fx.GraphModule | None = None
    # (run, node name) pairs: run is "native", "oracle" or "lowered".
    sub_inputs: list[tuple[str, str]] = field(default_factory=list)
    oracle_inputs: dict[fx.Node, tuple[str, str]] = field(default_factory=dict)
    lowered_output: str | None = None


def _check_graph_layers(
    convs: list[LoweredConv],
    leaves: list[str],
    native: nn.Module,
    oracle: nn.Module,
    low: nn.Module,
    x: tuple,
    x64: tuple,
    dev: torch.device,
    plan: _Plan,
) -> dict[int, LayerCheck]:
    """Local and accumulated errors of convs lowered into the top module's graph.

    The original is re-traced (deterministically, so its node names are those of the lowered
    graph for every node the pass left alone); the native, oracle and lowered graphs each run
    once under a :class:`_Capture`, then every lowered conv's nodes run on their own, fed the
    values the original graph gives them.  ``leaves`` are the qualified names of convs the pass
    kept as ``call_module`` leaves (checked with hooks instead); the re-trace keeps them too.
    """
    checks = {id(c): _layer_check(c) for c in convs}
    options = dict(plan.trace_options)
    options["leaf_modules"] = [*options.get("leaf_modules", ()), *leaves]
    try:
        traced_native = trace(native, **options)
        traced_oracle = trace(oracle, **options)
    except LoweringError as err:
        for check in checks.values():
            _unchecked(check, f"the original could not be re-traced: {str(err).splitlines()[0]}")
        return checks
    if not isinstance(low, fx.GraphModule):
        for check in checks.values():
            _unchecked(check, f"the lowered model is a {type(low).__name__}, not a GraphModule")
        return checks
    original_nodes = {n.name: n for n in traced_native.graph.nodes}
    original_data = _input_dependent(traced_native.graph)
    lowered_nodes = {n.name: n for n in low.graph.nodes}
    lowered_data = _input_dependent(low.graph)
    # A conv fed by another conv reads that conv's lowered output; its original is the conv node.
    outputs = {_lowered_output(low, conv): conv.node for conv in convs}

    wanted: dict[str, set[str]] = {"native": set(), "oracle": set(), "lowered": set()}
    plans = []
    for conv in convs:
        p = _plan_layer(
            conv,
            checks[id(conv)],
            low,
            original_nodes,
            original_data,
            lowered_nodes,
            lowered_data,
            outputs,
        )
        if p is None:
            continue
        plans.append(p)
        wanted["native"].add(conv.node)
        wanted["oracle"].add(conv.node)
        wanted["lowered"].add(p.lowered_output)
        for run, name in [*p.sub_inputs, *p.oracle_inputs.values()]:
            wanted[run].add(name)

    values = {
        "native": _capture(traced_native, x, wanted["native"], dev, plan.seed),
        "oracle": _capture(traced_oracle, x64, wanted["oracle"], dev, plan.seed),
        "lowered": _capture(low, x, wanted["lowered"], dev, plan.seed),
    }
    # The original conv node (of the native trace) runs on the oracle's modules and parameters:
    # both traces have the same nodes, and run_node reads only its inputs from env.
    oracle_runner = fx.Interpreter(traced_oracle)
    for p in plans:
        args = [values[run][name] for run, name in p.sub_inputs]
        try:
            lowered_local = p.subgraph(*args)
        except Exception as exc:
            _raised(p.check, exc)
            continue
        oracle_runner.env = {
            node: _to_float64(values[run][name]) if run == "native" else values[run][name]
            for node, (run, name) in p.oracle_inputs.items()
        }
        oracle_local = oracle_runner.run_node(p.original)
        conv_input = (
            values["native"][p.conv.input_node]
            if p.conv.input_node in values["native"]
            else args[0]
        )
        _finish(
            p.check,
            spec=p.conv.spec,
            conv_input=conv_input,
            native_local=values["native"][p.conv.node],
            lowered_local=lowered_local,
            oracle_local=oracle_local,
            native_value=values["native"][p.conv.node],
            lowered_value=values["lowered"][p.lowered_output],
            oracle_value=values["oracle"][p.conv.node],
            plan=plan,
        )
    oracle_runner.env = {}
    return checks


def _plan_layer(
    conv: LoweredConv,
    check: LayerCheck,
    low: fx.GraphModule,
    original_nodes: dict[str, fx.Node],
    original_data: set[str],
    lowered_nodes: dict[str, fx.Node],
    lowered_data: set[str],
    lowered_outputs: dict[str, str],
) -> _LayerPlan | None:
    """Map one conv's lowered nodes to the original graph's; None (and unchecked) if they don't."""
    original = original_nodes.get(conv.node)
    if original is None:
        _unchecked(
            check,
            f"node {conv.node!r} is not in the re-traced original graph; pass verify() the "
            "lower_options the model was lowered with",
        )
        return None
    try:
        subgraph, names = conv_subgraph(low, conv)
    except LoweringError as err:
        _unchecked(check, str(err))
        return None
    p = _LayerPlan(conv=conv, check=check, original=original, subgraph=subgraph)
    for name in names:
        if name in lowered_data:
            # Data flowing into the conv: take the original model's value.
            original_name = lowered_outputs.get(name, name)
            if original_name not in original_nodes:
                _unchecked(
                    check,
                    f"the lowered conv reads node {name!r}, which the original graph does not have",
                )
                return None
            p.sub_inputs.append(("native", original_name))
        else:
            # A parameter, or a weight computed from one: the lowered model's own.
            p.sub_inputs.append(("lowered", name))
    for node in original.all_input_nodes:
        run = "native" if node.name in original_data else "oracle"
        p.oracle_inputs[node] = (run, node.name)
    p.lowered_output = _lowered_output(low, conv)
    if p.lowered_output not in lowered_nodes:
        _unchecked(check, f"output node {p.lowered_output!r} is not in the lowered graph")
        return None
    return p


def _lowered_output(low: fx.GraphModule, conv: LoweredConv) -> str:
    """The node now producing ``conv``'s value: by provenance, so a user's edit is followed."""
    outputs = [
        n
        for n in low.graph.nodes
        if (prov := provenance(n)) is not None and prov.source == conv.name and prov.is_output
    ]
    return outputs[-1].name if outputs else conv.output_node


def _snapshot(value: Any) -> Any:
    """A copy of the tensors in ``value`` that later in-place ops (``ReLU(inplace=True)``,
    ``+=``) cannot change.  Parameters are kept as they are: a copy would not require grad,
    and ``torch.matmul`` picks another kernel for it, so the check would not run the
    arithmetic the lowered model runs."""
    return pytree.tree_map_only(
        torch.Tensor, lambda t: t if isinstance(t, nn.Parameter) else t.clone(), value
    )


def _input_dependent(graph: fx.Graph) -> set[str]:
    """Names of the nodes whose value depends on the model's inputs (not only on parameters)."""
    dependent: set[str] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a.name in dependent for a in node.all_input_nodes):
            dependent.add(node.name)
    return dependent


def _capture(
    gm: fx.GraphModule, inputs: tuple, wanted: set[str], dev: torch.device, seed: int
) -> dict[str, Any]:
    runner = _Capture(gm, wanted)
    _seed(dev, seed)
    runner.run(*inputs)
    return runner.values


# -- per layer: the fallback path ------------------------------------------------------------


class _ModuleCapture:
    """Forward hooks on the three copies' lowered-conv modules, first call only.

    On the fallback path each conv is a submodule of its own; the native copy's hook keeps its
    input and output, the oracle's and lowered copy's hooks their outputs.
    """

    def __init__(
        self, native: nn.Module, oracle: nn.Module, low: nn.Module, convs: list[LoweredConv]
    ) -> None:
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, Any]] = {"native": {}, "oracle": {}, "lowered": {}}
        self.handles = []
        for conv in convs:
            name = conv.graph_module
            for run, model in (("native", native), ("oracle", oracle), ("lowered", low)):
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    continue
                self.handles.append(module.register_forward_hook(self._hook(run, name)))

    def _hook(self, run: str, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name in self.outputs[run]:
                return
            self.outputs[run][name] = _snapshot(output)
            if run == "native":
                self.inputs[name] = _snapshot(args)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _check_fallback_layers(
    convs: list[LoweredConv],
    hooks: _ModuleCapture,
    oracle: nn.Module,
    low: nn.Module,
    plan: _Plan,
) -> dict[int, LayerCheck]:
    """Local and accumulated errors of convs lowered each in a submodule of their own."""
    checks = {}
    for conv in convs:
        check = checks[id(conv)] = _layer_check(conv)
        name = conv.graph_module
        if name not in hooks.inputs or name not in hooks.outputs["lowered"]:
            _unchecked(check, f"module {name!r} did not run in the forward pass")
            continue
        args = hooks.inputs[name]
        try:
            lowered_local = low.get_submodule(name)(*args)
        except Exception as exc:
            _raised(check, exc)
            continue
        oracle_local = oracle.get_submodule(name)(*_to_float64(args))
        _finish(
            check,
            spec=conv.spec,
            conv_input=args[0] if args else None,
            native_local=hooks.outputs["native"][name],
            lowered_local=lowered_local,
            oracle_local=oracle_local,
            native_value=hooks.outputs["native"][name],
            lowered_value=hooks.outputs["lowered"][name],
            oracle_value=hooks.outputs["oracle"][name],
            plan=plan,
        )
    return checks


# -- per layer: the verdict ------------------------------------------------------------------


def _layer_check(conv: LoweredConv) -> LayerCheck:
    return LayerCheck(
        name=conv.name,
        node=conv.node,
        target=conv.target,
        strategy=conv.strategy,
        config=conv.spec.describe() if conv.spec else "dynamic",
        graph_module=conv.graph_module,
        status="unchecked",
    )


def _unchecked(check: LayerCheck, reason: str) -> None:
    check.status, check.reason = "unchecked", reason


def _raised(check: LayerCheck, exc: Exception) -> None:
    check.status = "fail"
    check.reason = (
        f"the lowered conv raised on the original's input: {type(exc).__name__}: {exc}".strip()
    )


def _finish(
    check: LayerCheck,
    *,
    spec: ConvSpec | None,
    conv_input: Any,
    native_local: Any,
    lowered_local: Any,
    oracle_local: Any,
    native_value: Any,
    lowered_value: Any,
    oracle_value: Any,
    plan: _Plan,
) -> None:
    """Fill ``check`` from the three local outputs and the three accumulated values."""
    tol = plan.tolerance
    if isinstance(conv_input, torch.Tensor):
        check.input_shape = tuple(conv_input.shape)
        check.im2col_bytes = _im2col_bytes(spec, conv_input, plan.dtype)
    if not all(isinstance(v, torch.Tensor) for v in (native_local, lowered_local, oracle_local)):
        _unchecked(check, "the conv's output is not a tensor")
        return
    check.output_shape = tuple(native_local.shape)
    if lowered_local.shape != native_local.shape:
        check.status = "fail"
        check.reason = (
            f"lowered output shape {tuple(lowered_local.shape)}, original "
            f"{tuple(native_local.shape)}"
        )
        return
    check.local_native = compare(native_local, oracle_local, rtol=tol.rtol, atol=tol.atol)
    check.local_lowered = compare(lowered_local, oracle_local, rtol=tol.rtol, atol=tol.atol)
    check.judgement = judge(check.local_native, check.local_lowered, tol)
    check.status = "pass" if check.judgement.ok else "fail"
    check.reason = check.judgement.reason
    if all(isinstance(v, torch.Tensor) for v in (native_value, lowered_value, oracle_value)):
        if native_value.shape == oracle_value.shape:
            check.accumulated_native = compare(native_value, oracle_value).rel_l2
        if lowered_value.shape == oracle_value.shape:
            check.accumulated_lowered = compare(lowered_value, oracle_value).rel_l2


def _im2col_bytes(
    spec: ConvSpec | None, conv_input: torch.Tensor, dtype: torch.dtype
) -> int | None:
    """The im2col buffer's size for this input: ``batch * C_in*kh*kw * OH*OW`` elements."""
    if spec is None or conv_input.dim() not in (3, 4):
        return None
    batch = conv_input.shape[0] if conv_input.dim() == 4 else 1
    height, width = conv_input.shape[-2:]
    return spec.im2col_bytes(batch, height, width, dtype)


# -- timing ----------------------------------------------------------------------------------


def _time_forward(
    native: nn.Module, low: nn.Module, x: tuple, dev: torch.device, plan: _Plan
) -> Timing:
    """A/B timing of the two forwards, interleaved so drift (clocks, caches) hits both alike."""
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def once(module: nn.Module) -> float:
        _seed(dev, plan.seed)
        sync()
        start = time.perf_counter()
        module(*x)
        sync()
        return (time.perf_counter() - start) * 1e3

    for _ in range(plan.warmup):
        once(native)
        once(low)
    native_ms: list[float] = []
    lowered_ms: list[float] = []
    for i in range(plan.repeats):
        if i % 2 == 0:
            native_ms.append(once(native))
            lowered_ms.append(once(low))
        else:
            lowered_ms.append(once(low))
            native_ms.append(once(native))
    native_stats, lowered_stats = _stats(native_ms), _stats(lowered_ms)
    timing = Timing(
        repeats=plan.repeats,
        warmup=plan.warmup,
        native=native_stats,
        lowered=lowered_stats,
        ratio=lowered_stats.median_ms / native_stats.median_ms
        if native_stats.median_ms > 0
        else None,
    )
    if cuda:
        timing.peak_memory_native_bytes = _peak_memory(native, x, dev, plan.seed)
        timing.peak_memory_lowered_bytes = _peak_memory(low, x, dev, plan.seed)
    return timing


def _stats(ms: list[float]) -> TimingStats:
    q1, median, q3 = quartiles(ms)
    return TimingStats(median_ms=median, iqr_ms=q3 - q1, min_ms=min(ms), max_ms=max(ms))


def _peak_memory(module: nn.Module, x: tuple, dev: torch.device, seed: int) -> int:
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    _seed(dev, seed)
    module(*x)
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) - before


# -- precision flags and RNG -----------------------------------------------------------------


# Dropout functions, their argument names, and how many leading dims the mask keeps whole
# (None: the whole shape, elementwise; 2: one draw per (sample, channel), for the batched
# input ranks in _FEATURE_RANKS).
_DROPOUTS: dict[Callable[..., Any], tuple[tuple[str, ...], int | None]] = {
    F.dropout: (("input", "p", "training", "inplace"), None),
    torch.dropout: (("input", "p", "train"), None),
    F.dropout1d: (("input", "p", "training", "inplace"), 2),
    F.dropout2d: (("input", "p", "training", "inplace"), 2),
    F.dropout3d: (("input", "p", "training", "inplace"), 2),
}
_FEATURE_RANKS = {F.dropout1d: 3, F.dropout2d: 4, F.dropout3d: 5}
# Other functions drawing random numbers shaped like their first argument.
_RANDOM_LIKE: dict[Callable[..., Any], int | None] = {
    F.alpha_dropout: 3,  # position of the ``inplace`` argument, None: none
    F.feature_alpha_dropout: 3,
    F.rrelu: 4,
    torch.bernoulli: None,
    torch.rand_like: None,
    torch.randn_like: None,
    torch.randint_like: None,
}


class MatchedRandomness(TorchFunctionMode):
    """Within this mode, the same seed gives the same dropout mask whatever the dtype and layout.

    Random draws shaped like a tensor depend on more than the seed: on CPU they fill the tensor
    in *memory* order, and CUDA's fused dropout kernel groups elements by the dtype's vector
    width.  The native model, the float64 oracle and the lowered model (whose ``strided``
    convs return channels-last-like views) would then drop different elements, an O(1)
    difference between correct models.  So dropout draws its mask here, from a contiguous
    float32 tensor of the mask's shape; other ``*_like`` draws see a contiguous input.  Only
    the verifier's copies run under it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUTS:
            names, kept = _DROPOUTS[func]
            bound = {**dict(zip(names, args, strict=False)), **kwargs}
            x = bound.get("input")
            p = float(bound.get("p", 0.5))
            training = bound.get("training", bound.get("train", True))
            rank = _FEATURE_RANKS.get(func)
            if (
                isinstance(x, torch.Tensor)
                and training
                and 0.0 < p < 1.0
                and (rank is None or x.dim() == rank)
            ):
                shape = x.shape if kept is None else (*x.shape[:kept], *[1] * (x.dim() - kept))
                keep = torch.empty(shape, dtype=torch.float32, device=x.device).bernoulli_(1 - p)
                out = x * (keep / (1 - p)).to(x.dtype)
                return x.copy_(out) if bound.get("inplace", False) else out
        elif func in _RANDOM_LIKE and args and isinstance(args[0], torch.Tensor):
            first = args[0]
            if not first.is_contiguous():
                out = func(first.contiguous(), *args[1:], **kwargs)
                position = _RANDOM_LIKE[func]
                inplace = kwargs.get("inplace", False)
                if position is not None and len(args) > position:
                    inplace = args[position]
                return first.copy_(out) if inplace else out
        return func(*args, **kwargs)


def _attribute(path: str) -> tuple[Any, str]:
    """``"torch.backends.cudnn.conv.fp32_precision"`` -> (``torch.backends.cudnn.conv``, name)."""
    owner_path, _, name = path.rpartition(".")
    owner: Any = torch
    for part in owner_path.split(".")[1:]:
        owner = getattr(owner, part)
    return owner, name


def _has_attribute(path: str) -> bool:
    try:
        owner, name = _attribute(path)
    except AttributeError:
        return False
    return hasattr(owner, name)


# Since torch 2.9 precision is set per backend and operation; the legacy flags are views of it
# that raise on mixed states, so they are neither set nor read when the new settings exist.
_PER_BACKEND = (
    "torch.backends.cuda.matmul.fp32_precision",
    "torch.backends.cudnn.conv.fp32_precision",
    "torch.backends.mkldnn.matmul.fp32_precision",
    "torch.backends.mkldnn.conv.fp32_precision",
)
_LEGACY_TF32 = ("torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.allow_tf32")
_REDUCED_REDUCTIONS = (
    "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
    "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
)


@contextlib.contextmanager
def pinned_precision(*, allow_tf32: bool = False) -> Iterator[dict[str, Any]]:
    """Pin the flags that change float32/half matmul and conv precision; restore them after.

    TF32 is off for cuBLAS and cuDNN (``allow_tf32=True`` turns it on), float32 matmuls and
    convs run in full precision on CPU too (``set_float32_matmul_precision("medium")`` lets
    oneDNN use bfloat16), and float16/bfloat16 matmuls reduce in float32.  Yields the settings
    in force, by name: ``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32`` and ``torch.get_float32_matmul_precision`` as their
    effective values, plus the per-backend settings where this torch has them.
    """
    tf32 = "tf32" if allow_tf32 else "ieee"
    if all(_has_attribute(path) for path in _PER_BACKEND):
        wanted: dict[str, Any] = {path: tf32 for path in _PER_BACKEND[:2]}
        wanted.update({path: "ieee" for path in _PER_BACKEND[2:]})
    else:
        wanted = dict.fromkeys(_LEGACY_TF32, allow_tf32)
        wanted["torch.get_float32_matmul_precision"] = "high" if allow_tf32 else "highest"
    wanted.update(dict.fromkeys(_REDUCED_REDUCTIONS, False))
    saved: list[tuple[str, Any]] = []
    try:
        for path, value in wanted.items():
            saved.append((path, _read_flag(path)))
            _write_flag(path, value)
        effective = {
            **dict.fromkeys(_LEGACY_TF32, allow_tf32),
            "torch.get_float32_matmul_precision": "high" if allow_tf32 else "highest",
            **{path: _read_flag(path) for path in wanted},
        }
        yield effective
    finally:
        for path, value in reversed(saved):
            _write_flag(path, value)


def _read_flag(path: str) -> Any:
    if path == "torch.get_float32_matmul_precision":
        return torch.get_float32_matmul_precision()
    owner, name = _attribute(path)
    return getattr(owner, name)


def _write_flag(path: str, value: Any) -> None:
    if path == "torch.get_float32_matmul_precision":
        torch.set_float32_matmul_precision(value)
        return
    owner, name = _attribute(path)
    setattr(owner, name, value)


@contextlib.contextmanager
def _preserved_rng(devices: list[torch.device]) -> Iterator[None]:
    """Fork the CPU RNG and the RNG of every CUDA device verified; CUDA is not touched otherwise."""
    cuda = sorted(
        {
            d.index if d.index is not None else torch.cuda.current_device()
            for d in devices
            if d.type == "cuda"
        }
    )
    with torch.random.fork_rng(devices=cuda):
        yield


def _seed(dev: torch.device, seed: int) -> None:
    # Not torch.manual_seed: that would also queue a seed for CUDA when it is not initialised.
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)


# -- arguments, copies, forwards -------------------------------------------------------------


def _check_arguments(model: Any, lowered: Any, dtype: Any, repeats: int, warmup: int) -> None:
    if not isinstance(model, nn.Module):
        raise LoweringError(
            f"verify() takes the original nn.Module, got {type(model).__name__}: pass the model "
            "object, e.g. lowerconv.verify(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))"
        )
    if lowered is not None and not isinstance(lowered, nn.Module):
        raise LoweringError(
            f"lowered= must be the nn.Module lowerconv.lower returned (or your edit of it), got "
            f"{type(lowered).__name__}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise LoweringError(
            f"dtype must be a floating-point torch.dtype such as torch.float32, got {dtype!r}"
        )
    if not (isinstance(repeats, int) and repeats >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise LoweringError(
            f"repeats must be an int >= 1 and warmup an int >= 0, got repeats={repeats!r}, "
            f"warmup={warmup!r}"
        )


def _tolerance(dtype: torch.dtype, rtol: Any, atol: Any, factor: Any) -> Tolerance:
    try:
        return default_tolerance(dtype, rtol=rtol, atol=atol, factor=factor)
    except ValueError as err:
        raise LoweringError(str(err)) from err


def _normalize_inputs(model: nn.Module, example_inputs: Any) -> tuple:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if not isinstance(inputs, tuple):
        raise LoweringError(
            f"example_inputs for {type(model).__name__} must be a tensor or a tuple of tensors "
            f"(the model's positional arguments), got {type(example_inputs).__name__}; e.g. "
            "(torch.randn(1, 3, 224, 224),)"
        )
    for i, leaf in enumerate(pytree.tree_leaves(inputs)):
        if not isinstance(leaf, torch.Tensor | int | float | bool | str | type(None)):
            raise LoweringError(
                f"example_inputs for {type(model).__name__}: leaf {i} is a "
                f"{type(leaf).__name__}; pass tensors (and plain Python values) only"
            )
    return inputs


def _resolve_devices(device: Any) -> tuple[list[torch.device], dict[str, str]]:
    if isinstance(device, str | torch.device):
        names = ["cpu", "cuda"] if str(device) == "all" else [device]
    else:
        names = list(device)
    devices: list[torch.device] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as err:
            raise LoweringError(
                f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:N', 'all' or a list of "
                f"them ({err})"
            ) from err
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                skipped[str(name)] = (
                    "CUDA is not available (torch.cuda.is_available() is False: no GPU or driver, "
                    f"or a CPU-only build of torch {torch.__version__})"
                )
                continue
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                skipped[str(name)] = f"only {torch.cuda.device_count()} CUDA device(s) visible"
                continue
        if dev not in devices:
            devices.append(dev)
    return devices, skipped


def _record_of(lowered: nn.Module) -> LoweringRecord | None:
    try:
        return lowering_record(lowered)
    except LookupError:
        return None


def _copy_to(module: nn.Module, dev: torch.device, dtype: torch.dtype, what: str) -> nn.Module:
    try:
        copied = copy.deepcopy(module)
    except Exception as exc:
        raise LoweringError(
            f"could not deep-copy {what} ({type(module).__name__}) to verify it without changing "
            f"it: {type(exc).__name__}: {exc}. Fix: make the model deep-copyable"
        ) from exc
    return copied.to(device=dev, dtype=dtype)


def _cast_inputs(inputs: tuple, dev: torch.device, dtype: torch.dtype) -> tuple:
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=dev, dtype=dtype) if t.is_floating_point() else t.to(device=dev)

    return pytree.tree_map_only(torch.Tensor, cast, inputs)


def _to_float64(value: Any) -> Any:
    return pytree.tree_map_only(
        torch.Tensor, lambda t: t.double() if t.is_floating_point() else t, value
    )


_FIXES = {
    "the model": "pass example_inputs the model accepts, as a tuple of its positional arguments",
    "the float64 copy of the model": "the model does not run in float64 here; it needs to, as "
    "float64 is the reference the verifier measures both models against",
    "the lowered model": "the lowered model fails where the original runs: print(lowered.code) "
    "and check the lowering (or your edit of it)",
}


def _oracle_forward(
    oracle: nn.Module, x64: tuple, dev: torch.device, seed: int, original: tuple
) -> tuple[Any, bool]:
    """The float64 copy's outputs, and whether float32 tensors had to be promoted to get them."""
    what = "the float64 copy of the model"
    try:
        return _forward(oracle, x64, dev, seed, what, original), False
    except LoweringError:
        with PromoteToFloat64():
            try:
                return _forward(oracle, x64, dev, seed, what, original), True
            except LoweringError:
                pass
        raise


class PromoteToFloat64(TorchFunctionMode):
    """Every float32 tensor an op returns becomes float64.

    Some models build float32 tensors themselves (RAFT's coordinate grids call ``.float()``),
    so their float64 copy mixes dtypes and fails; under this mode it computes in float64
    throughout and can serve as the oracle.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return pytree.tree_map_only(
            torch.Tensor, lambda t: t.double() if t.dtype == torch.float32 else t, out
        )


def _forward(
    module: nn.Module, x: tuple, dev: torch.device, seed: int, what: str, original: tuple
) -> Any:
    _seed(dev, seed)
    try:
        return module(*x)
    except Exception as exc:
        shapes = ", ".join(_describe_input(t)["repr"] for t in original)
        raise LoweringError(
            f"{what} ({type(module).__name__}) failed on {dev} with inputs ({shapes}): "
            f"{type(exc).__name__}: {exc}. Fix: {_FIXES[what]}"
        ) from exc


# -- report fields ---------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _describe_input(x: Any) -> dict[str, Any]:
    if isinstance(x, torch.Tensor):
        shape = list(x.shape)
        return {
            "shape": shape,
            "dtype": _dtype_name(x.dtype),
            "repr": f"{_dtype_name(x.dtype)}[{', '.join(map(str, shape))}]",
        }
    return {"shape": None, "dtype": type(x).__name__, "repr": repr(x)[:40]}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine() or dev.type
    return f"{cpu}, {torch.get_num_threads()} threads"


def _structure(spec: pytree.TreeSpec) -> str:
    """``OrderedDict{'out': *}``, ``GoogLeNetOutputs(logits=*, aux_logits2=*, aux_logits1=*)``."""
    if spec.is_leaf():
        return "*"
    children = [_structure(child) for child in spec.children()]
    name = getattr(spec.type, "__name__", str(spec.type))
    if isinstance(spec.context, type):  # a namedtuple: its class is the context
        fields_ = getattr(spec.context, "_fields", ())
        items = ", ".join(f"{k}={c}" for k, c in zip(fields_, children, strict=False))
        return f"{spec.context.__name__}({items})"
    if isinstance(spec.context, list | tuple) and len(spec.context) == len(children):
        items = ", ".join(f"{k!r}: {c}" for k, c in zip(spec.context, children, strict=True))
        return f"{name}{{{items}}}"
    return f"{name}({', '.join(children)})"


def _lowering_summary(record: LoweringRecord | None) -> dict[str, Any]:
    if record is None:
        return {"lowered": None, "strategies": {}, "skipped": [], "trace_error": None}
    return {
        "lowered": record.num_lowered,
        "strategies": record.strategies_used(),
        "skipped": [s.to_dict() for s in record.skipped],
        "trace_error": record.trace_error,
    }
