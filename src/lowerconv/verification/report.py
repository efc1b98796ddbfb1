"""What :func:`lowerconv.verify` found, as data, and how it reads: table, Markdown, JSON.

A :class:`VerificationReport` holds one :class:`DeviceRun` per device verified; each has the
end-to-end :class:`OutputCheck` of every output leaf, the :class:`LayerCheck` of every lowered
convolution in graph order, and :class:`Timing`.  With ``gradients=True`` it also has an
:class:`OutputCheck` per input and parameter gradient, and each layer a :class:`GradientCheck`
per gradient of the conv (``dX``, ``dW``, ``db``).  ``to_dict()`` follows the versioned schema
``lowerconv.verification/1`` documented field by field in ``docs/verification.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

import torch
from tabulate import tabulate

from ..errors import VerificationError
from .audit import ConvOpRun
from .metrics import Judgement, TensorDiff, Tolerance, compare, judge

__all__ = [
    "SCHEMA",
    "DeviceRun",
    "GradientCheck",
    "LayerCheck",
    "OutputCheck",
    "Timing",
    "TimingStats",
    "VerificationReport",
]

SCHEMA = "lowerconv.verification/1"


@dataclass
class OutputCheck:
    """One output leaf of the model (``output``, ``output['out']``, ``output.aux1``, ...).

    ``native``/``lowered`` are each model's diff against the float64 oracle; ``lowered_vs_native``
    compares the two models directly (informational).  ``reason`` says why it failed.
    """

    path: str
    shape: tuple[int, ...] | None
    dtype: str | None
    ok: bool
    reason: str | None = None
    native: TensorDiff | None = None
    lowered: TensorDiff | None = None
    lowered_vs_native: TensorDiff | None = None
    judgement: Judgement | None = None

    @classmethod
    def judged(
        cls, path: str, native: Any, lowered: Any, oracle: Any, tolerance: Tolerance
    ) -> OutputCheck:
        """The check of one value that both models computed: ``native`` and ``lowered`` each
        against the float64 ``oracle``, judged by :func:`~lowerconv.metrics.judge`."""
        shape, dtype = tuple(native.shape), str(native.dtype).removeprefix("torch.")
        if not isinstance(lowered, torch.Tensor) or lowered.shape != native.shape:
            got = (
                tuple(lowered.shape)
                if isinstance(lowered, torch.Tensor)
                else type(lowered).__name__
            )
            return cls(
                path, shape, dtype, ok=False, reason=f"lowered value is {got}, original {shape}"
            )
        tol = tolerance
        native_diff = compare(native, oracle, rtol=tol.rtol, atol=tol.atol)
        lowered_diff = compare(lowered, oracle, rtol=tol.rtol, atol=tol.atol)
        verdict = judge(native_diff, lowered_diff, tol)
        return cls(
            path=path,
            shape=shape,
            dtype=dtype,
            ok=verdict.ok,
            reason=verdict.reason,
            native=native_diff,
            lowered=lowered_diff,
            lowered_vs_native=compare(lowered, native, rtol=tol.rtol, atol=tol.atol),
            judgement=verdict,
        )


@dataclass
class GradientCheck:
    """One gradient of one lowered conv, checked on its own: ``dX`` (its input), ``dW`` (its
    weight) or ``db`` (its bias).

    The lowered conv, the native conv and the float64 conv run on the input the original model
    gives that conv and are pulled back from one seeded random output gradient; ``local_*`` are
    the lowered and native gradients against the float64 one, judged by the forward's rule.
    ``status`` is ``"pass"``, ``"fail"`` or ``"unchecked"`` (``reason`` says why).
    """

    layer: str
    grad: str
    status: str
    reason: str | None = None
    shape: tuple[int, ...] | None = None
    local_native: TensorDiff | None = None
    local_lowered: TensorDiff | None = None
    judgement: Judgement | None = None

    @property
    def label(self) -> str:
        """``layer2.0.conv1 (dW)``: how the report's ``first_failure`` names it."""
        return f"{self.layer} ({self.grad})"


