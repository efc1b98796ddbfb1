"""Shared test settings: one intra-op thread, and a hypothesis profile sized for a 2-core CI box."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# The tests run thousands of tiny convolutions. On a small, shared machine, OpenMP's worker
# threads spin and wait on each other for every one of them, which made a 2x4x8x9 conv take
# ~35 ms with two threads against ~0.3 ms with one. LOWERCONV_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("LOWERCONV_TEST_THREADS", "1")))

# Sweeps build and trace a model per example, so hypothesis' 100-example default and its
# per-example deadline (which a shared machine's noise would trip) are both turned down here;
# HYPOTHESIS_PROFILE=thorough runs the same properties harder, by hand.
settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(params=["blas", "onednn"])
def gemm_engine(request, monkeypatch):
    """Run a test under each CPU GEMM engine the kernels choose between (``torch.matmul``, and
    oneDNN's matmul where this torch has it), whichever this machine picks by default."""
    from lowerconv.lowering import engine

    if request.param == "onednn" and not engine.onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear op")
    monkeypatch.setattr(engine, "ONEDNN", request.param == "onednn")
    return request.param


@pytest.fixture
def onednn_gemm(monkeypatch):
    """oneDNN's GEMM engine, for the tests of the code only it runs."""
    from lowerconv.lowering import engine

    if not engine.onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear op")
    monkeypatch.setattr(engine, "ONEDNN", True)
