"""The package's layout: one subpackage per part, no import cycle, no private name crossing
modules, and the 0.1 module paths still importing.

The imports are read from the source with ``ast``, those inside functions (and under ``if
TYPE_CHECKING:``) too, so a cycle that only closes when a function runs fails here, not in a
user's process.  Each check runs once more on a graph or a module broken on purpose, so that it
is seen to fail.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import lowerconv

PACKAGE = "lowerconv"
PACKAGE_DIR = Path(lowerconv.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    """``importer`` imports ``name`` from the package module ``target`` (``name`` None: the
    module itself), at ``line``."""

    importer: str
    target: str
    name: str | None
    line: int


def imports_of(module: str, source: str) -> list[Import]:
    """Every import of a package module in ``source`` (the code of ``module``), at any depth."""
    is_package = MODULES.get(module, Path()).name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:  # from . import kernels
                    found.append(Import(module, submodule, None, node.lineno))
                else:
                    found.append(Import(module, target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.append(Import(module, alias.name, None, node.lineno))
    return found


def module_attributes_of(module: str, source: str) -> list[tuple[str, str, int]]:
    """``(target, attribute, line)`` for each ``mod.attribute`` read in ``source`` where ``mod``
    is a package module bound by an import (``from . import engine``; ``engine.ONEDNN``)."""
    bound = {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            for imp, alias in zip(imports_of(module, ast.unparse(node)), node.names, strict=False):
                if imp.name is None and imp.target in MODULES:
                    bound[alias.asname or alias.name.split(".")[0]] = imp.target
    return [
        (bound[node.value.id], node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in bound
    ]


IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path.read_text())]


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in imports:
        if imp.target != imp.importer:
            graph.setdefault(imp.importer, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, as ``[a, b, ..., a]``, or None: a depth-first search."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_crossings(module: str, source: str) -> list[str]:
    """Where ``module`` takes a private name from another module of the package."""
    found = [
        f"{module}:{imp.line} imports {imp.name} from {imp.target}"
        for imp in imports_of(module, source)
        if imp.name is not None and _private(imp.name) and imp.target != module
    ]
    found += [
        f"{module}:{line} reads {target}.{attribute}"
        for target, attribute, line in module_attributes_of(module, source)
        if _private(attribute) and target != module
    ]
    return found


# -- (a) no import cycle ---------------------------------------------------------------------------


def test_the_package_imports_form_no_cycle():
    cycle = find_cycle(import_graph(IMPORTS))
    assert cycle is None, (
        f"import cycle: {' -> '.join(cycle)} (imports inside functions count). Fix: give what "
        "both sides need a module of its own, below both"
    )


def test_a_cycle_is_found_and_named():
    # A function-level import in spec.py of the pass itself closes a cycle.
    extra = imports_of("lowerconv.lowering.spec", "def f():\n    from .lower import lower\n")
    cycle = find_cycle(import_graph(IMPORTS + extra))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"lowerconv.lowering.spec", "lowerconv.lowering.lower"} <= set(cycle)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    found = {
        (imp.target, imp.name)
        for imp in imports_of(
            "lowerconv.verification.verify",
            "from ..lowering import kernels\n"
            "import lowerconv.lowering.spec\n"
            "def f():\n    from .report import SCHEMA\n",
        )
    }
    assert found == {
        ("lowerconv.lowering.kernels", None),
        ("lowerconv.lowering.spec", None),
        ("lowerconv.verification.report", "SCHEMA"),
    }


# -- (b) no private name crosses modules ----------------------------------------------------------


def test_no_private_name_is_imported_across_modules():
    crossings = [
        c for name, path in MODULES.items() for c in private_crossings(name, path.read_text())
    ]
    assert not crossings, (
        "private names used across modules (make the name public, or move it where it "
        "belongs):\n" + "\n".join(crossings)
    )


def test_a_private_import_or_read_is_caught():
    source = textwrap.dedent(
        """
        from . import engine
        from .kernels import gemm_backward, _hidden

        def f():
            from .plain_kernels import _depthwise_planes
            return engine._secret, engine.ONEDNN, engine.__name__
        """
    )
    assert private_crossings("lowerconv.lowering.strategies", source) == [
        "lowerconv.lowering.strategies:3 imports _hidden from lowerconv.lowering.kernels",
        "lowerconv.lowering.strategies:6 imports _depthwise_planes from "
        "lowerconv.lowering.plain_kernels",
        "lowerconv.lowering.strategies:7 reads lowerconv.lowering.engine._secret",
    ]


# -- (c) the 0.1 module paths ---------------------------------------------------------------------

# Every module of lowerconv 0.1 (one flat package), under the part it lives in now ("." for the
# top level); "models" was a module and is the subpackage.
PARTS_0_1 = """
lowering:     trace sites spec strategies kernels autograd nd emit lower runtime functional
              export subgraph record inspect
