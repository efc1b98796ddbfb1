"""Step 2 of the pass: find every convolution in a traced graph and decide what to do with it.

A *site* is one node computing a convolution of a kind the pass lowers (:data:`KINDS`, all of
them unless ``kinds=`` narrows it): a ``call_module`` of a plain ``nn.Conv1d/2d/3d`` or
``nn.ConvTranspose1d/2d/3d``, or a ``call_function`` of ``F.conv*``/``F.conv_transpose*``
(also ``torch.convolution``, ``aten.conv*``, ``aten.conv_transpose*`` and ``aten.convolution``,
called directly or in graphs traced at the ATen level: :mod:`.conv_calls`).  Every other convolution (a kind left out by ``kinds=``, deformable) is reported as
skipped, never silently.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .conv_calls import CONV_CALLABLES
from .spec import KINDS, ConvSpec, kind_of
from .trace import CONV_MODULES, conv_base, is_plain_conv

__all__ = [
    "ConvSite",
    "SkippedConv",
    "check_kinds",
    "find_conv_sites",
    "kind_of_label",
    "other_conv_kind",
    "skipped_conv_modules",
]

_DEFAULTS = {
    "bias": None,
    "stride": 1,
    "padding": 0,
    "dilation": 1,
    "groups": 1,
    "output_padding": 0,
    "transposed": False,
}


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str]:
    """``kinds=`` as a set of :data:`KINDS` (None: all of them); a ``ValueError`` naming any
    unknown one."""
    if kinds is None:
        return frozenset(KINDS)
    if isinstance(kinds, str):
        kinds = {kinds}
    chosen = frozenset(kinds)
    unknown = sorted(k for k in chosen if k not in KINDS)
    if unknown:
        raise ValueError(
            f"unknown convolution kind(s) {', '.join(map(repr, unknown))} in kinds=; valid "
            f"kinds: {', '.join(KINDS)}"
        )
    return chosen


def kind_of_label(label: str) -> str | None:
    """The kind a record's label names: ``"ConvTranspose2d" -> "conv_transpose2d"``,
    ``"F.conv3d" -> "conv3d"``, ``"aten.conv1d" -> "conv1d"``; None for another label."""
    match = re.search(r"conv(_?transpose)?([123])d", label.lower())
    if not match:
        return None
    return kind_of(int(match.group(2)), bool(match.group(1)))


@dataclass
class ConvSite:
    """One convolution to lower.

    ``weight``/``bias`` are graph nodes (or None for no bias).  For a ``call_module`` site they
    are None until the pass creates ``get_attr`` nodes for the module's parameters, named by
    ``weight_target``/``bias_target``.  ``spec`` is None when the weight's shape is only known at
    run time (a weight computed from the input), which the pass handles with a dynamic kernel;
    ``conv_kind`` is the convolution's kind (one of :data:`KINDS`) either way.
    """

    node: fx.Node
    name: str
    kind: str  # "module" or "function"
    weight_target: str | None
    bias_target: str | None
    spec: ConvSpec | None
    conv_args: dict[str, Any]
    module_type: str
    conv_kind: str = "conv2d"

    # Operands are read from the node when asked: lowering an earlier conv replaces the nodes
    # that feed later ones (a conv feeding a conv directly).
    @property
    def input(self) -> fx.Node:
        return self._operands()[0]

    @property
    def weight(self) -> fx.Node | None:
        return self._operands()[1]

    @property
    def bias(self) -> fx.Node | None:
        return self._operands()[2]

    def _operands(self) -> tuple[Any, Any, Any]:
        node = self.node
        if self.kind == "module":
            return (node.args[0] if node.args else node.kwargs["input"]), None, None
        operands: dict[str, Any] = {"bias": None}
        operands.update(zip(("input", "weight", "bias"), node.args[:3], strict=False))
        operands.update(
            {k: v for k, v in node.kwargs.items() if k in operands or k in ("input", "weight")}
        )
        return operands["input"], operands["weight"], operands["bias"]


@dataclass
class SkippedConv:
    """A convolution-like node the pass left alone, and why."""

    name: str
    node: str
    kind: str
    reason: str

    @property
    def conv_kind(self) -> str | None:
        """The kind (one of :data:`KINDS`) of the conv left alone, None for a deformable one."""
        return kind_of_label(self.kind)

    def to_dict(self) -> dict:
        return {"name": self.name, "node": self.node, "kind": self.kind, "reason": self.reason}


def source_name(node: fx.Node) -> str:
    """The qualified name of the module a node came from (``layer1.0.conv1``), else its name."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        qualname = path[0] if isinstance(path, tuple) else str(path)
        if qualname:
            return qualname
    return node.name


