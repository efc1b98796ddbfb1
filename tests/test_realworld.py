"""Real-world models (transformers, diffusers, segmentation_models_pytorch, kornia) come out
conv-free: no ``nn.Conv2d`` module left, no 2-D convolution op run, the same outputs (output
classes included), a passing ``lowerconv.verify``, and the original untouched.

Every test is ``slow`` and needs the ``zoo`` extra (``pip install -e ".[test,zoo]"``); a model
whose library is missing is skipped, saying so.  Run them with
``pytest -m slow tests/test_realworld.py`` (add ``-n 2`` with pytest-xdist).
"""

from __future__ import annotations

import dataclasses
from functools import cache

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv
from lowerconv.models.realworld import LIBRARIES, REALWORLD_MODELS, RealWorldModel

pytestmark = pytest.mark.slow

# Every ATen op that runs a convolution forward, by name: the composite entry points and each
# backend's kernel, so that a conv sneaking past the composite ops is still seen.  This torch has
# no `conv_depthwise2d` (it is `_conv_depthwise2d`); names a torch lacks are dropped below.
CONV_OP_NAMES = (
    "convolution",
    "_convolution",
    "_convolution_mode",
    "convolution_overrideable",
    "conv2d",
    "cudnn_convolution",
    "cudnn_convolution_relu",
    "cudnn_convolution_add_relu",
    "miopen_convolution",
    "miopen_depthwise_convolution",
    "mkldnn_convolution",
    "_mps_convolution",
    "_nnpack_spatial_convolution",
    "_slow_conv2d_forward",
    "thnn_conv2d",
    "slow_conv_dilated2d",
    "_conv_depthwise2d",
    "conv_depthwise2d",
)
CONV_OPS = {
    getattr(torch.ops.aten, name): name for name in CONV_OP_NAMES if hasattr(torch.ops.aten, name)
}
# The ops with a `transposed` flag, and its position: aten.convolution(input, weight, bias,
# stride, padding, dilation, transposed, output_padding, groups).
TRANSPOSED_ARG = {
    torch.ops.aten.convolution: 6,
    torch.ops.aten._convolution: 6,
    torch.ops.aten.convolution_overrideable: 6,
}


class Conv2dOpRecorder(TorchDispatchMode):
    """Records each 2-D, non-transposed convolution op dispatched: a 4-D weight (the op's second
    argument) and, for the ops that take one, ``transposed=False``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in CONV_OPS:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            position = TRANSPOSED_ARG.get(packet)
            transposed = position is not None and (
                args[position] if len(args) > position else kwargs.get("transposed")
            )
            if isinstance(weight, torch.Tensor) and weight.dim() == 4 and not transposed:
                self.calls.append(f"{CONV_OPS[packet]}(weight {tuple(weight.shape)})")
        return func(*args, **kwargs)


def test_the_recorder_sees_a_conv2d_and_ignores_others() -> None:
    """The recorder must catch what it is for, or every check below passes for nothing."""
    x = torch.randn(1, 2, 6, 6)
    with Conv2dOpRecorder() as seen:
        nn.Conv2d(2, 3, 3)(x)
        nn.ConvTranspose2d(2, 3, 3)(x)
        nn.Conv1d(2, 3, 3)(x[..., 0])
    assert seen.calls == ["convolution(weight (3, 2, 3, 3))"]


@dataclasses.dataclass
class Lowered:
    model: nn.Module
    inputs: tuple
    lowered: nn.Module


def _built(name: str) -> tuple[nn.Module, tuple]:
    entry = REALWORLD_MODELS[name]
    pytest.importorskip(entry.library, reason=_missing(entry))
    return entry.build()


@cache
def _lowered(name: str) -> Lowered:
    """Each model built and lowered once per process, shared by the checks that only read it."""
    model, inputs = _built(name)
    return Lowered(model, inputs, lowerconv.lower(model))


def _missing(entry: RealWorldModel) -> str:
    return (
        f"{entry.name} needs {LIBRARIES[entry.library]}, which is not installed: "
        'pip install -e ".[test,zoo]"'
    )


def _output_tensors(output: object, where: str = "output") -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for each tensor in a model's output: tensors, tuples, dicts (a
    ``ModelOutput`` is one) and dataclasses (diffusers' outputs)."""
    if isinstance(output, torch.Tensor):
        return [(where, output)]
    if isinstance(output, dict):
        items = list(output.items())
    elif dataclasses.is_dataclass(output):
        items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    elif isinstance(output, (list, tuple)):
        items = list(enumerate(output))
    else:
        return []
    return [leaf for key, value in items for leaf in _output_tensors(value, f"{where}.{key}")]


def _run(module: nn.Module, inputs: tuple):
    with torch.no_grad():
        return module(*inputs)


NAMES = list(REALWORLD_MODELS)
by_model = pytest.mark.parametrize("name", NAMES, ids=NAMES)


@by_model
def test_no_conv2d_module_left(name: str) -> None:
    case = _lowered(name)
    left = [q for q, m in case.lowered.named_modules() if isinstance(m, nn.Conv2d)]
    assert not left, f"{name}: nn.Conv2d still in the lowered model: {left}"


@by_model
def test_no_2d_convolution_op_runs(name: str) -> None:
    case = _lowered(name)
    with Conv2dOpRecorder() as seen:
        _run(case.lowered, case.inputs)
    assert not seen.calls, f"{name}: {len(seen.calls)} 2-D convolution op(s) ran: {seen.calls}"


@by_model
def test_outputs_match_the_original(name: str) -> None:
    case = _lowered(name)
    expected, got = _run(case.model, case.inputs), _run(case.lowered, case.inputs)
    assert type(got) is type(expected)
    expected_leaves, got_leaves = _output_tensors(expected), _output_tensors(got)
    assert [path for path, _ in got_leaves] == [path for path, _ in expected_leaves]
    assert expected_leaves, f"{name}: no tensor in the output of type {type(expected).__name__}"
    for (path, want), (_, have) in zip(expected_leaves, got_leaves, strict=True):
        # float32 rounding of another summation order, relative to the output's own scale
        scale = want.abs().max().item() if want.numel() and want.is_floating_point() else 1.0
        torch.testing.assert_close(
            have, want, rtol=1e-4, atol=1e-5 * max(scale, 1e-3), msg=lambda m, p=path: f"{p}: {m}"
        )


@by_model
def test_verify_passes(name: str) -> None:
    case = _lowered(name)
    report = lowerconv.verify(case.model, case.inputs, timing=False)
    assert report.ok, report.failure_message()


def _module_summary(model: nn.Module) -> list[tuple[str, type, bool]]:
    return [(name, type(module), module.training) for name, module in model.named_modules()]


@by_model
def test_original_model_unchanged(name: str) -> None:
    model, inputs = _built(name)  # its own copy: the shared one is also given to verify
    state_before = {key: value.detach().clone() for key, value in model.state_dict().items()}
    modules_before = _module_summary(model)
    _run(lowerconv.lower(model), inputs)
    assert _module_summary(model) == modules_before  # the same classes and train/eval flags
    state = model.state_dict()
    assert list(state) == list(state_before)
    changed = [key for key, value in state.items() if not torch.equal(value, state_before[key])]
    assert not changed, f"{name}: lowering, or running the lowered model, changed {changed}"
