"""The command line: ``lowerconv verify``, ``graph``, ``export``, ``models`` and ``zoo``.

``main(argv)`` returns the exit code instead of exiting, so tests call it in-process:
0 when verification passed, 1 when the lowered model's numbers did not match, 2 for a usage
error, a missing optional package, a model that cannot be built, loaded, traced or run, or any
other error, 3 when verification was inconclusive (nothing failed, but the numbers prove
nothing: ``--allow-inconclusive`` makes that 0).  Errors print
one message (what, where, how to fix it) and no traceback unless ``--debug`` is given.  Progress
goes to stderr so stdout holds only the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ._version import __version__
from .errors import LoweringError
from .lowering.linear import GEMMS
from .lowering.lower import export_linear_form, lower
from .lowering.record import lowering_record
from .lowering.spec import KINDS
from .lowering.strategies import STRATEGY_NAMES
from .models.quantized import int8_model_names
from .models.resolve import CATEGORIES, ResolvedModel, resolve_model, torchvision_models

__all__ = ["cli_hints", "main"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2
EXIT_INCONCLUSIVE = 3

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

MODEL_HELP = """\
a torchvision model name (resnet18, vit_b_16, ...; random init, no download),
package.module:factory, or path/to/file.py:factory (factory() returns an nn.Module)"""

VERIFY_EPILOG = """\
examples:
  lowerconv verify resnet18
  lowerconv verify resnet18 --device all --json report.json --markdown report.md
  lowerconv verify mobilenet_v3_small --strategy auto --dtype float64 --no-timing
  lowerconv verify resnet18 --image-size 64 --gradients --train
  lowerconv verify examples/my_models.py:make_net --image-size 64

exit status: 0 verified, 1 the lowered model's outputs differ beyond tolerance,
2 usage error, a missing optional package, or a model that cannot be built, loaded,
lowered or run, 3 inconclusive: nothing failed, but an output or a layer is degenerate
(the float64 reference is all zeros, or the original model is itself far from it), so
the numbers prove nothing (--allow-inconclusive: exit 0)"""

GRAPH_EPILOG = """\
examples:
  lowerconv graph resnet18
  lowerconv graph mobilenet_v2 --strategy auto --image-size 160
  lowerconv graph resnet18 --format code | less

The table has one row per lowered conv: its kernel, stride, padding and dilation
(HxW; padding 0 when none, (left,right,top,bottom) when asymmetric), groups, the
input and output shapes seen when the lowered graph ran on a random input, the GEMM
it became (M = out channels, K = in channels/groups * kh * kw, N = batch * OH * OW),
its FLOPs (2*M*K*N), the largest im2col buffer its strategy allocates ("none"
for depthwise taps and 1x1 GEMMs) and the strategy used.
Convs left alone are listed after it."""

ZOO_EPILOG = """\
examples:
  lowerconv zoo --list
  lowerconv zoo --category classification --filter resnet --no-timing
  lowerconv zoo resnet18 fasterrcnn_mobilenet_v3_large_320_fpn raft_small
  lowerconv zoo --markdown docs/zoo.md --json docs/zoo.json

Exit 0 when every model run passes, 1 when any fails or errors, 2 for a usage error."""

EXPORT_EPILOG = """\
examples:
  lowerconv export resnet18 -o resnet18_lowered.onnx
  lowerconv export resnet18 -o resnet18_lowered.pt2 --strategy auto
  lowerconv export mobilenet_v3_small -o mnv3.onnx --batch-size 2 --dynamic-batch

