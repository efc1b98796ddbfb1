"""The model sources: what ``lowerconv verify MODEL``, ``graph`` and ``zoo`` lower and verify.

In the order data flows through it:

- :mod:`.realworld`  real-world models from libraries outside torchvision (transformers,
  diffusers, segmentation_models_pytorch, ultralytics, kornia), each built from a small config
  with random weights, with its own example inputs
- :mod:`.quantized`  integer models: torchvision's quantisable models quantised for the current
  engine (``int8_resnet18``...), batch norms and observers calibrated on seeded random data
- :mod:`.resolve`    a MODEL string (a torchvision or real-world name, ``package.module:factory``,
  ``path/to/file.py:factory``) -> the model and its example inputs (:class:`ResolvedModel`);
  ``--weights`` files
- :mod:`.zoo`        the zoo run: every model resolved, lowered (:mod:`lowerconv.lowering`) and
  verified (:mod:`lowerconv.verification`), one row each, the table ``docs/zoo.md``

What :mod:`.resolve` exports is re-exported here, as ``lowerconv.models`` (then one module)
exported it in 0.1: ``from lowerconv.models import resolve_model`` still works.
"""

# What lowerconv.models exported in 0.1, when it was one module: ``X as X`` re-exports each.
from .resolve import CATEGORIES as CATEGORIES
from .resolve import DEFAULT_IMAGE_SIZE as DEFAULT_IMAGE_SIZE
from .resolve import MODEL_LIST_HINT as MODEL_LIST_HINT
from .resolve import VIDEO_FRAMES as VIDEO_FRAMES
from .resolve import ResolvedModel as ResolvedModel
from .resolve import default_image_size as default_image_size
from .resolve import factory_candidates as factory_candidates
from .resolve import load_weights as load_weights
from .resolve import redraw_zero_linears as redraw_zero_linears
from .resolve import resolve_model as resolve_model
from .resolve import suggest_model_names as suggest_model_names
from .resolve import torchvision_models as torchvision_models
