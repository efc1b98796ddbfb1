"""PT2E-quantised graphs: the convs between dequantize and quantize nodes, as integer GEMMs.

After ``torchao.quantization.pt2e``'s ``prepare_pt2e``/``convert_pt2e`` a quantised conv is a
float conv between quantisation nodes::

    x_f = quantized_decomposed.dequantize_per_tensor(x_codes, sx, zx, 0, 255, torch.uint8)
    w_f = quantized_decomposed.dequantize_per_channel(w_codes, sw, zw, 0, -128, 127, torch.int8)
    y   = aten.conv2d(x_f, w_f, bias, stride, padding, dilation, groups)
    (aten.relu, then quantize_per_tensor(y, sy, zy, ...) where the next op is quantised)

:func:`lower_pt2e_convs` replaces each such ``aten.conv*`` node by the integer GEMM of
:mod:`.quantized` on the codes themselves: int8 im2col of ``x_codes`` padded with the zero
point, ``torch._int_mm`` in int32, the zero-point corrections, then the one float step the
graph had, ``sx * sw[c] * acc + bias``, so the graph's own ``relu`` and ``quantize`` nodes do the
requantisation as before.  The exactness argument is :mod:`.quantized`'s; what differs from the
float conv is only float32 rounding in ``y`` (the float conv sums rounded products, the GEMM
sums exact ones), which the next ``quantize`` turns into a one-step difference on a rounding tie
at most.  ``lower_graph`` runs it before the float convs, so every path of :func:`lowerconv.lower`
(a ``GraphModule`` from ``convert_pt2e``, ``lower(ExportedProgram)``) gets it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import fx

from .emit import Provenance, stamp
from .quantized import IntegerConvSpec, integer_accumulator
from .record import LoweredConv
from .sites import SkippedConv, source_name

__all__ = [
    "PT2E_CONVS",
    "Pt2eConvSpec",
    "dequantized_integer_conv",
    "lower_pt2e_convs",
    "pt2e_conv_nodes",
]

# The ATen convs a PT2E graph holds, by name: kind, and where stride... start in args.
PT2E_CONVS = {
    "aten.conv1d.default": "conv1d",
    "aten.conv2d.default": "conv2d",
    "aten.conv3d.default": "conv3d",
}
_DEQUANTIZE_TENSOR = "quantized_decomposed.dequantize_per_tensor.default"
_DEQUANTIZE_CHANNEL = "quantized_decomposed.dequantize_per_channel.default"


@dataclass(frozen=True)
class Pt2eConvSpec:
    """A PT2E conv's configuration and its input's quantisation, fixed in the graph."""

    conv: IntegerConvSpec
    input_scale: float
    input_zero_point: int
    input_shift: int  # 128 for uint8 codes, 0 for int8

    def to_dict(self) -> dict:
        return asdict(self)


def dequantized_integer_conv(
    codes: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    weight_sum: torch.Tensor,
    bias: torch.Tensor | None,
    spec: Pt2eConvSpec,
) -> torch.Tensor:
    """``aten.conv*(dequantize(codes), dequantize(weight), bias)`` as an exact integer GEMM and
    one float scale: ``sx * sw[c] * acc + bias`` (the module docstring)."""
    conv = spec.conv
    if spec.input_shift:
        codes = (codes.to(torch.int16) - spec.input_shift).to(torch.int8)
    zero = spec.input_zero_point - spec.input_shift
    acc, spatial = integer_accumulator(codes, zero, weight, weight_zero_point, weight_sum, conv)
    scale = (weight_scale.to(torch.float32) * spec.input_scale).unsqueeze(-1)
    real = acc.to(torch.float32) * scale
    if bias is not None:
        real = real + bias.unsqueeze(-1)
    return real.unflatten(-1, spatial)


def lower_pt2e_convs(
    gm: fx.GraphModule, *, name_prefix: str = "", kinds: frozenset[str] | None = None
) -> tuple[list[LoweredConv], list[SkippedConv]]:
    """Replace each ``aten.conv*`` between PT2E dequantize nodes in ``gm`` by its integer GEMM,
    in place; other convs are left to the float pass.  Returns the record's entries (the
    ``skipped`` ones: PT2E-looking convs the integer form does not take, with why)."""
    lowered: list[LoweredConv] = []
    skipped: list[SkippedConv] = []
    for node in list(gm.graph.nodes):
        kind = PT2E_CONVS.get(str(node.target)) if node.op == "call_function" else None
        if kind is None or not _is_dequantize(node.args[0]):
            continue
        name = f"{name_prefix}.{source_name(node)}" if name_prefix else source_name(node)
        if kinds is not None and kind not in kinds:
            skipped.append(SkippedConv(name, node.name, kind, f"not lowered: {kind} (kinds=)"))
            continue
        try:
            spec, weight_nodes = _read(gm, node, kind)
            spec.conv.check_accumulator(name)
        except ValueError as err:
            reason = f"not lowered as an integer GEMM: {err}"
            skipped.append(SkippedConv(name, node.name, kind, reason))
            continue
        lowered.append(_emit(gm, node, name, spec, weight_nodes))
    if lowered:
        gm.graph.lint()
        gm.recompile()
    return lowered, skipped


def pt2e_conv_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The ``aten.conv*`` nodes of ``graph`` whose input is a PT2E dequantize."""
    return [
        n
        for n in graph.nodes
        if n.op == "call_function" and str(n.target) in PT2E_CONVS and _is_dequantize(n.args[0])
    ]


