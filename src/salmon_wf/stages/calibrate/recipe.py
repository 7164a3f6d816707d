"""What the calibration's judgments depend on, as one fingerprint (its stamp rule's params).

The same parts as the judge's own fingerprint (judge settings, principle and template contents,
the model) with the calibration pairs' source and selection in place of the sampled pairs, so a
sampling parameter cannot reach it: `snakemake calibrate` reruns nothing after one changes.
"""

from __future__ import annotations

import functools
from typing import Any

from salmon_wf.workflow import Recipes, digest, file_stamp, semantic


def calibration_input(config: dict[str, Any]) -> str:
    """The OASST1 input the pairs come from: calibrate.input, else prompts.input."""
    return config["calibrate"].get("input") or config["prompts"]["input"]


@functools.cache  # once per workflow run, and only when a calibration job is planned
def calibration_recipe(recipes: Recipes) -> str:
    config = recipes.config
    judge = semantic(config["judge"])
    judge.pop("min_chars")  # the pair stage's filter, not the judge's
    judge.pop("min_chars_of")
    stamps = {k: file_stamp(judge[k]) for k in ("principles", "template")}
    source = dict(config["prompts"])  # the trees are the kept prompts'
    source.pop("input")
    source["stamp"] = file_stamp(calibration_input(config))
    selection = semantic(config["calibrate"])
    selection.pop("input", None)  # its content is the stamp
    return digest(
        {"judge": judge, "stamps": stamps, "model": recipes.model(), "pairs": selection}
        | {"source": source}
    )
