# Stage 3: every pair x principle x order scored by the policy model (pairs[i::n] per shard).


# Snakemake does not re-check the params of a job whose upstream reruns, and the responses are
# `ancient` (a run's new shard count must not re-judge identical bytes). This stamp job has no
# upstream, so its params (everything the judgments depend on) are always checked: when they
# change, it rewrites the stamp and the judge reruns.
rule judge_fingerprint:
    output:
        f"{RESULTS}/fingerprints/judge.txt",
    log:
        "logs/judge_fingerprint.log",
    localrule: True
    conda:
        "../envs/salmon-wf.yaml"
    params:
        recipe=RECIPES.judge(),
    shell:
        "echo {params.recipe} > {output:q} 2> {log:q}"


rule judge_shard:
    input:
        fingerprint=f"{RESULTS}/fingerprints/judge.txt",
        responses=[ancient(f"{RESULTS}/responses/{run}.jsonl") for run in RUNS],
        model=ancient(f"{model_dir()}/params.json"),
        principles=config["judge"]["principles"],
        template=config["judge"]["template"],
    output:
        f"{RESULTS}/judgments/shard-{{i}}-of-{{n}}.jsonl",
    log:
        "logs/judge/shard-{i}-of-{n}.log",
    benchmark:
        "benchmarks/judge/shard-{i}-of-{n}.tsv"
    conda:
        "../envs/salmon-wf.yaml"
    threads: config["model"]["threads"]
    resources:
        **GPU_RESOURCES,
    params:
        recipe=RECIPES.judge(),
        args=judge_args(),
        model=model_args(),
        launcher=launcher(),
    shell:
        "{params.launcher} judge {params.model} {params.args}"
        " --responses {input.responses:q} --principles {input.principles:q}"
        " --template {input.template:q} --output {output:q}"
        " --shard {wildcards.i} --num-shards {wildcards.n}"
        " --fingerprint {params.recipe}-{wildcards.i}-{wildcards.n} > {log:q} 2>&1"


rule gather_judgments:
    input:
        prompts=f"{RESULTS}/prompts.jsonl",
        principles=config["judge"]["principles"],
        shards=shard_paths(
            f"{RESULTS}/judgments/shard-{{i}}-of-{{n}}.jsonl",
            config["judge"]["shards"],
        ),
    output:
        f"{RESULTS}/judgments.jsonl",
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
        " --shards {input.shards:q} --output {output:q} > {log:q} 2>&1"
