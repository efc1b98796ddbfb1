"""Lower torchvision's resnet18, print what the pass did and the code it generated.

python examples/lower_resnet18.py
"""

import torch
import torchvision

import lowerconv

torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()
lowered = lowerconv.lower(model)

record = lowerconv.lowering_record(lowered)
print(record)  # one row per conv: name, configuration, strategy
print()
print(lowered.code[: lowered.code.index("layer1_0_bn1 =")])  # the stem, lowered

x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    diff = (lowered(x) - model(x)).abs().max().item()
print(f"max |lowered - original| on logits: {diff:.2e}")
assert diff < 1e-3
assert not any(isinstance(m, torch.nn.Conv2d) for m in lowered.modules())
assert list(lowered.state_dict()) == list(model.state_dict())
