"""The proof for integer lowerings: a quantised model and its integer GEMMs, compared in steps.

:func:`verify_integer` is what :func:`lowerconv.verify` runs for a model with ``torch.ao``
quantised convs (:func:`has_quantized_convs`).  There is no float64 oracle to appeal to: the
reference is the quantised model itself, run by the engine
(``torch.backends.quantized.engine``).  On copies, on the CPU (quantised kernels run there):

1. **End to end.**  The quantised model and the lowered one run on the same inputs; every output
   is compared in *quantisation steps*: the code difference of a quantised output, or the float
   difference divided by the scale of the tensor the model dequantised last (its
   ``DeQuantize``'s input).  The conv-op audit (:class:`~.audit.ConvOpAudit`) watches the
   lowered model: a ``quantized::conv2d`` (``_relu``, 1-D, 3-D...) left is a failure.
2. **Per layer.**  Each integer conv's nodes (:func:`~lowerconv.lowering.subgraph.conv_subgraph`)
   run on the quantised tensor the original conv received; their codes are compared with the
   original conv's output codes, and its scale and zero point must be the same.

A value passes when every element is exact or one step off (requantisation rounds a float
product, and engines differ by one step on rounding ties: ``docs/integer.md`` has the measured
counts); the report says how many were exact.  A value whose reference is all one code, the
zero point (a dead ReLU, a calibration that saw nothing), proves nothing: the verdict is then
``INCONCLUSIVE``, as in the float verifier (:mod:`.inconclusive`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from tabulate import tabulate
from torch import fx, nn

from ..errors import LoweringError, VerificationError
from ..lowering.inputs import normalize_example_inputs
from ..lowering.lower import lower
from ..lowering.pt2e import pt2e_conv_nodes
from ..lowering.quantized import is_quantized_conv, requant_recipe
from ..lowering.record import LoweredConv, lowering_record
from ..lowering.subgraph import conv_subgraph
from .audit import ConvOpAudit, ConvOpRun

__all__ = [
    "IntegerCheck",
    "IntegerVerificationReport",
    "has_quantized_convs",
    "step_diff",
    "verify_integer",
]

# Elements at most this many steps off pass (exact is 0): requantisation's rounding.
MAX_STEPS = 1
# ...and at least this fraction of them exact: engines' rounding differences touch about 1 in
# 10^4 to 10^5 elements (docs/integer.md); a whole layer one step off is a bug (a zero point or
# a scale off), not rounding.
MIN_EXACT_FRACTION = 0.99


def has_quantized_convs(model: nn.Module) -> bool:
    """Whether ``model`` holds a ``torch.ao`` quantised conv module, or is a PT2E graph with a
    conv between dequantize nodes: what makes :func:`lowerconv.verify` judge it in steps."""
    if any(is_quantized_conv(m) for m in model.modules()):
        return True
    return isinstance(model, fx.GraphModule) and bool(pt2e_conv_nodes(model.graph))


@dataclass
class IntegerCheck:
    """One value compared in quantisation steps: a model output or one integer conv's output.

    ``max_steps`` is the largest difference in steps of the reference's scale, ``exact`` how many
    of ``numel`` elements are equal.  ``degenerate`` says why the value proves nothing (every
    reference element the zero point), else None.  ``status``: ``"pass"``, ``"fail"``.
    """

    name: str
    shape: tuple[int, ...]
    scale: float | None
    zero_point: int | None
    numel: int
    exact: int
    max_steps: float
    status: str
    reason: str | None = None
    degenerate: str | None = None

    @property
    def exact_fraction(self) -> float:
        return self.exact / self.numel if self.numel else 1.0

    def row(self) -> list:
        return [
            self.name,
            "x".join(map(str, self.shape)),
            f"{self.scale:.4g}" if self.scale is not None else "",
            self.zero_point if self.zero_point is not None else "",
            f"{self.exact}/{self.numel} ({100 * self.exact_fraction:.4g}%)",
            f"{self.max_steps:g}",
            self.status + (" (degenerate)" if self.degenerate else ""),
        ]

    def to_dict(self) -> dict:
        return {**asdict(self), "exact_fraction": self.exact_fraction}


@dataclass
class IntegerVerificationReport:
    """The result of :func:`verify_integer`: the verdict, the outputs, each integer conv.

    ``verdict`` is ``PASS`` (every value exact or within one step, no quantised conv op left),
    ``FAIL`` (``first_failure`` names the op, layer or output), or ``INCONCLUSIVE`` (no failure,
    but ``inconclusive`` lists values whose reference is all one code).
    """

    model: str
    engine: str
    recipe: str
    inputs: list[str]
    outputs: list[IntegerCheck] = field(default_factory=list)
    layers: list[IntegerCheck] = field(default_factory=list)
    conv_ops: list[ConvOpRun] = field(default_factory=list)
    first_failure: str | None = None
    inconclusive: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.first_failure:
            return "FAIL"
        return "INCONCLUSIVE" if self.inconclusive else "PASS"

    @property
    def ok(self) -> bool:
        return self.verdict == "PASS"

    def failure_message(self) -> str | None:
        if self.first_failure:
            return f"{self.model}: integer lowering FAILED, first failure {self.first_failure}"
        if self.inconclusive:
            return f"{self.model}: INCONCLUSIVE: {self.inconclusive[0]}"
        return None

    def raise_if_failed(self) -> None:
        message = self.failure_message()
        if message:
            raise VerificationError(message)

    def summary(self) -> str:
        checks = self.outputs + self.layers
        exact = sum(c.exact for c in checks)
        total = sum(c.numel for c in checks)
        worst_conv = max((c.max_steps for c in self.layers), default=0.0)
        worst_output = max((c.max_steps for c in self.outputs), default=0.0)
        text = (
            f"{self.verdict}: {self.model}, {len(self.layers)} integer conv(s) on the "
            f"{self.engine} engine (requant {self.recipe!r}): {exact}/{total} values exact "
            f"({100 * exact / total if total else 100:.4g}%), at most {worst_conv:g} step(s) "
            f"off per conv, {worst_output:g} at the output"
        )
        if any(c.status == "propagated" for c in self.outputs):
            text += " (propagated from one-step differences upstream)"
        if self.first_failure:
            text += f"; first failure {self.first_failure}"
        elif self.inconclusive:
            text += f"; inconclusive: {self.inconclusive[0]}"
        return text

    def __str__(self) -> str:
        headers = ["value", "shape", "scale", "zero pt", "exact", "max steps", "status"]
        table = tabulate([c.row() for c in self.outputs + self.layers], headers=headers)
        failing = [op for op in self.conv_ops if op.status == "fail"]
        ops = "".join(f"\nconv op {op.op} x{op.count}: {op.reason}" for op in failing)
        notes = "".join(f"\nnote: {note}" for note in self.notes)
        return f"{table}{ops}\n{self.summary()}{notes}"

    def to_markdown(self) -> str:
        headers = ["value", "shape", "scale", "zero pt", "exact", "max steps", "status"]
        table = tabulate([c.row() for c in self.outputs + self.layers], headers, "github")
        return f"# {self.model}: {self.verdict}\n\n{self.summary()}\n\n{table}\n"

    def to_dict(self) -> dict:
        return {
            "kind": "integer",
            "model": self.model,
            "verdict": self.verdict,
            "ok": self.ok,
            "engine": self.engine,
            "recipe": self.recipe,
            "inputs": list(self.inputs),
            "first_failure": self.first_failure,
            "inconclusive": list(self.inconclusive),
            "outputs": [c.to_dict() for c in self.outputs],
            "layers": [c.to_dict() for c in self.layers],
            "conv_ops": [asdict(op) for op in self.conv_ops],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_junit_xml(self, model: str | None = None) -> str:
        """One suite: a case per output, per integer conv, per conv op that should be gone."""
        import xml.etree.ElementTree as ET

        name = model or self.model
        root = ET.Element("testsuites", name="lowerconv")
        suite = ET.SubElement(root, "testsuite", name=f"lowerconv verify {name} [integer]")
        for check in self.outputs + self.layers:
            case = ET.SubElement(suite, "testcase", classname="lowerconv.verify.integer")
            case.set("name", check.name)
            if check.status == "fail":
                ET.SubElement(case, "failure", message=check.reason or "more than one step off")
        for op in self.conv_ops:
            if op.status == "fail":
                case = ET.SubElement(suite, "testcase", classname="lowerconv.verify.conv_ops")
                case.set("name", op.op)
                ET.SubElement(case, "failure", message=op.reason)
        return ET.tostring(root, encoding="unicode") + "\n"


def step_diff(
    name: str, reference: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> IntegerCheck:
    """``value`` against ``reference`` in steps: codes of quantised tensors (whose scale and zero
    point must match), or float differences over ``scale`` (None: exact equality only)."""
    shape = tuple(reference.shape)
    zero_point = None
    if reference.is_quantized:
        scale, zero_point = reference.q_scale(), reference.q_zero_point()
        if not value.is_quantized:
            return _mismatch(name, shape, scale, zero_point, f"lowered value is {value.dtype}")
        if (value.q_scale(), value.q_zero_point(), value.dtype) != (
            scale,
            zero_point,
            reference.dtype,
        ):
            reason = (
                f"lowered value is {value.dtype} scale {value.q_scale():.6g} zero point "
                f"{value.q_zero_point()}, the quantised model's {reference.dtype} scale "
                f"{scale:.6g} zero point {zero_point}"
            )
            return _mismatch(name, shape, scale, zero_point, reason)
        ref_codes = reference.int_repr().to(torch.int64)
        steps = (value.int_repr().to(torch.int64) - ref_codes).abs().to(torch.float64)
        flat = bool(ref_codes.eq(zero_point).all())
    else:
        if value.is_quantized or value.shape != reference.shape:
            got = "quantised" if value.is_quantized else f"shape {tuple(value.shape)}"
            return _mismatch(name, shape, scale, None, f"lowered value is {got}")
        diff = (value.to(torch.float64) - reference.to(torch.float64)).abs()
        # In whole steps: a dequantised value is scale * (code - zero point), so differences
        # are whole steps up to float rounding, and a PT2E conv's float output is its integer
        # accumulator times its unit, so values within half a unit are the same integer.
        steps = (diff / scale).round() if scale else diff.ne(0).to(torch.float64) * float("inf")
        steps = torch.where(diff == 0, torch.zeros_like(steps), steps)
        flat = bool(reference.eq(0).all())
    if tuple(value.shape) != shape:
        return _mismatch(name, shape, scale, zero_point, f"lowered shape {tuple(value.shape)}")
    max_steps = float(steps.max()) if steps.numel() else 0.0
    exact = int(steps.eq(0).sum())
    fraction = exact / steps.numel() if steps.numel() else 1.0
    ok = max_steps <= MAX_STEPS and fraction >= MIN_EXACT_FRACTION
    reason = None
    if max_steps > MAX_STEPS:
        reason = f"{max_steps:g} steps off (at most {MAX_STEPS} allowed)"
    elif not ok:
        reason = (
            f"only {100 * fraction:.4g}% of elements exact (at least "
            f"{100 * MIN_EXACT_FRACTION:g}% expected: rounding differs rarely; a shift of most "
            "elements is a wrong zero point or scale)"
        )
    return IntegerCheck(
        name=name,
        shape=shape,
        scale=scale,
        zero_point=zero_point,
        numel=steps.numel(),
        exact=exact,
        max_steps=max_steps,
        status="pass" if ok else "fail",
        reason=reason,
        degenerate=(
            "every reference element is the zero point (a real 0), so any lowering matches it"
            if flat and steps.numel()
            else None
        ),
    )


def _mismatch(name, shape, scale, zero_point, reason) -> IntegerCheck:
    return IntegerCheck(name, shape, scale, zero_point, 0, 0, float("inf"), "fail", reason)


def verify_integer(
    model: nn.Module,
    example_inputs: Any,
    *,
    lowered: nn.Module | None = None,
    per_layer: bool = True,
    progress: Callable[[str], None] | None = None,
) -> IntegerVerificationReport:
    """Verify the integer lowering of a quantised ``model`` against the model itself, in steps.

    ``lowered`` defaults to ``lowerconv.lower(model)``.  Nothing passed in is changed: the
    models run as copies, under ``no_grad``.  See the module docstring for what is checked.
    """
    say = progress or (lambda line: None)
    inputs = normalize_example_inputs(model, example_inputs)
    if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in inputs):
        raise LoweringError(
            f"verify({type(model).__name__}): quantised kernels run on the CPU; pass CPU inputs"
        )
    if lowered is None:
        say(f"lowering {type(model).__name__} (its quantised convs as integer GEMMs)")
        lowered = lower(model)
    record = lowering_record(lowered)
    native = copy.deepcopy(model)
    low = copy.deepcopy(lowered)
    report = IntegerVerificationReport(
        model=type(model).__name__,
        engine=torch.backends.quantized.engine,
        recipe=requant_recipe(),
        inputs=["x".join(map(str, t.shape)) + f" {t.dtype}" for t in inputs],
    )
    convs = [c for c in record.lowered if c.strategy == "integer"]
    if isinstance(native, fx.GraphModule) and not convs:
        report.recipe = "the graph's own quantize nodes (PT2E)"
    captured: dict[str, tuple] = {}
    dequantized: list[float] = []
    handles = _capture(native, convs if per_layer else [], captured, dequantized)
    audit = ConvOpAudit(low, record.skipped, record.kinds)
    say("end to end: the quantised model, then the lowered one (conv ops audited)")
    try:
        with torch.no_grad():
            try:
                out_native = native(*inputs)
            except Exception as exc:
                raise LoweringError(
                    f"the quantised {report.model} itself failed on inputs "
                    f"{', '.join(report.inputs)}, before any lowering ran: "
                    f"{type(exc).__name__}: {exc}. Fix: inputs the model accepts (a larger "
                    "image: torch's quantised mean refuses a 1x1 map, e.g. shufflenet at 32x32)"
                ) from exc
            with audit:
                out_lowered = low(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    report.conv_ops = audit.runs()
    scale = dequantized[-1] if dequantized else _pt2e_output_step(low)
    if scale is None:
        report.notes.append(
            "no DeQuantize ran, so float outputs are judged by exact equality (no step size)"
        )
    native_leaves = pytree.tree_flatten_with_path(out_native)[0]
    lowered_leaves = pytree.tree_flatten_with_path(out_lowered)[0]
    if len(native_leaves) != len(lowered_leaves):
        report.first_failure = (
            f"output: the lowered model returns {len(lowered_leaves)} value(s), "
            f"the quantised model {len(native_leaves)}"
        )
    for (path, ref), (_, got) in zip(native_leaves, lowered_leaves, strict=False):
        if isinstance(ref, torch.Tensor):
            report.outputs.append(step_diff("output" + pytree.keystr(path), ref, got, scale))
    if per_layer and convs:
        say(f"per layer: {len(convs)} integer conv(s), each on the quantised model's input")
        with torch.no_grad():
            report.layers = [_check_layer(low, conv, captured) for conv in convs]
    pt2e = [c for c in record.lowered if c.strategy == "integer (pt2e)"]
    if per_layer and pt2e and isinstance(native, fx.GraphModule):
        say(f"per layer: {len(pt2e)} PT2E conv(s), each on the graph's own codes")
        with torch.no_grad():
            report.layers += _check_pt2e_layers(native, low, pt2e, inputs)
    _judge(report)
    say(report.summary())
    return report


def _capture(
    native: nn.Module, convs: list[LoweredConv], captured: dict, dequantized: list[float]
) -> list:
    """Hooks on ``native``: each conv's input and output, and the scale of each DeQuantize."""
    from torch.ao.nn.quantized import DeQuantize

    handles = []
    for conv in convs:
        try:
            module = native.get_submodule(conv.name)
        except AttributeError:
            continue

        def keep(module, args, output, name=conv.name):
            captured.setdefault(name, (args[0], output))

        handles.append(module.register_forward_hook(keep))
    for module in native.modules():
        if isinstance(module, DeQuantize):

            def scale_of(module, args):
                if args[0].is_quantized and args[0].qscheme() == torch.per_tensor_affine:
                    dequantized.append(args[0].q_scale())

            handles.append(module.register_forward_pre_hook(scale_of))
    return handles


