"""What ``lowerconv graph`` shows: each lowered conv with its shapes and its GEMM.

:func:`inspect_lowered` runs the lowered model once on example inputs through
:class:`torch.fx.passes.shape_prop.ShapeProp`, which writes ``tensor_meta`` (shape, dtype) on
every node, and reads the shapes at each conv's ``input_node`` and ``output_node``.  On the
fallback path the convs live in small lowered submodules; their inputs are captured with forward
pre-hooks and each submodule is shape-propagated on its own.  The GEMM shape, FLOPs and im2col
size come from :class:`~lowerconv.lowering.spec.ConvSpec` and the propagated input shape.
"""

from __future__ import annotations

import contextlib
import inspect as pyinspect
import io
import re
import textwrap
import types
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tabulate import tabulate
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import LoweringError
from .pt2e import dequantized_integer_conv
from .quantized import integer_leaves
from .record import LoweredConv, LoweringRecord, SkippedConv, lowering_record
from .runtime import ConvCall, trace_conv_calls
from .spec import ConvSpec, padding_text
from .strategies import workspace_bytes
from .subgraph import FreshArgs

__all__ = ["ConvRow", "GraphInspection", "format_bytes", "format_count", "inspect_lowered"]


@dataclass(frozen=True)
class ConvRow:
    """One lowered conv with the shapes it saw; shapes are None for a conv that did not run."""

    name: str
    strategy: str
    spec: ConvSpec | None
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    device: str = "cpu"
    max_workspace_bytes: int | None = None
    kind: str = ""
    gemm: str = "matmul"  # "linear": the GEMM is an nn.Linear (lower(gemm="linear"))

    @property
    def _batch_hw(self) -> tuple[int, ...] | None:
        """``(batch, *spatial sizes)`` of the input (an unbatched input is a batch of one)."""
        if self.spec is None or self.input_shape is None:
            return None
        n = self.spec.ndim
        if len(self.input_shape) not in (n + 1, n + 2):
            return None
        batch = self.input_shape[0] if len(self.input_shape) == n + 2 else 1
        return (batch, *self.input_shape[-n:])

    @property
    def gemm_shape(self) -> tuple[int, int, int] | None:
        """``(M, K, N)`` as :meth:`ConvSpec.gemm_shape` counts it (K per group)."""
        bhw = self._batch_hw
        return self.spec.gemm_shape(*bhw) if self.spec and bhw else None

    @property
    def flops(self) -> int | None:
        bhw = self._batch_hw
        return self.spec.flops(*bhw) if self.spec and bhw else None

    @property
    def im2col_bytes(self) -> int | None:
        """The largest im2col buffer this conv's strategy allocates (0: none; see
        :func:`lowerconv.lowering.strategies.workspace_bytes`), for an inference run."""
        bhw = self._batch_hw
        if self.spec is None or bhw is None or self.dtype is None:
            return None
        return workspace_bytes(
            self.spec,
            self.strategy,
            *bhw,
            self.dtype,
            device=self.device,
            max_workspace_bytes=self.max_workspace_bytes,
        )

    def cells(self) -> list[str]:
        spec = self.spec
        gemm = self.gemm_shape
        return [
            self.name,
            self.kind or (spec.kind if spec else ""),
            _hw(spec.kernel_size) if spec else "dynamic",
            _hw(spec.stride) if spec else "",
            _padding(spec) if spec else "",
            _hw(spec.dilation) if spec else "",
            str(spec.groups) if spec else "",
            _shape(self.input_shape),
            _shape(self.output_shape),
            " x ".join(map(str, gemm)) if gemm else "",
            format_count(self.flops),
            "none" if self.im2col_bytes == 0 else format_bytes(self.im2col_bytes),
            self.strategy + (" + nn.Linear" if self.gemm == "linear" else ""),
        ]


HEADERS = [
    "conv",
    "kind",
    "kernel",
    "stride",
    "padding",
    "dilation",
    "groups",
    "input",
    "output",
    "GEMM M x K x N",
    "FLOPs",
    "im2col",
    "strategy",
]


