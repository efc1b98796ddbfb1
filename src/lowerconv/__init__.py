"""lowerconv: rewrite every convolution into Unfold + matmul + reshape, and prove it.

The pass, in the order data flows through it:

- :mod:`lowerconv.trace`        model -> ``torch.fx`` graph (plain ``Conv2d`` kept as leaves)
- :mod:`lowerconv.sites`        graph -> the convolutions in it (:class:`ConvSite`)
- :mod:`lowerconv.spec`         each conv's configuration and shape arithmetic (:class:`ConvSpec`)
- :mod:`lowerconv.strategies`   the eager im2col arithmetic that replaces a conv
- :mod:`lowerconv.emit`         splicing that arithmetic into the graph, with provenance
- :mod:`lowerconv.lower`        :func:`lower`, the whole pass; :mod:`lowerconv.record` what it did
- :mod:`lowerconv.export`       the export tier, ``lower(ExportedProgram)``, ONNX and ``.pt2`` files

Then the proof and the tools around it:

- :mod:`lowerconv.verify`       :func:`verify`: the verdict, and the end-to-end output checks
- :mod:`lowerconv.devices`      devices; the native, oracle and lowered copies on each; forwards
- :mod:`lowerconv.determinism`  pinned precision flags, seeds, dropout masks matched across copies
- :mod:`lowerconv.layer_checks` each lowered conv against the original's, on the same input
- :mod:`lowerconv.timing`       A/B interleaved timing and CUDA peak memory
- :mod:`lowerconv.report`       :class:`VerificationReport`: tables, Markdown, versioned JSON
- :mod:`lowerconv.testing`      ``assert_lowering_close`` for users' test suites
- :mod:`lowerconv.cli`          the ``lowerconv`` command (``verify``, ``graph``, ``export``, ``zoo``)
- :mod:`lowerconv.errors`       :class:`LoweringError` and :class:`VerificationError`
"""

from . import testing
from .errors import LoweringError, VerificationError
from .lower import STRATEGY_NAMES, lower
from .record import LoweredConv, LoweringRecord, SkippedConv, lowering_record
from .report import VerificationReport
from .spec import KINDS, ConvSpec
from .verify import verify

__version__ = "0.1.0"

__all__ = [
    "KINDS",
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
