"""The docs cannot drift from the code: README.md and docs/*.md, checked.

- **Generated regions** (every ``--help`` block, ``examples/my_models.py`` in docs/cli.md, the
  table of default image sizes) equal what ``python tools/sync_docs.py`` writes from the code.
- **Every fenced block names its language**, so no shell command hides in an untagged block,
  and no block but a ``console`` one shows a ``$ `` prompt.
- **Every shell block** (``bash``, ``sh``, ``shell``, ``console``) outside a generated region runs
  here, unless the HTML comment on the line just before its opening fence says otherwise:

      <!-- illustrative: WHY -->   not run (it installs packages, needs a GPU, rewrites docs...)
      <!-- slow -->                run only by ``pytest -m slow``
      <!-- numbers vary -->        output compared with every number read as ``#`` and runs of
                                   spaces as one (timings, float errors, thread counts)

  (combined with commas: ``<!-- slow, numbers vary -->``).  Commands run one after another in a
  fresh folder holding this checkout's ``examples/`` and ``benchmarks/``.  In a ``console`` block
  ``$ `` starts a command and the lines up to the next one are its output, stdout and stderr as a
  terminal shows them; the test compares them, where a line ``...`` stands for any number of
  lines and ``...`` inside a line for any text.  In a ``bash`` block each line is a command whose
  output is not compared.  Every command must exit 0 unless the next one is ``echo $?``.
  ``lowerconv ...`` (also ``| head -N``), ``python -c CODE`` and ``python FILE ...`` run in this
  process, as the console script and the interpreter run them, which saves importing torch per
  command; anything else runs in bash.
- Every ``examples/``, ``benchmarks/``, ``tools/``, ``tests/`` or ``docs/`` file a doc names
  exists, and README.md names every example.
- ``docs/performance.md`` is exactly what ``benchmarks/report.py`` writes from
  ``benchmarks/results.json``, the record of the ``python benchmarks/run.py`` run it quotes.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lowerconv import cli

ROOT = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FLAGS = {"illustrative", "slow", "numbers vary"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")
COMMENT = re.compile(r"^\s*<!--\s*(?P<text>.*?)\s*-->\s*$")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_docs = _load(ROOT / "tools" / "sync_docs.py", "sync_docs")
DOCS = sync_docs.doc_files(ROOT)


# -- the blocks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file, and the marker comment just before it."""

    path: Path
    line: int  # of the opening fence, from 1
    lang: str
    body: tuple[str, ...]
    marker: str | None
    generated: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def flags(self) -> dict[str, str]:
        """``<!-- slow, numbers vary -->`` -> ``{'slow': '', 'numbers vary': ''}``."""
        if self.marker is None or self.generated:
            return {}
        flags = {}
        for part in self.marker.split(","):
            key, _, why = part.partition(":")
            flags[key.strip()] = why.strip()
        return flags

    def steps(self) -> list[tuple[str, list[str] | None]]:
        """The commands, each with the output the block shows (None: not compared)."""
        if self.lang != "console":
            return [
                (line.strip(), None)
                for line in self.body
                if line.strip() and not line.lstrip().startswith("#")
            ]
        steps: list[tuple[str, list[str] | None]] = []
        for line in self.body:
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif not steps:
                raise AssertionError(f"{self.id}: output before the first `$ ` command")
            else:
                steps[-1][1].append(line)
        return steps


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, generated, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        if sync_docs.START_LINE.match(line):
            generated = True
        elif line.strip() == "<!-- end -->":
            generated = False
        fence = FENCE.match(line)
        if fence:
            closing = f"{fence['indent']}```"
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == closing)
            comment = COMMENT.match(lines[i - 1]) if i else None
            blocks.append(
                Block(
                    path=path,
                    line=i + 1,
                    lang=fence["lang"],
                    body=tuple(lines[i + 1 : end]),
                    marker=comment["text"] if comment else None,
                    generated=generated,
                )
            )
            i = end
        i += 1
    return blocks


BLOCKS = [block for path in DOCS for block in read_blocks(path)]
SHELL = [b for b in BLOCKS if b.lang in SHELL_LANGUAGES]
RUN = [b for b in SHELL if not b.generated and "illustrative" not in b.flags]


