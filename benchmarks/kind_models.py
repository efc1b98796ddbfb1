"""Models whose convolutions are not (all) 2-D, for ``benchmarks/run.py --kind-models``.

Each entry builds a model (random weights, seed 0, eval mode) and its input for a batch size:

- ``r3d_18``: torchvision's 3-D ResNet (``Conv3d`` throughout), on 8x112x112 clips;
- ``dcgan_generator``: the DCGAN generator (Radford et al. 2016): five ``ConvTranspose2d`` from a
  100-d code to a 64x64 image;
- ``conv1d_encoder``: a speech feature encoder of seven ``Conv1d`` (wav2vec 2.0's layout) on one
  second of 16 kHz audio.

:func:`measure_kind_model` times native against lowered interleaved, as ``run.py`` does for the
2-D models, and takes the peak memory of one forward at the largest batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from harness import compare_forwards, lower_each, peak_memory_ratios
from torch import nn


def dcgan_generator(latent: int = 100, width: int = 64) -> nn.Module:
    def up(cin: int, cout: int, stride: int, padding: int) -> list[nn.Module]:
        return [
            nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    return nn.Sequential(
        *up(latent, width * 8, 1, 0),  # 1x1 -> 4x4
        *up(width * 8, width * 4, 2, 1),  # 8x8
        *up(width * 4, width * 2, 2, 1),  # 16x16
        *up(width * 2, width, 2, 1),  # 32x32
        nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False),  # 64x64
        nn.Tanh(),
    )


def conv1d_encoder(channels: int = 512) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 1
    for kernel, stride in [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]:
        layers += [nn.Conv1d(cin, channels, kernel, stride, bias=False), nn.GELU()]
        cin = channels
    return nn.Sequential(*layers)


KIND_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[int, ...]], str]] = {
    "r3d_18": (
        lambda: torchvision.models.video.r3d_18(),
        lambda batch: (batch, 3, 8, 112, 112),
        "Conv3d",
    ),
    "dcgan_generator": (dcgan_generator, lambda batch: (batch, 100, 1, 1), "ConvTranspose2d"),
    "conv1d_encoder": (conv1d_encoder, lambda batch: (batch, 1, 16000), "Conv1d"),
}


def measure_kind_model(name, device, batches, strategies, args) -> dict:
    """Native against each lowering of ``name``, interleaved, per batch; and peak memory."""
    build, shape, kind = KIND_MODELS[name]
    torch.manual_seed(0)
    model = build().eval().to(device)
    lowered, lower_seconds, chosen = lower_each(model, strategies)
    entry: dict = {
        "model": name,
        "kind": kind,
        "device": device.type,
        "lower_seconds": lower_seconds,
        "chosen": chosen,
        "batches": {},
    }
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.randn(shape(batch), generator=generator).to(device)
        result = compare_forwards(model, lowered, x, repeats=args.repeats, device=device)
        entry["batches"][str(batch)] = {"input": list(x.shape), **result}
        line = " ".join(f"{s}={result['strategies'][s]['ratio']:.2f}x" for s in strategies)
        native_ms = result["native"]["median_ms"]
        print(f"  {name:20s} batch {batch}: native {native_ms:8.1f} ms  {line}", flush=True)
    x = torch.randn(shape(max(batches)), generator=generator).to(device)
    entry["peak_memory"] = peak_memory_ratios(model, lowered, x, device)
    return entry
