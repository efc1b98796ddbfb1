"""Verification step 2: check each lowered conv on its own, on the input the original gives it.

For every conv the pass lowered (found by its ``node.meta["lowerconv"]`` provenance), the
lowered nodes, the native conv and the float64 oracle's conv all run on the input the original
model gives that conv; the lowered output's error and the native one's, both against the
oracle, are judged by the same rule as the outputs (the *local* error).  The *accumulated*
error is each model's own value at that conv's output against the oracle's.  Each conv becomes
one :class:`~lowerconv.verification.report.LayerCheck`: ``pass``, ``fail`` or ``unchecked`` with the
reason.  With ``gradients=True`` the same three convs, on the same input, are also pulled back
from one seeded output gradient (:func:`~lowerconv.verification.gradients.local_gradients`):
each conv's ``dX``, ``dW`` and ``db`` are judged by the same rule, into ``LayerCheck.gradients``.

Two paths, as the pass took them:

- **graph** (:func:`check_graph_layers`): the conv's nodes are in the top module's graph; the
  original is re-traced, the three graphs run once under an interpreter that keeps the values
  needed, and each conv's nodes run as their own module
  (:func:`~lowerconv.lowering.subgraph.conv_subgraph`);
- **fallback** (:func:`check_fallback_layers`): each conv was lowered inside a submodule of its
  own; :class:`ModuleCapture`'s forward hooks keep its input and outputs during the end-to-end
  run;
- **run time** (:func:`check_runtime_layers`): the conv was an ``F.conv*`` call lowered as the
  model ran; the end-to-end runs observe every call
  (:func:`~lowerconv.lowering.runtime.trace_conv_calls`) and the calls are matched by name, the
  module they came from and their order in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from ..errors import LoweringError, with_article
from ..lowering.functional import convolution
from ..lowering.linear import conv_state_dict, linear_state_dict
from ..lowering.record import LoweredConv
from ..lowering.runtime import ConvCall
from ..lowering.spec import ConvSpec
from ..lowering.strategies import workspace_bytes
from ..lowering.subgraph import FreshArgs, conv_subgraph, provenance
from ..lowering.trace import trace
from .determinism import seed_generators
from .devices import to_float64
from .gradients import LocalConv, leaf, local_gradients
from .metrics import Tolerance, compare, judge
from .report import GradientCheck, LayerCheck

__all__ = ["ModuleCapture", "check_fallback_layers", "check_graph_layers", "check_runtime_layers"]


# -- the graph path --------------------------------------------------------------------------


class _Capture(FreshArgs, fx.Interpreter):
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


def check_graph_layers(
    convs: list[LoweredConv],
    leaves: list[str],
    native: nn.Module,
    oracle: nn.Module,
    low: nn.Module,
    x: tuple,
    x64: tuple,
    dev: torch.device,
    *,
    tolerance: Tolerance,
    dtype: torch.dtype,
    max_workspace_bytes: int | None = None,
    seed: int,
    trace_options: dict[str, Any],
    retrace: Callable[[nn.Module, tuple], fx.GraphModule] | None = None,
    gradients: bool = False,
) -> dict[int, LayerCheck]:
    """Local and accumulated errors of convs lowered into the top module's graph.

    The original is re-traced (deterministically, so its node names are those of the lowered
    graph for every node the pass left alone); the native, oracle and lowered graphs each run
    once under a :class:`_Capture`, then every lowered conv's nodes run on their own, fed the
    values the original graph gives them.  ``leaves`` are the qualified names of convs the pass
    kept as ``call_module`` leaves (checked with hooks instead); the re-trace keeps them too.
    ``retrace(model, inputs)``, when given, captures the originals instead of ``torch.fx``
    (the export tier: :func:`lowerconv.lowering.export.capture`, whose node names are as
    deterministic).  ``gradients=True`` also checks each conv's backward
    (:func:`_graph_backward`).
    """
    checks = {id(c): _layer_check(c) for c in convs}
    options = dict(trace_options)
    options["leaf_modules"] = [*options.get("leaf_modules", ()), *leaves]
    try:
        if retrace is not None:
            traced_native, traced_oracle = retrace(native, x), retrace(oracle, x64)
        else:
            traced_native = trace(native, **options)
            traced_oracle = trace(oracle, **options)
    except LoweringError as err:
        for check in checks.values():
            _unchecked(check, f"the original could not be re-traced: {str(err).splitlines()[0]}")
        return checks
    if not isinstance(low, fx.GraphModule):
        for check in checks.values():
            _unchecked(check, f"the lowered model is {with_article(low)}, not a GraphModule")
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
        if gradients:  # the native conv runs again, for its backward: all of its inputs
            wanted["native"].update(node.name for node in p.original.all_input_nodes)

    values = {
        "native": _capture(traced_native, x, wanted["native"], dev, seed),
        "oracle": _capture(traced_oracle, x64, wanted["oracle"], dev, seed),
        "lowered": _capture(low, x, wanted["lowered"], dev, seed),
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
            node: to_float64(values[run][name]) if run == "native" else values[run][name]
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
            tol=tolerance,
            dtype=dtype,
            max_workspace_bytes=max_workspace_bytes,
        )
        if gradients:
            p.check.gradients = _graph_backward(
                p, values, traced_native, traced_oracle, low, seed=seed, tolerance=tolerance
            )
    oracle_runner.env = {}
    return checks


def _graph_backward(
    p: _LayerPlan,
    values: dict[str, dict[str, Any]],
    traced_native: fx.GraphModule,
    traced_oracle: fx.GraphModule,
    low: fx.GraphModule,
    *,
    seed: int,
    tolerance: Tolerance,
) -> list[GradientCheck]:
    """The backward of one conv of the graph path: the original conv node runs again on the
    native and the oracle graph's modules, the lowered nodes as their own module, all three
    on the original's input to the conv; its weight and bias are the parameters it reads."""
    original = p.original
    data = original.args[0] if original.args else original.kwargs.get("input")
    if not isinstance(data, fx.Node) or ("native", data.name) not in p.sub_inputs:
        return []
    parameters = _conv_parameters(original)

    def copy(gm: fx.GraphModule, env: dict[fx.Node, Any]) -> LocalConv:
        x = leaf(env[data])
        env = {**env, data: x}
        runner = fx.Interpreter(gm)

        def run() -> Any:
            runner.env = dict(env)
            try:
                return runner.run_node(original)
            finally:
                runner.env = {}

        return LocalConv(run, {"dX": x, **_trainable(gm, parameters)})

    native_env = {node: values["native"][node.name] for node in original.all_input_nodes}
    oracle_env = {
        node: to_float64(values[run][name]) if run == "native" else values[run][name]
        for node, (run, name) in p.oracle_inputs.items()
    }
    args = [values[run][name] for run, name in p.sub_inputs]
    position = p.sub_inputs.index(("native", data.name))
    args[position] = x = leaf(args[position])
    if p.conv.gemm == "linear":
        lowered = _linear_copy(p, low, parameters, args, x)
    else:
        lowered = LocalConv(lambda: p.subgraph(*args), {"dX": x, **_trainable(low, parameters)})
    return local_gradients(
        p.conv.name,
        copy(traced_native, native_env),
        lowered,
        copy(traced_oracle, oracle_env),
        seed=seed,
        tolerance=tolerance,
    )


