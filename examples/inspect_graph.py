"""Inspect a lowered graph: each conv's shapes, the GEMM it became, and its im2col buffer.

python examples/inspect_graph.py

This is the data behind ``lowerconv graph MODEL``.  mobilenet_v3_small mixes the three kinds of
conv that cost differently once lowered: a strided 3x3 stem, depthwise 3x3s (groups = channels:
K is only 9, a poor GEMM) and pointwise 1x1s (K = in channels, no patch gathering at all).
"""

import torch
import torchvision

import lowerconv
from lowerconv.lowering.inspect import inspect_lowered

torch.manual_seed(0)
model = torchvision.models.mobilenet_v3_small(weights=None).eval()
lowered = lowerconv.lower(model)

inspection = inspect_lowered(lowered, (torch.randn(1, 3, 96, 96),), model="mobilenet_v3_small")
print(inspection.table())

# The rows are data: the stem's GEMM, by hand.  3x3, stride 2, padding 1 on 96x96 gives
# (96 + 2 - 3) // 2 + 1 = 48, so M = 16 filters, K = 3 channels * 3 * 3 = 27, N = 48 * 48.
stem = inspection.rows[0]
assert stem.input_shape == (1, 3, 96, 96) and stem.output_shape == (1, 16, 48, 48)
assert stem.gemm_shape == (16, 27, 48 * 48)
assert stem.flops == 2 * 16 * 27 * 48 * 48

# Depthwise convs are the GEMMs with the smallest K: one channel's 3x3 (or 5x5) patch.
depthwise = [row for row in inspection.rows if row.spec.is_depthwise]
print(f"\n{len(depthwise)} depthwise convs, K = {sorted({r.gemm_shape[1] for r in depthwise})}")
