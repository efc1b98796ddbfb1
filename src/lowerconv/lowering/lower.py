"""The pass: ``lower(model)`` rewrites every 2-D convolution into Unfold + matmul + reshape.

Data flows ``trace -> lower_graph (find_conv_sites -> emit_lowered_conv) -> rebuild``:

1. :func:`~lowerconv.lowering.trace.trace` turns a (deep-copied) model into an FX graph, plain
   ``Conv2d`` modules kept as ``call_module`` leaves;
2. :func:`~lowerconv.lowering.rewrite.lower_graph` lists the convolutions, and those left alone
   (:func:`~lowerconv.lowering.sites.find_conv_sites`), and splices a strategy's nodes in place of
   each one (:func:`~lowerconv.lowering.emit.emit_lowered_conv`);
3. the returned ``GraphModule`` gets the original's module tree back, with each ``Conv2d``
   swapped for a small lowered ``GraphModule`` that holds the same parameter objects, so
   ``state_dict()`` keys, order and values, tied parameters, and ``train()``/``eval()`` flags
   are the original's.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ..errors import LoweringError
from .emit import META_KEY, strategy_graph
from .inputs import normalize_example_inputs
from .linear import check_linear_arguments, conv_linear, linear_graph, matmul_reason
from .preflight import materialize_lazy, refuse_torchscript
from .quantized import lower_quantized_convs, untraced_quantized_convs
from .record import RECORD_ATTR, LoweredConv, LoweringRecord
from .rewrite import lower_graph
from .runtime import (
    RuntimeLoweredConv,
    RuntimeLowering,
    describe_call_site,
    trace_conv_calls,
)
from .sites import SkippedConv, check_kinds, skipped_conv_modules
from .spec import KINDS, ConvSpec
from .strategies import DEFAULT_OPTIONS, STRATEGY_NAMES, StrategyOptions
from .trace import (
    LoweringTracer,
    conv_base,
    conv_kind,
    describe_trace_failure,
    is_plain_conv,
    is_plain_conv2d,
    trace,
)

__all__ = ["STRATEGY_NAMES", "export_linear_form", "lower"]


def lower(
    model: nn.Module,
    *,
    strategy: str = "unfold",
    inplace: bool = False,
    strict: bool = False,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
    max_workspace_bytes: int | None = None,
    example_inputs: Any = None,
    kinds: Iterable[str] | None = None,
    target: str | None = None,
    gemm: str = "matmul",
) -> nn.Module:
    """Return ``model`` with every convolution computed by Unfold + matmul + reshape.

    Every kind is lowered (:data:`lowerconv.KINDS`: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``,
    their subclasses and functional forms), so the result runs no convolution op; ``kinds``
    narrows that (``kinds={"conv2d"}`` lowers ``Conv2d`` only, and the record lists the others
    as left alone).  A transposed convolution becomes a GEMM and col2im (``F.fold``).

    ``model`` is an ``nn.Module`` or an already traced ``fx.GraphModule``.  It is deep-copied
    first and never changed, unless ``inplace=True``: then the result shares its parameters and
    its ``Conv2d`` submodules are swapped for their lowered versions.

    ``strategy`` picks the arithmetic (see :mod:`lowerconv.lowering.strategies`): ``"unfold"`` (default,
    the faithful ``F.unfold`` + matmul + reshape), ``"auto"`` (the fastest for the device each
    call's input is on: on a CPU, chosen per conv among ``pointwise``, ``patchify``,
    ``depthwise``, ``taps``, ``nchw`` and ``nhwc``; on a GPU, the CUDA plan, ``"cuda"``), or any
    one of :data:`STRATEGY_NAMES` for every conv.  ``target`` (``"cpu"`` or ``"cuda"``) fixes
    ``auto``'s device instead: ``target="cuda"`` runs the CUDA plan's arithmetic on CPU tensors
    too (to test it), ``target="cpu"`` emits the CPU choice inline.  By default a model lowered
    on the CPU and moved with ``.cuda()`` runs the CUDA plan.  ``max_workspace_bytes`` caps every im2col buffer a
    lowered conv allocates: convs that need a larger one compute it in chunks of images or output
    rows (:func:`lowerconv.lowering.strategies.run_in_chunks`).  ``leaf_modules`` (types or qualified names) are not
    traced into; ``concrete_args`` is passed to the tracer.

    Returns an ``fx.GraphModule`` (the *graph path*).  Where ``torch.fx`` cannot trace the whole
    model and ``example_inputs`` are given, it captures the model with ``torch.export`` (non-strict)
    on them and returns that one lowered ATen graph, specialised to their shapes, dtype, device
    and train/eval mode (the *export path*, :mod:`lowerconv.lowering.export`).  Where that fails
    too, it returns a copy of ``model`` whose ``Conv2d`` submodules are each lowered on their own
    and whose forward runs under run-time lowering, so every other ``F.conv2d`` call it makes
    (a kernel built in ``forward``) runs as im2col + matmul too (the *fallback path*);
    ``strict=True`` raises :class:`LoweringError` instead of either.  An
    ``ExportedProgram`` is lowered into another one
    (:func:`lowerconv.lowering.export.lower_program`).  ``leaf_modules`` are lowered at run time the
    same way.  Either way :func:`lowerconv.lowering_record` tells what was done, and why; run-time
    convs are listed there when ``example_inputs`` (a tensor or a tuple of the model's positional
    arguments) are given to run the model on once.

    ``gemm="linear"`` (the *Linear form*, :mod:`lowerconv.lowering.linear`, graph path only)
    makes each ``Conv2d``'s GEMM an ``nn.Linear`` at the conv's own qualified name (one per
    group in an ``nn.ModuleList`` for a grouped conv), called on its im2col columns, so that
    tools made for ``nn.Linear`` (torchao's ``quantize_``, PEFT's LoRA, ``torch.nn.utils.prune``)
    find every conv; the gather follows ``strategy`` (``unfold``, ``strided``, ``pointwise``,
    ``patchify`` or ``auto``).  Depthwise convs and other kinds keep the matmul form, and the
    record says so; a conv-shaped ``state_dict`` still loads, and
    :func:`lowerconv.conv_state_dict` gives one back.

    Example, for ``nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())``, ``code`` before::

        def forward(self, input):
            _0 = getattr(self, "0")(input);  input = None
            _1 = getattr(self, "1")(_0);  _0 = None
            return _1

    and after::

        def forward(self, input):
            _0_weight = getattr(self, "0").weight
            _0_bias = getattr(self, "0").bias
            _0_unfold = torch.nn.functional.unfold(input, (3, 3), dilation = (1, 1), padding = (1, 1), stride = (1, 1))
            _0_weight_flatten = _0_weight.flatten(1);  _0_weight = None
            _0_matmul = torch.matmul(_0_weight_flatten, _0_unfold);  _0_weight_flatten = _0_unfold = None
            _0_bias_unsqueeze = _0_bias.unsqueeze(-1);  _0_bias = None
            _0_add = _0_matmul + _0_bias_unsqueeze;  _0_matmul = _0_bias_unsqueeze = None
            _0_conv_output_width = conv_output_width(input, 3, 1, 2, 1);  input = None
            _0_reshape = _0_add.unflatten(-1, (-1, _0_conv_output_width));  ...
            _1 = getattr(self, "1")(_0_reshape);  _0_reshape = None
            return _1
    """
    # Each lowering traces its strategies afresh: a traced graph holds the function objects the
    # strategy called (F.unfold, torch.matmul), and one traced while the caller had patched
    # them (a test, a mock) must not serve a later lowering.  Within one lowering the cache
    # still shares one traced graph among the convs of one configuration.
    strategy_graph.cache_clear()
    linear_graph.cache_clear()
    if isinstance(model, torch.export.ExportedProgram):
        if gemm != "matmul":
            raise LoweringError(
                f"lower(ExportedProgram) takes gemm='matmul' only, got gemm={gemm!r}: an "
                "ExportedProgram holds no modules to put an nn.Linear in. Fix: lower the "
                "nn.Module itself with gemm='linear', then export the result"
            )
        from .export import lower_program  # the export tier, imported when it is used

        _check_program_arguments(inplace, leaf_modules, concrete_args, example_inputs)
        return lower_program(
            model, strategy=strategy, max_workspace_bytes=max_workspace_bytes, kinds=kinds
        )
    _check_arguments(model, strategy, leaf_modules)
    try:
        check_linear_arguments(
            gemm, strategy, max_workspace_bytes, f"lower({type(model).__name__})"
        )
    except ValueError as err:
        raise LoweringError(str(err)) from err
    chosen = _check_kinds(model, kinds)
    inputs = None if example_inputs is None else normalize_example_inputs(model, example_inputs)
    try:
        options = StrategyOptions(max_workspace_bytes=max_workspace_bytes, target=target)
    except ValueError as err:
        fix = (
            "pass target='cuda', 'cpu' or None (follow the input's device)"
            if "target" in str(err)
            else "e.g. max_workspace_bytes=64 * 2**20 for 64 MiB"
        )
        raise LoweringError(f"lower({type(model).__name__}): {err}; {fix}") from err
    work = model if inplace else _copy_model(model)
    record = LoweringRecord(
        model=type(model).__name__,
        strategy=strategy,
        max_workspace_bytes=max_workspace_bytes,
        kinds=[k for k in KINDS if k in chosen],
        gemm=gemm,
    )
    _materialize(model, work, inputs, inplace, record)
    holders = _lower_conv_modules(work, strategy, options, chosen)
    run_time = [h.conv for h in holders.values() if isinstance(h.module, RuntimeLoweredConv)]
    try:
        traced = trace(
            work, leaf_modules=leaf_modules, leaf_objects=run_time, concrete_args=concrete_args
        )
    except LoweringError as err:
        if strict:
            raise
        record.trace_error = str(err)
        if inputs is not None and not leaf_modules:
            # The export tier: torch.export follows what fx could not, for these inputs.
            from .export import capture_and_lower

            try:
                lowered_program = capture_and_lower(
                    work, inputs, strategy, options, record, kinds=chosen
                )
                _note_matmul_form(record)
                return lowered_program
            except LoweringError as export_err:
                record.export_error = str(export_err)
        else:
            record.export_error = "not tried: " + (
                "leaf_modules= were given" if leaf_modules else "no example_inputs= given"
            )
        # The fallback path: each conv module's own lowering, and the rest at run time.
        record.path = "fallback"
        for holder in holders.values():
            record.lowered.extend(holder.lowered)
            record.skipped.extend(holder.skipped)
        record.skipped.extend(skipped_conv_modules(work, kinds=chosen))
        _note_matmul_form(record)
        record.skipped.extend(untraced_quantized_convs(work))
        _swap_conv_modules(work, holders)
        RuntimeLowering(strategy, options.max_workspace_bytes, chosen, target).attach(work)
        record.runtime.append("")
        setattr(work, RECORD_ATTR, record)
        _list_runtime_convs(work, record, inputs)
        return work

    linear = _linear_modules(traced, holders) if gemm == "linear" else {}
    for conv, module in linear.values():
        holders[id(conv)].module = module
    lowered, skipped = lower_graph(
        traced,
        strategy,
        options=options,
        kinds=chosen,
        linear={target: module for target, (_, module) in linear.items()},
    )
    # torch.ao quantised convs (fx leaves): their integer GEMMs, whatever the strategy.
    integer, integer_skipped = lower_quantized_convs(traced, work, kinds=chosen)
    lowered += integer
    skipped += integer_skipped
    if is_plain_conv(work) and work.transposed and concrete_args is None:
        # A bare transposed conv: lowered dynamically, as its output padding comes from each
        # call's output_size=; its configuration is the module's, as for one inside a model.
        for conv in lowered:
            conv.spec = conv.spec or ConvSpec.from_module(work)
    record.lowered = _in_graph_order(traced.graph, lowered, _leaf_records(traced, holders))
    _note_matmul_form(record)
    record.skipped.extend(skipped)
    already = {s.name for s in record.skipped}
    record.skipped.extend(skipped_conv_modules(work, already, kinds=chosen))
    _swap_conv_modules(work, holders)
    for name in _user_leaves(traced, holders, leaf_modules):
        runtime = RuntimeLowering(strategy, options.max_workspace_bytes, chosen, target)
        runtime.attach(work.get_submodule(name))
        record.runtime.append(name)
    gm = _rebuild(work, traced.graph, class_name=f"Lowered{type(model).__name__}")
    setattr(gm, RECORD_ATTR, record)
    _preserve_on_deepcopy(gm)
    if record.runtime:
        _list_runtime_convs(gm, record, inputs)
    return gm


def export_linear_form(
    model: nn.Module, example_inputs: Any, *, strategy: str = "unfold", dynamic_batch: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``lower(model, gemm="linear")``: the Linear form as an
    ``ExportedProgram`` (each conv's GEMM an ``aten.linear``), carrying the lowering's record.

    The Linear form lives on the graph path (modules at the convs' names), so the model is
    lowered first and captured after, the reverse of
    :func:`lowerconv.lowering.export.export_lowered`, which lowers the captured ATen graph.
    """
    from .export import capture  # the export tier, imported when it is used

    inputs = normalize_example_inputs(model, example_inputs)
    lowered = lower(model, strategy=strategy, gemm="linear", example_inputs=inputs)
    program = capture(lowered, inputs, dynamic_batch=dynamic_batch)
    setattr(program, RECORD_ATTR, getattr(lowered, RECORD_ATTR))
    return program


