"""Every convolution kind (1-D, 2-D, 3-D, and their transposes), lowered, against PyTorch's own.

The reference is always PyTorch: ``F.conv1d``/``conv2d``/``conv3d`` (after ``F.pad`` for the
non-zero padding modes), ``F.conv_transpose1d``/``2d``/``3d``, and the original modules, in
float64, for outputs and for the gradients of the input, the weight and the bias.  Every check
also runs under a ``TorchDispatchMode`` that sees each ATen op, forward and backward: a lowered
convolution must not reach any convolution op.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
import lowerconv.lowering.functional
from lowerconv import STRATEGY_NAMES, LoweringError, lowering_record

RTOL, ATOL = 1e-9, 1e-10
STRATEGIES = list(STRATEGY_NAMES)
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# -- the kinds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    ndim: int
    transposed: bool
    module: type[_ConvNd]

    def reference(self) -> Callable[..., torch.Tensor]:
        return getattr(F, self.name)

    def lowered(self) -> Callable[..., torch.Tensor]:
        return getattr(lowerconv.lowering.functional, self.name)


KIND_TABLE = [
    Kind("conv1d", 1, False, nn.Conv1d),
    Kind("conv2d", 2, False, nn.Conv2d),
    Kind("conv3d", 3, False, nn.Conv3d),
    Kind("conv_transpose1d", 1, True, nn.ConvTranspose1d),
    Kind("conv_transpose2d", 2, True, nn.ConvTranspose2d),
    Kind("conv_transpose3d", 3, True, nn.ConvTranspose3d),
]
KINDS = {k.name: k for k in KIND_TABLE}
CONV_KINDS = [k for k in KIND_TABLE if not k.transposed]
TRANSPOSED_KINDS = [k for k in KIND_TABLE if k.transposed]


def test_kinds_are_every_convolution_kind_in_order():
    assert tuple(KINDS) == lowerconv.KINDS


# -- seeing every ATen op ------------------------------------------------------------------------

# "convolution", "conv1d", "_conv_depthwise2d", "slow_conv_transpose3d", "mkldnn_convolution",
# "convolution_backward"... but not "convert_element_type".
CONV_OP = re.compile(r"conv(?!ert)")


def op_kind(name: str, args: tuple) -> str:
    """The kind of one convolution op call, from its weight (``convolution``'s transposed flag)."""
    if name in ("convolution", "_convolution", "convolution_overrideable") and len(args) > 6:
        weight, transposed = args[1], bool(args[6])
    elif name.startswith("convolution_backward") and len(args) > 7:
        weight, transposed = args[2], bool(args[7])
    else:
        weight, transposed = (args[1] if len(args) > 1 else None), "transpose" in name
    dims = weight.dim() - 2 if isinstance(weight, torch.Tensor) else "?"
    return f"conv{'_transpose' if transposed else ''}{dims}d"


class ConvOpRecorder(TorchDispatchMode):
    """The convolution-family ATen ops dispatched while active, forward and backward, as
    ``(op, kind)`` pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_ops: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if CONV_OP.search(name):
            self.conv_ops.append((str(func), op_kind(name, args)))
        return func(*args, **(kwargs or {}))

    def conv_kinds(self) -> set[str]:
        return {kind for _, kind in self.conv_ops}


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
def test_recorder_sees_pytorch_convolutions_forward_and_backward(kind: Kind):
    """The control for every "no conv op ran" assertion below: PyTorch's own are seen."""
    x = torch.randn(2, 4, *(5,) * kind.ndim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, *(3,) * kind.ndim, dtype=torch.float64, requires_grad=True)
    with ConvOpRecorder() as forward:
        out = kind.reference()(x, w, None, 1, 1, groups=2)
    with ConvOpRecorder() as backward:
        out.sum().backward()
    assert forward.conv_kinds() == {kind.name}
    assert backward.conv_ops and backward.conv_kinds() == {kind.name}


# -- configurations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One convolution call, spelt as a user would pass it (ints, tuples, 'same'/'valid')."""

    in_channels: int
    out_channels: int
    kernel: int | tuple[int, ...]
    spatial: tuple[int, ...]
    batch: int | None = 2
    stride: int | tuple[int, ...] = 1
    padding: str | int | tuple[int, ...] = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    output_padding: int | tuple[int, ...] = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        lead = () if self.batch is None else (self.batch,)
        return (*lead, self.in_channels, *self.spatial)

    def weight_shape(self, kind: Kind) -> tuple[int, ...]:
        kernel = per_dim(self.kernel, kind.ndim)
        if kind.transposed:
            return (self.in_channels, self.out_channels // self.groups, *kernel)
        return (self.out_channels, self.in_channels // self.groups, *kernel)

    def module_kwargs(self, kind: Kind) -> dict:
        kwargs = dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
        )
        if kind.transposed:
            kwargs["output_padding"] = self.output_padding
        else:
            kwargs["padding_mode"] = self.padding_mode
        return kwargs


def per_dim(value, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * ndim


def fit(value, ndim: int):
    """Table values are written for 3-D; a 3-tuple keeps its first ``ndim`` entries."""
    return value[:ndim] if isinstance(value, tuple) and len(value) == 3 else value


def for_kind(case: Config, kind: Kind) -> Config:
    return replace(
        case,
        kernel=fit(case.kernel, kind.ndim),
        spatial=case.spatial[: kind.ndim],
        stride=fit(case.stride, kind.ndim),
        padding=fit(case.padding, kind.ndim),
        dilation=fit(case.dilation, kind.ndim),
        output_padding=fit(case.output_padding, kind.ndim),
    )


def explicit_padding(cfg: Config, ndim: int) -> list[tuple[int, int]]:
    """``(before, after)`` per spatial dim; 'same' splits as PyTorch does, more after."""
    kernel, dilation = per_dim(cfg.kernel, ndim), per_dim(cfg.dilation, ndim)
    if cfg.padding == "valid":
        return [(0, 0)] * ndim
    if cfg.padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in per_dim(cfg.padding, ndim)]


def reference_conv(kind: Kind, cfg: Config, x, w, b) -> torch.Tensor:
    """PyTorch's own convolution for ``cfg``: the ``F`` function, with ``F.pad`` for a non-zero
    padding mode."""
    fn = kind.reference()
    if kind.transposed:
        return fn(x, w, b, cfg.stride, cfg.padding, cfg.output_padding, cfg.groups, cfg.dilation)
    if cfg.padding_mode == "zeros":
        return fn(x, w, b, cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    pads = [amount for pair in reversed(explicit_padding(cfg, kind.ndim)) for amount in pair]
    return fn(F.pad(x, pads, mode=cfg.padding_mode), w, b, cfg.stride, 0, cfg.dilation, cfg.groups)


def lowered_conv(kind: Kind, cfg: Config, x, w, b, strategy: str) -> torch.Tensor:
    fn = kind.lowered()
    if kind.transposed:
        return fn(
            x,
            w,
            b,
            cfg.stride,
            cfg.padding,
            cfg.output_padding,
            cfg.groups,
            cfg.dilation,
            strategy=strategy,
        )
    return fn(
        x,
        w,
        b,
        cfg.stride,
        cfg.padding,
        cfg.dilation,
        cfg.groups,
        padding_mode=cfg.padding_mode,
        strategy=strategy,
    )


def make_tensors(
    kind: Kind, cfg: Config, dtype=torch.float64, seed: int = 0, layout: str = "contiguous"
):
    """Input, weight and bias (or None), requiring grad; the input stored as ``layout``:
    ``contiguous``, ``sliced`` (every other element of the last dim of a larger tensor) or
    ``channels_last`` (channels_last or channels_last_3d, by the input's rank)."""
    torch.manual_seed(seed)
    shape = cfg.input_shape
    if layout == "contiguous":
        x = torch.randn(shape, dtype=dtype)
    elif layout == "sliced":
        x = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]
    elif layout == "channels_last":
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        x = torch.randn(shape, dtype=dtype).to(memory_format=formats[len(shape)])
    else:
        raise AssertionError(f"unknown layout {layout}")
    assert x.shape == shape
    assert x.is_contiguous() == (layout == "contiguous"), layout
    x.requires_grad_()
    w = torch.randn(cfg.weight_shape(kind), dtype=dtype, requires_grad=True)
    b = torch.randn(cfg.out_channels, dtype=dtype, requires_grad=True) if cfg.bias else None
    return x, w, b


def check_functional(
    kind: Kind, cfg: Config, strategies: list[str], seed: int = 0, layout: str = "contiguous"
) -> None:
    """``lowerconv.lowering.functional.<kind>`` equals PyTorch's for each strategy: output,
    gradients of input, weight and bias, and no convolution op forward or backward.  Every strategy
    is checked, and the failures of all are reported together."""
    x, w, b = make_tensors(kind, cfg, seed=seed, layout=layout)
    wrt = [t for t in (x, w, b) if t is not None]
    names = ["input", "weight", "bias"][: len(wrt)]
    want = reference_conv(kind, cfg, x, w, b)
    cotangent = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, wrt, cotangent)
    failures = []
    for strategy in strategies:
        try:
            with ConvOpRecorder() as ops:
                got = lowered_conv(kind, cfg, x, w, b, strategy)
                got_grads = torch.autograd.grad(got, wrt, cotangent, allow_unused=True)
            assert ops.conv_ops == [], f"convolution ops ran: {ops.conv_ops}"
            assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
            assert got.dtype == want.dtype
            torch.testing.assert_close(got.detach(), want.detach(), rtol=RTOL, atol=ATOL)
            for name, got_grad, want_grad in zip(names, got_grads, want_grads, strict=True):
                assert got_grad is not None, f"no gradient reached the {name}"
                torch.testing.assert_close(
                    got_grad,
                    want_grad,
                    rtol=RTOL,
                    atol=ATOL,
                    msg=lambda m, n=name: f"grad {n}: {m}",
                )
        except Exception as err:  # each strategy's failure is reported, not only the first
            failures.append(f"{kind.name} strategy={strategy!r}: {type(err).__name__}: {err}")
    assert not failures, "\n\n".join(failures)


# -- tables --------------------------------------------------------------------------------------

# Written for 3-D (spatial sizes and 3-tuples); 1-D and 2-D keep the leading entries.
CONV_CASES = {
    "plain": Config(3, 4, 3, (7, 6, 5)),
    "stride": Config(3, 4, 3, (8, 7, 7), stride=2),
    "stride_tuple": Config(3, 4, 3, (8, 7, 7), stride=(2, 1, 3)),
    "padding_int": Config(3, 4, 3, (5, 4, 4), padding=2),
    "padding_tuple": Config(3, 4, (3, 5, 2), (5, 6, 4), padding=(0, 2, 1)),
    "same_odd": Config(3, 4, 3, (6, 5, 4), padding="same"),
    "same_even_asymmetric": Config(3, 4, (4, 2, 4), (6, 5, 5), padding="same"),
    "same_even_dilated": Config(3, 4, (2, 4, 3), (8, 7, 6), padding="same", dilation=(3, 1, 2)),
    "valid": Config(3, 4, (3, 2, 2), (6, 5, 4), padding="valid"),
    "dilation": Config(2, 3, 3, (9, 7, 6), dilation=(2, 1, 2)),
    "dilation_strided": Config(2, 3, 3, (9, 8, 7), dilation=2, stride=(2, 3, 1)),
    "reflect": Config(3, 4, 3, (6, 5, 4), padding=(1, 2, 1), padding_mode="reflect"),
    "reflect_same_even": Config(2, 3, 4, (6, 5, 5), padding="same", padding_mode="reflect"),
    "replicate_strided": Config(3, 4, 3, (7, 6, 5), padding=2, stride=2, padding_mode="replicate"),
    "circular": Config(3, 4, 3, (6, 5, 4), padding=(2, 1, 1), padding_mode="circular"),
    "circular_same_dilated": Config(
        2, 3, 3, (7, 6, 5), padding="same", dilation=2, padding_mode="circular"
    ),
    "groups": Config(4, 6, 3, (6, 5, 4), groups=2, padding=1),
    "depthwise": Config(4, 4, 3, (6, 5, 4), groups=4, padding=1),
    "depthwise_multiplier": Config(3, 6, (3, 2, 3), (8, 7, 5), groups=3, stride=2),
    "depthwise_reflect_no_bias": Config(
        3, 3, 3, (5, 5, 4), groups=3, padding=1, padding_mode="reflect", bias=False
    ),
    "no_bias": Config(3, 4, 3, (6, 5, 4), bias=False),
    "pointwise": Config(5, 3, 1, (6, 5, 4)),
    "pointwise_strided": Config(5, 3, 1, (7, 6, 5), stride=2),
    "patchify": Config(3, 6, 2, (8, 6, 4), stride=2),
    "kernel_covers_input": Config(2, 3, (4, 3, 2), (4, 3, 2)),
    "batch_0": Config(3, 4, 3, (5, 5, 4), batch=0, padding=1),
    "unbatched": Config(3, 4, 3, (6, 5, 4), batch=None, padding=1),
    "unbatched_grouped_reflect": Config(
        4, 6, 3, (6, 5, 4), batch=None, groups=2, padding=1, padding_mode="reflect"
    ),
    "unbatched_circular_same": Config(
        3, 3, 2, (5, 4, 4), batch=None, padding="same", padding_mode="circular"
    ),
}

TRANSPOSED_CASES = {
    "plain": Config(3, 4, 3, (5, 4, 3)),
    "stride": Config(3, 4, 3, (4, 3, 3), stride=2),
    "stride_tuple_output_padding": Config(
        3, 4, 3, (4, 3, 3), stride=(2, 1, 3), output_padding=(1, 0, 2)
    ),
    "output_padding_int": Config(3, 2, 3, (4, 3, 3), stride=2, padding=1, output_padding=1),
    "output_padding_from_dilation": Config(
        2, 3, 2, (4, 4, 3), dilation=(3, 2, 2), output_padding=(2, 1, 0)
    ),
    "padding_shrinks": Config(3, 4, 3, (6, 5, 5), padding=2),
    "padding_tuple": Config(3, 4, (3, 5, 2), (5, 4, 4), padding=(0, 2, 1)),
    "dilation": Config(2, 3, 3, (4, 3, 3), dilation=(2, 1, 3)),
    "dilation_strided_padded": Config(2, 3, 3, (4, 3, 3), dilation=2, stride=2, padding=(1, 2, 0)),
    "groups": Config(4, 6, 3, (4, 4, 3), groups=2, stride=2, padding=1),
    "depthwise": Config(4, 4, 3, (4, 4, 3), groups=4, padding=1),
    "depthwise_multiplier": Config(3, 6, (3, 2, 3), (4, 4, 3), groups=3, stride=2),
    "no_bias": Config(3, 4, 3, (4, 4, 3), bias=False, stride=2),
    "pointwise": Config(5, 3, 1, (5, 4, 3)),
    "pointwise_strided": Config(5, 3, 1, (4, 3, 3), stride=2),
    "unpatchify": Config(6, 3, 2, (4, 3, 2), stride=2),
    "kernel_larger_than_input": Config(2, 3, (4, 5, 3), (1, 2, 1)),
    "batch_0": Config(3, 4, 3, (4, 3, 3), batch=0, stride=2),
    "unbatched": Config(3, 4, 3, (4, 3, 3), batch=None, stride=2, padding=1),
    "unbatched_grouped": Config(4, 2, 2, (3, 3, 2), batch=None, groups=2, dilation=2),
}


def kind_cases(kinds: list[Kind], cases: dict[str, Config]):
    return [
        pytest.param(kind, for_kind(cfg, kind), id=f"{kind.name}-{case}")
        for kind in kinds
        for case, cfg in cases.items()
    ]


FUNCTIONAL_CASES = kind_cases(CONV_KINDS, CONV_CASES) + kind_cases(
    TRANSPOSED_KINDS, TRANSPOSED_CASES
)


@pytest.mark.parametrize("kind, cfg", FUNCTIONAL_CASES)
def test_functional_matches_pytorch_with_every_strategy(kind: Kind, cfg: Config):
    check_functional(kind, cfg, STRATEGIES)


LAYOUT_CASES = [
    pytest.param(kind, layout, id=f"{kind.name}-{layout}")
    for kind in KIND_TABLE
    for layout in ("sliced", "channels_last")
    if layout == "sliced" or kind.ndim > 1
]


@pytest.mark.parametrize("kind, layout", LAYOUT_CASES)
def test_functional_accepts_non_contiguous_inputs(kind: Kind, layout: str):
    cases = TRANSPOSED_CASES if kind.transposed else CONV_CASES
    check_functional(kind, for_kind(cases["groups"], kind), STRATEGIES, layout=layout)


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
def test_functional_defaults_match_pytorch_defaults(kind: Kind):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *(6, 5, 4)[: kind.ndim], dtype=torch.float64)
    w = torch.randn(
        *((3, 4) if kind.transposed else (4, 3)), *(3,) * kind.ndim, dtype=torch.float64
    )
    torch.testing.assert_close(kind.lowered()(x, w), kind.reference()(x, w), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
def test_functional_rejects_an_unknown_strategy(kind: Kind):
    x = torch.randn(1, 2, *(5,) * kind.ndim)
    w = torch.randn(2, 2, *(3,) * kind.ndim)
    with pytest.raises(LoweringError, match="unfold"):
        kind.lowered()(x, w, strategy="unfol")


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
def test_functional_workspace_cap_gives_the_same_result(kind: Kind):
    """A cap smaller than the im2col buffer computes in chunks; the result must not change."""
    cfg = for_kind(Config(3, 4, 3, (7, 6, 5), batch=3, padding=1, stride=2), kind)
    x, w, b = make_tensors(kind, cfg)
    want = reference_conv(kind, cfg, x, w, b)
    fn = kind.lowered()
    for strategy in STRATEGIES:
        with ConvOpRecorder() as ops:
            if kind.transposed:
                got = fn(x, w, b, 2, 1, 0, 1, 1, strategy=strategy, max_workspace_bytes=512)
            else:
                got = fn(x, w, b, 2, 1, 1, 1, strategy=strategy, max_workspace_bytes=512)
        assert ops.conv_ops == []
        torch.testing.assert_close(
            got, want, rtol=RTOL, atol=ATOL, msg=lambda m, s=strategy: f"{s}: {m}"
        )


# -- low precision -------------------------------------------------------------------------------

LOW_PRECISION = [torch.float32, torch.float16, torch.bfloat16]
LOW_PRECISION_CASES = {
    **{
        k.name: for_kind(
            Config(8, 8, 3, (9, 8, 5), groups=2, padding=1, stride=2, padding_mode="reflect"), k
        )
        for k in CONV_KINDS
    },
    **{
        k.name: for_kind(
            Config(8, 8, 3, (5, 4, 3), groups=2, padding=1, stride=2, output_padding=1), k
        )
        for k in TRANSPOSED_KINDS
    },
}


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
def test_low_precision_error_is_comparable_to_pytorch(kind: Kind, dtype):
    """In float32/float16/bfloat16, each strategy's error against a float64 reference (same
    rounded inputs) stays within a small multiple of PyTorch's own conv's error, for the output
    and every gradient."""
    cfg = LOW_PRECISION_CASES[kind.name]
    x, w, b = make_tensors(kind, cfg, dtype=dtype)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    reference = reference_conv(kind, cfg, x64, w64, b64)
    cotangent = torch.randn_like(reference).to(dtype)
    ref_grads = torch.autograd.grad(reference, (x64, w64, b64), cotangent.double())
    native = reference_conv(kind, cfg, x, w, b)
    native_grads = torch.autograd.grad(native, (x, w, b), cotangent)
    eps = torch.finfo(dtype).eps
    failures = []
    for strategy in STRATEGIES:
        with ConvOpRecorder() as ops:
            lowered = lowered_conv(kind, cfg, x, w, b, strategy)
            lowered_grads = torch.autograd.grad(lowered, (x, w, b), cotangent)
        assert ops.conv_ops == [], f"{strategy}: convolution ops ran: {ops.conv_ops}"
        assert lowered.shape == reference.shape, strategy
        pairs = [("output", lowered, native, reference)] + [
            (f"grad {n}", g, nat, ref)
            for n, g, nat, ref in zip(
                ("input", "weight", "bias"), lowered_grads, native_grads, ref_grads, strict=True
            )
        ]
        for what, got, nat, ref in pairs:
            assert got.dtype == dtype, f"{strategy} {what}: {got.dtype}"
            got_error = (got.double() - ref).abs().max().item()
            native_error = (nat.double() - ref).abs().max().item()
            scale = ref.abs().max().item()
            # Sums in a different order round differently: allow a few times PyTorch's own
            # error, and a couple of ulps of the largest value.
            bound = 4 * native_error + 2 * eps * scale
            if not got_error <= bound:
                failures.append(
                    f"{kind.name}/{strategy}/{dtype} {what}: lowered max error {got_error:.3g} "
                    f"vs PyTorch's {native_error:.3g} (scale {scale:.3g}, bound {bound:.3g})"
                )
    assert not failures, "\n".join(failures)


# -- the whole configuration space ---------------------------------------------------------------


@st.composite
def sizes(draw, ndim: int, low: int, high: int):
    """``(as passed, per dim)``: an int, or a tuple of ``ndim`` ints."""
    values = tuple(draw(st.integers(low, high)) for _ in range(ndim))
    if draw(st.booleans()):
        return values, values
    return values[0], (values[0],) * ndim


@st.composite
def kind_configs(draw, kind: Kind) -> Config:
    """Every configuration PyTorch accepts for ``kind``, small: groups (depthwise, multiplier),
    int and tuple sizes, 'same'/'valid'/explicit padding and all padding modes, or
    output_padding below max(stride, dilation); bias or not; batch 0-2 or unbatched."""
    nd = kind.ndim
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 2 if nd == 3 else 3))
    out_channels = groups * draw(st.integers(1, 3))
    kernel, k = draw(sizes(nd, 1, 3 if nd == 3 else 4))
    dilation, d = draw(sizes(nd, 1, 3))
    extra = 2 if nd == 3 else 4
    common = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        kernel=kernel,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        batch=draw(st.sampled_from([None, 0, 1, 2])),
    )
    if kind.transposed:
        stride, s = draw(sizes(nd, 1, 3))
        padding, p = draw(sizes(nd, 0, 2))
        op = tuple(draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(nd))
        output_padding = op if len(set(op)) > 1 or draw(st.booleans()) else op[0]
        spatial = []
        for i in range(nd):
            size = draw(st.integers(1, 1 + extra))
            # Grow the input until the output has at least one element along this axis.
            while (size - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 < 1:
                size += 1
            spatial.append(size)
        return Config(
            **common,
            spatial=tuple(spatial),
            stride=stride,
            padding=padding,
            output_padding=output_padding,
        )
    mode = draw(st.sampled_from(PADDING_MODES))
    if draw(st.booleans()):
        stride, s = 1, (1,) * nd  # 'same' needs stride 1
        padding = draw(st.sampled_from(["same", "valid", 0, 1, 2, "tuple"]))
    else:
        stride, s = draw(sizes(nd, 1, 3))
        padding = draw(st.sampled_from(["valid", 0, 1, 2, "tuple"]))
    if padding == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    cfg = Config(**common, spatial=(), stride=stride, padding=padding, padding_mode=mode)
    spatial = []
    for i, (before, after) in enumerate(explicit_padding(cfg, nd)):
        size = max(1, d[i] * (k[i] - 1) + 1 - before - after) + draw(st.integers(0, extra))
        if mode == "reflect":
            size = max(size, before + 1, after + 1)
        elif mode == "circular":
            size = max(size, before, after)
        spatial.append(size)
    return replace(cfg, spatial=tuple(spatial))


PROPERTY_EXAMPLES = max(settings.default.max_examples // 2, 10)


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
@settings(max_examples=PROPERTY_EXAMPLES)
@given(data=st.data())
def test_functional_sweep(kind: Kind, data):
    cfg = data.draw(kind_configs(kind), label="config")
    strategy = data.draw(st.sampled_from(STRATEGIES), label="strategy")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    check_functional(kind, cfg, [strategy], seed)


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
@settings(max_examples=max(PROPERTY_EXAMPLES // 3, 5))
@given(data=st.data())
def test_module_sweep(kind: Kind, data):
    """``lower()`` of one ``nn.Conv*`` module over the configuration space."""
    cfg = data.draw(kind_configs(kind), label="config")
    strategy = data.draw(st.sampled_from(STRATEGIES), label="strategy")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = nn.Sequential(kind.module(**cfg.module_kwargs(kind))).double()
    lowered = lowerconv.lower(model, strategy=strategy)
    assert_same_function(lowered, model, make_input(cfg.input_shape))
    assert_conv_free(lowered)
    assert [c.kind for c in lowering_record(lowered).lowered] == [kind.name]


# -- models --------------------------------------------------------------------------------------


def make_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, requires_grad=True)


def run_with_grads(model: nn.Module, inputs, cotangent=None):
    """Output, cotangent, gradients wrt every input and named parameter, and the conv ops seen."""
    params = list(model.named_parameters())
    names = [f"input{i}" for i in range(len(inputs))] + [name for name, _ in params]
    wrt = [*inputs, *(p for _, p in params)]
    with ConvOpRecorder() as ops:
        out = model(*inputs)
        if cotangent is None:
            cotangent = torch.randn_like(out)
        grads = torch.autograd.grad(out, wrt, cotangent, allow_unused=True)
    return out.detach(), cotangent, dict(zip(names, grads, strict=True)), ops


def assert_same_function(lowered: nn.Module, model: nn.Module, *inputs, conv_free=True):
    """Same output and gradients (inputs and parameters, by name) as ``model``; and, when
    ``conv_free``, no convolution op forward or backward."""
    want, cotangent, want_grads, model_ops = run_with_grads(model, inputs)
    got, _, got_grads, ops = run_with_grads(lowered, inputs, cotangent)
    if conv_free:
        assert ops.conv_ops == [], f"convolution ops ran in the lowered model: {ops.conv_ops}"
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    assert list(got_grads) == list(want_grads)
    for name, want_grad in want_grads.items():
        got_grad = got_grads[name]
        if want_grad is None:
            assert got_grad is None, f"{name} has a gradient only in the lowered model"
            continue
        assert got_grad is not None, f"no gradient reached {name} in the lowered model"
        torch.testing.assert_close(
            got_grad, want_grad, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"grad {n}: {m}"
        )
    return model_ops, ops


def assert_conv_free(module: nn.Module) -> None:
    left = [
        f"{n} ({type(m).__name__})" for n, m in module.named_modules() if isinstance(m, _ConvNd)
    ]
    assert not left, f"convolution modules left in the lowered model: {left}"


class WeightStandardizedConv1d(nn.Conv1d):
    """A Conv1d subclass with its own forward: the kernel is normalised on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2), keepdim=True)) / (w.std(dim=(1, 2), keepdim=True) + 1e-5)
        return F.conv1d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PlainConvTranspose3d(nn.ConvTranspose3d):
    """A subclass that only renames: ``ConvTranspose3d.forward`` runs."""


class GainConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d subclass scaling its kernel by a learnt gain in forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            x,
            self.weight * self.gain,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class FunctionalConvTranspose2d(nn.Module):
    """``F.conv_transpose2d`` called in forward with a weight parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3) / 6)
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1, output_padding=1)
        return torch.tanh(y)


