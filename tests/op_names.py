"""What a block of code dispatched: which ATen ops (the tests' one way of proving no conv op
ran), and which buffers they allocated."""

from __future__ import annotations

import collections
import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# "conv" in an op's name, but not "convert" (aten._convert_indices_from_coo_to_csr...).
CONV_OP = re.compile(r"conv(?!ert)")


class OpNames(TorchDispatchMode):
    """Counts every ATen op dispatched while active, by name (``aten.mm.default``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: collections.Counter[str] = collections.Counter()
        self.non_views: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[str(func)] += 1
        # _unsafe_view is a view that autograd treats as a new tensor (reshape's second half).
        if not func.is_view and func is not torch.ops.aten._unsafe_view.default:
            self.non_views[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def gemms(self) -> int:
        """How many ``mm``/``addmm`` calls ran."""
        return sum(n for name, n in self.names.items() if re.match(r"aten\.(mm|addmm)", name))

    @property
    def convs(self) -> list[str]:
        """The convolution ops that ran (none, in any lowered model)."""
        return [name for name in self.names if CONV_OP.search(name)]


class StorageSizes(TorchDispatchMode):
    """The byte size of the storage of every tensor a non-view op returns (views share storage
    and are skipped): the buffers a block of code allocated."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.sizes.append(t.untyped_storage().nbytes())
        return out
