"""Integer convolutions as integer GEMMs: the pass for ``torch.ao`` quantised conv modules.

A quantised conv (``torch.ao.nn.quantized.Conv1d/2d/3d``, ``torch.ao.nn.intrinsic.quantized.
ConvReLU1d/2d/3d``) runs ``quantized::conv2d`` (``_relu``...) on packed weights.  What it computes
is an integer GEMM: with input codes ``x`` (zero point ``zx``, scale ``sx``), weight codes ``w``
(per output channel ``c``: zero point ``zw[c]``, scale ``sw[c]``), bias ``b`` and output scale
``sy``, zero point ``zy``::

    acc[c, l] = sum_k (x[k, l] - zx) * (w[c, k] - zw[c])          exact, in int32
    y[c, l]   = clamp(round(requant(acc[c, l])) + zy, qmin, qmax)   qmin = zy with a fused ReLU

:func:`lower_quantized_convs` replaces each such module's ``call_module`` node by that
arithmetic, one graph node per step (:func:`integer_conv`, traced with the conv's
:class:`IntegerConvSpec` fixed, and spliced in like a float strategy):

1. ``int8_codes(input)``: the input's integer codes, moved into int8 (``quint8`` codes minus 128),
   and ``int8_zero_point(input)``, its zero point moved the same way;
2. ``F.pad`` with that zero point, so that padding is a real 0;
3. ``integer_im2col``: the patches, ``(N, C*prod(kernel), *out)``, still int8;
4. ``int8_gemm``: ``torch._int_mm`` (int8 x int8 -> int32), per group;
5. ``- zero * weight_sum``: the zero point's share, ``sum_k zx' * (w - zw)``, subtracted in int32
   (``weight_sum`` is unpacked once, at lower time); ``- zw * column sums`` where a weight zero
   point is not 0;
6. requantisation in float32 as the engine does it (:data:`REQUANT_RECIPES`), the fused ReLU as
   the clamp's floor, and ``to_quantized``: a quantised tensor again, so ``quantized::add`` and
   every other quantised op downstream keep working.

**Exactness.**  ``x' = x - 128`` and ``w`` are int8, so each product is at most ``2^14`` in
magnitude and a sum of ``K < 2^17`` of them fits int32 (``_int_mm`` accumulates in int32 with no
rounding); :func:`IntegerConvSpec.check_accumulator` refuses a larger ``K`` by name.  Where
``_int_mm`` does not apply (a CUDA tensor of a shape it refuses), the same products are summed
in float64: every partial sum is an integer below ``2^31 < 2^53``, so it is exact whatever the
order.  Step 5 is exact in int32 for the same reason.  Only step 6 rounds, as the engine does.

The packed weights are unpacked once, at lower time, into the buffers of an
:class:`UnpackedQuantizedConv` put where the quantised conv was (``weight`` int8 codes,
``weight_scale``, ``weight_zero_point``, ``weight_sum``, ``bias``, ``scale``, ``zero_point``).
Quantised transposed convs (``ConvTranspose1d/2d/3d``) and ``ConvAdd2d``/``ConvAddReLU2d`` are
left alone, each with a record entry saying why.
"""

from __future__ import annotations

import operator
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .emit import Provenance, stamp
from .record import LoweredConv
from .sites import SkippedConv
from .spec import ConvSpec

__all__ = [
    "ACCUMULATOR_LIMIT",
    "REQUANT_RECIPES",
    "IntegerConvSpec",
    "UnpackedQuantizedConv",
    "int8_codes",
    "int8_gemm",
    "int8_zero_point",
    "integer_accumulator",
    "integer_conv",
    "integer_im2col",
    "integer_leaves",
    "is_quantized_conv",
    "lower_quantized_convs",
    "quantized_conv_kind",
    "requant_recipe",
    "to_quantized",
    "untraced_quantized_convs",
    "x86_uses_onednn",
]

# K * 128 * 128 must stay below 2^31 for the int32 accumulator to be exact (module docstring).
ACCUMULATOR_LIMIT = 2**31 // (128 * 128)

