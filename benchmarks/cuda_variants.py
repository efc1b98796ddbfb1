"""The measurements behind the CUDA plan: candidate lowerings of each conv form, per layer, on GPU.

    python benchmarks/cuda_variants.py                  # every layer, batch 1 and 32
    python benchmarks/cuda_variants.py --batches 32 --layers r18_3x3

Each candidate is a plain PyTorch function (pad, strided views, one copy, a GEMM: no conv op);
each layer times the native ``F.conv2d`` and every candidate that applies, interleaved, with
CUDA events, and prints medians and ratios to native.  Modes: float32 with TF32 allowed for both
cuDNN and cuBLAS (like with like), and float16; a forward plus backward row at batch 32 in float32.
This is what chose the forms in :mod:`lowerconv.lowering.cuda_plan`; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

# name: (C_in, C_out, kernel, stride, padding, groups, H)
LAYERS = {
    "r18_3x3": (64, 64, 3, 1, 1, 1, 56),
    "r50_3x3s2": (128, 128, 3, 2, 1, 1, 56),
    "r18_3x3_14": (256, 256, 3, 1, 1, 1, 14),
    "stem7x7s2": (3, 64, 7, 2, 3, 1, 224),
    "stem3x3s2": (3, 32, 3, 2, 1, 1, 224),
    "pw_256_64": (256, 64, 1, 1, 0, 1, 56),
    "pw_s2": (256, 512, 1, 2, 0, 1, 56),
    "dw3x3_144": (144, 144, 3, 1, 1, 144, 56),
    "dw3x3s2_144": (144, 144, 3, 2, 1, 144, 56),
    "dw5x5_240": (240, 240, 5, 1, 2, 240, 28),
    "dw7x7_96": (96, 96, 7, 1, 3, 96, 56),
    "dw7x7_768": (768, 768, 7, 1, 3, 768, 7),
    "patch16": (3, 768, 16, 16, 0, 1, 224),
    "patch4": (3, 96, 4, 4, 0, 1, 224),
    "down2x2": (96, 192, 2, 2, 0, 1, 56),
    "grp3x3_208": (208, 208, 3, 1, 1, 26, 14),
    "grp3x3s2_104": (104, 104, 3, 2, 1, 13, 56),
}


def windows(x, k, s, p):
    """(N, C, OH, OW, k, k) views of the zero-padded input."""
    if p:
        x = F.pad(x, (p, p, p, p))
    return x.unfold(2, k, s).unfold(3, k, s)


def channel_major(x, w, b, k, s, p, g):
    """Columns (N, g, C/g*k*k, P) by one copy, then W (g, O/g, C/g*k*k) @ columns: NCHW out."""
    n, c = x.shape[:2]
    v = windows(x, k, s, p)
    oh, ow = v.shape[2], v.shape[3]
    cols = v.permute(0, 1, 4, 5, 2, 3).reshape(n, g, (c // g) * k * k, oh * ow)
    wm = w.reshape(g, w.shape[0] // g, -1)
    out = torch.matmul(wm, cols)
    if b is not None:
        out = out + b.view(g, -1, 1)
    return out.reshape(n, w.shape[0], oh, ow)


def channel_major_baddbmm(x, w, b, k, s, p, g):
    """The same, with the bias fused into the GEMM (one-group convs)."""
    n, c = x.shape[:2]
    v = windows(x, k, s, p)
    oh, ow = v.shape[2], v.shape[3]
    cols = v.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k * k, oh * ow)
    wm = w.reshape(1, w.shape[0], -1).expand(n, -1, -1)
    out = torch.baddbmm(b.view(1, -1, 1), wm, cols)
    return out.view(n, w.shape[0], oh, ow)


def row_major(x, w, b, k, s, p, g):
    """Columns (N*P, C*k*k) in channels-last order by one copy, addmm, then NCHW by a copy."""
    n, c = x.shape[:2]
    v = windows(x, k, s, p)
    oh, ow = v.shape[2], v.shape[3]
    cols = v.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k)
    out = torch.addmm(b, cols, w.reshape(w.shape[0], -1).t())
    return out.view(n, oh, ow, -1).permute(0, 3, 1, 2).contiguous()


def row_major_cl(x, w, b, k, s, p, g):
    """Row-major columns from a channels-last input, addmm, channels-last output (no copy)."""
    n, c = x.shape[:2]
    v = windows(x, k, s, p)
    oh, ow = v.shape[2], v.shape[3]
    cols = v.permute(0, 2, 3, 4, 5, 1).reshape(n * oh * ow, k * k * c)
    wm = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    out = torch.addmm(b, cols, wm.t())
    return out.view(n, oh, ow, -1).permute(0, 3, 1, 2)


def unfold_matmul(x, w, b, k, s, p, g):
    """The textbook lowering: F.unfold (one im2col kernel per image) + matmul."""
    n = x.shape[0]
    cols = F.unfold(x, k, padding=p, stride=s)
    oh = (x.shape[2] + 2 * p - k) // s + 1
    out = torch.matmul(w.reshape(g, w.shape[0] // g, -1), cols.unflatten(1, (g, -1)))
    out = out.flatten(1, 2) + b.view(-1, 1)
    return out.view(n, w.shape[0], oh, -1)


def pointwise(x, w, b, k, s, p, g):
    """1x1: W (O, C) @ x (N, C, HW), a batched GEMM over the planes as they lie."""
    if s > 1:
        x = x[:, :, ::s, ::s]
    n, c, h, wd = x.shape
    out = torch.matmul(w.view(w.shape[0], c), x.reshape(n, c, h * wd))
    return (out + b.view(-1, 1)).view(n, -1, h, wd)


def dw_gather_bmm(x, w, b, k, s, p, g):
    """Depthwise: columns (N, C, P, k*k) by one copy, then a batched GEMV with (C, k*k, 1)."""
    n, c = x.shape[:2]
    v = windows(x, k, s, p)
    oh, ow = v.shape[2], v.shape[3]
    cols = v.reshape(n, c, oh * ow, k * k)
    out = torch.matmul(cols, w.view(c, k * k, 1)).view(n, c, oh, ow)
    return out + b.view(-1, 1, 1)


def dw_gather_kp(x, w, b, k, s, p, g):
    """Depthwise: columns (N, C, k*k, P), then (C, 1, k*k) @ columns."""
    n, c = x.shape[:2]
    v = windows(x, k, s, p)
    oh, ow = v.shape[2], v.shape[3]
    cols = v.permute(0, 1, 4, 5, 2, 3).reshape(n, c, k * k, oh * ow)
    out = torch.matmul(w.view(c, 1, k * k), cols).view(n, c, oh, ow)
    return out + b.view(-1, 1, 1)


def dw_mul_sum(x, w, b, k, s, p, g):
    """Depthwise: (views * weight).sum over taps: one fused-ish reduction over a k*k product."""
    c = x.shape[1]
    v = windows(x, k, s, p)
    out = (v * w.view(1, c, 1, 1, k, k)).sum((-1, -2))
    return out + b.view(-1, 1, 1)


def dw_taps(x, w, b, k, s, p, g):
    """Depthwise: k*k shifted views times per-channel weights, summed (2*k*k kernels eager)."""
    c = x.shape[1]
    v = windows(x, k, s, p)
    out = b.view(1, -1, 1, 1) + v[..., 0, 0] * w[:, 0, 0, 0].view(1, c, 1, 1)
    for i in range(k):
        for j in range(k):
            if i or j:
                out = out + v[..., i, j] * w[:, 0, i, j].view(1, c, 1, 1)
    return out


def candidates(c_in, c_out, k, s, p, g):
    found = {"unfold": unfold_matmul, "cm": channel_major}
    if g == 1:
        found.update(cm_baddbmm=channel_major_baddbmm, rm=row_major, rm_cl=row_major_cl)
    if k == 1:
        found["pointwise"] = pointwise
    if g == c_in and g > 1:
        found.update(
            dw_bmm=dw_gather_bmm, dw_kp=dw_gather_kp, dw_mulsum=dw_mul_sum, dw_taps=dw_taps
        )
    return found


def time_all(fns: dict, repeats: int, backward: bool = False) -> dict[str, float]:
    samples: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(3):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    for _ in range(repeats):
        for key, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[key].append(start.elapsed_time(end))
    return {key: statistics.median(v) for key, v in samples.items()}


def run_layer(name, batch, dtype, repeats, train):
    c_in, c_out, k, s, p, g, h = LAYERS[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, c_in, h, h, device="cuda", dtype=dtype, generator=gen)
    w = torch.randn(c_out, c_in // g, k, k, device="cuda", dtype=dtype, generator=gen) * 0.1
    b = torch.randn(c_out, device="cuda", dtype=dtype, generator=gen)
    ref = F.conv2d(x.double(), w.double(), b.double(), s, p, 1, g)
    fns = {"native": lambda: F.conv2d(x, w, b, s, p, 1, g)}
    errors = {}
    for key, fn in candidates(c_in, c_out, k, s, p, g).items():
        xin = x.contiguous(memory_format=torch.channels_last) if key == "rm_cl" else x
        out = fn(xin, w, b, k, s, p, g)
        errors[key] = ((out.double() - ref).norm() / ref.norm()).item()
        fns[key] = lambda fn=fn, xin=xin: fn(xin, w, b, k, s, p, g)
    if train:
        xs = {key: x.detach().clone().requires_grad_() for key in fns}
        ws = {key: w.detach().clone().requires_grad_() for key in fns}
        grad = torch.randn_like(ref, dtype=dtype)
        all_fns = candidates(c_in, c_out, k, s, p, g)

        def step(key):
            if key == "native":
                out = F.conv2d(xs[key], ws[key], b, s, p, 1, g)
            else:
                out = all_fns[key](xs[key], ws[key], b, k, s, p, g)
            out.backward(grad)

        fns = {key: (lambda key=key: step(key)) for key in fns if key != "rm_cl"}
    times = time_all(fns, repeats)
    native = times.pop("native")
    row = "  ".join(f"{key}={t / native:5.2f}x" for key, t in times.items())
    worst = max(errors.values()) if errors else 0.0
    label = f"{name:14s} b{batch:<3d} {str(dtype)[6:]:8s} {'train' if train else 'fwd':5s}"
    print(f"{label} native {native:7.3f} ms  {row}  (max rel err {worst:.1e})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--batches", default="32,1")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False
    print(torch.__version__, torch.cuda.get_device_name(0), "TF32 on for cuDNN and cuBLAS")
    layers = args.layers.split(",")
    for batch in (int(b) for b in args.batches.split(",")):
        for dtype in (torch.float32, torch.float16):
            for name in layers:
                run_layer(name, batch, dtype, args.repeats, train=False)
    for name in layers:
        run_layer(name, 32, torch.float32, args.repeats, train=True)


if __name__ == "__main__":
    main()
