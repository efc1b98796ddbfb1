"""Step 1 of the pass: turn a model into a ``torch.fx`` graph that exposes every convolution.

Plain ``nn.Conv2d`` modules stay leaves (one ``call_module`` node each), so the lowered graph can
name them by their qualified name.  Subclasses that change ``forward`` or ``_conv_forward`` are
traced *into*: their own arithmetic (weight standardisation, run-time padding) is kept and only
the ``F.conv2d`` call inside is lowered.  ``torchvision.ops`` modules that hold no convolution
stay leaves, because several of them carry control flow that symbolic tracing cannot follow.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ..errors import LoweringError

__all__ = [
    "CONV_MODULES",
    "LoweringTracer",
    "conv_base",
    "is_plain_conv",
    "is_plain_conv2d",
    "trace",
]

# The convolution modules the pass lowers, one per kind.
CONV_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def conv_base(module: nn.Module) -> type[nn.Module] | None:
    """The ``torch.nn`` convolution class ``module`` is an instance of (``nn.Conv2d`` for
    ``nn.Conv2d`` and its subclasses), else None."""
    return next((cls for cls in CONV_MODULES if isinstance(module, cls)), None)


def conv_kind(module: nn.Module) -> str | None:
    """``"conv2d"``, ``"conv_transpose3d"``...: the kind of a convolution module, from its class
    (never from its weight, which a parametrization would compute); None for another module."""
    base = conv_base(module)
    if base is None:
        return None
    transposed = base.__name__.startswith("ConvTranspose")
    return f"conv{'_transpose' if transposed else ''}{base.__name__[-2]}d"


def is_plain_conv(module: nn.Module) -> bool:
    """A convolution module whose output is exactly ``F.conv*`` of its own parameters.

    Subclasses with their own ``forward``, and convs whose weight is computed
    (``torch.nn.utils.parametrize``: weight or spectral norm) are not: they are traced into.
    Nor are convs with forward hooks, which may compute the weight (the old
    ``torch.nn.utils.weight_norm``): the pass keeps them as leaves, lowered at run time.
    """
    base = conv_base(module)
    if base is None:
        return False
    cls = type(module)
    same = all(
        getattr(cls, method, None) is getattr(base, method, None)
        for method in ("forward", "_conv_forward", "_output_padding")
    )
    return (
        same
        and not isinstance(module, nn.modules.lazy.LazyModuleMixin)
        and not parametrize.is_parametrized(module)
        and not (module._forward_pre_hooks or module._forward_hooks)
    )


def is_plain_conv2d(module: nn.Module) -> bool:
    """:func:`is_plain_conv` for an ``nn.Conv2d``."""
    return isinstance(module, nn.Conv2d) and is_plain_conv(module)


def _holds_conv(module: nn.Module) -> bool:
    # Any convolution, so that Conv3d inside torchvision.ops blocks is reported as left alone,
    # and torch.ao quantised convs (Conv2dNormActivation of a quantised MobileNet) are reached.
    from torch.ao.nn.quantized.modules.conv import _ConvNd as QuantizedConvNd

    conv_types = (nn.modules.conv._ConvNd, QuantizedConvNd)
    return any(isinstance(m, conv_types) for m in module.modules())


class LoweringTracer(fx.Tracer):
    """A tracer that keeps plain Conv2d modules as leaves and traces into everything conv-like.

    ``leaf_modules`` adds leaves by type or by qualified name.  While tracing it keeps the stack
    of modules it is inside, so a tracing failure can say where it happened.
    """

    def __init__(
        self, leaf_modules: Iterable[type | str] = (), leaf_objects: Iterable[nn.Module] = ()
    ) -> None:
        super().__init__()
        leaves = tuple(leaf_modules)
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_names = frozenset(t for t in leaves if isinstance(t, str))
        self.leaf_ids = frozenset(id(m) for m in leaf_objects)
        self.module_stack_names: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if (
            module_qualified_name in self.leaf_names
            or isinstance(m, self.leaf_types)
            or id(m) in self.leaf_ids
        ):
            return True
        if conv_base(m) is not None:
            return is_plain_conv(m)
        if type(m).__module__.startswith("torchvision.ops") and not _holds_conv(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(m)
        self.module_stack_names.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.module_stack_names.pop()
        return result


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[type | str] = (),
    leaf_objects: Iterable[nn.Module] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Symbolically trace ``model`` with :class:`LoweringTracer`.

    ``leaf_objects`` are module instances to keep as leaves (the pass passes conv subclasses
    that cannot be traced on their own).  A bare transposed conv keeps its ``output_size=``
    argument: the output padding it picks is a graph node, computed per call.  A ``GraphModule`` is returned as is.  A failure raises
    :class:`LoweringError` naming the model,
    the module being traced when it failed, the last node recorded, and the tracer's message.
    """
    if isinstance(model, fx.GraphModule):
        return model
    tracer = LoweringTracer(leaf_modules, leaf_objects)
    bare_transposed = (
        concrete_args is None and is_plain_conv(model) and getattr(model, "transposed", False)
    )
    try:
        if bare_transposed:
            with _output_padding_as_node(model, tracer):
                graph = tracer.trace(model)
        else:
            graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:
        raise LoweringError(describe_trace_failure(model, tracer, exc)) from exc
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, class_name=name)


