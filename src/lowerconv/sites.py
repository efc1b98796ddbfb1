"""Step 2 of the pass: find every convolution in a traced graph and decide what to do with it.

A *site* is one node computing a 2-D convolution, either a ``call_module`` of a plain
``nn.Conv2d`` or a ``call_function`` of ``F.conv2d``/``torch.conv2d`` (also ``aten.conv2d`` and
non-transposed 2-D ``aten.convolution`` in graphs that were traced at the ATen level).  Every
other convolution (1-D, 3-D, transposed, deformable) is reported as skipped, never silently.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .spec import ConvSpec
from .trace import is_plain_conv2d

__all__ = ["ConvSite", "SkippedConv", "find_conv_sites", "other_conv_kind", "skipped_conv_modules"]

# Convolution-like modules that are not a 2-D convolution; reported as "not lowered: <kind>".
_OTHER_CONV_MODULES: tuple[type, ...] = (
    nn.Conv1d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_OTHER_CONV_FUNCTIONS = {
    F.conv1d: "conv1d",
    F.conv3d: "conv3d",
    F.conv_transpose1d: "conv_transpose1d",
    F.conv_transpose2d: "conv_transpose2d",
    F.conv_transpose3d: "conv_transpose3d",
    torch.ops.aten.conv1d.default: "aten.conv1d",
    torch.ops.aten.conv3d.default: "aten.conv3d",
}
_CONV2D_FUNCTIONS = (F.conv2d, torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding)
_ATEN_CONVOLUTION = (torch.ops.aten.convolution.default, torch.ops.aten._convolution.default)


@dataclass
class ConvSite:
    """One 2-D convolution to lower.

    ``weight``/``bias`` are graph nodes (or None for no bias).  For a ``call_module`` site they
    are None until the pass creates ``get_attr`` nodes for the module's parameters, named by
    ``weight_target``/``bias_target``.  ``spec`` is None when the weight's shape is only known at
    run time (a weight computed from the input), which the pass handles with a dynamic kernel.
    """

    node: fx.Node
    name: str
    kind: str  # "module" or "function"
    weight_target: str | None
    bias_target: str | None
    spec: ConvSpec | None
    conv_args: dict[str, Any]
    module_type: str

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


def find_conv_sites(gm: fx.GraphModule) -> tuple[list[ConvSite], list[SkippedConv]]:
    """Every 2-D convolution in ``gm``'s graph to lower, in graph order, and those left alone.

    ``Conv2d`` modules that are leaves but not plain (hooks, untraceable subclasses) are neither:
    the pass replaces the module itself, which lowers them at run time.
    """
    sites: list[ConvSite] = []
    skipped: list[SkippedConv] = []
    modules = dict(gm.named_modules())
    static = _StaticEvaluator(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = modules.get(str(node.target))
            if isinstance(module, nn.Conv2d) and is_plain_conv2d(module):
                sites.append(_module_site(node, module))
            elif (kind := other_conv_kind(module)) is not None:
                skipped.append(_skip(node, kind, _WHY_NOT[kind]))
        elif node.op == "call_function":
            if node.target in _CONV2D_FUNCTIONS:
                sites.append(_function_site(node, static, aten=node.target is not F.conv2d))
            elif node.target in _ATEN_CONVOLUTION:
                site = _aten_convolution_site(node, static)
                if isinstance(site, ConvSite):
                    sites.append(site)
                else:
                    skipped.append(site)
            elif node.target in _OTHER_CONV_FUNCTIONS:
                kind = _OTHER_CONV_FUNCTIONS[node.target]
                skipped.append(_skip(node, kind, "not a 2-D convolution"))
            elif getattr(node.target, "__name__", "") == "deform_conv2d":
                skipped.append(_skip(node, "deform_conv2d", "deformable offsets are not an im2col"))
    return sites, skipped


_WHY_NOT = {
    **{cls.__name__: "not a 2-D convolution" for cls in _OTHER_CONV_MODULES},
    "DeformConv2d": "deformable offsets are not an im2col",
}


def other_conv_kind(module: nn.Module) -> str | None:
    """``"ConvTranspose2d"``, ``"Conv3d"``, ...: the kind of a convolution module the pass does not
    lower (its class name, or its nearest ``torch.nn``/torchvision base's); None for any other."""
    for cls in _OTHER_CONV_MODULES:
        if isinstance(module, cls):
            return cls.__name__
    if any(base.__name__ == "DeformConv2d" for base in type(module).__mro__):
        return "DeformConv2d"
    return None


def skipped_conv_modules(root: nn.Module, already: set[str] = frozenset()) -> list[SkippedConv]:
    """Every convolution module of ``root`` the pass does not lower, by qualified name.

    ``already`` are names recorded elsewhere (a graph's ``call_module`` node of that module).
    """
    found = []
    for name, module in root.named_modules():
        kind = other_conv_kind(module)
        if kind is not None and name not in already:
            found.append(SkippedConv(name, "", kind, f"not lowered: {kind} ({_WHY_NOT[kind]})"))
    return found


def _skip(node: fx.Node, kind: str, reason: str) -> SkippedConv:
    return SkippedConv(source_name(node), node.name, kind, f"not lowered: {kind} ({reason})")


def _module_site(node: fx.Node, conv: nn.Conv2d) -> ConvSite:
    target = str(node.target)
    return ConvSite(
        node=node,
        name=target,
        kind="module",
        weight_target=f"{target}.weight",
        bias_target=f"{target}.bias" if conv.bias is not None else None,
        spec=ConvSpec.from_module(conv),
        conv_args={
            "stride": conv.stride,
            "padding": conv.padding,
            "dilation": conv.dilation,
            "groups": conv.groups,
            "padding_mode": conv.padding_mode,
        },
        module_type=type(conv).__name__,
    )


_CONV2D_ARG_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _function_site(node: fx.Node, static: _StaticEvaluator, aten: bool) -> ConvSite:
    args = dict(_CONV2D_DEFAULTS)
    args.update(zip(_CONV2D_ARG_NAMES, node.args, strict=False))
    args.update(node.kwargs)
    return _site_from_args(node, args, static, "aten.conv2d" if aten else "F.conv2d")


def _aten_convolution_site(node: fx.Node, static: _StaticEvaluator) -> ConvSite | SkippedConv:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed")
    args = dict(zip((*names, "output_padding", "groups"), node.args, strict=False))
    args.update(node.kwargs)
    if args.get("transposed"):
        return _skip(node, "aten.convolution(transposed)", "a transposed convolution")
    if len(args["stride"]) != 2:
        return _skip(node, f"aten.convolution({len(args['stride'])}-d)", "not a 2-D convolution")
    conv_args = {k: args[k] for k in _CONV2D_ARG_NAMES}
    return _site_from_args(node, conv_args, static, "aten.convolution")


def _site_from_args(
    node: fx.Node, args: dict[str, Any], static: _StaticEvaluator, module_type: str
) -> ConvSite:
    weight, bias = args["weight"], args["bias"]
    conv_args = {k: args[k] for k in ("stride", "padding", "dilation", "groups")}
    conv_args["padding_mode"] = "zeros"
    spec = None
    weight_value = static.value(weight) if isinstance(weight, fx.Node) else weight
    if isinstance(weight_value, torch.Tensor) and not any(
        isinstance(v, fx.Node) for v in conv_args.values()
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
        module_type=module_type,
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