class FunctionalConv1d3d(nn.Module):
    """``F.conv1d`` and ``F.conv3d`` calls with parameters, keyword arguments included."""

    def __init__(self) -> None:
        super().__init__()
        self.k1 = nn.Parameter(torch.randn(4, 3, 3) / 4)
        self.k3 = nn.Parameter(torch.randn(2, 1, 2, 3, 3) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, L) with L = 4 * m
        y = torch.relu(F.conv1d(x, self.k1, padding="same"))  # (N, 4, L)
        y = y.unflatten(-1, (4, -1)).unsqueeze(1)  # (N, 1, 4, 4, m)
        return F.conv3d(y, self.k3, stride=(1, 2, 1), padding=(0, 1, 1), dilation=(2, 1, 1))


class UpsampleToSize(nn.Module):
    """``ConvTranspose2d`` called with ``output_size=`` taken from another tensor's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=skip.shape) + skip


class UpsampleToFixedSize(nn.Module):
    """``ConvTranspose1d`` called with a constant ``output_size=``."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(4, 3, 3, stride=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=[17])


class MixedKinds(nn.Module):
    """One module of every kind, each feeding the next."""

    def __init__(self) -> None:
        super().__init__()
        self.c1d = nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect")
        self.c2d = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.up2d = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.c3d = nn.Conv3d(1, 2, 3, padding=1, padding_mode="replicate")
        self.up3d = nn.ConvTranspose3d(2, 1, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.up1d = nn.ConvTranspose1d(1, 2, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, L) with L = 4 * m
        y = torch.relu(self.c1d(x))
        y = torch.tanh(self.c2d(y.unflatten(-1, (4, -1))))
        y = self.up2d(y)  # (N, 2, 8, 2m)
        z = self.up3d(torch.relu(self.c3d(y.unsqueeze(1))))  # (N, 1, 2, 8, 2m)
        return self.up1d(z.flatten(2))


MIXED_ORDER = [
    ("c1d", "conv1d"),
    ("c2d", "conv2d"),
    ("up2d", "conv_transpose2d"),
    ("c3d", "conv3d"),
    ("up3d", "conv_transpose3d"),
    ("up1d", "conv_transpose1d"),
]


@dataclass(frozen=True)
class ModelCase:
    id: str
    make: Callable[[], nn.Module]
    inputs: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...]  # of the lowered convs, in graph order
    static_weight: bool = True  # each conv's weight is a parameter: the record holds its spec


