"""Conformance with PyTorch's own module tests: every sample PyTorch's test suite defines for
``nn.Conv1d``/``2d``/``3d``, ``nn.ConvTranspose1d``/``2d``/``3d`` and their ``Lazy`` forms
(``torch.testing._internal.common_modules.module_db``), lowered and compared with the module it
came from: forward output, gradients of every input and parameter, in float64, and no
convolution op forward or backward.

PyTorch's test helpers are read in a child process.  Importing them takes seconds and changes
the importing process for good: ``torch.backends.disable_global_flags()`` forbids setting backend
flags, which ``lowerconv.verify`` does, and TorchScript's call functions are patched.  The child
writes the samples (constructor arguments, forward inputs) to a file this process loads.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
from lowerconv import STRATEGY_NAMES, lowering_record

RTOL, ATOL = 1e-9, 1e-10

# module_db's name -> the kind lowerconv records for it.
MODULES = {
    "nn.Conv1d": "conv1d",
    "nn.Conv2d": "conv2d",
    "nn.Conv3d": "conv3d",
    "nn.ConvTranspose1d": "conv_transpose1d",
    "nn.ConvTranspose2d": "conv_transpose2d",
    "nn.ConvTranspose3d": "conv_transpose3d",
    "nn.LazyConv1d": "conv1d",
    "nn.LazyConv2d": "conv2d",
    "nn.LazyConv3d": "conv3d",
    "nn.LazyConvTranspose1d": "conv_transpose1d",
    "nn.LazyConvTranspose2d": "conv_transpose2d",
    "nn.LazyConvTranspose3d": "conv_transpose3d",
}

# The default run checks the default strategy and the one that picks per conv; `-m slow`, all.
FAST_STRATEGIES = ["unfold", "auto"]
SLOW_STRATEGIES = [s for s in STRATEGY_NAMES if s not in FAST_STRATEGIES]

SAMPLER = """
import sys

import torch

# torch's test helpers subclass expecttest.TestCase and read expecttest.ACCEPT, and nothing else
# of it; this process only reads sample inputs, so a stand-in does, installed or not.
import types
import unittest

expecttest = types.ModuleType("expecttest")
expecttest.TestCase = unittest.TestCase
expecttest.ACCEPT = False
sys.modules["expecttest"] = expecttest

from torch.testing._internal.common_modules import module_db

names = set(sys.argv[2:])
samples = []
for info in module_db:
    if info.name not in names:
        continue
    inputs = info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=True, training=False
    )
    for index, sample in enumerate(inputs):
        samples.append(
            {
                "module": info.name,
                "class": info.module_cls.__name__,
                "index": index,
                "desc": sample.desc,
                "args": tuple(sample.constructor_input.args),
                "kwargs": dict(sample.constructor_input.kwargs),
                "forward_args": tuple(sample.forward_input.args),
                "forward_kwargs": dict(sample.forward_input.kwargs),
            }
        )
torch.save(samples, sys.argv[1])
"""


@pytest.fixture(scope="module")
def pytorch_samples(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("module_db") / "samples.pt"
    done = subprocess.run(
        [sys.executable, "-c", SAMPLER, str(path), *MODULES],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"reading PyTorch's module_db failed:\n{done.stderr[-3000:]}"
    samples = torch.load(path, weights_only=False)
    missing = set(MODULES) - {s["module"] for s in samples}
    assert not missing, f"module_db has no samples for {sorted(missing)}"
    return samples


CONV_OP = re.compile(r"conv(?!ert)")


class ConvOpRecorder(TorchDispatchMode):
    """The convolution-family ATen ops dispatched while active, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if CONV_OP.search(func._schema.name.split("::")[-1]):
            self.conv_ops.append(str(func))
        return func(*args, **(kwargs or {}))


def describe(sample: dict) -> str:
    shapes = [tuple(a.shape) for a in sample["forward_args"] if isinstance(a, torch.Tensor)]
    args = ", ".join(
        [repr(a) for a in sample["args"]] + [f"{k}={v!r}" for k, v in sample["kwargs"].items()]
    )
    desc = f" ({sample['desc']})" if sample["desc"] else ""
    return (
        f"{sample['module']} sample {sample['index']}{desc}: {sample['class']}({args}) on {shapes}"
    )


