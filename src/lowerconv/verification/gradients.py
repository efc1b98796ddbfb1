"""Verification with ``gradients=True``: the backward pass, checked the way the forward is.

The native model, its float64 oracle and the lowered model are each pulled back from the same
fixed random output gradient (the *cotangent*: drawn in float64 from the verification's seed,
then cast to each copy's dtype), and every gradient is judged against the oracle's by the
forward's rule, :func:`~lowerconv.verification.metrics.judge` (through
:meth:`~lowerconv.verification.report.OutputCheck.judged`):

- **end to end** (:func:`model_gradients`, then :func:`check_gradients`): the gradient of every
  floating-point input and of every parameter, matched by name (the lowered model keeps the
  original's parameter names), one :class:`~lowerconv.verification.report.OutputCheck` each
  (``input[0].grad``, ``layer1.0.conv1.weight.grad``);
- **per layer** (:func:`local_gradients`): each lowered conv, the native conv and the float64
  conv, run on the input the original model gives that conv (as the forward's local check
  runs them), are pulled back from one cotangent; ``dX``, ``dW`` and ``db`` are one
  :class:`~lowerconv.verification.report.GradientCheck` each.  :mod:`~lowerconv.verification.layer_checks` builds the
  three :class:`LocalConv` of each conv, on each of its paths.

While the lowered model runs backward, the conv-op audit (:mod:`~lowerconv.verification.audit`) watches, so
a backward that runs a convolution op fails as a forward would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..errors import LoweringError
from ..lowering.linear import conv_state_dict, linear_parameter_keys
from .devices import forward
from .metrics import Tolerance, compare, judge
from .report import GradientCheck, OutputCheck

__all__ = [
    "LocalConv",
    "ModelGradients",
    "check_gradients",
    "cotangents",
    "leaf",
    "local_gradients",
    "model_gradients",
]


def cotangents(shapes: Sequence[Sequence[int]], seed: int) -> list[torch.Tensor]:
    """One fixed random output gradient per shape, in float64 on the CPU, drawn in order from
    ``seed``: every copy casts the same numbers to its own dtype and device."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(shape), generator=generator, dtype=torch.float64) for shape in shapes]


def leaf(value: torch.Tensor) -> torch.Tensor:
    """A copy of ``value`` that requires grad and shares no autograd history with it."""
    return value.detach().clone().requires_grad_()


# -- end to end ------------------------------------------------------------------------------


@dataclass
class ModelGradients:
    """One copy's backward: each gradient by name (``input[0]``, ``layer1.0.conv1.weight``;
    None where no gradient flowed), the output paths pulled back, and the error its backward
    raised, if it did.  ``missing`` names the parameters asked for that the copy lacks."""

    grads: dict[str, torch.Tensor | None]
    outputs: list[str]
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    error: str | None = None


