# The ledger: every message and prompt accounted for, stage by stage, from the stages' summaries.
# Every change upstream reruns the aggregation, so only its stats are not `ancient`: a
# regathered response file with the same bytes (a new shard count) does not rerun the ledger.


rule ledger:
    input:
        prompts=ancient(f"{RESULTS}/prompts.jsonl"),
        prompts_summary=ancient(f"{RESULTS}/prompts.summary.json"),
        responses=ancient([f"{RESULTS}/responses/{run}.jsonl" for run in RUNS]),
        pairs=ancient(f"{RESULTS}/pairs.jsonl"),
        pairs_summary=ancient(f"{RESULTS}/pairs.summary.json"),
        judgments=ancient(f"{RESULTS}/judgments.jsonl"),
        judgments_summary=ancient(f"{RESULTS}/judgments.summary.json"),
        principles=ancient(config["judge"]["principles"]),
        preferences=ancient(f"{RESULTS}/preferences.jsonl"),
        stats=f"{RESULTS}/preferences.stats.json",
    output:
        f"{RESULTS}/ledger.json",
    log:
        "logs/ledger.log",
    benchmark:
        "benchmarks/ledger.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
    shell:
        "{params.salmon} ledger --prompts {input.prompts:q}"
        " --prompts-summary {input.prompts_summary:q} --responses {input.responses:q}"
        " --pairs {input.pairs:q} --pairs-summary {input.pairs_summary:q}"
        " --judgments {input.judgments:q} --judgments-summary {input.judgments_summary:q}"
        " --principles {input.principles:q} --preferences {input.preferences:q}"
        " --stats {input.stats:q} --output {output:q} > {log:q} 2>&1"
