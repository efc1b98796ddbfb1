"""A lowered model trains under DistributedDataParallel exactly as the original does.

Two CPU processes (gloo) each wrap the original model and its lowering in DDP, feed them the same
per-rank batches and take the same SGD steps; DDP all-reduces the gradients of both.  The lowered
model's parameters are the original's (``lower()`` keeps them and their ``state_dict`` keys), so
after every step its gradients and parameters must equal the original's, in float64.
"""

from __future__ import annotations

import contextlib
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import lowerconv

STEPS = 3
WORLD_SIZE = 2
RTOL, ATOL = 1e-10, 1e-12


def small_cnn() -> nn.Module:
    """A 3-channel stem, a 3x3, a strided depthwise with a multiplier, a 1x1 and a grouped conv."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8),
        nn.Conv2d(16, 12, 1),
        nn.Conv2d(12, 12, 3, padding=1, groups=3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    ).double()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, port: int, strategy: str, failures) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
        )
        original = small_cnn().train()
        lowered = lowerconv.lower(original, strategy=strategy)
        assert lowerconv.lowering_record(lowered).lowered, "nothing was lowered"
        models = {"original": DistributedDataParallel(original)}
        models["lowered"] = DistributedDataParallel(lowered)
        optimizers = {
            k: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for k, m in models.items()
        }
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        for step in range(STEPS):
            x = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=generator)
            target = torch.randint(0, 5, (4,), generator=generator)
            for name, model in models.items():
                optimizers[name].zero_grad()
                loss_fn(model(x), target).backward()
            for (name, a), b in zip(
                models["original"].module.named_parameters(),
                models["lowered"].module.parameters(),
                strict=True,
            ):
                torch.testing.assert_close(
                    b.grad,
                    a.grad,
                    rtol=RTOL,
                    atol=ATOL,
                    msg=lambda m, n=name, s=step: f"step {s} grad {n}: {m}",
                )
            for optimizer in optimizers.values():
                optimizer.step()
            for (name, a), b in zip(
                models["original"].module.state_dict().items(),
                models["lowered"].module.state_dict().values(),
                strict=True,
            ):
                torch.testing.assert_close(
                    b, a, rtol=RTOL, atol=ATOL, msg=lambda m, n=name, s=step: f"step {s} {n}: {m}"
                )
        # DDP kept the ranks in step: rank 1 holds what rank 0 holds.
        flat = torch.cat([p.detach().flatten() for p in models["lowered"].module.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, flat)
        torch.testing.assert_close(gathered[1], gathered[0], rtol=0, atol=0)
    except BaseException as error:  # reported to the parent, which fails the test with it
        failures.put(f"rank {rank}: {type(error).__name__}: {error}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_gloo_available(), reason="this torch build has no gloo backend")
@pytest.mark.parametrize("strategy", ["auto", "unfold"])
def test_lowered_model_trains_under_ddp_like_the_original(strategy: str) -> None:
    context = mp.get_context("spawn")
    failures = context.SimpleQueue()
    port = _free_port()
    # A child's own message, put on the queue, says more than the exception spawn re-raises.
    with contextlib.suppress(mp.ProcessRaisedException):
        mp.start_processes(
            _train,
            args=(port, strategy, failures),
            nprocs=WORLD_SIZE,
            join=True,
            start_method="spawn",
        )
    messages = []
    while not failures.empty():
        messages.append(failures.get())
    assert not messages, "\n".join(messages)
