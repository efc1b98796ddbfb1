"""Lowering at run time, for ``Conv2d`` subclasses whose ``forward`` ``torch.fx`` cannot trace.

Some subclasses compute their padding from the input with plain Python (``math.ceil`` of a
size, ``max(pad, 0)``: timm's ``Conv2dSame``), which symbolic tracing cannot follow.  Their
``forward`` must keep running as written, so it runs unchanged under a ``TorchFunctionMode`` that
sends every ``F.conv2d`` call to :func:`lowerconv.functional.conv2d`: the arithmetic is the
same strategy as in a lowered graph, and no convolution op runs.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .functional import conv2d

__all__ = ["Im2colMode", "RuntimeLoweredConv2d"]


class Im2colMode(TorchFunctionMode):
    """Within this mode, ``F.conv2d``/``torch.conv2d`` calls run as im2col + matmul."""

    def __init__(self, strategy: str = "unfold", max_workspace_bytes: int | None = None) -> None:
        super().__init__()
        self.strategy = strategy
        self.max_workspace_bytes = max_workspace_bytes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            return conv2d(
                *args,
                strategy=self.strategy,
                max_workspace_bytes=self.max_workspace_bytes,
                **kwargs,
            )
        return func(*args, **kwargs)


class RuntimeLoweredConv2d(nn.Module):
    """Runs a ``Conv2d`` subclass's own ``forward`` with its ``F.conv2d`` calls lowered.

    It shares the conv's parameter, buffer and child dictionaries, so ``state_dict()`` keys,
    ``.to()``, ``.train()`` and tied weights behave as before; the conv itself is kept out of
    ``.modules()`` (no ``nn.Conv2d`` instance is reachable from the model).
    """

    def __init__(
        self, conv: nn.Conv2d, strategy: str, max_workspace_bytes: int | None = None
    ) -> None:
        super().__init__()
        self._parameters = conv._parameters
        self._buffers = conv._buffers
        self._non_persistent_buffers_set = conv._non_persistent_buffers_set
        self._modules = conv._modules
        self.training = conv.training
        object.__setattr__(self, "_wrapped_conv", conv)
        self.strategy = strategy
        self.max_workspace_bytes = max_workspace_bytes

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        conv = self._wrapped_conv
        conv.training = self.training
        with Im2colMode(self.strategy, self.max_workspace_bytes):
            return conv(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Configuration the model may read at run time (out_channels, stride, ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            conv = self.__dict__.get("_wrapped_conv")  # absent while being unpickled
            if conv is None:
                raise
            return getattr(conv, name)

    def extra_repr(self) -> str:
        conv = self._wrapped_conv
        return f"{type(conv).__name__}({conv.extra_repr()}), strategy={self.strategy!r}"
