"""Helpers for users' own test suites, in the spirit of ``torch.testing``.

::

    import lowerconv.testing

    def test_my_model_lowers():
        model = MyNet().eval()
        lowerconv.testing.assert_lowering_close(model, (torch.randn(2, 3, 64, 64),))
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import VerificationError
from .verification.report import VerificationReport
from .verification.verify import verify

__all__ = ["VerificationError", "assert_lowering_close"]


def assert_lowering_close(
    model: nn.Module,
    example_inputs: Any,
    *,
    allow_inconclusive: bool = False,
    **verify_kwargs: Any,
) -> VerificationReport:
    """Assert that lowering ``model`` keeps its numerics; return the report when it does.

    Runs :func:`lowerconv.verify` with ``verify_kwargs`` (``lowered=``, ``dtype=``,
    ``device=``, ``rtol=``, ``calibrate_bn=``...; timing is off unless ``timing=True`` is
    passed, as tests should not pay for it) and raises
    :class:`~lowerconv.errors.VerificationError`, an ``AssertionError``, naming the first
    failing layer and its numbers, or the degenerate values of an ``INCONCLUSIVE`` verdict
    unless ``allow_inconclusive=True``.
    """
    verify_kwargs.setdefault("timing", False)
    report = verify(model, example_inputs, **verify_kwargs)
    return report.raise_if_failed(allow_inconclusive=allow_inconclusive)
