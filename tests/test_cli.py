"""The command line, called in-process through ``main(argv)`` (and twice as a real process).

The models are a tiny file-defined network and small random inputs, so each call takes well
under a second or two; the README's own ``lowerconv verify resnet18`` runs in CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
import torch.nn.functional as F

from lowerconv import __version__
from lowerconv.cli import main
from lowerconv.models import realworld

TINY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

        def forward(self, x):
            return self.up(torch.relu(self.depthwise(torch.relu(self.stem(x)))))


    class RaisesAtRunTime(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).view(-1, 12345)


    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.rgb = nn.Conv2d(3, 4, 3)
            self.depth = nn.Conv2d(1, 4, 3)

        def forward(self, rgb, depth):
            return self.rgb(rgb) + self.depth(depth)


    class Gate(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x


    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = Gate()
            self.head = nn.Conv2d(3, 2, 1)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.head(self.gate(x)))


    def make():
        return Tiny()


    def make_broken():
        return RaisesAtRunTime()
    """
)

# Tiny on a 2x3x16x16 input, by hand.  stem: 3x3, stride 2, pad 1 -> (16 + 2 - 3) // 2 + 1 = 8,
# so output 2x8x8x8; GEMM M = 8 out channels, K = 3 in * 3 * 3 = 27, N = 2 * 8 * 8 = 128;
# FLOPs = 2 * 8 * 27 * 128 = 55296; im2col = 2 * 27 * 64 float32 = 13824 B = 13.5 KiB.
# depthwise: groups 8, stride 1, pad 1 -> 8x8 again; M = 8, K = 8/8 * 3 * 3 = 9, N = 128;
# FLOPs = 2 * 8 * 9 * 128 = 18432; im2col = 2 * 72 * 64 * 4 = 36864 B = 36.0 KiB.
EXPECTED_ROWS = {
    "stem": [
        "conv2d", "3x3", "2x2", "1x1", "1x1", "1", "2x3x16x16", "2x8x8x8", "8 x 27 x 128",
        "55.3 K", "13.5 KiB", "unfold",
    ],
    "depthwise": [
        "conv2d", "3x3", "1x1", "1x1", "1x1", "8", "2x8x8x8", "2x8x8x8", "8 x 9 x 128", "18.4 K",
        "36.0 KiB", "unfold",
    ],
    # A transposed conv: M = C_out*kh*kw, K = C_in, N = input pixels; its columns 2*16*64*4 B.
    "up": [
        "conv_transpose2d", "2x2", "2x2", "0", "1x1", "1", "2x8x8x8", "2x4x16x16", "16 x 8 x 128",
        "32.8 K", "8.0 KiB", "unfold",
    ],
}  # fmt: skip

SMALL = ["--batch-size", "2", "--image-size", "16"]
FAST = [*SMALL, "--no-timing"]


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_SOURCE)
    return f"{path}:make"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- verify ----------------------------------------------------------------------------------------


def test_verify_passes_with_exit_0_and_writes_both_reports(tiny, tmp_path, capsys):
    json_path, md_path = tmp_path / "report.json", tmp_path / "report.md"
    code, out, err = run(
        ["verify", tiny, *FAST, "--json", str(json_path), "--markdown", str(md_path)], capsys
    )
    assert code == 0, err
    assert out.startswith("lowerconv verification: PASS")
    assert "stem" in out and "depthwise" in out  # the per-layer table
    data = json.loads(json_path.read_text())
    assert data["schema"] == "lowerconv.verification/1"
    assert data["ok"] is True
    assert [layer["name"] for layer in data["runs"][0]["layers"]] == ["stem", "depthwise", "up"]
    assert md_path.read_text().startswith("### lowerconv verification: PASS")
    assert "lowered" in err  # progress went to stderr, not into the report


def test_verify_with_timing_reports_times(tiny, capsys):
    code, out, err = run(["verify", tiny, *SMALL, "--repeats", "2"], capsys)
    assert code == 0, err
    assert "cpu time" in out


def _sabotaged_unfold(*args, **kwargs):
    return _real_unfold(*args, **kwargs) * 1.01


_real_unfold = F.unfold


