"""Before the copies: the model the verifier verifies, made ready on copies of its own.

- :func:`materialized`: a model with uninitialised lazy modules is initialised once, on a copy,
  so the native, oracle and lowered copies made from it all hold the same weights;
- :func:`calibrated`: ``calibrate_bn=True`` sets batch-norm running statistics from the example
  inputs in copies of the model and of its lowering, the remedy for activations that underflow
  at random init (an ``INCONCLUSIVE`` verdict).

The caller's modules are never changed; each returns a note for the report that says what was
done.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import LoweringError
from ..lowering.preflight import describe_lazy, lazy_modules, materialize_lazy

__all__ = ["calibrated", "materialized"]


def materialized(model: nn.Module, lowered: Any, inputs: tuple) -> tuple[nn.Module, str | None]:
    """``model``, or a copy of it with its lazy modules initialised on ``inputs`` and a note that
    says so: every copy the verifier makes then has the same weights."""
    lazy = lazy_modules(model)
    if not lazy:
        return model, None
    what = f"verify({type(model).__name__})"
    if lowered is not None:
        raise LoweringError(
            f"{what}: the model has uninitialised lazy modules ({describe_lazy(model, lazy)}) "
            "and lowered= was given: the lowered model's weights cannot be the ones the "
            "original will draw. Fix: call the model once on an input before lowering and "
            "verifying it, or leave lowered= out so verify lowers an initialised copy"
        )
    work = copy.deepcopy(model)
    materialize_lazy(work, inputs, what)
    names = ", ".join(repr(name) for name in lazy)
    note = (
        f"lazy modules {names} were initialised by one run on the example inputs, on a copy that "
        "was then lowered and verified; the model you passed is still uninitialised"
    )
    return work, note


def calibrated(
    model: nn.Module, lowered: nn.Module | None, inputs: tuple
) -> tuple[nn.Module, nn.Module | None, str]:
    """Copies of ``model`` (and ``lowered``) whose batch-norm running statistics are those of
    ``inputs``, and a note that says so; the caller's modules are not changed."""
    model = copy.deepcopy(model)
    norms = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    }
    if not norms:
        return model, lowered, "calibrate_bn: the model has no batch norm with running statistics"
    saved = {name: (m.momentum, m.training) for name, m in norms.items()}
    try:
        for module in norms.values():
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, its statistics
            module.train()
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model(*inputs)
    except Exception as exc:
        raise LoweringError(
            f"calibrate_bn: running {type(model).__name__} once on the example inputs to set "
            f"its batch-norm statistics failed: {type(exc).__name__}: {exc}. Fix: a batch of "
            "more than one sample (batch norm needs several values per channel), or verify "
            "without calibrate_bn"
        ) from exc
    finally:
        for name, (momentum, training) in saved.items():
            norms[name].momentum = momentum
            norms[name].training = training
    if lowered is not None:
        # The lowering keeps the original's state_dict keys: give its copy the same statistics.
        statistics = {
            key: value
            for key, value in model.state_dict().items()
            if key.rpartition(".")[0] in norms
        }
        lowered = copy.deepcopy(lowered)
        missing = sorted(set(statistics) - set(lowered.state_dict()))
        if missing:
            raise LoweringError(
                f"calibrate_bn: the lowered model has no {', '.join(missing[:3])} to take the "
                "calibrated batch-norm statistics. Fix: leave lowered= out, so verify lowers "
                "the calibrated copy itself"
            )
        lowered.load_state_dict(statistics, strict=False)
    return (
        model,
        lowered,
        (
            f"calibrate_bn: the running statistics of {len(norms)} batch-norm module(s) were set "
            "from the example inputs (one batch) in the verifier's copies, original and lowered; "
            "the model you passed is unchanged"
        ),
    )
