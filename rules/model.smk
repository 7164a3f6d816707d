# The policy model in Meta layout: converted from GGUF or generated (tiny), unless source is dir.
if config["model"]["source"] != "dir":

    rule prepare_model:
        output:
            f"{MODELS}/{{name}}/params.json",
        log:
            "logs/prepare_model/{name}.log",
        benchmark:
            "benchmarks/prepare_model/{name}.tsv"
        conda:
            "../envs/salmon-wf.yaml"
        resources:
            **CPU_RESOURCES,
        params:
            command=prepare_model_command(),
        shell:
            "{params.command} > {log:q} 2>&1"
