"""Every function a forward can convolve with, and how to read a call's arguments.

One table serves both places a call is met: a ``call_function`` node of a traced graph
(:mod:`.sites`) and a call made while a model runs under run-time lowering (:mod:`.runtime`).
It holds ``F.conv*``/``F.conv_transpose*`` (which are ``torch.conv*``), the generic
``torch.convolution`` and ``torch._convolution``, and the ATen ops a forward may call directly
(``torch.ops.aten.convolution`` and its ``.default``, ``aten.conv2d``...), packets and
overloads alike: a ``TorchFunctionMode`` sees each of them by the object the forward called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .spec import CONV_ARGS, CONV_TRANSPOSE_ARGS, kind_of

__all__ = ["CONV_CALLABLES", "GENERIC_CONV_ARGS", "bind_conv_call"]

aten = torch.ops.aten

# The positional parameters of torch.convolution / aten.convolution, whose kind is read from
# the call (the weight's dimensions and ``transposed``); torch._convolution adds flags after.
GENERIC_CONV_ARGS = (
    "input",
    "weight",
    "bias",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
)

# Callable -> (kind, label, positional parameter names); kind None for the generic ones.
CONV_CALLABLES: dict[Any, tuple[str | None, str, tuple[str, ...]]] = {}
for _n in (1, 2, 3):
    _plain, _transposed = kind_of(_n, False), kind_of(_n, True)
    CONV_CALLABLES[getattr(F, _plain)] = (_plain, f"F.{_plain}", CONV_ARGS)
    CONV_CALLABLES[getattr(F, _transposed)] = (_transposed, f"F.{_transposed}", CONV_TRANSPOSE_ARGS)
    _packet = getattr(aten, _plain)
    CONV_CALLABLES[_packet] = (_plain, f"aten.{_plain}", CONV_ARGS)
    for _overload in ("default", "padding"):
        CONV_CALLABLES[getattr(_packet, _overload)] = (_plain, f"aten.{_plain}", CONV_ARGS)
    _packet = getattr(aten, _transposed)
    CONV_CALLABLES[_packet] = (_transposed, f"aten.{_transposed}", CONV_TRANSPOSE_ARGS)
    for _overload in ("input", "default"):
        _op = getattr(_packet, _overload, None)
        if _op is not None:
            CONV_CALLABLES[_op] = (_transposed, f"aten.{_transposed}", CONV_TRANSPOSE_ARGS)
for _generic, _label in (
    (torch.convolution, "torch.convolution"),
    (torch._convolution, "torch._convolution"),
    (aten.convolution, "aten.convolution"),
    (aten.convolution.default, "aten.convolution"),
    (aten._convolution, "aten._convolution"),
    (aten._convolution.default, "aten._convolution"),
):
    CONV_CALLABLES[_generic] = (None, _label, GENERIC_CONV_ARGS)


def bind_conv_call(
    func: Any, args: tuple, kwargs: Mapping[str, Any]
) -> tuple[str, str, dict[str, Any]] | None:
    """``(kind, label, arguments)`` of one call of a convolution in :data:`CONV_CALLABLES`, its
    arguments by ``F.conv*``'s names; None for any other function, or a generic call whose
    weight is not a 3- to 5-D tensor (PyTorch rejects it anyway).

    A generic call's kind comes from its weight and ``transposed``; its ``transposed`` (and
    ``torch._convolution``'s backend flags) are left out of the arguments, as is
    ``output_padding`` when it is not transposed.

    >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    >>> kind, label, bound = bind_conv_call(
    ...     torch.convolution, (x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1), {}
    ... )
    >>> kind, label, sorted(bound)
    ('conv2d', 'torch.convolution', ['bias', 'dilation', 'groups', 'input', 'padding', 'stride', 'weight'])
    """
    try:
        entry = CONV_CALLABLES.get(func)
    except TypeError:  # an unhashable callable is no convolution
        return None
    if entry is None:
        return None
    kind, label, names = entry
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    if kind is not None:
        return kind, label, bound
    weight = bound.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (3, 4, 5):
        return None
    transposed = bool(bound.get("transposed", False))
    keep = set(GENERIC_CONV_ARGS) - {"transposed"} - (set() if transposed else {"output_padding"})
    return (
        kind_of(weight.dim() - 2, transposed),
        label,
        {k: v for k, v in bound.items() if k in keep},
    )
