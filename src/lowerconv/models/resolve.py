"""Turn the command line's MODEL argument into a module and the example inputs to run it on.

Four spellings are accepted:

- a torchvision model name (``resnet18``): built with ``weights=None`` (no download) from a fixed
  seed, in eval mode, with inputs shaped for its category (images, video clips, image pairs);
  a linear layer torchvision initialises to zeros (vit's classification head) is redrawn from
  the seed (:func:`redraw_zero_linears`), since its output would be zero whatever the convs
  computed and a verification of it would prove nothing;
- a real-world model name (``hf_resnet``, ``diffusers_unet2d``...): a model from transformers,
  diffusers, segmentation_models_pytorch, ultralytics or kornia, built from a small config with
  random weights by :mod:`lowerconv.models.realworld`, with that entry's own example inputs;
- ``package.module:factory``: ``factory()`` is imported and called;
- ``path/to/file.py:factory``: the file is loaded with :func:`importlib.util.spec_from_file_location`
  and ``factory()`` called.

``factory`` is any callable returning an ``nn.Module`` (a class works).  Its example input is one
image batch ``(batch, C, size, size)`` with ``C`` the ``in_channels`` of its first ``nn.Conv2d``.
Every mistake raises :class:`~lowerconv.errors.LoweringError` saying what was wrong and how to
fix it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import math
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..errors import LoweringError, MissingDependencyError, with_article
from .quantized import INT8_MODELS, build_int8_model
from .realworld import REALWORLD_MODELS

__all__ = [
    "CATEGORIES",
    "DEFAULT_IMAGE_SIZE",
    "VIDEO_FRAMES",
    "ResolvedModel",
    "default_image_size",
    "factory_candidates",
    "load_weights",
    "redraw_zero_linears",
    "resolve_model",
    "suggest_model_names",
    "torchvision_models",
]

DEFAULT_IMAGE_SIZE = 224
VIDEO_FRAMES = 16  # mvit needs exactly 16; the others accept it

# torchvision's model categories, each with its own example inputs, in the order `lowerconv models`
# and `lowerconv zoo` list them.
CATEGORIES = (
    "classification",
    "quantization",
    "segmentation",
    "detection",
    "video",
    "optical_flow",
)


@dataclass
class ResolvedModel:
    """A model ready to lower: the module (eval mode), its example inputs, and where it came from.

    ``min_image_size`` is the smallest input the model's torchvision weights document, used to
    explain a forward pass that fails on a small ``--image-size``.  ``preferred_dtype`` is the
    dtype to verify in when none is asked for: float64 for detection models, whose outputs are
    boxes after score thresholds and NMS, which float32 rounding alone can change.
    """

    spec: str
    model: nn.Module
    example_inputs: tuple
    origin: str
    min_image_size: int | None = None
    preferred_dtype: torch.dtype | None = None

    def describe(self) -> str:
        leaves = torch.utils._pytree.tree_leaves(self.example_inputs)
        shapes = ", ".join("x".join(map(str, t.shape)) or "scalar" for t in leaves)
        if self.example_inputs and isinstance(self.example_inputs[0], list):
            shapes = f"a list of {len(leaves)} image(s) {shapes}"
        return f"{self.spec} ({self.origin}), input {shapes}"

    def failure_hint(self) -> str | None:
        """A fix for a run that failed on an input below the model's documented minimum."""
        if self.min_image_size is not None:
            size = self.example_inputs[0].shape[-1]
            if size < self.min_image_size:
                return (
                    f"{self.spec} documents a minimum input of {self.min_image_size}x"
                    f"{self.min_image_size}, got {size}: pass --image-size {self.min_image_size} "
                    "or larger"
                )
        return None


