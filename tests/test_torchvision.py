"""Real models: torchvision classifiers lowered and compared with the originals (no downloads)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import lowerconv
from lowerconv import lowering_record

models = pytest.importorskip("torchvision.models")


def _zero_head_to_random(model: nn.Module) -> None:
    # torchvision starts ViT's classifier at zero, which would make every output 0 and any
    # comparison vacuous.
    nn.init.normal_(model.heads.head.weight, std=0.02)


@dataclass(frozen=True)
class ModelCase:
    name: str
    input_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    prepare: object = None


MODEL_CASES = [
    ModelCase("resnet18", (2, 3, 64, 64)),
    ModelCase("mobilenet_v3_small", (2, 3, 64, 64)),
    ModelCase("googlenet", (1, 3, 64, 64), {"aux_logits": False, "init_weights": False}),
    ModelCase("vit_b_16", (1, 3, 224, 224), prepare=_zero_head_to_random),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.name for c in MODEL_CASES])
def test_torchvision_model_lowered_matches_original(case: ModelCase):
    torch.manual_seed(0)
    model = getattr(models, case.name)(weights=None, **case.kwargs).eval()
    if case.prepare is not None:
        case.prepare(model)
    num_convs = len({id(m) for m in model.modules() if isinstance(m, nn.Conv2d)})
    assert num_convs > 0

    lowered = lowerconv.lower(model)

    record = lowering_record(lowered)
    assert record.path == "graph", record.trace_error
    assert record.num_lowered == num_convs
    assert not record.skipped
    assert not [n for n, m in lowered.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(lowered.state_dict()) == list(model.state_dict())

    x = torch.randn(case.input_shape)
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(x.double())
        native = model(x)
        got = lowered(x)
    assert got.shape == native.shape
    assert got.dtype == torch.float32
    scale = reference.abs().max().item()
    assert scale > 0 and reference.std().item() > 0, "a constant output would prove nothing"
    native_error = (native.double() - reference).abs().max().item()
    lowered_error = (got.double() - reference).abs().max().item()
    # float32 summation order differs between a conv kernel and a GEMM; both sit near the
    # float64 result, and the lowered model may not be much further from it than PyTorch is.
    bound = 10 * native_error + 1e-5 * scale
    assert lowered_error <= bound, (
        f"{case.name}: lowered max error {lowered_error:.3g}, native conv {native_error:.3g}, "
        f"output scale {scale:.3g}, bound {bound:.3g}"
    )
