"""Step 4 of the pass: splice a strategy's nodes into the model's graph in place of one conv.

The strategy function is traced once per (strategy, spec, bias) with the spec fixed, then its
nodes are copied in front of the convolution node.  Each copy is named after the conv it replaces
(``layer1_0_conv1_unfold``, ``..._matmul``, ``..._reshape``) and carries provenance in
``node.meta["lowerconv"]`` (a :class:`Provenance`), plus the replaced node's ``stack_trace``,
``nn_module_stack`` and ``source_fn_stack``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

from torch import fx

from .linear import linear_graph
from .spec import ConvSpec
from .strategies import DEFAULT_OPTIONS, StrategyOptions, strategy_function

__all__ = [
    "META_KEY",
    "Provenance",
    "emit_dynamic_conv",
    "emit_linear_conv",
    "emit_lowered_conv",
    "stamp",
    "strategy_graph",
]

META_KEY = "lowerconv"
_COPIED_META = ("stack_trace", "nn_module_stack", "source_fn_stack")


@dataclass(frozen=True)
class Provenance:
    """What ``node.meta["lowerconv"]`` holds on every node the pass creates.

    ``source`` is the qualified name of the convolution (``layer1.0.conv1``), ``source_node`` the
    name of the graph node it replaced, ``source_target`` what that node called (``nn.Conv2d``,
    ``F.conv2d``...), ``strategy`` the strategy that produced the node, ``role`` the node's part
    in it (``unfold``, ``matmul``, ``reshape``, ...), ``spec`` the conv's configuration,
    ``is_output`` marks the node whose value replaces the convolution's output, and ``kind`` is
    the conv's kind (``"conv2d"``, ``"conv_transpose3d"``...).
    """

    source: str
    source_node: str
    source_target: str
    strategy: str
    role: str
    spec: dict | None = field(default=None, compare=False)
    is_output: bool = False
    kind: str = "conv2d"

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=512)
def strategy_graph(
    strategy: str, spec: ConvSpec, has_bias: bool, options: StrategyOptions = DEFAULT_OPTIONS
) -> fx.Graph:
    """The graph of strategy ``strategy`` (one of ``STRATEGIES``, or ``"auto"``'s per-call node)
    for one conv, inputs ``input, weight[, bias]``.

    ``options`` (frozen, hashable) is part of the cache key: a workspace cap changes the code.
    """
    fn = strategy_function(strategy)
    if has_bias:

        def conv(input, weight, bias):
            return fn(input, weight, bias, spec, options)

    else:

        def conv(input, weight):
            return fn(input, weight, None, spec, options)

    return fx.symbolic_trace(conv).graph


def emit_lowered_conv(
    graph: fx.Graph,
    anchor: fx.Node,
    *,
    base_name: str,
    input: fx.Node,
    weight: fx.Node,
    bias: fx.Node | None,
    spec: ConvSpec,
    strategy: str,
    source: str,
    source_target: str,
    options: StrategyOptions = DEFAULT_OPTIONS,
    recorded_as: str | None = None,
) -> tuple[fx.Node, list[fx.Node]]:
    """Insert the lowered conv before ``anchor``; return its output node and all new nodes.

    ``recorded_as`` is the strategy the provenance names, when it is not ``strategy`` itself
    (``auto``'s per-call node is recorded as its CPU choice)."""
    template = strategy_graph(strategy, spec, bias is not None, options)
    inputs = {"input": input, "weight": weight, "bias": bias}
    return _splice(
        graph,
        anchor,
        template,
        inputs,
        base_name,
        source,
        source_target,
        recorded_as or strategy,
        spec,
    )


def emit_linear_conv(
    graph: fx.Graph,
    anchor: fx.Node,
    *,
    base_name: str,
    input: fx.Node,
    module: str,
    spec: ConvSpec,
    gather: str,
    source: str,
    source_target: str,
) -> tuple[fx.Node, list[fx.Node]]:
    """Insert the conv's Linear form (:mod:`.linear`) before ``anchor``: the gather, a
    ``call_module`` of the ``nn.Linear`` at ``module`` (of ``module.<g>``, one per group), and
    the move back to ``(..., C_out, OH, OW)``; return its output node and all new nodes."""
    template = linear_graph(spec, gather)
    return _splice(
        graph,
        anchor,
        template,
        {"input": input},
        base_name,
        source,
        source_target,
        gather,
        spec,
        module,
    )


def _splice(
    graph: fx.Graph,
    anchor: fx.Node,
    template: fx.Graph,
    inputs: dict[str, fx.Node | None],
    base_name: str,
    source: str,
    source_target: str,
    strategy: str,
    spec: ConvSpec,
    module: str | None = None,
) -> tuple[fx.Node, list[fx.Node]]:
    """Copy ``template``'s nodes in front of ``anchor``, named and stamped; its ``call_module``
    nodes on ``linear...`` call ``module...`` instead."""
    env: dict[fx.Node, fx.Node] = {}
    new_nodes: list[fx.Node] = []
    output: fx.Node | None = None
    spec_dict = spec.to_dict()
    roles = _roles(template)
    with graph.inserting_before(anchor):
        for node in template.nodes:
            if node.op == "placeholder":
                env[node] = inputs[node.target]
                continue
            if node.op == "output":
                output = env[node.args[0]]
                continue
            copy = graph.node_copy(node, lambda n: env[n])
            copy.meta.pop("is_wrapped", None)
            if node.op == "call_module" and module is not None:
                copy.target = module + str(node.target).removeprefix("linear")
            copy._rename(f"{base_name}_{roles[node]}")
            prov = Provenance(
                source, anchor.name, source_target, strategy, roles[node], spec_dict, kind=spec.kind
            )
            stamp(copy, anchor, prov)
            env[node] = copy
            new_nodes.append(copy)
    assert output is not None, "a strategy graph always ends in an output node"
    prov = output.meta[META_KEY]
    output.meta[META_KEY] = Provenance(**{**prov.__dict__, "is_output": True})
    return output, new_nodes


def stamp(node: fx.Node, anchor: fx.Node, provenance: Provenance) -> None:
    """Give a new node the replaced node's source location and the pass's provenance."""
    for key in _COPIED_META:
        if key in anchor.meta:
            node.meta[key] = anchor.meta[key]
    node.meta[META_KEY] = provenance


@functools.lru_cache(maxsize=512)
def _roles(template: fx.Graph) -> dict[fx.Node, str]:
    """Each template node's part in the lowering, used in its name and provenance.

    The node producing the result is ``reshape``; nodes that only transform the weight or the
    bias are ``weight_<op>``/``bias_<op>``; the rest are named by their op (``unfold``,
    ``matmul``, ``pad``...).
    """
    depends: dict[fx.Node, set[str]] = {}
    roles: dict[fx.Node, str] = {}
    output = next(n for n in template.nodes if n.op == "output").args[0]
    for node in template.nodes:
        if node.op == "placeholder":
            depends[node] = {str(node.target)}
            continue
        if node.op == "output":
            continue
        depends[node] = set().union(*(depends[n] for n in node.all_input_nodes))
        op = _op_name(node)
        if node is output:
            roles[node] = "reshape"
        elif depends[node] in ({"weight"}, {"bias"}):
            roles[node] = f"{next(iter(depends[node]))}_{op}"
        else:
            roles[node] = op
    return roles


def _op_name(node: fx.Node) -> str:
    """``unfold_1`` -> ``unfold``: the node's name without FX's uniquing suffix."""
    head, _, tail = node.name.rpartition("_")
    return head if tail.isdigit() and head else node.name


def emit_dynamic_conv(
    graph: fx.Graph,
    anchor: fx.Node,
    *,
    base_name: str,
    input: fx.Node,
    weight: fx.Node,
    bias: fx.Node | None,
    conv_args: dict,
    strategy: str,
    source: str,
    source_target: str,
    options: StrategyOptions = DEFAULT_OPTIONS,
    kind: str = "conv2d",
) -> fx.Node:
    """One call to :func:`lowerconv.lowering.functional.convolution` for a weight whose shape is
    only known at run time (computed from the input); it lowers with ``strategy`` when it runs."""
    from .functional import convolution

    kwargs = dict(conv_args, strategy=strategy)
    if options.max_workspace_bytes is not None:
        kwargs["max_workspace_bytes"] = options.max_workspace_bytes
    with graph.inserting_before(anchor):
        node = graph.call_function(convolution, (input, weight, bias), kwargs)
    node._rename(f"{base_name}_im2col_{kind}")
    role = f"im2col_{kind}"
    prov = Provenance(source, anchor.name, source_target, strategy, role, None, True, kind)
    stamp(node, anchor, prov)
    return node
