"""Regenerate the parts of README.md and docs/*.md that the code owns.

    python tools/sync_docs.py           # rewrite every generated region in place
    python tools/sync_docs.py --check   # rewrite nothing; exit 1 naming the regions that differ

A generated region runs from a start marker to the next ``<!-- end -->``, each on a line of its
own.  Everything between the two is replaced:

    <!-- lowerconv verify --help -->   a ```console block: the command and what it prints, from
                                       ``lowerconv.cli.main`` at 100 columns
    <!-- lowerconv commands -->        a table of the commands, their arguments and their help
                                       line, from ``lowerconv.cli.build_parser``
    <!-- file examples/my_models.py --> a ```python block holding that file
    <!-- default image sizes -->       a table of the torchvision models whose default
                                       ``--image-size`` is not 224, from ``lowerconv.models``
    <!-- lowered code KIND -->         a ```python block: the forward that ``lower()`` (strategy
                                       ``unfold``) emits for one conv of that kind

So never edit inside a region: change the parser's help text or the file, then run this.
``tests/test_docs.py`` fails, naming this command, while any region differs from what it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP_COLUMNS = 100

START = (
    r"<!-- (?P<what>lowerconv(?: [^>]*)? --help|lowerconv commands|file [^ >]+|default image sizes"
    r"|lowered code [a-z0-9_]+) -->"
)
START_LINE = re.compile(f"^{START}$")
REGION = re.compile(f"^{START}\n(?P<body>.*?)^<!-- end -->$", re.MULTILINE | re.DOTALL)


def doc_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose regions are generated: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@contextlib.contextmanager
def _plain_terminal() -> Iterator[None]:
    """A fixed width and no colour, so help text is the same on every machine."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR", "PYTHON_COLORS")}
    os.environ.update(COLUMNS=str(HELP_COLUMNS), NO_COLOR="1", PYTHON_COLORS="0")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def help_text(command: str) -> str:
    """What ``command`` (``lowerconv verify --help``) prints, from the real parser."""
    from lowerconv.cli import main

    argv = shlex.split(command)
    if argv[0] != "lowerconv" or argv[-1] != "--help":
        raise ValueError(f"not a lowerconv --help command: {command!r}")
    out = io.StringIO()
    with _plain_terminal(), contextlib.redirect_stdout(out):
        status = main(argv[1:])
    if status != 0:
        raise RuntimeError(f"{command!r} exited {status}")
    return out.getvalue()


def command_table() -> str:
    """A Markdown table: each command of the parser, with its positional arguments and required
    options, and its one-line help."""
    from lowerconv.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = ["| command | what it does |", "|---|---|"]
    for name, sub in commands.choices.items():
        words = ["lowerconv", name]
        for action in sub._actions:
            if action.option_strings and action.required:
                words.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
            elif not action.option_strings:
                metavar = action.metavar or action.dest.upper()
                words.append(f"[{metavar} ...]" if action.nargs == "*" else metavar)
        lines.append(f"| `{' '.join(words)}` | {helps[name]} |")
    return "\n".join(lines) + "\n"


def default_image_sizes() -> str:
    """A Markdown table: each default ``--image-size`` other than 224 and its models."""
    from lowerconv.models import DEFAULT_IMAGE_SIZE, default_image_size, torchvision_models

    by_size: dict[int, list[str]] = {}
    for name in sorted(torchvision_models()):
        by_size.setdefault(default_image_size(name), []).append(name)
    lines = ["| default `--image-size` | models |", "|---|---|"]
    for size in sorted(by_size):
        models = (
            "every other model"
            if size == DEFAULT_IMAGE_SIZE
            else ", ".join(f"`{name}`" for name in by_size[size])
        )
        lines.append(f"| {size} | {models} |")
    return "\n".join(lines) + "\n"


# One conv of each kind, as ``lowered code KIND`` shows it: (module, a comment on it).
KIND_EXAMPLES = {
    "conv1d": "nn.Conv1d(16, 32, 5, stride=2, padding=2)",
    "conv2d": "nn.Conv2d(16, 32, 3, padding=1)",
    "conv3d": "nn.Conv3d(16, 32, 3, padding=1)",
    "conv_transpose1d": "nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1)",
    "conv_transpose2d": "nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)",
    "conv_transpose3d": "nn.ConvTranspose3d(32, 16, 2, stride=2)",
}


def lowered_code(kind: str) -> str:
    """The forward ``lower()`` emits for ``nn.Sequential(<one conv of kind>)``."""
    from torch import nn  # noqa: F401  (the examples are evaluated with it)

    import lowerconv

    source = KIND_EXAMPLES[kind]
    model = eval(f"nn.Sequential({source})")
    code = lowerconv.lower(model).code.strip()
    header = f"# lowerconv.lower(nn.Sequential({source})).code"
    return f"```python\n{header}\n{code}\n```\n"


def generate(what: str, root: Path = ROOT) -> str:
    """The body of the region whose start marker says ``what``."""
    if what == "lowerconv commands":
        return command_table()
    if what.startswith("lowerconv"):
        return f"```console\n$ {what}\n{help_text(what)}```\n"
    if what.startswith("file "):
        path = what.removeprefix("file ")
        return f"```python\n{(root / path).read_text()}```\n"
    if what == "default image sizes":
        return default_image_sizes()
    if what.startswith("lowered code "):
        return lowered_code(what.removeprefix("lowered code "))
    raise ValueError(f"unknown generated region {what!r}")


def sync_text(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` with every region regenerated, and the markers of the regions that changed."""
    changed: list[str] = []

    def regenerate(match: re.Match[str]) -> str:
        body = generate(match["what"], root)
        if body != match["body"]:
            changed.append(match["what"])
        return f"<!-- {match['what']} -->\n{body}<!-- end -->"

    return REGION.sub(regenerate, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any region differs"
    )
    args = parser.parse_args(argv)
    stale = []
    for path in doc_files():
        text = path.read_text()
        synced, changed = sync_text(text)
        name = path.relative_to(ROOT)
        stale += [f"{name}: <!-- {what} -->" for what in changed]
        if changed and not args.check:
            path.write_text(synced)
            print(f"updated {name}: {', '.join(changed)}")
    if args.check and stale:
        print("out of date (run python tools/sync_docs.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
