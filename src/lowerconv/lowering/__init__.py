"""The pass: a model in, the same model with every convolution computed as im2col + GEMM out.

In the order data flows through it:

- :mod:`.preflight`      step 0: refuse TorchScript, initialise lazy modules (on a copy)
- :mod:`.trace`          step 1: model -> ``torch.fx`` graph, plain conv modules kept as leaves
- :mod:`.sites`          step 2: graph -> the convolutions in it (:class:`ConvSite`), and those
  left alone (:class:`SkippedConv`)
- :mod:`.conv_calls`     every function a forward can convolve with (``F.conv*``,
  ``torch.convolution``, the ATen ops), and how to read a call's arguments
- :mod:`.spec`           each conv's configuration and shape arithmetic (:class:`ConvSpec`), no FX
- :mod:`.strategies`     step 3: the eager im2col arithmetic that replaces a conv, one function a
  strategy, and ``auto``'s rule (:func:`choose_strategy`)
- :mod:`.linear`         step 3, ``gemm="linear"``: the GEMM as an ``nn.Linear`` at the conv's
  name (one per group), its gathers, and the conv-shaped ``state_dict`` both ways
- :mod:`.cuda_plan`      step 3 on a GPU: ``auto``'s CUDA plan, a few batch-wide ops per conv
  (one gather, one batched GEMM; banded depthwise), which :mod:`.strategies` calls per call
- :mod:`.kernels`        the run-time kernels the fast strategies call as single graph nodes
- :mod:`.autograd`       their backward, as GEMMs and col2im (:class:`GemmConv2d`)
- :mod:`.plain_kernels`  the kernels' arithmetic, which the forward and the backward both run
- :mod:`.engine`         the GEMM itself (:func:`gemm`): oneDNN or BLAS, and who is calling
- :mod:`.tiling`         chunk plans, input windows and stride phases: how the work is cut up
- :mod:`.nd`             1-D, 3-D and transposed convolutions through the same strategies
- :mod:`.quantized`      ``torch.ao`` quantised convs as integer GEMMs: int8 im2col padded with the
  input's zero point, ``torch._int_mm`` in int32, requantisation (:func:`lower_quantized_convs`)
- :mod:`.pt2e`           PT2E graphs' convs between dequantize and quantize nodes, as the same
  integer GEMM (:func:`lower_pt2e_convs`, run first by :func:`lower_graph`)
- :mod:`.emit`           step 4: a strategy's nodes spliced into the graph, with provenance
- :mod:`.rewrite`        steps 2-4 over one graph, every conv lowered in place (:func:`lower_graph`)
- :mod:`.lower`          :func:`lower`, the whole pass: the graph path, the export tier, the
  fallback path, and the module tree rebuilt around the lowered graph
- :mod:`.inputs`         a model's example inputs, checked once for all of them
- :mod:`.record`         what the pass did, as data (:class:`LoweringRecord`)

Beside the spine:

- :mod:`.runtime`        run-time lowering (a ``TorchFunctionMode``) for what no graph reaches
- :mod:`.functional`     ``F.conv*``-compatible eager functions, by any strategy
- :mod:`.export`         the export tier, ``lower(ExportedProgram)``, ONNX and ``.pt2`` files
- :mod:`.subgraph`       a lowered graph read back: one conv's nodes as their own module
- :mod:`.inspect`        what ``lowerconv graph`` shows: each lowered conv's shapes and GEMM

Layered so that no module imports one that imports it: :mod:`.strategies` calls
:mod:`.kernels`, which call :mod:`.autograd` (for a gradient) and :mod:`.plain_kernels`; those two
share :mod:`.engine` and :mod:`.tiling` and nothing above; :mod:`.lower` and :mod:`.export` share
:mod:`.rewrite` and :mod:`.inputs`.
"""