def test_a_wrong_lowering_fails_with_exit_1_naming_the_first_layer(tiny, monkeypatch, capsys):
    # The lowered graph looks F.unfold up when it runs; the original model never calls it.
    # So this breaks only the lowered side, by 1%, as a bug in the pass would.
    monkeypatch.setattr(torch.nn.functional, "unfold", _sabotaged_unfold)
    code, out, err = run(["verify", tiny, *FAST], capsys)
    assert code == 1, err
    assert out.startswith("lowerconv verification: FAIL (first failure: stem)")
    assert "first failing layer 'stem'" in err
    assert "Traceback" not in err
    assert "print(report)" not in err and "the report on stdout, or --json PATH" in err


def test_junit_xml_has_a_case_per_output_and_layer(tiny, tmp_path, monkeypatch, capsys):
    junit = tmp_path / "verify.xml"
    code, _, err = run(["verify", tiny, *FAST, "--junit-xml", str(junit)], capsys)
    assert code == 0, err
    (suite,) = ElementTree.parse(junit).getroot().iter("testsuite")
    assert suite.get("name") == f"lowerconv verify {tiny} [cpu]"
    assert [case.get("name") for case in suite] == ["output", "stem", "depthwise", "up"]
    assert suite.get("failures") == "0" and not any(list(case) for case in suite)

    monkeypatch.setattr(torch.nn.functional, "unfold", _sabotaged_unfold)
    code, _, err = run(["verify", tiny, *FAST, "--junit-xml", str(junit)], capsys)
    assert code == 1, err
    cases = {case.get("name"): case for case in ElementTree.parse(junit).getroot().iter("testcase")}
    failure = cases["stem"].find("failure")
    assert failure is not None and "3x3 s2 d1 p1 bias" in failure.get("message")
    assert "rel-L2 error" in failure.text


def test_models_lists_the_realworld_ones_of_installed_libraries(monkeypatch, capsys):
    monkeypatch.setattr(realworld, "_installed", lambda library: library == "kornia")
    code, out, _ = run(["models"], capsys)
    assert code == 0
    assert "kornia: 2\n  kornia_canny, kornia_edges" in out
    assert "transformers" not in out and "hf_resnet" not in out
    code, _, err = run(["models", "--category", "transformers"], capsys)
    assert code == 2 and 'not installed: pip install -e ".[zoo]"' in err


