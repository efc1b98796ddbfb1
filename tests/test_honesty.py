"""No silent paths: what lowerconv cannot lower honestly is refused with a LoweringError that says
what, where and how to fix it, and what it can lower is lowered everywhere it runs.

The reference is always PyTorch itself: the original module's output, and an op counter that
proves no convolution op ran in the lowered one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import lowerconv
from lowerconv import LoweringError, lowering_record

# -- TorchScript ----------------------------------------------------------------------------------


def _scripted() -> nn.Module:
    return torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3)))


def _traced() -> nn.Module:
    return torch.jit.trace(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))


TORCHSCRIPT_CASES = [
    ("script", _scripted, "torch.jit.script"),
    ("trace", _traced, "torch.jit.trace"),
]


@pytest.mark.parametrize(
    ("make", "maker"), [c[1:] for c in TORCHSCRIPT_CASES], ids=[c[0] for c in TORCHSCRIPT_CASES]
)
@pytest.mark.parametrize("entry", ["lower", "verify"])
def test_torchscript_is_refused_up_front(make, maker: str, entry: str):
    module = make()
    with pytest.raises(LoweringError) as caught:
        if entry == "lower":
            lowerconv.lower(module)
        else:
            lowerconv.verify(module, torch.randn(1, 3, 8, 8), timing=False)
    message = str(caught.value)
    assert message.startswith(f"{entry}() got a TorchScript module")
    assert maker in message
    assert "lower the Python nn.Module" in message and "torch.export" in message


# -- lazy modules ---------------------------------------------------------------------------------


def _lazy_model() -> nn.Module:
    return nn.Sequential(nn.LazyConv2d(4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.LazyConv2d(2, 1))


def test_lazy_modules_without_example_inputs_are_refused_by_name():
    model = _lazy_model()
    with pytest.raises(LoweringError, match="uninitialised lazy modules") as caught:
        lowerconv.lower(model)
    message = str(caught.value)
    assert "'0' (LazyConv2d), '3' (LazyConv2d)" in message
    assert "call the model once" in message and "example_inputs=" in message
    assert is_lazy(model[0].weight), "the user's model was changed"


def test_lazy_modules_are_initialised_on_the_copy_with_example_inputs():
    torch.manual_seed(0)
    model = _lazy_model().train()
    x = torch.randn(2, 3, 8, 8)
    rng = torch.random.get_rng_state()
    lowered = lowerconv.lower(model, example_inputs=x)
    assert torch.equal(torch.random.get_rng_state(), rng), "the caller's RNG moved"
    assert is_lazy(model[0].weight) and is_lazy(model[3].weight), "the user's model was changed"
    record = lowering_record(lowered)
    assert record.num_lowered == 2
    assert any("'0', '3' were initialised on the copy" in n for n in record.notes), record.notes
    assert any("still uninitialised" in n for n in record.notes)
    assert lowered.training and lowered.get_submodule("1").training, "train mode not restored"
    assert torch.equal(lowered.get_buffer("1.running_mean"), torch.zeros(4)), "BN stats moved"
    # The RNG did not move, so the original's first call draws the lowered model's weights.
    model.eval(), lowered.eval()
    want = model(x)
    for name, param in model.named_parameters():
        assert torch.equal(param, lowered.get_parameter(name)), name
    torch.testing.assert_close(lowered(x), want)


def test_lazy_modules_a_run_does_not_reach_are_named():
    class SkipsTheHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.head = nn.LazyConv2d(2, 1)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(LoweringError, match=r"'head' \(LazyConv2d\) are still uninitialised"):
        lowerconv.lower(SkipsTheHead(), example_inputs=torch.randn(1, 3, 8, 8))


def test_verify_initialises_a_lazy_model_once_for_every_copy():
    torch.manual_seed(0)
    model = _lazy_model().eval()
    report = lowerconv.verify(model, torch.randn(2, 3, 8, 8), timing=False)
    assert report.ok and not report.warnings, report
    assert any("lazy modules '0', '3' were initialised" in n for n in report.notes)
    assert is_lazy(model[0].weight), "the user's model was changed"
    with pytest.raises(LoweringError, match="lowered= was given"):
        lowerconv.verify(model, torch.randn(2, 3, 8, 8), lowered=nn.Identity(), timing=False)