def _is_dequantize(node) -> bool:
    return isinstance(node, fx.Node) and str(node.target) == _DEQUANTIZE_TENSOR


def _read(gm: fx.GraphModule, node: fx.Node, kind: str) -> tuple[Pt2eConvSpec, dict]:
    x_dq, w_dq, *rest = node.args
    bias = rest[0] if rest else None
    ndim = int(kind[-2])
    stride, padding, dilation, groups = (
        list(rest[1:]) + [None] * (4 - len(rest[1:])) if len(rest) > 1 else [None] * 4
    )
    stride = _ints(stride, 1, ndim, "stride")
    padding = _ints(padding, 0, ndim, "padding")
    dilation = _ints(dilation, 1, ndim, "dilation")
    groups = 1 if groups is None else int(groups)
    _, x_scale, x_zero, _, _, x_dtype = x_dq.args[:6]
    if isinstance(x_scale, fx.Node) or isinstance(x_zero, fx.Node):
        raise ValueError("its input's scale or zero point is computed at run time")
    if x_dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"its input is {x_dtype}, not uint8 or int8 codes")
    if not isinstance(w_dq, fx.Node) or str(w_dq.target) not in (
        _DEQUANTIZE_TENSOR,
        _DEQUANTIZE_CHANNEL,
    ):
        raise ValueError("its weight is not a dequantised int8 tensor")
    codes_node = w_dq.args[0]
    codes = _constant(gm, codes_node, "weight codes")
    if codes.dtype != torch.int8:
        raise ValueError(f"its weight codes are {codes.dtype}, not int8")
    channels = codes.shape[0]
    if str(w_dq.target) == _DEQUANTIZE_CHANNEL:
        if int(w_dq.args[3]) != 0:
            raise ValueError(f"its weight is quantised along axis {w_dq.args[3]}, not 0")
        scales = _constant(gm, w_dq.args[1], "weight scales").to(torch.float64)
        zeros = _constant(gm, w_dq.args[2], "weight zero points").to(torch.int64)
    else:
        scales = torch.full((channels,), float(w_dq.args[1]), dtype=torch.float64)
        zeros = torch.full((channels,), int(w_dq.args[2]), dtype=torch.int64)
    pad: tuple[int, ...] = ()
    for p in padding:
        pad = (p, p, *pad)
    conv = IntegerConvSpec(
        kind=kind,
        in_channels=codes.shape[1] * groups,
        out_channels=channels,
        kernel_size=tuple(codes.shape[2:]),
        stride=stride,
        dilation=dilation,
        pad=pad,
        groups=groups,
        relu=False,
        bias=bias is not None,
        recipe="graph's own quantize",
        weight_zero_points=bool(zeros.ne(0).any()),
    )
    shift = 128 if x_dtype == torch.uint8 else 0
    spec = Pt2eConvSpec(conv, float(x_scale), int(x_zero), shift)
    centred = codes.to(torch.int64) - zeros.view(-1, *([1] * (codes.dim() - 1)))
    weight_nodes = {
        "codes": codes_node,
        "scales": scales,
        "zeros": zeros,
        "weight_sum": centred.flatten(1).sum(1).to(torch.int32),
        "bias": bias,
    }
    return spec, weight_nodes