The model is captured with torch.export (non-strict) on its example input, every
convolution of the captured graph is lowered (lowerconv.lower(ExportedProgram)), and the
result is written as a torch.export archive (.pt2) or as ONNX (.onnx, the onnx extra).
The graph is specialised to the input's shape unless --dynamic-batch keeps dimension 0
symbolic (a batch of at least 2 is needed)."""

MODELS_EPILOG = """\
examples:
  lowerconv models
  lowerconv models --category video"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error argparse has printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that closed the pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `lowerconv graph resnet18 | head -2`: the reader has what it wanted; stay quiet, as
        # `git log | head` does.  Later writes (the interpreter's final flush) go nowhere.
        _stdout_to_devnull()
        return EXIT_OK
    except KeyboardInterrupt:
        print("lowerconv: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        elif isinstance(err, LoweringError):
            print(f"lowerconv: error: {cli_hints(str(err))}", file=sys.stderr)
        else:
            print(
                f"lowerconv: error: {type(err).__name__}: {err}\n"
                "(unexpected; rerun with --debug for the traceback)",
                file=sys.stderr,
            )
        return EXIT_ERROR


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by a test harness
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowerconv",
        description=(
            "Rewrite every nn.Conv2d of a model into Unfold + matmul + reshape, inspect the\n"
            "lowered graph, and verify it against the original."
        ),
        epilog=(
            "examples:\n  lowerconv verify resnet18\n  lowerconv graph resnet18\n"
            "  lowerconv models\n\nRun `lowerconv COMMAND --help` for a command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the versions of lowerconv, torch, torchvision",
    )
    parser.set_defaults(debug=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_verify_parser(commands)
    _add_graph_parser(commands)
    _add_export_parser(commands)
    _add_models_parser(commands)
    _add_zoo_parser(commands)
    return parser


def _add_verify_parser(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify",
        parents=[_model_options(), _debug_option()],
        help="lower a model and check it against the original, layer by layer",
        description=(
            "Lower MODEL, run the original and the lowered model on the same random input,\n"
            "compare every output and every lowered conv against a float64 reference, time\n"
            "both, and print the report."
        ),
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = verify.add_argument_group("verification")
    check.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="cpu",
        help="where to run (default cpu; all = cpu and cuda if present)",
    )
    check.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        help="dtype to run in (default float32; float64 for detection models, whose boxes "
        "after NMS float32 rounding alone can change)",
    )
    check.add_argument(
        "--rtol", type=_non_negative_float, help="relative tolerance (default: per dtype)"
    )
    check.add_argument(
        "--atol", type=_non_negative_float, help="absolute tolerance (default: per dtype)"
    )
    check.add_argument(
        "--repeats",
        type=_positive_int,
        default=10,
        metavar="N",
        help="timed runs per model (default 10)",
    )
    check.add_argument("--no-timing", action="store_true", help="skip timing")
    check.add_argument(
        "--train",
        action="store_true",
        help="verify in train mode (dropout, batch-norm batch statistics) instead of eval mode",
    )
    check.add_argument(
        "--gradients",
        action="store_true",
        help="also check the backward pass: pull the original, its float64 copy and the lowered "
        "model back from one seeded random output gradient and judge every input's and "
        "parameter's gradient, and each lowered conv's dX, dW and db on its own input, by the "
        "forward's rule; a convolution op in the lowered backward fails. Combines with --train",
    )
    check.add_argument(
        "--against",
        action="append",
        choices=("onnx", "pt2"),
        default=[],
        help="also export the lowered model (as `lowerconv export` does) and check the "
        "artifact against the float64 oracle on the CPU: onnx runs in onnxruntime, pt2 is "
        "saved, loaded and run. One more row each. Repeatable",
    )
    check.add_argument(
        "--allow-inconclusive",
        action="store_true",
        help="exit 0, not 3, when the verdict is INCONCLUSIVE (degenerate outputs or layers)",
    )
    check.add_argument(
        "--calibrate-bn",
        action="store_true",
        help="set batch-norm running statistics from the input in the verifier's copies first "
        "(at random init, float16 activations can underflow to zero)",
    )
    out = verify.add_argument_group("reports")
    out.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    out.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    out.add_argument(
        "--junit-xml",
        metavar="PATH",
        help="also write JUnit XML for CI dashboards: a test case per output and per lowered "
        "conv, on each device",
    )
    verify.set_defaults(run=run_verify)


def _add_graph_parser(commands: argparse._SubParsersAction) -> None:
    graph = commands.add_parser(
        "graph",
        parents=[_model_options(), _debug_option()],
        help="show each lowered conv's shapes and GEMM, or the generated code",
        description=(
            "Lower MODEL and show, for each conv, its configuration, the shapes it sees, the\n"
            "GEMM it became, its FLOPs and im2col buffer; or the generated forward."
        ),
        epilog=GRAPH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    graph.add_argument(
        "--format",
        choices=("table", "code"),
        default="table",
        help="table: one row per conv (default); code: the lowered graph's Python, then the "
        "source of the lowerconv functions it calls",
    )
    graph.add_argument(
        "--conv",
        metavar="NAME",
        default=None,
        help="with --format code: only this lowered conv's lines (e.g. layer1.0.conv1)",
    )
    graph.set_defaults(run=run_graph)


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        parents=[_debug_option()],
        help="write the lowered model as ONNX (.onnx) or a torch.export archive (.pt2)",
        description=(
            "Capture MODEL with torch.export, lower every convolution in the graph, and\n"
            "write it to FILE; print the ops it holds, by count."
        ),
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    export.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write: FILE.onnx (ONNX, dynamo exporter) or FILE.pt2 (torch.export.save)",
    )
    _add_input_options(export.add_argument_group("model and input"))
    lowering = export.add_argument_group("lowering")
    lowering.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default="unfold",
        help="how each conv is lowered (default unfold; auto picks per conv)",
    )
    _add_gemm_option(lowering)
    lowering.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="keep the batch dimension symbolic, so the file takes any batch size",
    )
    export.set_defaults(run=run_export)


