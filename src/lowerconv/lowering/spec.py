"""Pure tensor arithmetic of a convolution of any kind: no torch.fx in here.

A :class:`ConvSpec` is everything the lowering needs to know about one convolution (1-, 2- or
3-D, plain or transposed), normalised from the many spellings PyTorch accepts (``int`` or tuple
sizes, ``padding='same'``, padding modes).  The functions below compute what the emitted graph
needs: output sizes, the explicit ``F.pad`` amounts, the GEMM shape and the im2col buffer's
size.  They are tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch

__all__ = [
    "CONV_ARGS",
    "CONV_TRANSPOSE_ARGS",
    "KINDS",
    "PADDING_MODES",
    "ConvSpec",
    "conv_output_size",
    "kind_of",
    "ntuple",
    "padding_text",
    "pair",
    "transposed_output_size",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# Every convolution kind the pass lowers, by the name of its functional form.
KINDS = (
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)


# The positional parameters of F.conv1d/2d/3d and of F.conv_transpose1d/2d/3d, in order.
CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
CONV_TRANSPOSE_ARGS = (
    "input",
    "weight",
    "bias",
    "stride",
    "padding",
    "output_padding",
    "groups",
    "dilation",
)


def kind_of(ndim: int, transposed: bool) -> str:
    """``(2, False) -> "conv2d"``, ``(3, True) -> "conv_transpose3d"``."""
    return f"conv{'_transpose' if transposed else ''}{ndim}d"


def ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``3 -> (3,) * n``; a sequence of ``n`` (or one) ints as a tuple; else a ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, torch.Size | tuple | list) and len(value) in (1, n):
        values = tuple(int(v) for v in value)
        return values * n if len(values) == 1 else values
    raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(1, 2) -> (1, 2)``; anything else is a ``ValueError`` naming ``name``."""
    return ntuple(value, 2, name)  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis.

    ``padding`` is the total padding added to that axis (both sides together), so asymmetric
    ``'same'`` padding is handled by passing ``left + right``.

    >>> conv_output_size(32, kernel=3, stride=1, padding=0, dilation=1)
    30
    >>> conv_output_size(224, kernel=14, stride=14, padding=0, dilation=1)
    16
    """
    return (size + padding - dilation * (kernel - 1) - 1) // stride + 1


def transposed_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, output_padding: int
) -> int:
    """Output length of a transposed convolution along one axis (``padding`` per side).

    >>> transposed_output_size(16, kernel=4, stride=2, padding=1, dilation=1, output_padding=0)
    32
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


