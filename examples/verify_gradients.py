"""Verify the backward pass too: ``lowerconv verify MODEL --gradients``, and what it catches.

    python examples/verify_gradients.py

First a correct lowering of ``examples/my_models.py:make_net``, in train mode, passes forward
*and* backward (``--gradients``, or ``lowerconv.verify(..., gradients=True)``): every input and
parameter gradient, and each lowered conv's ``dX``, ``dW`` and ``db`` on its own input, against
a float64 oracle; the report lists them all.  Then the GEMM
backward that ``--strategy auto``'s kernels use (``lowerconv.lowering.autograd``) is made to
return a weight gradient 1 % too large while ``lowerconv verify ... --gradients`` runs, in this
process: the forward is untouched, so only the backward checks fail, naming the first conv
whose ``dW`` is off (``0 (dW)``), and the exit status is 1.
"""

from pathlib import Path
from unittest import mock

from lowerconv.cli import main
from lowerconv.lowering import autograd

MODEL = f"{Path(__file__).with_name('my_models.py')}:make_net"
ARGS = ["verify", MODEL, "--image-size", "28", "--strategy", "auto", "--no-timing", "--gradients"]

status = main([*ARGS, "--train"])
print(f"correct lowering, train mode: exit status {status}")
assert status == 0, "verify --gradients should have passed"

real_weight_grad = autograd.conv2d_weight_grad


def weight_grad_one_percent_too_large(*args, **kwargs):
    return real_weight_grad(*args, **kwargs) * 1.01


with mock.patch.object(autograd, "conv2d_weight_grad", weight_grad_one_percent_too_large):
    status = main(ARGS)
print(f"dW 1% too large: exit status {status}")
assert status == 1, "verify --gradients should have failed"