def _add_models_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models",
        parents=[_debug_option()],
        help="list the model names MODEL accepts: torchvision's, the int8_* ones and the real-world ones",
        description=(
            "List torchvision's model names by category, then the real-world models (built from\n"
            "small configs by lowerconv.realworld) by library, for the libraries installed."
        ),
        epilog=MODELS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument(
        "--category", help="list only this category, or this library's real-world models"
    )
    models.set_defaults(run=run_models)


def _add_zoo_parser(commands: argparse._SubParsersAction) -> None:
    zoo = commands.add_parser(
        "zoo",
        parents=[_debug_option()],
        help="lower and verify every torchvision model, and write the table",
        description=(
            "Lower and verify torchvision's model builders one after another on the CPU (random\n"
            "weights, no downloads), and print one row per model: convs lowered, path taken,\n"
            "errors of the native and the lowered model against a float64 oracle, time ratio."
        ),
        epilog=ZOO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    zoo.add_argument("names", nargs="*", metavar="MODEL", help="only these models (default all)")
    zoo.add_argument(
        "--category",
        action="append",
        default=[],
        metavar="NAME",
        help="only this category (repeatable): classification, quantization, segmentation, "
        "detection, video, optical_flow; or a real-world library (the zoo extra): "
        "transformers, diffusers, segmentation_models_pytorch, ultralytics, kornia",
    )
    zoo.add_argument("--filter", metavar="TEXT", help="only models whose name contains TEXT")
    zoo.add_argument(
        "--include-large",
        action="store_true",
        help="also run the models over 300 M parameters (skipped by default for time)",
    )
    zoo.add_argument(
        "--strategy", choices=STRATEGY_NAMES, default="unfold", help="(default unfold)"
    )
    _add_gemm_option(zoo)
    zoo.add_argument("--batch-size", type=_positive_int, default=1, metavar="N")
    zoo.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="PX",
        help="input side for every model (default per category: 128; 224 for detection, 64 "
        "for video; rounded to a ViT's patch, vit_h_14: 126)",
    )
    zoo.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="(default float32; detection models always run in float64)",
    )
    zoo.add_argument("--repeats", type=_positive_int, default=5, metavar="N")
    zoo.add_argument("--no-timing", action="store_true", help="skip timing")
    zoo.add_argument("--seed", type=int, default=0)
    zoo.add_argument("--list", action="store_true", help="list the models it would run, and stop")
    zoo.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="run only the K-th of N shards of the selection (1 <= K <= N): every N-th model "
        "from the K-th, so N CI jobs with --shard 1/N ... N/N cover it exactly once",
    )
    zoo.add_argument(
        "--merge",
        action="extend",
        nargs="+",
        metavar="PATH",
        help="JSON reports of earlier runs (the shards' --json): join their rows into one table; "
        "models run now replace their rows. With no MODEL, --category, --filter or --shard, "
        "nothing runs. Put MODEL names before --merge",
    )
    zoo.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    zoo.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    zoo.add_argument(
        "--junit-xml",
        metavar="PATH",
        help="also write JUnit XML for CI dashboards: a test case per model",
    )
    zoo.set_defaults(run=run_zoo_command)