def _linear_copy(
    p: _LayerPlan, low: fx.GraphModule, parameters: dict[str, str], args: list, x: torch.Tensor
) -> LocalConv:
    """The Linear form's nodes of one conv, run on conv-shaped leaves of its Linears' weight
    and bias (``dW``, ``db`` then have the conv's shape), viewed as the Linears' own."""
    own = {name: t for name, t in low.named_parameters() if t.requires_grad}
    conv_shaped = conv_state_dict(low, own)
    leaves = {
        grad: leaf(conv_shaped[name]) for grad, name in parameters.items() if name in conv_shaped
    }
    names = {grad: parameters[grad] for grad in leaves}

    def run() -> Any:
        tensors = linear_state_dict(low, {names[g]: t for g, t in leaves.items()})
        return torch.func.functional_call(p.subgraph, tensors, tuple(args), strict=False)

    return LocalConv(run, {"dX": x, **leaves})


def _conv_parameters(original: fx.Node) -> dict[str, str]:
    """``{"dW": "layer1.0.conv1.weight", "db": ...}``: the qualified names of the parameters an
    original conv node reads as its weight and bias (a module's own, or ``get_attr`` nodes)."""
    if original.op == "call_module":
        return {"dW": f"{original.target}.weight", "db": f"{original.target}.bias"}
    names = {}
    for grad, position, keyword in (("dW", 1, "weight"), ("db", 2, "bias")):
        arg = original.args[position] if len(original.args) > position else None
        arg = original.kwargs.get(keyword, arg)
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            names[grad] = str(arg.target)
    return names


