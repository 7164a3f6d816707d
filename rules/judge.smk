# Stage 3: every pair x principle x order scored by the policy model (pairs[i::n] per shard).


# Snakemake does not re-check the params of a job whose upstream reruns, and the responses are
# `ancient` (a run's new shard count must not re-pair or re-judge identical bytes). A stamp job
# has no upstream, so its params (everything the pairs or the judgments depend on) are always
# checked: when they change, it rewrites the stamp and the stage after it reruns.
rule fingerprint:
    output:
        f"{RESULTS}/fingerprints/{{stage}}.txt",
    log:
        "logs/fingerprint/{stage}.log",
    localrule: True
    conda:
        "../envs/salmon-wf.yaml"
    params:
        recipe=lambda w: RECIPES.of(w.stage),
    shell:
        "echo {params.recipe} > {output:q} 2> {log:q}"


# Pairing happens once, here: the judge shards all read this one small-input job's output
# (Snakemake's DAG building rescans a producer's input list for every consumer, so a thousand
# judge shards reading the thousand-shard gathers directly cost it a million comparisons).
rule pair_responses:
    input:
        fingerprint=f"{RESULTS}/fingerprints/pairs.txt",
        responses=[ancient(f"{RESULTS}/responses/{run}.jsonl") for run in RUNS],
    output:
        pairs=f"{RESULTS}/pairs.jsonl",
        summary=f"{RESULTS}/pairs.summary.json",
    log:
        "logs/pair_responses.log",
    benchmark:
        "benchmarks/pair_responses.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
        options=command_flags("pair", config["judge"]),
    shell:
        "{params.salmon} pair --responses {input.responses:q} {params.options}"
        " --output {output.pairs:q} --summary {output.summary:q} > {log:q} 2>&1"


rule judge_shard:
    input:
        fingerprint=f"{RESULTS}/fingerprints/judge.txt",
        pairs=f"{RESULTS}/pairs.jsonl",
        model=ancient(f"{model_dir()}/params.json"),
        principles=config["judge"]["principles"],
        template=config["judge"]["template"],
    output:
        judgments=f"{RESULTS}/judgments/shard-{{i}}-of-{{n}}.jsonl",
        summary=f"{RESULTS}/judgments/shard-{{i}}-of-{{n}}.summary.json",
    log:
        "logs/judge/shard-{i}-of-{n}.log",
    benchmark:
        "benchmarks/judge/shard-{i}-of-{n}.tsv"
    conda:
        "../envs/salmon-wf.yaml"
    threads: config["model"]["threads"]
    resources:
        **JUDGE_RESOURCES,
    params:
        command=judge_command,
    shell:
        "{params.command} --pairs {input.pairs:q} --principles {input.principles:q}"
        " --template {input.template:q} --output {output.judgments:q}"
        " --summary {output.summary:q} > {log:q} 2>&1"


rule gather_judgments:
    input:
        prompts=f"{RESULTS}/prompts.jsonl",
        principles=config["judge"]["principles"],
        shards=shard_paths(
            f"{RESULTS}/judgments/shard-{{i}}-of-{{n}}.jsonl",
            config["judge"]["shards"],
        ),
        summaries=shard_paths(
            f"{RESULTS}/judgments/shard-{{i}}-of-{{n}}.summary.json",
            config["judge"]["shards"],
        ),
    output:
        judgments=f"{RESULTS}/judgments.jsonl",
        scores=f"{RESULTS}/judgments.scores.arrow",
        summary=f"{RESULTS}/judgments.summary.json",
    log:
        "logs/gather_judgments.log",
    benchmark:
        "benchmarks/gather_judgments.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
    shell:
        "{params.salmon} gather --prompts {input.prompts:q} --principles {input.principles:q}"
        " --shards {input.shards:q} --output {output.judgments:q} --scores {output.scores:q}"
        " --summaries {input.summaries:q} --summary {output.summary:q} > {log:q} 2>&1"