def test_dtype_and_strategy_reach_the_verifier(tiny, tmp_path, capsys):
    json_path = tmp_path / "r.json"
    argv = ["verify", tiny, *FAST, "--dtype", "float64", "--strategy", "strided"]
    code, _, err = run([*argv, "--json", str(json_path)], capsys)
    assert code == 0, err
    data = json.loads(json_path.read_text())
    assert data["dtype"] == "float64"
    assert {layer["strategy"] for layer in data["runs"][0]["layers"]} == {"strided"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
def test_cuda_without_a_gpu_is_a_usage_error(tiny, capsys):
    code, _, err = run(["verify", tiny, *FAST, "--device", "cuda"], capsys)
    assert code == 2
    assert "CUDA is not available" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verify_on_all_devices(tiny, capsys):
    code, out, err = run(["verify", tiny, *FAST, "--device", "all"], capsys)
    assert code == 0, err
    assert "[cpu]" in out and "[cuda]" in out


def test_input_shape_feeds_each_positional_input(tiny, tmp_path, capsys):
    json_path = tmp_path / "r.json"
    two = tiny.replace(":make", ":TwoInputs")
    shapes = ["--input-shape", "2x3x12x20", "--input-shape", "2x1x12x20"]
    code, _, err = run(["verify", two, *shapes, "--no-timing", "--json", str(json_path)], capsys)
    assert code == 0, err
    inputs = json.loads(json_path.read_text())["inputs"]
    assert [i["shape"] for i in inputs] == [[2, 3, 12, 20], [2, 1, 12, 20]]


def test_train_mode_and_leaf_modules_reach_lower_and_verify(tiny, tmp_path, capsys):
    json_path = tmp_path / "r.json"
    gated = tiny.replace(":make", ":Gated")
    argv = ["verify", gated, *FAST, "--strict", "--leaf-module", "gate", "--train"]
    code, _, err = run([*argv, "--json", str(json_path)], capsys)
    assert code == 0, err
    data = json.loads(json_path.read_text())
    assert data["training"] is True and data["path"] == "graph"
    assert [layer["name"] for layer in data["runs"][0]["layers"]] == ["gate.conv", "head"]


# (argv after MODEL, what the error must say, Python-API words it must not say): each fix is
# one the command line can make.
CLI_FIX_CASES = [
    (":TwoInputs", [], "--input-shape 1x3x224x160", "example_inputs"),
    (":Gated", ["--strict"], "--leaf-module NAME", "leaf_modules="),
    (":Gated", ["--leaf-module", "gat"], "has no submodule of that name. Did you mean gate", ""),
]


@pytest.mark.parametrize(
    ("factory", "extra", "says", "not_said"),
    CLI_FIX_CASES,
    ids=["missing_input", "untraceable", "leaf_typo"],
)
def test_errors_offer_command_line_fixes(tiny, capsys, factory, extra, says, not_said):
    code, _, err = run(["verify", tiny.replace(":make", factory), *FAST, *extra], capsys)
    assert code == 2
    assert says in err
    if not_said:
        assert not_said not in err


# -- errors: exit 2, one message, no traceback -----------------------------------------------------


def test_unknown_model_suggests_names_without_a_traceback(capsys):
    code, out, err = run(["verify", "resnt18"], capsys)
    assert code == 2
    assert out == ""
    assert "unknown model 'resnt18'" in err
    assert "Did you mean resnet18" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(capsys):
    code, _, err = run(["graph", "resnt18", "--debug"], capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "LoweringError: unknown model 'resnt18'" in err


def test_a_model_that_fails_to_run_is_exit_2(tiny, capsys):
    code, _, err = run(["verify", tiny.replace(":make", ":make_broken"), *FAST], capsys)
    assert code == 2
    assert "12345" in err  # the model's own error, passed on
    assert "Traceback" not in err


def test_weights_file_that_is_no_checkpoint(tiny, tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_text("not a checkpoint")
    code, _, err = run(["verify", tiny, *FAST, "--weights", str(bad)], capsys)
    assert code == 2
    assert "is not a checkpoint" in err
    assert "Traceback" not in err


def test_weights_of_another_model_name_the_keys(tiny, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(
        {"model": {"stem.weight": torch.zeros(8, 3, 3, 3), "head.bias": torch.zeros(2)}}, path
    )
    code, _, err = run(["verify", tiny, *FAST, "--weights", str(path)], capsys)
    assert code == 2
    assert "missing key(s): stem.bias, depthwise.weight, up.weight, up.bias" in err
    assert "1 unexpected key(s): head.bias" in err


def test_weights_are_loaded(tiny, tmp_path, capsys):
    # Weights that make the stem output all zeros, and so the whole output: nothing can fail,
    # and nothing is proven, so the verdict is INCONCLUSIVE (exit 3) naming the zero output.
    state = {
        "stem.weight": torch.zeros(8, 3, 3, 3),
        "stem.bias": torch.zeros(8),
        "depthwise.weight": torch.ones(8, 1, 3, 3),
        "up.weight": torch.ones(8, 4, 2, 2),
        "up.bias": torch.zeros(4),
    }
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    code, out, err = run(["verify", tiny, *FAST, "--weights", str(path)], capsys)
    assert code == 3, err
    assert f"weights {path}" in err
    assert "[cpu] output: the float64 oracle's value is all zeros" in err
    assert out.startswith("lowerconv verification: INCONCLUSIVE")
    code, _, err = run(
        ["verify", tiny, *FAST, "--weights", str(path), "--allow-inconclusive"], capsys
    )
    assert code == 0, err


BAD_ARGUMENTS = [
    (["verify"], "the following arguments are required: MODEL"),
    (["verify", "resnet18", "--batch-size", "0"], "expected a positive integer, got '0'"),
    (["verify", "resnet18", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["verify", "resnet18", "--strategy", "winograd"], "invalid choice: 'winograd'"),
    (["verify", "resnet18", "--atol", "-1"], "expected a non-negative number"),
    (["graph", "resnet18", "--format", "svg"], "invalid choice: 'svg'"),
    (["verify", "resnet18", "--json", "/no/such/folder/r.json"], "does not exist"),
    ([], "the following arguments are required: COMMAND"),
    (["export", "resnet18"], "the following arguments are required: -o/--output"),
    (["export", "resnet18", "-o", "model.tflite"], "name the file .onnx (ONNX) or .pt2"),
    (["verify", "resnet18", "--against", "tflite"], "invalid choice: 'tflite'"),
]


@pytest.mark.parametrize(
    ("argv", "message"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_exit_2(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


# -- graph -----------------------------------------------------------------------------------------


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in EXPECTED_ROWS:
            rows[cells[0]] = cells[1:]
    return rows


def test_graph_table_matches_hand_computation(tiny, capsys):
    code, out, err = run(["graph", tiny, *SMALL], capsys)
    assert code == 0, err
    assert out.splitlines()[0].split()[:9] == [
        "conv", "kind", "kernel", "stride", "padding", "dilation", "groups", "input", "output",
    ]  # fmt: skip
    assert _table_rows(out) == EXPECTED_ROWS
    assert "3 conv(s) lowered (unfold: 3) on the graph path, 0 left alone" in out
    # 55296 + 18432 + 32768 FLOPs; the depthwise conv's im2col buffer is the largest
    assert "106 KFLOPs in GEMMs; largest im2col buffer 36.0 KiB (depthwise)" in out


def test_graph_kind_option_leaves_other_kinds_alone(tiny, capsys):
    code, out, err = run(["graph", tiny, *SMALL, "--kind", "conv2d"], capsys)
    assert code == 0, err
    kind, reason = _table_rows(out)["up"][:2]
    assert kind == "ConvTranspose2d" and reason.startswith("not lowered: ConvTranspose2d (kinds=")
    assert re.search(r"up\s+ConvTranspose2d\s+not lowered: ConvTranspose2d \(kinds= leaves", out)
    assert "2 conv(s) lowered (unfold: 2) on the graph path, 1 left alone" in out
    code, out, _ = run(["graph", tiny, "--format", "code", "--kind", "conv2d"], capsys)
    assert code == 0 and "self.up(" in out


def test_graph_of_a_model_that_fails_to_run_names_the_node(tiny, capsys):
    code, _, err = run(["graph", tiny.replace(":make", ":make_broken"), *SMALL], capsys)
    assert code == 2
    assert "failed at node view (call_method view)" in err
    assert "Traceback" not in err  # ShapeProp prints one of its own; it must not leak


def test_graph_strategy_column_follows_the_option(tiny, capsys):
    code, out, _ = run(["graph", tiny, *SMALL, "--strategy", "strided"], capsys)
    assert code == 0
    assert {row[-1] for row in _table_rows(out).values()} == {"strided"}


def test_graph_code_is_the_lowered_forward(tiny, capsys):
    code, out, _ = run(["graph", tiny, "--format", "code"], capsys)
    assert code == 0
    assert out.startswith("def forward(self, x")
    assert "stem_unfold = torch.nn.functional.unfold(x, (3, 3)" in out
    assert "depthwise_unfold" in out
    # The transposed conv: a GEMM of its weight and the input, then col2im by F.fold.
    assert "up_matmul = torch.matmul(" in out and "up_fold = torch.nn.functional.fold(" in out
    assert "self.up(" not in out


def test_graph_of_a_torchvision_model(capsys):
    code, out, _ = run(["graph", "resnet18", "--image-size", "32"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["conv1"][1:5] == ["conv2d", "7x7", "2x2", "3x3"]
    # conv1 on 1x3x32x32: OH = (32 + 6 - 7) // 2 + 1 = 16, so N = 256 and K = 3 * 7 * 7 = 147
    assert rows["conv1"][7:12] == ["1x3x32x32", "1x64x16x16", "64", "x", "147"]
    assert "20 conv(s) lowered" in out


# -- help, version, models -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "graph", "export", "models"])
def test_each_command_has_help_with_examples(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    assert "examples:" in out
    assert f"lowerconv {command}" in out


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.startswith(f"lowerconv {__version__} (torch {torch.__version__}")


def test_models_lists_names_and_what_is_not_supported(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0
    assert "resnet18" in out
    assert "detection: " in out and "fasterrcnn_resnet50_fpn" in out


def test_python_dash_m_lowerconv_help():
    result = subprocess.run(
        [sys.executable, "-m", "lowerconv", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lowerconv")
    assert "verify" in result.stdout and "graph" in result.stdout


def test_a_real_process_exits_2_on_an_unknown_model():
    result = subprocess.run(
        [sys.executable, "-m", "lowerconv", "verify", "resnet181"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Did you mean resnet18" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["models | head -1", "graph resnet18 | head -2"])
def test_a_reader_that_closes_the_pipe_gets_no_error(command):
    # Several runs: the pipe closes at a different point each time.
    line = f"{sys.executable} -m lowerconv {command}"
    for _ in range(3):
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, timeout=300
        )
        assert "error" not in done.stderr.lower() and "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


# -- export, and the export tier -------------------------------------------------------------------

SHAPE_GATE_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class ShapeGate(nn.Module):  # branches on a shape: torch.fx fails, torch.export follows it
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            if x.shape[-1] > 8:
                y = y * 2
            return self.head(y)
    """
)


@pytest.fixture
def shape_gate(tmp_path: Path) -> str:
    path = tmp_path / "shape_gate.py"
    path.write_text(SHAPE_GATE_SOURCE)
    return f"{path}:ShapeGate"


def _module_of(spec: str) -> torch.nn.Module:
    from lowerconv.models import resolve_model

    return resolve_model(spec, batch_size=2, image_size=16).model


def test_export_writes_a_pt2_archive_and_lists_its_ops(shape_gate, tmp_path, capsys):
    target = tmp_path / "lowered.pt2"
    code, out, err = run(["export", shape_gate, *SMALL, "-o", str(target)], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {target} (pt2, ")
    assert re.search(r"\d+ ATen calls: .*aten\.matmul\.default x 2", out)
    assert "no convolution op left: every convolution is computed by GEMMs" in out
    assert "on the export path" in err
    program = torch.export.load(str(target))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(x), _module_of(shape_gate)(x), rtol=1e-4, atol=1e-5
        )


def test_export_onnx_with_a_dynamic_batch_runs_in_onnxruntime(shape_gate, tmp_path, capsys):
    pytest.importorskip("onnxscript", reason='needs the onnx extra: pip install -e ".[onnx]"')
    ort = pytest.importorskip(
        "onnxruntime", reason='needs the onnx extra: pip install -e ".[onnx]"'
    )
    target = tmp_path / "lowered.onnx"
    argv = ["export", shape_gate, *SMALL, "--dynamic-batch", "-o", str(target)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {target} (onnx, ")
    assert "MatMul x 2" in out and "Conv" not in out.split("\n")[1]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 16, 16)  # exported on a batch of 2
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = _module_of(shape_gate)(x)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


def test_graph_of_a_model_fx_cannot_trace_is_one_exported_graph(shape_gate, capsys):
    code, out, err = run(["graph", shape_gate, *SMALL], capsys)
    assert code == 0, err
    assert "2 conv(s) lowered (unfold: 2) on the export path" in out
    assert "not traceable as one graph (torch.fx could not trace ShapeGate" in out
    code, out, _ = run(["graph", shape_gate, *SMALL, "--format", "code"], capsys)
    assert code == 0
    assert "could not be traced" not in out
    assert "stem_unfold = torch.nn.functional.unfold(" in out and "head_matmul" in out


def test_verify_against_onnx_and_pt2_adds_their_rows(shape_gate, tmp_path, capsys):
    pytest.importorskip("onnxscript", reason='needs the onnx extra: pip install -e ".[onnx]"')
    pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install -e ".[onnx]"')
    json_path = tmp_path / "r.json"
    argv = ["verify", shape_gate, *FAST, "--against", "onnx", "--against", "pt2"]
    code, out, err = run([*argv, "--json", str(json_path)], capsys)
    assert code == 0, err
    data = json.loads(json_path.read_text())
    assert data["path"] == "export"
    outputs = [o["path"] for o in data["runs"][0]["outputs"]]
    assert outputs == ["output", "onnxruntime: output", "pt2 (saved, loaded): output"]
    assert [layer["status"] for layer in data["runs"][0]["layers"]] == ["pass", "pass"]
    assert re.search(r"onnxruntime: output\s+2x4x16x16 .* pass", out)


def test_verify_says_why_each_tier_failed(tiny, tmp_path, capsys):
    json_path = tmp_path / "r.json"
    gated = tiny.replace(":make", ":Gated")
    code, out, err = run(["verify", gated, *FAST, "--json", str(json_path)], capsys)
    assert code == 0, err
    data = json.loads(json_path.read_text())
    assert data["path"] == "fallback"
    assert "could not capture Gated" in data["lowering"]["export_error"]
    assert "torch.fx tier failed" in out and "torch.export tier failed" in out


def test_export_of_a_model_torch_export_cannot_capture_is_exit_2(tiny, tmp_path, capsys):
    target = tmp_path / "gated.pt2"
    code, out, err = run(
        ["export", tiny.replace(":make", ":Gated"), *SMALL, "-o", str(target)], capsys
    )
    assert code == 2 and out == ""
    assert "could not capture Gated" in err and "Traceback" not in err
    assert not target.exists()