def _trainable(module: nn.Module, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The parameters of ``module`` with those qualified names that require grad."""
    found = {}
    for grad, name in names.items():
        try:
            tensor = module.get_parameter(name)
        except AttributeError:
            continue
        if tensor.requires_grad:
            found[grad] = tensor
    return found


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
    seed_generators(dev, seed)
    runner.run(*inputs)
    return runner.values


# -- the fallback path -----------------------------------------------------------------------


class ModuleCapture:
    """Forward hooks on the three copies' lowered-conv modules, first call only.

    On the fallback path each conv is a submodule of its own; the native copy's hook keeps its
    input and output, the oracle's and lowered copy's hooks their outputs.  ``modules`` holds
    the hooked modules, by copy and name.
    """

    def __init__(
        self, native: nn.Module, oracle: nn.Module, low: nn.Module, convs: list[LoweredConv]
    ) -> None:
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, Any]] = {"native": {}, "oracle": {}, "lowered": {}}
        self.modules: dict[str, dict[str, nn.Module]] = {"native": {}, "oracle": {}, "lowered": {}}
        self.handles = []
        for conv in convs:
            name = conv.graph_module
            for run, model in (("native", native), ("oracle", oracle), ("lowered", low)):
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    continue
                self.modules[run][name] = module
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


def check_fallback_layers(
    convs: list[LoweredConv],
    hooks: ModuleCapture,
    oracle: nn.Module,
    low: nn.Module,
    *,
    tolerance: Tolerance,
    dtype: torch.dtype,
    max_workspace_bytes: int | None = None,
    gradients: bool = False,
    seed: int = 0,
) -> dict[int, LayerCheck]:
    """Local and accumulated errors of convs lowered each in a submodule of their own; with
    ``gradients=True`` also each one's backward, pulled back from the cotangent of ``seed``."""
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
        oracle_local = oracle.get_submodule(name)(*to_float64(args))
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
            tol=tolerance,
            dtype=dtype,
            max_workspace_bytes=max_workspace_bytes,
        )
        if gradients and args:
            # The native module ran (its hook kept the input), so it is in hooks.modules.
            check.gradients = local_gradients(
                conv.name,
                _module_copy(hooks.modules["native"][name], args),
                _module_copy(low.get_submodule(name), args),
                _module_copy(oracle.get_submodule(name), to_float64(args)),
                seed=seed,
                tolerance=tolerance,
            )
    return checks


def _module_copy(module: nn.Module, args: tuple) -> LocalConv:
    """A conv module (or the submodule holding its lowered nodes) on ``args``, its first
    argument a fresh leaf; its ``weight`` and ``bias`` parameters are what ``dW``, ``db`` are
    taken of."""
    x = leaf(args[0])
    rest = args[1:]
    return LocalConv(
        lambda: module(x, *rest), {"dX": x, **_trainable(module, {"dW": "weight", "db": "bias"})}
    )


# -- the run-time path -----------------------------------------------------------------------


