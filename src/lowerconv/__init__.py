"""lowerconv: rewrite every ``nn.Conv2d`` into Unfold + matmul + reshape, and prove it.

The pass, in the order data flows through it:

- :mod:`lowerconv.trace`      model -> ``torch.fx`` graph (plain ``Conv2d`` kept as leaves)
- :mod:`lowerconv.sites`      graph -> the convolutions in it (:class:`ConvSite`)
- :mod:`lowerconv.spec`       each conv's configuration and shape arithmetic (:class:`ConvSpec`)
- :mod:`lowerconv.strategies` the eager im2col arithmetic that replaces a conv
- :mod:`lowerconv.emit`       splicing that arithmetic into the graph, with provenance
- :mod:`lowerconv.lower`      :func:`lower`, the whole pass; :mod:`lowerconv.record` what it did

Then the proof and the tools around it:

- :mod:`lowerconv.verify`     :func:`verify`: per-layer, float64-anchored checks and timing
- :mod:`lowerconv.report`     :class:`VerificationReport`: tables, Markdown, versioned JSON
- :mod:`lowerconv.testing`    ``assert_lowering_close`` for users' test suites
- :mod:`lowerconv.cli`        the ``lowerconv`` command (``verify``, ``graph``, ``zoo``)
"""

from . import testing
from .errors import LoweringError
from .lower import STRATEGY_NAMES, lower
from .record import LoweredConv, LoweringRecord, SkippedConv, lowering_record
from .report import VerificationReport
from .spec import ConvSpec
from .verify import VerificationError, verify

__version__ = "0.1.0"

__all__ = [
    "STRATEGY_NAMES",
    "ConvSpec",
    "LoweredConv",
    "LoweringError",
    "LoweringRecord",
    "SkippedConv",
    "VerificationError",
    "VerificationReport",
    "__version__",
    "lower",
    "lowering_record",
    "testing",
    "verify",
]
