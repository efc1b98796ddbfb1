"""lowerconv: rewrite every convolution into Unfold + matmul + reshape, and prove it.

The pass, :mod:`lowerconv.lowering`, in the order data flows through it:

- :mod:`~.lowering.trace`       model -> ``torch.fx`` graph (plain ``Conv2d`` kept as leaves)
- :mod:`~.lowering.sites`       graph -> the convolutions in it (:class:`ConvSite`)
- :mod:`~.lowering.spec`        each conv's configuration and shape arithmetic (:class:`ConvSpec`)
- :mod:`~.lowering.strategies`  the eager im2col arithmetic that replaces a conv
- :mod:`~.lowering.linear`      ``gemm="linear"``: each conv's GEMM an ``nn.Linear``
- :mod:`~.lowering.emit`        splicing that arithmetic into the graph, with provenance
- :mod:`~.lowering.lower`       :func:`lower`, the whole pass; :mod:`~.lowering.record` what it did
- :mod:`~.lowering.export`      the export tier, ``lower(ExportedProgram)``, ONNX, ``.pt2`` files

Then the proof, :mod:`lowerconv.verification`, and the tools around it:

- :mod:`~.verification.verify`       :func:`verify`: the verdict, and the end-to-end checks
- :mod:`~.verification.devices`      the native, oracle and lowered copies on each device
- :mod:`~.verification.determinism`  pinned precision flags, seeds, matched dropout masks
- :mod:`~.verification.layer_checks` each lowered conv against the original's, on the same input
- :mod:`~.verification.timing`       A/B interleaved timing and CUDA peak memory
- :mod:`~.verification.report`       :class:`VerificationReport`: tables, Markdown, versioned JSON
- :mod:`lowerconv.models`            the model sources: MODEL names and files, the zoo run
- :mod:`lowerconv.testing`           ``assert_lowering_close`` for users' test suites
- :mod:`lowerconv.cli`               the ``lowerconv`` command (``verify``, ``graph``, ``zoo``...)
- :mod:`lowerconv.errors`            :class:`LoweringError` and :class:`VerificationError`

The 0.1 module paths (``lowerconv.strategies``...) still import: see :mod:`lowerconv._aliases`.
``docs/architecture.md`` draws the whole map.
"""

from . import testing
from ._aliases import install as _install_aliases
from ._aliases import package_getattr as _package_getattr
from ._version import __version__
from .errors import LoweringError, VerificationError
from .lowering.linear import GEMMS, conv_state_dict, linear_module_names
from .lowering.lower import lower
from .lowering.record import LoweredConv, LoweringRecord, SkippedConv, lowering_record
from .lowering.spec import KINDS, ConvSpec
from .lowering.strategies import STRATEGY_NAMES
from .verification.report import VerificationReport
from .verification.verify import verify

# lowerconv.strategies and the other 0.1 module paths: the same modules as their new homes.
_install_aliases()
__getattr__ = _package_getattr

__all__ = [
    "GEMMS",
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
    "conv_state_dict",
    "linear_module_names",
    "lower",
    "lowering_record",
    "testing",
    "verify",
]
