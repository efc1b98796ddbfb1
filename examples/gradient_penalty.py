"""Second derivatives through a lowered model: a WGAN-GP style gradient penalty.

python examples/gradient_penalty.py

The penalty is the norm of the critic's gradient with respect to its input, so training on it
differentiates a gradient: backward with ``create_graph=True``, then backward again.  The lowered
critic's gradients of the penalty equal the original's, and no convolution op runs.
"""

import copy

import torch
from torch import nn

import lowerconv

torch.manual_seed(0)
critic = nn.Sequential(
    nn.Conv2d(3, 16, 3, stride=2, padding=1),
    nn.LeakyReLU(0.2),
    nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
    nn.Conv2d(16, 32, 1),
    nn.LeakyReLU(0.2),
    nn.Conv2d(32, 1, 4),
).double()
lowered = lowerconv.lower(copy.deepcopy(critic))


def penalty_gradients(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    score = model(x).sum()
    (grad_x,) = torch.autograd.grad(score, x, create_graph=True)
    penalty = (grad_x.flatten(1).norm(dim=1) - 1).square().mean()
    # The last bias shifts the score by a constant: it has no effect on the penalty (zeros).
    params = list(model.parameters())
    return torch.autograd.grad(penalty, params, allow_unused=True, materialize_grads=True)


x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
want = penalty_gradients(critic, x)
got = penalty_gradients(lowered, x)
worst = max((a - b).abs().max().item() for a, b in zip(got, want, strict=True))
print(f"gradient penalty's parameter gradients, max |lowered - original|: {worst:.1e}")
assert worst < 1e-10
