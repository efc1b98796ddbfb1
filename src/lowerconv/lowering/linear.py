"""Step 3, the Linear form (``lower(model, gemm="linear")``): each conv's GEMM an ``nn.Linear``.

Tools built for ``nn.Linear`` (torchao's ``quantize_``, PEFT's LoRA, ``torch.nn.utils.prune``)
find nothing in the matmul form, whose GEMM multiplies a conv-shaped parameter.  In the Linear
form a conv's GEMM is an ``nn.Linear`` at the conv's own qualified name, called on the conv's
im2col columns laid out one row per output pixel::

    columns = gather(input)                 # (..., OH, OW, C_in*kh*kw), channel-major rows
    rows = linear(columns)                  # (..., OH, OW, C_out): the Linear is the GEMM
    output = rows.movedim(-1, -3)           # (..., C_out, OH, OW)

The Linear's weight is the conv's weight flattened, ``(C_out, C_in*kh*kw)``: same values, same
order, same ``state_dict`` keys (``layer1.0.conv1.weight``, ``...bias``).  A grouped conv (not
depthwise) is an ``nn.ModuleList`` of one Linear per group at the conv's name, each called on its
group's block of columns (keys ``conv.0.weight``, ``conv.1.weight``...).

The gather follows the strategy (:func:`linear_gather`): ``unfold`` is ``F.unfold`` always;
``strided`` is strided views and one copy; ``pointwise`` (1x1 kernels) and ``patchify`` (kernel
equal to stride, no padding) are views and a reshape, handing other convs to ``strided``;
``auto`` picks among those three by the conv's configuration.  The strategies that have no
single GEMM (``taps``, ``depthwise``), or that run their GEMM inside one kernel node (``nhwc``,
``nchw``, ``cuda``), have no Linear to expose: :func:`check_linear_arguments` refuses them.

Depthwise convs (``groups == in_channels``) and other kinds (1-D, 3-D, transposed) keep the
matmul form (:func:`matmul_reason` says why in the record).

``state_dict``: a conv-shaped one loads into the lowered model (load-state-dict pre-hooks on
the Linears reshape, or split per group, the 4-D weight), and :func:`conv_state_dict` gives the
conv-shaped one back, loadable into the original model.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import fx, nn

from .record import lowering_record
from .spec import ConvSpec
from .strategies import conv_output_width

__all__ = [
    "GEMMS",
    "LINEAR_STRATEGIES",
    "check_linear_arguments",
    "conv_linear",
    "conv_state_dict",
    "linear_conv2d",
    "linear_gather",
    "linear_graph",
    "linear_module_names",
    "linear_parameter_keys",
    "linear_state_dict",
    "matmul_reason",
]

# What lower(gemm=...) accepts: the GEMM a matmul on the conv-shaped weight, or an nn.Linear.
GEMMS = ("matmul", "linear")

# The strategies whose gather the Linear form can use (and auto, which picks among them).
LINEAR_STRATEGIES = ("unfold", "strided", "pointwise", "patchify", "auto")

torch.fx.wrap("conv_output_width")


def check_linear_arguments(
    gemm: str, strategy: str, max_workspace_bytes: int | None, where: str
) -> None:
    """A ``ValueError`` naming the argument, its value and the fix, for what the Linear form
    cannot serve; nothing for ``gemm="matmul"``."""
    if gemm not in GEMMS:
        raise ValueError(
            f"{where}: unknown gemm={gemm!r}; valid: {', '.join(map(repr, GEMMS))} (gemm='linear' "
            "makes each conv's GEMM an nn.Linear, for torchao, PEFT and torch.nn.utils.prune)"
        )
    if gemm == "matmul":
        return
    if strategy not in LINEAR_STRATEGIES:
        raise ValueError(
            f"{where}: strategy={strategy!r} cannot take gemm='linear': it has no single GEMM on "
            "im2col columns to make an nn.Linear of (taps and depthwise sum per-tap products; "
            "nhwc, nchw and cuda run their GEMM inside one kernel node). Fix: pass strategy= one "
            f"of {', '.join(map(repr, LINEAR_STRATEGIES))}, or gemm='matmul'"
        )
    if max_workspace_bytes is not None:
        raise ValueError(
            f"{where}: max_workspace_bytes={max_workspace_bytes} cannot take gemm='linear': the "
            "Linear is called once on each conv's whole im2col buffer, never in chunks. Fix: "
            "leave max_workspace_bytes=None, or use gemm='matmul' to cap the buffer"
        )


def matmul_reason(spec: ConvSpec | None, kind: str, mechanism: str) -> str:
    """Why a conv of the graph path kept the matmul form under ``gemm="linear"``."""
    if mechanism != "graph":
        return "lowered at run time, where no module holds its GEMM: kept on the matmul form"
    if kind != "conv2d":
        return (
            f"a {kind}: the Linear form covers Conv2d; kept on the matmul form with its "
            "conv-shaped weight"
        )
    if spec is None:
        return "its weight is computed at run time: kept on the matmul form"
    if spec.is_depthwise:
        return (
            "depthwise (groups == in_channels): each output channel is one kh*kw dot product, "
            "a Linear of kh*kw inputs per channel that quantisers, LoRA and pruning gain nothing "
            "from; kept on its strategy with its conv-shaped weight"
        )
    return (
        "a functional F.conv2d call (or a Conv2d subclass with its own forward, or a Conv2d "
        "lowered as the model itself): no plain Conv2d submodule to put an nn.Linear in place "
        "of; kept on the matmul form"
    )


def linear_gather(strategy: str, spec: ConvSpec) -> str:
    """The gather the Linear form runs for ``strategy`` on this conv (see the module docs)."""
    if strategy in ("pointwise", "auto") and all(k == 1 for k in spec.kernel_size):
        return "pointwise"
    if strategy in ("patchify", "auto") and spec.is_patchify:
        return "patchify"
    return "unfold" if strategy == "unfold" else "strided"


# -- the gathers: (..., C, H, W) -> (..., OH, OW, C*kh*kw), rows channel-major ------------------


def _pad_mode(spec: ConvSpec) -> str:
    return "constant" if spec.padding_mode == "zeros" else spec.padding_mode


def unfold_columns(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """``F.unfold``'s ``(..., C*kh*kw, OH*OW)`` columns, one row per output pixel."""
    padding = spec.symmetric_padding
    if padding is None:
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
        padding = (0, 0)
    unfold = F.unfold(
        input, spec.kernel_size, dilation=spec.dilation, padding=padding, stride=spec.stride
    )
    out_width = conv_output_width(
        input, spec.kernel_size[1], spec.stride[1], 2 * padding[1], spec.dilation[1]
    )
    return unfold.transpose(-1, -2).unflatten(-2, (-1, out_width))