# -- options shared by commands ------------------------------------------------------------------


def _debug_option() -> argparse.ArgumentParser:
    """``--debug``, for every command."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    return debug


def _model_options() -> argparse.ArgumentParser:
    """MODEL and how to build, feed and lower it, for the commands that lower one model."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _add_input_options(model.add_argument_group("model and input"))
    _add_lowering_options(model.add_argument_group("lowering"))
    return model


def _add_input_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--batch-size", type=_positive_int, default=1, metavar="N", help="batch size (default 1)"
    )
    group.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="PX",
        help="height and width of the random input (default: the model's own, "
        "224 for most, 299 for inception_v3, 112 for r3d_18)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random init and the random input (default 0)",
    )
    group.add_argument(
        "--weights",
        metavar="PATH",
        help="load this state_dict (torch.load(weights_only=True)) into the model first",
    )
    group.add_argument(
        "--input-shape",
        action="append",
        type=_shape,
        metavar="SHAPE",
        help="the random input's whole shape, e.g. 1x3x224x160 (non-square); repeat it for a "
        "model of several inputs, one per positional argument in order",
    )


def _add_gemm_option(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument(
        "--gemm",
        choices=GEMMS,
        default="matmul",
        help="each conv's GEMM: a matmul on its conv-shaped weight (default), or an nn.Linear "
        "at the conv's name, one per group (for torchao, PEFT, prune; strategies unfold, "
        "strided, pointwise, patchify, auto; depthwise convs stay matmul)",
    )


def _add_lowering_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default="unfold",
        help="how each conv is lowered (default unfold; auto picks per conv)",
    )
    _add_gemm_option(group)
    group.add_argument(
        "--target",
        choices=("cpu", "cuda"),
        default=None,
        help="auto's device plan for every call (default: each call's input device; cuda runs "
        "the CUDA plan on CPU tensors too)",
    )
    group.add_argument(
        "--kind",
        action="append",
        choices=KINDS,
        default=[],
        metavar="KIND",
        help="lower only convolutions of this kind (conv1d, conv2d, conv3d, conv_transpose1d, "
        "conv_transpose2d, conv_transpose3d); the others are listed as left alone. Repeatable; "
        "default: every kind",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="fail if the model cannot be traced as one graph, instead of lowering each "
        "convolution module on its own",
    )
    group.add_argument(
        "--leaf-module",
        action="append",
        default=[],
        metavar="NAME",
        help="a submodule (qualified name, e.g. layer1.0) torch.fx should not trace into; its "
        "convs are lowered at run time. Repeatable",
    )


# -- commands ------------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    for option, path in _report_paths(args):
        _check_writable(option, path)
    if "onnx" in args.against:  # before minutes of building and lowering
        from .lowering.export import require_onnx

        require_onnx("--against onnx")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LoweringError(
            "--device cuda: CUDA is not available here (torch.cuda.is_available() is False). "
            "Fix: --device cpu, or --device all to verify on CUDA only where it exists"
        )
    progress = _progress
    resolved = _resolve(args, progress)
    if args.train:
        resolved.model.train()
    lowered = _lower(resolved, args, progress)
    from .verification.verify import verify  # only this command pays for importing the verifier

    dtype = DTYPES[args.dtype] if args.dtype else resolved.preferred_dtype or torch.float32
    if args.dtype is None and resolved.preferred_dtype is not None:
        progress(f"note: verifying {resolved.spec} in {dtype} (pass --dtype to choose)")
    try:
        report = verify(
            resolved.model,
            resolved.example_inputs,
            lowered=lowered,
            strategy=args.strategy,
            device=args.device,
            dtype=dtype,
            rtol=args.rtol,
            atol=args.atol,
            timing=not args.no_timing,
            repeats=args.repeats,
            seed=args.seed,
            progress=progress,
            lower_options=_lower_options(args),
            against=args.against,
            calibrate_bn=args.calibrate_bn,
            gradients=args.gradients,
        )
    except LoweringError as err:
        raise _with_hint(err, resolved) from err
    print(report)
    if args.json is not None:
        Path(args.json).write_text(report.to_json(indent=2) + "\n")
        progress(f"wrote {args.json}")
    if args.markdown is not None:
        Path(args.markdown).write_text(report.to_markdown().rstrip("\n") + "\n")
        progress(f"wrote {args.markdown}")
    if args.junit_xml is not None:
        from .verification.integer import IntegerVerificationReport
        from .verification.junit import verification_junit

        xml = (
            report.to_junit_xml(model=resolved.spec)
            if isinstance(report, IntegerVerificationReport)
            else verification_junit(report, model=resolved.spec)
        )
        Path(args.junit_xml).write_text(xml)
        progress(f"wrote {args.junit_xml}")
    if not report.ok:
        print(cli_hints(report.failure_message() or ""), file=sys.stderr)
        if report.verdict == "INCONCLUSIVE":
            return EXIT_OK if args.allow_inconclusive else EXIT_INCONCLUSIVE
        return EXIT_MISMATCH
    return EXIT_OK


