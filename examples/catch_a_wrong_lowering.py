"""What a wrong lowering looks like: ``lowerconv verify`` names the first conv that is off.

    python examples/catch_a_wrong_lowering.py

Every ``F.unfold`` is made 0.1 % too large while ``lowerconv verify resnet18 --image-size 64
--no-timing`` runs (in this process, through ``lowerconv.cli.main``).  Only the lowered graph
calls ``F.unfold``, so the original model and its float64 oracle are untouched: each lowered
conv's own error (3e-3) is far above its bound (~1e-5), the report's first failure is ``conv1``,
stderr says why with the numbers, and the exit status is 1.
"""

from unittest import mock

import torch.nn.functional as F

from lowerconv.cli import main

real_unfold = F.unfold


def unfold_a_thousandth_too_large(*args, **kwargs):
    return real_unfold(*args, **kwargs) * 1.001


with mock.patch("torch.nn.functional.unfold", unfold_a_thousandth_too_large):
    status = main(["verify", "resnet18", "--image-size", "64", "--no-timing"])
print(f"exit status {status}")
assert status == 1, "verify should have failed"
