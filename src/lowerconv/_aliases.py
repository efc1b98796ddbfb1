"""The 0.1 module paths, still importable: ``lowerconv.kernels`` is ``lowerconv.lowering.kernels``.

lowerconv 0.1 was one flat package.  Its modules now live in subpackages, one per part (the pass,
the verifier, the model sources), and code written against 0.1 keeps working:
``import lowerconv.strategies``, ``from lowerconv.kernels import gemm``, ``lowerconv.kernels``
as an attribute, and lowered models saved by 0.1 (their generated code imports its leaf
functions by module path).  Each old name is *the same module object* as its new home, never a
copy, so a monkeypatch through either name reaches the code that runs.

Two hooks, installed by :func:`install` when the package is imported:

- ``sys.modules`` entries for the old names whose module the package has already loaded (which
  is how ``lowerconv.verify`` and ``lowerconv.lower`` stay the *functions* on the package, as in
  0.1, while ``from lowerconv.verify import ...`` still reads the module), and a meta-path
  finder, :class:`MovedModuleFinder`, for the others: it imports the new module and gives it to
  the import system under the old name, executing nothing twice;
- :func:`package_getattr`, the package's ``__getattr__``, for ``lowerconv.<old>`` as an
  attribute.

``lowerconv.models`` is no alias: it was a module and is now the subpackage, whose
``__init__`` re-exports what the module exported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["MOVED", "MovedModuleFinder", "install", "package_getattr"]

PACKAGE = "lowerconv"

# 0.1 module name (under lowerconv) -> the module's path now.
MOVED: dict[str, str] = {
    **{
        name: f"{PACKAGE}.lowering.{name}"
        for name in (
            "trace",
            "sites",
            "spec",
            "strategies",
            "kernels",
            "autograd",
            "nd",
            "emit",
            "lower",
            "runtime",
            "functional",
            "export",
            "subgraph",
            "record",
            "inspect",
        )
    },
    **{
        name: f"{PACKAGE}.verification.{name}"
        for name in (
            "verify",
            "layer_checks",
            "audit",
            "timing",
            "determinism",
            "devices",
            "metrics",
            "report",
            "junit",
        )
    },
    "realworld": f"{PACKAGE}.models.realworld",
    "zoo": f"{PACKAGE}.models.zoo",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module already at its new path (importing that first)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._target_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just stamped the alias's spec on the module: give it back its
        # own, so that it still reports (and reloads from) its real path.
        module.__spec__ = self._target_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``lowerconv.<old>`` for every 0.1 module of :data:`MOVED`; last on ``sys.meta_path``,
    so a real module of that name would win."""

    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED[name]))


def install() -> None:
    """Bind the old names already loaded, and add the finder for the rest (once)."""
    for name, target in MOVED.items():
        if target in sys.modules:
            sys.modules.setdefault(f"{PACKAGE}.{name}", sys.modules[target])
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def package_getattr(name: str) -> ModuleType:
    """``lowerconv.<old>`` for a 0.1 module name (the package's ``__getattr__``)."""
    if name in MOVED:
        return importlib.import_module(f"{PACKAGE}.{name}")
    raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
