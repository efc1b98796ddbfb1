"""Lowered graphs that leave PyTorch: the export tier, lower(ExportedProgram), a .pt2 round trip.

python examples/export_lowered.py

``Resize`` branches on its input's shape, which ``torch.fx`` cannot trace; given example inputs,
``lowerconv.lower`` captures it with ``torch.export`` instead and lowers that one graph (the
*export* path).  An ``ExportedProgram`` exported with a dynamic batch is lowered into another
``ExportedProgram`` that still takes any batch, saves, loads and runs with no convolution op.
"""

import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lowerconv


class Resize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 32:  # torch.fx cannot branch on a shape; torch.export follows it
            x = F.avg_pool2d(x, 2)
        return self.head(torch.relu(self.stem(x)))


def conv_ops(program: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if "conv" in str(n.target)]


torch.manual_seed(0)
model = Resize().eval()
x = torch.randn(2, 3, 64, 64)

# 1. The export tier: one whole lowered graph for a model torch.fx cannot trace.
lowered = lowerconv.lower(model, example_inputs=x)
record = lowerconv.lowering_record(lowered)
print(record.summary())
print("torch.fx said:", record.trace_error.splitlines()[0])
with torch.no_grad():
    print(f"max |lowered - original| = {(lowered(x) - model(x)).abs().max().item():.2e}")

# 2. lower(ExportedProgram): the dynamic batch is kept.
batch = torch.export.Dim("batch")
program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
lowered_program = lowerconv.lower(program)
ops = Counter(str(n.target) for n in lowered_program.graph.nodes if n.op == "call_function")
print("\nlowered ExportedProgram:", ", ".join(f"{op} x {n}" for op, n in ops.most_common()))
assert conv_ops(lowered_program) == []

# 3. Saved, loaded and run on another batch size.
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "resize_lowered.pt2"
    torch.export.save(lowered_program, path)
    loaded = torch.export.load(path)
x5 = torch.randn(5, 3, 64, 64)
with torch.no_grad():
    error = (loaded.module()(x5) - model(x5)).abs().max().item()
print(f"loaded back, batch 5: max |lowered - original| = {error:.2e}")