def resolve_model(
    spec: str,
    *,
    batch_size: int = 1,
    image_size: int | None = None,
    seed: int = 0,
    weights: str | Path | None = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
) -> ResolvedModel:
    """Build the model named by ``spec`` and its example inputs; see the module docstring.

    ``image_size`` of None means the model's own default (224 for most, 299 for inception_v3,
    112 for the 3-D ResNets); a real-world model has fixed inputs and refuses one.  ``weights``
    is a ``state_dict`` file loaded with :func:`load_weights`.  ``input_shapes`` replaces the
    example inputs by random tensors of these shapes, one per positional argument (a
    non-square image, a model of two inputs); it excludes ``image_size`` and ``batch_size``.
    """
    if input_shapes:
        if image_size is not None or batch_size != 1:
            raise LoweringError(
                "--input-shape gives each input's whole shape, batch and sides included, so "
                "--image-size and --batch-size do not apply. Fix: drop them"
            )
        if spec in REALWORLD_MODELS or (":" not in spec and _is_detection(spec)):
            raise LoweringError(
                f"{spec} takes its own kind of inputs (a list of images, or a library's "
                "arguments), not tensors of given shapes. Fix: drop --input-shape"
            )
    if batch_size < 1:
        raise LoweringError(f"--batch-size must be at least 1, got {batch_size}")
    if image_size is not None and image_size < 1:
        raise LoweringError(f"--image-size must be at least 1, got {image_size}")
    if ":" in spec:
        resolved = _resolve_factory(spec, batch_size, image_size, seed)
    elif spec in REALWORLD_MODELS:
        resolved = _resolve_realworld(spec, batch_size, image_size, seed)
    elif spec in INT8_MODELS:
        resolved = _resolve_int8(spec, batch_size, image_size, seed)
    else:
        resolved = _resolve_torchvision(spec, batch_size, image_size, seed)
    if input_shapes:
        generator = torch.Generator().manual_seed(seed)
        resolved.example_inputs = tuple(
            torch.randn(tuple(shape), generator=generator) for shape in input_shapes
        )
        resolved.min_image_size = None  # the hint speaks of --image-size, which is not in use
    if weights is not None:
        load_weights(resolved.model, weights, model_name=spec)
    resolved.model.eval()
    return resolved


def _is_detection(name: str) -> bool:
    return torchvision_models().get(name) == "detection"


# -- torchvision ---------------------------------------------------------------------------------


def import_torchvision_models():
    """``torchvision.models``; a torchvision that does not import (not installed, or built for
    another torch: ``operator torchvision::nms does not exist``) is a
    :class:`MissingDependencyError` naming the versions found and how to install a matching pair."""
    try:
        return importlib.import_module("torchvision.models")
    except Exception as exc:
        raise MissingDependencyError(describe_torchvision_failure(exc)) from exc


