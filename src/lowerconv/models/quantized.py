"""Integer models for the command line: torchvision's quantisable models, quantised here.

``int8_resnet18`` (and one ``int8_`` name for each of torchvision's quantisation builders,
:data:`INT8_MODELS`) is ``quantized_resnet18`` converted to ``torch.ao`` quantised modules for
the current engine (``torch.backends.quantized.engine``), with random weights; the plain
``quantized_*`` names stay torchvision's float build, as the zoo has always run them.

:func:`build_int8_model` does what ``torchvision``'s ``quantize_model`` does, without touching
the engine setting or downloading weights: the float quantisable model from ``seed``; its batch
norms' statistics set from random batches (at random init, activations otherwise shrink or blow
up layer by layer, and the quantised outputs collapse to the zero point, which proves nothing);
``fuse_model()``; the engine's default ``qconfig`` (per-channel weights on fbgemm, x86 and
onednn, per-tensor on qnnpack); ``prepare``; calibration on seeded random batches; ``convert``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import LoweringError, MissingDependencyError

__all__ = ["INT8_MODELS", "INT8_PREFIX", "build_int8_model", "int8_model_names"]

INT8_PREFIX = "int8_"
# int8_<name> -> torchvision.models.quantization builder; every classification model it has.
INT8_MODELS = {
    f"{INT8_PREFIX}{name}": name
    for name in (
        "resnet18",
        "resnet50",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_0",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_x2_0",
        "googlenet",
        "inception_v3",
    )
}
CALIBRATION_BATCHES = 2


def int8_model_names() -> list[str]:
    return list(INT8_MODELS)


def build_int8_model(
    name: str,
    *,
    image_size: int = 64,
    seed: int = 0,
    engine: str | None = None,
    batch_size: int = 4,
    calibration_inputs: tuple[torch.Tensor, ...] = (),
) -> nn.Module:
    """``torchvision.models.quantization.<name>`` quantised for ``engine`` (default: the current
    one), random weights from ``seed``, batch norms and observers calibrated on seeded random
    ``(batch_size, 3, image_size, image_size)`` batches and on ``calibration_inputs``; in eval
    mode.  ``name`` is a builder name (``resnet18``) or its ``int8_`` spelling.

    Calibrate on the inputs you will verify on: the observers' ``reduce_range`` keeps
    activation codes within 0..127 for values inside the calibrated range, because x86 kernels
    without VNNI (``vpmaddubsw``) sum pairs of uint8 x int8 products in int16 and can saturate
    above it; there the engine, not the exact integer GEMM, would be off.  On CPUs with
    AVX512-VNNI no saturation shows: codes of 255 times weights of 127 sum exactly on every
    engine."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    builder = INT8_MODELS.get(name, name)
    if builder not in INT8_MODELS.values():
        raise LoweringError(
            f"no quantisable torchvision model {name!r}; choose one of {', '.join(INT8_MODELS)}"
        )
    engine = engine or torch.backends.quantized.engine
    if engine not in torch.backends.quantized.supported_engines:
        raise LoweringError(
            f"quantised engine {engine!r} is not supported by this torch build; "
            f"it has {', '.join(torch.backends.quantized.supported_engines)}"
        )
    try:
        import torchvision.models.quantization as tvq
    except Exception as exc:
        raise MissingDependencyError(
            f"{name} is built from torchvision.models.quantization, which failed to import "
            f"({type(exc).__name__}: {exc}). Fix: pip install torchvision (the build made for "
            f"torch {torch.__version__})"
        ) from exc
    previous = torch.backends.quantized.engine
    generator = torch.Generator().manual_seed(seed)

    def batch() -> torch.Tensor:
        return torch.randn(batch_size, 3, image_size, image_size, generator=generator)

    try:
        torch.backends.quantized.engine = engine
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices of torch.ao and init changes
            torch.manual_seed(seed)
            kwargs = (
                {"aux_logits": False, "init_weights": True}
                if builder
                in (
                    "googlenet",
                    "inception_v3",
                )
                else {}
            )
            model = getattr(tvq, builder)(weights=None, quantize=False, **kwargs)
            _calibrate_batch_norms(model, batch)
            model.eval()
            model.fuse_model()
            model.qconfig = get_default_qconfig(engine)
            prepare(model, inplace=True)
            with torch.no_grad():
                for _ in range(CALIBRATION_BATCHES):
                    model(batch())
                for x in calibration_inputs:
                    model(x)
            convert(model, inplace=True)
    finally:
        torch.backends.quantized.engine = previous
    return model.eval()


def _calibrate_batch_norms(model: nn.Module, batch) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            model(batch())
    for norm in norms:
        norm.momentum = 0.1
