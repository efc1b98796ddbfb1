"""``docs/performance.md`` and its plot, from the results ``benchmarks/run.py`` measured."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_markdown", "write_plot"]

HEADER = """\
# Performance

How fast a lowered model runs against the same model with PyTorch's own convolutions, how much
memory it needs, how long `lowerconv.lower()` takes, and what a training step costs. Generated
by `{command}` (the numbers below are one run of it; the raw data is in
`benchmarks/results.json`).

**How it is measured.** torchvision models with random weights, `eval()`, float32, inputs
`(N, 3, {size}, {size})`. In one process, the native model and each lowering run *interleaved*,
one forward of each per round, {repeats} rounds after a warm-up; a ratio is lowered/native of the
medians, so below 1 is faster than native. The geometric mean is over all models and both batch
sizes. Peak memory is the most bytes a forward had allocated at once (CPU: the allocation events
PyTorch's allocator reports to the profiler), lowered/native, at batch {peak_batch}.

Machine: {processor}, {threads} intra-op thread(s), torch {torch}, {date}. It is a small shared
machine: when other jobs run beside it, single timings swing by tens of percent; the
interleaving and the medians keep the *ratios* steadier than the times.{thread_note}

The strategies (see `lowerconv.lowering.strategies`): `unfold` is the textbook `F.unfold` + matmul +
reshape; `auto` picks per convolution (the per-layer measurements behind each rule:
`python benchmarks/auto_rules.py`): `pointwise` for 1x1 convs (a GEMM on the NCHW planes as
they lie), `depthwise` (a sum of shifted views times per-channel weights, no im2col buffer),
`taps` for stride-1 convs (one GEMM per kernel tap on a shifted view of the flattened padded
input, added in place: no im2col buffer; a batched GEMM per group for grouped convs; on CPU,
one-group outputs under 28x28 pixels, and every one-group float32 conv on CPUs whose GEMMs
run on oneDNN, run `nhwc`'s im2col instead), `nchw` for kernel == stride
convs, strided grouped convs and 3-channel stems (channel-major im2col and a matmul per group,
in chunks, writing NCHW directly) and `nhwc` for the rest (channels-last im2col in chunks of at
most 8 MiB, each multiplied by one GEMM). The CPU float32 GEMM engine is `torch.matmul` (MKL) on
Intel CPUs and oneDNN's matmul elsewhere (on AMD CPUs MKL's `sgemm` ran at about half its
speed); `LOWERCONV_GEMM=onednn|blas` overrides it. No convolution op runs in any lowered model,
forward or backward.

Where `auto` still loses time (see the slowest layers below): depthwise convs above all. Each
kernel tap is one elementwise multiply-add over the output, where the native kernel makes one
fused pass: 3x3 layers run 1.2-4.7x native, 5x5 and 7x7 ones 3.5-11x. `python
benchmarks/depthwise_floor.py` times, per layer, the floor of any such sum (`kh*kw`
multiply-adds of one contiguous output-sized tensor into another, in cache-sized blocks, nothing
else). Measured at batch 8: the floor alone is 0.7-1.6x native for 3x3 layers and 2.7-6.2x for
5x5 and 7x7; `auto` is within 1.1-2x of it on unstrided layers (the rest is the channels-last
path's layout copies on small planes), and 2-6x of it on strided ones, whose input, `sh*sw`
times the output's size, is transposed or read with strides. A banded-matrix GEMM per kernel row
(one small GEMM per channel) ran 2.5-27x native. Over their depthwise layers at batch 8 (and
1), the floor is 1.5x (1.4x) native for mnasnet1_0, 1.2x (1.7x) for efficientnet_b0 and 5.8x
(4.5x) for convnext_tiny: no sum of elementwise passes brings their depthwise convs to native
speed, in training either (the backward is `kh*kw` more passes for `dW` and as many for `dX`).
mobilenet_v2's all-3x3 layers have a floor of 0.8x (1.0x) against 1.9x (2.7x) for `auto`: there
the strided layers' input and the small planes' layout copies are what is left.

Then regnet's grouped convs with groups of 8 channels, strided (about 3x, `nchw`) and
unstrided (2-3x, `taps`), and 3x3 stride-2 3-channel stems (1.5-2.5x), whose GEMM is too thin
to hide the im2col copy (7x7 stems gather their columns from the input's stride phases: 1.2-1.3x
at batch 8 in isolation, from 1.7-1.8x).
"""


ONE_THREAD_NOTE = """ One thread (`--threads 1`): on
two cores shared with other jobs, two threads made every op wait at OpenMP's barriers for a
descheduled thread, native models included (a native mobilenet_v2 training step took longer with
two threads than with one), which measures the machine's load more than the code. With one thread
PyTorch's own 1x1 convolutions run on its im2col-free path rather than oneDNN (the
`use_mkldnn` rule), as fast as the lowered 1x1 GEMM here; with two or more threads native 1x1
convs run on oneDNN."""


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def write_markdown(results: dict, path: Path, plot: Path | None) -> None:
    env, config = results["environment"], results["config"]
    strategies, batches = config["strategies"], config["batches"]
    lines = [
        HEADER.format(
            command=config.get("command", "python benchmarks/run.py"),
            size=config["image_size"],
            repeats=config["repeats"],
            peak_batch=max(batches),
            processor=env["processor"],
            threads=env["threads"],
            torch=env["torch"],
            date=env["date"],
            thread_note=ONE_THREAD_NOTE if env["threads"] == 1 else "",
        )
    ]
    for device, per_strategy in results["summary"].items():
        lines += [f"## Summary ({device})", ""]
        device_config = results.get("configs", {}).get(device, config)
        strategies, batches = device_config["strategies"], device_config["batches"]
        if device != "cpu":
            lines += _device_note(results.get("environments", {}).get(device, env), device_config)
        head = ["strategy", "geomean", *[f"batch {b}" for b in batches]]
        head += ["peak memory (max)", "`lower()` (max)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for strategy, s in per_strategy.items():
            row = [f"`{strategy}`", f"**{s['geomean']:.2f}x**"]
            row += [_fmt_ratio(s["geomean_by_batch"][str(b)]) for b in batches]
            row += [_fmt_ratio(s["peak_memory_ratio_max"]), f"{s['lower_seconds_max']:.2f} s"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += _model_table(results, device, strategies, batches)
        lines += _kind_table(results, device, strategies, batches)
        training = results["training"].get(device)
        if training and "runs" in training:
            lines += _training_table(training, device)
        elif training:  # a results.json from before the training table
            ratios = ", ".join(
                f"`{s}` {v['ratio']:.2f}x" for s, v in training["strategies"].items()
            )
            native_ms = training["native"]["median_ms"]
            lines += [
                f"Training step (resnet18, batch {training['batch']}, forward + cross-entropy + "
                f"backward; native {native_ms:.0f} ms): {ratios}. Backward runs through "
                "autograd of the same ops (the oneDNN GEMM's backward is plain matmuls).",
                "",
            ]
        lines += _compiled_table(results, device)
        if device == "cuda":
            lines += _gpu_modes(results) + _gpu_floor(results)
        lines += _slowest_layers(results, device)
    if plot is not None:
        lines += [f"![lowered/native time per model]({plot.name})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


TRAINING_NOTE = """\
One SGD step in train mode: forward, cross-entropy, backward, the optimizer's step, at batch
{batch}, native and lowered interleaved, {repeats} timed steps each; peak memory is the most bytes
one step had allocated at once, lowered/native. The lowered convs' backward is their own
(`lowerconv.lowering.autograd`): `dW = dY @ colsᵀ` with the im2col columns recomputed chunk by chunk,
`dX` by col2im or, for stride-1 convs, the flipped kernel's tap GEMMs (as `taps` runs forward),
depthwise convs by per-plane dot products and shifted multiply-adds; no convolution op runs in
either direction.
"""


CUDA_TRAINING_NOTE = """\
One SGD step in train mode: forward, cross-entropy, backward, the optimizer's step, at batch
{batch}, native and lowered interleaved, {repeats} timed steps each; peak memory is the most bytes
one step had allocated at once, lowered/native. On CUDA the lowered convs' backward is autograd's
through the CUDA plan's own ops: GEMMs, and the column gradient scattered back through the
strided views; the column matrix is kept for `dW`, which is what the memory column shows. No
convolution op runs in either direction.
"""


def _training_table(training: dict, device: str) -> list[str]:
    runs = training["runs"]
    strategies = list(training["summary"])
    lines = [f"### Training step ({device})", ""]
    note = CUDA_TRAINING_NOTE if device == "cuda" else TRAINING_NOTE
    lines += [note.format(batch=runs[0]["batch"], repeats=runs[0]["native"]["repeats"])]
    head = ["model", "native ms"]
    head += [f"`{s}`" for s in strategies] + [f"peak mem `{s}`" for s in strategies]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        row = [run["model"], f"{run['native']['median_ms']:.0f}"]
        row += [_fmt_ratio(run["strategies"][s]["ratio"]) for s in strategies]
        row += [_fmt_ratio(run["strategies"][s]["peak_memory_ratio"]) for s in strategies]
        lines.append("| " + " | ".join(row) + " |")
    summary = training["summary"]
    row = ["**geomean**", ""]
    row += [f"**{summary[s]['geomean']:.2f}x** (max {summary[s]['max']:.2f}x)" for s in strategies]
    row += [f"max {summary[s]['peak_memory_ratio_max']:.2f}x" for s in strategies]
    lines += ["| " + " | ".join(row) + " |", ""]
    return lines


KIND_NOTE = """\
Models whose convolutions are not 2-D (`benchmarks/kind_models.py`): `r3d_18` (`Conv3d`, 8x112x112
clips), a DCGAN generator (`ConvTranspose2d`, 100-d code to a 64x64 image) and a speech encoder
(`Conv1d`, wav2vec 2.0's layout, one second of 16 kHz audio); same protocol as above. Not in the
geomean.
"""


def _kind_table(results: dict, device: str, strategies: list[str], batches: list[int]) -> list[str]:
    entries = [e for e in results.get("kind_models", []) if e["device"] == device]
    if not entries:
        return []
    head = ["model", "kind"]
    for b in batches:
        head += [f"native ms (b{b})", *[f"`{s}` (b{b})" for s in strategies]]
    head += [f"peak mem `{s}`" for s in strategies] + ["`auto` chose"]
    lines = [f"### Other convolution kinds ({device})", "", KIND_NOTE]
    command = results["config"].get("kind_models_command")
    if command:
        lines += [f"Measured separately, one thread: `{command}`.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in entries:
        row = [entry["model"], f"`{entry['kind']}`"]
        for b in batches:
            result = entry["batches"].get(str(b))
            if result is None:
                row += [""] * (1 + len(strategies))
                continue
            row.append(f"{result['native']['median_ms']:.1f}")
            row += [_fmt_ratio(result["strategies"][s]["ratio"]) for s in strategies]
        row += [_fmt_ratio(entry["peak_memory"]["ratio"][s]) for s in strategies]
        row.append(", ".join(f"{k} {v}" for k, v in entry["chosen"].items()))
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _model_table(
    results: dict, device: str, strategies: list[str], batches: list[int]
) -> list[str]:
    head = ["model"]
    for b in batches:
        head += [f"native ms (b{b})", *[f"`{s}` (b{b})" for s in strategies]]
    head += [f"peak mem `{s}`" for s in strategies]
    head += ["`lower()` s", "`auto` chose"]
    lines = [f"### Per model ({device})", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for entry in results["models"]:
        if entry["device"] != device:
            continue
        row = [entry["model"]]
        for b in batches:
            result = entry["batches"][str(b)]
            row.append(f"{result['native']['median_ms']:.1f}")
            row += [_fmt_ratio(result["strategies"][s]["ratio"]) for s in strategies]
        row += [_fmt_ratio(entry["peak_memory"]["ratio"][s]) for s in strategies]
        row.append(f"{max(entry['lower_seconds'].values()):.2f}")
        row.append(", ".join(f"{k} {v}" for k, v in sorted(entry["chosen"].items())))
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _device_note(env: dict, config: dict) -> list[str]:
    tf32 = "on" if env.get("matmul_tf32") else "off"
    return [
        f"Device: {env.get('cuda') or env.get('processor')}, torch {env['torch']}, "
        f"{config.get('dtype', 'float32')}, cuBLAS TF32 {tf32} (cuDNN TF32 "
        f"{'on' if env.get('cudnn_tf32', True) else 'off'}), {env['date']}. Generated by "
        f"`{config.get('command', 'python benchmarks/run.py')}`. Models are lowered on the CPU "
        "in float32, then moved with `.to(device, dtype)`.",
        "",
    ]


GPU_NOTE = """\
On a GPU, `auto` runs the CUDA plan (`lowerconv.lowering.cuda_plan`): per conv one gather of
the column matrix (batch-wide) and one batched GEMM with the bias fused (`baddbmm`); 1x1 convs
are the GEMM alone; depthwise convs one banded GEMM per channel and a reduction. No
`im2col`/`col2im` (one kernel per image), no loop over images, taps or chunks. At these sizes a
forward is bound by the host more than by the GPU (a native resnet18 takes about as long at
batch 1 as at batch 32), so what remains is mostly Python and launches per conv: a native conv
is one call, a lowered one a few. So an eager call without gradients whose column matrix is at
most 64 MiB (`SMALL_CALL_BYTES`: every conv of these models at batch 1 but convnext's first
depthwise stage) takes the fewest ops: its columns by one sampled gather from the unpadded
input (`grid_sampler`, nearest, at integer coordinates: an exact indexed copy, no pad), and a
depthwise conv its columns and one batched GEMM instead of the band; larger calls pad and copy
(a copy kernel streams faster than sampling) and keep the band. The training step's backward is
autograd's through the same ops (GEMMs and the scatter of the column gradient back through the
views).

Measured for that choice (H200, torch 2.11, `benchmarks/cuda_fastpath.py`'s forerunner, sampled
gather for every float32 call against pad + copy for every call, ratios to native): batch 1,
resnet18 1.42x against 1.64x, densenet121 1.36x against 1.55x, regnet_y_400mf 1.66x against
1.59x; batch 32 with TF32, resnet18 1.32x against 1.26x, densenet121 1.38x against 1.19x. The
tables here were run with the sampled gather for every float32 call; the threshold and the
depthwise columns at batch 1 came after and are not yet measured on a GPU
(`python benchmarks/cuda_fastpath.py` measures them).
"""


def _gpu_modes(results: dict) -> list[str]:
    modes = results.get("gpu_modes", [])
    lines = ["### Precision and batch modes (cuda)", "", GPU_NOTE]
    if not modes:
        return lines
    lines += [
        "| mode | strategy | geomean by batch | max | peak memory (max) | command |",
        "|---|---|---|---|---|---|",
    ]
    for mode in modes:
        for strategy, s in mode["summary"].items():
            by_batch = ", ".join(f"b{b} {v:.2f}x" for b, v in s["geomean_by_batch"].items())
            lines.append(
                f"| {mode['mode']} | `{strategy}` | {by_batch} | {s['max']:.2f}x | "
                f"{s['peak_memory_ratio_max']:.2f}x | `{mode['command']}` |"
            )
    return [*lines, ""]


def _gpu_floor(results: dict) -> list[str]:
    floor = results.get("gpu_floor")
    if not floor:
        return []
    lines = [
        "### The floor of an explicit im2col (cuda)",
        "",
        f"`{floor['command']}`: per conv layer, the column matrix written once and read once at "
        f"the measured copy bandwidth ({floor['bandwidth'] / 1e12:.2f} TB/s, read + write) plus "
        "the cuBLAS GEMM on ready columns; per model, the native forward with each conv's time "
        "replaced by that floor. `plan layers` replaces it by the plan's time for that layer "
        "alone (each layer timed by itself, so host overhead weighs more than in a whole "
        "forward). A lowered model's ratio above reads against its floor.",
        "",
        "| model | native ms | conv share | floor / native | plan layers / native |",
        "|---|---|---|---|---|",
    ]
    for m in floor["models"]:
        lines.append(
            f"| {m['model']} | {m['native_model_ms']:.2f} | {m['conv_share']:.0%} | "
            f"{m['floor_ratio']:.2f}x | {m['plan_layers_ratio']:.2f}x |"
        )
    return [*lines, ""]


def _compiled_table(results: dict, device: str) -> list[str]:
    runs = [c for c in results.get("compiled", []) if c.get("device", "cpu") == device]
    if not runs:
        return []
    lines = [
        f"### `torch.compile` ({device})",
        "",
        "Compiled lowered against compiled native (default mode), compile time excluded from "
        "the ratio.",
        "",
        "| model | batch | strategy | native ms | ratio | compile s (native) | compile s "
        "(lowered) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in runs:
        seconds = c["compile_seconds"]
        lines.append(
            f"| {c['model']} | {c['batch']} | `{c['strategy']}` | {c['native']['median_ms']:.2f} "
            f"| {c['ratio']:.2f}x | {seconds['native']:.0f} | {seconds[c['strategy']]:.0f} |"
        )
    return [*lines, ""]


def _slowest_layers(results: dict, device: str) -> list[str]:
    lines = [
        f"### Slowest layers under `auto` ({device})",
        "",
        "Each conv against its own lowering, alone, on the input it gets in the model; the three "
        "with the most added time per model and batch.",
        "",
        "| model | batch | layer | conv | input | strategy | native ms | lowered ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    found = False
    for entry in results["models"]:
        if entry["device"] != device:
            continue
        for batch, result in entry["batches"].items():
            for layer in result.get("slowest_layers", []):
                found = True
                shape = "x".join(str(s) for s in layer["input_shape"])
                lines.append(
                    f"| {entry['model']} | {batch} | `{layer['name']}` | {layer['spec']} | "
                    f"{shape} | {layer['strategy']} | {layer['native_ms']:.2f} | "
                    f"{layer['lowered_ms']:.2f} | {layer['ratio']:.2f}x |"
                )
    return [*lines, ""] if found else []


def write_plot(results: dict, path: Path) -> Path | None:
    """Bar charts of lowered/native per model: inference at each batch, and the training step
    beside them; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    config = results["config"]
    strategies, batches = config["strategies"], config["batches"]
    entries = [e for e in results["models"] if e["device"] == "cpu"] or results["models"]
    names = [e["model"] for e in entries]
    # Inference per batch, and the training step beside it.
    panels = [
        (f"inference, batch {batch}", names, strategies, [
            [e["batches"][str(batch)]["strategies"][s]["ratio"] for e in entries]
            for s in strategies
        ])
        for batch in batches
    ]  # fmt: skip
    training = results.get("training", {})
    training = training.get("cpu") or next(iter(training.values()), None)
    if training and "runs" in training:
        runs, trained = training["runs"], list(training["summary"])
        panels.append((
            f"training step, batch {runs[0]['batch']}",
            [r["model"] for r in runs],
            trained,
            [[r["strategies"][s]["ratio"] for r in runs] for s in trained],
        ))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, names, labels, values) in zip(axes[0], panels, strict=True):
        width = 0.8 / max(1, len(labels))
        for i, (label, ratios) in enumerate(zip(labels, values, strict=True)):
            positions = [k + (i - (len(labels) - 1) / 2) * width for k in range(len(names))]
            ax.bar(positions, ratios, width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("lowered / native time")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