def describe_torchvision_failure(exc: BaseException) -> str:
    """Why torchvision did not import, with the torch and torchvision versions installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = f"torchvision {version('torchvision')}"
    except PackageNotFoundError:
        found = "no torchvision"
    return (
        f"torchvision failed to import ({type(exc).__name__}: {exc}). Found torch "
        f"{torch.__version__} and {found}: torchvision must be the build made for this torch "
        "(torch 2.N pairs with torchvision 0.(N+15), for the same CUDA or CPU variant). Fix: "
        "pip install the pair together, e.g. pip install --force-reinstall torch torchvision "
        "(with the same --index-url for both, https://pytorch.org/get-started/previous-versions/ "
        "lists the pairs); models given as package.module:factory or path/to/file.py:factory do "
        "not need torchvision"
    )


@cache
def torchvision_models() -> dict[str, str]:
    """Every torchvision model name, mapped to its category (``classification``, ``video``...)."""
    tvm = import_torchvision_models()

    categories: dict[str, str] = {}
    for category, module in (
        ("classification", tvm),
        ("quantization", tvm.quantization),
        ("segmentation", tvm.segmentation),
        ("detection", tvm.detection),
        ("video", tvm.video),
        ("optical_flow", tvm.optical_flow),
    ):
        for name in tvm.list_models(module=module):
            categories[name] = category
    for name in tvm.list_models():  # anything registered outside those modules
        categories.setdefault(name, "classification")
    return categories


def suggest_model_names(name: str, limit: int = 3) -> list[str]:
    """torchvision and real-world names close to ``name``, best first (``resnt18 ->
    ['resnet18', ...]``, ``hf_resnt -> ['hf_resnet', ...]``).  Real-world names are suggested
    even when their library is missing: resolving one then says which extra to install."""
    known = [*torchvision_models(), *REALWORLD_MODELS, *INT8_MODELS]
    return difflib.get_close_matches(name, known, n=limit, cutoff=0.6)


def _resolve_torchvision(
    name: str, batch_size: int, image_size: int | None, seed: int
) -> ResolvedModel:
    models = torchvision_models()
    if name not in models:
        raise LoweringError(_unknown_model_message(name))
    category = models[name]
    import torchvision.models as tvm

    size = image_size if image_size is not None else default_image_size(name)
    kwargs: dict = {"weights": None}
    if category in ("segmentation", "detection"):
        kwargs["weights_backbone"] = None  # its default is an ImageNet download
    if category == "detection":
        kwargs.update(_detection_kwargs(name, size))
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        if size % patch:
            raise LoweringError(
                f"{name} splits the image into {patch}x{patch} patches, so --image-size must be "
                f"a multiple of {patch}; got {size}. Fix: --image-size {max(patch, size // patch * patch)}"
            )
        kwargs["image_size"] = size  # the model is built for one size; build it for this one
    if name == "maxvit_t":
        kwargs["input_size"] = (size, size)
    if category == "optical_flow" and (size % 8 or size < 128):
        raise LoweringError(
            f"{name} needs image sides that are multiples of 8 and at least 128; got "
            f"--image-size {size}. Fix: --image-size 128"
        )
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # googlenet and inception_v3 announce a future change of their default init
            warnings.filterwarnings("ignore", "The default weight initialization", FutureWarning)
            torch.manual_seed(seed)
            model = tvm.get_model(name, **kwargs)
    except Exception as exc:
        raise LoweringError(
            f"building torchvision's {name} with {kwargs} failed: {type(exc).__name__}: {exc}"
        ) from exc
    redraw_zero_linears(model, seed)

    generator = torch.Generator().manual_seed(seed)
    image = (batch_size, 3, size, size)
    if category == "video":
        inputs: tuple[torch.Tensor, ...] = (
            torch.randn(batch_size, 3, VIDEO_FRAMES, size, size, generator=generator),
        )
    elif category == "detection":
        # A list of (C, H, W) images in [0, 1]; the model normalises and resizes them itself.
        images = [torch.rand(3, size, size, generator=generator) for _ in range(batch_size)]
        inputs = (images,)
    elif category == "optical_flow":
        inputs = (torch.randn(image, generator=generator), torch.randn(image, generator=generator))
    else:
        inputs = (torch.randn(image, generator=generator),)
    return ResolvedModel(
        spec=name,
        model=model,
        example_inputs=inputs,
        origin=f"torchvision {category}, random init, seed {seed}",
        min_image_size=_documented_min_size(name),
        preferred_dtype=torch.float64 if category == "detection" else None,
    )


def _detection_kwargs(name: str, size: int) -> dict:
    """Keep every box (random weights rarely pass the default score threshold of 0.05, which
    would leave nothing to compare), and work at the input's own size instead of resizing it to
    800 pixels, which would make a CPU run take minutes."""
    if name.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn")):
        return {"box_score_thresh": 0.0, "min_size": size, "max_size": size}
    if name.startswith(("retinanet", "fcos")):
        return {"score_thresh": 0.0, "min_size": size, "max_size": size}
    return {"score_thresh": 0.0}  # SSD and SSDlite resize to their own fixed size


def _unknown_model_message(name: str) -> str:
    if name.endswith(".py"):
        return _file_without_factory_message(name)
    message = f"unknown model {name!r}: it is not a torchvision or real-world model name."
    close = suggest_model_names(name)
    if close:
        message += f" Did you mean {', '.join(close)}?"
    return message + f" {MODEL_LIST_HINT}"


# The end of every unknown-model message: where the names are, and the other spellings.
MODEL_LIST_HINT = (
    "Run `lowerconv models` for the torchvision names and the real-world ones (from "
    "transformers, diffusers, segmentation_models_pytorch, ultralytics, kornia: the zoo extra), "
    "or pass package.module:factory or path/to/file.py:factory for your own model"
)


def _file_without_factory_message(name: str) -> str:
    """``lowerconv verify mine.py``: name the file's factories rather than guess one."""
    if not Path(name).is_file():
        return (
            f"model {name!r}: no such file. For a model defined in a file, give its path and "
            "factory: path/to/file.py:factory"
        )
    module = _import_target(name, name)
    candidates = factory_candidates(module)
    if not candidates:
        return (
            f"model {name!r}: name the factory after a ':' (path/to/file.py:factory); {name} "
            "defines no function and no nn.Module subclass to call"
        )
    return (
        f"model {name!r}: name the factory after a ':', e.g. {name}:{candidates[0]}. {name} "
        f"defines {_some(candidates, limit=8)}"
    )


