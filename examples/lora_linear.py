"""PEFT LoRA adapters on a lowered resnet18's convs, trained for a few steps.

    pip install 'lowerconv[peft]'         # peft
    python examples/lora_linear.py

PEFT's LoRA wraps ``nn.Linear`` modules.  ``lower(model, gemm="linear")`` makes each conv's
GEMM one, at the conv's own name, so ``LoraConfig(target_modules=...)`` takes the conv names
(``lowerconv.linear_module_names`` lists them all; ``["conv1", "conv2"]`` would match by suffix
as PEFT does for any model).  A few steps of training on one fixed batch: the loss goes down,
only the adapters train, and the op audit sees no convolution op, forward or backward.  Then the
adapters are merged into the Linears (``merge_and_unload``) and :func:`lowerconv.conv_state_dict`
turns them back into conv weights that a plain torchvision resnet18 loads: it computes what
the adapted model computes.
"""

import importlib.util
import sys

if importlib.util.find_spec("peft") is None:
    sys.exit("this example needs peft: pip install 'lowerconv[peft]'")

import torch
import torchvision
from peft import LoraConfig, get_peft_model

import lowerconv
from lowerconv.verification.audit import ConvOpAudit

torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
lowered = lowerconv.lower(model, strategy="auto", gemm="linear")
targets = lowerconv.linear_module_names(lowered)
tuned = get_peft_model(lowered, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
trainable = [name for name, p in tuned.named_parameters() if p.requires_grad]
assert trainable and all("lora_" in name for name in trainable)
print(
    f"LoRA on {len(targets)} conv GEMMs: {sum(p.numel() for p in tuned.parameters() if p.requires_grad):,}"
    f" trainable parameters of {sum(p.numel() for p in tuned.parameters()):,}"
)

x, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 3, 5, 7])
optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
frozen = {name: p.detach().clone() for name, p in tuned.named_parameters() if not p.requires_grad}
tuned.train()
losses = []
with ConvOpAudit(tuned) as audit:
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(tuned(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
print("loss per step:", " ".join(f"{loss:.3f}" for loss in losses))
assert losses[-1] < losses[0], losses
assert audit.runs() == [], audit.runs()
print("op audit: no convolution op ran, forward or backward")
assert all(torch.equal(p, frozen[n]) for n, p in tuned.named_parameters() if n in frozen)
print("only the adapters changed: every conv weight is as it was")

# The adapters merged into the Linears, then back to conv weights for the original model.
tuned.eval()
with torch.no_grad():
    adapted = tuned(x)
merged = tuned.merge_and_unload()
plain = torchvision.models.resnet18(num_classes=10).eval()
plain.load_state_dict(lowerconv.conv_state_dict(merged))
with torch.no_grad():
    error = (plain(x) - adapted).abs().max().item()
print(f"merged into a plain resnet18 (native convs): max abs difference {error:.1e}")
assert error < 1e-4