# -- generated regions ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_generated_regions_match_the_code(path: Path) -> None:
    text = path.read_text()
    synced, changed = sync_docs.sync_text(text, ROOT)
    if changed:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                synced.splitlines(keepends=True),
                f"{path.name} (now)",
                f"{path.name} (from the code)",
                n=1,
            )
        )
        pytest.fail(
            f"{path.relative_to(ROOT)}: {', '.join(f'<!-- {w} -->' for w in changed)} differ "
            f"from the code; run python tools/sync_docs.py\n{diff}"
        )


def test_the_help_of_every_command_is_in_the_docs() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    text = "".join(path.read_text() for path in DOCS)
    for command in [[], *([name] for name in commands)]:
        marker = f"<!-- {' '.join(['lowerconv', *command, '--help'])} -->"
        assert marker in text, f"no generated block {marker} in README.md or docs/*.md"


# -- every block is run, generated or illustrative ------------------------------------------------


def test_every_fenced_block_names_its_language() -> None:
    untagged = [b.id for b in BLOCKS if not b.lang]
    assert not untagged, f"fenced blocks without a language (```bash, ```text...): {untagged}"


def test_prompts_only_in_console_blocks() -> None:
    hidden = [
        b.id for b in BLOCKS if b.lang != "console" and any(s.startswith("$ ") for s in b.body)
    ]
    assert not hidden, f"`$ ` commands outside ```console blocks, so never run: {hidden}"


def test_markers_are_known() -> None:
    for block in BLOCKS:
        unknown = set(block.flags) - FLAGS
        assert not unknown, f"{block.id}: unknown marker {block.marker!r}; known: {sorted(FLAGS)}"
        if "illustrative" in block.flags:
            assert block.flags["illustrative"], (
                f"{block.id}: say why it is not run: <!-- illustrative: WHY -->"
            )
            assert len(block.flags) == 1, f"{block.id}: an illustrative block is not run at all"


def test_each_shell_block_is_run_generated_or_illustrative() -> None:
    for block in SHELL:
        kinds = [
            block.generated,
            "illustrative" in block.flags,
            block in RUN,
        ]
        assert sum(kinds) == 1, f"{block.id}: run, generated or illustrative, exactly one"
    assert len(RUN) >= 10, f"only {len(RUN)} shell blocks run: is the parser still finding them?"


def test_readme_opens_with_the_ci_commands() -> None:
    # .ci/run reads the README's first ```bash block and runs its two commands.
    first = next(b for b in BLOCKS if b.path.name == "README.md")
    assert first.lang == "bash"
    assert first.body == ('pip install -e ".[test]" && lowerconv verify resnet18', "pytest")


# -- running them --------------------------------------------------------------------------------


class _Recorder(io.TextIOBase):
    """A stdout or stderr that keeps, in order, what was written to either."""

    def __init__(self, chunks: list[tuple[bool, str]], is_stdout: bool) -> None:
        self.chunks, self.is_stdout = chunks, is_stdout

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.chunks.append((self.is_stdout, text))
        return len(text)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def _in_process_argv(command: str) -> tuple[list[str], int | None] | None:
    """``(argv, head lines)`` for a command this process can run as a shell would, else None."""
    if "$" in command or "`" in command:
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    head = None
    if len(words) > 3 and words[-3:-1] == ["|", "head"] and re.fullmatch(r"-\d+", words[-1]):
        words, head = words[:-3], int(words[-1][1:])
    if not words or any(set(word) <= set("();<>|&") for word in words):
        return None
    if words[0] == "lowerconv":
        return words, head
    runs_python = len(words) > 1 and (
        (words[1] == "-c" and len(words) > 2) or words[1].endswith(".py")
    )
    if words[0] == "python" and head is None and runs_python:
        return words, head
    return None


