"""The torchvision zoo: a fast subset covering each category and each fallback reason, the
``lowerconv zoo`` command, and (marked ``slow``) every model builder.

Run the whole zoo with ``pytest -m slow tests/test_zoo.py`` (about an hour on 2 cores).
"""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

import pytest
import torch
from torch import nn

import lowerconv
from lowerconv.cli import main
from lowerconv.models import realworld, resolve_model
from lowerconv.models.realworld import REALWORLD_MODELS, available_libraries
from lowerconv.models.zoo import (
    LARGE_MODELS,
    ZooReport,
    ZooRow,
    run_zoo,
    select_models,
    shard,
    zoo_image_size,
)

# (model, category, path expected, why this one: the category or the fallback reason it covers)
SUBSET = [
    ("squeezenet1_1", "classification", "graph", "classification, plain Conv2d + concat"),
    ("googlenet", "classification", "graph", "aux heads built but unused in eval mode"),
    ("quantized_shufflenet_v2_x0_5", "quantization", "graph", "float build of a quantizable model"),
    ("lraspp_mobilenet_v3_large", "segmentation", "graph", "dict output"),
    (
        "ssdlite320_mobilenet_v3_large",
        "detection",
        "fallback",
        "list input; iterating a Proxy in the detection head",
    ),
    (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "detection",
        "fallback",
        "list input; RPN and RoI heads with data-dependent shapes",
    ),
    ("r3d_18", "video", "graph", "Conv3d only: every conv lowered by the N-d im2col"),
    (
        "raft_small",
        "optical_flow",
        "export",
        "control flow on input shapes, which torch.export follows; float32 grids",
    ),
]
# RAFT's documented minimum; video stays small; detection at a size where no two proposals tie
SIZES = {"raft_small": 128, "r3d_18": 32, "fasterrcnn_mobilenet_v3_large_320_fpn": 224}


@pytest.mark.parametrize("name, category, path, why", SUBSET, ids=[row[0] for row in SUBSET])
def test_zoo_subset_lowers_and_verifies(name: str, category: str, path: str, why: str) -> None:
    report = run_zoo(select_models([name]), image_size=SIZES.get(name, 64), timing=False)
    (row,) = report.rows
    assert row.category == category
    assert row.status == "pass", row.note
    assert row.path == path, why
    # Every conv the forward runs: each call on a whole-graph path (RAFT's update block runs
    # its convs once per iteration), each module once on the fallback path.
    calls = _conv_calls(name)
    assert row.convs_lowered == (len(set(calls)) if path == "fallback" else len(calls))
    assert row.convs_left_alone == 0
    if category == "detection":
        assert row.dtype == "float64"
    assert row.lowered_error is not None and row.lowered_error <= 1e-4


def _conv_calls(name: str) -> list[str]:
    resolved = resolve_model(name, image_size=SIZES.get(name, 64))
    called: list[str] = []
    for qualname, module in resolved.model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            module.register_forward_hook(lambda *_, q=qualname: called.append(q))
    with torch.no_grad():
        resolved.model(*resolved.example_inputs)
    return called


def test_fallback_record_says_why_and_verifier_checks_each_layer() -> None:
    # At 224 pixels no two proposals share a score exactly; on tiny images degenerate clipped
    # proposals can, and then rounding decides their order (see docs/zoo.md).
    resolved = resolve_model("fasterrcnn_mobilenet_v3_large_320_fpn", image_size=224)
    lowered = lowerconv.lower(resolved.model)
    record = lowerconv.lowering_record(lowered)
    assert record.path == "fallback"
    assert "could not trace FasterRCNN" in record.trace_error
    assert "Proxy object cannot be iterated" in record.trace_error
    report = lowerconv.verify(
        resolved.model, resolved.example_inputs, lowered=lowered, dtype=torch.float64, timing=False
    )
    assert report.ok, report.failure_message()
    assert len(report.layers) == record.num_lowered
    assert all(layer.status == "pass" for layer in report.layers)
    # Boxes survive: a score threshold of 0 keeps them, so outputs are not trivially empty.
    boxes = next(o for o in report.outputs if o.path.endswith("['boxes']"))
    assert boxes.shape[0] > 0


def test_fallback_path_catches_a_wrong_conv_by_name() -> None:
    resolved = resolve_model("raft_small", image_size=128)
    lowered = lowerconv.lower(resolved.model)
    with torch.no_grad():
        lowered.get_submodule("feature_encoder.convnormrelu.0").weight.mul_(1.01)
    report = lowerconv.verify(
        resolved.model, resolved.example_inputs, lowered=lowered, timing=False
    )
    assert not report.ok
    assert report.first_failure == "feature_encoder.convnormrelu.0"