# How each engine turns the int32 accumulator into the output's codes (measured against the
# engine's own conv, docs/integer.md).  "float bias" (fbgemm): the float bias is added in
# accumulator units, the sum multiplied by a float32 multiplier, rounded, then the zero point
# added as an integer.  "float zero point" (oneDNN): the accumulator times sx, times sw, plus
# the bias, times float32 1/sy, plus the zero point, all in float32, then rounded.
# "int32 bias" (qnnpack): the bias rounded to int32 first, added to the accumulator, multiplied
# by float32 (sx*sw) * (1/sy), rounded, the zero point added.
# x86 picks oneDNN's kernel or fbgemm's per conv (:func:`x86_uses_onednn`), so its recipe is
# per conv too.
FLOAT_BIAS = "float bias"
FLOAT_ZERO_POINT = "float zero point"
INT32_BIAS = "int32 bias"
REQUANT_RECIPES = {
    "fbgemm": FLOAT_BIAS,
    "onednn": FLOAT_ZERO_POINT,
    "qnnpack": INT32_BIAS,
}


def x86_uses_onednn(conv: nn.Module) -> bool:
    """Whether the x86 engine runs ``conv`` with oneDNN's kernel rather than fbgemm's.

    The engine decides when it packs the weight (``should_use_onednn_quant`` in PyTorch's
    ``OnednnUtils.h``): oneDNN on Linux with AVX512-VNNI, for at most 100 groups and a weight
    quantised symmetrically (every weight zero point 0); fbgemm otherwise.
    """
    if not sys.platform.startswith("linux") or not _has_avx512_vnni():
        return False
    if getattr(conv, "groups", 1) > 100:
        return False
    return bool(_weight_quantization(conv.weight())[1].eq(0).all())


def _has_avx512_vnni() -> bool:
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # private; absent on old builds
    return bool(probe()) if probe is not None else False


def requant_recipe(engine: str | None = None, conv: nn.Module | None = None) -> str:
    """The requantisation recipe of ``engine`` (default: ``torch.backends.quantized.engine``).

    On x86 it depends on the conv (:func:`x86_uses_onednn`); without one, a line that says so,
    ``"per conv: ..."``, for reports.
    """
    engine = engine or torch.backends.quantized.engine
    if engine == "x86":
        if conv is None:
            return f"per conv: {FLOAT_ZERO_POINT} (oneDNN) or {FLOAT_BIAS} (fbgemm)"
        return FLOAT_ZERO_POINT if x86_uses_onednn(conv) else FLOAT_BIAS
    return REQUANT_RECIPES.get(engine, FLOAT_BIAS)


