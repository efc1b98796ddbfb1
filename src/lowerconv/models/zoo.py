"""The model zoo run: lower and verify every torchvision model builder, and publish the table.

``lowerconv zoo`` calls :func:`run_zoo`, which builds each model with random weights (no
downloads), lowers it, verifies it against a float64 oracle with :func:`lowerconv.verify`, and
collects one :class:`ZooRow` per model.  ``docs/zoo.md`` is :meth:`ZooReport.to_markdown` of a
full run, committed.

The real-world models of :mod:`lowerconv.models.realworld` (transformers, diffusers,
segmentation_models_pytorch, ultralytics, kornia) join as one category per library,
:data:`REALWORLD_CATEGORIES`, for the libraries that are installed.  They run when asked for by
category or by name; a run that names neither stays the torchvision zoo.
"""

from __future__ import annotations

import gc
import json
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tabulate import tabulate

from ..errors import LoweringError
from .realworld import LIBRARIES, REALWORLD_MODELS, available_libraries, realworld_models
from .resolve import CATEGORIES, resolve_model, suggest_model_names, torchvision_models

__all__ = [
    "CATEGORIES",
    "LARGE_MODELS",
    "REALWORLD_CATEGORIES",
    "ZooReport",
    "ZooRow",
    "run_zoo",
    "select_models",
    "shard",
    "zoo_image_size",
]

# The real-world libraries, one category each, after torchvision's; select_models accepts those
# that are installed (available_libraries()).
REALWORLD_CATEGORIES = tuple(LIBRARIES)


# Skipped by default for time and memory on a 2-core, 24 GB machine: over 300 M parameters, so
# their float64 oracle alone needs several GB and minutes per forward.
LARGE_MODELS = {
    "vit_h_14": "632 M parameters",
    "regnet_y_128gf": "645 M parameters",
    "vit_l_16": "304 M parameters",
    "vit_l_32": "306 M parameters",
}

# Image side per category: small enough to keep a full run near an hour on 2 cores (a float64
# forward of convnext_base at 224 alone takes a minute there), large enough for every model's
# own minimum (RAFT needs 128, inception_v3 75; detection at 224, where no two proposals tie).
ZOO_IMAGE_SIZE = {
    "classification": 128,
    "quantization": 128,
    "segmentation": 128,
    "detection": 224,
    "video": 64,
    "optical_flow": 128,
}


# Models that need more than their category's side.
ZOO_IMAGE_SIZE_OVERRIDES = {
    "maxvit_t": 224,  # its 7x7 partitions need a 224 input
    "s3d": 224,  # its final 7x7 average pool needs a 224 input
    "mvit_v1_b": 224,  # built for 16x224x224 clips only
    "mvit_v2_s": 224,
}


