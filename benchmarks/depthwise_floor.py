"""How close can a depthwise conv made of standard ops come to PyTorch's own kernel?

    python benchmarks/depthwise_floor.py [--threads N] [--repeats N] [--batches 8,1]
                                         [--models mobilenet_v2,...]

Every depthwise layer of the models (224x224 input), at each batch size, alone on a random input
of its shape, interleaved with native ``F.conv2d``, the median of ``--repeats`` rounds, as a ratio
lowered/native:

- ``auto``: what a lowered model runs (:func:`lowerconv.lowering.kernels.depthwise_taps`);
- ``floor``: ``kh*kw`` in-place multiply-adds (``addcmul_``, a per-plane scale) of one
  contiguous output-sized tensor into another, in blocks of planes that stay in cache, and
  nothing else: no shifted views, no padding, no layout copies, no input larger than the
  output (a strided conv reads ``sh*sw`` times more).  A depthwise conv computed as a sum over
  kernel taps of elementwise ops costs about this at least;
- ``toeplitz`` (unstrided layers): the GEMM formulation, a banded ``(Wp, OW)`` matrix per
  channel and kernel row, batched over channels (``kh`` ``baddbmm`` calls on the padded input's
  rows): it multiplies ``Wp/kw`` times more, in ``C`` small GEMMs per call.

Then, per model, the same ratios over the sum of its depthwise layers' times.  A measurement,
not a test: nothing is asserted.  ``docs/performance.md`` quotes its results.
"""

from __future__ import annotations

import argparse
import collections
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import time_interleaved

from lowerconv.lowering.kernels import depthwise_taps

MODELS = ["mobilenet_v2", "mnasnet1_0", "efficientnet_b0", "convnext_tiny"]
COLUMNS = ("auto", "floor", "toeplitz")


def depthwise_layers(name: str) -> collections.Counter:
    """``(channels, side, kernel, stride, padding) -> count`` of the model's depthwise convs."""
    model = getattr(torchvision.models, name)().eval()
    layers: collections.Counter = collections.Counter()

    def record(module, inputs, output):
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            side = inputs[0].shape[-1]
            kernel, stride, padding = module.kernel_size[0], module.stride[0], module.padding[0]
            layers[(module.in_channels, side, kernel, stride, padding)] += 1

    convs = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    hooks = [conv.register_forward_hook(record) for conv in convs]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    return layers


def toeplitz_depthwise(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """An unstrided depthwise conv as ``kh`` batched GEMMs of banded matrices (one per channel
    and kernel row) with the padded input's rows; its images stacked, one GEMM per channel."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    hp, wp = h + 2 * padding, w + 2 * padding
    out_h, out_w = hp - kh + 1, wp - kw + 1
    # (C, N*Hp, Wp): each channel's padded rows, all images stacked.
    rows = F.pad(x.transpose(0, 1), (padding,) * 4).reshape(c, n * hp, wp)
    # band[c, i, u, t] = weight[c, i, u - t] where 0 <= u - t < kw.
    u, t = torch.arange(wp)[:, None], torch.arange(out_w)[None, :]
    j = u - t
    band = weight.reshape(c, kh, kw)[:, :, j.clamp(0, kw - 1)] * ((j >= 0) & (j < kw))
    m = n * hp - (kh - 1)
    out = x.new_empty(c, n * hp, out_w)
    torch.bmm(rows[:, :m], band[:, 0], out=out[:, :m])
    for i in range(1, kh):
        out[:, :m].baddbmm_(rows[:, i : i + m], band[:, i])
    # Row r of image b is output row r when r < OH (the rest straddle two images).
    return out.view(c, n, hp, out_w)[:, :, :out_h].transpose(0, 1)


def layer_ratios(batch, channels, side, kernel, stride, padding, repeats):
    x = torch.randn(batch, channels, side, side)
    weight = torch.randn(channels, 1, kernel, kernel)
    out_side = (side + 2 * padding - kernel) // stride + 1
    acc = torch.empty(batch, channels, out_side, out_side)
    source = torch.randn_like(acc)
    scales = torch.randn(kernel * kernel, channels, 1, 1)

    # Blocks of whole images and channels, each block's two tensors within 2 MiB (an L2 cache
    # here), all taps of a block before the next: what keeps large outputs in cache.
    plane_bytes = 2 * out_side * out_side * acc.element_size()
    block = max(1, 2 * 2**20 // plane_bytes)
    flat_acc, flat_source = acc.view(-1, out_side, out_side), source.view(-1, out_side, out_side)
    plane_scales = scales.repeat(1, batch, 1, 1)

    def floor():
        for p0 in range(0, batch * channels, block):
            a, b = flat_acc[p0 : p0 + block], flat_source[p0 : p0 + block]
            torch.mul(b, plane_scales[0, p0 : p0 + block], out=a)
            for tap in range(1, kernel * kernel):
                a.addcmul_(b, plane_scales[tap, p0 : p0 + block])

    pad4 = (padding,) * 4
    candidates = {
        "native": lambda: F.conv2d(x, weight, None, stride, padding, 1, channels),
        "auto": lambda: depthwise_taps(
            x, weight, None, (kernel, kernel), (stride, stride), (1, 1), pad4
        ),
        "floor": floor,
    }
    if stride == 1:
        want = F.conv2d(x, weight, None, 1, padding, 1, channels)
        torch.testing.assert_close(toeplitz_depthwise(x, weight, padding), want)
        candidates["toeplitz"] = lambda: toeplitz_depthwise(x, weight, padding).contiguous()
    with torch.no_grad():
        timings = time_interleaved(candidates, repeats=repeats, device=x.device, min_seconds=0.02)
    return {name: timing.median for name, timing in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batches", default="8,1")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: depthwise_layers(name) for name in args.models.split(",")}
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {machine}, {args.threads} thread(s), median of")
    print(f"{args.repeats} interleaved rounds, time/native\n")
    for batch in (int(b) for b in args.batches.split(",")):
        times = {}
        print(f"### batch {batch}\n")
        header = ["C x side", "kernel", "native ms", *COLUMNS]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for key in sorted({key for layers in models.values() for key in layers}):
            channels, side, kernel, stride, _ = key
            times[key] = layer_ratios(batch, *key, args.repeats)
            native = times[key]["native"]
            cells = [f"{channels}x{side}", f"{kernel}x{kernel} s{stride}", f"{native * 1e3:.2f}"]
            cells += [f"{times[key][c] / native:.2f}x" if c in times[key] else "" for c in COLUMNS]
            print("| " + " | ".join(cells) + " |", flush=True)
        print("\nPer model, over the sum of its depthwise layers (toeplitz: unstrided ones):\n")
        print("| model | native ms | " + " | ".join(COLUMNS) + " |")
        print("|---|---|" + "---|" * len(COLUMNS))
        for name, layers in models.items():
            total = collections.Counter()
            unstrided = collections.Counter()
            for key, count in layers.items():
                for column, seconds in times[key].items():
                    total[column] += count * seconds
                    if key[3] == 1:
                        unstrided[column] += count * seconds
            cells = [name, f"{total['native'] * 1e3:.1f}"]
            cells += [f"{total[c] / total['native']:.2f}x" for c in COLUMNS[:2]]
            cells.append(f"{unstrided['toeplitz'] / unstrided['native']:.2f}x")
            print("| " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
