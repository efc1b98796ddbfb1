"""The model sources: what ``lowerconv verify MODEL``, ``graph`` and ``zoo`` lower and verify.

In the order data flows through it:

- :mod:`.realworld`  real-world models from libraries outside torchvision (transformers,
  diffusers, segmentation_models_pytorch, ultralytics, kornia), each built from a small config
  with random weights, with its own example inputs
- :mod:`.resolve`    a MODEL string (a torchvision or real-world name, ``package.module:factory``,
  ``path/to/file.py:factory``) -> the model and its example inputs (:class:`ResolvedModel`);
  ``--weights`` files
- :mod:`.zoo`        the zoo run: every model resolved, lowered (:mod:`lowerconv.lowering`) and
  verified (:mod:`lowerconv.verification`), one row each, the table ``docs/zoo.md``

What :mod:`.resolve` exports is re-exported here, as ``lowerconv.models`` (then one module)
exported it in 0.1: ``from lowerconv.models import resolve_model`` still works.
"""

from .resolve import (
    CATEGORIES,
    DEFAULT_IMAGE_SIZE,
    VIDEO_FRAMES,
    ResolvedModel,
    default_image_size,
    factory_candidates,
    load_weights,
    resolve_model,
    suggest_model_names,
    torchvision_models,
)
from .resolve import MODEL_LIST_HINT as MODEL_LIST_HINT  # a name of lowerconv.models in 0.1

__all__ = [
    "CATEGORIES",
    "DEFAULT_IMAGE_SIZE",
    "VIDEO_FRAMES",
    "ResolvedModel",
    "default_image_size",
    "factory_candidates",
    "load_weights",
    "resolve_model",
    "suggest_model_names",
    "torchvision_models",
]