verification: verify layer_checks audit timing determinism devices metrics report junit
models:       realworld zoo
.:            models cli errors testing
"""


def _new_homes(table: str) -> dict[str, str]:
    homes, part = {}, None
    for line in table.strip().splitlines():
        head, colon, names = line.partition(":")
        if colon:
            part = head.strip()
        else:
            names = line
        for name in names.split():
            homes[name] = f"lowerconv.{name}" if part == "." else f"lowerconv.{part}.{name}"
    return homes


MODULES_0_1 = _new_homes(PARTS_0_1)


def test_the_table_of_0_1_modules_has_all_thirty():
    assert len(MODULES_0_1) == 30
    assert MODULES_0_1["inspect"] == "lowerconv.lowering.inspect"
    assert MODULES_0_1["models"] == "lowerconv.models"


@pytest.mark.parametrize(("old", "new"), sorted(MODULES_0_1.items()))
def test_a_0_1_module_path_is_the_same_module_as_its_new_home(old, new):
    module = importlib.import_module(new)
    assert importlib.import_module(f"lowerconv.{old}") is module
    assert sys.modules[f"lowerconv.{old}"] is module
    assert module.__spec__.name == new  # it still knows its real path
    if old not in ("lower", "verify"):
        assert getattr(lowerconv, old) is module


def test_lower_and_verify_stay_the_functions_on_the_package():
    import lowerconv.lower
    import lowerconv.verify
    from lowerconv.lower import lower_graph  # the module, through its 0.1 path
    from lowerconv.verify import pinned_precision

    assert lowerconv.lower.__name__ == "lower" and callable(lowerconv.lower)
    assert lowerconv.verify.__name__ == "verify" and callable(lowerconv.verify)
    assert lower_graph.__module__ == "lowerconv.lowering.rewrite"
    assert pinned_precision.__module__ == "lowerconv.verification.determinism"


def test_names_of_0_1_modules_import_from_their_0_1_paths():
    from lowerconv.autograd import ConvGeometry, GemmConv2d
    from lowerconv.kernels import DEFAULT_WORKSPACE_BYTES, chunk_limit, gemm, plan_chunks
    from lowerconv.strategies import STRATEGIES

    from lowerconv.lowering import tiling
    from lowerconv.models import resolve_model
    from lowerconv.models.resolve import __all__ as resolved

    assert gemm.__module__ == "lowerconv.lowering.engine"
    assert (DEFAULT_WORKSPACE_BYTES, chunk_limit, plan_chunks, ConvGeometry) == (
        tiling.DEFAULT_WORKSPACE_BYTES,
        tiling.chunk_limit,
        tiling.plan_chunks,
        tiling.ConvGeometry,
    )
    assert GemmConv2d.__module__ == "lowerconv.lowering.autograd"
    assert resolve_model.__module__ == "lowerconv.models.resolve"
    assert set(resolved) <= set(dir(lowerconv.models))
    assert "unfold" in STRATEGIES


def test_a_monkeypatch_through_a_0_1_path_reaches_the_code(monkeypatch):
    import lowerconv.strategies

    monkeypatch.setattr(lowerconv.strategies, "choose_strategy", lambda spec: "patched")
    from lowerconv.lowering.strategies import choose_strategy

    assert choose_strategy(None) == "patched"


def test_0_1_paths_import_first_in_a_fresh_interpreter():
    # Modules the package does not import itself go through the finder; old and new names
    # must not make two copies of a module, and lowerconv.verify must stay the function.
    code = textwrap.dedent(
        """
        import sys
        import lowerconv.zoo, lowerconv.export, lowerconv.junit
        from lowerconv.inspect import inspect_lowered
        from lowerconv.realworld import REALWORLD_MODELS
        from lowerconv.kernels import gemm
        from lowerconv.verify import verify
        import lowerconv.verify
        import lowerconv
        for old, new in [("zoo", "models.zoo"), ("export", "lowering.export"),
                         ("junit", "verification.junit"), ("inspect", "lowering.inspect"),
                         ("realworld", "models.realworld")]:
            module = sys.modules["lowerconv." + new]
            assert sys.modules["lowerconv." + old] is module, old
            assert module.__spec__.name == "lowerconv." + new, module.__spec__
        assert lowerconv.verify is verify and callable(lowerconv.verify)
        assert not any(name.startswith("lowerconv.") and m is None for name, m in sys.modules.items())
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# -- (d) every part says what it holds ------------------------------------------------------------

SUBPACKAGES = sorted(
    path.parent for path in PACKAGE_DIR.rglob("__init__.py") if path.parent != PACKAGE_DIR
)


def test_the_parts_are_the_three_subpackages():
    assert [p.name for p in SUBPACKAGES] == ["lowering", "models", "verification"]
    top = sorted(p.name for p in PACKAGE_DIR.iterdir() if p.suffix in (".py", ".typed"))
    assert top == [
        "__init__.py",
        "__main__.py",
        "_aliases.py",
        "_version.py",
        "cli.py",
        "errors.py",
        "py.typed",
        "testing.py",
    ]


def unnamed_modules(package: Path, docstring: str | None) -> list[str]:
    """The modules of ``package`` its docstring does not name (``:mod:`.name```)."""
    return [
        path.stem
        for path in sorted(package.glob("*.py"))
        if path.name != "__init__.py" and f":mod:`.{path.stem}`" not in (docstring or "")
    ]


@pytest.mark.parametrize("package", SUBPACKAGES, ids=[p.name for p in SUBPACKAGES])
def test_each_subpackage_docstring_names_each_of_its_modules(package: Path):
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert docstring, f"{package.name}/__init__.py has no docstring"
    missing = unnamed_modules(package, docstring)
    assert not missing, f"{package.name}/__init__.py's docstring does not name {missing}"


def test_a_docstring_that_skips_a_module_is_caught():
    package = PACKAGE_DIR / "models"
    assert unnamed_modules(package, None) == ["quantized", "realworld", "resolve", "zoo"]
    assert unnamed_modules(package, ":mod:`.zoo` and :mod:`.resolve`") == ["quantized", "realworld"]


def test_the_package_docstring_points_into_each_part():
    for part in ("lowering", "verification", "models"):
        assert f":mod:`lowerconv.{part}`" in (lowerconv.__doc__ or ""), part
