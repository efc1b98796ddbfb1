"""What the pass did, as data: which convs were lowered, how, and which were left alone and why.

:func:`lowering_record` reads the :class:`LoweringRecord` that :func:`lowerconv.lower` attaches
to the module it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tabulate import tabulate
from torch import nn

from .sites import SkippedConv
from .spec import KINDS, ConvSpec

__all__ = ["LoweredConv", "LoweringRecord", "SkippedConv", "lowering_record"]

RECORD_ATTR = "_lowerconv_record"


@dataclass
class LoweredConv:
    """One convolution the pass replaced.

    ``name`` is the original module's qualified name (``layer1.0.conv1``), ``node`` the name of
    the graph node it replaced, ``target`` what that node called, ``strategy`` the concrete
    strategy used, ``input_node``/``output_node`` the names, in the lowered graph, of the node
    feeding the conv and of the node now producing its output, ``nodes`` all nodes emitted, and
    ``graph_module`` the qualified name of the submodule whose graph holds them ('' for the
    returned module itself; the fallback path lowers each conv in its own small graph).

    ``mechanism`` is ``"graph"`` when nodes replace the conv, ``"run time"`` when its call is
    lowered as the model runs (an untraceable ``Conv2d`` subclass, or an ``F.conv2d`` call in a
    forward ``torch.fx`` could not trace); ``note`` then says where it is called from.
    ``kind`` is the convolution's kind (``"conv2d"``, ``"conv_transpose3d"``...).
    ``cuda_strategy`` is ``"cuda"`` where ``auto`` emitted a node that plans per call: it runs
    ``strategy`` on CPU inputs and the CUDA plan on CUDA ones (``""`` where one strategy runs
    on every device).

    ``gemm`` is the form of its GEMM: ``"matmul"`` (a matmul on the conv-shaped weight) or
    ``"linear"`` (``lower(gemm="linear")``: an ``nn.Linear``, one per group for a grouped conv,
    named in ``gemm_modules``); under ``gemm="linear"`` a conv kept on the matmul form says why
    in ``note``.
    """

    name: str
    node: str
    target: str
    spec: ConvSpec | None
    strategy: str
    input_node: str
    output_node: str
    nodes: list[str]
    graph_module: str = ""
    note: str = ""
    mechanism: str = "graph"
    kind: str = "conv2d"
    cuda_strategy: str = ""
    gemm: str = "matmul"
    gemm_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "node": self.node,
            "target": self.target,
            "spec": self.spec.to_dict() if self.spec else None,
            "strategy": self.strategy,
            "input_node": self.input_node,
            "output_node": self.output_node,
            "nodes": list(self.nodes),
            "graph_module": self.graph_module,
            "note": self.note,
            "mechanism": self.mechanism,
            "kind": self.kind,
            "cuda_strategy": self.cuda_strategy,
            "gemm": self.gemm,
            "gemm_modules": list(self.gemm_modules),
        }


@dataclass
class LoweringRecord:
    """The pass's account of one call to :func:`lowerconv.lower`.

    ``path`` is ``"graph"`` when the whole model was traced into one graph, ``"export"`` when
    ``torch.fx`` could not trace it (``trace_error`` says why) and ``torch.export`` captured it
    on the example inputs instead (also the path of a lowered ``ExportedProgram``), and
    ``"fallback"`` when neither could (``export_error`` says why): then each ``Conv2d`` module
    is lowered on its own and every other ``F.conv2d`` call of the forward at run time.

    ``runtime`` names the modules whose whole forward runs under run-time lowering (``""`` is
    the model itself, on the fallback path; on the graph path, ``leaf_modules=`` modules).  The
    convs they call are in ``lowered`` (``mechanism="run time"``) when ``lower`` was given
    ``example_inputs`` to run them on; ``runtime_calls_listed`` says whether it was.  ``skipped``
    lists every convolution of another kind the pass met, on every path.  ``gemm`` is the
    form asked for (``lower(gemm=...)``); each conv's ``gemm`` says which it got.
    """

    model: str
    strategy: str
    path: str = "graph"
    trace_error: str | None = None
    export_error: str | None = None
    lowered: list[LoweredConv] = field(default_factory=list)
    skipped: list[SkippedConv] = field(default_factory=list)
    runtime: list[str] = field(default_factory=list)
    runtime_calls_listed: bool = False
    max_workspace_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    gemm: str = "matmul"

    @property
    def num_lowered(self) -> int:
        return len(self.lowered)

    def strategies_used(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for conv in self.lowered:
            counts[conv.strategy] = counts.get(conv.strategy, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "strategy": self.strategy,
            "path": self.path,
            "trace_error": self.trace_error,
            "export_error": self.export_error,
            "lowered": [c.to_dict() for c in self.lowered],
            "skipped": [s.to_dict() for s in self.skipped],
            "runtime": list(self.runtime),
            "runtime_calls_listed": self.runtime_calls_listed,
            "max_workspace_bytes": self.max_workspace_bytes,
            "notes": list(self.notes),
            "kinds": list(self.kinds),
            "gemm": self.gemm,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        used = ", ".join(f"{k}: {v}" for k, v in self.strategies_used().items()) or "none"
        text = f"{self.model}: lowered {self.num_lowered} conv(s) ({used}) on the {self.path} path"
        if self.gemm != "matmul":
            linear = sum(c.gemm == "linear" for c in self.lowered)
            text += f"; {linear} with an nn.Linear GEMM, {self.num_lowered - linear} a matmul"
        if self.skipped:
            text += f"; left {len(self.skipped)} alone"
        if self.runtime and not self.runtime_calls_listed:
            text += "; F.conv* calls lowered at run time (listed once the model runs)"
        return text

    def __str__(self) -> str:
        rows = [
            [
                c.name,
                c.target,
                c.spec.describe() if c.spec else "dynamic",
                c.strategy + (" + nn.Linear" if c.gemm == "linear" else ""),
                "lowered",
            ]
            for c in self.lowered
        ]
        rows += [[s.name, s.kind, "", "", s.reason] for s in self.skipped]
        table = tabulate(rows, headers=["conv", "was", "config", "strategy", "result"])
        notes = "".join(f"\nnote: {note}" for note in self.notes)
        return f"{table}\n{self.summary()}{notes}"


def lowering_record(module: nn.Module) -> LoweringRecord:
    """The record :func:`lowerconv.lower` attached to ``module``.

    Raises ``LookupError`` for a module that did not come from :func:`lowerconv.lower`.
    """
    record = getattr(module, RECORD_ATTR, None)
    if record is None:
        raise LookupError(
            f"{type(module).__name__} has no lowering record: pass it through "
            "lowerconv.lower(model) first"
        )
    return record
