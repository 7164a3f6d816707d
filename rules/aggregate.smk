# Stage 4: SALMON's aggregation into reward-model training data (+ a JSONL copy and stats).
# It reads the pair stage's pairs (its texts; as Arrow columns, rule `pairs_table`) and summary
# (pairs dropped before judging, by reason), and the languages of the pairs' texts from rule
# `languages`.


# The language of every pair's instruction and outputs (fastText: ~35 core-seconds for 1M pairs).
# It needs only the pairs, so it runs while the judge jobs do, and its params are only the
# language-id settings: a change of another aggregation setting reruns aggregate, not this.
rule languages:
    input:
        pairs=f"{RESULTS}/pairs.jsonl",
        langid_model=config["aggregate"].get("langid_model") or [],
    output:
        f"{RESULTS}/pairs.languages.jsonl",
    log:
        "logs/languages.log",
    benchmark:
        "benchmarks/languages.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    threads: 2
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
        options=command_flags("languages", config["aggregate"]),
    shell:
        "{params.salmon} languages --pairs {input.pairs:q} --output {output:q}"
        " {params.options} --workers {threads} > {log:q} 2>&1"


# The pairs as Arrow columns (data/pairs_file.py): like `languages`, it needs only the pairs, so
# it runs while the judge jobs do, and every aggregation after it reads them without parsing.
rule pairs_table:
    input:
        f"{RESULTS}/pairs.jsonl",
    output:
        f"{RESULTS}/pairs.arrow",
    log:
        "logs/pairs_table.log",
    benchmark:
        "benchmarks/pairs_table.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    threads: 2  # Arrow's JSON reader uses them
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
    shell:
        "{params.salmon} pairs-table --pairs {input:q} --output {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        # rule pairs_table's Arrow copy of pairs.jsonl: the same pairs, read without parsing.
        pairs=ancient(f"{RESULTS}/pairs.arrow"),
        pairs_summary=ancient(f"{RESULTS}/pairs.summary.json"),
        # The gather's Arrow copy of the scores (data/scores_file.py): read without parsing.
        judgments=f"{RESULTS}/judgments.scores.arrow",
        principles=config["judge"]["principles"],
        languages=f"{RESULTS}/pairs.languages.jsonl",
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
        # The languages file's settings: not used with --languages, only recorded in the stats.
        langid=command_flags("languages", config["aggregate"]),
    shell:
        "{params.salmon} aggregate --pairs {input.pairs:q} --pairs-summary {input.pairs_summary:q}"
        " --judgments {input.judgments:q}"
        " --principles {input.principles:q} --output {output.json:q}"
        " --output-jsonl {output.jsonl:q} --stats {output.stats:q}"
        " --languages {input.languages:q} {params.options} {params.langid}"
        " --workers {threads} > {log:q} 2>&1"