@dataclass
class LayerCheck:
    """One lowered convolution, named by its original qualified name (``layer2.0.conv1``).

    ``status`` is ``"pass"``, ``"fail"`` or ``"unchecked"`` (``reason`` says why).  ``local_*``
    are the lowered conv's and the native conv's outputs against the float64 oracle's, all three
    fed the same input: the input the original model gives that conv.  ``accumulated_*`` are the
    rel-L2 errors of each model's own run at that conv's output, errors of earlier layers
    included.  ``im2col_bytes`` is the size of the conv's im2col buffer for the captured input.
    """

    name: str
    node: str
    target: str
    strategy: str
    config: str
    graph_module: str
    status: str
    reason: str | None = None
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    im2col_bytes: int | None = None
    local_native: TensorDiff | None = None
    local_lowered: TensorDiff | None = None
    judgement: Judgement | None = None
    accumulated_native: float | None = None
    accumulated_lowered: float | None = None
    gradients: list[GradientCheck] = field(default_factory=list)


@dataclass
class TimingStats:
    """Forward-pass wall time over ``repeats`` runs, in milliseconds."""

    median_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float


@dataclass
class Timing:
    """Original vs lowered forward time, A/B interleaved in one process; ``ratio`` is
    lowered/native median.  Peak memory (CUDA only) is ``max_memory_allocated`` above what was
    allocated before the forward."""

    repeats: int
    warmup: int
    native: TimingStats
    lowered: TimingStats
    ratio: float | None
    peak_memory_native_bytes: int | None = None
    peak_memory_lowered_bytes: int | None = None


@dataclass
class DeviceRun:
    """Everything verified on one device.

    ``inconclusive`` lists why a run that found no failure still proves nothing: an output or a
    checked layer whose float64 oracle is all zeros, or on which the native model is itself far
    from the oracle (see ``docs/verification.md``, "Inconclusive").
    """

    device: str
    device_name: str
    ok: bool
    first_failure: str | None
    outputs: list[OutputCheck] = field(default_factory=list)
    layers: list[LayerCheck] = field(default_factory=list)
    timing: Timing | None = None
    notes: list[str] = field(default_factory=list)
    conv_ops: list[ConvOpRun] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``PASS``, ``FAIL`` or ``INCONCLUSIVE`` (no failure, but nothing proven)."""
        if not self.ok:
            return "FAIL"
        return "INCONCLUSIVE" if self.inconclusive else "PASS"

    gradients: list[OutputCheck] = field(default_factory=list)

    @property
    def layer_gradients(self) -> list[GradientCheck]:
        """Every lowered conv's gradient checks, in graph order."""
        return [grad for layer in self.layers for grad in layer.gradients]

    @property
    def failing_conv_ops(self) -> list[ConvOpRun]:
        return [op for op in self.conv_ops if op.status == "fail"]

    @property
    def max_im2col(self) -> LayerCheck | None:
        sized = [layer for layer in self.layers if layer.im2col_bytes is not None]
        return max(sized, key=lambda layer: layer.im2col_bytes) if sized else None


