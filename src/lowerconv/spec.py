"""Pure tensor arithmetic of a 2-D convolution: no torch.fx in here.

A :class:`ConvSpec` is everything the lowering needs to know about one convolution, normalised
from the many spellings PyTorch accepts (``int`` or tuple sizes, ``padding='same'``, padding
modes).  The functions below compute what the emitted graph needs: output sizes, the explicit
``F.pad`` amounts, the GEMM shape and the im2col buffer's size.  They are tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "PADDING_MODES",
    "ConvSpec",
    "conv_output_size",
    "padding_text",
    "pair",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(1, 2) -> (1, 2)``; anything else is a ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, torch.Size | tuple | list) and len(value) in (1, 2):
        values = tuple(int(v) for v in value)
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


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


@dataclass(frozen=True)
class ConvSpec:
    """One convolution's configuration, with padding resolved to explicit per-side amounts.

    ``pad`` is ``(left, right, top, bottom)``, the order :func:`torch.nn.functional.pad` takes for
    the last two dimensions.  ``padding_mode`` is one of :data:`PADDING_MODES`.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]
    padding_mode: str
    groups: int
    bias: bool

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
    ) -> ConvSpec:
        """Build a spec from the arguments of ``F.conv2d`` (or of an ``nn.Conv2d``).

        ``padding='same'`` splits the total padding ``dilation * (kernel - 1)`` as PyTorch does:
        ``total // 2`` before and the rest after, so even kernels pad one more on the right and
        bottom.
        """
        if len(weight_shape) != 4:
            raise ValueError(
                f"a 2-D convolution's weight is 4-D (out_channels, in_channels/groups, kh, kw); "
                f"got shape {tuple(weight_shape)}"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        out_channels, in_per_group, kh, kw = (int(s) for s in weight_shape)
        groups = int(groups)
        if groups < 1 or out_channels % groups:
            raise ValueError(
                f"groups={groups} must be positive and divide out_channels={out_channels}"
            )
        stride_hw = pair(stride, "stride")
        dilation_hw = pair(dilation, "dilation")
        for name, value in (("stride", stride_hw), ("dilation", dilation_hw), ("kernel", (kh, kw))):
            if min(value) < 1:
                raise ValueError(f"{name} must be positive, got {value} (PyTorch refuses it too)")
        if isinstance(padding, str):
            if padding == "valid":
                pad = (0, 0, 0, 0)
            elif padding == "same":
                if stride_hw != (1, 1):
                    raise ValueError(
                        f"padding='same' needs stride 1 (PyTorch refuses it too), got {stride_hw}"
                    )
                total_h = dilation_hw[0] * (kh - 1)
                total_w = dilation_hw[1] * (kw - 1)
                pad = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
            else:
                raise ValueError(
                    f"padding must be 'same', 'valid', an int or a pair, got {padding!r}"
                )
        else:
            ph, pw = pair(padding, "padding")
            pad = (pw, pw, ph, ph)
        if min(pad) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        return cls(
            in_channels=in_per_group * groups,
            out_channels=out_channels,
            kernel_size=(kh, kw),
            stride=stride_hw,
            dilation=dilation_hw,
            pad=pad,
            padding_mode=padding_mode,
            groups=groups,
            bias=bool(bias),
        )

    @classmethod
    def from_module(cls, conv: torch.nn.Conv2d) -> ConvSpec:
        return cls.from_conv_args(
            conv.weight.shape,
            bias=conv.bias is not None,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
        )

    # -- derived facts ---------------------------------------------------------------------------

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def patch_size(self) -> int:
        """Rows of one group's im2col matrix: ``in_channels/groups * kh * kw``."""
        return self.in_per_group * self.kernel_size[0] * self.kernel_size[1]

    @property
    def symmetric_padding(self) -> tuple[int, int] | None:
        """``(ph, pw)`` when zero padding is the same on both sides of each axis, else None."""
        left, right, top, bottom = self.pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            return (top, left)
        return None

    @property
    def needs_explicit_pad(self) -> bool:
        """Whether an ``F.pad`` node must precede the unfold (non-zero modes, asymmetric 'same')."""
        return any(self.pad) and self.symmetric_padding is None

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 convolution with no padding: a matmul over channels (after striding)."""
        return self.kernel_size == (1, 1) and not any(self.pad)

    @property
    def is_patchify(self) -> bool:
        """Kernel equal to stride, no padding, no dilation: non-overlapping patches (ViT)."""
        return (
            self.kernel_size == self.stride
            and not any(self.pad)
            and self.dilation == (1, 1)
            and self.kernel_size != (1, 1)
        )

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        left, right, top, bottom = self.pad
        return (
            conv_output_size(
                height, self.kernel_size[0], self.stride[0], top + bottom, self.dilation[0]
            ),
            conv_output_size(
                width, self.kernel_size[1], self.stride[1], left + right, self.dilation[1]
            ),
        )

    def gemm_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int]:
        """``(M, K, N)`` of the whole product: ``M = out_channels``, ``K = patch_size * groups``
        summed over groups, ``N = batch * OH * OW``."""
        oh, ow = self.output_hw(height, width)
        return (self.out_channels, self.patch_size, batch * oh * ow)

    def flops(self, batch: int, height: int, width: int) -> int:
        """Multiply-adds counted as two FLOPs, over all groups."""
        oh, ow = self.output_hw(height, width)
        return 2 * batch * oh * ow * self.out_channels * self.patch_size

    def im2col_elements(self, batch: int, height: int, width: int) -> int:
        """Elements of the full im2col buffer: ``batch * in_channels*kh*kw * OH*OW``."""
        oh, ow = self.output_hw(height, width)
        return batch * self.in_channels * self.kernel_size[0] * self.kernel_size[1] * oh * ow

    def im2col_bytes(self, batch: int, height: int, width: int, dtype: torch.dtype) -> int:
        return self.im2col_elements(batch, height, width) * _itemsize(dtype)

    def describe(self) -> str:
        """A compact one-line description, e.g. ``3x3 s2 d1 p1x2 g4 bias``.

        Sizes read as in ``lowerconv graph``'s table (:func:`padding_text`), with ``HxW``
        shortened to one number when both sides are equal: ``s2``, ``p1``.
        """
        kh, kw = self.kernel_size
        parts = [f"{kh}x{kw}", "s" + _short(self.stride), "d" + _short(self.dilation)]
        if any(self.pad):
            left, right, top, bottom = self.pad
            p = _short((top, left)) if (left, top) == (right, bottom) else padding_text(self.pad)
            parts.append(
                "p" + p + ("" if self.padding_mode == "zeros" else f" {self.padding_mode}")
            )
        if self.groups > 1:
            parts.append("dw" if self.is_depthwise else f"g{self.groups}")
        if self.bias:
            parts.append("bias")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def padding_text(pad: tuple[int, int, int, int]) -> str:
    """Padding ``(left, right, top, bottom)`` in the one notation the reports use: ``0`` for none,
    ``HxW`` (top x left) when each side equals its opposite, else ``(left,right,top,bottom)``
    (``padding='same'`` with an even kernel pads one more on the right and bottom).

    >>> padding_text((2, 2, 1, 1)), padding_text((1, 2, 1, 2)), padding_text((0, 0, 0, 0))
    ('1x2', '(1,2,1,2)', '0')
    """
    left, right, top, bottom = pad
    if not any(pad):
        return "0"
    if (left, top) == (right, bottom):
        return f"{top}x{left}"
    return "(" + ",".join(map(str, pad)) + ")"


def _short(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
