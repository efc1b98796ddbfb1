"""What `lowerconv graph --format code` prints: the forward, then every lowerconv function it
calls, so that each conv's arithmetic (a gather or view and a GEMM, or tap multiply-adds) can be
read in standard torch ops, under every strategy."""

from __future__ import annotations

import re

import pytest
import torch.nn.functional as F
from torch import nn

import lowerconv
from lowerconv import LoweringError
from lowerconv.lowering.inspect import lowered_code

GEMM = re.compile(
    r"torch\.(matmul|mm|bmm|addmm|baddbmm|einsum)\(|F\.linear\(|\.addmm_?\(|\.mul_?\("
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(self.body(F.relu(self.pw(self.dw(self.stem(x))))))


def function_blocks(code: str) -> dict[str, str]:
    """``name -> source`` of each helper the printout shows."""
    blocks = re.split(r"^# lowerconv\.\S+\.(\w+)\n", code, flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2], strict=True))


@pytest.mark.parametrize("strategy", lowerconv.STRATEGY_NAMES)
def test_every_called_helper_is_printed_and_the_gemms_are_in_it(strategy):
    lowered = lowerconv.lower(Net(), strategy=strategy)
    code = lowered_code(lowered)
    forward, _, _ = code.partition("# The lowerconv functions called above")
    helpers = function_blocks(code)
    called = set(re.findall(r"= (\w+)\(", forward)) - {"getattr", "ConvSpec"}
    leaves = set(lowerconv.lowering.strategies.graph_leaves())
    for name in called & leaves:
        assert name in helpers, f"{strategy}: {name} is called but its source is not printed"
    # Every conv's GEMM is in the forward or in a printed helper.
    assert GEMM.search(forward) or any(GEMM.search(body) for body in helpers.values()), strategy


def test_auto_prints_both_device_plans():
    code = lowered_code(lowerconv.lower(Net(), strategy="auto"))
    helpers = function_blocks(code)
    assert {"auto_conv", "planned", "cuda_conv", "_gemm", "_depthwise_banded"} <= set(helpers)
    assert "torch.baddbmm(" in helpers["planned"]  # the CUDA plan's GEMM
    assert "taps_conv2d" in helpers or "nhwc_conv2d" in helpers  # a CPU choice


def test_one_conv_alone():
    lowered = lowerconv.lower(Net(), strategy="unfold")
    code = lowered_code(lowered, conv="body", helpers=False)
    lines = code.strip().splitlines()
    assert lines[0] == "# body: unfold"
    assert all(line.startswith("body_") for line in lines[1:]), lines
    assert any("torch.matmul(" in line for line in lines)
    with pytest.raises(LoweringError, match=r"no lowered conv named 'bodyy'.*stem, dw"):
        lowered_code(lowered, conv="bodyy")
