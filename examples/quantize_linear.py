"""torchao int8 weight-only quantisation of a lowered resnet18's convs, and the drift it costs.

    pip install 'lowerconv[quant]'        # torchao
    python examples/quantize_linear.py

torchao's ``quantize_`` rewrites ``nn.Linear`` modules; a plain lowering has none, its GEMMs
multiply conv-shaped parameters.  ``lower(model, gemm="linear")`` puts an ``nn.Linear`` at
each conv's name, so ``quantize_`` finds every conv (here, only those: its ``filter_fn`` keeps
the classifier in float).  lowerconv's verifier then measures what the int8 weights cost,
against the float model and its float64 oracle, conv by conv: a FAIL here is the expected
verdict (int8 is not meant to pass a float32 tolerance), and the table says where the drift
is.  The op audit checks that no convolution op runs in the quantised model.
"""

import importlib.util
import sys

if importlib.util.find_spec("torchao") is None:
    sys.exit("this example needs torchao: pip install 'lowerconv[quant]'")

import torch
import torchvision
from tabulate import tabulate
from torchao.quantization import Int8WeightOnlyConfig, quantize_

import lowerconv
from lowerconv.verification.audit import ConvOpAudit
from lowerconv.verification.metrics import compare

torch.manual_seed(0)
model = torchvision.models.resnet18().eval()
x = torch.randn(1, 3, 64, 64)

lowered = lowerconv.lower(model, strategy="auto", gemm="linear")
convs = set(lowerconv.linear_module_names(lowered))
quantized = lowerconv.lower(model, strategy="auto", gemm="linear")
quantize_(quantized, Int8WeightOnlyConfig(), filter_fn=lambda module, name: name in convs)
int8 = [n for n, m in quantized.named_modules() if n in convs and "Int8" in type(m.weight).__name__]
print(
    f"quantised {len(int8)} of {len(convs)} conv GEMMs to int8 weights (the classifier stays float)"
)
assert len(int8) == len(convs) == 20

with torch.no_grad(), ConvOpAudit(quantized) as audit:
    out = quantized(x)
assert audit.runs() == [], audit.runs()
print("op audit: no convolution op ran in the quantised model")

with torch.no_grad():
    reference, float_lowered = model(x), lowered(x)
for label, got in (("float Linear form", float_lowered), ("int8 Linear form", out)):
    diff = compare(got, reference)
    print(
        f"{label:18} vs the float model: relative L2 {diff.rel_l2:.2e}, "
        f"max abs {diff.max_abs:.2e}, cosine {diff.cosine:.6f}"
    )

# Conv by conv: each quantised conv on the float model's own input to it, against float64.
report = lowerconv.verify(model, x, lowered=quantized, timing=False)
checked = [layer for layer in report.layers if layer.local_lowered is not None]
assert len(checked) == 20, [layer.reason for layer in report.layers]
rows = sorted(checked, key=lambda layer: -layer.local_lowered.rel_l2)[:5]
print(
    f"verifier: {report.verdict} (expected: int8 is not a float32 lowering); the 5 convs that drift most:"
)
print(
    tabulate(
        [
            [layer.name, f"{layer.local_native.rel_l2:.1e}", f"{layer.local_lowered.rel_l2:.1e}"]
            for layer in rows
        ],
        headers=["conv", "float32 conv error", "int8 Linear error"],
    )
)