def _quantized_conv_types() -> dict[type, tuple[str, bool]]:
    """Each ``torch.ao`` quantised conv module type: its kind and whether a ReLU is fused."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    return {
        nnq.Conv1d: ("conv1d", False),
        nnq.Conv2d: ("conv2d", False),
        nnq.Conv3d: ("conv3d", False),
        nniq.ConvReLU1d: ("conv1d", True),
        nniq.ConvReLU2d: ("conv2d", True),
        nniq.ConvReLU3d: ("conv3d", True),
        nnq.ConvTranspose1d: ("conv_transpose1d", False),
        nnq.ConvTranspose2d: ("conv_transpose2d", False),
        nnq.ConvTranspose3d: ("conv_transpose3d", False),
        nniq.ConvAdd2d: ("conv2d", False),
        nniq.ConvAddReLU2d: ("conv2d", True),
    }


def quantized_conv_kind(module: nn.Module) -> str | None:
    """``"conv2d"``, ``"conv_transpose1d"``... for a ``torch.ao`` quantised conv module, else None.

    Subclasses count: ``ConvReLU2d`` is a ``Conv2d`` too, so the most derived type is looked up.
    """
    types = _quantized_conv_types()
    for cls in type(module).__mro__:
        if cls in types:
            return types[cls][0]
    return None


def is_quantized_conv(module: nn.Module) -> bool:
    return quantized_conv_kind(module) is not None


def _has_fused_relu(module: nn.Module) -> bool:
    types = _quantized_conv_types()
    return next(types[c][1] for c in type(module).__mro__ if c in types)


# -- the configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IntegerConvSpec:
    """One quantised conv's configuration, what :func:`integer_conv` needs with it fixed.

    ``pad`` is in :func:`torch.nn.functional.pad`'s order (innermost dimension first);
    ``recipe`` is the requantisation of :data:`REQUANT_RECIPES`; ``weight_zero_points`` says
    whether any weight zero point is not 0 (a step more in the graph); ``relu`` is a fused ReLU.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[int, ...]
    groups: int
    relu: bool
    bias: bool
    recipe: str
    weight_zero_points: bool = False

    @classmethod
    def from_module(cls, conv: nn.Module, recipe: str) -> IntegerConvSpec:
        weight = conv.weight()
        ndim = weight.dim() - 2
        padding = tuple(conv.padding)
        pad: tuple[int, ...] = ()
        for p in padding:
            pad = (p, p, *pad)
        return cls(
            kind=f"conv{ndim}d",
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            dilation=tuple(conv.dilation),
            pad=pad,
            groups=conv.groups,
            relu=_has_fused_relu(conv),
            bias=conv.bias() is not None,
            recipe=recipe,
            weight_zero_points=bool(_weight_quantization(weight)[1].ne(0).any()),
        )

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    @property
    def patch_size(self) -> int:
        """K, the GEMM's inner dimension: ``in_channels/groups * prod(kernel)``."""
        size = self.in_channels // self.groups
        for k in self.kernel_size:
            size *= k
        return size

    def describe(self) -> str:
        """``3x3 s1 p1 d1 g1, int8 GEMM K=576, ReLU`` for the record's table."""
        x = "x".join
        text = (
            f"{x(map(str, self.kernel_size))} s{x(map(str, self.stride))} "
            f"p{x(str(p) for p in self.pad[::2][::-1])} d{x(map(str, self.dilation))} "
            f"g{self.groups}, int8 GEMM K={self.patch_size}"
        )
        return text + (", ReLU" if self.relu else "")

    def conv_spec(self) -> ConvSpec:
        """The same configuration as a float :class:`~.spec.ConvSpec` (shapes, GEMM, table)."""
        return ConvSpec(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            pad=self.pad,
            padding_mode="zeros",
            groups=self.groups,
            bias=self.bias,
        )

    def check_accumulator(self, name: str) -> None:
        if self.patch_size >= ACCUMULATOR_LIMIT:
            raise ValueError(
                f"{name}: its GEMM sums K={self.patch_size} int8 products per output, and int32 "
                f"holds exactly only K < {ACCUMULATOR_LIMIT} of them (128 * 128 * K < 2^31)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _weight_quantization(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel: the weight's scales (float64) and zero points (int64)."""
    channels = weight.shape[0]
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        if weight.q_per_channel_axis() != 0:
            raise ValueError(
                f"weight quantised per channel along axis {weight.q_per_channel_axis()}; "
                "only axis 0 (output channels) is an integer GEMM's row scale"
            )
        scales = weight.q_per_channel_scales().to(torch.float64)
        zero_points = weight.q_per_channel_zero_points().to(torch.int64)
    else:
        scales = torch.full((channels,), weight.q_scale(), dtype=torch.float64)
        zero_points = torch.full((channels,), weight.q_zero_point(), dtype=torch.int64)
    return scales, zero_points


# -- the module that holds the unpacked weights ---------------------------------------------------


class UnpackedQuantizedConv(nn.Module):
    """A quantised conv's packed weights, unpacked once at lower time into plain buffers.

    It sits where the quantised conv was; the lowered graph reads its buffers with ``get_attr``.
    ``weight``: int8 codes, the conv's weight shape; ``weight_scale`` (float64) and
    ``weight_zero_point`` (int64), one per output channel (a per-tensor weight repeats its one
    value); ``weight_sum``: ``sum_k (w - zw)`` per output channel, int32; ``bias``: float32 or
    absent; ``scale`` and ``zero_point``: the output's, 0-d float64 and int64.
    """

    def __init__(self, conv: nn.Module, spec: IntegerConvSpec, name: str) -> None:
        super().__init__()
        weight = conv.weight()
        if weight.dtype != torch.qint8:
            raise ValueError(f"{name}: weight is {weight.dtype}; the integer GEMM takes qint8")
        scales, zero_points = _weight_quantization(weight)
        codes = weight.int_repr()
        centred = codes.to(torch.int64) - zero_points.view(-1, *([1] * (codes.dim() - 1)))
        self.spec = spec
        self.engine = torch.backends.quantized.engine
        self.original = type(conv).__name__
        self.register_buffer("weight", codes.clone())
        self.register_buffer("weight_scale", scales)
        self.register_buffer("weight_zero_point", zero_points)
        self.register_buffer("weight_sum", centred.flatten(1).sum(1).to(torch.int32))
        bias = conv.bias()
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("scale", torch.tensor(float(conv.scale), dtype=torch.float64))
        self.register_buffer("zero_point", torch.tensor(int(conv.zero_point), dtype=torch.int64))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return integer_conv(
            input,
            self.weight,
            self.weight_scale,
            self.weight_zero_point,
            self.weight_sum,
            self.bias,
            self.scale,
            self.zero_point,
            self.spec,
        )

    def extra_repr(self) -> str:
        return f"{self.original}: {self.spec.describe()}, requant {self.spec.recipe!r}"


# -- the arithmetic (eager, traced into the graph with the spec fixed) ----------------------------


def int8_codes(input: torch.Tensor) -> torch.Tensor:
    """A quantised tensor's integer codes as int8: ``quint8`` codes minus 128, ``qint8`` as is."""
    codes = input.int_repr()
    if codes.dtype == torch.uint8:
        return (codes.to(torch.int16) - 128).to(torch.int8)
    if codes.dtype != torch.int8:
        raise TypeError(f"an integer conv takes quint8 or qint8 inputs, got {input.dtype}")
    return codes


def int8_zero_point(input: torch.Tensor) -> int:
    """The input's zero point moved as :func:`int8_codes` moves its codes."""
    return input.q_zero_point() - (128 if input.dtype == torch.quint8 else 0)


def integer_im2col(
    padded: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """Patches of an already padded ``(N, C, *spatial)`` integer tensor: ``(N, C*prod(kernel),
    *out)``, rows ordered (channel, kernel offsets) as a conv weight flattens.

    One strided view (no arithmetic, so any dtype) copied once; ``F.unfold`` takes
    floating-point tensors only.  The copy is forced: where the kernel's offsets overlap the
    output's (a ``k x 1`` kernel over a width-1 output...), ``reshape`` alone can return a view
    with overlapping rows, which ``torch._int_mm`` then misreads.
    """
    padded = padded.contiguous()
    n, c, *spatial = padded.shape
    out = [
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(spatial, kernel_size, stride, dilation, strict=True)
    ]
    strides = padded.stride()
    view = padded.as_strided(
        (n, c, *kernel_size, *out),
        (
            strides[0],
            strides[1],
            *(st * d for st, d in zip(strides[2:], dilation, strict=True)),
            *(st * s for st, s in zip(strides[2:], stride, strict=True)),
        ),
    )
    return view.contiguous().view(n, -1, *out)


def int8_gemm(weight: torch.Tensor, cols: torch.Tensor, groups: int) -> torch.Tensor:
    """``weight @ cols`` per group, int8 x int8 accumulated exactly in int32.

    ``weight`` is ``(C_out, K)`` int8, ``cols`` ``(N, groups*K, L)`` int8; returns
    ``(N, C_out, L)`` int32.  ``torch._int_mm`` (int32 accumulation) on a CPU, and on CUDA where
    its shape rules hold; elsewhere a float64 matmul, exact because every partial sum is an
    integer below 2^31 < 2^53 (module docstring).
    """
    n, rows, length = cols.shape
    per_group = rows // groups
    out_per_group = weight.shape[0] // groups
    outputs = []
    for g in range(groups):
        w = weight[g * out_per_group : (g + 1) * out_per_group]
        # (K, N*L): every image's columns side by side, one GEMM per group.
        b = cols[:, g * per_group : (g + 1) * per_group].transpose(0, 1).reshape(per_group, -1)
        # _int_mm reads its operands by their row stride; a view whose rows overlap (the
        # stride below the width) gives garbage, so such an operand is copied first.
        b = b if b.stride(0) >= b.shape[1] else b.contiguous()
        if _int_mm_applies(w, b):
            acc = torch._int_mm(w, b)
        else:
            acc = (w.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)
        outputs.append(acc.reshape(out_per_group, n, length).transpose(0, 1))
    return outputs[0] if groups == 1 else torch.cat(outputs, 1)


def _int_mm_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device.type == "cpu":
        return True
    # CUDA's int8 GEMM needs m > 16 and k, n multiples of 8.
    m, k = a.shape
    return a.device.type == "cuda" and m > 16 and k % 8 == 0 and b.shape[1] % 8 == 0


def to_quantized(
    values: torch.Tensor,
    like: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    relu: bool,
) -> torch.Tensor:
    """Requantised ``values`` (already rounded, zero point added) clamped to the codes of
    ``like``'s dtype (``quint8``: 0..255), from the zero point up with a fused ReLU, as a
    quantised tensor of the output's ``scale`` and ``zero_point``, channels innermost."""
    dtype = torch.uint8 if like.dtype == torch.quint8 else torch.int8
    info = torch.iinfo(dtype)
    low = max(info.min, int(zero_point)) if relu else info.min
    codes = values.clamp(low, info.max).to(dtype)
    # Channels innermost, as every engine's conv returns it: quantised ops downstream (mean,
    # add) take other kernels, which round differently, on other layouts.
    codes = codes.movedim(1, -1).contiguous().movedim(-1, 1)
    return torch._make_per_tensor_quantized_tensor(codes, float(scale), int(zero_point))


def integer_accumulator(
    codes: torch.Tensor,
    zero: int,
    weight: torch.Tensor,
    weight_zero_point: torch.Tensor,
    weight_sum: torch.Tensor,
    spec: IntegerConvSpec,
) -> tuple[torch.Tensor, torch.Size]:
    """Steps 2-5: the exact int32 accumulator ``sum_k (x - zx) * (w - zw)``, ``(N, C_out, L)``,
    from int8 ``codes`` whose zero point is ``zero``, and the output's spatial shape."""
    padded = F.pad(codes, spec.pad, value=zero)  # the zero point's code is a real 0
    cols = integer_im2col(padded, spec.kernel_size, spec.stride, spec.dilation)
    spatial = cols.shape[2:]
    cols = cols.flatten(2)
    acc = int8_gemm(weight.flatten(1), cols, spec.groups)
    acc = acc - zero * weight_sum.unsqueeze(-1)
    if spec.weight_zero_points:
        # sum_k x' * zw: each output channel's zero point times its group's column sums.
        column_sums = cols.to(torch.int32).unflatten(1, (spec.groups, -1)).sum(2)
        column_sums = column_sums.repeat_interleave(spec.out_channels // spec.groups, 1)
        acc = acc - weight_zero_point.to(torch.int32).unsqueeze(-1) * column_sums
    return acc, spatial


def integer_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    weight_sum: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    spec: IntegerConvSpec,
) -> torch.Tensor:
    """A quantised conv as an integer GEMM (the module docstring's steps 1-6)."""
    acc, spatial = integer_accumulator(
        int8_codes(input), int8_zero_point(input), weight, weight_zero_point, weight_sum, spec
    )
    if spec.recipe == INT32_BIAS:
        # qnnpack's float32 arithmetic: the bias quantised as torch.quantize_per_channel does
        # (times the float32 reciprocal of sx*sw, rounded), the multiplier (sx*sw) * (1/sy)
        acc_scale = weight_scale.float() * input.q_scale()
        if bias is not None:
            bias_codes = torch.round(bias * (1.0 / acc_scale)).to(torch.int32)
            acc = acc + bias_codes.unsqueeze(-1)
        multiplier = acc_scale * (1.0 / scale).to(torch.float32)
        real = acc.to(torch.float32) * multiplier.unsqueeze(-1)
        values = torch.round(real) + zero_point.to(torch.float32)
    elif spec.recipe == FLOAT_ZERO_POINT:
        # oneDNN's order, float32 throughout: ((acc * sx) * sw[c] + b) * (1/sy) + zy, rounded
        # once.  PyTorch hands oneDNN 1/sx, which is inverted back: sx round-trips through
        # float32 reciprocals.  Found by matching the engine on near-tie values (docs/integer.md).
        input_scale = 1.0 / torch.full((), 1.0 / input.q_scale(), dtype=torch.float32)
        real = acc.to(torch.float32) * input_scale * weight_scale.float().unsqueeze(-1)
        if bias is not None:
            real = real + bias.unsqueeze(-1)
        inverse = (1.0 / scale).to(torch.float32)  # 1/sy in float64, then held as float32
        values = torch.round(real * inverse + zero_point.to(torch.float32))
    else:
        # float32 * float32: the scale rounded to float32 first, as fbgemm holds it
        acc_scale = weight_scale.float() * input.q_scale()
        real = acc.to(torch.float32)
        if bias is not None:
            real = real + (bias / acc_scale).unsqueeze(-1)
        real = real * (acc_scale / scale.to(torch.float32)).unsqueeze(-1)
        values = torch.round(real) + zero_point.to(torch.float32)
    return to_quantized(values.unflatten(-1, spatial), input, scale, zero_point, spec.relu)


_LEAVES = ("int8_codes", "int8_zero_point", "integer_im2col", "int8_gemm", "to_quantized")
for _name in _LEAVES:
    torch.fx.wrap(_name)


def integer_leaves() -> dict[str, object]:
    """The functions an integer conv's nodes call as single graph nodes, by name."""
    return {name: globals()[name] for name in _LEAVES}


try:
    from torch.fx.graph import _register_custom_builtin

    for _name in _LEAVES:
        _register_custom_builtin(_name, f"from {__name__} import {_name}", globals()[_name])
except ImportError:  # private API; without it the code still runs, under a longer name
    pass


# -- the pass over one graph ------------------------------------------------------------------------


_INPUTS = (
    "input",
    "weight",
    "weight_scale",
    "weight_zero_point",
    "weight_sum",
    "bias",
    "scale",
    "zero_point",
)


def _template(spec: IntegerConvSpec) -> fx.Graph:
    if spec.bias:

        def conv(
            input, weight, weight_scale, weight_zero_point, weight_sum, bias, scale, zero_point
        ):
            return integer_conv(
                input, weight, weight_scale, weight_zero_point, weight_sum, bias, scale,
                zero_point, spec,
            )  # fmt: skip

    else:

        def conv(input, weight, weight_scale, weight_zero_point, weight_sum, scale, zero_point):
            return integer_conv(
                input, weight, weight_scale, weight_zero_point, weight_sum, None, scale,
                zero_point, spec,
            )  # fmt: skip

    return fx.symbolic_trace(conv).graph


def lower_quantized_convs(
    gm: fx.GraphModule,
    root: nn.Module,
    *,
    name_prefix: str = "",
    kinds: frozenset[str] | None = None,
) -> tuple[list[LoweredConv], list[SkippedConv]]:
    """Replace every quantised conv module ``gm``'s graph calls by its integer GEMM, in place.

    ``root`` is the module tree the graph's targets name (``gm`` itself, or the model copy the
    lowered graph is rebuilt around): each lowered conv's module there is swapped for an
    :class:`UnpackedQuantizedConv` holding its unpacked weights.  Returns the record's entries.
    """
    graph = gm.graph
    lowered: list[LoweredConv] = []
    skipped: list[SkippedConv] = []
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        try:
            module = root.get_submodule(str(node.target))
        except AttributeError:
            continue  # a module the pass put in the graph itself (the Linear form's GEMMs)
        kind = quantized_conv_kind(module)
        if kind is None:
            continue
        name = f"{name_prefix}.{node.target}" if name_prefix else str(node.target)
        reason = _why_not(module, kind, kinds)
        if reason:
            skipped.append(SkippedConv(name, node.name, kind, reason))
            continue
        spec = IntegerConvSpec.from_module(module, requant_recipe(conv=module))
        try:
            spec.check_accumulator(name)
        except ValueError as err:
            skipped.append(SkippedConv(name, node.name, kind, f"not lowered: {err}"))
            continue
        holder = UnpackedQuantizedConv(module, spec, name)
        _swap(root, str(node.target), holder)
        if root is not gm:
            _swap(gm, str(node.target), holder)
        lowered.append(_emit(graph, node, name, type(module).__name__, spec))
    graph.lint()
    gm.recompile()
    return lowered, skipped


def untraced_quantized_convs(model: nn.Module) -> list[SkippedConv]:
    """The quantised convs of a model that could not be traced (the fallback path): left
    alone, each with why, as their integer form replaces a graph node."""
    return [
        SkippedConv(
            name,
            "",
            quantized_conv_kind(module) or "conv2d",
            "not lowered: a quantised conv becomes an integer GEMM in a traced graph only, and "
            "torch.fx could not trace this model (the record's trace_error says why)",
        )
        for name, module in model.named_modules()
        if name and is_quantized_conv(module)
    ]


def _why_not(module: nn.Module, kind: str, kinds: frozenset[str] | None) -> str | None:
    import torch.ao.nn.intrinsic.quantized as nniq

    if kinds is not None and kind not in kinds:
        return f"not lowered: {kind} (kinds= leaves it out)"
    if kind.startswith("conv_transpose"):
        return (
            f"not lowered: a quantised {type(module).__name__} (the integer GEMM form covers "
            "Conv1d/2d/3d and ConvReLU1d/2d/3d; a transposed one would need an integer col2im)"
        )
    if isinstance(module, nniq.ConvAdd2d | nniq.ConvAddReLU2d):
        return f"not lowered: {type(module).__name__} adds a second quantised input"
    if module.padding_mode != "zeros":
        return (
            f"not lowered: padding_mode={module.padding_mode!r} (the integer form pads with the "
            "input's zero point, which is 'zeros')"
        )
    return None


def _swap(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = module


def _emit(
    graph: fx.Graph, node: fx.Node, name: str, target: str, spec: IntegerConvSpec
) -> LoweredConv:
    base = name.replace(".", "_")
    strategy = "integer"
    spec_dict = spec.to_dict()
    env: dict[fx.Node, fx.Node] = {}
    new_nodes: list[fx.Node] = []
    template = _template(spec)
    output: fx.Node | None = None
    with graph.inserting_before(node):
        for role in _INPUTS[1:]:
            if role == "bias" and not spec.bias:
                continue
            attr = graph.create_node("get_attr", f"{node.target}.{role}", name=f"{base}_{role}")
            stamp(
                attr,
                node,
                Provenance(name, node.name, target, strategy, role, spec_dict, kind=spec.kind),
            )
            env[role] = attr
            new_nodes.append(attr)
        env["input"] = node.args[0]
        for t in template.nodes:
            if t.op == "placeholder":
                env[t] = env[str(t.target)]
                continue
            if t.op == "output":
                output = env[t.args[0]]
                continue
            copy = graph.node_copy(t, lambda n: env[n])
            copy.meta.pop("is_wrapped", None)
            role = _role(t)
            copy._rename(f"{base}_{role}")
            stamp(
                copy,
                node,
                Provenance(name, node.name, target, strategy, role, spec_dict, kind=spec.kind),
            )
            env[t] = copy
            new_nodes.append(copy)
    assert output is not None, "a traced function always ends in an output node"
    for attr in [n for n in new_nodes if n.op == "get_attr" and not n.users]:
        graph.erase_node(attr)  # weight_zero_point, where every one is 0
        new_nodes.remove(attr)
    prov = output.meta["lowerconv"]
    output.meta["lowerconv"] = Provenance(**{**prov.__dict__, "is_output": True})
    input_name = node.args[0].name
    node.replace_all_uses_with(output)
    graph.erase_node(node)
    gemm = "torch._int_mm" if spec.groups == 1 else f"torch._int_mm per group ({spec.groups})"
    return LoweredConv(
        name=name,
        node=node.name,
        target=target,
        spec=spec.conv_spec(),
        strategy=strategy,
        input_node=input_name,
        output_node=output.name,
        nodes=[n.name for n in new_nodes],
        kind=spec.kind,
        note=(
            f"integer GEMM: {spec.describe()}; int8 im2col padded with the input's zero point, "
            f"{gemm} accumulating in int32, requantised ({spec.recipe}, "
            f"{torch.backends.quantized.engine} engine)"
        ),
    )


def _role(node: fx.Node) -> str:
    """``int8_gemm_1`` -> ``int8_gemm``; getattr/getitem nodes by what they read."""
    if node.op == "call_function" and node.target is operator.getitem:
        return "getitem"
    head, _, tail = node.name.rpartition("_")
    return head if tail.isdigit() and head else node.name
