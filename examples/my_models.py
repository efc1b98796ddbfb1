"""A model of your own for the command line: ``lowerconv verify examples/my_models.py:make_net``.

MODEL can be ``path/to/file.py:factory``: lowerconv loads the file, calls ``factory()`` and
lowers what it returns (docs/cli.md).  This net has the convs a torchvision model rarely has:
``'same'`` padding with reflection, a strided depthwise conv, a 1x1, and one input channel.

    lowerconv graph examples/my_models.py:make_net --image-size 28 --batch-size 8
    python examples/my_models.py
"""

import torch
from torch import nn


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding="same", padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, groups=16),
        nn.Conv2d(16, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


if __name__ == "__main__":
    import lowerconv

    torch.manual_seed(0)
    net = make_net().eval()
    lowered = lowerconv.lower(net)
    print(lowerconv.lowering_record(lowered))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        print(f"max |lowered - original| = {(lowered(x) - net(x)).abs().max().item():.2e}")
