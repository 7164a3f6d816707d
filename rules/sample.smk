# Stage 2: two sampling runs, each split into shards (prompts[i::n]), then gathered in order.


def sample_args(wildcards):
    cfg = run_cfg(wildcards.run)
    keep = ("seed", "temperature", "top_p", "max_new_tokens", "stop", "style")
    keep += ("meta_prompt", "batch_size", "long_prompt_policy")
    return flags({k: cfg[k] for k in keep})


rule sample_shard:
    input:
        prompts=ancient(f"{RESULTS}/prompts.jsonl"),
        model=ancient(f"{model_dir()}/params.json"),
    output:
        f"{RESULTS}/responses/{{run}}/shard-{{i}}-of-{{n}}.jsonl",
    params:
        recipe=lambda w: RECIPES.sample(w.run),
        args=sample_args,
        model=model_args(),
        launcher=launcher(),
    threads: config["model"]["threads"]
    resources:
        **GPU_RESOURCES,
    log:
        "logs/sample/{run}/shard-{i}-of-{n}.log",
    benchmark:
        "benchmarks/sample/{run}/shard-{i}-of-{n}.tsv"
    shell:
        "{params.launcher} sample {params.model} {params.args}"
        " --prompts {input.prompts:q} --output {output:q}"
        " --shard {wildcards.i} --num-shards {wildcards.n} --label {wildcards.run:q}"
        " --fingerprint {params.recipe}-{wildcards.i}-{wildcards.n} > {log:q} 2>&1"


rule gather_responses:
    input:
        prompts=ancient(f"{RESULTS}/prompts.jsonl"),
        shards=lambda w: shard_paths(
            RESULTS + "/responses/{run}/shard-{i}-of-{n}.jsonl",
            run_cfg(w.run)["shards"],
            run=w.run,
        ),
    output:
        f"{RESULTS}/responses/{{run}}.jsonl",
    log:
        "logs/gather_responses/{run}.log",
    benchmark:
        "benchmarks/gather_responses/{run}.tsv"
    localrule: CHEAP_LOCAL
    resources:
        **CPU_RESOURCES,
    shell:
        "{SALMON} gather --prompts {input.prompts:q} --shards {input.shards:q}"
        " --output {output:q} > {log:q} 2>&1"