def run_graph(args: argparse.Namespace) -> int:
    from .lowering.inspect import inspect_lowered, lowered_code

    resolved = _resolve(args, _progress)
    lowered = _lower(resolved, args, _progress)
    if args.format == "code":
        print(lowered_code(lowered, conv=args.conv), end="")
        return EXIT_OK
    try:
        inspection = inspect_lowered(lowered, resolved.example_inputs, model=resolved.spec)
    except LoweringError as err:
        raise _with_hint(err, resolved) from err
    print(inspection.table())
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from .lowering.export import ARTIFACT_FORMATS, describe_ops, export_lowered, write_artifact

    output = Path(args.output)
    if output.suffix.lower() not in ARTIFACT_FORMATS:
        raise LoweringError(
            f"-o {args.output}: name the file .onnx (ONNX) or .pt2 (a torch.export archive)"
        )
    _check_writable("-o", args.output)
    resolved = _resolve(args, _progress)
    start = time.perf_counter()
    try:
        if args.gemm == "linear":
            program = export_linear_form(
                resolved.model,
                resolved.example_inputs,
                strategy=args.strategy,
                dynamic_batch=args.dynamic_batch,
            )
        else:
            program = export_lowered(
                resolved.model,
                resolved.example_inputs,
                strategy=args.strategy,
                dynamic_batch=args.dynamic_batch,
            )
    except LoweringError as err:
        raise _with_hint(err, resolved) from err
    record = lowering_record(program)
    _progress(f"captured and lowered in {time.perf_counter() - start:.1f}s: {record.summary()}")
    artifact = write_artifact(program, output)
    size = output.stat().st_size
    unit = "nodes" if artifact.format == "onnx" else "ATen calls"
    print(f"wrote {args.output} ({artifact.format}, {size / 2**20:.1f} MiB)")
    print(f"{sum(artifact.ops.values())} {unit}: {describe_ops(artifact.ops)}")
    left = artifact.conv_ops
    if left:
        kinds = ", ".join(sorted({s.kind for s in record.skipped})) or "see lowerconv graph"
        print(f"convolution ops left: {', '.join(left)} (not lowered: {kinds})")
    else:
        print("no convolution op left: every convolution is computed by GEMMs")
    return EXIT_OK


def run_models(args: argparse.Namespace) -> int:
    from .models.realworld import LIBRARIES, realworld_models

    by_category: dict[str, list[str]] = {}
    for name, category in torchvision_models().items():
        by_category.setdefault(category, []).append(name)
    for name, entry in realworld_models().items():  # only the installed libraries'
        by_category.setdefault(entry.library, []).append(name)
    by_category["int8"] = int8_model_names()
    order = [*CATEGORIES, "int8", *LIBRARIES]
    if args.category is not None and args.category not in by_category:
        missing = (
            f"; {args.category} is a real-world library that is not installed: "
            'pip install -e ".[zoo]"'
            if args.category in LIBRARIES
            else ""
        )
        raise LoweringError(
            f"unknown category {args.category!r}; categories: "
            f"{', '.join(sorted(by_category, key=order.index))}{missing}"
        )
    for category in sorted(by_category, key=order.index):
        if args.category is not None and category != args.category:
            continue
        names = sorted(by_category[category])
        print(f"{category}: {len(names)}")
        print(_wrap(names))
    return EXIT_OK


