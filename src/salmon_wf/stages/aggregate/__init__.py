"""Stage 4, SALMON's aggregation of judgments into reward-model preference data, by job.

The command (`salmon-wf aggregate`; its docstring is the stage's full description) is cli.py;
the rest is one module per job, in the order the data flows:

- tables.py: reading pairs.jsonl, pairs.summary.json and the judgments (judgments.jsonl or
  the gather's judgments.scores.arrow, data/scores_file.py), joined by id
- languages.py: the languages of every pair's instruction and outputs, by name
- language_file.py: pairs.languages.jsonl, those languages as a file (`salmon-wf languages`,
  stages/languages.py, writes it; with --languages the aggregation reads it)
- maths.py: SALMON's maths, pure numpy: normalise, draw, decide
- render.py: each written example's JSON line, assembled by Arrow from encoded pieces
- texts.py: the renderer's literals as Arrow arrays (JSON strings, Python float reprs)
- write.py: preferences.json and its JSONL copy, streamed by a writer thread per file
- stats.py: each pass's counts as values, and the stats report
- stage.py: prepare -> write the passes -> report
- settings.py: the parameters (SALMON's values are the defaults) and the used dimensions
"""

from salmon_wf.stages.aggregate.settings import DEFAULT_EXCLUDED, Settings

__all__ = ["DEFAULT_EXCLUDED", "Settings"]