@dataclass(frozen=True)
class ConvSpec:
    """One convolution's configuration, with padding resolved to explicit per-side amounts.

    Sizes (``kernel_size``, ``stride``, ``dilation``) have one entry per spatial dimension,
    outermost first (depth, height, width).  ``pad`` has two per dimension in the order
    :func:`torch.nn.functional.pad` takes them, innermost dimension first: ``(left, right, top,
    bottom)`` for 2-D.  ``padding_mode`` is one of :data:`PADDING_MODES`.

    A transposed convolution has ``transposed=True``; its ``pad`` is what PyTorch's ``padding``
    crops from each side of the full output, and ``output_padding`` is added to the high side of
    each dimension.  ``in_channels`` and ``out_channels`` are always the input's and the
    output's channels, whichever way the weight is laid out.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[int, ...]
    padding_mode: str
    groups: int
    bias: bool
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @classmethod
    def from_conv_args(
        cls,
        weight_shape: Sequence[int],
        *,
        bias: bool,
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        transposed: bool = False,
        output_padding: int | Sequence[int] = 0,
    ) -> ConvSpec:
        """Build a spec from the arguments of ``F.conv{1,2,3}d``/``F.conv_transpose{1,2,3}d``
        (or of the matching module); the number of spatial dimensions is the weight's, less two.

        ``padding='same'`` splits the total padding ``dilation * (kernel - 1)`` as PyTorch does:
        ``total // 2`` before and the rest after, so even kernels pad one more at the end.
        """
        ndim = len(weight_shape) - 2
        if ndim not in (1, 2, 3):
            raise ValueError(
                "a convolution's weight is (out_channels, in_channels/groups, *kernel) with 1 to "
                f"3 kernel dimensions (transposed: (in_channels, out_channels/groups, *kernel)); "
                f"got shape {tuple(weight_shape)}"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        first, second, *kernel = (int(s) for s in weight_shape)
        groups = int(groups)
        if transposed:
            in_channels, out_channels = first, second * groups
            if groups < 1 or in_channels % groups:
                raise ValueError(
                    f"groups={groups} must be positive and divide in_channels={in_channels}"
                )
        else:
            in_channels, out_channels = second * groups, first
            if groups < 1 or out_channels % groups:
                raise ValueError(
                    f"groups={groups} must be positive and divide out_channels={out_channels}"
                )
        strides = ntuple(stride, ndim, "stride")
        dilations = ntuple(dilation, ndim, "dilation")
        for name, value in (("stride", strides), ("dilation", dilations), ("kernel", kernel)):
            if min(value) < 1:
                raise ValueError(f"{name} must be positive, got {value} (PyTorch refuses it too)")
        if isinstance(padding, str):
            if transposed:
                raise ValueError(
                    f"a transposed convolution takes int or tuple padding, got {padding!r} "
                    "(PyTorch refuses it too)"
                )
            if padding == "valid":
                pad = (0,) * (2 * ndim)
            elif padding == "same":
                if any(s != 1 for s in strides):
                    raise ValueError(
                        f"padding='same' needs stride 1 (PyTorch refuses it too), got {strides}"
                    )
                pad = ()
                for k, d in zip(kernel, dilations, strict=True):
                    total = d * (k - 1)
                    pad = (total // 2, total - total // 2, *pad)
            else:
                raise ValueError(
                    f"padding must be 'same', 'valid', an int or {ndim} ints, got {padding!r}"
                )
        else:
            pad = ()
            for p in ntuple(padding, ndim, "padding"):
                pad = (p, p, *pad)
        if min(pad) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        extra: tuple[int, ...] = ()
        if transposed:
            if padding_mode != "zeros":
                raise ValueError(
                    f"a transposed convolution pads with zeros only, got padding_mode="
                    f"{padding_mode!r} (PyTorch refuses it too)"
                )
            extra = ntuple(output_padding, ndim, "output_padding")
            for op, s, d in zip(extra, strides, dilations, strict=True):
                if op < 0 or op >= max(s, d):
                    raise ValueError(
                        f"output_padding {extra} must be non-negative and smaller than stride "
                        f"{strides} or dilation {dilations} (PyTorch refuses it too)"
                    )
        elif output_padding not in (0, (), None) and any(ntuple(output_padding, ndim, "op")):
            raise ValueError("output_padding is for transposed convolutions only")
        return cls(
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=tuple(kernel),
            stride=strides,
            dilation=dilations,
            pad=pad,
            padding_mode=padding_mode,
            groups=groups,
            bias=bool(bias),
            transposed=bool(transposed),
            output_padding=extra,
        )

    @classmethod
    def from_module(cls, conv: torch.nn.modules.conv._ConvNd) -> ConvSpec:
        return cls.from_conv_args(
            conv.weight.shape,
            bias=conv.bias is not None,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
            transposed=conv.transposed,
            output_padding=conv.output_padding if conv.transposed else 0,
        )

    # -- derived facts ---------------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 1, 2 or 3."""
        return len(self.kernel_size)

    @property
    def kind(self) -> str:
        """``"conv2d"``, ``"conv_transpose3d"``...: one of :data:`KINDS`."""
        return kind_of(self.ndim, self.transposed)

    @property
    def kernel_numel(self) -> int:
        """Taps of the kernel: ``kh * kw`` in 2-D."""
        n = 1
        for k in self.kernel_size:
            n *= k
        return n

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def patch_size(self) -> int:
        """Rows of one group's im2col matrix: ``in_channels/groups * kh * kw``.

        For a transposed convolution, the rows of one group's column matrix before col2im:
        ``out_channels/groups * kh * kw``."""
        return (self.out_per_group if self.transposed else self.in_per_group) * self.kernel_numel

    @property
    def pad_per_dim(self) -> tuple[tuple[int, int], ...]:
        """``((low, high), ...)`` per spatial dimension, outermost first."""
        pairs = [(self.pad[i], self.pad[i + 1]) for i in range(0, len(self.pad), 2)]
        return tuple(reversed(pairs))

    @property
    def symmetric_padding(self) -> tuple[int, ...] | None:
        """Per-dimension zero padding (``(ph, pw)`` in 2-D) when it is the same on both sides of
        each axis, else None."""
        if self.padding_mode != "zeros":
            return None
        if any(low != high for low, high in self.pad_per_dim):
            return None
        return tuple(low for low, _ in self.pad_per_dim)

    @property
    def needs_explicit_pad(self) -> bool:
        """Whether an ``F.pad`` node must precede the unfold (non-zero modes, asymmetric 'same')."""
        return any(self.pad) and self.symmetric_padding is None

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 convolution with no padding: a matmul over channels (after striding)."""
        return all(k == 1 for k in self.kernel_size) and not any(self.pad)

    @property
    def is_patchify(self) -> bool:
        """Kernel equal to stride, no padding, no dilation: non-overlapping patches (ViT)."""
        return (
            self.kernel_size == self.stride
            and not any(self.pad)
            and all(d == 1 for d in self.dilation)
            and any(k != 1 for k in self.kernel_size)
        )

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def output_size(self, *spatial: int) -> tuple[int, ...]:
        """The output's spatial sizes for an input of spatial sizes ``spatial``."""
        if len(spatial) != self.ndim:
            raise ValueError(f"a {self.kind} takes {self.ndim} spatial sizes, got {spatial}")
        if self.transposed:
            return tuple(
                transposed_output_size(n, k, s, low, d, op)
                for n, k, s, d, (low, _), op in zip(
                    spatial,
                    self.kernel_size,
                    self.stride,
                    self.dilation,
                    self.pad_per_dim,
                    self.output_padding,
                    strict=True,
                )
            )
        return tuple(
            conv_output_size(n, k, s, low + high, d)
            for n, k, s, d, (low, high) in zip(
                spatial, self.kernel_size, self.stride, self.dilation, self.pad_per_dim, strict=True
            )
        )

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """The output's ``(OH, OW)``, for a 2-D convolution."""
        return self.output_size(height, width)  # type: ignore[return-value]

    def gemm_shape(self, batch: int, *spatial: int) -> tuple[int, int, int]:
        """``(M, K, N)`` of the whole product, ``K`` per group.

        A convolution: ``M = out_channels``, ``K = in_channels/groups * kh*kw``, ``N = batch *
        output pixels``.  A transposed one (a GEMM then col2im): ``M = out_channels * kh*kw``,
        ``K = in_channels/groups``, ``N = batch * input pixels``.
        """
        if self.transposed:
            return (
                self.out_channels * self.kernel_numel,
                self.in_per_group,
                batch * _prod(spatial),
            )
        return (self.out_channels, self.patch_size, batch * _prod(self.output_size(*spatial)))

    def flops(self, batch: int, *spatial: int) -> int:
        """Multiply-adds counted as two FLOPs, over all groups."""
        m, k, n = self.gemm_shape(batch, *spatial)
        return 2 * m * k * n

    def im2col_elements(self, batch: int, *spatial: int) -> int:
        """Elements of the full im2col buffer: ``batch * in_channels*kh*kw * OH*OW``; for a
        transposed convolution, its column buffer ``batch * out_channels*kh*kw * H*W``."""
        if self.transposed:
            return batch * self.out_channels * self.kernel_numel * _prod(spatial)
        return batch * self.in_channels * self.kernel_numel * _prod(self.output_size(*spatial))

    def im2col_bytes(self, batch: int, *spatial_and_dtype: int | torch.dtype) -> int:
        """:meth:`im2col_elements` in bytes: ``im2col_bytes(batch, *spatial, dtype)``."""
        *spatial, dtype = spatial_and_dtype
        return self.im2col_elements(batch, *spatial) * _itemsize(dtype)  # type: ignore[arg-type]

    def equivalent_conv(self) -> ConvSpec:
        """A transposed convolution as the plain convolution it equals on an input stuffed with
        ``stride - 1`` zeros between values: stride 1, the same dilation, the kernel flipped and
        its channels swapped, and ``dilation * (kernel - 1) - padding`` padding each side (plus
        ``output_padding`` at the end).  Padding may be negative: a crop."""
        assert self.transposed
        pad: tuple[int, ...] = ()
        for k, d, (low, _), op in zip(
            self.kernel_size, self.dilation, self.pad_per_dim, self.output_padding, strict=True
        ):
            edge = d * (k - 1) - low
            pad = (edge, edge + op, *pad)
        return replace(
            self,
            stride=(1,) * self.ndim,
            pad=pad,
            transposed=False,
            output_padding=(),
        )

    def lifted_to_2d(self) -> ConvSpec:
        """A 1-D convolution as the 2-D one it equals on an input of height 1."""
        assert self.ndim == 1
        return replace(
            self,
            kernel_size=(1, *self.kernel_size),
            stride=(1, *self.stride),
            dilation=(1, *self.dilation),
            pad=(*self.pad, 0, 0),
            output_padding=(0, *self.output_padding) if self.transposed else (),
        )

    def describe(self) -> str:
        """A compact one-line description, e.g. ``3x3 s2 d1 p1x2 g4 bias``.

        Sizes read as in ``lowerconv graph``'s table (:func:`padding_text`), with ``HxW``
        shortened to one number when all sides are equal: ``s2``, ``p1``.  A transposed
        convolution ends in ``transposed`` (with ``op1`` for ``output_padding=1``).
        """
        parts = ["x".join(map(str, self.kernel_size))]
        parts += ["s" + _short(self.stride), "d" + _short(self.dilation)]
        if any(self.pad):
            symmetric = all(low == high for low, high in self.pad_per_dim)
            lows = tuple(low for low, _ in self.pad_per_dim)
            p = _short(lows) if symmetric else padding_text(self.pad)
            parts.append(
                "p" + p + ("" if self.padding_mode == "zeros" else f" {self.padding_mode}")
            )
        if self.transposed and any(self.output_padding):
            parts.append("op" + _short(self.output_padding))
        if self.groups > 1:
            parts.append("dw" if self.is_depthwise else f"g{self.groups}")
        if self.bias:
            parts.append("bias")
        if self.transposed:
            parts.append("transposed")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def padding_text(pad: tuple[int, ...]) -> str:
    """Padding in ``F.pad`` order (``(left, right, top, bottom)`` in 2-D) in the one notation the
    reports use: ``0`` for none, ``HxW`` (top x left) when each side equals its opposite, else
    the tuple (``padding='same'`` with an even kernel pads one more on the right and bottom).

    >>> padding_text((2, 2, 1, 1)), padding_text((1, 2, 1, 2)), padding_text((0, 0, 0, 0))
    ('1x2', '(1,2,1,2)', '0')
    >>> padding_text((1, 1, 1, 1, 0, 0))
    '0x1x1'
    """
    if not any(pad):
        return "0"
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]
    if all(low == high for low, high in pairs):
        return "x".join(str(low) for low, _ in reversed(pairs))
    return "(" + ",".join(map(str, pad)) + ")"


def _short(sizes: tuple[int, ...]) -> str:
    return str(sizes[0]) if len(set(sizes)) == 1 else "x".join(map(str, sizes))


def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