def strided_columns(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """The columns gathered from strided views of the input (``Tensor.unfold``), one copy."""
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    # (..., C, H, W) -> (..., C, OH, OW, kh, kw), all views of the input.
    patches = input.unfold(-2, dh * (kh - 1) + 1, sh).unfold(-2, dw * (kw - 1) + 1, sw)
    if (dh, dw) != (1, 1):
        patches = patches[..., ::dh, ::dw]
    return patches.movedim(-5, -3).flatten(-3)


def pointwise_columns(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """A 1x1 conv's columns are its input's pixels: a view, channels last."""
    if any(spec.pad):
        input = F.pad(input, spec.pad, mode=_pad_mode(spec))
    if spec.stride != (1, 1):
        input = input[..., :: spec.stride[0], :: spec.stride[1]]
    return input.movedim(-3, -1)


def patchify_columns(input: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """Kernel equal to stride, no padding: the patches by reshape + permute (one copy)."""
    kh, kw = spec.kernel_size
    out_h, out_w = input.shape[-2] // kh, input.shape[-1] // kw
    # Rows and columns that no patch covers are dropped, as the convolution drops them.
    patches = input[..., : out_h * kh, : out_w * kw]
    patches = patches.unflatten(-1, (out_w, kw)).unflatten(-3, (out_h, kh))
    # (..., C, OH, kh, OW, kw) -> (..., OH, OW, C, kh, kw)
    return patches.movedim(-4, -5).movedim(-2, -4).flatten(-3)


GATHERS = {
    "unfold": unfold_columns,
    "strided": strided_columns,
    "pointwise": pointwise_columns,
    "patchify": patchify_columns,
}


def linear_conv2d(
    input: torch.Tensor, linear: nn.Module, spec: ConvSpec, gather: str
) -> torch.Tensor:
    """The conv as ``gather`` + ``linear`` (an ``nn.Linear``, or one per group in an
    ``nn.ModuleList``) + a move of the channels back to dimension -3."""
    columns = GATHERS[gather](input, spec)
    if spec.groups == 1:
        rows = linear(columns)
    else:
        # Columns are channel-major, so each group's are one contiguous block of the row.
        k = spec.patch_size
        rows = torch.cat(
            [linear[g](columns[..., g * k : (g + 1) * k]) for g in range(spec.groups)], dim=-1
        )
    return rows.movedim(-1, -3).contiguous()


class _Template(nn.Module):
    """The Linear form of one conv configuration, traced once; its ``linear`` submodule stands
    for the conv's own (the splice renames ``linear`` to the conv's qualified name)."""

    def __init__(self, spec: ConvSpec, gather: str) -> None:
        super().__init__()
        self.spec, self.gather = spec, gather
        # On the meta device: only the call's place in the graph is traced, never its values.
        self.linear = _gemm_modules(spec, bias=False, device="meta")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear_conv2d(input, self.linear, self.spec, self.gather)


@functools.lru_cache(maxsize=512)
def linear_graph(spec: ConvSpec, gather: str) -> fx.Graph:
    """The graph of the Linear form for one conv: input ``input``, ``call_module`` nodes on
    ``linear`` (``linear.<g>`` per group)."""
    return fx.symbolic_trace(_Template(spec, gather)).graph


# -- the modules and their state_dict -----------------------------------------------------------


def _gemm_modules(spec: ConvSpec, bias: bool, **factory: Any) -> nn.Module:
    if spec.groups == 1:
        return nn.Linear(spec.patch_size, spec.out_channels, bias=bias, **factory)
    return nn.ModuleList(
        nn.Linear(spec.patch_size, spec.out_per_group, bias=bias, **factory)
        for _ in range(spec.groups)
    )


def conv_linear(conv: nn.Conv2d) -> nn.Module:
    """The ``nn.Linear`` (one per group in an ``nn.ModuleList``) that holds ``conv``'s GEMM, its
    parameters copies of the conv's, flattened; ``conv`` is not changed.

    A conv-shaped ``state_dict`` loads into it: a pre-hook reshapes (and splits per group) the
    4-D weight and the bias under the conv's keys.
    """
    spec = ConvSpec.from_module(conv)
    weight, bias = conv.weight, conv.bias
    module = _gemm_modules(spec, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    linears = [module] if spec.groups == 1 else list(module)
    rows = weight.detach().reshape(spec.groups, spec.out_per_group, spec.patch_size)
    biases = None if bias is None else bias.detach().reshape(spec.groups, spec.out_per_group)
    for g, linear in enumerate(linears):
        linear.weight = nn.Parameter(rows[g].clone(), requires_grad=weight.requires_grad)
        if biases is not None:
            linear.bias = nn.Parameter(biases[g].clone(), requires_grad=bias.requires_grad)
    module._register_load_state_dict_pre_hook(
        functools.partial(_load_conv_shaped, spec.groups, spec.out_per_group)
    )
    return module


def _load_conv_shaped(
    groups: int, out_per_group: int, state_dict: dict, prefix: str, *args: Any
) -> None:
    """A load-state-dict pre-hook: the conv's 4-D weight (and its bias) under the conv's keys,
    reshaped for the Linear, or split into one Linear's per group."""
    weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
    if groups == 1:
        if isinstance(weight, torch.Tensor) and weight.dim() > 2:
            state_dict[prefix + "weight"] = weight.flatten(1)
        return
    for role, value in (("weight", weight), ("bias", bias)):
        if not isinstance(value, torch.Tensor) or value.shape[0] != groups * out_per_group:
            continue
        del state_dict[prefix + role]
        for g, part in enumerate(value.split(out_per_group)):
            state_dict[f"{prefix}{g}.{role}"] = part.flatten(1) if role == "weight" else part


def linear_module_names(lowered: nn.Module) -> list[str]:
    """The qualified names of every ``nn.Linear`` that holds a conv's GEMM in ``lowered``, in
    graph order: pass them to PEFT's ``LoraConfig(target_modules=...)``."""
    return [name for conv in lowering_record(lowered).lowered for name in conv.gemm_modules]


def _linear_convs(lowered: nn.Module) -> list[tuple[str, ConvSpec, list[str]]]:
    """``(name, spec, Linear names)`` of each Linear-form conv of ``lowered``, at every name
    its module is reachable by; not those a caller has replaced since (PEFT's wrappers)."""
    paths: dict[int, list[str]] = {}
    for path, module in lowered.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    found: dict[str, tuple[str, ConvSpec, list[str]]] = {}
    for conv in lowering_record(lowered).lowered:
        if conv.gemm != "linear" or conv.spec is None:
            continue
        grouped = conv.spec.groups > 1
        name = conv.gemm_modules[0].rpartition(".")[0] if grouped else conv.gemm_modules[0]
        try:
            holder = lowered.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(holder, nn.Linear | nn.ModuleList):
            continue
        for path in paths.get(id(holder), [name]):
            members = [f"{path}{m.removeprefix(name)}" for m in conv.gemm_modules]
            found[path] = (path, conv.spec, members)
    return list(found.values())


def linear_parameter_keys(lowered: nn.Module) -> dict[str, list[str]]:
    """For each Linear-form conv of ``lowered``, its conv's ``state_dict`` keys
    (``layer1.0.conv1.weight``) and the keys of ``lowered`` that hold each (the same key, or one
    per group: ``conv.0.weight``, ``conv.1.weight``...), at every name the conv is reachable by."""
    keys: dict[str, list[str]] = {}
    for path, spec, members in _linear_convs(lowered):
        keys[f"{path}.weight"] = [f"{m}.weight" for m in members]
        if spec.bias:
            keys[f"{path}.bias"] = [f"{m}.bias" for m in members]
    return keys


def conv_state_dict(
    lowered: nn.Module, tensors: dict[str, torch.Tensor | None] | None = None
) -> OrderedDict[str, torch.Tensor]:
    """``lowered.state_dict()`` with each Linear-form conv's parameters back in the conv's
    shape and keys, loadable into the original model (``model.load_state_dict(...)``).

    The tensors are the lowered model's, reshaped (a view where one is possible) or, for a
    grouped conv, concatenated (a new tensor).  A model lowered with ``gemm="matmul"`` gives
    its ``state_dict()`` unchanged.  Call it on the model :func:`lowerconv.lower` returned (or a
    copy): after PEFT, merge the adapters first (``merge_and_unload()``); a torchao-quantised
    weight has no conv shape to go back to.

    ``tensors``, keyed like ``lowered.state_dict()`` (its parameters' gradients by name, say;
    None for one that has none), is converted instead of the state itself.
    """
    state = lowered.state_dict() if tensors is None else tensors
    shapes = _conv_shapes(lowered)
    by_key = {
        key: target
        for target, keys in linear_parameter_keys(lowered).items()
        if all(k in state for k in keys)
        for key in keys
    }
    sizes = {target: len(keys) for target, keys in linear_parameter_keys(lowered).items()}
    result: OrderedDict[str, Any] = OrderedDict()
    parts: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        if key not in by_key:
            result[key] = value
            continue
        target = by_key[key]
        parts.setdefault(target, []).append(value)
        if len(parts[target]) == sizes[target]:
            pieces = parts[target]
            if any(piece is None for piece in pieces):
                result[target] = None
            else:
                joined = pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # type: ignore[arg-type]
                result[target] = joined.reshape(shapes[target])
    return result


def linear_state_dict(
    lowered: nn.Module, conv_tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`conv_state_dict` for some conv keys: each conv-shaped tensor as
    the Linear-form keys of ``lowered`` that hold it (flattened, split per group); other keys
    as they are.  Differentiable: the pieces are views of the given tensors."""
    keys = linear_parameter_keys(lowered)
    result: dict[str, torch.Tensor] = {}
    for key, value in conv_tensors.items():
        held = keys.get(key)
        if held is None:
            result[key] = value
            continue
        pieces = value.chunk(len(held)) if len(held) > 1 else (value,)
        for name, piece in zip(held, pieces, strict=True):
            result[name] = piece.flatten(1) if key.endswith(".weight") else piece
    return result


def _conv_shapes(lowered: nn.Module) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path, spec, _ in _linear_convs(lowered):
        shapes[f"{path}.weight"] = (spec.out_channels, spec.in_per_group, *spec.kernel_size)
        shapes[f"{path}.bias"] = (spec.out_channels,)
    return shapes
