# The policy model in Meta layout: converted from GGUF or generated (tiny), unless source is dir.
if config["model"]["source"] != "dir":

    rule prepare_model:
        output:
            f"{MODELS}/{{name}}/params.json",
        params:
            source=config["model"]["source"],
            path=config["model"]["path"],
            mp=config["model"]["mp"],
            seed=config["model"]["tiny_seed"],
            dtype=config["model"]["dtype"],
        log:
            "logs/prepare_model/{name}.log",
        benchmark:
            "benchmarks/prepare_model/{name}.tsv"
        resources:
            **CPU_RESOURCES,
        shell:
            """
            out=$(dirname {output:q})
            case {params.source:q} in
              tiny) {SALMON} tiny-model "$out" --mp {params.mp} --seed {params.seed} > {log:q} 2>&1 ;;
              smollm2) {SALMON} import-gguf smollm2 "$out" --mp {params.mp} > {log:q} 2>&1 ;;
              gguf) {SALMON} import-gguf {params.path:q} "$out" --mp {params.mp} > {log:q} 2>&1 ;;
            esac
            """