def _linear_modules(
    traced: fx.GraphModule, holders: dict[int, _ConvHolder]
) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Each ``Conv2d`` the graph calls that can take the Linear form, and its GEMM module, by
    the name the graph calls it under (one module for a conv called by two names)."""
    made: dict[int, nn.Module] = {}
    found: dict[str, tuple[nn.Module, nn.Module]] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        conv = traced.get_submodule(str(node.target))
        holder = holders.get(id(conv))
        if holder is None or not isinstance(holder.module, fx.GraphModule):
            continue  # not a conv, or one lowered at run time
        if not is_plain_conv2d(conv) or ConvSpec.from_module(conv).is_depthwise:
            continue
        if id(conv) not in made:
            made[id(conv)] = conv_linear(conv)
        found[str(node.target)] = (conv, made[id(conv)])
    return found


def _note_matmul_form(record: LoweringRecord) -> None:
    """Under ``gemm="linear"``, say in the record why each conv kept the matmul form."""
    if record.gemm == "matmul":
        return
    if record.path != "graph":
        record.notes.append(
            f"gemm='linear' is served on the graph path only: on the {record.path} path every "
            "conv keeps the matmul form (make the model traceable by torch.fx, e.g. with "
            "leaf_modules= or concrete_args=, to get the Linear form)"
        )
    for conv in record.lowered:
        if conv.gemm == "linear":
            continue
        if record.path == "graph":
            reason = matmul_reason(conv.spec, conv.kind, conv.mechanism)
        else:
            reason = f"the {record.path} path keeps the matmul form"
        conv.note = f"{conv.note}; {reason}" if conv.note else reason


def _user_leaves(
    traced: fx.GraphModule, holders: dict[int, _ConvHolder], leaf_modules: Iterable[type | str]
) -> list[str]:
    """The ``leaf_modules=`` modules the graph calls, which the pass cannot see into."""
    leaves = tuple(leaf_modules)
    types = tuple(t for t in leaves if isinstance(t, type))
    names = {t for t in leaves if isinstance(t, str)}
    found = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or str(node.target) in found or META_KEY in node.meta:
            continue
        module = traced.get_submodule(str(node.target))
        if id(module) not in holders and (node.target in names or isinstance(module, types)):
            found.append(str(node.target))
    return found


def _list_runtime_convs(lowered: nn.Module, record: LoweringRecord, inputs: tuple | None) -> None:
    """Run a copy of ``lowered`` once on ``inputs`` to list the convs lowered at run time.

    A copy, under ``no_grad`` with the RNG forked: running must not change the lowered model's
    buffers (batch-norm statistics in train mode) or the caller's random stream.
    """
    where = " and ".join(repr(name) if name else "the model's forward" for name in record.runtime)
    if inputs is None:
        record.notes.append(
            f"F.conv2d calls made in {where} are lowered at run time, as they happen; pass "
            "example_inputs= to lower() to list them here"
        )
        return
    probe = copy.deepcopy(lowered)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), trace_conv_calls(probe) as calls:
            probe(*inputs)
    except Exception as exc:
        shapes = ", ".join(
            f"{tuple(t.shape)}" if isinstance(t, torch.Tensor) else repr(t) for t in inputs
        )
        raise LoweringError(
            f"lowered {record.model} failed on example_inputs ({shapes}) while listing the "
            f"convolutions lowered at run time: {type(exc).__name__}: {exc}. Fix: pass "
            "example_inputs the model accepts (a tensor or a tuple of its positional arguments)"
        ) from exc
    record.runtime_calls_listed = True
    known = {s.name for s in record.skipped}
    for call in calls:
        site = describe_call_site(call)
        if call.lowered:
            record.lowered.append(
                LoweredConv(
                    name=call.name,
                    node="",
                    target=call.target,
                    kind=call.kind,
                    spec=call.spec,
                    strategy=f"{call.concrete_strategy} (run time)",
                    input_node="",
                    output_node="",
                    nodes=[],
                    note=f"lowered at run time: called from {site}",
                    mechanism="run time",
                )
            )
        elif call.called_from not in known:
            reason = f"not lowered: {call.kind} (kinds= leaves it out), called from {site}"
            record.skipped.append(SkippedConv(call.name, "", call.kind, reason))


def _leaf_records(
    traced: fx.GraphModule, holders: dict[int, _ConvHolder]
) -> list[tuple[fx.Node, LoweredConv]]:
    """Records of the convs that leaf modules compute, with the ``call_module`` node of each.

    A ``Conv2d`` leaf (lowered at run time) is recorded at its own node; a conv inside another
    leaf (``leaf_modules=``) keeps its own module's record, placed at that leaf's node.
    """
    found = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or META_KEY in node.meta:
            continue  # the pass's own calls (a Linear form's GEMM) are not leaves
        module = traced.get_submodule(str(node.target))
        if id(module) in holders:
            conv = copy.copy(holders[id(module)].lowered[0])
            conv.node, conv.input_node, conv.output_node = node.name, node.args[0].name, node.name
            conv.nodes = [node.name]
            found.append((node, conv))
            continue
        for inner in module.modules():
            if id(inner) in holders:
                found.extend((node, conv) for conv in holders[id(inner)].lowered)
    return found


def _in_graph_order(
    graph: fx.Graph, lowered: list[LoweredConv], at_leaves: list[tuple[fx.Node, LoweredConv]]
) -> list[LoweredConv]:
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    placed = [(position[conv.output_node], i, conv) for i, conv in enumerate(lowered)]
    placed += [
        (position[node.name], len(placed) + i, conv) for i, (node, conv) in enumerate(at_leaves)
    ]
    return [conv for *_, conv in sorted(placed, key=lambda item: item[:2])]


# -- the module tree ------------------------------------------------------------------------------


@dataclass
class _ConvHolder:
    """A ``Conv2d`` of the model, the module that replaces it, and that module's own record."""

    conv: nn.Conv2d
    module: nn.Module
    lowered: list[LoweredConv]
    skipped: list[SkippedConv]