@dataclass
class VerificationReport:
    """The verdict of :func:`lowerconv.verify` and everything behind it.

    ``ok`` is True when at least one device ran, no run failed (a run fails on a convolution
    op that ran in the lowered model, a failing layer or output, or no output to compare) and
    no run was inconclusive (``verdict`` is then ``INCONCLUSIVE``, ``inconclusive`` says why).
    ``first_failure`` names the first such thing: ``conv op ...``, the original qualified name of
    the first failing conv, the first failing conv gradient (``layer2.0.conv1 (dW)``), the first
    failing output's path (``output['out']``) or gradient's (``conv1.weight.grad``); else None.
    ``gradients`` says whether the backward pass was checked too.  ``devices_skipped`` maps a
    device that could not be used (CUDA absent) to the reason.
    """

    model: str
    lowered_model: str
    strategy: str
    path: str
    dtype: str
    tolerance: Tolerance
    seed: int
    training: bool
    inputs: list[dict]
    precision_flags: dict[str, Any]
    lowering: dict[str, Any]
    runs: list[DeviceRun] = field(default_factory=list)
    devices_skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    oracle_dtype: str = "float64"
    gradients: bool = False

    @property
    def ok(self) -> bool:
        """True only when at least one device ran and every run passed: no PASS without a check,
        and none on numbers that prove nothing."""
        return self.verdict == "PASS"

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL``, ``INCONCLUSIVE`` (nothing failed, but a degenerate output or layer
        proves nothing) or ``NOTHING VERIFIED`` (no device ran)."""
        if not self.runs:
            return "NOTHING VERIFIED"
        if not all(run.ok for run in self.runs):
            return "FAIL"
        return "INCONCLUSIVE" if self.inconclusive else "PASS"

    @property
    def inconclusive(self) -> list[str]:
        """Why the verdict is ``INCONCLUSIVE``, one line per cause, device first; else empty."""
        return [f"[{run.device}] {cause}" for run in self.runs for cause in run.inconclusive]

    @property
    def first_failure(self) -> str | None:
        return next((run.first_failure for run in self.runs if run.first_failure), None)

    @property
    def layers(self) -> list[LayerCheck]:
        """The per-layer checks of the first device verified."""
        return self.runs[0].layers if self.runs else []

    @property
    def outputs(self) -> list[OutputCheck]:
        """The output checks of the first device verified."""
        return self.runs[0].outputs if self.runs else []

    def layer(self, name: str) -> LayerCheck:
        """The first device's check of the conv with original qualified name ``name``."""
        for check in self.layers:
            if check.name == name:
                return check
        known = ", ".join(c.name for c in self.layers[:8])
        raise KeyError(f"no lowered conv named {name!r} in this report; first few: {known}")

    # -- verdict -----------------------------------------------------------------------------

    def failure_message(self) -> str | None:
        """Why verification failed (or was inconclusive), naming the first failure and its
        numbers; None when ok."""
        if self.ok:
            return None
        if self.verdict == "INCONCLUSIVE":
            return self._inconclusive_message()
        if not self.runs:
            skipped = "; ".join(f"{d}: {why}" for d, why in self.devices_skipped.items())
            return (
                f"nothing was verified for {self.model}: no device ran ({skipped or 'none asked'}). "
                "Fix: verify on a device that is available here (device='cpu'), or run where the "
                "device exists"
            )
        lines = [f"lowered {self.model} does not match the original ({self.dtype}):"]
        for run in self.runs:
            if run.ok:
                continue
            for op in run.failing_conv_ops:
                lines.append(
                    f"  [{run.device}] conv op {op.op} ({op.kind}, {op.phase}) ran {op.count} "
                    f"time(s) in the lowered model, from {op.where}: it should have been lowered"
                )
            if not any(o.shape is not None for o in run.outputs):
                lines.append(
                    f"  [{run.device}] no output tensor to compare: the model returned none, so "
                    "nothing was checked end to end. Fix: verify a module that returns the "
                    "tensors to compare"
                )
            failing_layers = [c for c in run.layers if c.status == "fail"]
            failing_outputs = [o for o in run.outputs if not o.ok]
            failing_grads = [g for g in run.layer_gradients if g.status == "fail"]
            if failing_layers:
                first = failing_layers[0]
                lines.append(
                    f"  [{run.device}] first failing layer {first.name!r} "
                    f"({first.target} {first.config}, strategy {first.strategy}): {first.reason}"
                )
                if len(failing_layers) > 1:
                    others = ", ".join(c.name for c in failing_layers[1:6])
                    more = (
                        "" if len(failing_layers) <= 6 else f" and {len(failing_layers) - 6} more"
                    )
                    lines.append(f"  [{run.device}] also failing: {others}{more}")
            if failing_grads:
                first = failing_grads[0]
                lines.append(
                    f"  [{run.device}] first failing conv gradient {first.label!r}, the lowered "
                    f"conv's backward on the original's input: {first.reason}"
                )
                if len(failing_grads) > 1:
                    others = ", ".join(g.label for g in failing_grads[1:6])
                    more = "" if len(failing_grads) <= 6 else f" and {len(failing_grads) - 6} more"
                    lines.append(f"  [{run.device}] also failing: {others}{more}")
            for output in failing_outputs:
                lines.append(f"  [{run.device}] {output.path}: {output.reason}")
            failing_gradients = [g for g in run.gradients if not g.ok]
            for gradient in failing_gradients[:6]:
                lines.append(f"  [{run.device}] {gradient.path}: {gradient.reason}")
            if len(failing_gradients) > 6:
                lines.append(
                    f"  [{run.device}] and {len(failing_gradients) - 6} more failing gradients"
                )
            if run.gradients == [] and self.gradients:
                lines.append(
                    f"  [{run.device}] no gradient to compare: no output that requires grad "
                    "reaches an input or a parameter. Fix: verify without gradients, or a model "
                    "with trainable parameters"
                )
        lines.append(
            f"  tolerance: lowered error <= {self.tolerance.factor:g} x native error + "
            f"rtol {self.tolerance.rtol:g} + atol {self.tolerance.atol:g}/scale, against a float64 "
            "oracle; per-layer numbers: print(report)"
        )
        return "\n".join(lines)

    def raise_if_failed(self, *, allow_inconclusive: bool = False) -> VerificationReport:
        """Raise :class:`VerificationError` if verification failed, or was inconclusive unless
        ``allow_inconclusive=True``; return ``self`` otherwise."""
        if allow_inconclusive and self.verdict == "INCONCLUSIVE":
            return self
        message = self.failure_message()
        if message is not None:
            raise VerificationError(message)
        return self

    def _inconclusive_message(self) -> str:
        lines = [
            f"verification of lowered {self.model} is inconclusive ({self.dtype}): nothing "
            "failed, but these values prove nothing about the lowering:"
        ]
        lines += [f"  {cause}" for cause in self.inconclusive]
        lines.append(
            "  fix: values that underflow: verify in a wider dtype, or with batch-norm "
            "statistics calibrated on the input (calibrate_bn=True); a reference of zeros: "
            "trained weights, or an input that reaches the layer; or accept the verdict with "
            "allow_inconclusive=True"
        )
        return "\n".join(lines)

    # -- data --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The report as plain JSON data, schema ``lowerconv.verification/1``."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "ok": self.ok,
            "verdict": self.verdict,
            "first_failure": self.first_failure,
            "inconclusive": self.inconclusive,
        }
        for f in fields(self):
            if f.name == "runs":
                out["runs"] = [_run_dict(run) for run in self.runs]
            else:
                out[f.name] = _jsonable(getattr(self, f.name))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    # -- text --------------------------------------------------------------------------------

    def __str__(self) -> str:
        parts = [self._headline()]
        for run in self.runs:
            parts.append(f"\n[{run.device}] {run.device_name}")
            if run.layers:
                parts.append(
                    tabulate(_layer_rows(run), headers=_LAYER_HEADERS, disable_numparse=True)
                )
            parts.append(
                tabulate(_output_rows(run), headers=_OUTPUT_HEADERS, disable_numparse=True)
            )
            if run.layer_gradients:
                parts.append(
                    tabulate(
                        _layer_gradient_rows(run),
                        headers=_LAYER_GRADIENT_HEADERS,
                        disable_numparse=True,
                    )
                )
            if run.gradients:
                parts.append(
                    tabulate(
                        _output_rows(run, run.gradients),
                        headers=_GRADIENT_HEADERS,
                        disable_numparse=True,
                    )
                )
            if run.conv_ops:
                parts.append(
                    tabulate(_conv_op_rows(run), headers=_CONV_OP_HEADERS, disable_numparse=True)
                )
        parts.append("\n" + tabulate(self._summary_rows(), tablefmt="plain"))
        return "\n".join(parts)

    def to_markdown(self) -> str:
        """A CI job summary: verdict first, per-layer tables folded away."""
        lines = [f"### lowerconv verification: {self.verdict}", "", self._context_line(), ""]
        lines += [f"> **Warning:** {warning}" for warning in self.warnings]
        if self.warnings:
            lines.append("")
        if self.first_failure:
            lines += [f"**First failure:** `{self.first_failure}`", ""]
        if not self.ok:
            lines += ["```", self.failure_message() or "", "```", ""]
        lines += [f"- **{key}**: {value}" for key, value in self._summary_rows()] + [""]
        for run in self.runs:
            lines += [f"#### {run.device}: {run.device_name}", ""]
            lines += [
                tabulate(
                    _output_rows(run),
                    headers=_OUTPUT_HEADERS,
                    tablefmt="github",
                    disable_numparse=True,
                ),
                "",
            ]
            if run.conv_ops:
                lines += [
                    tabulate(
                        _conv_op_rows(run),
                        headers=_CONV_OP_HEADERS,
                        tablefmt="github",
                        disable_numparse=True,
                    ),
                    "",
                ]
            if run.gradients:
                failing = sum(not g.ok for g in run.gradients)
                lines += [
                    f"<details><summary>Gradients on {run.device}: {len(run.gradients)} inputs "
                    f"and parameters, {failing} failing</summary>",
                    "",
                    tabulate(
                        _output_rows(run, run.gradients),
                        headers=_GRADIENT_HEADERS,
                        tablefmt="github",
                        disable_numparse=True,
                    ),
                    "",
                    "</details>",
                    "",
                ]
            if run.layer_gradients:
                failing = sum(g.status == "fail" for g in run.layer_gradients)
                lines += [
                    f"<details><summary>Per-layer gradients on {run.device}: "
                    f"{len(run.layer_gradients)} gradients of {len(run.layers)} convs, {failing} "
                    "failing</summary>",
                    "",
                    tabulate(
                        _layer_gradient_rows(run),
                        headers=_LAYER_GRADIENT_HEADERS,
                        tablefmt="github",
                        disable_numparse=True,
                    ),
                    "",
                    "</details>",
                    "",
                ]
            if run.layers:
                failing = sum(c.status == "fail" for c in run.layers)
                lines += [
                    f"<details><summary>Per-layer checks on {run.device}: {len(run.layers)} "
                    f"convs, {failing} failing</summary>",
                    "",
                    tabulate(
                        _layer_rows(run),
                        headers=_LAYER_HEADERS,
                        tablefmt="github",
                        disable_numparse=True,
                    ),
                    "",
                    "</details>",
                    "",
                ]
        return "\n".join(lines)

    def _context_line(self) -> str:
        n = self.lowering.get("lowered", 0)
        return (
            f"{self.model} -> {self.lowered_model}: {n} conv(s) lowered with `{self.strategy}` on "
            f"the {self.path} path; {self.dtype} vs a {self.oracle_dtype} oracle, "
            f"{'train' if self.training else 'eval'} mode, seed {self.seed}"
            + ("; forward and backward checked" if self.gradients else "")
        )

    def _headline(self) -> str:
        verdict = "PASS" if self.ok else f"FAIL (first failure: {self.first_failure})"
        if self.verdict == "INCONCLUSIVE":
            verdict = f"INCONCLUSIVE ({self.inconclusive[0]})"
        if not self.runs:
            verdict = "NOTHING VERIFIED (every device skipped)"
        warnings = "".join(f"\nWARNING: {warning}" for warning in self.warnings)
        return f"lowerconv verification: {verdict}\n{self._context_line()}{warnings}"

    def _summary_rows(self) -> list[list[str]]:
        tol = self.tolerance
        rows = [
            ["verdict", self.verdict + (" (with warnings)" if self.warnings else "")],
            ["first failure", self.first_failure or "-"],
            [
                "tolerance",
                f"lowered error <= {tol.factor:g} x native error + rtol {tol.rtol:g} + "
                f"atol {tol.atol:g}/scale ({self.dtype})",
            ],
        ]
        for run in self.runs:
            checked = [c for c in run.layers if c.status != "unchecked"]
            failed = [c for c in run.layers if c.status == "fail"]
            failing_ops = sum(op.count for op in run.failing_conv_ops)
            left_alone = sum(op.count for op in run.conv_ops) - failing_ops
            rows.append(
                [
                    f"{run.device}",
                    f"{run.status}: {len(run.outputs)} output(s), "
                    f"{len(checked)}/{len(run.layers)} layer(s) checked, {len(failed)} failing; "
                    f"conv ops run: {failing_ops} failing, {left_alone} left alone",
                ]
            )
            if self.gradients:
                grads = run.layer_gradients
                rows.append(
                    [
                        f"{run.device} gradients",
                        f"{len(run.gradients)} input and parameter gradient(s), "
                        f"{sum(not g.ok for g in run.gradients)} failing; "
                        f"{sum(g.status != 'unchecked' for g in grads)}/{len(grads)} conv "
                        f"gradient(s) checked, {sum(g.status == 'fail' for g in grads)} failing",
                    ]
                )
            if run.timing is not None:
                t = run.timing
                ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
                rows.append(
                    [
                        f"{run.device} time",
                        f"native {_ms(t.native.median_ms, 3)} (IQR {_ms(t.native.iqr_ms, 2)}), "
                        f"lowered {_ms(t.lowered.median_ms, 3)} (IQR {_ms(t.lowered.iqr_ms, 2)}), "
                        f"ratio {ratio}, median of {t.repeats}",
                    ]
                )
                if t.peak_memory_native_bytes is not None:
                    rows.append(
                        [
                            f"{run.device} peak memory",
                            f"native {_bytes(t.peak_memory_native_bytes)}, lowered "
                            f"{_bytes(t.peak_memory_lowered_bytes)}",
                        ]
                    )
            largest = run.max_im2col
            if largest is not None:
                rows.append(
                    [
                        f"{run.device} largest im2col",
                        f"{_bytes(largest.im2col_bytes)} ({largest.name})",
                    ]
                )
            rows += [[f"{run.device} note", note] for note in run.notes]
        rows.append(["precision flags", _describe_flags(self.precision_flags)])
        rows += [[f"{device} skipped", reason] for device, reason in self.devices_skipped.items()]
        for tier, key in (("torch.fx", "trace_error"), ("torch.export", "export_error")):
            # Why each tier before the one taken failed: the path says what the model gave up.
            if self.lowering.get(key):
                rows.append([f"{tier} tier failed", self.lowering[key].splitlines()[0]])
        skipped = self.lowering.get("skipped", [])
        if skipped:
            rows.append(["convs not lowered", ", ".join(s["name"] for s in skipped)])
        rows += [["note", note] for note in self.notes]
        return rows


