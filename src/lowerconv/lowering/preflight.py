"""Before the pass: refuse what cannot be lowered honestly, and settle what is not yet a model.

Two kinds of module would otherwise go wrong silently or deep inside PyTorch:

- **TorchScript** (``torch.jit.script`` or ``torch.jit.trace`` output): its forward is compiled
  code, which neither ``torch.fx`` nor run-time lowering can see into, and it refuses the hooks
  the fallback path needs.  :func:`refuse_torchscript` says so up front, with the fix: lower the
  Python module, or capture it with ``torch.export``.
- **Uninitialised lazy modules** (``nn.LazyConv2d`` before its first call): their weights do not
  exist yet, so a lowered copy and the original would each draw their own on their first call.
  :func:`materialize_lazy` runs a copy once on the example inputs so the copy's weights exist
  (drawn from a forked RNG, in eval mode, so neither the caller's random stream nor any
  batch-norm statistics move); without example inputs it refuses, naming the lazy modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..errors import LoweringError

__all__ = ["describe_lazy", "lazy_modules", "materialize_lazy", "refuse_torchscript"]


def refuse_torchscript(model: Any, what: str) -> None:
    """Raise :class:`LoweringError` if ``model`` is TorchScript; ``what`` names the caller
    (``"lower()"``, ``"verify()"``)."""
    if not isinstance(model, torch.jit.ScriptModule | torch.jit.ScriptFunction):
        return
    how = "torch.jit.trace" if isinstance(model, torch.jit.TracedModule) else "torch.jit.script"
    raise LoweringError(
        f"{what} got a TorchScript module ({type(model).__name__}, made by {how}): its forward "
        "is compiled TorchScript, which torch.fx cannot trace and run-time lowering cannot run "
        "(ScriptModules refuse forward hooks), so no convolution in it could be lowered. Fix: "
        "lower the Python nn.Module you scripted or traced (lowerconv.lower(model), then "
        "torch.jit.script the result if you need TorchScript), or capture it with "
        "torch.export.export(model, inputs) and pass the ExportedProgram"
    )


def lazy_modules(model: nn.Module) -> list[str]:
    """The qualified names (``"0"``, ``"encoder.conv"``) of ``model``'s modules that hold an
    uninitialised lazy parameter or buffer, in module order; ``""`` is the model itself."""
    found = []
    for name, module in model.named_modules():
        tensors = [*module._parameters.values(), *module._buffers.values()]
        if any(t is not None and is_lazy(t) for t in tensors):
            found.append(name)
    return found


def describe_lazy(model: nn.Module, names: list[str]) -> str:
    """``'0' (LazyConv2d), 'head' (LazyLinear)``: the lazy modules, with their classes."""
    shown = [
        f"{name or '(the model)'!r} ({type(model.get_submodule(name)).__name__})" for name in names
    ]
    more = f" and {len(names) - 6} more" if len(names) > 6 else ""
    return ", ".join(shown[:6]) + more


def materialize_lazy(model: nn.Module, inputs: tuple | None, what: str) -> list[str]:
    """Give ``model``'s lazy modules their parameters by running it once on ``inputs``, in place.

    Returns the names of the modules that were lazy (empty, and nothing runs, when none is).
    Run it on a copy unless the caller asked for in-place work: it changes ``model``.  The run
    is in eval mode (batch-norm statistics stay put; every module's mode is restored after),
    under ``no_grad``, with the RNG forked: the caller's random stream is where it was, so a
    later first call of the original, on inputs of the same shapes, draws the same weights.
    Raises :class:`LoweringError` without ``inputs``, or if the run fails or leaves a module
    lazy (it was not called by the forward).
    """
    names = lazy_modules(model)
    if not names:
        return []
    lazy = describe_lazy(model, names)
    if inputs is None:
        raise LoweringError(
            f"{what}: {type(model).__name__} has uninitialised lazy modules: {lazy}. Their "
            "weights do not exist until the model first runs, so the lowered model and the "
            "original would each draw different ones. Fix: call the model once on an input "
            "(model(x)) before lowering it, or pass example_inputs= so a copy is initialised "
            "and lowered"
        )
    modes = {name: module.training for name, module in model.named_modules()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.eval()
            model(*inputs)
    except Exception as exc:
        raise LoweringError(
            f"{what}: running {type(model).__name__} once on example_inputs to initialise its "
            f"lazy modules ({lazy}) failed: {type(exc).__name__}: {exc}. Fix: pass "
            "example_inputs the model accepts, or call the model once yourself before lowering"
        ) from exc
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)
    left = lazy_modules(model)
    if left:
        raise LoweringError(
            f"{what}: {type(model).__name__}'s lazy modules {describe_lazy(model, left)} are "
            "still uninitialised after one run on example_inputs (its forward did not call "
            "them on these inputs). Fix: initialise them yourself (call each once), or pass "
            "inputs that reach them"
        )
    return names