def _check_layer(low: nn.Module, conv: LoweredConv, captured: dict) -> IntegerCheck:
    if conv.name not in captured:
        return IntegerCheck(conv.name, (), None, None, 0, 0, 0.0, "not run", "not called")
    x, reference = captured[conv.name]
    try:
        sub, names = conv_subgraph(low, conv)
        got = sub(x)
    except Exception as exc:
        shape = tuple(reference.shape)
        return _mismatch(conv.name, shape, None, None, f"{type(exc).__name__}: {exc}")
    del names
    return step_diff(conv.name, reference, got)


def _pt2e_output_step(low: nn.Module) -> float | None:
    """A PT2E graph's output step: the scale of the dequantize that makes its (first) output,
    or, for a conv's float output, the smallest accumulator step ``sx * sw[c]`` of that conv."""
    if not isinstance(low, fx.GraphModule):
        return None
    output = next(n for n in reversed(low.graph.nodes) if n.op == "output")
    leaves = [a for a in pytree.tree_leaves(output.args) if isinstance(a, fx.Node)]
    if not leaves:
        return None
    node = leaves[0]
    if "dequantize_per_tensor" in str(node.target) and not isinstance(node.args[1], fx.Node):
        return float(node.args[1])
    spec = node.args[-1] if node.op == "call_function" and node.args else None
    if hasattr(spec, "input_scale"):
        return float(_attr(low, node.args[2]).min()) * spec.input_scale
    return None