_LAYER_HEADERS = [
    "layer",
    "strategy",
    "config",
    "input",
    "local err native",
    "local err lowered",
    "bound",
    "accum native",
    "accum lowered",
    "im2col",
    "verdict",
]
_OUTPUT_HEADERS = [
    "output",
    "shape",
    "max abs(lowered-native)",
    "err native",
    "err lowered",
    "bound",
    "cosine",
    "nan/inf",
    "verdict",
]


_GRADIENT_HEADERS = ["gradient", *_OUTPUT_HEADERS[1:]]
_LAYER_GRADIENT_HEADERS = [
    "layer",
    "gradient",
    "shape",
    "local err native",
    "local err lowered",
    "bound",
    "verdict",
]
_CONV_OP_HEADERS = ["conv op run", "kind", "phase", "count", "verdict", "from"]


def _layer_gradient_rows(run: DeviceRun) -> list[list[str]]:
    rows = []
    for g in run.layer_gradients:
        j = g.judgement
        rows.append(
            [
                g.layer,
                g.grad,
                _shape(g.shape),
                _num(j.native_error) if j else "-",
                _num(j.error) if j else "-",
                _num(j.bound) if j else "-",
                g.status if g.status != "unchecked" else f"unchecked: {g.reason}",
            ]
        )
    return rows