def run_zoo_command(args: argparse.Namespace) -> int:
    from .models.zoo import ZooReport, run_zoo, select_models, shard

    for option, path in _report_paths(args):
        _check_writable(option, path)
    earlier = None
    if args.merge:
        earlier = ZooReport.joined([_read_zoo_report(path) for path in args.merge])
    selecting = args.names or args.category or args.filter or args.shard
    if earlier is not None and not selecting and not args.list:
        _progress(f"joined {len(args.merge)} report(s): {len(earlier.rows)} model(s)")
        return _write_zoo_report(earlier, args)
    chosen = select_models(
        args.names,
        categories=args.category,
        contains=args.filter,
        include_large=args.include_large,
    )
    if args.shard is not None:
        chosen = shard(chosen, *args.shard)
    if not chosen:
        raise LoweringError("no model matches those names, categories, --filter and --shard")
    if args.list:
        for name, category, skip in chosen:
            print(f"{name:32} {category:15} {skip or ''}".rstrip())
        return EXIT_OK
    report = run_zoo(
        chosen,
        strategy=args.strategy,
        gemm=args.gemm,
        batch_size=args.batch_size,
        image_size=args.image_size,
        dtype=DTYPES[args.dtype],
        timing=not args.no_timing,
        repeats=args.repeats,
        seed=args.seed,
        progress=_progress,
    )
    if args.shard is not None:
        report.settings["shard"] = "{}/{}".format(*args.shard)
    if earlier is not None:
        report = report.merged_into(earlier)
    return _write_zoo_report(report, args)


def _read_zoo_report(path: str):
    from .models.zoo import ZooReport

    try:
        return ZooReport.from_dict(json.loads(Path(path).read_text()))
    except LoweringError as err:
        raise LoweringError(f"--merge {path}: {err}") from err
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise LoweringError(
            f"--merge {path}: cannot read it ({type(err).__name__}: {err}). Fix: pass files "
            "written by `lowerconv zoo --json`"
        ) from err


def _write_zoo_report(report, args: argparse.Namespace) -> int:
    print(report)
    if args.json is not None:
        Path(args.json).write_text(report.to_json(indent=2) + "\n")
        _progress(f"wrote {args.json}")
    if args.markdown is not None:
        Path(args.markdown).write_text(report.to_markdown())
        _progress(f"wrote {args.markdown}")
    if args.junit_xml is not None:
        from .verification.junit import zoo_junit

        Path(args.junit_xml).write_text(zoo_junit(report))
        _progress(f"wrote {args.junit_xml}")
    return EXIT_OK if report.ok else EXIT_MISMATCH


def _report_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    options = (
        ("--json", args.json),
        ("--markdown", args.markdown),
        ("--junit-xml", args.junit_xml),
    )
    return [(option, path) for option, path in options if path is not None]


# -- shared steps --------------------------------------------------------------------------------


def _resolve(args: argparse.Namespace, progress: Callable[[str], None]) -> ResolvedModel:
    start = time.perf_counter()
    resolved = resolve_model(
        args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seed=args.seed,
        weights=args.weights,
        input_shapes=args.input_shape,
    )
    weights = f", weights {args.weights}" if args.weights else ""
    progress(f"built {resolved.describe()}{weights} in {time.perf_counter() - start:.1f}s")
    return resolved


def _lower(
    resolved: ResolvedModel, args: argparse.Namespace, progress: Callable[[str], None]
) -> torch.nn.Module:
    start = time.perf_counter()
    _check_leaf_modules(resolved, args.leaf_module)
    lowered = lower(
        resolved.model,
        example_inputs=resolved.example_inputs,
        strategy=args.strategy,
        **_lower_options(args),
    )
    record = lowering_record(lowered)
    progress(f"lowered in {time.perf_counter() - start:.1f}s: {record.summary()}")
    if not record.lowered:
        progress(f"note: {resolved.spec} has no 2-D convolution that could be lowered")
    if record.path == "fallback":
        reason = (record.trace_error or "").splitlines()[0]
        progress(
            f"note: {resolved.spec} could not be traced as one graph ({reason}); each Conv2d was "
            "lowered on its own and every other F.conv2d call at run time (pass --strict to make "
            "this an error)"
        )
    return lowered