MODEL_CASES = [
    ModelCase(
        "conv1d",
        lambda: nn.Sequential(
            nn.Conv1d(3, 4, 3, padding=2, dilation=2, padding_mode="reflect"),
            nn.ReLU(),
            nn.Conv1d(4, 4, 1, groups=2),
        ),
        ((2, 3, 9),),
        ("conv1d", "conv1d"),
    ),
    ModelCase("conv1d_root", lambda: nn.Conv1d(3, 4, 4, padding="same"), ((2, 3, 7),), ("conv1d",)),
    ModelCase(
        "conv3d",
        lambda: nn.Sequential(
            nn.Conv3d(2, 4, (3, 2, 3), stride=(2, 1, 1), padding=(1, 0, 1), groups=2),
            nn.Tanh(),
            nn.Conv3d(4, 4, 2, padding="same", padding_mode="circular", groups=4),
        ),
        ((2, 2, 5, 4, 6),),
        ("conv3d", "conv3d"),
    ),
    ModelCase(
        "conv_transpose1d",
        lambda: nn.Sequential(nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1)),
        ((2, 4, 7),),
        ("conv_transpose1d",),
    ),
    ModelCase(
        "conv_transpose2d",
        lambda: nn.Sequential(
            nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), groups=2),
            nn.ReLU(),
            nn.ConvTranspose2d(6, 6, 3, dilation=(1, 2), groups=6, bias=False),
        ),
        ((2, 4, 5, 4),),
        ("conv_transpose2d", "conv_transpose2d"),
    ),
    ModelCase(
        "conv_transpose2d_root",
        lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
        ((2, 3, 4, 5),),
        ("conv_transpose2d",),
    ),
    ModelCase(
        "conv_transpose3d",
        lambda: nn.Sequential(nn.ConvTranspose3d(2, 3, 2, stride=2, bias=False)),
        ((2, 2, 3, 2, 4),),
        ("conv_transpose3d",),
    ),
    ModelCase(
        "subclass_conv1d_own_forward",
        lambda: nn.Sequential(WeightStandardizedConv1d(3, 4, 3, padding=1)),
        ((2, 3, 8),),
        ("conv1d",),
        static_weight=False,
    ),
    ModelCase(
        "subclass_conv_transpose3d",
        lambda: nn.Sequential(PlainConvTranspose3d(2, 2, 3, stride=(1, 2, 1), padding=1)),
        ((2, 2, 3, 3, 2),),
        ("conv_transpose3d",),
    ),
    ModelCase(
        "subclass_conv_transpose2d_own_forward",
        lambda: nn.Sequential(GainConvTranspose2d(3, 4, 3, stride=2, output_padding=1)),
        ((2, 3, 4, 3),),
        ("conv_transpose2d",),
        static_weight=False,
    ),
    ModelCase(
        "mixed_kinds",
        MixedKinds,
        ((2, 3, 12),),
        tuple(kind for _, kind in MIXED_ORDER),
    ),
    ModelCase(
        "functional_conv_transpose2d",
        FunctionalConvTranspose2d,
        ((2, 4, 3, 5),),
        ("conv_transpose2d",),
    ),
    ModelCase("functional_conv1d_conv3d", FunctionalConv1d3d, ((2, 3, 8),), ("conv1d", "conv3d")),
    ModelCase(
        "output_size_from_shape",
        UpsampleToSize,
        ((2, 4, 4, 5), (2, 3, 8, 9)),
        ("conv_transpose2d",),
    ),
    ModelCase("output_size_fixed", UpsampleToFixedSize, ((2, 4, 6),), ("conv_transpose1d",)),
]


