"""Every convolution kind lowered to GEMMs: a speech front-end, a video stem and a decoder.

python examples/every_kind.py

``lowerconv.lower`` lowers ``Conv1d``, ``Conv2d``, ``Conv3d`` and the transposed convolutions
alike, so the returned model runs no convolution op at all: a 1-D conv runs as a 2-D im2col of
height 1, a 3-D conv as an N-d im2col, a transposed conv as a matmul followed by col2im
(``F.fold``).  The record says each conv's kind; ``lowerconv.verify`` checks each layer against
float64 and audits the ATen ops.  ``kinds={"conv2d"}`` lowers ``Conv2d`` only, and the record
lists the rest as left alone.
"""

import torch
from torch import nn

import lowerconv


class AudioVisualDecoder(nn.Module):
    """Audio frames (Conv1d) and a short clip (Conv3d) fused, then upsampled (ConvTranspose2d)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Conv1d(1, 16, 10, stride=5), nn.GELU())
        self.video = nn.Sequential(nn.Conv3d(3, 16, (3, 3, 3), padding=1), nn.ReLU())
        self.fuse = nn.Conv2d(32, 16, 1)
        self.up = nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1)

    def forward(self, audio: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        sound = self.audio(audio).mean(-1)  # (N, 16)
        frames = self.video(clip).mean(2)  # (N, 16, H, W)
        sound = sound[..., None, None].expand_as(frames)
        return torch.tanh(self.up(torch.relu(self.fuse(torch.cat([frames, sound], 1)))))


def main() -> None:
    torch.manual_seed(0)
    model = AudioVisualDecoder().eval()
    inputs = (torch.randn(2, 1, 400), torch.randn(2, 3, 4, 16, 16))

    lowered = lowerconv.lower(model, strategy="auto")
    record = lowerconv.lowering_record(lowered)
    for conv in record.lowered:
        print(f"{conv.name:8s} {conv.kind:17s} {conv.spec.describe():28s} {conv.strategy}")
    print(f"{record.num_lowered} convs lowered, {len(record.skipped)} left alone")

    with torch.no_grad():
        err = (lowered(*inputs) - model(*inputs)).abs().max().item()
    print(f"max |lowered - original| = {err:.1e}")

    report = lowerconv.verify(model, inputs, strategy="auto", timing=False)
    print(str(report).splitlines()[0])
    assert report.ok and report.runs[0].conv_ops == [], report.failure_message()

    only_2d = lowerconv.lowering_record(lowerconv.lower(model, kinds={"conv2d"}))
    print(f'kinds={{"conv2d"}}: lowered {only_2d.num_lowered}, left alone:')
    for skipped in only_2d.skipped:
        print(f"  {skipped.name}: {skipped.reason}")


if __name__ == "__main__":
    main()
