"""The floor of an explicit-im2col lowering on a GPU, per layer and per model.

    python benchmarks/gpu_floor.py                       # 10 models, batch 32, float32 + TF32
    python benchmarks/gpu_floor.py --dtype float16 --models resnet18,convnext_tiny

An explicit lowering writes the column matrix and reads it back; cuDNN's implicit GEMM never
builds it.  So, per conv layer (each distinct configuration of the model's ``Conv2d`` layers at
224x224, on a random input of the shape it really gets):

- ``floor``: the column matrix's bytes, written once and read once, at the device's measured
  copy bandwidth (a large device-to-device copy, bytes read plus written), plus the cuBLAS GEMM
  on ready columns alone (``W @ columns``, batched per group; a batched GEMV for depthwise);
  1x1 convs have no columns: their floor is the GEMM;
- ``native``: ``F.conv2d`` (cuDNN);
- ``plan``: what a lowered model runs on CUDA (:func:`lowerconv.lowering.cuda_plan.cuda_conv`).

Per model, the floor ratio is the model's native forward with each conv's time replaced by its
floor: ``(native_model - sum(native layers) + sum(floor layers)) / native_model``.  A lowered
model's ratio in ``benchmarks/run.py --devices cuda`` reads against it.  Nothing is asserted;
``docs/performance.md`` (its cuda section) quotes the results.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DTYPES, MODELS  # the same models and dtypes as the main benchmark

from lowerconv import ConvSpec
from lowerconv.lowering.cuda_plan import cuda_conv


def cuda_time_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` by CUDA events, after a warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def copy_bandwidth(dtype: torch.dtype) -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting bytes read and written."""
    source = torch.randn(2**28, device="cuda").to(dtype)
    target = torch.empty_like(source)
    ms = cuda_time_ms(lambda: target.copy_(source), 10)
    return 2 * source.numel() * source.element_size() / (ms * 1e-3)


def conv_census(name: str, batch: int) -> collections.Counter:
    """``(ConvSpec, input shape) -> count`` of the model's ``Conv2d`` layers."""
    model = getattr(torchvision.models, name)().eval()
    census: collections.Counter = collections.Counter()

    def record(module, inputs, output):
        census[(ConvSpec.from_module(module), (batch, *inputs[0].shape[1:]))] += 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m) is torch.nn.Conv2d]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    return census


def layer_floor(spec: ConvSpec, shape, dtype, bandwidth: float, repeats: int) -> dict:
    x = torch.randn(shape, device="cuda", dtype=dtype)
    w = torch.randn(spec.out_channels, spec.in_per_group, *spec.kernel_size, device="cuda")
    w = w.to(dtype)
    b = torch.randn(spec.out_channels, device="cuda", dtype=dtype) if spec.bias else None
    padded = F.pad(x, spec.pad) if any(spec.pad) else x
    native_padding = spec.symmetric_padding
    if native_padding is None:
        native_x, native_padding = padded, 0
    else:
        native_x = x
    native = cuda_time_ms(
        lambda: F.conv2d(native_x, w, b, spec.stride, native_padding, spec.dilation, spec.groups),
        repeats,
    )
    n, g = shape[0], spec.groups
    out_h, out_w = spec.output_hw(*shape[2:])
    pixels = out_h * out_w
    if spec.is_depthwise:
        columns = torch.randn(n, spec.in_channels, spec.kernel_numel, pixels, device="cuda")
        columns = columns.to(dtype)
        weight_matrix = w.reshape(spec.in_channels, spec.out_per_group, spec.kernel_numel)
    else:
        columns = torch.randn(n, g, spec.patch_size, pixels, device="cuda").to(dtype)
        weight_matrix = w.reshape(g, spec.out_per_group, spec.patch_size)
    gemm = cuda_time_ms(lambda: torch.matmul(weight_matrix, columns), repeats)
    column_bytes = 0 if spec.is_pointwise else spec.im2col_bytes(*shape[:1], *shape[2:], dtype)
    floor = gemm + 2 * column_bytes / bandwidth * 1e3
    plan = cuda_time_ms(lambda: cuda_conv(x, w, b, spec), repeats)
    return {"native_ms": native, "floor_ms": floor, "gemm_ms": gemm, "plan_ms": plan}


def model_floor(name, batch, dtype, bandwidth, repeats) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval().cuda().to(dtype)
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
    with torch.no_grad():
        native_model = cuda_time_ms(lambda: model(x), repeats)
        layers = []
        for (spec, shape), count in conv_census(name, batch).items():
            layer = layer_floor(spec, shape, dtype, bandwidth, repeats)
            layers.append({"layer": f"{spec.describe()} {list(shape)}", "count": count, **layer})
    keys = ("native_ms", "floor_ms", "plan_ms")
    total = {key: sum(layer[key] * layer["count"] for layer in layers) for key in keys}
    floor_model = native_model - total["native_ms"] + total["floor_ms"]
    plan_model = native_model - total["native_ms"] + total["plan_ms"]
    return {
        "model": name,
        "native_model_ms": native_model,
        "conv_share": total["native_ms"] / native_model,
        "floor_ratio": floor_model / native_model,
        "plan_layers_ratio": plan_model / native_model,
        "layers": layers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--no-tf32", action="store_true", help="strict float32 GEMMs and convs")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_floor.py measures a CUDA device; none is available", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    tf32 = not args.no_tf32
    # Like with like: the native conv and the GEMMs at one precision (saved and restored).
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        bandwidth = copy_bandwidth(dtype)
        print(
            f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.dtype}"
            f"{' (TF32 on)' if tf32 and dtype == torch.float32 else ''}, batch {args.batch}, "
            f"copy bandwidth {bandwidth / 1e12:.2f} TB/s",
            flush=True,
        )
        print("| model | native ms | conv share | floor / native | plan layers / native |")
        print("|---|---:|---:|---:|---:|")
        results = []
        for name in [m for m in args.models.split(",") if m]:
            r = model_floor(name, args.batch, dtype, bandwidth, args.repeats)
            results.append(r)
            print(
                f"| {name} | {r['native_model_ms']:.2f} | {r['conv_share']:.0%} | "
                f"{r['floor_ratio']:.2f}x | {r['plan_layers_ratio']:.2f}x |",
                flush=True,
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    if args.json:
        command = " ".join(["python benchmarks/gpu_floor.py", *(argv if argv else sys.argv[1:])])
        data = {"bandwidth": bandwidth, "command": command, "models": results}
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