def zoo_image_size(name: str, category: str, image_size: int | None = None) -> int | None:
    """The side the zoo runs ``name`` at: ``image_size`` when given, else its category's (or its
    override), rounded down to a multiple of the patch for a ViT (vit_h_14: 126, not 128).
    None for a real-world model, which has its own fixed inputs."""
    if category in REALWORLD_CATEGORIES:
        return None
    if image_size is not None:
        return image_size
    size = ZOO_IMAGE_SIZE_OVERRIDES.get(name, ZOO_IMAGE_SIZE[category])
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        size = max(patch, size // patch * patch)
    return size


@dataclass
class ZooRow:
    """One model's result. ``status`` is ``pass``, ``FAIL``, ``inconclusive`` (nothing failed,
    but degenerate values proved nothing), ``error`` or ``skipped``."""

    model: str
    category: str
    status: str
    convs_lowered: int = 0
    convs_left_alone: int = 0
    path: str = ""
    dtype: str = ""
    native_error: float | None = None
    lowered_error: float | None = None
    cpu_ratio: float | None = None
    first_failure: str | None = None
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ZooReport:
    rows: list[ZooRow] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(row.status in ("pass", "skipped") for row in self.rows)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "schema": "lowerconv.zoo/1",
            "environment": self.environment,
            "settings": self.settings,
            "counts": self.counts(),
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> ZooReport:
        if data.get("schema") != "lowerconv.zoo/1":
            raise LoweringError(
                f"not a lowerconv zoo report (schema {data.get('schema')!r}, expected "
                "'lowerconv.zoo/1'); pass a file written by `lowerconv zoo --json`"
            )
        return cls(
            rows=[ZooRow(**row) for row in data["rows"]],
            environment=dict(data.get("environment", {})),
            settings=dict(data.get("settings", {})),
        )

    def merged_into(self, earlier: ZooReport) -> ZooReport:
        """``earlier``'s rows with this run's rows in place of the same models' (new ones
        appended), in ``earlier``'s order: rerun a few models without rerunning the zoo."""
        fresh = {row.model: row for row in self.rows}
        before = {row.model for row in earlier.rows}
        rows = [fresh.pop(row.model, row) for row in earlier.rows] + list(fresh.values())
        settings = dict(earlier.settings)
        settings["rerun"] = sorted({row.model for row in self.rows} & before)
        settings["added"] = sorted(set(settings.get("added", [])) | set(fresh))
        return ZooReport(rows=rows, environment=self.environment, settings=settings)

    @classmethod
    def joined(cls, reports: Sequence[ZooReport]) -> ZooReport:
        """One report of several (the shards of one zoo run, ``lowerconv zoo --merge a.json
        b.json``): every row once, a later report's row replacing an earlier one's for the same
        model, in the zoo's order (category, then name).  The environment and settings are the
        first report's; ``wall_minutes`` is the sum of the reports' (machine time, not the wall
        time of parallel jobs)."""
        if not reports:
            raise LoweringError("nothing to join: pass one or more `lowerconv zoo --json` reports")
        rows: dict[str, ZooRow] = {}
        for report in reports:
            rows.update((row.model, row) for row in report.rows)
        order = (*CATEGORIES, *REALWORLD_CATEGORIES)
        environment: dict[str, str] = {}
        for report in reversed(reports):
            environment.update(report.environment)
        settings = dict(reports[0].settings)
        settings.pop("shard", None)
        minutes = [r.settings.get("wall_minutes") for r in reports]
        if all(isinstance(m, int | float) for m in minutes):
            settings["wall_minutes"] = round(sum(minutes), 1)
        if len(reports) > 1:
            settings["joined"] = len(reports)
        return cls(
            rows=sorted(
                rows.values(),
                key=lambda r: (
                    order.index(r.category) if r.category in order else len(order),
                    r.model,
                ),
            ),
            environment=environment,
            settings=settings,
        )

    def table_rows(self) -> list[list[str]]:
        return [
            [
                row.model,
                row.category,
                row.status,
                str(row.convs_lowered),
                str(row.convs_left_alone) if row.convs_left_alone else "",
                row.path,
                row.dtype,
                _sci(row.native_error),
                _sci(row.lowered_error),
                f"{row.cpu_ratio:.2f}x" if row.cpu_ratio is not None else "",
                row.first_failure or row.note,
            ]
            for row in self.rows
        ]

    HEADERS = (
        "model",
        "category",
        "result",
        "convs lowered",
        "left alone",
        "path",
        "dtype",
        "native err",
        "lowered err",
        "CPU lowered/native",
        "note",
    )

    def __str__(self) -> str:
        summary = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        return tabulate(self.table_rows(), headers=self.HEADERS) + f"\n{summary}"

    def to_markdown(self) -> str:
        env = self.environment
        settings = self.settings
        lines = [
            "# The torchvision model zoo, lowered and verified",
            "",
            "Generated by `lowerconv zoo --markdown docs/zoo.md --json docs/zoo.json`; do not edit by "
            "hand. Every torchvision model builder, random weights (seed "
            f"{settings.get('seed', 0)}), batch {settings.get('batch_size', 1)}, lowered with "
            f"strategy `{settings.get('strategy', 'unfold')}` and verified by `lowerconv.verify` "
            "against a float64 copy of the original. Image sides: "
            + _sizes_text(settings.get("image_size"))
            + ".",
            "",
            "- **native err** / **lowered err**: the largest error of the native model / the "
            "lowered model against the float64 oracle, over all output tensors, as "
            "max |error| / max |oracle output| (`normalized_max_abs` in the JSON report).",
            "- **path**: `graph` when the whole model traced into one graph, `export` when "
            "torch.fx could not trace it and torch.export captured it as one graph on its inputs, "
            "`fallback` when neither could and each conv module was lowered on its own (the rest "
            "at run time).",
            "- **CPU lowered/native**: median forward time of the lowered model over the native "
            f"one, {settings.get('repeats', '?')} repeats interleaved in one process: a quick "
            "check, taken while other jobs shared the machine; "
            "[performance.md](performance.md) measures speed with care.",
            "- **left alone**: convolutions the pass did not lower, listed in each model's record "
            "as `not lowered: <kind>`: only deformable ones, since every kind (Conv1d/2d/3d, "
            "ConvTranspose1d/2d/3d) is lowered; **convs lowered** counts every kind.",
            "- Detection models are verified in float64: their outputs are boxes after score "
            "thresholds and NMS, which float32 rounding alone can change.",
            *_realworld_text(self.rows, env),
            "",
            f"Machine: {env.get('machine', '?')}, {env.get('threads', '?')} threads, torch "
            f"{env.get('torch', '?')}, torchvision {env.get('torchvision', '?')}; "
            f"run took {settings.get('wall_minutes', '?')} min"
            + (f" of machine time in {settings['joined']} jobs" if settings.get("joined") else "")
            + (f" (then reran {', '.join(settings['rerun'])})" if settings.get("rerun") else "")
            + "."
            + (
                f" {len(settings['added'])} models were added to it later with `--merge`."
                if settings.get("added")
                else ""
            ),
            "",
            "Summary: " + ", ".join(f"{n} {status}" for status, n in self.counts().items()) + ".",
            "",
        ]
        torchvision_rows = [r for r in self.rows if r.category not in REALWORLD_CATEGORIES]
        realworld_rows = [r for r in self.rows if r.category in REALWORLD_CATEGORIES]
        if torchvision_rows:
            table = ZooReport(rows=torchvision_rows).table_rows()
            lines += [tabulate(table, headers=self.HEADERS, tablefmt="github"), ""]
        if realworld_rows:
            lines += [
                "## Models from other libraries",
                "",
                'Built by `lowerconv.realworld` (the `zoo` extra: `pip install -e ".[zoo]"`), run '
                "by `lowerconv zoo --category " + " --category ".join(REALWORLD_CATEGORIES) + "`. "
                "Most of them defeat `torch.fx` and take the fallback path: every `Conv2d` module "
                "lowered on its own, every other `F.conv2d` call lowered at run time, and the "
                "verifier's op audit confirms that no 2-D convolution ran.",
                "",
                tabulate(
                    [
                        [
                            r.model,
                            r.category,
                            r.path,
                            str(r.convs_lowered),
                            str(r.convs_left_alone) if r.convs_left_alone else "",
                            r.status,
                            r.first_failure or r.note,
                        ]
                        for r in realworld_rows
                    ],
                    headers=(
                        "model",
                        "library",
                        "path",
                        "convs lowered",
                        "left alone",
                        "result",
                        "note",
                    ),
                    tablefmt="github",
                ),
                "",
            ]
        return "\n".join(lines)


def _realworld_text(rows: list[ZooRow], environment: dict[str, str]) -> list[str]:
    libraries = [c for c in REALWORLD_CATEGORIES if any(row.category == c for row in rows)]
    if not libraries:
        return []
    versions = ", ".join(f"{lib} {environment.get(lib, '?')}" for lib in libraries)
    return [
        "- Rows of category " + ", ".join(f"`{lib}`" for lib in libraries) + " are real-world "
        "models built by `lowerconv.realworld` from small configs with random weights, on their "
        f"own fixed inputs ({versions})."
    ]


def _sizes_text(image_size: object) -> str:
    if isinstance(image_size, int):
        return f"{image_size} for every model"
    sizes = [f"{size} for {category}" for category, size in ZOO_IMAGE_SIZE.items()]
    sizes += [f"{size} for {name}" for name, size in ZOO_IMAGE_SIZE_OVERRIDES.items()]
    return ", ".join(sizes)


def _sci(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def select_models(
    names: Sequence[str] = (),
    *,
    categories: Iterable[str] = (),
    contains: str | None = None,
    include_large: bool = False,
) -> list[tuple[str, str, str | None]]:
    """``(name, category, skip_reason)`` for the models to run, in category order then by name.

    ``names`` picks models by exact name; ``categories`` and ``contains`` (a substring) filter.
    With neither names nor categories, the torchvision zoo: real-world models (one category per
    installed library of :data:`REALWORLD_CATEGORIES`) run when named or their category is.
    """
    installed = available_libraries()
    realworld = {name: entry.library for name, entry in realworld_models().items()}
    available = {**torchvision_models(), **realworld}
    unknown = [n for n in names if n not in available]
    if unknown:
        missing = [n for n in unknown if n in REALWORLD_MODELS]
        if missing:
            libraries = sorted({LIBRARIES[REALWORLD_MODELS[n].library] for n in missing})
            raise LoweringError(
                f"model(s) {', '.join(map(repr, missing))} come from {', '.join(libraries)}, "
                'which is not installed. Fix: pip install -e ".[zoo]"'
            )
        close = list(dict.fromkeys(c for n in unknown for c in suggest_model_names(n)))
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise LoweringError(
            f"unknown torchvision model(s) {', '.join(map(repr, unknown))} (and no real-world "
            f"model of that name either).{hint} Run `lowerconv models` for the torchvision names "
            "and the real-world ones (transformers, diffusers, segmentation_models_pytorch, "
            "ultralytics, kornia: the zoo extra)"
        )
    categories = tuple(categories)
    order = (*CATEGORIES, *installed)
    absent = [c for c in categories if c in REALWORLD_CATEGORIES and c not in installed]
    if absent:
        raise LoweringError(
            f"categor{'ies' if len(absent) > 1 else 'y'} {', '.join(map(repr, absent))}: "
            f"{', '.join(LIBRARIES[c] for c in absent)} not installed. Fix: pip install -e "
            '".[zoo]"'
        )
    bad = [c for c in categories if c not in order]
    if bad:
        raise LoweringError(
            f"unknown categor{'ies' if len(bad) > 1 else 'y'} {', '.join(map(repr, bad))}; "
            f"choose from {', '.join(order)}"
        )
    chosen = []
    for name, category in sorted(
        available.items(), key=lambda item: (order.index(item[1]), item[0])
    ):
        if names and name not in names:
            continue
        if categories and category not in categories:
            continue
        if not names and not categories and category in REALWORLD_CATEGORIES:
            continue
        if contains and contains not in name:
            continue
        skip = None
        if name in LARGE_MODELS and not include_large and name not in names:
            skip = f"skipped for time: {LARGE_MODELS[name]} (run with --include-large)"
        chosen.append((name, category, skip))
    return chosen


def shard(
    models: Sequence[tuple[str, str, str | None]], index: int, count: int
) -> list[tuple[str, str, str | None]]:
    """Shard ``index`` of ``count`` (1-based, ``lowerconv zoo --shard 2/4``): every ``count``-th
    model of ``models``, starting at the ``index``-th.  The ``count`` shards of one selection
    cover it exactly once, and each takes models from every category, so their times are alike
    (a category's models are of a size)."""
    if not 1 <= index <= count:
        raise LoweringError(
            f"--shard {index}/{count}: K must be between 1 and N. Fix: --shard 1/{count} to "
            f"--shard {count}/{count}, one per CI job"
        )
    return list(models[index - 1 :: count])


def run_zoo(
    models: Sequence[tuple[str, str, str | None]],
    *,
    strategy: str = "unfold",
    gemm: str = "matmul",
    batch_size: int = 1,
    image_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    timing: bool = True,
    repeats: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ZooReport:
    """Lower and verify each model of ``models`` (from :func:`select_models`) on the CPU.

    ``image_size`` applies to torchvision models only: real-world models run on their registry
    entry's own inputs.  ``gemm`` is :func:`lowerconv.lower`'s (``"linear"``: the Linear form).
    """
    from ..lowering.lower import lower
    from ..verification.verify import verify
    from .resolve import import_torchvision_models

    import_torchvision_models()  # one that does not import says so, with the versions and fix
    import torchvision

    say = progress or (lambda message: None)
    started = time.perf_counter()
    report = ZooReport(
        environment={
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "threads": str(torch.get_num_threads()),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
            **_library_versions({category for _, category, _ in models}),
        },
        settings={
            "strategy": strategy,
            "batch_size": batch_size,
            "image_size": image_size or "per category",
            "dtype": str(dtype).removeprefix("torch."),
            "timing": timing,
            "repeats": repeats,
            "seed": seed,
            **({"gemm": gemm} if gemm != "matmul" else {}),
        },
    )
    for index, (name, category, skip) in enumerate(models, 1):
        if skip:
            say(f"[{index}/{len(models)}] {name}: {skip}")
            report.rows.append(ZooRow(name, category, "skipped", note=skip))
            continue
        say(f"[{index}/{len(models)}] {name} ({category})")
        size = zoo_image_size(name, category, image_size)
        model_dtype = torch.float64 if category == "detection" else dtype
        t0 = time.perf_counter()
        row = ZooRow(name, category, "error", dtype=str(model_dtype).removeprefix("torch."))
        try:
            resolved = resolve_model(name, batch_size=batch_size, image_size=size, seed=seed)
            lowered = lower(
                resolved.model,
                strategy=strategy,
                example_inputs=resolved.example_inputs,
                gemm=gemm,
            )
            result = verify(
                resolved.model,
                resolved.example_inputs,
                lowered=lowered,
                strategy=strategy,
                dtype=model_dtype,
                timing=timing,
                repeats=repeats,
                warmup=1,
                seed=seed,
            )
            _fill_row(row, result)
        except Exception as exc:  # one broken model must not stop the run
            row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row.seconds = round(time.perf_counter() - t0, 1)
        say(f"    {row.status} in {row.seconds:.0f} s {row.first_failure or row.note}".rstrip())
        report.rows.append(row)
        del row
        gc.collect()
    report.settings["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
    return report


def _library_versions(categories: set[str]) -> dict[str, str]:
    """The version of each real-world library the run uses, for the report's environment."""
    from importlib.metadata import version

    return {
        library: version(LIBRARIES[library])
        for library in REALWORLD_CATEGORIES
        if library in categories
    }


def _fill_row(row: ZooRow, result) -> None:
    run = result.runs[0]
    lowering = result.lowering
    row.status = {"PASS": "pass", "INCONCLUSIVE": "inconclusive"}.get(result.verdict, "FAIL")
    row.path = result.path
    row.convs_lowered = lowering.get("lowered", 0)
    row.convs_left_alone = len(lowering.get("skipped") or [])
    row.first_failure = result.first_failure
    natives = [o.native.normalized_max_abs for o in run.outputs if o.native is not None]
    lowereds = [o.lowered.normalized_max_abs for o in run.outputs if o.lowered is not None]
    row.native_error = max(natives) if natives else None
    row.lowered_error = max(lowereds) if lowereds else None
    if run.timing is not None:
        row.cpu_ratio = run.timing.ratio
    if result.verdict == "INCONCLUSIVE":
        row.note = result.inconclusive[0][:160]
    elif not result.ok and result.failure_message():
        row.note = result.failure_message().splitlines()[0][:160]
