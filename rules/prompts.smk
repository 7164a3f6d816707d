# Stage 1: OASST1 -> first-turn user prompts with stable ids, plus a summary of what was dropped.


rule clean_prompts:
    input:
        config["prompts"]["input"],
    output:
        prompts=f"{RESULTS}/prompts.jsonl",
        summary=f"{RESULTS}/prompts.summary.json",
    log:
        "logs/clean_prompts.log",
    benchmark:
        "benchmarks/clean_prompts.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
        options=command_flags("clean-prompts", config["prompts"]),
    shell:
        "{params.salmon} clean-prompts --input {input:q} --output {output.prompts:q}"
        " --summary {output.summary:q} {params.options} > {log:q} 2>&1"
