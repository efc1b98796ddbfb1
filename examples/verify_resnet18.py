"""Lower torchvision's resnet18 and prove the lowering held, layer by layer, against float64.

python examples/verify_resnet18.py                       # quick: 64x64 inputs
python examples/verify_resnet18.py --image-size 224 --device all --json report.json

Prints the per-layer table and the summary, writes the JSON/Markdown reports if asked, and
exits non-zero if the lowered model does not match (``raise_if_failed``), as a CI gate would.
"""

import argparse
from pathlib import Path

import torch
import torchvision

import lowerconv
from lowerconv.verification.verify import verify

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--image-size", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=1)
parser.add_argument("--device", default="cpu", help="cpu, cuda or all")
parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
parser.add_argument("--strategy", default="unfold", choices=lowerconv.STRATEGY_NAMES)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--json", type=Path, help="write the report as JSON here")
parser.add_argument("--markdown", type=Path, help="write the report as Markdown here")
args = parser.parse_args()

torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()
x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)

report = verify(
    model,
    (x,),
    strategy=args.strategy,
    device=args.device,
    dtype=getattr(torch, args.dtype),
    repeats=args.repeats,
)
print(report)
if args.json:
    args.json.write_text(report.to_json() + "\n")
if args.markdown:
    args.markdown.write_text(report.to_markdown())

# The verdict, and where to look when it fails: the first conv whose own error is out of bounds.
print(f"\nok={report.ok} first_failure={report.first_failure}")
report.raise_if_failed()