def factory_candidates(module) -> list[str]:
    """The functions and ``nn.Module`` subclasses ``module`` defines itself (not imports), in
    the order it defines them: what ``file.py:factory`` may name.  Functions come first: a
    factory is usually one, and a class may need arguments."""
    own = [
        (name, value)
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    ]
    functions = [name for name, value in own if inspect.isfunction(value)]
    classes = [
        name for name, value in own if inspect.isclass(value) and issubclass(value, nn.Module)
    ]
    return functions + classes


def _first_weights(name: str):
    import torchvision.models as tvm

    try:
        return next(iter(tvm.get_model_weights(name)))
    except (StopIteration, ValueError, KeyError):
        return None


def default_image_size(name: str) -> int:
    """The input side used when ``--image-size`` is not given: the crop size of the model's
    torchvision weights (299 for inception_v3, 112 for r3d_18), else 224."""
    category = torchvision_models().get(name, "classification")
    if name.startswith("vit_") or category in ("segmentation", "optical_flow"):
        # vit's builder default (its weights' sizes vary); the others' weights resize to 520+
        return DEFAULT_IMAGE_SIZE
    return _weights_crop_size(name) or DEFAULT_IMAGE_SIZE


def _weights_crop_size(name: str) -> int | None:
    weights = _first_weights(name)
    if weights is None:
        return None
    try:
        crop = getattr(weights.transforms(), "crop_size", None)
    except Exception:  # a preset that needs arguments; fall back to the default
        return None
    return int(crop[0]) if crop else None


def _documented_min_size(name: str) -> int | None:
    weights = _first_weights(name)
    if weights is None or name.startswith("vit_"):  # vit's meta is for one pretrained size
        return None
    min_size = weights.meta.get("min_size")
    return int(min_size[0]) if min_size and min_size[0] > 1 else None


# -- real-world libraries ------------------------------------------------------------------------


def _resolve_realworld(
    name: str, batch_size: int, image_size: int | None, seed: int
) -> ResolvedModel:
    entry = REALWORLD_MODELS[name]
    if image_size is not None:
        raise LoweringError(
            f"{name} ({entry.origin}) is built for its own fixed example inputs, so --image-size "
            f"does not apply; got --image-size {image_size}. Fix: drop --image-size"
        )
    try:
        model, inputs = entry.build(seed=seed, batch_size=batch_size)
    except LoweringError:
        raise  # the library is missing: the error names the extra to install
    except Exception as exc:
        raise LoweringError(
            f"building {name} ({entry.origin}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    return ResolvedModel(
        spec=name,
        model=model,
        example_inputs=inputs,
        origin=f"{entry.origin} (config, random init, seed {seed})",
    )