def build(sample: dict) -> nn.Module:
    """The module, in float64 and eval mode (the samples are for training=False); a Lazy module
    is run once to take its shapes, and becomes the plain module it stands for."""
    torch.manual_seed(sample["index"])
    cls = getattr(nn, sample["class"])
    module = cls(*sample["args"], **sample["kwargs"], dtype=torch.float64).eval()
    if sample["class"].startswith("Lazy"):
        with torch.no_grad():
            module(*fresh_inputs(sample), **sample["forward_kwargs"])
        assert not type(module).__name__.startswith("Lazy"), type(module)
    return module


def fresh_inputs(sample: dict) -> tuple:
    return tuple(
        a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
        for a in sample["forward_args"]
    )


def output_and_grads(module: nn.Module, inputs: tuple, kwargs: dict, cotangent=None):
    tensors = [a for a in inputs if isinstance(a, torch.Tensor) and a.requires_grad]
    params = list(module.named_parameters())
    names = [f"input{i}" for i in range(len(tensors))] + [name for name, _ in params]
    with ConvOpRecorder() as ops:
        out = module(*inputs, **kwargs)
        if cotangent is None:
            cotangent = torch.randn_like(out)
        grads = torch.autograd.grad(out, [*tensors, *(p for _, p in params)], cotangent)
    return out.detach(), cotangent, dict(zip(names, grads, strict=True)), ops


def check_sample(sample: dict, strategy: str) -> None:
    kind = MODULES[sample["module"]]
    module = build(sample)
    lowered = lowerconv.lower(module, kinds=None, strategy=strategy)
    kwargs = sample["forward_kwargs"]
    want, cotangent, want_grads, control = output_and_grads(module, fresh_inputs(sample), kwargs)
    assert control.conv_ops, "the original ran no convolution op: the recorder sees nothing"
    got, _, got_grads, ops = output_and_grads(lowered, fresh_inputs(sample), kwargs, cotangent)
    assert ops.conv_ops == [], f"convolution ops ran in the lowered module: {ops.conv_ops}"
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    assert list(got_grads) == list(want_grads)
    for name, want_grad in want_grads.items():
        torch.testing.assert_close(
            got_grads[name], want_grad, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )
    left = [
        f"{n!r} ({type(m).__name__})" for n, m in lowered.named_modules() if isinstance(m, _ConvNd)
    ]
    assert not left, f"convolution modules left in the lowered model: {', '.join(left)}"
    assert [c.kind for c in lowering_record(lowered).lowered] == [kind]


def check_module(samples: list[dict], module_name: str, strategies: list[str]) -> None:
    """Every sample of ``module_name`` with every strategy; all failures reported together.

    A sample the original module itself rejects is not one we can compare with: it is skipped,
    named in a warning (or in the skip reason when no sample is left)."""
    mine = [s for s in samples if s["module"] == module_name]
    failures, skipped = [], []
    for sample in mine:
        try:
            with torch.no_grad():
                build(sample)(*fresh_inputs(sample), **sample["forward_kwargs"])
        except Exception as err:
            skipped.append(f"{describe(sample)}: PyTorch rejects it: {type(err).__name__}: {err}")
            continue
        for strategy in strategies:
            try:
                check_sample(sample, strategy)
            except Exception as err:  # each sample's and strategy's failure is reported
                failures.append(
                    f"{describe(sample)}, strategy={strategy!r}: {type(err).__name__}: {err}"
                )
    assert not failures, "\n\n".join(failures)
    if skipped and len(skipped) == len(mine):
        pytest.skip("; ".join(skipped))
    for reason in skipped:
        warnings.warn(f"skipped {reason}", stacklevel=1)


@pytest.mark.parametrize("module_name", list(MODULES))
def test_module_db_samples_lowered(pytorch_samples, module_name: str):
    check_module(pytorch_samples, module_name, FAST_STRATEGIES)


@pytest.mark.slow
@pytest.mark.parametrize("module_name", list(MODULES))
def test_module_db_samples_lowered_with_every_strategy(pytorch_samples, module_name: str):
    check_module(pytorch_samples, module_name, SLOW_STRATEGIES)