def check_runtime_layers(
    lowered_calls: list[ConvCall],
    native_calls: list[ConvCall],
    oracle_calls: list[ConvCall],
    *,
    tolerance: Tolerance,
    dtype: torch.dtype,
    max_workspace_bytes: int | None = None,
    gradients: bool = False,
    seed: int = 0,
) -> list[LayerCheck]:
    """Local and accumulated errors of the ``F.conv*`` calls lowered at run time.

    ``lowered_calls`` are the lowered model's (only lowered ones count), ``native_calls`` and
    ``oracle_calls`` the original's and its float64 copy's, each call with its arguments and
    output kept.  The local check runs the lowered call's strategy, the native conv and a
    float64 conv on the arguments the original passed; with ``gradients=True`` the three are
    also pulled back from the cotangent of ``seed``, for the input, the weight and the bias.
    """
    natives = {c.name: c for c in native_calls}
    oracles = {c.name: c for c in oracle_calls}
    checks = []
    for call in lowered_calls:
        if not call.lowered:
            continue
        strategy = call.concrete_strategy
        check = LayerCheck(
            name=call.name,
            node="",
            target=call.target,
            strategy=f"{strategy} (run time)",
            config=call.spec.describe() if call.spec else "dynamic",
            graph_module="",
            status="unchecked",
        )
        checks.append(check)
        native = natives.get(call.name)
        if native is None or native.kind != call.kind:
            _unchecked(
                check,
                f"the original made no {call.kind} call named {call.name!r} (its calls: "
                f"{', '.join(list(natives)[:6]) or 'none'}); the two runs differ",
            )
            continue
        args = native.arguments
        if not isinstance(args.get("input"), torch.Tensor):
            _unchecked(check, f"the original's call {call.name!r} was not captured")
            continue
        try:
            lowered_local = _lowered_call(call.kind, args, strategy)
        except Exception as exc:
            _raised(check, exc)
            continue
        oracle_local = getattr(torch.nn.functional, call.kind)(**to_float64(args))
        oracle = oracles.get(call.name)
        _finish(
            check,
            spec=call.spec,
            conv_input=args.get("input"),
            native_local=native.output,
            lowered_local=lowered_local,
            oracle_local=oracle_local,
            native_value=native.output,
            lowered_value=call.output,
            oracle_value=oracle.output if oracle is not None else None,
            tol=tolerance,
            dtype=dtype,
            max_workspace_bytes=max_workspace_bytes,
        )
        if gradients:
            check.gradients = _runtime_backward(call, args, strategy, seed, tolerance)
    return checks


def _runtime_backward(
    call: ConvCall, args: dict[str, Any], strategy: str, seed: int, tolerance: Tolerance
) -> list[GradientCheck]:
    """The backward of one conv call lowered at run time, on the original call's arguments."""
    native_conv = getattr(torch.nn.functional, call.kind)
    return local_gradients(
        call.name,
        _call_copy(lambda a: native_conv(**a), args),
        _call_copy(lambda a: _lowered_call(call.kind, a, strategy), args),
        _call_copy(lambda a: native_conv(**a), to_float64(args)),
        seed=seed,
        tolerance=tolerance,
    )


def _call_copy(conv: Callable[[dict[str, Any]], Any], args: dict[str, Any]) -> LocalConv:
    """A conv call on ``args`` whose input, weight and bias are fresh leaves."""
    wrt = {
        grad: leaf(args[name])
        for grad, name in (("dX", "input"), ("dW", "weight"), ("db", "bias"))
        if isinstance(args.get(name), torch.Tensor) and args[name].is_floating_point()
    }
    called = {**args, **{name: wrt[grad] for grad, name in _ARGUMENT.items() if grad in wrt}}
    return LocalConv(lambda: conv(called), wrt)


_ARGUMENT = {"dX": "input", "dW": "weight", "db": "bias"}


def _lowered_call(kind: str, args: dict[str, Any], strategy: str) -> torch.Tensor:
    """The call ``F.<kind>(**args)`` by :func:`lowerconv.lowering.functional.convolution`."""
    args = dict(args)
    return convolution(
        args.pop("input"),
        args.pop("weight"),
        args.pop("bias", None),
        transposed="transpose" in kind,
        strategy=strategy,
        **args,
    )


# -- one conv's verdict ----------------------------------------------------------------------


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
    tol: Tolerance,
    dtype: torch.dtype,
    max_workspace_bytes: int | None = None,
) -> None:
    """Fill ``check`` from the three local outputs and the three accumulated values."""
    if isinstance(conv_input, torch.Tensor):
        check.input_shape = tuple(conv_input.shape)
        check.im2col_bytes = _im2col_bytes(
            spec, check.strategy, conv_input, dtype, max_workspace_bytes
        )
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
    spec: ConvSpec | None,
    strategy: str,
    conv_input: torch.Tensor,
    dtype: torch.dtype,
    max_workspace_bytes: int | None,
) -> int | None:
    """The largest im2col buffer the conv's strategy allocates for this input
    (:func:`~lowerconv.lowering.strategies.workspace_bytes`; 0 for depthwise taps and 1x1 GEMMs)."""
    if spec is None or conv_input.dim() not in (spec.ndim + 1, spec.ndim + 2):
        return None
    batch = conv_input.shape[0] if conv_input.dim() == spec.ndim + 2 else 1
    return workspace_bytes(
        spec,
        strategy,
        batch,
        *conv_input.shape[-spec.ndim :],
        dtype,
        device=conv_input.device.type,
        max_workspace_bytes=max_workspace_bytes,
    )