def _conv_op_rows(run: DeviceRun) -> list[list[str]]:
    return [
        [
            op.op,
            op.kind,
            op.phase,
            str(op.count),
            "FAIL" if op.status == "fail" else op.status,
            op.where,
        ]
        for op in run.conv_ops
    ]


def _layer_rows(run: DeviceRun) -> list[list[str]]:
    rows = []
    for c in run.layers:
        j = c.judgement
        rows.append(
            [
                c.name,
                c.strategy,
                c.config,
                _shape(c.input_shape),
                _num(j.native_error) if j else "-",
                _num(j.error) if j else "-",
                _num(j.bound) if j else "-",
                _num(c.accumulated_native),
                _num(c.accumulated_lowered),
                "none" if c.im2col_bytes == 0 else _bytes(c.im2col_bytes),
                c.status if c.status != "unchecked" else f"unchecked: {c.reason}",
            ]
        )
    return rows


def _output_rows(run: DeviceRun, checks: list[OutputCheck] | None = None) -> list[list[str]]:
    rows = []
    for o in run.outputs if checks is None else checks:
        j = o.judgement
        nonfinite = "-"
        if o.lowered is not None:
            nonfinite = f"{o.lowered.nan}/{o.lowered.inf}"
        rows.append(
            [
                o.path,
                _shape(o.shape),
                _num(o.lowered_vs_native.max_abs) if o.lowered_vs_native else "-",
                _num(j.native_error) if j else "-",
                _num(j.error) if j else "-",
                _num(j.bound) if j else "-",
                f"{o.lowered.cosine:.9f}" if o.lowered else "-",
                nonfinite,
                "pass" if o.ok else "FAIL",
            ]
        )
    return rows


