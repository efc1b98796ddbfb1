"""After the report: the same verdicts as JUnit XML, which CI dashboards read.

``lowerconv verify --junit-xml PATH`` writes one ``<testsuite>`` per device run, with one
``<testcase>`` per output and per lowered conv (with ``--gradients``, also one per input and
parameter gradient and one per gradient of each lowered conv, ``layer1.0.conv1 (dW)``; and one
per conv op that ran when it should not have); ``lowerconv zoo --junit-xml PATH`` writes one ``<testcase>`` per model.  A failing case
carries a ``<failure>`` whose ``message`` is the first line of the reason and whose text is all
of it; a zoo model that errored carries an ``<error>``, one skipped or left unchecked a
``<skipped>``.  Written with :mod:`xml.etree.ElementTree`, so the reasons are escaped::

    <testsuites name="lowerconv" tests="2" failures="1" errors="0" skipped="0">
      <testsuite name="lowerconv zoo" tests="2" failures="1" errors="0" skipped="0">
        <testcase classname="lowerconv.zoo.classification" name="resnet18" time="3.1" />
        <testcase classname="lowerconv.zoo.classification" name="vgg11" time="9.0">
          <failure message="first failure: features.0" type="failure">first failure: ...
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.zoo import ZooReport
    from .report import VerificationReport

__all__ = ["verification_junit", "zoo_junit"]


def zoo_junit(report: ZooReport) -> str:
    """One test case per model of a ``lowerconv zoo`` run, named ``<category>.<model>``."""
    root = ET.Element("testsuites", name="lowerconv")
    suite = ET.SubElement(root, "testsuite", name="lowerconv zoo")
    for row in report.rows:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"lowerconv.zoo.{row.category}",
            name=row.model,
            time=f"{row.seconds:.1f}",
        )
        reason = row.note or row.first_failure or ""
        if row.status in ("FAIL", "inconclusive"):
            detail = (
                f"first failure: {row.first_failure}\n{row.note}" if row.first_failure else reason
            )
            _outcome(case, "failure", detail.strip() or "FAIL")
        elif row.status == "error":
            _outcome(case, "error", reason or "error")
        elif row.status == "skipped":
            _outcome(case, "skipped", reason or "skipped")
    return _serialise(root)


def verification_junit(report: VerificationReport, *, model: str | None = None) -> str:
    """One suite per device run of ``lowerconv verify``: a case per output, per lowered conv, per
    gradient checked and per conv op that should have been lowered; ``model`` names the suites
    (default: the class)."""
    name = model or report.model
    root = ET.Element("testsuites", name="lowerconv")
    for run in report.runs:
        suite = ET.SubElement(root, "testsuite", name=f"lowerconv verify {name} [{run.device}]")
        classname = f"lowerconv.verify.{run.device}"
        for output in run.outputs:
            case = ET.SubElement(suite, "testcase", classname=classname, name=output.path)
            if not output.ok:
                _outcome(case, "failure", output.reason or "outside tolerance")
        for layer in run.layers:
            case = ET.SubElement(
                suite, "testcase", classname=f"{classname}.layers", name=layer.name
            )
            if layer.status == "fail":
                _outcome(case, "failure", f"{layer.config}: {layer.reason or 'outside tolerance'}")
            elif layer.status == "unchecked":
                _outcome(case, "skipped", layer.reason or "unchecked")
        for gradient in run.gradients:
            case = ET.SubElement(
                suite, "testcase", classname=f"{classname}.gradients", name=gradient.path
            )
            if not gradient.ok:
                _outcome(case, "failure", gradient.reason or "outside tolerance")
        for grad in run.layer_gradients:
            case = ET.SubElement(
                suite, "testcase", classname=f"{classname}.layer_gradients", name=grad.label
            )
            if grad.status == "fail":
                _outcome(case, "failure", grad.reason or "outside tolerance")
            elif grad.status == "unchecked":
                _outcome(case, "skipped", grad.reason or "unchecked")
        for op in run.failing_conv_ops:
            case = ET.SubElement(
                suite, "testcase", classname=f"{classname}.conv_ops", name=f"{op.op} in {op.where}"
            )
            _outcome(case, "failure", op.reason)
        if run.ok and run.inconclusive:  # nothing failed, and nothing was proven either
            case = ET.SubElement(suite, "testcase", classname=classname, name="conclusive")
            _outcome(case, "failure", "INCONCLUSIVE: " + "\n".join(run.inconclusive))
        if not run.outputs and not run.layers:  # a run that compared nothing is no pass
            case = ET.SubElement(suite, "testcase", classname=classname, name="outputs")
            _outcome(case, "failure", run.first_failure or "no output to compare")
    for device, reason in report.devices_skipped.items():
        suite = ET.SubElement(root, "testsuite", name=f"lowerconv verify {name} [{device}]")
        case = ET.SubElement(suite, "testcase", classname=f"lowerconv.verify.{device}", name="run")
        _outcome(case, "skipped", reason)
    return _serialise(root)


def _outcome(case: ET.Element, kind: str, text: str) -> None:
    lines = text.strip().splitlines() or [kind]
    element = ET.SubElement(case, kind, message=lines[0][:300])
    if kind != "skipped":
        element.set("type", kind)
        element.text = text


def _serialise(root: ET.Element) -> str:
    """Count each suite's cases and outcomes (what dashboards total), then write the XML."""
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in root.iter("testsuite"):
        cases = suite.findall("testcase")
        counts = {
            "tests": len(cases),
            "failures": sum(c.find("failure") is not None for c in cases),
            "errors": sum(c.find("error") is not None for c in cases),
            "skipped": sum(c.find("skipped") is not None for c in cases),
        }
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