def _lower_conv_modules(
    work: nn.Module,
    strategy: str,
    options: StrategyOptions = DEFAULT_OPTIONS,
    kinds: frozenset[str] = frozenset(KINDS),
) -> dict[int, _ConvHolder]:
    """Lower every convolution module of ``work`` of ``kinds`` on its own, keyed by ``id``.

    A conv that traces on its own becomes a small lowered ``GraphModule``; a subclass whose
    ``forward`` cannot be traced, and every transposed conv (which may be called with
    ``output_size=``), becomes a :class:`RuntimeLoweredConv`, which runs that ``forward`` with
    its ``F.conv*`` calls lowered.  On the graph path these hold the parameters under their
    original names and keep ``model.layer1(x)`` working; on the fallback path they are the
    lowering itself.
    """
    holders: dict[int, _ConvHolder] = {}
    for qualname, module in work.named_modules():
        base = conv_base(module)
        if base is None or id(module) in holders or not qualname:
            continue
        if conv_kind(module) in kinds:
            holders[id(module)] = _lower_conv_module(module, qualname, strategy, options, kinds)
    return holders


def _lower_conv_module(
    conv: nn.Module,
    qualname: str,
    strategy: str,
    options: StrategyOptions = DEFAULT_OPTIONS,
    kinds: frozenset[str] = frozenset(KINDS),
) -> _ConvHolder:
    tracer = LoweringTracer()
    kind = conv_kind(conv)
    # Reading a parametrized weight runs its parametrization (spectral norm's power iteration
    # updates buffers): only plain convs' specs are read here.
    spec = ConvSpec.from_module(conv) if is_plain_conv(conv) else None
    try:
        if conv._forward_pre_hooks or conv._forward_hooks:
            # Hooks may compute the weight (torch.nn.utils.weight_norm): they must keep running.
            raise _RunTimeOnly("it has forward hooks, which must keep running")
        if kind.startswith("conv_transpose"):
            # Its output padding may come from output_size= at call time.
            raise _RunTimeOnly("a transposed convolution may take output_size= when called")
        graph = tracer.trace(conv)
    except Exception as exc:
        reason = (
            str(exc)
            if isinstance(exc, _RunTimeOnly)
            else describe_trace_failure(conv, tracer, exc).splitlines()[0]
        )
        lowered = LoweredConv(
            name=qualname,
            node="",
            target=type(conv).__name__,
            spec=spec,
            strategy=f"{strategy} (run time)",
            input_node="",
            output_node="",
            nodes=[],
            graph_module=qualname,
            note=f"lowered at run time: {reason}; its F.{kind} calls run as im2col + matmul",
            mechanism="run time",
            kind=kind,
        )
        runtime = RuntimeLoweredConv(
            conv, strategy, options.max_workspace_bytes, kinds, options.target
        )
        return _ConvHolder(conv, runtime, [lowered], [])
    gm = fx.GraphModule(tracer.root, graph, class_name=f"Lowered{type(conv).__name__}")
    lowered, skipped = lower_graph(gm, strategy, name_prefix=qualname, options=options, kinds=kinds)
    for conv_record in lowered:
        conv_record.graph_module = qualname
        if conv_record.name == qualname:
            conv_record.target = type(conv).__name__
    _adopt_state(gm, conv)
    # Code that reads a conv's configuration at run time (out_channels, stride...) still works,
    # on copies too: GraphModule's deepcopy rebuilds it from the graph and sets only these.
    config = {attr: getattr(conv, attr) for attr in _CONV_CONFIG_ATTRS}
    for attr, value in config.items():
        object.__setattr__(gm, attr, value)
    gm.meta["_user_preserved_attributes"] = config
    return _ConvHolder(conv, gm, lowered, skipped)