def find_conv_sites(
    gm: fx.GraphModule, kinds: Iterable[str] | None = None
) -> tuple[list[ConvSite], list[SkippedConv]]:
    """Every convolution of ``kinds`` (default: every kind) in ``gm``'s graph to lower, in graph
    order, and the convolutions left alone.

    Convolution modules that are leaves but not plain (hooks, untraceable subclasses) are
    neither: the pass replaces the module itself, which lowers them at run time.  So is a
    transposed convolution module called with ``output_size=``, whose output padding is only
    known at run time.
    """
    chosen = check_kinds(kinds)
    sites: list[ConvSite] = []
    skipped: list[SkippedConv] = []
    modules = dict(gm.named_modules())
    static = _StaticEvaluator(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = modules.get(str(node.target))
            base = conv_base(module) if module is not None else None
            if base is not None and _MODULE_KINDS[base] in chosen:
                if is_plain_conv(module) and not _has_output_size(node):
                    sites.append(_module_site(node, module))
            elif (kind := other_conv_kind(module, chosen)) is not None:
                skipped.append(_skip(node, kind, _why_not(kind, chosen)))
        elif node.op == "call_function":
            if _is_conv_callable(node.target):
                site = _function_site(node, static, chosen)
                (sites if isinstance(site, ConvSite) else skipped).append(site)
            elif getattr(node.target, "__name__", "") == "deform_conv2d":
                skipped.append(_skip(node, "deform_conv2d", _why_not("deform_conv2d", chosen)))
    return sites, skipped


_MODULE_KINDS: dict[type, str] = {
    cls: kind_of(int(cls.__name__[-2]), "Transpose" in cls.__name__) for cls in CONV_MODULES
}


def _why_not(kind: str, chosen: frozenset[str]) -> str:
    if kind_of_label(kind) is None:
        return "deformable offsets are not an im2col"
    included = ", ".join(sorted(chosen)) or "none"
    return f"kinds= leaves {kind_of_label(kind)} out; it lowers {included}"


def other_conv_kind(module: nn.Module | None, kinds: Iterable[str] | None = None) -> str | None:
    """``"ConvTranspose2d"``, ``"DeformConv2d"``...: the kind of a convolution module the pass
    does not lower (a kind left out of ``kinds``, or deformable), named by its nearest
    ``torch.nn``/torchvision class; None for any other module."""
    if module is None:
        return None
    chosen = check_kinds(kinds)
    base = conv_base(module)
    if base is not None:
        return None if _MODULE_KINDS[base] in chosen else base.__name__
    if any(cls.__name__ == "DeformConv2d" for cls in type(module).__mro__):
        return "DeformConv2d"
    return None


def skipped_conv_modules(
    root: nn.Module, already: set[str] = frozenset(), kinds: Iterable[str] | None = None
) -> list[SkippedConv]:
    """Every convolution module of ``root`` the pass does not lower, by qualified name.

    ``already`` are names recorded elsewhere (a graph's ``call_module`` node of that module).
    """
    chosen = check_kinds(kinds)
    found = []
    for name, module in root.named_modules():
        kind = other_conv_kind(module, chosen)
        if kind is not None and name not in already:
            reason = f"not lowered: {kind} ({_why_not(kind, chosen)})"
            found.append(SkippedConv(name, "", kind, reason))
    return found


def _skip(node: fx.Node, kind: str, reason: str) -> SkippedConv:
    return SkippedConv(source_name(node), node.name, kind, f"not lowered: {kind} ({reason})")


def _has_output_size(node: fx.Node) -> bool:
    return len(node.args) > 1 or node.kwargs.get("output_size") is not None


def _module_site(node: fx.Node, conv: nn.Module) -> ConvSite:
    target = str(node.target)
    spec = ConvSpec.from_module(conv)
    conv_args = {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "padding_mode": conv.padding_mode,
    }
    if spec.transposed:
        conv_args.update(transposed=True, output_padding=conv.output_padding)
    return ConvSite(
        node=node,
        name=target,
        kind="module",
        weight_target=f"{target}.weight",
        bias_target=f"{target}.bias" if conv.bias is not None else None,
        spec=spec,
        conv_args=conv_args,
        module_type=type(conv).__name__,
        conv_kind=spec.kind,
    )


def _is_conv_callable(target: Any) -> bool:
    try:
        return target in CONV_CALLABLES
    except TypeError:  # an unhashable target (a functools.partial...) is no convolution
        return False


def _function_site(
    node: fx.Node, static: _StaticEvaluator, chosen: frozenset[str]
) -> ConvSite | SkippedConv:
    kind, label, names = CONV_CALLABLES[node.target]
    args = dict(_DEFAULTS)
    args.update(zip(names, node.args, strict=False))
    args.update(node.kwargs)
    if kind is None:  # aten.convolution: the kind is in its arguments
        stride = args["stride"]
        ndim = len(stride) if isinstance(stride, list | tuple) else None
        if ndim not in (1, 2, 3) or isinstance(args["transposed"], fx.Node):
            return _skip(node, label, "its kind is only known at run time")
        kind = kind_of(ndim, bool(args["transposed"]))
        label = f"{label}({kind})" if kind != "conv2d" else label
    if kind not in chosen:
        return _skip(node, label, _why_not(kind, chosen))
    transposed = kind.startswith("conv_transpose")
    conv_args = {k: args[k] for k in ("stride", "padding", "dilation", "groups")}
    conv_args["padding_mode"] = "zeros"
    if transposed:
        conv_args.update(transposed=True, output_padding=args["output_padding"])
    weight, bias = args["weight"], args["bias"]
    spec = None
    weight_value = static.value(weight) if isinstance(weight, fx.Node) else weight
    if (
        isinstance(weight_value, torch.Tensor)
        and not any(isinstance(v, fx.Node) for v in conv_args.values())
        and weight_value.dim() == int(kind[-2]) + 2
    ):
        spec = ConvSpec.from_conv_args(weight_value.shape, bias=bias is not None, **conv_args)
    return ConvSite(
        node=node,
        name=source_name(node),
        kind="function",
        weight_target=None,
        bias_target=None,
        spec=spec,
        conv_args=conv_args,
        module_type=label,
        conv_kind=kind,
    )


class _StaticEvaluator:
    """Evaluates nodes that depend only on parameters and constants (never on an input).

    A weight computed from a parameter (weight standardisation, weight normalisation) has a
    shape known before the model runs; finding it lets the pass emit a static im2col.  Nodes are
    evaluated on the ``meta`` device, so no arithmetic is done on real weights.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.cache: dict[fx.Node, Any] = {}

    def value(self, node: fx.Node) -> Any:
        if node not in self.cache:
            self.cache[node] = self._compute(node)
        return self.cache[node]

    def _compute(self, node: fx.Node) -> Any:
        if node.op == "get_attr":
            value = operator.attrgetter(str(node.target))(self.gm)
            return _to_meta(value)
        if node.op not in ("call_function", "call_method", "call_module"):
            return None  # placeholders: depends on the input
        missing: list[fx.Node] = []

        def load(arg: fx.Node) -> Any:
            got = self.value(arg)
            if got is None:
                missing.append(arg)
            return got

        args = fx.node.map_arg(node.args, load)
        kwargs = fx.node.map_arg(node.kwargs, load)
        if missing:
            return None
        try:
            with torch.no_grad():
                if node.op == "call_function":
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    self_obj, *rest = args
                    return getattr(self_obj, str(node.target))(*rest, **kwargs)
                module = self.gm.get_submodule(str(node.target))
                if any(True for _ in module.buffers()):
                    return None  # it may update its buffers (spectral norm): do not call it
                # A parametrization (weight norm) computing the weight from parameters.
                return _to_meta(module(*args, **kwargs))
        except Exception:
            return None


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    return value