@contextlib.contextmanager
def _output_padding_as_node(conv: nn.Module, tracer: fx.Tracer) -> Iterator[None]:
    """While ``tracer`` traces a bare transposed conv, its ``output_size=`` argument stays a
    placeholder (default None) and the output padding it picks is one graph node, computed per
    call: its forward branches on ``output_size`` in plain Python, which tracing cannot follow."""
    from .nd import conv_transpose_output_padding

    def output_padding_node(input, output_size, stride, padding, kernel_size, dims, dilation):
        args = (input, output_size, conv.output_padding, stride, padding, kernel_size, dilation)
        return tracer.create_proxy("call_function", conv_transpose_output_padding, args, {})

    conv.__dict__["_output_padding"] = output_padding_node
    try:
        yield
    finally:
        del conv.__dict__["_output_padding"]


def describe_trace_failure(model: nn.Module, tracer: LoweringTracer, exc: BaseException) -> str:
    """Where tracing ``model`` failed and what to do about it, in one message."""
    model_name = type(model).__name__
    where = tracer.module_stack_names[-1] if tracer.module_stack_names else ""
    if where:
        sub = model.get_submodule(where)
        place = f"inside module '{where}' ({type(sub).__name__})"
    else:
        place = f"in {model_name}.forward"
    graph = getattr(tracer, "graph", None)
    last = None
    if graph is not None:
        nodes = [n for n in graph.nodes if n.op != "output"]
        last = nodes[-1].format_node() if nodes else None
    frame = _last_user_frame(exc)
    lines = [
        f"torch.fx could not trace {model_name}: {type(exc).__name__}: {exc}".rstrip(),
        f"  where: {place}" + (f", at {frame}" if frame else ""),
    ]
    if last:
        lines.append(f"  last node traced: {last}")
    lines.append(
        "  fix: pass concrete_args= to fix the inputs that drive control flow, name the module "
        "that cannot be traced in leaf_modules= (its convolutions are then lowered at run time), "
        "or leave strict=False (the default) to lower each Conv2d module on its own and every "
        "other F.conv2d call at run time."
    )
    return "\n".join(lines)


def _last_user_frame(exc: BaseException) -> str | None:
    """The innermost frame outside torch and lowerconv: the model's line that broke tracing."""
    frames = traceback.extract_tb(exc.__traceback__)
    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
    user = [f for f in frames if not f.filename.startswith(skip)]
    if not user:
        return None
    f = user[-1]
    return f"{f.filename}:{f.lineno} ({f.line})"
