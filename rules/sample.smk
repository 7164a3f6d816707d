# Stage 2: two sampling runs, each split into shards (prompts[i::n]), then gathered in order.


# The run's stamp (rule fingerprint) reruns its shards when what they compute changes, even
# when prepare_model reruns too (Snakemake then skips the params check of everything after it).
rule sample_shard:
    input:
        fingerprint=f"{RESULTS}/fingerprints/sample-{{run}}.txt",
        prompts=f"{RESULTS}/prompts.jsonl",
        model=ancient(f"{model_dir()}/params.json"),
    output:
        f"{RESULTS}/responses/{{run}}/shard-{{i}}-of-{{n}}.jsonl",
    log:
        "logs/sample/{run}/shard-{i}-of-{n}.log",
    benchmark:
        "benchmarks/sample/{run}/shard-{i}-of-{n}.tsv"
    conda:
        "../envs/salmon-wf.yaml"
    threads: config["model"]["threads"]
    resources:
        **GPU_RESOURCES,
    params:
        command=sample_command,
    shell:
        "{params.command} --prompts {input.prompts:q} --output {output:q} > {log:q} 2>&1"


rule gather_responses:
    input:
        prompts=f"{RESULTS}/prompts.jsonl",
        shards=lambda w: shard_paths(
            f"{RESULTS}/responses/{{run}}/shard-{{i}}-of-{{n}}.jsonl",
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
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
    shell:
        "{params.salmon} gather --prompts {input.prompts:q} --shards {input.shards:q}"
        " --output {output:q} > {log:q} 2>&1"