@dataclass
class GraphInspection:
    """The rows behind ``lowerconv graph``, the convs left alone, and the generated code."""

    model: str
    record: LoweringRecord
    rows: list[ConvRow]
    code: str

    @property
    def skipped(self) -> list[SkippedConv]:
        return self.record.skipped

    def table(self) -> str:
        """The lowered convs, then those left alone, then a one-line summary."""
        text = tabulate(
            [row.cells() for row in self.rows],
            headers=HEADERS,
            disable_numparse=True,
        )
        if self.skipped:
            left = tabulate(
                [[s.name, s.kind, s.reason] for s in self.skipped],
                headers=["left alone", "kind", "reason"],
                disable_numparse=True,
            )
            text += "\n\n" + left
        return text + "\n\n" + self.summary()

    def summary(self) -> str:
        record = self.record
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.strategy] = counts.get(row.strategy, 0) + 1
        used = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
        text = (
            f"{self.model}: {len(self.rows)} conv(s) lowered ({used}) on the {record.path} "
            f"path, {len(self.skipped)} left alone"
        )
        flops = [row.flops for row in self.rows if row.flops is not None]
        if flops:
            total = format_count(sum(flops))
            text += f"; {total}{'FLOPs' if total[-1].isalpha() else ' FLOPs'} in GEMMs"
        sized = [row for row in self.rows if row.im2col_bytes is not None]
        if sized:
            largest = max(sized, key=lambda row: row.im2col_bytes or 0)
            text += f"; largest im2col buffer {format_bytes(largest.im2col_bytes)} ({largest.name})"
        if record.trace_error:
            text += f"\nnot traceable as one graph ({record.trace_error.splitlines()[0]})"
        if record.export_error:
            text += f"\nnot captured by torch.export ({record.export_error.splitlines()[0]})"
        return text


def inspect_lowered(
    lowered: nn.Module, example_inputs: Sequence[torch.Tensor], *, model: str | None = None
) -> GraphInspection:
    """Shape-propagate ``lowered`` (the result of :func:`lowerconv.lower`) on ``example_inputs``.

    Raises :class:`LoweringError` if the model fails on those inputs.
    """
    record = lowering_record(lowered)
    by_module: dict[str, list[LoweredConv]] = {}
    for conv in record.lowered:
        if conv.mechanism == "run time" and not _is_graph(lowered, conv.graph_module):
            continue  # its shapes come from the run below
        by_module.setdefault(conv.graph_module, []).append(conv)

    # Convs in lowered submodules (the fallback path): capture each one's first inputs.
    captured: dict[str, tuple] = {}
    handles = []
    for qualname in by_module:
        if qualname:
            submodule = lowered.get_submodule(qualname)

            def capture(module, args, qualname=qualname):
                captured.setdefault(qualname, args)

            handles.append(submodule.register_forward_pre_hook(capture))
    try:
        # ShapeProp prints a traceback of any error before raising; the message below says it
        with (
            torch.no_grad(),
            contextlib.redirect_stderr(io.StringIO()),
            trace_conv_calls(lowered, scopes=("model", "module")) as calls,
        ):
            if "" in by_module:
                if not isinstance(lowered, fx.GraphModule):
                    raise LoweringError(
                        f"{type(lowered).__name__} is not a GraphModule, yet its record places "
                        "convs in its own graph"
                    )
                _NodeTrackingShapeProp(lowered).propagate(*example_inputs)
                captured[""] = tuple(example_inputs)
            else:
                lowered(*example_inputs)
            for qualname in by_module:
                if qualname and qualname in captured:
                    submodule = lowered.get_submodule(qualname)
                    _NodeTrackingShapeProp(submodule).propagate(*captured[qualname])
    except LoweringError:
        raise
    except Exception as exc:
        raise LoweringError(_run_failure(model or record.model, example_inputs, exc)) from exc
    finally:
        for handle in handles:
            handle.remove()

    rows = []
    for qualname, convs in by_module.items():
        graph_module = lowered.get_submodule(qualname) if qualname else lowered
        nodes = {node.name: node for node in graph_module.graph.nodes}
        ran = qualname in captured
        for conv in convs:
            in_meta = _tensor_meta(nodes.get(conv.input_node)) if ran else None
            out_meta = _tensor_meta(nodes.get(conv.output_node)) if ran else None
            rows.append(
                ConvRow(
                    name=conv.name,
                    strategy=conv.strategy,
                    spec=conv.spec,
                    input_shape=tuple(in_meta.shape) if in_meta is not None else None,
                    output_shape=tuple(out_meta.shape) if out_meta is not None else None,
                    dtype=in_meta.dtype if in_meta is not None else None,
                    kind=conv.kind,
                    gemm=conv.gemm,
                )
            )
    rows += _run_time_rows(record, lowered, calls)
    device = next((t.device.type for t in example_inputs if isinstance(t, torch.Tensor)), "cpu")
    rows = [
        replace(row, device=device, max_workspace_bytes=record.max_workspace_bytes) for row in rows
    ]
    return GraphInspection(
        model=model or record.model, record=record, rows=rows, code=lowered_code(lowered)
    )


