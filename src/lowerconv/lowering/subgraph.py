"""Read a lowered graph back: the nodes that replaced one convolution, as their own module.

The verifier uses :func:`conv_subgraph` to run one lowered conv on the original model's input
to that conv (its *local* error), with no change to either model.
"""

from __future__ import annotations

from torch import fx, nn

from ..errors import LoweringError
from .emit import META_KEY, Provenance
from .record import LoweredConv

__all__ = ["FreshArgs", "conv_subgraph", "provenance"]


class FreshArgs:
    """An ``fx.Interpreter`` mixin that passes each node fresh ``list``/``dict`` arguments.

    A graph's generated code builds its list literals anew on every call, but the interpreter
    hands a function the node's own ``immutable_list``: code that edits its argument in place
    (torchvision's Swin3D ``_get_window_and_shift_size``) then raises.  Copies behave as the
    generated code does.
    """

    def fetch_args_kwargs_from_env(self, n: fx.Node):
        args, kwargs = super().fetch_args_kwargs_from_env(n)  # type: ignore[misc]
        return _fresh(args), _fresh(kwargs)


def _fresh(value):
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def provenance(node: fx.Node) -> Provenance | None:
    """The pass's ``node.meta["lowerconv"]`` record on ``node``, or None for original nodes."""
    return node.meta.get(META_KEY)


def conv_subgraph(lowered: nn.Module, conv: LoweredConv) -> tuple[fx.GraphModule, list[str]]:
    """The nodes computing ``conv`` in ``lowered``, as a ``GraphModule``, and its input names.

    The module's placeholders are named after the nodes of ``lowered``'s graph that feed the
    conv from outside (its input, and a computed weight where there is one), in order; its
    ``get_attr`` nodes read the same parameters as ``lowered``.  Nodes are found by
    ``meta["lowerconv"].source == conv.name``, so edits a user made to those nodes are kept.
    """
    owner = lowered.get_submodule(conv.graph_module) if conv.graph_module else lowered
    if not isinstance(owner, fx.GraphModule):
        raise LoweringError(
            f"conv {conv.name!r}: {conv.graph_module or 'the model'} is a "
            f"{type(owner).__name__}, not a lowered GraphModule; pass the module lowerconv.lower "
            "returned"
        )
    members = [n for n in owner.graph.nodes if _source(n) == conv.name]
    if not members:
        raise LoweringError(
            f"no node of {type(owner).__name__}'s graph carries meta['{META_KEY}'].source == "
            f"{conv.name!r}; was the graph rebuilt without its node meta?"
        )
    member_set = set(members)
    outputs = [n for n in members if provenance(n).is_output]
    output = outputs[-1] if outputs else members[-1]
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[str] = []
    for node in members:
        for arg in node.all_input_nodes:
            if arg not in member_set and arg not in env:
                env[arg] = graph.placeholder(arg.name)
                inputs.append(arg.name)
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[output])
    return fx.GraphModule(owner, graph, class_name=f"Lowered_{output.name}"), inputs


def _source(node: fx.Node) -> str | None:
    prov = provenance(node)
    return prov.source if prov is not None else None