def _ints(value, default: int, ndim: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (default,) * ndim
    if isinstance(value, str):
        raise ValueError(f"{name}={value!r} (a string padding: only explicit sizes are lowered)")
    values = tuple(int(v) for v in (value if isinstance(value, list | tuple) else [value]))
    return values * ndim if len(values) == 1 else values


def _constant(gm: fx.GraphModule, node, what: str) -> torch.Tensor:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise ValueError(f"its {what} are computed in the graph, not a constant of it")
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _emit(
    gm: fx.GraphModule, node: fx.Node, name: str, spec: Pt2eConvSpec, weight: dict
) -> LoweredConv:
    graph = gm.graph
    base = name.replace(".", "_")
    kind = spec.conv.kind
    spec_dict = spec.to_dict()
    strategy = "integer (pt2e)"
    new_nodes: list[fx.Node] = []

    def prov(role: str, is_output: bool = False) -> Provenance:
        return Provenance(
            name, node.name, str(node.target), strategy, role, spec_dict, is_output, kind
        )

    with graph.inserting_before(node):
        attrs = {}
        for role, value in (
            ("weight_scale", weight["scales"]),
            ("weight_zero_point", weight["zeros"]),
            ("weight_sum", weight["weight_sum"]),
        ):
            target = _free_name(gm, f"{base}_{role}")
            gm.register_buffer(target, value)
            attrs[role] = graph.create_node("get_attr", target, name=target)
            stamp(attrs[role], node, prov(role))
            new_nodes.append(attrs[role])
        codes = node.args[0].args[0]  # the dequantize's input: the codes themselves
        out = graph.call_function(
            dequantized_integer_conv,
            (
                codes,
                weight["codes"],
                attrs["weight_scale"],
                attrs["weight_zero_point"],
                attrs["weight_sum"],
                weight["bias"],
                spec,
            ),
        )
        out._rename(f"{base}_integer_conv")
        stamp(out, node, prov("integer_conv", True))
        new_nodes.append(out)
    if "val" in node.meta:
        out.meta["val"] = node.meta["val"]
    input_name = codes.name
    dequantized = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    for orphan in dequantized:  # the float input and weight only the conv read
        if not orphan.users:
            graph.erase_node(orphan)
    return LoweredConv(
        name=name,
        node=node.name,
        target=str(node.target),
        spec=spec.conv.conv_spec(),
        strategy=strategy,
        input_node=input_name,
        output_node=out.name,
        nodes=[n.name for n in new_nodes],
        kind=kind,
        note=(
            f"integer GEMM of a PT2E conv: {spec.conv.describe()}; the dequantize's uint8/int8 "
            "codes padded with their zero point, int8 im2col, torch._int_mm in int32, then "
            "sx * sw * acc + bias; the graph's own quantize requantises"
        ),
    )


def _free_name(gm: fx.GraphModule, name: str) -> str:
    candidate, i = name, 1
    while hasattr(gm, candidate):
        candidate, i = f"{name}_{i}", i + 1
    return candidate


torch.fx.wrap("dequantized_integer_conv")

try:
    from torch.fx.graph import _register_custom_builtin

    # The generated code calls the function by name and builds its spec from its repr.
    _register_custom_builtin(
        "dequantized_integer_conv",
        f"from {__name__} import dequantized_integer_conv",
        dequantized_integer_conv,
    )
    for _cls in (Pt2eConvSpec, IntegerConvSpec):
        _register_custom_builtin(
            _cls.__name__, f"from {_cls.__module__} import {_cls.__name__}", _cls
        )
except ImportError:  # private API; without it the code still runs, under a longer name
    pass