def build(case: ModelCase) -> nn.Module:
    torch.manual_seed(0)
    return case.make().double()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_lowered_model_matches_the_original(case: ModelCase, strategy: str):
    model = build(case)
    lowered = lowerconv.lower(model, strategy=strategy)
    model_ops, _ = assert_same_function(
        lowered, model, *(make_input(shape) for shape in case.inputs)
    )
    # The control: the original did run a convolution of each of these kinds.
    assert model_ops.conv_kinds() >= set(case.kinds)
    record = lowering_record(lowered)
    assert record.path == "graph", record.trace_error
    assert [c.kind for c in record.lowered] == list(case.kinds)
    assert record.skipped == []
    assert_conv_free(lowered)


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_record_specs_say_the_kind(case: ModelCase):
    model = build(case)
    record = lowering_record(lowerconv.lower(model))
    for conv in record.lowered:
        if conv.spec is None:
            assert not case.static_weight, f"{conv.name}: no spec for a parameter weight"
            continue
        kind = KINDS[conv.kind]
        assert conv.spec.kind == kind.name
        assert conv.spec.ndim == kind.ndim
        assert conv.spec.transposed == kind.transposed
        assert len(conv.spec.kernel_size) == kind.ndim
        try:
            module = model.get_submodule(conv.name)
        except AttributeError:
            continue  # a functional call
        if isinstance(module, _ConvNd):
            assert tuple(conv.spec.kernel_size) == module.kernel_size
            assert tuple(conv.spec.stride) == module.stride
            if kind.transposed:
                assert tuple(conv.spec.output_padding) == module.output_padding
            else:  # meaningless for a plain conv: empty or zeros
                assert not any(conv.spec.output_padding)
            assert conv.spec.groups == module.groups