def _lower_options(args: argparse.Namespace) -> dict:
    """The lower() options the command line sets, for lower() and verify()'s re-trace alike."""
    options = {"strict": args.strict, "leaf_modules": tuple(args.leaf_module)}
    if getattr(args, "gemm", "matmul") != "matmul":
        options["gemm"] = args.gemm
    if getattr(args, "kind", None):
        options["kinds"] = frozenset(args.kind)
    if getattr(args, "target", None):
        options["target"] = args.target
    return options


def _check_leaf_modules(resolved: ResolvedModel, names: Sequence[str]) -> None:
    known = [name for name, _ in resolved.model.named_modules() if name]
    for name in names:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise LoweringError(
                f"--leaf-module {name!r}: {resolved.spec} has no submodule of that name.{hint} "
                f"Its first ones: {', '.join(known[:6])}"
            )


# Fixes the library words for its Python API, and the command-line way to make each.
_CLI_HINTS = (
    (
        "pass example_inputs the model accepts, as a tuple of its positional arguments",
        "give it inputs it accepts: --image-size PX and --batch-size N, or the whole shape with "
        "--input-shape 1x3x224x160 (once per positional input, in order)",
    ),
    (
        "pass concrete_args= to fix the inputs that drive control flow, name the module that "
        "cannot be traced in leaf_modules= (its convolutions are then lowered at run time), or "
        "leave strict=False (the default) to lower each Conv2d module on its own and every "
        "other F.conv2d call at run time.",
        "name the module that cannot be traced with --leaf-module NAME (its convolutions are "
        "then lowered at run time), or drop --strict to lower each Conv2d module on its own and "
        "every other F.conv2d call at run time. Fixing the inputs that drive control flow "
        "(concrete_args) takes the Python API: lowerconv.lower(model, concrete_args={...}).",
    ),
    ("per-layer numbers: print(report)", "per-layer numbers: the report on stdout, or --json PATH"),
    (
        "print(lowered.code) and check the lowering",
        "`lowerconv graph MODEL --format code` prints it; check the lowering",
    ),
    ("(calibrate_bn=True)", "(--calibrate-bn)"),
    ("allow_inconclusive=True", "--allow-inconclusive"),
    (
        "pass verify() the lower_options the model was lowered with",
        "pass the same --leaf-module and --strict options to graph and verify",
    ),
)


def cli_hints(message: str) -> str:
    """``message`` with each fix the library words for Python callers (``leaf_modules=``,
    ``print(report)``) said as the command line's option instead."""
    for python_api, command_line in _CLI_HINTS:
        message = message.replace(python_api, command_line)
    return message


def _with_hint(err: LoweringError, resolved: ResolvedModel) -> LoweringError:
    hint = resolved.failure_hint()
    return LoweringError(f"{err}\nhint: {hint}") if hint else err


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_writable(option: str, path: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise LoweringError(f"{option} {path}: folder {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise LoweringError(f"{option} {path} is a folder; give a file name")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a shape of positive sizes joined by x, e.g. 1x3x224x160; got {text!r}"
        )
    return shape


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        k, n = int(index), int(count)
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(
            f"expected K/N with 1 <= K <= N, e.g. 2/4 for the second of four shards; got {text!r}"
        )
    return k, n


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


class _VersionAction(argparse.Action):
    """``--version``, importing torchvision only when asked (it slows every other command)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .errors import MissingDependencyError
        from .models.resolve import import_torchvision_models

        status = EXIT_OK
        try:
            import_torchvision_models()
            import torchvision

            vision = torchvision.__version__
        except MissingDependencyError as err:  # the versions still print, and say what is wrong
            print(f"lowerconv: error: {err}", file=sys.stderr)
            vision, status = "that fails to import", EXIT_ERROR
        print(
            f"lowerconv {__version__} (torch {torch.__version__}, torchvision "
            f"{vision}, Python {sys.version.split()[0]})"
        )
        parser.exit(status)


def _wrap(names: list[str], width: int = 100) -> str:
    import textwrap

    return textwrap.fill(", ".join(names), width=width, initial_indent="  ", subsequent_indent="  ")


if __name__ == "__main__":
    sys.exit(main())
