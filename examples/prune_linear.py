"""``torch.nn.utils.prune`` on a lowered resnet18's convs, proven equal to the pruned convs.

    python examples/prune_linear.py

``prune.l1_unstructured`` works on any module's ``weight``; in the Linear form
(``lower(model, gemm="linear")``) each conv's GEMM is an ``nn.Linear`` of the conv's weight
flattened, so pruning it prunes the conv.  Half of every conv's weights are pruned (L1, the
smallest), made permanent, and :func:`lowerconv.conv_state_dict` carries them back to a plain
resnet18.  ``lowerconv.verify`` then proves the pruned Linear model computes what the pruned
conv model computes, conv by conv, against float64.
"""

import torch
import torchvision
from torch.nn.utils import prune

import lowerconv

torch.manual_seed(0)
model = torchvision.models.resnet18().eval()
lowered = lowerconv.lower(model, strategy="auto", gemm="linear")
for name in lowerconv.linear_module_names(lowered):
    linear = lowered.get_submodule(name)
    prune.l1_unstructured(linear, "weight", amount=0.5)
    prune.remove(linear, "weight")  # the mask folded into the weight: a plain Parameter again
zeros = sum(
    int((lowered.get_submodule(n).weight == 0).sum())
    for n in lowerconv.linear_module_names(lowered)
)
total = sum(lowered.get_submodule(n).weight.numel() for n in lowerconv.linear_module_names(lowered))
print(f"pruned the 20 conv GEMMs of resnet18: {zeros / total:.0%} of their weights are zero")

pruned = torchvision.models.resnet18().eval()
pruned.load_state_dict(lowerconv.conv_state_dict(lowered))
assert float((pruned.layer1[0].conv1.weight == 0).float().mean()) == 0.5

report = lowerconv.verify(pruned, torch.randn(1, 3, 64, 64), lowered=lowered, timing=False)
print(f"verify(pruned resnet18, lowered=the pruned Linear form): {report.verdict}")
report.raise_if_failed()