def _attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _check_pt2e_layers(
    native: fx.GraphModule, low: fx.GraphModule, convs: list[LoweredConv], inputs: tuple
) -> list[IntegerCheck]:
    """Each PT2E conv's integer GEMM on the codes the original graph gave it, against the
    original's float conv, in steps of the quantize after it (else of its accumulator)."""
    wanted: set[str] = set()
    subgraphs = {}
    for conv in convs:
        sub, names = conv_subgraph(low, conv)
        subgraphs[conv.name] = (sub, names)
        wanted.update(names)
        wanted.add(conv.node)
    values = _Recorder(native, wanted).run(*inputs)
    checks = []
    for conv in convs:
        sub, names = subgraphs[conv.name]
        reference = values.get(conv.node)
        if reference is None or any(n not in values for n in names):
            checks.append(IntegerCheck(conv.name, (), None, None, 0, 0, 0.0, "not run"))
            continue
        got = sub(*(values[n] for n in names))
        checks.append(_pt2e_steps(conv, native, low, reference, got))
    return checks


class _Recorder(fx.Interpreter):
    """Runs a graph, keeping the values of the nodes named in ``wanted``."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.kept: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.name in self.wanted:
            self.kept[n.name] = value
        return value

    def run(self, *args: Any) -> dict[str, Any]:  # type: ignore[override]
        super().run(*args)
        return self.kept


def _pt2e_steps(
    conv: LoweredConv, native: fx.GraphModule, low: fx.GraphModule, reference, got
) -> IntegerCheck:
    node = next(n for n in native.graph.nodes if n.name == conv.node)
    quantize = _next_quantize(node)
    if quantize is not None:
        scale, zero, low_code, high_code = (float(quantize.args[1]), *map(int, quantize.args[2:5]))

        def codes(v: torch.Tensor) -> torch.Tensor:
            return torch.clamp(torch.round(v / scale) + zero, low_code, high_code)

        check = step_diff(conv.name, codes(reference), codes(got), 1.0)
        check.scale, check.zero_point = scale, zero
        # A real 0 is the zero point: a reference all at it proves nothing.
        flat = bool(codes(reference).eq(zero).all())
    else:
        lowered_node = next(n for n in low.graph.nodes if n.name == conv.output_node)
        spec = lowered_node.args[-1]
        unit = _attr(low, lowered_node.args[2]).to(torch.float64) * spec.input_scale
        shape = [1, -1] + [1] * (reference.dim() - 2)
        # The accumulator's unit: values within half a unit come from the same integer.
        steps = (got.double() - reference.double()).abs() / unit.view(shape)
        check = step_diff(conv.name, steps.round(), torch.zeros_like(steps), 1.0)
        check.scale = float(unit.min())
        flat = bool(reference.eq(0).all())
    check.degenerate = (
        "every reference element is the zero point (a real 0), so any lowering matches it"
        if flat
        else None
    )
    return check


def _next_quantize(node: fx.Node) -> fx.Node | None:
    """The quantize_per_tensor that requantises a conv's output, through one relu at most."""
    for _ in range(2):
        users = list(node.users)
        if len(users) != 1:
            return None
        node = users[0]
        if "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target):
            return node if not isinstance(node.args[1], fx.Node) else None
    return None


