"""The background's worked check: a Conv2d is Unfold + matmul + reshape.

Input (25, 3, 32, 32), 16 filters of 3x3: unfold gives (25, 27, 900), the product reshaped is
(25, 16, 30, 30) and equals nn.Conv2d to float rounding. Then the same through lowerconv.lower.

    python examples/im2col_equivalence.py
"""

import torch
import torch.nn.functional as F
from torch import nn

import lowerconv

torch.manual_seed(0)
x = torch.randn(25, 3, 32, 32)
conv = nn.Conv2d(3, 16, kernel_size=3, bias=False)

# By hand: im2col, one matmul, one reshape.
cols = F.unfold(x, kernel_size=3)  # (25, 3*3*3, 30*30)
weight = conv.weight.reshape(16, -1)  # (16, 27)
by_hand = (weight @ cols).reshape(25, 16, 30, 30)
print("unfold:", tuple(cols.shape), " weight:", tuple(weight.shape), " out:", tuple(by_hand.shape))

with torch.no_grad():
    native = conv(x)
    lowered_conv = lowerconv.lower(conv)
    lowered = lowered_conv(x)
print(f"max |by hand - Conv2d| = {(by_hand - native).abs().max().item():.2e}")
print(f"max |lowered - Conv2d| = {(lowered - native).abs().max().item():.2e}")
assert torch.allclose(by_hand, native, atol=1e-4)
assert torch.allclose(lowered, native, atol=1e-4)

# In float64 the two agree to ~1e-15: the only difference is summation order.
x64, conv64 = x.double(), conv.double()
with torch.no_grad():
    diff64 = (lowerconv.lower(conv64)(x64) - conv64(x64)).abs().max().item()
print(f"float64: max |lowered - Conv2d| = {diff64:.2e}")
assert diff64 < 1e-12
print(lowered_conv.code)