def test_select_models_filters_and_skips_large_ones() -> None:
    everything = select_models()
    names = [name for name, _, _ in everything]
    assert len(names) > 100 and len(set(names)) == len(names)
    categories = {category for _, category, _ in everything}
    assert categories == {
        "classification",
        "quantization",
        "segmentation",
        "detection",
        "video",
        "optical_flow",
    }
    skipped = {name for name, _, skip in everything if skip}
    assert skipped == set(LARGE_MODELS)
    assert not any(skip for _, _, skip in select_models(["vit_h_14"]))  # asked for by name
    resnets = select_models(categories=["classification"], contains="resnet")
    assert resnets and all("resnet" in n and c == "classification" for n, c, _ in resnets)
    with pytest.raises(lowerconv.LoweringError, match="unknown torchvision model"):
        select_models(["resnet181"])
    with pytest.raises(lowerconv.LoweringError, match="choose from"):
        select_models(categories=["detector"])


def test_realworld_libraries_are_categories_once_installed(monkeypatch) -> None:
    for library in available_libraries():
        chosen = select_models(categories=[library])
        assert chosen and all(category == library for _, category, _ in chosen)
        assert {name for name, _, _ in chosen} == {
            name for name, entry in REALWORLD_MODELS.items() if entry.library == library
        }
    monkeypatch.setattr(realworld, "_installed", lambda library: False)
    with pytest.raises(lowerconv.LoweringError, match=r"transformers not installed.*\[zoo\]"):
        select_models(categories=["transformers"])
    with pytest.raises(lowerconv.LoweringError, match=r"'hf_vit' come from transformers.*\[zoo\]"):
        select_models(["hf_vit"])


def test_zoo_runs_a_realworld_model_on_its_own_inputs() -> None:
    pytest.importorskip("kornia", reason='the zoo extra is not installed: pip install -e ".[zoo]"')
    chosen = select_models(categories=["kornia"], contains="edges")
    report = run_zoo(chosen, image_size=32, timing=False)  # the size is for torchvision only
    (row,) = report.rows
    assert (row.model, row.category) == ("kornia_edges", "kornia")
    assert row.status == "pass", row.note
    assert report.environment["kornia"]
    assert "`kornia` are real-world models" in report.to_markdown()
    # Two Conv2d modules, and kornia's three F.conv2d calls (a separable blur, then Sobel), all
    # in the one graph torch.export captures on the model's inputs, all counted.
    assert (row.path, row.convs_lowered) == ("export", 5)


def test_markdown_puts_other_libraries_in_a_table_of_their_own() -> None:
    report = ZooReport(
        rows=[
            ZooRow("resnet18", "classification", "pass", convs_lowered=20, path="graph"),
            ZooRow("hf_dpt", "transformers", "pass", 33, 2, path="fallback"),
        ]
    )
    text = report.to_markdown()
    first, _, second = text.partition("## Models from other libraries")
    assert "| resnet18" in first and "hf_dpt" not in first
    assert re.search(r"\| hf_dpt +\| transformers +\| fallback +\| +33 +\| +2 +\| pass", second)
    assert "resnet18" not in second


