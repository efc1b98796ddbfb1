"""Every script in examples/ runs to completion, so the examples never rot."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# Examples of an optional extra: (the module they import, the extra that installs it).
REQUIRES = {"quantize_linear.py": ("torchao", "quant"), "lora_linear.py": ("peft", "peft")}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if path.name in REQUIRES:
        module, extra = REQUIRES[path.name]
        pytest.importorskip(
            module, reason=f"{path.name} needs {module}: pip install 'lowerconv[{extra}]'"
        )
    monkeypatch.setattr("sys.argv", [str(path)])  # as if run from a shell, with no arguments
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"