def model_gradients(
    module: nn.Module,
    x: tuple,
    dev: torch.device,
    seed: int,
    what: str,
    original: tuple,
    *,
    like: ModelGradients | None = None,
) -> ModelGradients:
    """Run ``module`` on ``x`` with gradients on and pull it back from the seeded cotangent.

    Without ``like`` (the native copy) every floating-point output that requires grad is pulled
    back, and the gradients taken are those of every floating-point input and every parameter
    that requires grad.  With ``like`` (the oracle and the lowered copy) the same outputs and
    names are used, so all three copies do the same thing; a backward that raises is recorded
    in ``error`` for them, and raised as a :class:`~lowerconv.errors.LoweringError` for the
    native copy (the model itself cannot be differentiated).
    """
    inputs = [
        (f"input{pytree.keystr(path)}", t)
        for path, t in pytree.tree_flatten_with_path(x)[0]
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    leaves = {name: leaf(t) for name, t in inputs}
    by_id = {id(t): leaves[name] for name, t in inputs}
    # The model gets a copy of each leaf, so a model that edits its input in place still runs.
    fed = pytree.tree_map_only(
        torch.Tensor, lambda t: by_id[id(t)].clone() if id(t) in by_id else t, x
    )
    with torch.enable_grad():
        out = forward(module, fed, dev, seed, what, original)
    outputs = dict(_floating_leaves(out))
    if like is None:
        paths = [path for path, t in outputs.items() if t.requires_grad]
        parameters = [name for name, p in module.named_parameters() if p.requires_grad]
        names = [*leaves, *parameters]
    else:
        paths = [path for path in like.outputs if path in outputs and outputs[path].requires_grad]
        names = list(like.grads)
    shapes = [tuple(outputs[path].shape) for path in paths]
    result = ModelGradients(grads={}, outputs=paths, shapes=shapes)
    own = dict(module.named_parameters(remove_duplicate=False))
    # The Linear form (lower(gemm="linear")) holds a conv's weight as nn.Linear weights: take
    # their gradients, and give them the conv's shape and keys below.
    held = _linear_keys(module) if like is not None else {}
    wrt = {}
    for name in names:
        if name in leaves:
            wrt[name] = leaves[name]
        elif name in held and all(k in own and own[k].requires_grad for k in held[name]):
            wrt.update((k, own[k]) for k in held[name])
        elif name in own and own[name].requires_grad:
            wrt[name] = own[name]
        else:
            result.missing.append(name)
    # Drawn for the native copy's outputs, so every copy gets the same numbers.
    reference = like if like is not None else result
    drawn = dict(zip(reference.outputs, cotangents(reference.shapes, seed), strict=True))
    tensors = [outputs[path] for path in paths]
    grads: Sequence[torch.Tensor | None] = [None] * len(wrt)
    if tensors and wrt:
        try:
            grads = torch.autograd.grad(
                tensors,
                list(wrt.values()),
                [drawn[path].to(t) for path, t in zip(paths, tensors, strict=True)],
                allow_unused=True,
            )
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".strip()
            if like is None:
                raise LoweringError(
                    f"{what} ({type(module).__name__}) cannot be differentiated on {dev}: "
                    f"{message}. Fix: verify without gradients=True (--gradients), or make the "
                    "model's forward differentiable"
                ) from exc
            result.error = message
    result.grads = {
        name: None if g is None else g.detach() for name, g in zip(wrt, grads, strict=True)
    }
    if held:
        result.grads = dict(conv_state_dict(module, result.grads))
    return result


def _linear_keys(module: nn.Module) -> dict[str, list[str]]:
    try:
        return linear_parameter_keys(module)
    except LookupError:  # not from lowerconv.lower: its parameters are what they are
        return {}


def _floating_leaves(value: Any) -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for each floating-point tensor leaf of an output, paths as the
    forward's output checks write them."""
    try:
        pairs = [(pytree.keystr(p), t) for p, t in pytree.tree_flatten_with_path(value)[0]]
    except ValueError:
        pairs = [(f"[{i}]", t) for i, t in enumerate(pytree.tree_leaves(value))]
    return [(path, t) for path, t in pairs if isinstance(t, torch.Tensor) and t.is_floating_point()]


def check_gradients(
    native: ModelGradients,
    lowered: ModelGradients,
    oracle: ModelGradients,
    tolerance: Tolerance,
) -> tuple[list[OutputCheck], list[str]]:
    """One :class:`~lowerconv.verification.report.OutputCheck` per gradient of the native copy, and notes.

    A gradient that reaches neither model (an input or parameter this forward does not use) is
    a note, not a row; one that reaches only one of them, a parameter the lowered model lacks
    and a lowered backward that raised are failing rows.
    """
    if lowered.error is not None:
        reason = f"the lowered model's backward raised {lowered.error}"
        return [OutputCheck("backward", None, None, ok=False, reason=reason)], []
    checks, unused = [], []
    for name, n in native.grads.items():
        label = f"{name}.grad"
        if name in lowered.missing:
            reason = f"the lowered model has no parameter {name!r} that requires grad"
            checks.append(OutputCheck(label, None, None, ok=False, reason=reason))
            continue
        lo, o = lowered.grads.get(name), oracle.grads.get(name)
        if n is None and lo is None:
            unused.append(name)
            continue
        if n is None or lo is None or o is None:
            which = {"the original": n, "the lowered model": lo, "the float64 oracle": o}
            none = [model for model, grad in which.items() if grad is None]
            some = [model for model, grad in which.items() if grad is not None]
            reason = f"no gradient reaches {name} in {' and '.join(none)}, one does in {some[0]}"
            checks.append(
                OutputCheck(
                    label, tuple(n.shape) if n is not None else None, None, ok=False, reason=reason
                )
            )
            continue
        checks.append(OutputCheck.judged(label, n, lo, o, tolerance))
    notes = []
    if unused:
        shown = ", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
        notes.append(
            f"{len(unused)} input(s) or parameter(s) get no gradient in either model (this "
            f"forward does not use them): {shown}"
        )
    return checks, notes


# -- per layer -------------------------------------------------------------------------------


@dataclass
class LocalConv:
    """One copy of one conv, ready for its backward check: ``run()`` computes its output from
    the tensors of ``wrt`` (``"dX"``: its input, ``"dW"``: its weight, ``"db"``: its bias),
    which require grad.  A gradient the copy cannot give is left out of ``wrt``."""

    run: Callable[[], Any]
    wrt: dict[str, torch.Tensor]


def local_gradients(
    layer: str,
    native: LocalConv,
    lowered: LocalConv,
    oracle: LocalConv,
    *,
    seed: int,
    tolerance: Tolerance,
) -> list[GradientCheck]:
    """Pull the three copies of one conv back from one seeded cotangent and judge each of the
    native copy's gradients (``dX``, ``dW``, ``db``): one :class:`GradientCheck` each."""
    with torch.enable_grad():
        native_out = None
        try:
            native_out = native.run()
            (cotangent,) = cotangents([native_out.shape], seed)
            native_grads = _pull_back(native_out, native.wrt, cotangent)
            oracle_grads = _pull_back(oracle.run(), oracle.wrt, cotangent)
        except Exception as exc:  # the original conv, on its own input: nothing to judge by
            reason = (
                "the conv's output is not differentiable"
                if isinstance(native_out, torch.Tensor) and not native_out.requires_grad
                else f"the native or float64 conv's backward raised {type(exc).__name__}: {exc}"
            )
            return _all(layer, native.wrt, "unchecked", reason)
        try:
            lowered_out = lowered.run()
            if lowered_out.shape != native_out.shape:
                raise ValueError(
                    f"lowered output shape {tuple(lowered_out.shape)}, original "
                    f"{tuple(native_out.shape)}"
                )
            lowered_grads = _pull_back(lowered_out, lowered.wrt, cotangent)
        except Exception as exc:
            reason = f"the lowered conv's backward raised {type(exc).__name__}: {exc}".strip()
            return _all(layer, native.wrt, "fail", reason)
    checks = []
    for grad, n in native_grads.items():
        check = GradientCheck(layer=layer, grad=grad, status="unchecked")
        checks.append(check)
        o = oracle_grads.get(grad)
        if grad not in lowered_grads:
            check.reason = f"the lowered conv's {_WHAT[grad]} is not a tensor it can differentiate"
            continue
        lo = lowered_grads[grad]
        if n is None and lo is None:
            check.reason = f"no gradient reaches the conv's {_WHAT[grad]}"
            continue
        if n is None or lo is None or o is None:
            check.status = "fail"
            check.reason = (
                f"a gradient reaches the {_WHAT[grad]} in only one of the native conv, the "
                "lowered conv and the float64 conv"
            )
            continue
        check.shape = tuple(n.shape)
        if lo.shape != n.shape:
            check.status = "fail"
            check.reason = f"lowered {grad} shape {tuple(lo.shape)}, native {tuple(n.shape)}"
            continue
        check.local_native = compare(n, o, rtol=tolerance.rtol, atol=tolerance.atol)
        check.local_lowered = compare(lo, o, rtol=tolerance.rtol, atol=tolerance.atol)
        check.judgement = judge(check.local_native, check.local_lowered, tolerance)
        check.status = "pass" if check.judgement.ok else "fail"
        check.reason = check.judgement.reason
    return checks


_WHAT = {"dX": "input", "dW": "weight", "db": "bias"}


def _pull_back(
    out: torch.Tensor, wrt: dict[str, torch.Tensor], cotangent: torch.Tensor
) -> dict[str, torch.Tensor | None]:
    if not wrt:
        return {}
    grads = torch.autograd.grad(out, list(wrt.values()), cotangent.to(out), allow_unused=True)
    return {key: None if g is None else g.detach() for key, g in zip(wrt, grads, strict=True)}


def _all(layer: str, wrt: dict[str, torch.Tensor], status: str, reason: str) -> list[GradientCheck]:
    return [GradientCheck(layer=layer, grad=grad, status=status, reason=reason) for grad in wrt]
