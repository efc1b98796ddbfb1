"""Prove a lowering held: run the original and the lowered model and compare them, layer by layer.

:func:`verify` works on copies only.  On each device it makes three of them: the *native* model
(the original, in the dtype verified), the *lowered* model (same dtype) and the *oracle* (the
original in float64, the ground truth).  Then:

1. **End to end.**  All three run on the same inputs, each after the same seed, so dropout masks
   match.  Every tensor leaf of the output (tuples, dicts, namedtuples) is compared with the
   oracle's, for the native and the lowered model; the lowered model passes when its error is
   within a small factor of the native model's plus a dtype floor
   (:func:`lowerconv.verification.metrics.judge`).
2. **Per layer.**  Each lowered conv, found through the pass's ``node.meta["lowerconv"]``
   provenance (:func:`~lowerconv.lowering.subgraph.conv_subgraph`), runs on the input the original
   model gives that conv; its output is compared with the original conv's in the native dtype and in
   float64, by the same rule (the *local* error).  The first conv whose local error fails is
   named by its original qualified name.  The *accumulated* error, each model's own value at
   that conv's output against the oracle's, shows how errors grow along the run.
   With ``gradients=True`` the three copies are also pulled back from one seeded random
   output gradient: every input's and parameter's gradient is judged by the same rule, and
   each lowered conv's ``dX``, ``dW`` and ``db`` on its own input (:mod:`~lowerconv.verification.gradients`);
   the conv-op audit watches the lowered model's backward too.
3. **Time and memory.**  Native and lowered forwards, warmed up, A/B interleaved, CUDA
   synchronised inside the clock; median, IQR, ratio; CUDA peak memory; im2col bytes per conv.

Precision flags (TF32, reduced-precision reductions) are pinned while verifying and restored
after; RNG state is forked and restored.  ``docs/verification.md`` documents it all.

This module holds the verdict: :func:`verify`, the end-to-end checks of step 1 and the report's
assembly.  In :mod:`lowerconv.verification`, gradients are :mod:`~.gradients`, step 2 is
:mod:`~.layer_checks` and step 3 :mod:`~.timing`; :mod:`~.devices` makes and runs the copies,
:mod:`~.determinism` pins precision and randomness, and :mod:`~.report` is the result.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from .._version import __version__
from ..errors import LoweringError, MissingDependencyError, VerificationError, with_article
from ..lowering.inputs import normalize_example_inputs
from ..lowering.lower import export_linear_form, lower
from ..lowering.preflight import refuse_torchscript
from ..lowering.record import LoweringRecord, lowering_record
from ..lowering.runtime import ConvCall, trace_conv_calls
from ..lowering.spec import KINDS
from .audit import ConvOpAudit, ConvOpRun
from .determinism import (
    MatchedRandomness,
    PromoteToFloat64,
    pinned_precision,
    preserved_rng,
    tf32_environment,
)
from .devices import (
    cast_inputs,
    copy_to,
    describe_input,
    device_name,
    dtype_name,
    forward,
    oracle_forward,
    resolve_devices,
)
from .gradients import check_gradients, model_gradients
from .inconclusive import inconclusive_causes
from .integer import IntegerVerificationReport, has_quantized_convs, verify_integer
from .layer_checks import (
    ModuleCapture,
    check_fallback_layers,
    check_graph_layers,
    check_runtime_layers,
)
from .metrics import Tolerance, default_tolerance
from .prepare import calibrated, materialized
from .report import DeviceRun, OutputCheck, VerificationReport
from .timing import time_forward

# MatchedRandomness, pinned_precision and VerificationError live in determinism and errors; they
# are re-exported here, where users have always imported them from.
__all__ = [
    "MatchedRandomness",
    "VerificationError",
    "VerificationReport",
    "pinned_precision",
    "verify",
]


Progress = Callable[[str], None]


def verify(
    model: nn.Module,
    example_inputs: Any,
    *,
    lowered: nn.Module | None = None,
    strategy: str = "unfold",
    device: str | torch.device | Sequence[str | torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    rtol: float | None = None,
    atol: float | None = None,
    timing: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    per_layer: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
    factor: float | None = None,
    allow_tf32: bool = False,
    lower_options: dict[str, Any] | None = None,
    against: Sequence[str] = (),
    calibrate_bn: bool = False,
    gradients: bool = False,
    gemm: str = "matmul",
) -> VerificationReport | IntegerVerificationReport:
    """Verify that ``lowered`` (by default ``lowerconv.lower(model, strategy=strategy,
    gemm=gemm)``)
    computes what ``model`` computes; return a
    :class:`~lowerconv.verification.report.VerificationReport`.

    ``example_inputs`` is a tuple of tensors (or one tensor) that ``model`` accepts; floating
    point inputs are cast to ``dtype``.  ``device`` is ``"cpu"``, ``"cuda"``, ``"all"`` (both)
    or a list; a CUDA device that is not available is skipped with the reason in
    ``report.devices_skipped``, not an error.  ``rtol``/``atol``/``factor`` override the
    per-dtype defaults of :data:`~.metrics.DEFAULT_TOLERANCES`.  ``timing=False`` skips timing;
    ``per_layer=False`` skips the per-layer checks.  ``seed`` is set before every forward so
    dropout matches between models.  ``progress`` gets one line per step.  ``allow_tf32=True``
    leaves TF32 on (it is off while verifying by default).  ``lower_options`` (e.g.
    ``leaf_modules``, ``concrete_args``, ``strict``) are passed to :func:`lowerconv.lower` and to
    the re-trace of the original the per-layer checks use: pass the options the lowered model
    was made with.  ``against`` (``"onnx"``, ``"pt2"``) also checks, on the CPU, what
    ``lowerconv export`` writes for ``model`` and ``strategy`` (:func:`lowerconv.lowering.export.
    export_lowered`): run in onnxruntime, or saved, loaded and run, its outputs are one more
    row each, judged against the float64 oracle by the same rule.  ``gradients=True`` also
    checks the backward pass: the three copies are pulled back from one fixed random output
    gradient (drawn from ``seed``), the gradient of every floating-point input and every
    parameter is judged by the same rule, and so are each lowered conv's ``dX``, ``dW`` and
    ``db`` on its own input; a convolution op in the lowered model's backward fails the audit.
    ``calibrate_bn=True`` sets the running statistics of every batch-norm module from
    ``example_inputs`` (one batch) in the verifier's copies, original and lowered alike: at
    random init, activations can shrink until they underflow in float16, which makes the verdict
    ``INCONCLUSIVE``.  ``gemm="linear"`` verifies the Linear form (each conv's GEMM an
    ``nn.Linear``, :mod:`lowerconv.lowering.linear`); its parameters' gradients are compared in
    the conv's shape and keys (:func:`lowerconv.conv_state_dict`).

    A model with ``torch.ao`` quantised convs is verified by
    :func:`~lowerconv.verification.integer.verify_integer` instead: outputs and each integer conv
    compared in quantisation steps with the quantised model the engine runs (an
    :class:`~lowerconv.verification.integer.IntegerVerificationReport`; ``docs/integer.md``).

    Nothing passed in is changed: not parameters, buffers, train/eval mode, nor the RNG state.
    Raises :class:`~lowerconv.errors.LoweringError` for a model that cannot be lowered or run
    on the inputs; a wrong lowering is not an error but a failing report (``report.ok`` is
    False; ``report.raise_if_failed()`` raises :class:`VerificationError`).

    Example::

        report = lowerconv.verify(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
        print(report)                  # per-layer table, then the summary
        report.raise_if_failed()
    """
    say = progress or (lambda line: None)
    _check_arguments(model, lowered, dtype, repeats, warmup)
    if has_quantized_convs(model):
        # A quantised model: judged in integer steps against itself, not a float64 oracle.
        if lowered is None:
            say(f"lowering {type(model).__name__} (quantised convs as integer GEMMs)")
            lowered = lower(model, strategy=strategy, **dict(lower_options or {}))
        report = verify_integer(
            model, example_inputs, lowered=lowered, per_layer=per_layer, progress=progress
        )
        unused = [
            f"{name}={value!r}"
            for name, value, default in (
                ("device", device, "cpu"),
                ("dtype", dtype, torch.float32),
                ("gradients", gradients, False),
                ("against", tuple(against), ()),
                ("calibrate_bn", calibrate_bn, False),
                ("rtol", rtol, None),
                ("atol", atol, None),
                ("factor", factor, None),
            )
            if value != default
        ]
        if unused:
            report.notes.append(
                f"{', '.join(unused)} do not apply to a quantised model: it runs on the CPU, "
                "in its own integer types, and is judged in quantisation steps"
            )
        return report
    inputs = normalize_example_inputs(model, example_inputs)
    tolerance = _tolerance(dtype, rtol, atol, factor)
    devices, skipped = resolve_devices(device)
    options = dict(lower_options or {})
    if gemm != "matmul":
        options["gemm"] = gemm
    for name in skipped:
        say(f"skipping {name}: {skipped[name]}")

    model, lazy_note = materialized(model, lowered, inputs)
    calibration_note = None
    # Named before calibrate_bn copies it: a copy of a GraphModule is a plain "GraphModule".
    lowered_name = None if lowered is None else type(lowered).__name__
    if calibrate_bn:
        model, lowered, calibration_note = calibrated(model, lowered, inputs)
    if lowered is None:
        say(f"lowering {type(model).__name__} with strategy {strategy!r}")
        lowered = lower(model, strategy=strategy, example_inputs=inputs, **options)
    record = _record_of(lowered)
    notes = [note for note in (lazy_note, calibration_note) if note]
    if record is None:
        notes.append(
            f"{type(lowered).__name__} carries no lowering record (it did not come from "
            "lowerconv.lower, or was rebuilt): per-layer checks skipped, outputs compared only"
        )
    if lowered.training != model.training:
        notes.append(
            f"the lowered model is in {'train' if lowered.training else 'eval'} mode and the "
            f"original in {'train' if model.training else 'eval'} mode; each runs in its own"
        )

    forced = tf32_environment()
    if forced and any(dev.type == "cuda" for dev in devices) and not allow_tf32:
        notes.append(
            "TF32 may be forced on for cuBLAS by the environment ("
            + ", ".join(f"{k}={v}" for k, v in forced.items())
            + "): the lowered GEMMs can then run in TF32 while native cuDNN convs run in full "
            "float32, which no flag undoes. Fix: unset it for the verification run"
        )

    plan = _Plan(
        tolerance=tolerance,
        dtype=dtype,
        seed=seed,
        per_layer=per_layer and record is not None,
        timing=timing,
        repeats=repeats,
        warmup=warmup,
        trace_options={k: options[k] for k in ("leaf_modules", "concrete_args") if k in options},
        say=say,
        against=_check_against(against),
        gradients=bool(gradients),
    )
    runs = []
    with pinned_precision(allow_tf32=allow_tf32) as flags, preserved_rng(devices):
        for dev in devices:
            runs.append(_verify_on(dev, model, lowered, record, inputs, plan))

    warnings = [f"[{run.device}] {warning}" for run in runs for warning in run.warnings]
    return VerificationReport(
        model=type(model).__name__,
        lowered_model=lowered_name or type(lowered).__name__,
        strategy=record.strategy if record else strategy,
        path=record.path if record else "unknown",
        dtype=dtype_name(dtype),
        tolerance=tolerance,
        seed=seed,
        training=model.training,
        inputs=[describe_input(x) for x in inputs],
        precision_flags=flags,
        lowering=_lowering_summary(record),
        runs=runs,
        devices_skipped=skipped,
        notes=notes,
        warnings=warnings,
        versions=_versions(model),
        gradients=bool(gradients),
    )


# Model libraries whose version the report records when the model's class comes from one, by
# import name (the first part of the class's module) -> the name pip installs it by.
_MODEL_LIBRARIES = {
    "torchvision": "torchvision",
    "timm": "timm",
    "transformers": "transformers",
    "diffusers": "diffusers",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "ultralytics": "ultralytics",
    "kornia": "kornia",
}


def _versions(model: nn.Module) -> dict[str, str]:
    """lowerconv, torch, Python, torchvision, and the library ``model``'s class comes from."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {
        "lowerconv": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for library in ("torchvision", type(model).__module__.partition(".")[0]):
        if library in _MODEL_LIBRARIES and library not in versions:
            with contextlib.suppress(PackageNotFoundError):
                versions[library] = version(_MODEL_LIBRARIES[library])
    return versions


@dataclass
class _Plan:
    """The settings of one call to :func:`verify` that every device run shares."""

    tolerance: Tolerance
    dtype: torch.dtype
    seed: int
    per_layer: bool
    timing: bool
    repeats: int
    warmup: int
    trace_options: dict[str, Any]
    say: Progress
    against: tuple[str, ...] = ()
    gradients: bool = False


def _verify_on(
    dev: torch.device,
    model: nn.Module,
    lowered: nn.Module,
    record: LoweringRecord | None,
    inputs: tuple,
    plan: _Plan,
) -> DeviceRun:
    say = plan.say
    say(f"[{dev}] copying the model ({dtype_name(plan.dtype)}, float64 oracle) and the lowering")
    native = copy_to(model, dev, plan.dtype, "the model")
    oracle = copy_to(model, dev, torch.float64, "the model")
    low = copy_to(lowered, dev, plan.dtype, "the lowered model")
    x = cast_inputs(inputs, dev, plan.dtype)
    x64 = cast_inputs(inputs, dev, torch.float64)
    run = DeviceRun(device=str(dev), device_name=device_name(dev), ok=True, first_failure=None)

    # Convs lowered by whole-module run-time lowering are checked as the runs below saw them.
    convs = [
        c
        for c in (record.lowered if record is not None and plan.per_layer else [])
        if c.mechanism == "graph" or c.graph_module
    ]
    fallback = [c for c in convs if c.graph_module]
    hooks = ModuleCapture(native, oracle, low, fallback) if fallback else None
    observe = plan.per_layer and record is not None and bool(record.runtime)
    audit = ConvOpAudit(
        low,
        record.skipped if record is not None else (),
        record.kinds if record is not None else KINDS,
    )
    # The original's calls that a run-time lowering may have lowered: not those of conv
    # modules, which the lowered model computes in holders of their own.
    holders = {c.graph_module for c in record.lowered if c.graph_module} if record else set()
    workspace_cap = record.max_workspace_bytes if record is not None else None
    kinds = frozenset(record.kinds if record is not None else KINDS)

    def candidate(call: ConvCall) -> bool:
        return call.kind in kinds and call.called_from not in holders

    say(f"[{dev}] end to end: native, float64 oracle, lowered (conv ops audited)")
    with torch.no_grad(), MatchedRandomness():
        with _calls_if(observe, native, candidate) as native_calls:
            out_native = forward(native, x, dev, plan.seed, "the model", inputs)
        with _calls_if(observe, oracle, candidate) as oracle_calls:
            out_oracle, promoted = oracle_forward(oracle, x64, dev, plan.seed, inputs)
        with trace_conv_calls(low, keep_tensors=observe) as lowered_calls, audit:
            out_lowered = forward(low, x, dev, plan.seed, "the lowered model", inputs)
    if not observe:
        lowered_calls.clear()
    if hooks is not None:
        hooks.remove()
    run.conv_ops = audit.runs()
    run.outputs, notes = _check_outputs(
        out_native, out_lowered, out_oracle, plan.tolerance, type(model).__name__
    )
    run.notes.extend(notes)
    run.warnings.extend(_oracle_warnings(run.outputs, plan.dtype))
    if promoted:
        run.notes.append(
            "the model creates float32 tensors of its own (e.g. coordinate grids), so its float64 "
            "copy failed as is; the oracle ran with every float32 tensor promoted to float64"
        )
    if plan.against:
        run.outputs += _check_artifacts(native, x, out_native, out_oracle, record, dev, plan)
    del out_native, out_oracle, out_lowered

    if plan.gradients:
        say(f"[{dev}] gradients: backward of native, float64 oracle, lowered (conv ops audited)")
        backward_audit = ConvOpAudit(
            low,
            record.skipped if record is not None else (),
            record.kinds if record is not None else KINDS,
        )
        with MatchedRandomness():
            native_grads = model_gradients(native, x, dev, plan.seed, "the model", inputs)
            with PromoteToFloat64() if promoted else contextlib.nullcontext():
                oracle_grads = model_gradients(
                    oracle,
                    x64,
                    dev,
                    plan.seed,
                    "the float64 copy of the model",
                    inputs,
                    like=native_grads,
                )
            with backward_audit:
                lowered_grads = model_gradients(
                    low, x, dev, plan.seed, "the lowered model", inputs, like=native_grads
                )
        run.gradients, notes = check_gradients(
            native_grads, lowered_grads, oracle_grads, plan.tolerance
        )
        del native_grads, oracle_grads, lowered_grads
        run.notes.extend(notes)
        run.warnings.extend(_noise_warnings(run.gradients, plan.dtype))
        run.conv_ops = _with_backward(run.conv_ops, backward_audit.runs())

    if convs:
        say(f"[{dev}] per layer: {len(convs)} lowered conv(s)")
        with torch.no_grad(), MatchedRandomness():
            graph_convs = [c for c in convs if not c.graph_module]
            checks = {}
            if graph_convs:
                leaves = [c.graph_module for c in fallback]
                checks.update(
                    check_graph_layers(
                        graph_convs,
                        leaves,
                        native,
                        oracle,
                        low,
                        x,
                        x64,
                        dev,
                        tolerance=plan.tolerance,
                        dtype=plan.dtype,
                        max_workspace_bytes=workspace_cap,
                        seed=plan.seed,
                        trace_options=plan.trace_options,
                        retrace=_export_capture if record.path == "export" else None,
                        gradients=plan.gradients,
                    )
                )
            if hooks is not None:
                checks.update(
                    check_fallback_layers(
                        fallback,
                        hooks,
                        oracle,
                        low,
                        tolerance=plan.tolerance,
                        dtype=plan.dtype,
                        max_workspace_bytes=workspace_cap,
                        gradients=plan.gradients,
                        seed=plan.seed,
                    )
                )
        run.layers = [checks[id(c)] for c in convs]
    if any(call.lowered for call in lowered_calls):
        say(f"[{dev}] per layer: {len(lowered_calls)} conv(s) lowered at run time")
        with torch.no_grad():
            run.layers += check_runtime_layers(
                lowered_calls,
                native_calls,
                oracle_calls,
                tolerance=plan.tolerance,
                dtype=plan.dtype,
                max_workspace_bytes=workspace_cap,
                gradients=plan.gradients,
                seed=plan.seed,
            )
    del lowered_calls, native_calls, oracle_calls

    if plan.timing:
        say(f"[{dev}] timing: {plan.warmup} warm-up + {plan.repeats} interleaved repeats")
        with torch.no_grad():
            run.timing = time_forward(
                native, low, x, dev, repeats=plan.repeats, warmup=plan.warmup, seed=plan.seed
            )

    failing_op = next((op for op in run.conv_ops if op.status == "fail"), None)
    failing_layer = next((c.name for c in run.layers if c.status == "fail"), None)
    failing_layer_gradient = next(
        (g.label for g in run.layer_gradients if g.status == "fail"), None
    )
    failing_output = next((o.path for o in run.outputs if not o.ok), None)
    failing_gradient = next((g.path for g in run.gradients if not g.ok), None)
    compared = any(o.shape is not None for o in run.outputs)  # a tensor, not only None or ints
    nothing_compared = None if compared else "output (no tensor output to compare)"
    if plan.gradients and not any(g.judgement is not None for g in run.gradients):
        nothing_compared = nothing_compared or "gradients (no gradient to compare)"
    run.first_failure = (
        (f"conv op {failing_op.op} in {failing_op.where}" if failing_op else None)
        or failing_layer
        or failing_layer_gradient
        or failing_output
        or failing_gradient
        or nothing_compared
    )
    run.ok = run.first_failure is None
    run.inconclusive = inconclusive_causes(run.outputs, run.layers, plan.dtype)
    verdict = "pass" if run.ok else f"FAIL, first failure {run.first_failure}"
    if run.ok and run.inconclusive:
        verdict = f"INCONCLUSIVE: {run.inconclusive[0]}"
    say(f"[{dev}] {verdict}")
    return run


def _with_backward(forward_ops: list[ConvOpRun], gradient_ops: list[ConvOpRun]) -> list[ConvOpRun]:
    """The forward's conv ops, then those of the run with gradients that the forward did not
    show: every op of the backward, and any op only the forward with gradients on ran."""
    seen = {(op.op, op.phase, op.called_from, op.location) for op in forward_ops}
    return forward_ops + [
        op
        for op in gradient_ops
        if op.phase == "backward" or (op.op, op.phase, op.called_from, op.location) not in seen
    ]


def _export_capture(module: nn.Module, inputs: tuple) -> Any:
    """The export tier's capture of the original, for its per-layer checks: node names are the
    lowered graph's for every node the pass left alone.  A copy: export may leave attributes a
    forward assigns (ultralytics' anchors) as fake tensors on the module it ran."""
    from ..lowering.export import capture

    return capture(
        copy_to(module, inputs[0].device, _dtype_of(inputs), "the model"), inputs
    ).module()


def _dtype_of(inputs: tuple) -> torch.dtype:
    floats = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    floats = [t for t in floats if t.is_floating_point()]
    return floats[0].dtype if floats else torch.float32


ARTIFACTS = ("onnx", "pt2")


def _check_against(against: Sequence[str]) -> tuple[str, ...]:
    kinds = (against,) if isinstance(against, str) else tuple(against)
    unknown = [k for k in kinds if k not in ARTIFACTS]
    if unknown:
        raise LoweringError(
            f"against={unknown[0]!r}: verify can check the lowered model exported as "
            f"{' or '.join(repr(k) for k in ARTIFACTS)}"
        )
    if "onnx" in kinds:
        from ..lowering.export import require_onnx

        require_onnx("verify(against='onnx')")
    return kinds


def _check_artifacts(
    native: nn.Module,
    x: tuple,
    out_native: Any,
    out_oracle: Any,
    record: LoweringRecord | None,
    dev: torch.device,
    plan: _Plan,
) -> list[OutputCheck]:
    """One :class:`OutputCheck` per output tensor of each exported artifact (``onnx`` rows are
    run by onnxruntime), the artifact's value against the oracle's, judged like the lowered
    model's.  An artifact that cannot be made or run is one failing row that says why."""
    from ..lowering.export import export_lowered, run_artifact

    if dev.type != "cpu":
        return []
    strategy = record.strategy if record is not None else "unfold"
    workspace = record.max_workspace_bytes if record is not None else None
    native_leaves, _ = _flatten(out_native, "the model", type(native).__name__)
    oracle_leaves, _ = _flatten(out_oracle, "the float64 copy of the model", "")
    tensors = [
        (path, n, o)
        for (path, n), (_, o) in zip(native_leaves, oracle_leaves, strict=True)
        if isinstance(n, torch.Tensor)
    ]
    checks = []
    for kind in plan.against:
        label = "onnxruntime" if kind == "onnx" else "pt2 (saved, loaded)"
        plan.say(f"[{dev}] exporting the lowered model as {kind} and running it ({label})")
        try:
            if record is not None and record.gemm == "linear":
                program = export_linear_form(native, x, strategy=strategy)
            else:
                program = export_lowered(
                    native, x, strategy=strategy, max_workspace_bytes=workspace
                )
            got = run_artifact(program, kind, x)
        except MissingDependencyError:
            raise  # the environment, not the lowering: no failing row
        except LoweringError as err:
            checks.append(OutputCheck(f"{label}: output", None, None, ok=False, reason=str(err)))
            continue
        if len(got) != len(tensors):
            reason = f"the {kind} artifact returns {len(got)} tensor(s), the model {len(tensors)}"
            checks.append(OutputCheck(f"{label}: output", None, None, ok=False, reason=reason))
            continue
        for (path, n, o), value in zip(tensors, got, strict=True):
            value = value.to(device=n.device)
            checks.append(OutputCheck.judged(f"{label}: output{path}", n, value, o, plan.tolerance))
    return checks


def _calls_if(observe: bool, model: nn.Module, keep: Callable[[ConvCall], bool]) -> Any:
    """The original's conv calls, the tensors of those ``keep`` accepts; none unless observing."""
    if not observe:
        return contextlib.nullcontext([])
    return trace_conv_calls(model, keep_tensors=keep, record_native=True)


# -- end to end ------------------------------------------------------------------------------

# A native error against the oracle above this (rel-L2, or below this cosine) means the oracle
# is not the same function as the native model (an uninitialised lazy module, a model that
# draws its own random numbers): comparing the lowered error to it then proves little.
MEANINGLESS_REL_L2 = 0.25
MEANINGLESS_COSINE = 0.95


def _oracle_warnings(outputs: list[OutputCheck], dtype: torch.dtype) -> list[str]:
    found = []
    for check in outputs:
        diff = check.native
        if diff is None or diff.numel == 0 or "float" not in (check.dtype or ""):
            continue
        if diff.rel_l2 > MEANINGLESS_REL_L2 or diff.cosine < MEANINGLESS_COSINE:
            found.append(
                f"{check.path}: the original model in {dtype_name(dtype)} disagrees with its own "
                f"float64 oracle (rel-L2 {diff.rel_l2:.3g}, cosine {diff.cosine:.3g}), so the "
                "verdict, which compares the lowered model's error with the native one, proves "
                "little here. Usual causes: an uninitialised lazy module (run the model once "
                "before verifying), or random numbers the model draws itself"
            )
    return found


def _noise_warnings(gradients: list[OutputCheck], dtype: torch.dtype) -> list[str]:
    """The gradients whose native value is rounding noise by the oracle's measure (far off by
    :data:`MEANINGLESS_REL_L2` or :data:`MEANINGLESS_COSINE`): zero in exact arithmetic, their
    verdict compares noise with noise."""
    found = []
    for check in gradients:
        diff = check.native
        if diff is None or diff.numel == 0:
            continue
        if diff.rel_l2 > MEANINGLESS_REL_L2 or diff.cosine < MEANINGLESS_COSINE:
            found.append(
                f"{check.path}: the original model's gradient in {dtype_name(dtype)} is far from "
                f"its float64 oracle's (rel-L2 {diff.rel_l2:.3g}, cosine {diff.cosine:.3g}, "
                f"oracle peak {diff.reference_peak:.3g}). Usually a gradient that is zero in exact "
                "arithmetic, such as the bias of a conv that a train-mode BatchNorm follows: its "
                "verdict compares rounding noise with rounding noise and proves little"
            )
    return found


def _flatten(value: Any, what: str, model: str) -> tuple[list[tuple[str, Any]], Any]:
    """``(path, leaf)`` pairs of an output, and its spec; positional paths where pytree has
    no keys for a container (diffusers registers its outputs without them)."""
    try:
        leaves, spec = pytree.tree_flatten_with_path(value)
        pairs = [(pytree.keystr(path), leaf) for path, leaf in leaves]
    except ValueError:
        flat, spec = pytree.tree_flatten(value)
        pairs = [(f"[{i}]", leaf) for i, leaf in enumerate(flat)]
    for path, leaf in pairs:
        if not isinstance(leaf, torch.Tensor | int | float | bool | str | complex | type(None)):
            raise LoweringError(
                f"{what} ({model}) returns {with_article(leaf)} at output{path}, which "
                "torch.utils._pytree cannot flatten into tensors, so its values cannot be "
                f"compared. Fix: register {type(leaf).__name__} with "
                "torch.utils._pytree.register_pytree_node (or register_dataclass), or verify a "
                "wrapper module that returns its tensors"
            )
    return pairs, spec


def _check_outputs(
    native: Any, lowered: Any, oracle: Any, tol: Tolerance, model: str = "model"
) -> tuple[list[OutputCheck], list[str]]:
    """One :class:`OutputCheck` per leaf of the output, matched by its path in the pytree.

    Leaves are matched by path (``['out']``, ``.aux1``, ``[0]``), not by container type: FX's
    generated code returns a ``dict`` where the original returned an ``OrderedDict``, which is a
    note, not a failure.
    """
    native_leaves, native_spec = _flatten(native, "the model", model)
    lowered_leaves, lowered_spec = _flatten(lowered, "the lowered model", model)
    oracle_leaves, _ = _flatten(oracle, "the float64 copy of the model", model)
    native_paths = [path for path, _ in native_leaves]
    lowered_paths = [path for path, _ in lowered_leaves]
    if native_paths != lowered_paths:
        return [
            OutputCheck(
                path="output",
                shape=None,
                dtype=None,
                ok=False,
                reason=f"the lowered model returns {_structure(lowered_spec)}, the original "
                f"{_structure(native_spec)}",
            )
        ], []
    notes = []
    if native_spec != lowered_spec:
        notes.append(
            f"output containers differ, leaves match: the lowered model returns "
            f"{_structure(lowered_spec)}, the original {_structure(native_spec)}"
        )
    checks = []
    for (path, n), (_, lo), (_, o) in zip(
        native_leaves, lowered_leaves, oracle_leaves, strict=True
    ):
        label = "output" + path
        if not isinstance(n, torch.Tensor):
            same = type(n) is type(lo) and n == lo
            checks.append(
                OutputCheck(
                    path=label,
                    shape=None,
                    dtype=type(n).__name__,
                    ok=bool(same),
                    reason=None if same else f"original returns {n!r}, lowered {lo!r}",
                )
            )
            continue
        checks.append(OutputCheck.judged(label, n, lo, o, tol))
    return checks, notes


def _structure(spec: pytree.TreeSpec) -> str:
    """``OrderedDict{'out': *}``, ``GoogLeNetOutputs(logits=*, aux_logits2=*, aux_logits1=*)``."""
    if spec.is_leaf():
        return "*"
    children = [_structure(child) for child in spec.children()]
    name = getattr(spec.type, "__name__", str(spec.type))
    if isinstance(spec.context, type):  # a namedtuple: its class is the context
        fields_ = getattr(spec.context, "_fields", ())
        items = ", ".join(f"{k}={c}" for k, c in zip(fields_, children, strict=False))
        return f"{spec.context.__name__}({items})"
    if isinstance(spec.context, list | tuple) and len(spec.context) == len(children):
        items = ", ".join(f"{k!r}: {c}" for k, c in zip(spec.context, children, strict=True))
        return f"{name}{{{items}}}"
    return f"{name}({', '.join(children)})"


# -- arguments and the report's fields -------------------------------------------------------


def _check_arguments(model: Any, lowered: Any, dtype: Any, repeats: int, warmup: int) -> None:
    refuse_torchscript(model, "verify()")
    if not isinstance(model, nn.Module):
        raise LoweringError(
            f"verify() takes the original nn.Module, got {type(model).__name__}: pass the model "
            "object, e.g. lowerconv.verify(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))"
        )
    if lowered is not None and not isinstance(lowered, nn.Module):
        raise LoweringError(
            f"lowered= must be the nn.Module lowerconv.lower returned (or your edit of it), got "
            f"{type(lowered).__name__}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise LoweringError(
            f"dtype must be a floating-point torch.dtype such as torch.float32, got {dtype!r}"
        )
    if not (isinstance(repeats, int) and repeats >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise LoweringError(
            f"repeats must be an int >= 1 and warmup an int >= 0, got repeats={repeats!r}, "
            f"warmup={warmup!r}"
        )


def _tolerance(dtype: torch.dtype, rtol: Any, atol: Any, factor: Any) -> Tolerance:
    try:
        return default_tolerance(dtype, rtol=rtol, atol=atol, factor=factor)
    except ValueError as err:
        raise LoweringError(str(err)) from err


def _record_of(lowered: nn.Module) -> LoweringRecord | None:
    try:
        return lowering_record(lowered)
    except LookupError:
        return None


def _lowering_summary(record: LoweringRecord | None) -> dict[str, Any]:
    if record is None:
        return {
            "lowered": None,
            "strategies": {},
            "skipped": [],
            "trace_error": None,
            "export_error": None,
            "gemm": None,
            "linear": None,
        }
    return {
        "lowered": record.num_lowered,
        "strategies": record.strategies_used(),
        "skipped": [s.to_dict() for s in record.skipped],
        "trace_error": record.trace_error,
        "export_error": record.export_error,
        "gemm": record.gemm,
        "linear": sum(conv.gemm == "linear" for conv in record.lowered),
    }
