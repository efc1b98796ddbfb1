"""Lowering at run time, for the convolutions a graph cannot reach.

Two things defeat a graph: ``Conv2d`` subclasses whose ``forward`` computes its padding with
plain Python (timm's ``Conv2dSame``), and whole models that ``torch.fx`` cannot trace at all
(type checks, data-dependent branches: most Hugging Face models, kornia's filters).  Both keep
running their ``forward`` as written, under :class:`Im2colMode`, a ``TorchFunctionMode`` that
sends every ``F.conv*``/``F.conv_transpose*`` call (of the lowering's kinds), and every direct
call of ``torch.convolution`` or of an ATen convolution op (``torch.ops.aten.convolution``,
packet or overload: a ``TorchFunctionMode`` sees those too; :mod:`.conv_calls` lists them), to
:func:`lowerconv.lowering.functional.convolution`: the same strategies as in a lowered graph, plain
differentiable tensor ops (gradients reach whatever parameters built the kernel), and no
convolution op.  Transposed convolution modules always run this way, because their output
padding may come from ``output_size=`` at call time.

- :class:`RuntimeLoweredConv` wraps one convolution module;
- :class:`RuntimeLowering` is a pair of forward hooks that runs a whole module's forward (the
  model on the fallback path, a ``leaf_modules=`` module on the graph path) under the mode.

Which convolutions ran this way is only known once the model runs: :func:`observe_conv_calls`
reports each call, with the module it came from (:func:`trace_conv_calls` collects them), for the
record, ``lowerconv graph`` and the verifier.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .conv_calls import CONV_CALLABLES, bind_conv_call
from .functional import convolution
from .spec import KINDS, ConvSpec
from .strategies import choose_strategy

__all__ = [
    "CONV_FUNCTIONS",
    "ConvCall",
    "ConvCallRecorder",
    "Im2colMode",
    "ModuleLocator",
    "RuntimeLoweredConv",
    "RuntimeLoweredConv2d",
    "RuntimeLowering",
    "observe_conv_calls",
    "runtime_lowering",
    "trace_conv_calls",
]

# The functional convolutions a forward can call, by kind (the generic ones, whose kind is
# in their arguments, are in conv_calls.CONV_CALLABLES).  Calls of the lowering's kinds are
# lowered at run time; the others are reported so that the record can list them as left alone.
CONV_FUNCTIONS: dict[Any, str] = {
    func: kind for func, (kind, label, _) in CONV_CALLABLES.items() if label.startswith("F.")
}


@dataclass
class ConvCall:
    """One functional convolution call seen while a module ran.

    ``scope`` is ``"model"`` for a call made under a whole-module :class:`RuntimeLowering`, or
    ``"module"`` under a :class:`RuntimeLoweredConv2d` (recorded by that module's own entry), or
    ``"native"`` for a call that ran as the convolution op (under :class:`ConvCallRecorder`).
    ``arguments`` are the call's arguments by name (input, weight, bias, stride, ...).
    """

    kind: str
    scope: str
    lowered: bool
    strategy: str | None
    arguments: dict[str, Any]
    output: Any
    spec: ConvSpec | None = None
    called_from: str | None = None  # the innermost module of the model on the stack
    location: str | None = None  # the model's own source line that made the call
    name: str = ""  # ``called_from``, numbered when one module makes several calls
    function: str = ""  # what the forward called: "F.conv2d", "torch.convolution"...

    @property
    def target(self) -> str:
        """The function called, as the record shows it (``F.conv2d`` when unknown)."""
        return self.function or f"F.{self.kind}"

    @property
    def concrete_strategy(self) -> str | None:
        """The strategy that computed a lowered call (``"auto"`` resolved for its spec and the
        device of its input: ``"cuda"`` on a GPU)."""
        if self.strategy != "auto":
            return self.strategy
        if self.spec is None:
            return "unfold"
        device = getattr(self.arguments.get("input"), "device", None)
        if device is not None and device.type == "cuda":
            return "cuda"
        return choose_strategy(self.spec)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        shape = getattr(self.arguments.get("input"), "shape", None)
        return tuple(shape) if shape is not None else None

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        shape = getattr(self.output, "shape", None)
        return tuple(shape) if shape is not None else None


_OBSERVER: ContextVar[Callable[[ConvCall], None] | None] = ContextVar(
    "lowerconv_conv_observer", default=None
)


@contextlib.contextmanager
def observe_conv_calls(callback: Callable[[ConvCall], None]) -> Iterator[None]:
    """Within this block, every convolution call that lowerconv's modes see goes to ``callback``.

    Costs nothing outside it: the modes read one context variable per convolution call.
    """
    token = _OBSERVER.set(callback)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def _report(call: tuple[str, str, dict[str, Any]], output: Any, **how: Any) -> None:
    observer = _OBSERVER.get()
    if observer is not None:
        kind, function, arguments = call
        observer(ConvCall(kind, arguments=dict(arguments), output=output, function=function, **how))


class Im2colMode(TorchFunctionMode):
    """Within this mode, ``F.conv*``/``torch.conv*`` calls of ``kinds`` (default: every kind)
    run as im2col + matmul (transposed ones: GEMM + col2im), and so do direct calls of
    ``torch.convolution`` and of the ATen convolution ops (:data:`.conv_calls.CONV_CALLABLES`).

    ``scope`` says who pushed the mode (``"model"`` or ``"module"``), for observers.
    """

    def __init__(
        self,
        strategy: str = "unfold",
        max_workspace_bytes: int | None = None,
        scope: str = "model",
        kinds: frozenset[str] | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.max_workspace_bytes = max_workspace_bytes
        self.scope = scope
        self.kinds = frozenset(KINDS) if kinds is None else frozenset(kinds)
        self.target = target

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = bind_conv_call(func, args, kwargs)
        if call is not None and call[0] in self.kinds:
            kind, _, arguments = call
            lowering = dict(arguments)
            out = convolution(
                lowering.pop("input"),
                lowering.pop("weight"),
                lowering.pop("bias", None),
                transposed="transpose" in kind,
                strategy=self.strategy,
                max_workspace_bytes=self.max_workspace_bytes,
                target=self.target,
                **lowering,
            )
            _report(call, out, scope=self.scope, lowered=True, strategy=self.strategy)
            return out
        out = func(*args, **kwargs)
        if call is not None:
            _report(call, out, scope=self.scope, lowered=False, strategy=None)
        return out


class ConvCallRecorder(TorchFunctionMode):
    """Reports every functional convolution call to the observer and runs it unchanged.

    The verifier runs the original model (and its float64 oracle) under it, to get each
    convolution's arguments and output where the lowered model lowered it at run time.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        call = bind_conv_call(func, args, kwargs)
        if call is not None:
            _report(call, out, scope="native", lowered=False, strategy=None)
        return out


class RuntimeLoweredConv(nn.Module):
    """Runs a convolution module's own ``forward`` with its ``F.conv*`` calls lowered: a
    subclass whose ``forward`` cannot be traced, or a transposed conv (called with
    ``output_size=`` or not).

    It shares the conv's parameter, buffer and child dictionaries, so ``state_dict()`` keys,
    ``.to()``, ``.train()`` and tied weights behave as before; the conv itself is kept out of
    ``.modules()`` (no convolution module is reachable from the model).
    """

    def __init__(
        self,
        conv: nn.Module,
        strategy: str,
        max_workspace_bytes: int | None = None,
        kinds: frozenset[str] | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__()
        self._parameters = conv._parameters
        self._buffers = conv._buffers
        self._non_persistent_buffers_set = conv._non_persistent_buffers_set
        self._modules = conv._modules
        self.training = conv.training
        object.__setattr__(self, "_wrapped_conv", conv)
        self.strategy = strategy
        self.max_workspace_bytes = max_workspace_bytes
        self.kinds = kinds
        self.target = target

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        conv = self._wrapped_conv
        conv.training = self.training
        # Absent in modules pickled before they existed.
        kinds, target = self.__dict__.get("kinds"), self.__dict__.get("target")
        mode = Im2colMode(
            self.strategy, self.max_workspace_bytes, scope="module", kinds=kinds, target=target
        )
        with mode:
            return conv(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Configuration the model may read at run time (out_channels, stride, ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            conv = self.__dict__.get("_wrapped_conv")  # absent while being unpickled
            if conv is None:
                raise
            return getattr(conv, name)

    def extra_repr(self) -> str:
        conv = self._wrapped_conv
        return f"{type(conv).__name__}({conv.extra_repr()}), strategy={self.strategy!r}"


RuntimeLoweredConv2d = RuntimeLoweredConv  # its name when only Conv2d was lowered


# -- whole modules ---------------------------------------------------------------------------------

RUNTIME_ATTR = "_lowerconv_runtime_lowering"

# The modes a RuntimeLowering has entered and not yet left, per thread (a forward runs on one).
_ACTIVE = threading.local()


class RuntimeLowering:
    """Runs a module's whole ``forward`` under :class:`Im2colMode`, by a pair of forward hooks.

    Hooks keep the module itself (its class, ``state_dict()``, ``isinstance``) unchanged, and
    they survive ``copy.deepcopy`` and pickling.  The exit hook is registered with
    ``always_call=True``, so a forward that raises still leaves the mode.  Calling
    ``module.forward(x)`` directly bypasses hooks, as it bypasses every hook in PyTorch.
    """

    def __init__(
        self,
        strategy: str,
        max_workspace_bytes: int | None = None,
        kinds: frozenset[str] | None = None,
        target: str | None = None,
    ) -> None:
        self.strategy = strategy
        self.max_workspace_bytes = max_workspace_bytes
        self.kinds = kinds
        self.target = target

    def attach(self, module: nn.Module) -> None:
        module.register_forward_pre_hook(self.enter, prepend=True)
        module.register_forward_hook(self.exit, always_call=True)
        object.__setattr__(module, RUNTIME_ATTR, self)

    def enter(self, module: nn.Module, args: tuple) -> None:
        kinds, target = self.__dict__.get("kinds"), self.__dict__.get("target")
        mode = Im2colMode(
            self.strategy, self.max_workspace_bytes, scope="model", kinds=kinds, target=target
        )
        mode.__enter__()
        _stack().append((self, mode))

    def exit(self, module: nn.Module, args: tuple, output: Any) -> None:
        stack = _stack()
        if stack and stack[-1][0] is self:  # not entered when an earlier pre-hook raised
            _, mode = stack.pop()
            mode.__exit__(None, None, None)


def _stack() -> list[tuple[RuntimeLowering, Im2colMode]]:
    if not hasattr(_ACTIVE, "stack"):
        _ACTIVE.stack = []
    return _ACTIVE.stack


def runtime_lowering(module: nn.Module) -> RuntimeLowering | None:
    """The :class:`RuntimeLowering` attached to ``module`` by :func:`lowerconv.lower`, if any."""
    return module.__dict__.get(RUNTIME_ATTR)


# -- who called -------------------------------------------------------------------------------------


class ModuleLocator:
    """Names the innermost module of ``root`` whose code is on the Python stack, and the model's
    own source line (outside torch and lowerconv) nearest the top: where a call came from."""

    # torch's files and the whole lowerconv package (the verifier calls the model too).
    _SKIP = (
        os.path.dirname(torch.__file__) + os.sep,
        os.path.dirname(os.path.dirname(__file__)) + os.sep,
    )

    def __init__(self, root: nn.Module) -> None:
        self.names = {id(m): name for name, m in root.named_modules(remove_duplicate=False)}

    def locate(self) -> tuple[str | None, str | None]:
        module_name = location = None
        frame = sys._getframe(1)
        while frame is not None:
            filename = frame.f_code.co_filename
            if location is None and not filename.startswith(self._SKIP):
                location = f"{filename}:{frame.f_lineno}"
            if "self" in frame.f_code.co_varnames:
                owner = frame.f_locals.get("self")
                if owner is not None and id(owner) in self.names:
                    module_name = self.names[id(owner)]
                    break
            frame = frame.f_back
        return module_name, location


@dataclass
class _CallTracer:
    """Collects :class:`ConvCall` s, naming each by the innermost module of ``root`` on the stack."""

    root: nn.Module
    keep_tensors: bool | Callable[[ConvCall], bool] = False
    scopes: tuple[str, ...] = ("model", "native")
    calls: list[ConvCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.locator = ModuleLocator(self.root)
        self.counts: dict[str, int] = {}

    def __call__(self, call: ConvCall) -> None:
        if call.scope not in self.scopes:
            return
        call.called_from, call.location = self.locator.locate()
        base = call.called_from or "forward"
        self.counts[base] = self.counts.get(base, 0) + 1
        call.name = base if self.counts[base] == 1 else f"{base}#{self.counts[base]}"
        call.spec = _spec_of(call.kind, call.arguments)
        keep = self.keep_tensors
        if keep if isinstance(keep, bool) else keep(call):
            call.arguments = _snapshot(call.arguments)
            call.output = _snapshot(call.output)
        else:
            call.arguments = {
                k: _Shape(v) if isinstance(v, torch.Tensor) else v
                for k, v in call.arguments.items()
            }
            call.output = _Shape(call.output) if isinstance(call.output, torch.Tensor) else None
        self.calls.append(call)


class _Shape:
    """Stands in for a tensor whose shape and dtype is all an observer keeps."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape = tensor.shape
        self.dtype = tensor.dtype

    def dim(self) -> int:
        return len(self.shape)


def _snapshot(value: Any) -> Any:
    # Detached copies: later in-place ops on the model's tensors cannot change what was seen.
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    return value


def _spec_of(kind: str, arguments: dict[str, Any]) -> ConvSpec | None:
    weight = arguments.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != int(kind[-2]) + 2:
        return None
    names = ("stride", "padding", "dilation", "groups", "output_padding")
    try:
        return ConvSpec.from_conv_args(
            weight.shape,
            bias=arguments.get("bias") is not None,
            transposed="transpose" in kind,
            **{k: arguments[k] for k in names if k in arguments},
        )
    except (ValueError, TypeError):
        return None


@contextlib.contextmanager
def trace_conv_calls(
    root: nn.Module,
    *,
    keep_tensors: bool | Callable[[ConvCall], bool] = False,
    record_native: bool = False,
    scopes: tuple[str, ...] = ("model", "native"),
) -> Iterator[list[ConvCall]]:
    """Collect the convolution calls made while the block runs ``root``, named by module path.

    Yields the list that fills as the block runs.  Calls lowered at run time by a whole-module
    :class:`RuntimeLowering` are reported (those inside a :class:`RuntimeLoweredConv2d` are that
    module's own, and left out).  ``record_native=True`` also runs the block under
    :class:`ConvCallRecorder`, for a model that runs its convolutions natively (the original).
    ``keep_tensors=True`` keeps detached copies of every argument and output (a predicate: of
    the calls it accepts, once named); otherwise only their shapes and dtypes.  ``scopes`` adds ``"module"`` for the calls inside each
    :class:`RuntimeLoweredConv2d`.
    """
    tracer = _CallTracer(root, keep_tensors=keep_tensors, scopes=scopes)
    with (
        observe_conv_calls(tracer),
        ConvCallRecorder() if record_native else contextlib.nullcontext(),
    ):
        yield tracer.calls


def describe_call_site(call: ConvCall) -> str:
    """``module 'blur' (kornia/filters/filter.py:118)``, as far as it is known."""
    where = f"module {call.called_from!r}" if call.called_from else "the model's own forward"
    return f"{where} ({call.location})" if call.location else where
