"""Which engine runs a lowered conv's GEMM, and the facts about a call that decide it.

:func:`gemm` is ``a @ b.T + bias``, the one matrix product of a lowered convolution.  On CPU in
float32, except on Intel CPUs (see :func:`choose_gemm_engine`), it runs oneDNN's matmul (the
inner-product primitive PyTorch uses for ``mkldnn`` linear layers), which on AMD CPUs is about
twice as fast as MKL's ``sgemm`` behind ``torch.matmul``; every other device, dtype, and any call
that needs gradients, runs ``torch.addmm``/``matmul``.  So does any call a tracer makes
(torch.export, torch.compile, make_fx, jit.trace; :func:`traced`): traced graphs hold portable
``aten`` ops only, never the private oneDNN one.  Either way it is a GEMM: no convolution op runs.

:func:`needs_grad` says whether autograd records a call, :func:`without_autograd` detaches what
needs no gradient, and :data:`GRAD_DTYPES` are the dtypes the GEMM formulas of
:mod:`.autograd` serve.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F

__all__ = [
    "GRAD_DTYPES",
    "ONEDNN",
    "choose_gemm_engine",
    "cpu_vendor",
    "gemm",
    "needs_grad",
    "onednn_linear_available",
    "traced",
    "use_onednn",
    "without_autograd",
]


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``...), or ``""``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def choose_gemm_engine() -> bool:
    """Whether CPU float32 GEMMs run oneDNN's matmul rather than ``torch.matmul`` (MKL or
    OpenBLAS).  ``LOWERCONV_GEMM=onednn`` or ``=blas`` decides; by default oneDNN, where
    available, on CPUs that are not Intel's: measured on an AMD EPYC, MKL's sgemm ran at about
    half oneDNN's speed; on an Intel Xeon (AVX-512) it matches oneDNN on im2col GEMMs and runs
    1x1 convs 1.5-2.7x faster (oneDNN repacks the activation, its "weight" there, every call).
    """
    choice = os.environ.get("LOWERCONV_GEMM", "").strip().lower()
    if choice not in ("", "onednn", "blas"):
        raise ValueError(f"LOWERCONV_GEMM must be 'onednn' or 'blas', got {choice!r}")
    if choice == "blas" or not onednn_linear_available():
        return False
    return choice == "onednn" or cpu_vendor() != "GenuineIntel"


# Read at call time (tests switch it to run both engines' code).
ONEDNN = choose_gemm_engine()


def traced(*tensors: torch.Tensor | None) -> bool:
    """Whether a tracer runs this code (torch.export, torch.compile, make_fx, jit.trace): they
    must record portable ops, never oneDNN's private ``mkldnn._linear_pointwise``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    # export and make_fx run on fake or functional tensors, subclasses of Tensor.
    return any(
        t is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter
        for t in tensors
    )


def use_onednn(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        ONEDNN
        and not traced(a, b, bias)
        and a.device.type == "cpu"
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and a.numel() > 0
        and b.numel() > 0
    )


class _OneDnnGemm(torch.autograd.Function):
    """``a @ b.T + bias`` by oneDNN forward; the backward products are plain ``matmul``s."""

    @staticmethod
    def forward(a, b, bias):
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, bias = inputs
        ctx.save_for_backward(a, b)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.matmul(grad, b)
        if ctx.needs_input_grad[1]:
            grad_b = torch.matmul(grad.flatten(0, -2).mT, a.flatten(0, -2))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.flatten(0, -2).sum(0)
        return grad_a, grad_b, grad_bias


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for ``a`` of shape ``(..., K)`` and ``b`` of shape ``(N, K)``.

    This is ``F.linear``'s contract, and its result, to float rounding; only the GEMM engine
    differs (see the module docstring).
    """
    if use_onednn(a, b, bias):
        return _OneDnnGemm.apply(a, b, bias)
    return F.linear(a, b, bias)


# The dtypes GemmConv2d's formulas serve (and the tap GEMMs sum in); others (half precision on
# CPU) keep autograd's own path.
GRAD_DTYPES = (torch.float32, torch.float64)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def without_autograd(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors, detached unless a gradient is to flow through them here.

    For code that computes none: ``torch.matmul`` looks at its operands' ``requires_grad`` (not
    at grad mode), and for a weight that requires grad (a model's parameter, even under
    ``no_grad``) it folds a batched product into one GEMM through transposed copies of the
    activations: measured 3.4x slower on a 1x1 conv, 1.4x on a 7x7 stem.
    """
    if needs_grad(*tensors):
        return tensors
    return tuple(t.detach() if t is not None else None for t in tensors)
