"""A quantised model's convs as integer GEMMs, proven in quantisation steps.

torchvision's quantisable resnet18, quantised for this machine's engine (random weights, batch
norms and observers calibrated on random data), is lowered: every ``quantized::conv2d`` becomes
an int8 im2col padded with the input's zero point, ``torch._int_mm`` accumulating in int32, and
a requantisation.  The verifier runs the quantised model and the lowered one and counts, per
conv and at the output, how many values are exact.
"""

import torch

import lowerconv
from lowerconv.models.quantized import build_int8_model

x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
model = build_int8_model("resnet18", image_size=32, calibration_inputs=(x,))
lowered = lowerconv.lower(model)

record = lowerconv.lowering_record(lowered)
print(record.summary())
print(record.lowered[0].note)

# The first conv's integer form, as the lowered graph runs it.
code = lowered.code
start = code.index("conv1_int8_codes")
print("\n".join(line.strip() for line in code[start:].splitlines()[:12]))

report = lowerconv.verify(model, x)
print(report.summary())
report.raise_if_failed()
