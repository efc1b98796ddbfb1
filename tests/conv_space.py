"""The whole Conv2d configuration space, as a hypothesis strategy shared by the test files."""

import torch
from hypothesis import strategies as st
from torch import nn


@st.composite
def conv_configs(draw):
    """``(Conv2d kwargs, input shape, input layout)`` over every configuration PyTorch accepts:
    groups, int and tuple sizes, 'same'/'valid'/explicit padding, all padding modes, bias,
    batch 0-3 or unbatched, and contiguous, transposed, sliced or channels_last inputs."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if draw(st.booleans()):
        stride = (1, 1)  # 'same' needs stride 1
        padding = draw(st.sampled_from(["same", "valid", 0, 1, 2, (0, 1), (2, 1)]))
    else:
        stride = draw(st.sampled_from([1, 2, 3, (1, 2), (3, 1)]))
        padding = draw(st.sampled_from(["valid", 0, 1, 2, (0, 2), (2, 1)]))
    kwargs = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=draw(st.sampled_from([(kh, kw), kh])),
        stride=stride,
        padding=padding,
        dilation=draw(st.sampled_from([(dh, dw), dh])),
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
    )
    # Large enough for the kernel's span and for reflect padding (pad < size) on every side.
    conv = nn.Conv2d(**kwargs)
    h = conv.dilation[0] * (conv.kernel_size[0] - 1) + 3 + draw(st.integers(0, 4))
    w = conv.dilation[1] * (conv.kernel_size[1] - 1) + 3 + draw(st.integers(0, 4))
    batch = draw(st.sampled_from([None, 0, 1, 2, 3]))
    shape = (in_channels, h, w) if batch is None else (batch, in_channels, h, w)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "channels_last"]))
    if batch is None and layout == "channels_last":
        layout = "contiguous"  # channels_last is a 4-D layout
    return kwargs, shape, layout


def make_input(shape: tuple[int, ...], layout: str = "contiguous") -> torch.Tensor:
    """A float64 input of ``shape`` stored as ``layout`` (one of :func:`conv_configs`'), a leaf
    requiring grad."""
    if layout == "contiguous":
        x = torch.randn(shape, dtype=torch.float64)
    elif layout == "transposed":
        x = torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=torch.float64).transpose(-1, -2)
    elif layout == "sliced":
        *lead, c, h, w = shape
        x = torch.randn(*lead, 2 * c, h, 2 * w + 1, dtype=torch.float64)[..., ::2, :, 1::2]
    elif layout == "channels_last":
        x = torch.randn(shape, dtype=torch.float64).to(memory_format=torch.channels_last)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    assert x.shape == shape
    if layout != "contiguous" and x.numel() and min(shape[-3:]) > 1:
        # Empty tensors and size-1 dimensions make any layout count as contiguous.
        assert not x.is_contiguous(), layout
    return x.detach().requires_grad_()
