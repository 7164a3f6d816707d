# Stage 4: SALMON's aggregation into reward-model training data (+ a JSONL copy and stats).
# It reads the pair stage's pairs (its texts) and summary (pairs dropped before judging, by reason).


rule aggregate:
    input:
        pairs=ancient(f"{RESULTS}/pairs.jsonl"),
        pairs_summary=ancient(f"{RESULTS}/pairs.summary.json"),
        judgments=f"{RESULTS}/judgments.jsonl",
        principles=config["judge"]["principles"],
        langid_model=config["aggregate"].get("langid_model") or [],
    output:
        json=f"{RESULTS}/preferences.json",
        jsonl=f"{RESULTS}/preferences.jsonl",
        stats=f"{RESULTS}/preferences.stats.json",
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    threads: 2
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
        options=command_flags("aggregate", config["aggregate"]),
    shell:
        "{params.salmon} aggregate --pairs {input.pairs:q} --pairs-summary {input.pairs_summary:q}"
        " --judgments {input.judgments:q}"
        " --principles {input.principles:q} --output {output.json:q}"
        " --output-jsonl {output.jsonl:q} --stats {output.stats:q}"
        " {params.options} --workers {threads} > {log:q} 2>&1"
