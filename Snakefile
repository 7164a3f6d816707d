# salmon-wf: SALMON step 1 (principle-driven synthetic preference collection) as a workflow.
# clean prompts -> sample x2 (sharded) -> judge (sharded), languages and pairs_table -> aggregate.


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/prompts.smk"
include: "rules/sample.smk"
include: "rules/judge.smk"
include: "rules/aggregate.smk"
include: "rules/ledger.smk"
include: "rules/report.smk"
include: "rules/calibrate.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/preferences.json",
        f"{RESULTS}/preferences.jsonl",
        f"{RESULTS}/preferences.stats.json",
        f"{RESULTS}/ledger.json",
        f"{RESULTS}/report/examples.html",  # the report's figures, from rule report_figures