def test_record_of_a_mixed_model_names_each_kind_in_graph_order():
    model = build(MODEL_CASES[[c.id for c in MODEL_CASES].index("mixed_kinds")])
    record = lowering_record(lowerconv.lower(model))
    assert [(c.name, c.kind) for c in record.lowered] == MIXED_ORDER
    assert [c["kind"] for c in record.to_dict()["lowered"]] == [k for _, k in MIXED_ORDER]
    spec = record.lowered[-1].spec
    assert spec.transposed and spec.ndim == 1 and tuple(spec.output_padding) == (1,)
    text = str(record)
    for name, _ in MIXED_ORDER:
        assert name in text


# -- the original stays as it was, state_dict unchanged --------------------------------------------


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_state_dict_is_the_originals_and_the_original_is_untouched(case: ModelCase):
    model = build(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [(n, type(m)) for n, m in model.named_modules()]
    lowered = lowerconv.lower(model)
    assert list(lowered.state_dict()) == list(before)
    for key, value in lowered.state_dict().items():
        assert torch.equal(value, before[key]), key
    # A copy, not a view: changing the lowered model leaves the original alone.
    with torch.no_grad():
        for p in lowered.parameters():
            p.add_(1.0)
    assert [(n, type(m)) for n, m in model.named_modules()] == types_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed in the original"
    # And the lowered model still loads the original's weights, strictly, both ways.
    lowered.load_state_dict(model.state_dict())
    model.load_state_dict(lowered.state_dict())
    assert_same_function(lowered, model, *(make_input(shape) for shape in case.inputs))


# -- choosing kinds --------------------------------------------------------------------------------


def test_kinds_conv2d_lowers_only_conv2d_and_skips_the_rest():
    model = build(MODEL_CASES[[c.id for c in MODEL_CASES].index("mixed_kinds")])
    lowered = lowerconv.lower(model, kinds={"conv2d"})
    record = lowering_record(lowered)
    assert [(c.name, c.kind) for c in record.lowered] == [("c2d", "conv2d")]
    others = {name for name, kind in MIXED_ORDER if kind != "conv2d"}
    assert {s.name for s in record.skipped} == others
    for name in others:
        assert type(lowered.get_submodule(name)) is type(model.get_submodule(name)), name
    assert not isinstance(lowered.get_submodule("c2d"), nn.Conv2d)
    _, ops = assert_same_function(lowered, model, make_input((2, 3, 12)), conv_free=False)
    assert "conv2d" not in ops.conv_kinds()
    assert ops.conv_kinds() == {kind for _, kind in MIXED_ORDER} - {"conv2d"}


@pytest.mark.parametrize(
    "kinds", [{"conv1d", "conv_transpose2d"}, {"conv3d"}, {"conv_transpose1d", "conv_transpose3d"}]
)
def test_kinds_lowers_exactly_the_kinds_named(kinds: set[str]):
    model = build(MODEL_CASES[[c.id for c in MODEL_CASES].index("mixed_kinds")])
    lowered = lowerconv.lower(model, kinds=kinds)
    record = lowering_record(lowered)
    assert [c.name for c in record.lowered] == [n for n, k in MIXED_ORDER if k in kinds]
    assert {s.name for s in record.skipped} == {n for n, k in MIXED_ORDER if k not in kinds}
    _, ops = assert_same_function(lowered, model, make_input((2, 3, 12)), conv_free=False)
    assert ops.conv_kinds() == {k for _, k in MIXED_ORDER} - kinds


@pytest.mark.parametrize("kinds", [None, set(KINDS), tuple(KINDS)], ids=["None", "set", "tuple"])
def test_every_kind_is_lowered_by_default_or_when_all_are_named(kinds):
    model = build(MODEL_CASES[[c.id for c in MODEL_CASES].index("mixed_kinds")])
    lowered = lowerconv.lower(model) if kinds is None else lowerconv.lower(model, kinds=kinds)
    assert [c.kind for c in lowering_record(lowered).lowered] == [k for _, k in MIXED_ORDER]
    assert lowering_record(lowered).skipped == []
    assert_conv_free(lowered)
    assert_same_function(lowered, model, make_input((1, 3, 8)))


@pytest.mark.parametrize("bad", ["conv4d", "Conv2d_", "deform_conv2d", ""], ids=repr)
def test_unknown_kind_is_refused_with_the_valid_ones(bad: str):
    with pytest.raises(LoweringError) as info:
        lowerconv.lower(MixedKinds(), kinds={"conv2d", bad})
    message = str(info.value)
    assert repr(bad) in message  # the kind refused, quoted
    assert "conv_transpose3d" in message  # the valid kinds are listed


# -- shapes are not baked in -----------------------------------------------------------------------

DYNAMIC_CASES = {
    "conv1d": (
        lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
        [(3, 3, 16), (0, 3, 7), (3, 11)],
    ),
    "conv2d": (
        lambda: nn.Conv2d(3, 4, 4, padding="same", padding_mode="reflect"),
        [(3, 3, 9, 5), (0, 3, 5, 5), (3, 8, 6)],
    ),
    "conv3d": (
        lambda: nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1, groups=2),
        [(3, 2, 4, 6, 7), (0, 2, 3, 3, 3), (2, 3, 4, 5)],
    ),
    "conv_transpose1d": (
        lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1),
        [(3, 3, 9), (0, 3, 4), (3, 6)],
    ),
    "conv_transpose2d": (
        lambda: nn.ConvTranspose2d(4, 2, (3, 2), stride=(2, 3), groups=2, dilation=(2, 1)),
        [(3, 4, 5, 2), (0, 4, 2, 2), (4, 3, 3)],
    ),
    "conv_transpose3d": (
        lambda: nn.ConvTranspose3d(2, 3, 2, stride=2, padding=(0, 1, 0)),
        [(3, 2, 3, 2, 4), (0, 2, 2, 2, 2), (2, 3, 2, 2)],
    ),
}