def _is_graph(lowered: nn.Module, qualname: str) -> bool:
    return isinstance(lowered.get_submodule(qualname) if qualname else lowered, fx.GraphModule)


def _run_time_rows(
    record: LoweringRecord, lowered: nn.Module, calls: list[ConvCall]
) -> list[ConvRow]:
    """Rows for the convs lowered at run time, with the shapes their calls had.

    A ``Conv2d`` subclass lowered at run time is its record entry (called from its module); a
    call under a whole-module run-time lowering is a row of its own, as it ran.
    """
    rows = []
    by_module = {c.called_from: c for c in calls if c.scope == "module" and c.lowered}
    for conv in record.lowered:
        if (
            conv.mechanism == "run time"
            and conv.graph_module
            and not _is_graph(lowered, conv.graph_module)
        ):
            call = by_module.get(conv.graph_module)
            rows.append(_row(conv.name, conv.strategy, conv.spec, call, conv.kind))
    for call in calls:
        if call.scope == "model" and call.lowered:
            strategy = f"{call.concrete_strategy} (run time)"
            rows.append(_row(call.name, strategy, call.spec, call, call.kind))
    return rows


def _row(
    name: str, strategy: str, spec: ConvSpec | None, call: ConvCall | None, kind: str = ""
) -> ConvRow:
    x = call.arguments.get("input") if call is not None else None
    return ConvRow(
        name=name,
        strategy=strategy,
        spec=spec if spec is not None else (call.spec if call is not None else None),
        input_shape=call.input_shape if call is not None else None,
        output_shape=call.output_shape if call is not None else None,
        dtype=getattr(x, "dtype", None),
        kind=kind,
    )


def lowered_code(lowered: nn.Module, conv: str | None = None, helpers: bool = True) -> str:
    """The generated ``forward`` of the lowered graph (on the fallback path, each conv's), then
    the source of every lowerconv function it calls (``auto_conv``, ``tap_gemms``...), each
    once, with the functions those call in turn: so the printout shows every conv's arithmetic
    in standard torch ops, in the forward or in the helpers below it.

    ``conv`` (a lowered conv's name, ``layer1.0.conv1``) keeps only that conv's lines.
    """
    record = lowering_record(lowered)
    if record.path in ("graph", "export") and isinstance(lowered, fx.GraphModule):
        codes = {"": lowered.code}
    else:
        codes = {}
        for qualname in dict.fromkeys(c.graph_module for c in record.lowered if c.graph_module):
            submodule = lowered.get_submodule(qualname)
            if isinstance(submodule, fx.GraphModule):
                codes[qualname] = submodule.code
    if conv is not None:
        codes = _one_conv(record, codes, conv)
    parts = (
        []
        if "" in codes
        else [f"# {record.model} could not be traced as one graph: {record.trace_error}"]
    )
    parts += [f"# {name}\n{code.strip()}" if name else code.strip() for name, code in codes.items()]
    if helpers:
        sources = helper_sources("\n".join(codes.values()))
        if sources:
            parts.append("# The lowerconv functions called above, and those they call:")
            parts += sources
    return "\n\n".join(parts) + "\n"


def _one_conv(record: LoweringRecord, codes: dict[str, str], conv: str) -> dict[str, str]:
    found = [c for c in record.lowered if c.name == conv]
    if not found:
        names = ", ".join(c.name for c in record.lowered[:8])
        raise LoweringError(
            f"no lowered conv named {conv!r} in {record.model}; lowered convs include {names} "
            "(lowerconv graph MODEL lists them all)"
        )
    lowered_conv = found[0]
    code = codes.get(lowered_conv.graph_module, "")
    wanted = set(lowered_conv.nodes)
    lines = [line for line in code.splitlines() if line.strip().split(" = ")[0] in wanted]
    linear = lowered_conv.gemm == "linear"
    header = f"# {conv}: {lowered_conv.strategy}" + (
        f" (on CUDA inputs: {lowered_conv.cuda_strategy})" if lowered_conv.cuda_strategy else ""
    )
    if linear:
        header += f" + nn.Linear ({', '.join(lowered_conv.gemm_modules)})"
    return {"": header + "\n" + "\n".join(line.strip() for line in lines) + "\n"}


