# The policy model in Meta layout: converted from GGUF or an HF folder (+ LoRA adapters) or
# generated (tiny), unless source is dir. `sources` fingerprints the files converted: a changed
# adapter or source file reruns the conversion (and, through the model fingerprint, the rest).
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
            sources=RECIPES.conversion(),
        shell:
            "{params.command} > {log:q} 2>&1"