@pytest.mark.parametrize("kind", list(DYNAMIC_CASES))
def test_one_lowered_model_serves_any_batch_and_spatial_size(kind: str):
    make, shapes = DYNAMIC_CASES[kind]
    torch.manual_seed(0)
    model = nn.Sequential(make(), nn.Tanh()).double()
    for strategy in STRATEGIES:
        lowered = lowerconv.lower(model, strategy=strategy)
        assert_conv_free(lowered)
        for shape in shapes:
            assert_same_function(lowered, model, make_input(shape))


def test_output_size_is_computed_per_call_not_baked_in():
    """Each call's ``output_size`` picks its own output_padding: 8 or 7 rows, 9 or 10 columns."""
    torch.manual_seed(0)
    model = UpsampleToSize().double()
    lowered = lowerconv.lower(model)
    for x_shape, skip_shape in [
        ((2, 4, 4, 5), (2, 3, 8, 9)),
        ((2, 4, 4, 5), (2, 3, 7, 10)),
        ((1, 4, 3, 3), (1, 3, 6, 5)),
        ((4, 4, 5), (3, 7, 10)),
    ]:
        assert_same_function(lowered, model, make_input(x_shape), make_input(skip_shape))


# -- the run-time path -------------------------------------------------------------------------


class UntraceableKinds(nn.Module):
    """A data-dependent branch torch.fx cannot trace, around a Conv1d, a ConvTranspose2d called
    with ``output_size=``, and an F.conv3d call with a parameter kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.c1d = nn.Conv1d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.kernel = nn.Parameter(torch.randn(2, 1, 3, 3, 3) / 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, L) with L = 4 * m
        y = self.c1d(x)
        y = torch.relu(y) if y.sum() > 0 else -y
        y = y.unflatten(-1, (4, -1))
        # One row more than the stride alone gives: output_padding (1, 0), chosen at run time.
        y = self.up(y, output_size=(2 * y.shape[-2] + 1, 2 * y.shape[-1]))  # (N, 2, 9, 2m)
        return F.conv3d(y.unsqueeze(1), self.kernel, padding=1, stride=(1, 2, 1))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_untraceable_model_is_lowered_at_run_time(strategy: str):
    torch.manual_seed(0)
    model = UntraceableKinds().double()
    lowered = lowerconv.lower(model, strategy=strategy)
    record = lowering_record(lowered)
    assert record.path == "fallback"
    assert_conv_free(lowered)
    # The conv's bias picks the branch: both are taken.
    for bias in (5.0, -5.0):
        with torch.no_grad():
            model.c1d.bias.fill_(bias)
            lowered.get_parameter("c1d.bias").fill_(bias)
        x = make_input((2, 3, 8))
        assert_same_function(lowered, model, x)
        assert (model.c1d(x).sum() > 0).item() == (bias > 0)


def test_untraceable_model_lists_each_kind_lowered_at_run_time():
    torch.manual_seed(0)
    model = UntraceableKinds().double()
    lowered = lowerconv.lower(model, example_inputs=torch.randn(2, 3, 8, dtype=torch.float64))
    record = lowering_record(lowered)
    assert record.path == "fallback"
    kinds = {c.kind for c in record.lowered}
    assert kinds == {"conv1d", "conv_transpose2d", "conv3d"}, record
    assert record.skipped == []


# -- verify -----------------------------------------------------------------------------------


def test_verify_passes_a_mixed_kinds_model_and_lists_each_layer():
    torch.manual_seed(0)
    model = MixedKinds().eval()
    report = lowerconv.verify(model, torch.randn(2, 3, 12), timing=False)
    assert report.ok, report.failure_message()
    assert [layer.name for layer in report.layers] == [name for name, _ in MIXED_ORDER]
    for layer in report.layers:
        assert layer.status == "pass", (layer.name, layer.status, layer.reason)
    assert report.runs[0].conv_ops == [], report.runs[0].conv_ops


def test_verify_catches_a_wrong_transposed_lowering():
    """The check above can fail: a lowered ConvTranspose2d whose weight is off fails verify."""
    torch.manual_seed(0)
    model = MixedKinds().eval()
    lowered = lowerconv.lower(model)
    with torch.no_grad():
        lowered.get_parameter("up2d.weight").mul_(1.01)
    report = lowerconv.verify(model, torch.randn(2, 3, 12), lowered=lowered, timing=False)
    assert not report.ok
