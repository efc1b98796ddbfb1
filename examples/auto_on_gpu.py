"""`auto` follows the device: lower on the CPU, move to a GPU, and the CUDA plan runs.

python examples/auto_on_gpu.py

Without a GPU it shows the CUDA plan on CPU tensors (`target="cuda"`): a few batch-wide ops per
conv, the same number at every batch size, and no im2col.
"""

import collections

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

import lowerconv


class CountOps(TorchDispatchMode):
    """The ATen ops a forward dispatches, views left out."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


torch.manual_seed(0)
model = torchvision.models.mobilenet_v2(weights=None).eval()
lowered = lowerconv.lower(model, strategy="auto")  # on the CPU, as users do
record = lowerconv.lowering_record(lowered)
print("on a CPU, auto runs:", record.strategies_used())
print("on a GPU, the same nodes run:", {c.cuda_strategy for c in record.lowered})

# The CUDA plan's arithmetic, forced on CPU tensors.
planned = lowerconv.lower(model, strategy="auto", target="cuda")
for batch in (2, 8):
    x = torch.randn(batch, 3, 96, 96)
    with torch.no_grad():
        planned(x)  # the first call at a size caches the banded depthwise selectors
    with torch.no_grad(), CountOps() as counted:
        out = planned(x)
    with torch.no_grad():
        expected = model(x)
    print(
        f"batch {batch}: {sum(counted.ops.values())} non-view ops", dict(counted.ops.most_common(5))
    )
    assert not any("conv" in op or "im2col" in op for op in counted.ops)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)

if torch.cuda.is_available():
    gpu_model, gpu_lowered = model.cuda(), lowered.cuda()  # lowered on the CPU, moved
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        diff = (gpu_lowered(x) - gpu_model(x)).abs().max().item()
    print(f"on {torch.cuda.get_device_name()}: max |lowered - native| = {diff:.2e}")
