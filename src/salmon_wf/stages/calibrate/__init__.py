"""Calibration of the judge against OASST1's human rankings of sibling replies (issue 19).

`salmon-wf calibrate pairs` (pairs.py) writes ranked sibling pairs in the pair stage's format;
the judge stage judges them unchanged (same template, principles, model, prefix sharing and
shards) and `gather` gathers them; `salmon-wf calibrate summary` (summary.py) scores the
judgments against the ranks into calibration.json; `salmon-wf calibrate figures` draws it
(report/calibration.py). recipe.py is the stamp rule's fingerprint. docs/calibration.md tells
how to read the result.
"""
