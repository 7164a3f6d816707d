# salmon-wf: SALMON step 1 (principle-driven synthetic preference collection) as a workflow.
# clean prompts -> sample x2 (sharded) -> judge (sharded) -> aggregate. See README.md.


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/prompts.smk"
include: "rules/sample.smk"
include: "rules/judge.smk"
include: "rules/aggregate.smk"
include: "rules/ledger.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/preferences.json",
        f"{RESULTS}/preferences.jsonl",
        f"{RESULTS}/preferences.stats.json",
        f"{RESULTS}/ledger.json",