def _resolve_int8(name: str, batch_size: int, image_size: int | None, seed: int) -> ResolvedModel:
    """``int8_resnet18``: torchvision's quantisable model quantised for the current engine
    (:func:`~.quantized.build_int8_model`), calibrated at the size it will be verified at."""
    builder = INT8_MODELS[name]
    size = image_size if image_size is not None else INT8_IMAGE_SIZE.get(builder, 64)
    engine = torch.backends.quantized.engine
    generator = torch.Generator().manual_seed(seed)
    inputs = (torch.randn(batch_size, 3, size, size, generator=generator),)
    try:
        # Calibrated on its example input too, so that the engine's kernels see no activation
        # outside the calibrated range (where kernels without VNNI may saturate, see
        # build_int8_model).
        model = build_int8_model(name, image_size=size, seed=seed, calibration_inputs=inputs)
    except LoweringError:
        raise
    except Exception as exc:
        raise LoweringError(
            f"building {name} (torchvision's quantized_{builder}, quantised for the {engine} "
            f"engine) at {size}x{size} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return ResolvedModel(
        spec=name,
        model=model,
        example_inputs=inputs,
        origin=(
            f"torchvision quantized_{builder} quantised for the {engine} engine, random init and "
            f"calibration, seed {seed}"
        ),
    )


# The int8_* models' default side: small enough for a quick CPU run; inception needs 75+.
INT8_IMAGE_SIZE = {"inception_v3": 160, "googlenet": 64}


# -- factories -----------------------------------------------------------------------------------


