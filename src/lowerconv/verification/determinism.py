"""Around every verification step: the three copies run under the same precision and seeds.

The native model, the float64 oracle and the lowered model must differ by the lowering alone,
not by the settings they ran under.  So while :func:`lowerconv.verify` runs:

- :func:`pinned_precision` pins the flags that change float32/half matmul and conv precision
  (TF32, oneDNN's bfloat16 float32 matmuls, reduced-precision reductions) and restores them;
- :func:`preserved_rng` forks the RNG state, and :func:`seed_generators` sets the same seed
  before every forward;
- :class:`MatchedRandomness` makes that seed give the same dropout mask whatever the dtype and
  memory layout;
- :class:`PromoteToFloat64` lets the oracle compute in float64 even where the model makes
  float32 tensors of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode

__all__ = [
    "MatchedRandomness",
    "PromoteToFloat64",
    "pinned_precision",
    "preserved_rng",
    "seed_generators",
]


# -- precision flags -------------------------------------------------------------------------

# Since torch 2.9 precision is set per backend and operation; the legacy flags are views of it
# that raise on mixed states, so they are neither set nor read when the new settings exist.
_PER_BACKEND = (
    "torch.backends.cuda.matmul.fp32_precision",
    "torch.backends.cudnn.conv.fp32_precision",
    "torch.backends.mkldnn.matmul.fp32_precision",
    "torch.backends.mkldnn.conv.fp32_precision",
)
_LEGACY_TF32 = ("torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.allow_tf32")
_REDUCED_REDUCTIONS = (
    "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
    "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
)


# Environment variables that change float32 GEMM precision below every flag: cuBLAS reads
# ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` (set in NVIDIA's PyTorch containers) once and then runs
# float32 matmuls in TF32 whatever ``allow_tf32`` says; ``NVIDIA_TF32_OVERRIDE`` is read by the
# CUDA libraries themselves.  A lowered model's GEMMs are cuBLAS calls and a native conv is a
# cuDNN call, so with the first set the two sides of a float32 comparison run at different
# precisions, and pinning flags cannot help.
TF32_ENVIRONMENT = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")


def tf32_environment() -> dict[str, str]:
    """The :data:`TF32_ENVIRONMENT` variables that are set, by name."""
    return {name: os.environ[name] for name in TF32_ENVIRONMENT if name in os.environ}


@contextlib.contextmanager
def pinned_precision(*, allow_tf32: bool = False) -> Iterator[dict[str, Any]]:
    """Pin the flags that change float32/half matmul and conv precision; restore them after.

    TF32 is off for cuBLAS and cuDNN (``allow_tf32=True`` turns it on), float32 matmuls and
    convs run in full precision on CPU too (``set_float32_matmul_precision("medium")`` lets
    oneDNN use bfloat16), and float16/bfloat16 matmuls reduce in float32.  Yields the settings
    in force, by name: ``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32`` and ``torch.get_float32_matmul_precision`` as their
    effective values, plus the per-backend settings where this torch has them.
    """
    tf32 = "tf32" if allow_tf32 else "ieee"
    if all(_has_attribute(path) for path in _PER_BACKEND):
        wanted: dict[str, Any] = {path: tf32 for path in _PER_BACKEND[:2]}
        wanted.update({path: "ieee" for path in _PER_BACKEND[2:]})
    else:
        wanted = dict.fromkeys(_LEGACY_TF32, allow_tf32)
        wanted["torch.get_float32_matmul_precision"] = "high" if allow_tf32 else "highest"
    wanted.update(dict.fromkeys(_REDUCED_REDUCTIONS, False))
    saved: list[tuple[str, Any]] = []
    try:
        for path, value in wanted.items():
            saved.append((path, _read_flag(path)))
            _write_flag(path, value)
        effective = {
            **dict.fromkeys(_LEGACY_TF32, allow_tf32),
            "torch.get_float32_matmul_precision": "high" if allow_tf32 else "highest",
            **{path: _read_flag(path) for path in wanted},
            **{f"env {name}": value for name, value in tf32_environment().items()},
        }
        yield effective
    finally:
        for path, value in reversed(saved):
            _write_flag(path, value)


def _read_flag(path: str) -> Any:
    if path == "torch.get_float32_matmul_precision":
        return torch.get_float32_matmul_precision()
    owner, name = _attribute(path)
    return getattr(owner, name)


def _write_flag(path: str, value: Any) -> None:
    if path == "torch.get_float32_matmul_precision":
        torch.set_float32_matmul_precision(value)
        return
    owner, name = _attribute(path)
    setattr(owner, name, value)


def _attribute(path: str) -> tuple[Any, str]:
    """``"torch.backends.cudnn.conv.fp32_precision"`` -> (``torch.backends.cudnn.conv``, name)."""
    owner_path, _, name = path.rpartition(".")
    owner: Any = torch
    for part in owner_path.split(".")[1:]:
        owner = getattr(owner, part)
    return owner, name


def _has_attribute(path: str) -> bool:
    try:
        owner, name = _attribute(path)
    except AttributeError:
        return False
    return hasattr(owner, name)


# -- seeds -----------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_rng(devices: list[torch.device]) -> Iterator[None]:
    """Fork the CPU RNG and the RNG of every CUDA device verified; CUDA is not touched otherwise."""
    cuda = sorted(
        {
            d.index if d.index is not None else torch.cuda.current_device()
            for d in devices
            if d.type == "cuda"
        }
    )
    with torch.random.fork_rng(devices=cuda):
        yield


def seed_generators(dev: torch.device, seed: int) -> None:
    """Seed the CPU generator, and the generator of ``dev`` when it is a CUDA device."""
    # Not torch.manual_seed: that would also queue a seed for CUDA when it is not initialised.
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)


# -- random draws and dtypes -----------------------------------------------------------------


# Dropout functions, their argument names, and how many leading dims the mask keeps whole
# (None: the whole shape, elementwise; 2: one draw per (sample, channel), for the batched
# input ranks in _FEATURE_RANKS).
_DROPOUTS: dict[Callable[..., Any], tuple[tuple[str, ...], int | None]] = {
    F.dropout: (("input", "p", "training", "inplace"), None),
    torch.dropout: (("input", "p", "train"), None),
    F.dropout1d: (("input", "p", "training", "inplace"), 2),
    F.dropout2d: (("input", "p", "training", "inplace"), 2),
    F.dropout3d: (("input", "p", "training", "inplace"), 2),
}
_FEATURE_RANKS = {F.dropout1d: 3, F.dropout2d: 4, F.dropout3d: 5}
# Other functions drawing random numbers shaped like their first argument.
_RANDOM_LIKE: dict[Callable[..., Any], int | None] = {
    F.alpha_dropout: 3,  # position of the ``inplace`` argument, None: none
    F.feature_alpha_dropout: 3,
    F.rrelu: 4,
    torch.bernoulli: None,
    torch.rand_like: None,
    torch.randn_like: None,
    torch.randint_like: None,
}


class MatchedRandomness(TorchFunctionMode):
    """Within this mode, the same seed gives the same dropout mask whatever the dtype and layout.

    Random draws shaped like a tensor depend on more than the seed: on CPU they fill the tensor
    in *memory* order, and CUDA's fused dropout kernel groups elements by the dtype's vector
    width.  The native model, the float64 oracle and the lowered model (whose ``strided``
    convs return channels-last-like views) would then drop different elements, an O(1)
    difference between correct models.  So dropout draws its mask here, from a contiguous
    float32 tensor of the mask's shape; other ``*_like`` draws see a contiguous input.  Only
    the verifier's copies run under it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUTS:
            names, kept = _DROPOUTS[func]
            bound = {**dict(zip(names, args, strict=False)), **kwargs}
            x = bound.get("input")
            p = float(bound.get("p", 0.5))
            training = bound.get("training", bound.get("train", True))
            rank = _FEATURE_RANKS.get(func)
            if (
                isinstance(x, torch.Tensor)
                and training
                and 0.0 < p < 1.0
                and (rank is None or x.dim() == rank)
            ):
                shape = x.shape if kept is None else (*x.shape[:kept], *[1] * (x.dim() - kept))
                keep = torch.empty(shape, dtype=torch.float32, device=x.device).bernoulli_(1 - p)
                out = x * (keep / (1 - p)).to(x.dtype)
                return x.copy_(out) if bound.get("inplace", False) else out
        elif func in _RANDOM_LIKE and args and isinstance(args[0], torch.Tensor):
            first = args[0]
            if not first.is_contiguous():
                out = func(first.contiguous(), *args[1:], **kwargs)
                position = _RANDOM_LIKE[func]
                inplace = kwargs.get("inplace", False)
                if position is not None and len(args) > position:
                    inplace = args[position]
                return first.copy_(out) if inplace else out
        return func(*args, **kwargs)


class PromoteToFloat64(TorchFunctionMode):
    """Every float32 tensor an op returns becomes float64.

    Some models build float32 tensors themselves (RAFT's coordinate grids call ``.float()``),
    so their float64 copy mixes dtypes and fails; under this mode it computes in float64
    throughout and can serve as the oracle.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return pytree.tree_map_only(
            torch.Tensor, lambda t: t.double() if t.dtype == torch.float32 else t, out
        )
