"""The proof: run the original and the lowered model side by side and say whether they agree.

:func:`~.verify.verify` takes a model, its example inputs and (optionally) its lowering, and
returns a :class:`~.report.VerificationReport`.  In the order data flows through it:

- :mod:`.prepare`       before the copies: lazy modules initialised, batch norms calibrated
- :mod:`.devices`       before step 1: the devices to run on, and on each the three copies (the
  *native* model, its float64 *oracle*, the *lowered* model) and their inputs
- :mod:`.determinism`   around every step: pinned precision flags, seeds, dropout masks matched
  across the three copies, so that they differ by the lowering alone
- :mod:`.verify`        step 1 and the verdict: every output end to end against the oracle's
- :mod:`.integer`       step 1 and 2 for a quantised model: outputs and each integer conv compared
  in quantisation steps with the quantised model the engine runs (:func:`verify_integer`)
- :mod:`.metrics`       the comparison math each check uses (:func:`compare`, :func:`judge`)
- :mod:`.inconclusive`  the verdict's third answer: degenerate values that prove nothing
- :mod:`.audit`         during step 1: the convolution ops the lowered model really dispatches
- :mod:`.gradients`     with ``gradients=True``, after step 1 and within step 2: the backward of
  each copy from one seeded cotangent, input and parameter gradients, each conv's dX, dW, db
- :mod:`.layer_checks`  step 2: each lowered conv on its own, on the input the original gives it
- :mod:`.timing`        step 3: A/B interleaved timing and CUDA peak memory
- :mod:`.report`        the result as data: tables, Markdown, versioned JSON
- :mod:`.junit`         after the report: the same verdicts as JUnit XML, for CI dashboards

It reads the pass's output (:mod:`lowerconv.lowering`: the record, the provenance in
``node.meta``) and never changes it.
"""