class _RunTimeOnly(Exception):
    """A conv module that must run its own forward (lowered at run time); says why."""


def _swap_conv_modules(work: nn.Module, holders: dict[int, _ConvHolder]) -> None:
    """Put each conv's replacement where the conv was, at every path it is reachable by."""
    for parent in list(work.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in holders:
                parent._modules[child_name] = holders[id(child)].module


_CONV_CONFIG_ATTRS = (
    "transposed",
    "output_padding",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


def _rebuild(work: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    gm = fx.GraphModule(work, graph, class_name=class_name)
    gm._modules = OrderedDict(work._modules)
    _adopt_state(gm, work)
    graph.lint()
    return gm


def _preserve_on_deepcopy(gm: fx.GraphModule) -> None:
    """Keep the record and the original's module tree through ``copy.deepcopy(gm)``.

    ``GraphModule.__deepcopy__`` rebuilds the module from its graph (dropping what the graph does
    not use and reordering the rest), then sets the attributes listed in this ``meta`` entry on
    the copy; they are deep-copied with the same memo, so they are the copy's own objects.
    """
    # Plain tensors the graph reads at the root (the tracer's ``_tensor_constant0``) come last:
    # set after ``_buffers`` is restored, they stay plain attributes.
    constants = {
        str(node.target): getattr(gm, str(node.target))
        for node in gm.graph.nodes
        if node.op == "get_attr" and "." not in str(node.target)
    }
    gm.meta["_user_preserved_attributes"] = {
        RECORD_ATTR: getattr(gm, RECORD_ATTR),
        "_modules": gm._modules,
        "_parameters": gm._parameters,
        "_buffers": gm._buffers,
        "_non_persistent_buffers_set": gm._non_persistent_buffers_set,
        **{k: v for k, v in constants.items() if k not in gm._parameters and k not in gm._buffers},
    }


def _adopt_state(target: nn.Module, source: nn.Module) -> None:
    """Give ``target`` exactly ``source``'s own parameters and buffers, same objects, same order.

    ``fx.GraphModule`` registers only what its graph uses, in graph order, and turns plain
    tensor attributes into buffers; that would change ``state_dict()``.  Extra tensors stay as
    plain attributes so ``get_attr`` nodes still find them.
    """
    extras = {k: v for k, v in target._buffers.items() if k not in source._buffers}
    target._parameters = OrderedDict(source._parameters)
    target._buffers = OrderedDict(source._buffers)
    target._non_persistent_buffers_set = set(source._non_persistent_buffers_set)
    for name, value in extras.items():
        if name not in target._parameters:
            object.__setattr__(target, name, value)
    target.training = source.training


# -- arguments ---------------------------------------------------------------------------------


def _check_program_arguments(
    inplace: bool, leaf_modules: Iterable[Any], concrete_args: Any, example_inputs: Any
) -> None:
    given = [
        name
        for name, value in (
            ("inplace=True", inplace),
            ("leaf_modules=", tuple(leaf_modules)),
            ("concrete_args=", concrete_args),
            ("example_inputs=", example_inputs is not None),
        )
        if value
    ]
    if given:
        raise LoweringError(
            f"lower(ExportedProgram) takes strategy= and max_workspace_bytes= only, got "
            f"{', '.join(given)}: an ExportedProgram is already one graph with its own example "
            "inputs, and is never changed in place"
        )


def _check_kinds(model: Any, kinds: Iterable[str] | None) -> frozenset[str]:
    try:
        return check_kinds(kinds)
    except ValueError as err:
        raise LoweringError(
            f"lower({type(model).__name__}): {err}; e.g. kinds={{'conv2d'}} for Conv2d only, "
            "or leave kinds=None to lower every kind"
        ) from err


def _materialize(
    model: nn.Module, work: nn.Module, inputs: tuple | None, inplace: bool, record: LoweringRecord
) -> None:
    """Initialise ``work``'s lazy modules (a copy unless ``inplace``), saying so in the record."""
    lazy = materialize_lazy(work, inputs, f"lower({type(model).__name__})")
    if lazy and not inplace:
        record.notes.append(
            f"lazy modules {', '.join(repr(name) for name in lazy)} were initialised on the copy that was "
            "lowered, by one run on example_inputs; the model you passed is still "
            "uninitialised, and its first call draws weights of its own. To make the two the "
            "same, call the original once before lowering, or load the lowered model's "
            "state_dict() into it"
        )


def _check_arguments(model: Any, strategy: str, leaf_modules: Iterable[Any]) -> None:
    refuse_torchscript(model, "lower()")
    if not isinstance(model, nn.Module):
        raise LoweringError(
            f"lower() takes an nn.Module or fx.GraphModule, got {type(model).__name__}: "
            "pass the model object, e.g. lowerconv.lower(torchvision.models.resnet18())"
        )
    if strategy not in STRATEGY_NAMES:
        raise LoweringError(
            f"unknown strategy {strategy!r} for {type(model).__name__}; "
            f"valid strategies: {', '.join(repr(s) for s in STRATEGY_NAMES)}"
        )
    for leaf in leaf_modules:
        if not (isinstance(leaf, str) or (isinstance(leaf, type) and issubclass(leaf, nn.Module))):
            raise LoweringError(
                f"leaf_modules entries must be nn.Module subclasses or qualified names, "
                f"got {leaf!r}"
            )


def _copy_model(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise LoweringError(
            f"could not deep-copy {type(model).__name__} to lower it without changing it: "
            f"{type(exc).__name__}: {exc}. Fix: make it deep-copyable, or pass inplace=True to "
            "lower it in place (its Conv2d submodules are then replaced)"
        ) from exc
