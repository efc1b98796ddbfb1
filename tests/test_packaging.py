"""What a user reads before installing: the license the package declares, and the README's
promises about weights and install size."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_license_file_is_the_declared_bsd_3_clause():
    declared = re.search(
        r'^license = \{ text = "(.+)" \}$', (ROOT / "pyproject.toml").read_text(), re.M
    )
    text = (ROOT / "LICENSE").read_text()
    assert declared and declared.group(1) == "BSD-3-Clause"
    assert text.startswith("BSD 3-Clause License")
    assert re.search(r"Copyright \(c\) \d{4}, the lowerconv authors", text)
    assert "Neither the name of the copyright holder" in text  # the third clause


def test_readme_says_weights_are_random_and_how_to_install_small():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block == 'pip install -e ".[test]" && lowerconv verify resnet18\npytest\n'
    assert "random weights" in readme and "--weights" in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
