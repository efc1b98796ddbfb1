"""A model torch.fx cannot trace, with a kernel built in forward: lowered at run time, and proved.

python examples/untraceable_filters.py

Image-filtering code (kornia's GaussianBlur2d and Sobel are real examples) builds its kernel in
``forward`` and calls ``F.conv2d`` on it, behind type checks and branches on tensor values that
symbolic tracing cannot follow.  ``lowerconv.lower`` then takes the fallback path: each
``Conv2d`` module is lowered on its own, and every other ``F.conv2d`` call is lowered as the
model runs.  With ``example_inputs`` the record lists those calls, named by the module that made
them; ``lowerconv.verify`` checks each one against float64 and audits the ATen ops the lowered
model dispatches: a 2-D convolution that still ran would fail it.
"""

import torch
import torch.nn.functional as F
from torch import nn

import lowerconv


class GaussianBlur(nn.Module):
    def __init__(self, size: int = 5, sigma: float = 1.5) -> None:
        super().__init__()
        self.size, self.sigma = size, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # torch.fx cannot trace past this
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        coords = torch.arange(self.size, dtype=x.dtype) - self.size // 2
        g = torch.exp(-(coords**2) / (2 * self.sigma**2))
        kernel = (g[:, None] * g[None, :]) / g.sum() ** 2
        kernel = kernel.expand(x.shape[1], 1, self.size, self.size)
        padded = F.pad(x, [self.size // 2] * 4, mode="reflect")
        return F.conv2d(padded, kernel, groups=x.shape[1])


class Edges(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blur = GaussianBlur()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)  # another kind: left alone, and said so

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blur(self.stem(x))
        if features.abs().max() == 0:  # a branch on a tensor's value
            return self.up(features)
        return self.up(features.relu())


torch.manual_seed(0)
model = Edges().eval()
x = torch.randn(2, 3, 32, 32)

lowered = lowerconv.lower(model, example_inputs=x)
print(lowerconv.lowering_record(lowered))

report = lowerconv.verify(model, x, timing=False)
print()
print(report)
report.raise_if_failed()
for op in report.runs[0].conv_ops:
    print(f"\nconv op run: {op.op} ({op.kind}) from {op.where}: {op.status}")