def _run_dict(run: DeviceRun) -> dict:
    largest = run.max_im2col
    return {
        "device": run.device,
        "device_name": run.device_name,
        "ok": run.ok,
        "first_failure": run.first_failure,
        "inconclusive": list(run.inconclusive),
        "outputs": [_jsonable(o) for o in run.outputs],
        "layers": [_layer_dict(c) for c in run.layers],
        "timing": _jsonable(run.timing),
        "max_im2col_bytes": largest.im2col_bytes if largest else None,
        "max_im2col_layer": largest.name if largest else None,
        "notes": list(run.notes),
        "conv_ops": [_jsonable(op) for op in run.conv_ops],
        "warnings": list(run.warnings),
        "gradients": [_jsonable(g) for g in run.gradients],
    }


def _layer_dict(c: LayerCheck) -> dict:
    return {
        "name": c.name,
        "node": c.node,
        "target": c.target,
        "strategy": c.strategy,
        "config": c.config,
        "graph_module": c.graph_module,
        "status": c.status,
        "reason": c.reason,
        "input_shape": _jsonable(c.input_shape),
        "output_shape": _jsonable(c.output_shape),
        "im2col_bytes": c.im2col_bytes,
        "local": None
        if c.judgement is None
        else {
            "native": _jsonable(c.local_native),
            "lowered": _jsonable(c.local_lowered),
            "judgement": _jsonable(c.judgement),
        },
        "accumulated": {
            "native_rel_l2": _jsonable(c.accumulated_native),
            "lowered_rel_l2": _jsonable(c.accumulated_lowered),
        },
        "gradients": [
            {
                "grad": g.grad,
                "status": g.status,
                "reason": g.reason,
                "shape": _jsonable(g.shape),
                "native": _jsonable(g.local_native),
                "lowered": _jsonable(g.local_lowered),
                "judgement": _jsonable(g.judgement),
            }
            for g in c.gradients
        ],
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON data: dataclasses to dicts, tuples to lists, non-finite floats to None."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _describe_flags(flags: dict[str, Any]) -> str:
    """The pinned precision settings in one line; every setting is in ``to_dict()``."""
    if not flags:
        return "-"
    on_off = {True: "on", False: "off"}
    parts = []
    matmul = flags.get("torch.backends.cuda.matmul.allow_tf32")
    cudnn = flags.get("torch.backends.cudnn.allow_tf32")
    if matmul is not None or cudnn is not None:
        parts.append(f"TF32 matmul {on_off.get(matmul, matmul)}, cuDNN {on_off.get(cudnn, cudnn)}")
    precision = flags.get("torch.get_float32_matmul_precision")
    if precision is not None:
        parts.append(f"float32 matmul precision {precision}")
    for name, value in flags.items():
        if name.startswith("env "):
            parts.append(f"{name[4:]}={value} in the environment (overrides cuBLAS's TF32 flag)")
    reductions = [v for k, v in flags.items() if k.endswith("reduced_precision_reduction")]
    if reductions:
        state = "on" if any(reductions) else "off"
        parts.append(f"fp16/bf16 reduced-precision reductions {state}")
    return ", ".join(parts)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def _ms(milliseconds: float, digits: int) -> str:
    """``222 ms``, ``120 ms``, ``0.58 ms``: ``digits`` significant digits, never an exponent,
    so a median and its spread read in one unit."""
    rounded = float(f"{milliseconds:.{digits}g}")
    return f"{rounded:f}".rstrip("0").rstrip(".") + " ms"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