def _run_in_process(argv: list[str], head: int | None) -> tuple[int, str]:
    chunks: list[tuple[bool, str]] = []
    saved_argv = sys.argv[:]
    try:
        with (
            contextlib.redirect_stdout(_Recorder(chunks, True)),
            contextlib.redirect_stderr(_Recorder(chunks, False)),
        ):
            if argv[0] == "lowerconv":
                status = cli.main(argv[1:])
            else:
                try:
                    if argv[1] == "-c":
                        sys.argv = ["-c", *argv[3:]]
                        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
                    else:
                        sys.argv = argv[1:]
                        runpy.run_path(argv[1], run_name="__main__")
                    status = 0
                except SystemExit as exit_:
                    status = _exit_status(exit_.code)
    finally:
        sys.argv = saved_argv
    shown, lines = [], 0
    for is_stdout, text in chunks:  # `| head -N` keeps N lines of stdout, all of stderr
        if head is None or not is_stdout:
            shown.append(text)
            continue
        for piece in text.splitlines(keepends=True):
            if lines < head:
                shown.append(piece)
            lines += piece.endswith("\n")
    return status, "".join(shown)


def _run_in_bash(command: str, cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, COLUMNS="100")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    return done.returncode, done.stdout


def run_command(command: str, cwd: Path, last_status: int) -> tuple[int, str]:
    if command.strip() == "echo $?":
        return 0, f"{last_status}\n"
    in_process = _in_process_argv(command)
    if in_process is None:
        return _run_in_bash(command, cwd)
    return _run_in_process(*in_process)


def _normalise(line: str, numbers_vary: bool) -> str:
    line = line.rstrip()
    if numbers_vary:
        line = re.sub(r"\s+", " ", NUMBER.sub("#", line))
    return line


def output_matches(shown: list[str], printed: str, numbers_vary: bool) -> bool:
    pattern = ""
    for line in shown:
        line = _normalise(line, numbers_vary)
        if line == "...":
            pattern += r"(?:.*\n)*?"
        else:
            pattern += ".*?".join(map(re.escape, line.split("..."))) + r"\n"
    text = "".join(_normalise(line, numbers_vary) + "\n" for line in printed.splitlines())
    return re.fullmatch(pattern, text) is not None


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if "slow" in b.flags else []) for b in RUN],
    ids=[b.id for b in RUN],
)
def test_doc_commands_run_and_print_what_the_doc_shows(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in ("examples", "benchmarks"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    steps = block.steps()
    status = 0
    for i, (command, shown) in enumerate(steps):
        status, printed = run_command(command, tmp_path, status)
        status_shown = i + 1 < len(steps) and steps[i + 1][0].strip() == "echo $?"
        if status != 0 and not status_shown:
            pytest.fail(f"{block.id}: `{command}` exited {status}:\n{printed}")
        if shown is not None and not output_matches(shown, printed, "numbers vary" in block.flags):
            numbers_vary = "numbers vary" in block.flags
            diff = "\n".join(
                difflib.unified_diff(
                    [_normalise(line, numbers_vary) for line in shown],
                    [_normalise(line, numbers_vary) for line in printed.splitlines()],
                    "the doc shows",
                    "the command printed",
                    lineterm="",
                )
            )
            how = " (numbers aside: each shown as #)" if numbers_vary else ""
            pytest.fail(
                f"{block.id}: `{command}` printed something else than the doc shows{how}; "
                f"update the doc (or fix the code):\n{diff}"
            )


# -- files the docs name -------------------------------------------------------------------------

NAMED_FILE = re.compile(r"(?<![\w/.-])((?:examples|benchmarks|tools|tests|docs)/[\w/.-]*\w\.\w+)")


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_files_the_docs_name_exist(path: Path) -> None:
    missing = sorted(
        {name for name in NAMED_FILE.findall(path.read_text()) if not (ROOT / name).exists()}
    )
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {missing}"


def test_readme_names_every_example() -> None:
    readme = (ROOT / "README.md").read_text()
    unnamed = [
        p.name
        for p in sorted((ROOT / "examples").glob("*.py"))
        if f"examples/{p.name}" not in readme
    ]
    assert not unnamed, f"README.md's Examples do not name {unnamed}"


def test_performance_md_is_the_benchmark_report(tmp_path: Path) -> None:
    report = _load(ROOT / "benchmarks" / "report.py", "benchmark_report")
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    written = tmp_path / "performance.md"
    report.write_markdown(results, written, ROOT / "docs" / "performance.png")
    assert written.read_text() == (ROOT / "docs" / "performance.md").read_text(), (
        "docs/performance.md is not what benchmarks/report.py writes from benchmarks/results.json: "
        "its numbers come from `python benchmarks/run.py`; rerun it rather than editing the doc"
    )
