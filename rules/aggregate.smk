# Stage 4: SALMON's aggregation into reward-model training data (+ a JSONL copy and stats).


rule aggregate:
    input:
        responses=[ancient(f"{RESULTS}/responses/{run}.jsonl") for run in RUNS],
        judgments=f"{RESULTS}/judgments.jsonl",
        principles=config["judge"]["principles"],
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
        options=flags(config["aggregate"]),
    shell:
        "{params.salmon} aggregate --responses {input.responses:q} --judgments {input.judgments:q}"
        " --principles {input.principles:q} --output {output.json:q}"
        " --output-jsonl {output.jsonl:q} --stats {output.stats:q}"
        " {params.options} --workers {threads} > {log:q} 2>&1"