def test_zoo_command_writes_json_and_markdown(tmp_path, capsys) -> None:
    json_path, md_path = tmp_path / "zoo.json", tmp_path / "zoo.md"
    argv = ["zoo", "squeezenet1_1", "r3d_18", "--image-size", "32", "--no-timing"]
    code = main([*argv, "--json", str(json_path), "--markdown", str(md_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "squeezenet1_1" in out and "2 pass" in out
    data = json.loads(json_path.read_text())
    assert data["schema"] == "lowerconv.zoo/1"
    assert [row["model"] for row in data["rows"]] == ["squeezenet1_1", "r3d_18"]
    assert (data["rows"][1]["convs_lowered"], data["rows"][1]["convs_left_alone"]) == (20, 0)
    markdown = md_path.read_text()
    assert markdown.startswith("# The torchvision model zoo")
    assert "| squeezenet1_1 " in markdown

    # Rerun one model into the same report: its row is replaced, the others kept, in order.
    merged = tmp_path / "merged.json"
    argv = ["zoo", "r3d_18", "--image-size", "32", "--no-timing", "--seed", "1"]
    assert main([*argv, "--merge", str(json_path), "--json", str(merged)]) == 0
    merged_data = json.loads(merged.read_text())
    rows = merged_data["rows"]
    assert [row["model"] for row in rows] == ["squeezenet1_1", "r3d_18"]
    assert rows[0] == data["rows"][0] and merged_data["settings"]["rerun"] == ["r3d_18"]
    assert main(["zoo", "r3d_18", "--merge", str(md_path)]) == 2


def test_zoo_command_lists_and_refuses(capsys) -> None:
    assert main(["zoo", "--list", "--category", "optical_flow"]) == 0
    assert capsys.readouterr().out.split()[0] == "raft_large"
    assert main(["zoo", "resnet181"]) == 2
    assert "unknown torchvision model" in capsys.readouterr().err


def test_zoo_suggests_names_like_verify(capsys) -> None:
    assert main(["zoo", "resnt18"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean resnet18" in err and "real-world" in err


def test_every_model_gets_a_size_it_accepts() -> None:
    sizes = {
        name: zoo_image_size(name, category)
        for name, category, _ in select_models(include_large=True)
    }
    for name, size in sizes.items():
        if name.startswith("vit_"):  # the image splits into whole patches
            assert size % int(name.rsplit("_", 1)[1]) == 0, (name, size)
    assert (sizes["vit_h_14"], sizes["vit_b_16"]) == (126, 128)
    assert sizes["mvit_v1_b"] == sizes["mvit_v2_s"] == 224  # built for 16x224x224 clips only
    assert zoo_image_size("vit_h_14", "classification", 64) == 64  # asked for: given as asked


@pytest.mark.parametrize("count", [1, 3, 7])
def test_shards_cover_the_selection_exactly_once(count) -> None:
    everything = select_models(include_large=True)
    shards = [shard(everything, k, count) for k in range(1, count + 1)]
    names = [name for part in shards for name, _, _ in part]
    assert sorted(names) == sorted(name for name, _, _ in everything)
    assert len(names) == len(set(names))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [shard(everything, k, count) for k in range(1, count + 1)]  # deterministic


def test_shard_out_of_range_is_a_usage_error(capsys) -> None:
    assert main(["zoo", "--list", "--shard", "3/2"]) == 2
    assert "1 <= K <= N" in capsys.readouterr().err
    with pytest.raises(lowerconv.LoweringError, match="between 1 and N"):
        shard(select_models(), 0, 2)


def _shard_report(rows: list[ZooRow], minutes: float) -> ZooReport:
    return ZooReport(rows=rows, environment={"torch": "2.x"}, settings={"wall_minutes": minutes})


def test_merge_joins_shard_reports_into_one_table_and_junit(tmp_path, capsys) -> None:
    first = _shard_report(
        [
            ZooRow("resnet18", "classification", "pass", 20, path="graph", seconds=3.0),
            ZooRow("r3d_18", "video", "error", note="RuntimeError: out of memory"),
        ],
        1.5,
    )
    second = _shard_report(
        [
            ZooRow("alexnet", "classification", "FAIL", 5, first_failure="features.0",
                   note="features.0: rel-L2 error 0.01 > bound 1e-05"),
            ZooRow("vit_h_14", "classification", "skipped", note="skipped for time"),
        ],
        2.0,
    )  # fmt: skip
    paths = []
    for index, report in enumerate((first, second)):
        paths.append(tmp_path / f"shard-{index}.json")
        paths[-1].write_text(report.to_json())
    out_json, junit = tmp_path / "zoo.json", tmp_path / "zoo.xml"
    argv = ["zoo", "--merge", *map(str, paths), "--json", str(out_json), "--junit-xml", str(junit)]
    assert main(argv) == 1  # nothing ran; a joined FAIL still fails the step
    joined = json.loads(out_json.read_text())
    assert [row["model"] for row in joined["rows"]] == ["alexnet", "resnet18", "vit_h_14", "r3d_18"]
    assert joined["settings"]["wall_minutes"] == 3.5 and joined["settings"]["joined"] == 2
    assert "resnet18" in capsys.readouterr().out

    root = ElementTree.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == (
        "4", "1", "1", "1",
    )  # fmt: skip
    cases = {case.get("name"): case for case in root.iter("testcase")}
    failure = cases["alexnet"].find("failure")
    assert failure.get("message") == "first failure: features.0"
    assert "rel-L2 error 0.01" in failure.text
    assert cases["r3d_18"].find("error").get("message") == "RuntimeError: out of memory"
    assert cases["resnet18"].get("classname") == "lowerconv.zoo.classification"
    assert list(cases["resnet18"]) == []  # a pass has no child


def test_merge_of_a_file_that_is_no_zoo_report(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "lowerconv.verification/1"}')
    assert main(["zoo", "--merge", str(bad)]) == 2
    assert f"--merge {bad}: not a lowerconv zoo report" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, category, skip",
    select_models(),
    ids=[name for name, _, _ in select_models()],
)
def test_whole_zoo(name: str, category: str, skip: str | None) -> None:
    if skip:
        pytest.skip(skip)
    (row,) = run_zoo([(name, category, None)], timing=False).rows
    assert row.status == "pass", f"{name}: {row.first_failure or row.note}"
