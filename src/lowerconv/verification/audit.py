"""The verifier's op-level audit: which convolution ops really ran in the lowered model.

The record says what the pass *meant* to do; the audit checks what the lowered model *does*.
:class:`ConvOpAudit` is a ``TorchDispatchMode``, so it sees every ATen op after autograd and
decomposition, whatever issued it: a graph node, a run-time lowering, a module the pass never
saw, a backend kernel reached through ``aten.convolution``.  Each convolution-family op is
attributed to the innermost module of the lowered model on the Python stack and to the model's
own source line, and judged:

- a convolution of a kind the lowering lowers (every kind by default; ``kinds=`` narrows it)
  is a **failure** (the model was to be free of them), unless the record lists its module as
  deliberately left alone;
- a convolution of another kind (one ``kinds=`` left out, deformable) is *left alone*: the
  record says so.

Quantised convolutions are convolutions here too: ``quantized::conv2d``, ``conv2d_relu``,
``conv1d``, ``conv3d`` (and ``_relu``), ``conv_transpose1d/2d/3d`` are dispatched like ATen ops
and match the same name rule (their kind from the name, as their packed weight is no tensor), so a
quantised model whose convs were not all turned into integer GEMMs fails the audit by name.

In the backward pass no module's code is on the stack, so an op there is named by the autograd
node that ran it (``ConvolutionBackward0``) and judged by count: a convolution left alone in
the forward has one backward op of its kind, so as many backward ops of a kind as the forward
left alone are *left alone* too; any more are failures (a lowered conv whose backward runs a
native convolution).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..lowering.record import SkippedConv
from ..lowering.runtime import ModuleLocator
from ..lowering.spec import KINDS

__all__ = ["ConvOpAudit", "ConvOpRun", "conv_op_kind"]

# "convolution", "conv2d", "_conv_depthwise2d", "slow_conv_transpose2d", "mkldnn_convolution",
# "deform_conv2d"... but not "_convert_indices_from_coo_to_csr" or "convert_element_type".
_CONV_OP = re.compile(r"conv(?!ert)")
# Ops that take (input, weight, bias, stride, padding, dilation, transposed, ...).
_GENERIC = {"convolution", "_convolution", "convolution_overrideable"}
_GENERIC_BACKWARD = {"convolution_backward", "convolution_backward_overrideable"}


def conv_op_kind(name: str, args: tuple) -> str:
    """``"conv2d"``, ``"conv_transpose2d"``, ``"conv3d"``, ``"deform_conv2d"``... for one op call.

    ``name`` is the op's name without namespace and overload (``convolution_backward``).
    """
    if "deform" in name:
        return "deform_conv2d"
    transposed = "transpose" in name
    weight = None
    if name in _GENERIC and len(args) > 6:
        weight, transposed = args[1], bool(args[6])
    elif name in _GENERIC_BACKWARD and len(args) > 7:
        weight, transposed = args[2], bool(args[7])
    elif len(args) > 1:
        weight = args[1]
    match = re.search(r"([123])d", name)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 3:
        dims = weight.dim() - 2
    elif match:
        dims = int(match.group(1))
    else:
        return f"conv{'_transpose' if transposed else ''}"
    return f"conv{'_transpose' if transposed else ''}{dims}d"


@dataclass
class ConvOpRun:
    """Convolution ops that ran in the lowered model, grouped by op, phase and call site.

    ``status`` is ``"fail"`` (a convolution of a lowered kind that should have been lowered) or
    ``"left alone"`` (another kind, or a conv the record lists as left alone); ``reason`` says
    which, and where the op came from.
    """

    op: str
    kind: str
    phase: str  # "forward" or "backward"
    called_from: str | None
    location: str | None
    count: int
    status: str
    reason: str

    @property
    def where(self) -> str:
        if self.phase == "backward":
            where = "the backward pass" + (f" of {self.called_from!r}" if self.called_from else "")
            return f"{where} (autograd node {self.location})" if self.location else where
        where = f"module {self.called_from!r}" if self.called_from else "the model's own forward"
        return f"{where} ({self.location})" if self.location else where


class ConvOpAudit(TorchDispatchMode):
    """Records every convolution-family ATen op dispatched while it is active.

    ``root`` is the lowered model, whose module names attribute each op; ``skipped`` is its
    record's list of convs left alone, ``kinds`` the kinds it lowered.  Read :meth:`runs`
    after the block.
    """

    def __init__(
        self,
        root: nn.Module,
        skipped: Iterable[SkippedConv] = (),
        kinds: Iterable[str] = KINDS,
    ) -> None:
        super().__init__()
        self.locator = ModuleLocator(root)
        self.skipped = list(skipped)
        self.kinds = frozenset(kinds)
        self._seen: dict[tuple, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if _CONV_OP.search(name):
            node = torch._C._current_autograd_node()
            if node is None:
                phase = "forward"
                called_from, location = self.locator.locate()
            else:
                # The stack holds the caller of backward(), not the model: name the node.
                phase, called_from, location = "backward", None, node.name()
            key = (str(func), conv_op_kind(name, args), phase, called_from, location)
            self._seen[key] = self._seen.get(key, 0) + 1
        return func(*args, **(kwargs or {}))

    def runs(self) -> list[ConvOpRun]:
        """The ops seen, in the order first seen, each judged."""
        found = []
        for (op, kind, phase, called_from, location), count in self._seen.items():
            status, reason = self._judge(kind, called_from)
            found.append(ConvOpRun(op, kind, phase, called_from, location, count, status, reason))
        found = _backward_of_left_alone(found)
        for run in found:
            run.reason = f"{run.reason}; from {run.where}"
        return found

    def _judge(self, kind: str, called_from: str | None) -> tuple[str, str]:
        if kind not in self.kinds:
            lowered = ", ".join(k for k in KINDS if k in self.kinds) or "none"
            return "left alone", f"a {kind} (the lowering's kinds= are {lowered})"
        for skip in self.skipped:
            if skip.conv_kind == kind and called_from and _within(called_from, skip.name):
                return "left alone", f"listed in the record as left alone: {skip.reason}"
        return "fail", f"a {kind} ran in the lowered model; it should have been lowered"


def _backward_of_left_alone(found: list[ConvOpRun]) -> list[ConvOpRun]:
    """Backward ops judged failures, up to as many of each kind as the forward left alone,
    judged left alone instead: each conv the forward left alone has one backward op."""
    allowance: dict[str, int] = {}
    for run in found:
        if run.phase == "forward" and run.status == "left alone":
            allowance[run.kind] = allowance.get(run.kind, 0) + run.count
    judged = []
    for run in found:
        spare = allowance.get(run.kind, 0)
        if run.phase != "backward" or run.status != "fail" or not spare:
            judged.append(run)
            continue
        alone = min(spare, run.count)
        allowance[run.kind] = spare - alone
        judged.append(
            replace(
                run,
                count=alone,
                status="left alone",
                reason=f"the backward of a {run.kind} the forward left alone",
            )
        )
        if run.count > alone:
            judged.append(replace(run, count=run.count - alone))
    return judged


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
