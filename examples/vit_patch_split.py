"""Kernel == stride: Unfold is exactly a Vision Transformer's patch split.

Input (25, 3, 224, 224) with kernel = stride = 14 unfolds to (25, 588, 256) = (25, 3*14*14,
16*16), and plain reshape + permute produces the same patches without Unfold.

    python examples/vit_patch_split.py
"""

import torch
import torch.nn.functional as F
from torch import nn

import lowerconv

torch.manual_seed(0)
x = torch.randn(25, 3, 224, 224)
p = 14

cols = F.unfold(x, kernel_size=p, stride=p)
print("unfold:", tuple(cols.shape))  # (25, 588, 256)
assert cols.shape == (25, 3 * p * p, (224 // p) ** 2)

# The same patches by reshape + permute: (N, C, 16, 14, 16, 14) -> (N, C, 14, 14, 16, 16).
patches = x.reshape(25, 3, 16, p, 16, p).permute(0, 1, 3, 5, 2, 4).reshape(25, 3 * p * p, 256)
assert torch.equal(patches, cols)
print("reshape + permute gives the identical (25, 588, 256) patches")

# A ViT's patch embedding is then one matmul, and lowerconv does it for the conv itself.
embed = nn.Conv2d(3, 192, kernel_size=p, stride=p)
with torch.no_grad():
    by_hand = (embed.weight.reshape(192, -1) @ cols + embed.bias[:, None]).reshape(25, 192, 16, 16)
    native = embed(x)
    lowered = lowerconv.lower(embed)(x)
print(f"max |by hand - Conv2d| = {(by_hand - native).abs().max().item():.2e}")
print(f"max |lowered - Conv2d| = {(lowered - native).abs().max().item():.2e}")
assert torch.allclose(by_hand, native, atol=1e-4)
assert torch.allclose(lowered, native, atol=1e-4)