def helper_sources(code: str) -> list[str]:
    """The source of each lowerconv function the generated ``code`` calls (a graph leaf such as
    ``auto_conv`` or ``tap_gemms``), and of the lowerconv functions those call, each once."""
    from . import strategies

    leaves = {
        **strategies.graph_leaves(),
        **integer_leaves(),
        "dequantized_integer_conv": dequantized_integer_conv,
    }
    pending = [leaves[name] for name in leaves if re.search(rf"\b{name}\(", code)]
    # auto_conv(..., 'taps', ...) runs the strategy it names on CPU inputs.
    for name in dict.fromkeys(re.findall(r"\bauto_conv\([^\n]*?'(\w+)'", code)):
        pending.append(strategies.conv2d_strategy(name))
    # run_in_chunks('nchw', ...) runs that strategy's arithmetic on each chunk.
    for name in dict.fromkeys(re.findall(r"\brun_in_chunks\('(\w+)'", code)):
        pending.append(strategies.chunk_arithmetic(name))
    seen: dict[object, str] = {}
    while pending:
        fn = pending.pop(0)
        if fn in seen:
            continue
        try:
            seen[fn] = textwrap.dedent(pyinspect.getsource(fn)).strip()
        except (OSError, TypeError):
            continue
        pending += _lowerconv_callees(fn)
    return [f"# {fn.__module__}.{fn.__qualname__}\n{source}" for fn, source in seen.items()]


def _lowerconv_callees(fn) -> list:
    """The functions of lowerconv.lowering that ``fn`` names (globals and ``module.name``)."""
    module_globals = getattr(fn, "__globals__", {})
    code = getattr(fn, "__code__", None)
    names = set(code.co_names) if code else set()
    # Names passed as strings (``_leaf("tap_gemms", ...)`` looks its arithmetic up by name).
    names |= {
        c for c in (code.co_consts if code else ()) if isinstance(c, str) and c.isidentifier()
    }
    found = []
    for name in sorted(names):
        value = module_globals.get(name)
        if isinstance(value, types.ModuleType):
            continue
        if _is_lowering_function(value):
            found.append(value)
    for value in module_globals.values():
        if isinstance(value, types.ModuleType) and value.__name__.startswith(__package__):
            found += [
                getattr(value, n)
                for n in sorted(names)
                if _is_lowering_function(getattr(value, n, None))
            ]
    return found


def _is_lowering_function(value) -> bool:
    return isinstance(value, types.FunctionType) and value.__module__.startswith(__package__)


class _NodeTrackingShapeProp(FreshArgs, ShapeProp):
    """ShapeProp that remembers the node it is running, to name it when that node fails."""

    def run_node(self, n: fx.Node):
        try:
            return super().run_node(n)
        except Exception as exc:
            exc.lowerconv_node = n  # type: ignore[attr-defined]
            raise


def _run_failure(model: str, example_inputs: Sequence[torch.Tensor], exc: Exception) -> str:
    shapes = ", ".join(_shape(tuple(t.shape)) for t in example_inputs)
    node = getattr(exc, "lowerconv_node", None)
    cause = exc.__cause__ if node is not None and exc.__cause__ is not None else exc
    lines = str(cause).strip().splitlines()
    where = f" at node {node.name} ({node.op} {node.target})" if node is not None else ""
    return (
        f"running lowered {model} on input {shapes} failed{where}: {type(cause).__name__}: "
        f"{lines[0] if lines else ''}"
    )


# -- formatting ----------------------------------------------------------------------------------


def format_count(value: int | None) -> str:
    """``3_640_000_000 -> '3.64 G'``; blank for None."""
    if value is None:
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return str(value)


def format_bytes(value: int | None) -> str:
    """``7_375_872 -> '7.0 MiB'``; blank for None."""
    if value is None:
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _tensor_meta(node: fx.Node | None):
    if node is None:
        return None
    meta = node.meta.get("tensor_meta")
    return meta if hasattr(meta, "shape") else None


def _hw(sizes: tuple[int, ...]) -> str:
    return "x".join(map(str, sizes))


def _padding(spec: ConvSpec) -> str:
    text = padding_text(spec.pad)
    return text if spec.padding_mode == "zeros" or text == "0" else f"{text} {spec.padding_mode}"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape is not None else "not run"