def _judge(report: IntegerVerificationReport) -> None:
    off_by_one = [c.name for c in report.layers if c.status == "pass" and c.exact < c.numel]
    if off_by_one and not any(c.status == "fail" for c in report.layers):
        # Each conv is within one step of the engine's on the engine's own input; a one-step
        # difference upstream then moves everything downstream of it, by more than a step.
        for check in report.outputs:
            if check.status == "fail" and check.numel:
                check.status = "propagated"
                check.reason = (
                    f"{check.reason}: propagated from one-step rounding differences in "
                    f"{', '.join(repr(n) for n in off_by_one[:4])}"
                    + (" ..." if len(off_by_one) > 4 else "")
                )
        if any(c.status == "propagated" for c in report.outputs):
            report.notes.append(
                f"{len(off_by_one)} integer conv(s) differ from the engine by one step in a few "
                "elements (every conv passed on its own input); the outputs marked 'propagated' "
                "differ by more because those differences travel through the layers after them. "
                "docs/integer.md says where the engine rounds differently"
            )
    failing_op = next((op for op in report.conv_ops if op.status == "fail"), None)
    failing_layer = next((c for c in report.layers if c.status == "fail"), None)
    failing_output = next((c for c in report.outputs if c.status == "fail"), None)
    if report.first_failure is None:
        if failing_op:
            report.first_failure = f"conv op {failing_op.op} in {failing_op.where}"
        elif failing_layer:
            report.first_failure = f"layer {failing_layer.name!r}: {failing_layer.reason}"
        elif failing_output:
            report.first_failure = f"{failing_output.name}: {failing_output.reason}"
        elif not report.outputs:
            report.first_failure = "output (no tensor output to compare)"
    report.inconclusive = [f"{c.name}: {c.degenerate}" for c in report.outputs if c.degenerate]
    flat = [c.name for c in report.layers if c.degenerate and c.status == "pass"]
    if flat:
        report.inconclusive.append(
            f"{len(flat)} integer conv(s) whose quantised output is all the zero point: "
            + ", ".join(repr(n) for n in flat[:6])
            + (" ..." if len(flat) > 6 else "")
        )
