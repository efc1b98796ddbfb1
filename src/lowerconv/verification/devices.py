"""Verification, before step 1: the devices to run on, the three copies on each, their forwards.

:func:`resolve_devices` turns ``device=`` into the devices to verify on (a CUDA device that is
not there is skipped, with the reason).  On each, :func:`copy_to` deep-copies the original into
the *native* model (the dtype verified) and the float64 *oracle*, and the lowered model into its
copy; :func:`cast_inputs` moves and casts the inputs alike.  :func:`forward` runs one copy after
seeding and turns its failure into a :class:`~lowerconv.errors.LoweringError` that says which
copy failed and how to fix it; :func:`oracle_forward` retries the oracle with every float32
tensor promoted to float64.
"""

from __future__ import annotations

import copy
import platform
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..errors import LoweringError
from .determinism import PromoteToFloat64, seed_generators

__all__ = [
    "cast_inputs",
    "copy_to",
    "describe_input",
    "device_name",
    "dtype_name",
    "forward",
    "oracle_forward",
    "resolve_devices",
    "to_float64",
]


def resolve_devices(device: Any) -> tuple[list[torch.device], dict[str, str]]:
    """The devices ``device=`` names, in order, and those skipped: name -> why."""
    if isinstance(device, str | torch.device):
        names = ["cpu", "cuda"] if str(device) == "all" else [device]
    else:
        names = list(device)
    devices: list[torch.device] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as err:
            raise LoweringError(
                f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:N', 'all' or a list of "
                f"them ({err})"
            ) from err
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                skipped[str(name)] = (
                    "CUDA is not available (torch.cuda.is_available() is False: no GPU or driver, "
                    f"or a CPU-only build of torch {torch.__version__})"
                )
                continue
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                skipped[str(name)] = f"only {torch.cuda.device_count()} CUDA device(s) visible"
                continue
        if dev not in devices:
            devices.append(dev)
    return devices, skipped


def copy_to(module: nn.Module, dev: torch.device, dtype: torch.dtype, what: str) -> nn.Module:
    """A deep copy of ``module`` on ``dev`` in ``dtype``: what is verified is never the original."""
    try:
        copied = copy.deepcopy(module)
    except Exception as exc:
        raise LoweringError(
            f"could not deep-copy {what} ({type(module).__name__}) to verify it without changing "
            f"it: {type(exc).__name__}: {exc}. Fix: make the model deep-copyable"
        ) from exc
    return copied.to(device=dev, dtype=dtype)


def cast_inputs(inputs: tuple, dev: torch.device, dtype: torch.dtype) -> tuple:
    """``inputs`` on ``dev``, floating-point tensors cast to ``dtype``, the others as they are."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=dev, dtype=dtype) if t.is_floating_point() else t.to(device=dev)

    return pytree.tree_map_only(torch.Tensor, cast, inputs)


def to_float64(value: Any) -> Any:
    return pytree.tree_map_only(
        torch.Tensor, lambda t: t.double() if t.is_floating_point() else t, value
    )


def forward(
    module: nn.Module, x: tuple, dev: torch.device, seed: int, what: str, original: tuple
) -> Any:
    """``module(*x)`` after seeding; a failure is a ``LoweringError`` naming ``what`` failed."""
    seed_generators(dev, seed)
    try:
        return module(*x)
    except Exception as exc:
        shapes = ", ".join(describe_input(t)["repr"] for t in original)
        raise LoweringError(
            f"{what} ({type(module).__name__}) failed on {dev} with inputs ({shapes}): "
            f"{type(exc).__name__}: {exc}. Fix: {_FIXES[what]}"
        ) from exc


_FIXES = {
    "the model": "pass example_inputs the model accepts, as a tuple of its positional arguments",
    "the float64 copy of the model": "the model does not run in float64 here; it needs to, as "
    "float64 is the reference the verifier measures both models against",
    "the lowered model": "the lowered model fails where the original runs: print(lowered.code) "
    "and check the lowering (or your edit of it)",
}


def oracle_forward(
    oracle: nn.Module, x64: tuple, dev: torch.device, seed: int, original: tuple
) -> tuple[Any, bool]:
    """The float64 copy's outputs, and whether float32 tensors had to be promoted to get them."""
    what = "the float64 copy of the model"
    try:
        return forward(oracle, x64, dev, seed, what, original), False
    except LoweringError:
        with PromoteToFloat64():
            try:
                return forward(oracle, x64, dev, seed, what, original), True
            except LoweringError:
                pass
        raise


# -- names for the report --------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_input(x: Any) -> dict[str, Any]:
    if isinstance(x, torch.Tensor):
        shape = list(x.shape)
        return {
            "shape": shape,
            "dtype": dtype_name(x.dtype),
            "repr": f"{dtype_name(x.dtype)}[{', '.join(map(str, shape))}]",
        }
    return {"shape": None, "dtype": type(x).__name__, "repr": repr(x)[:40]}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine() or dev.type
    return f"{cpu}, {torch.get_num_threads()} threads"
