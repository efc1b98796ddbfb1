"""Steps 2 to 4 of the pass over one ``torch.fx`` graph: every convolution in it lowered in place.

:func:`lower_graph` finds the graph's convolutions (:func:`~.sites.find_conv_sites`), splices each
one's strategy in its place (:func:`~.emit.emit_lowered_conv`, or one
:func:`~.functional.convolution` call for a weight only known at run time), and returns what it
lowered and what it left alone, named as in the model.  Every path of :func:`~.lower.lower` runs
it: the graph path on the traced model and on each conv module, the export tier on the captured
``ep.module()``, and ``lower(ExportedProgram)`` (:mod:`.export`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import fx, nn

from .emit import Provenance, emit_dynamic_conv, emit_linear_conv, emit_lowered_conv, stamp
from .linear import linear_gather
from .pt2e import lower_pt2e_convs
from .record import LoweredConv
from .sites import ConvSite, SkippedConv, find_conv_sites
from .strategies import DEFAULT_OPTIONS, StrategyOptions, choose_strategy, resolve_auto

__all__ = ["lower_graph"]


def lower_graph(
    gm: fx.GraphModule,
    strategy: str,
    *,
    name_prefix: str = "",
    options: StrategyOptions = DEFAULT_OPTIONS,
    kinds: Iterable[str] | None = None,
    linear: Mapping[str, nn.Module] | None = None,
) -> tuple[list[LoweredConv], list[SkippedConv]]:
    """Lower every 2-D convolution in ``gm.graph`` in place; return what was lowered and skipped.

    ``name_prefix`` is the qualified name of ``gm`` inside a larger model, so that the names
    in the record are the larger model's.  ``linear`` maps the names of conv modules that take
    the Linear form (:mod:`.linear`) to their GEMM module (an ``nn.Linear``, or an
    ``nn.ModuleList`` of one per group): it is put in ``gm`` at that name, and the conv's
    ``call_module`` node becomes the gather, a call of it, and a reshape.
    """
    # PT2E convs (between dequantize and quantize nodes) first, as integer GEMMs.
    chosen = None if kinds is None else frozenset(kinds)
    integer, integer_skipped = lower_pt2e_convs(gm, name_prefix=name_prefix, kinds=chosen)
    sites, skipped = find_conv_sites(gm, kinds)
    linear = dict(linear or {})
    for target, module in linear.items():
        gm.set_submodule(target, module)
    graph = gm.graph
    lowered: list[LoweredConv] = list(integer)
    seen: dict[str, int] = {}
    for site in sites:
        name = _qualify(site, name_prefix)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"  # one module called more than once
        if site.kind == "module" and site.spec is not None and str(site.node.target) in linear:
            lowered.append(_lower_site_linear(graph, site, name, strategy))
        else:
            lowered.append(_lower_site(graph, site, name, strategy, options))
    for skip in skipped:
        skip.name = _qualify_name(skip.name, skip.node, name_prefix)
    skipped = integer_skipped + skipped
    graph.lint()
    gm.recompile()
    return lowered, skipped


def _lower_site(
    graph: fx.Graph, site: ConvSite, name: str, strategy: str, options: StrategyOptions
) -> LoweredConv:
    node = site.node
    base = name.replace(".", "_").replace("#", "_call")
    target = site.module_type
    # What the emitted node runs: ``auto`` without a target emits a node that plans per call
    # (recorded as its CPU choice, with ``cuda_strategy`` for a GPU).
    emitted = concrete = strategy
    if site.spec is not None and strategy == "auto":
        emitted = resolve_auto(site.spec, options)
        concrete = choose_strategy(site.spec) if emitted == "auto" else emitted
    weight, bias = site.weight, site.bias
    params: list[fx.Node] = []
    with graph.inserting_before(node):
        for role, attr in (("weight", site.weight_target), ("bias", site.bias_target)):
            if attr is None:
                continue
            param = graph.create_node("get_attr", attr, name=f"{base}_{role}")
            prov = Provenance(name, node.name, target, concrete, role, None, kind=site.conv_kind)
            stamp(param, node, prov)
            params.append(param)
            if role == "weight":
                weight = param
            else:
                bias = param
    if site.spec is None:
        output = emit_dynamic_conv(
            graph,
            node,
            base_name=base,
            input=site.input,
            weight=weight,
            bias=bias,
            conv_args=site.conv_args,
            strategy=concrete,
            source=name,
            source_target=target,
            options=options,
            kind=site.conv_kind,
        )
        nodes = [output]
        concrete = f"{concrete} (dynamic)"
    else:
        output, nodes = emit_lowered_conv(
            graph,
            node,
            base_name=base,
            input=site.input,
            weight=weight,
            bias=bias,
            spec=site.spec,
            strategy=emitted,
            source=name,
            source_target=target,
            options=options,
            recorded_as=concrete,
        )
    input_name = site.input.name
    node.replace_all_uses_with(output)
    graph.erase_node(node)
    return LoweredConv(
        name=name,
        node=node.name,
        target=target,
        spec=site.spec,
        strategy=concrete,
        input_node=input_name,
        output_node=output.name,
        kind=site.conv_kind,
        cuda_strategy="cuda" if emitted == "auto" else "",
        nodes=[n.name for n in params + nodes],
    )


def _lower_site_linear(graph: fx.Graph, site: ConvSite, name: str, strategy: str) -> LoweredConv:
    node, spec = site.node, site.spec
    assert spec is not None, "only convs of a known configuration take the Linear form"
    module = str(node.target)
    gather = linear_gather(strategy, spec)
    output, nodes = emit_linear_conv(
        graph,
        node,
        base_name=name.replace(".", "_").replace("#", "_call"),
        input=site.input,
        module=module,
        spec=spec,
        gather=gather,
        source=name,
        source_target=site.module_type,
    )
    input_name = site.input.name
    node.replace_all_uses_with(output)
    graph.erase_node(node)
    gemm_modules = [module] if spec.groups == 1 else [f"{module}.{g}" for g in range(spec.groups)]
    return LoweredConv(
        name=name,
        node=node.name,
        target=site.module_type,
        spec=spec,
        strategy=gather,
        input_node=input_name,
        output_node=output.name,
        kind=site.conv_kind,
        nodes=[n.name for n in nodes],
        gemm="linear",
        gemm_modules=gemm_modules,
    )


def _qualify(site: ConvSite, prefix: str) -> str:
    return _qualify_name(site.name, site.node.name, prefix)


def _qualify_name(name: str, node_name: str, prefix: str) -> str:
    if not prefix:
        return name
    # A functional conv at the root of a standalone conv module is the module itself.
    return prefix if name == node_name else f"{prefix}.{name}"