def _resolve_factory(
    spec: str, batch_size: int, image_size: int | None, seed: int
) -> ResolvedModel:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise LoweringError(
            f"model {spec!r}: expected package.module:factory or path/to/file.py:factory, "
            "with a name on both sides of the ':'"
        )
    module = _import_target(spec, target)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            candidates = factory_candidates(module)
            if set(candidates) - set(close):
                hint += f" {target} defines {_some(candidates, limit=8)}."
            raise LoweringError(f"model {spec!r}: {target} has no attribute {attr!r}.{hint}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise LoweringError(
            f"model {spec!r}: {attr} is {with_article(factory)}, not a callable; "
            "name a function (or class) that returns an nn.Module"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
    except Exception as exc:
        raise LoweringError(
            f"model {spec!r}: calling {attr}() raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise LoweringError(
            f"model {spec!r}: {attr}() returned {with_article(model)}, not an nn.Module"
        )
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    size = image_size if image_size is not None else DEFAULT_IMAGE_SIZE
    generator = torch.Generator().manual_seed(seed)
    inputs = (torch.randn(batch_size, channels, size, size, generator=generator),)
    return ResolvedModel(
        spec=spec, model=model, example_inputs=inputs, origin=f"factory, seed {seed}"
    )


def _import_target(spec: str, target: str):
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise LoweringError(f"model {spec!r}: no such file {str(path)!r}")
        module_name = f"lowerconv_user_model_{path.stem}"
        import_spec = importlib.util.spec_from_file_location(module_name, path)
        if import_spec is None or import_spec.loader is None:
            raise LoweringError(f"model {spec!r}: {path} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(import_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        # As `python path/to/file.py` does, let the file import its neighbours
        # (`from blocks import block`): its folder goes first on sys.path, for the import only.
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            import_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            hint = ""
            if isinstance(exc, ModuleNotFoundError):
                hint = (
                    f". Fix: install {exc.name!r}, or put the folder that holds it on PYTHONPATH "
                    f"({folder}, the file's own folder, is searched already)"
                )
            raise LoweringError(
                f"model {spec!r}: importing {path} raised {type(exc).__name__}: {exc}{hint}"
            ) from exc
        finally:
            with contextlib.suppress(ValueError):  # the file may have removed it itself
                sys.path.remove(folder)
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise LoweringError(
            f"model {spec!r}: cannot import {target!r} ({exc}). Fix: install it or add its "
            "folder to PYTHONPATH, or give a file path: path/to/file.py:factory"
        ) from exc
    except Exception as exc:
        raise LoweringError(
            f"model {spec!r}: importing {target} raised {type(exc).__name__}: {exc}"
        ) from exc


# -- weights -------------------------------------------------------------------------------------


def load_weights(model: nn.Module, path: str | Path, *, model_name: str = "the model") -> None:
    """Load a ``state_dict`` file into ``model``, or raise a LoweringError naming the mismatch.

    The file is read with ``torch.load(weights_only=True)``; it may hold the ``state_dict``
    itself or a dict with a ``"state_dict"`` or ``"model"`` entry (training checkpoints).  Keys
    saved from ``nn.DataParallel`` (``module.`` prefix) are accepted.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
        inside = f" (it holds {_some(found)})" if found else ""
        raise LoweringError(
            f"--weights {str(path)!r} is a directory{inside}; --weights takes one state_dict "
            "file. Fix: pass the file, e.g. --weights path/to/model.pt"
        )
    if not path.is_file():
        if re.fullmatch(r"(\w+_Weights\.)?[A-Z][A-Z0-9_]*", str(path)):
            # DEFAULT, IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V1: torchvision's names
            example = model_name if model_name in torchvision_models() else "resnet18"
            raise LoweringError(
                f"--weights {str(path)!r}: no such file. It reads like the name of torchvision's "
                "pretrained weights, and lowerconv downloads none: --weights takes a state_dict "
                'file. Fix: save them once, python -c "import torch, torchvision; '
                f"torch.save(torchvision.models.get_model('{example}', weights='{path}')"
                f".state_dict(), '{example}.pt')\", then pass --weights {example}.pt"
            )
        raise LoweringError(f"--weights {str(path)!r}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page on weights_only; what matters is whether the file holds
        # objects (a class torch will not import) or is no pickle at all
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise LoweringError(_unreadable_weights(path, exc.__context__ or exc)) from exc
        raise LoweringError(
            f"--weights {str(path)!r} holds pickled Python objects ({found.group(1)}), not only "
            "tensors (a whole model saved with torch.save(model)?), and "
            "torch.load(weights_only=True) refuses to import them. Fix: save it with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:
        raise LoweringError(_unreadable_weights(path, exc)) from exc
    state = _unwrap_state_dict(loaded, path)
    expected = model.state_dict()
    if (
        state
        and all(k.startswith("module.") for k in state)
        and not any(k.startswith("module.") for k in expected)
    ):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_some(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_some(unexpected)}")
        raise LoweringError(
            f"--weights {str(path)!r} does not match {model_name}: {'; '.join(parts)}. Fix: "
            "pass a state_dict saved from the same architecture"
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if mismatched:
        raise LoweringError(
            f"--weights {str(path)!r} does not match {model_name}: {len(mismatched)} tensor(s) "
            f"of another shape: {_some(mismatched)}"
        )
    model.load_state_dict(state)


def _unreadable_weights(path: Path, exc: Exception) -> str:
    found = "" if zipfile.is_zipfile(path) else "not a zip archive as torch.save writes; "
    lines = str(exc).strip().splitlines()
    return (
        f"--weights {str(path)!r} is not a checkpoint torch.load(weights_only=True) can read "
        f"({found}{type(exc).__name__}: {lines[0] if lines else ''}). Fix: save one with "
        "torch.save(model.state_dict(), path)"
    )


def _unwrap_state_dict(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
        if all(isinstance(k, str) for k in loaded) and any(
            isinstance(v, torch.Tensor) for v in loaded.values()
        ):
            return dict(loaded)
    raise LoweringError(
        f"--weights {str(path)!r} holds {with_article(loaded)}, not a state_dict (a dict of "
        "parameter names to tensors, optionally under 'state_dict' or 'model'). Fix: save one "
        "with torch.save(model.state_dict(), path)"
    )


def _some(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def redraw_zero_linears(model: nn.Module, seed: int) -> list[str]:
    """Redraw, from ``seed``, every ``nn.Linear`` weight that is all zeros (uniform in
    ``+-1/sqrt(in_features)``, as ``nn.Linear`` initialises itself); return their names.

    torchvision zero-initialises some classification heads (vit's ``heads.head``): at random
    init the model's output is then zero for every input, the float64 oracle's too, and the
    verifier can only call that inconclusive.  Trained weights are never zero; a model the user
    gives is never touched."""
    generator = torch.Generator().manual_seed(seed)
    redrawn = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.weight.numel() and not module.weight.any():
                bound = 1 / math.sqrt(module.in_features)
                module.weight.uniform_(-bound, bound, generator=generator)
                redrawn.append(name)
    return redrawn
