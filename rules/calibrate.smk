# The judge's calibration against OASST1's human rankings (`snakemake calibrate`; not in rule
# all). Sibling replies with different ranks are written as judge input, judged by the judge
# stage's own command (template, principles, model, shards) in results/calibration/, gathered,
# and scored against the ranks. No sampling setting reaches these jobs. docs/calibration.md.
from salmon_wf.report.calibration import FIGURES as CAL_FIGURES
from salmon_wf.stages.calibrate.recipe import calibration_input, calibration_recipe

CALIBRATION = f"{RESULTS}/calibration"
CAL_SHARDS = config["calibrate"]["shards"]


rule calibrate:
    input:
        f"{RESULTS}/calibration.json",
        [f"{CALIBRATION}/{name}.png" for name in CAL_FIGURES],


# As rule fingerprint: a stamp job with no upstream, so its params are always checked.
rule calibrate_fingerprint:
    output:
        f"{CALIBRATION}/fingerprint.txt",
    log:
        "logs/calibrate/fingerprint.log",
    localrule: True
    conda:
        "../envs/salmon-wf.yaml"
    params:
        recipe=lambda w: RECIPES.with_group("judge", calibration_recipe(RECIPES)),
    shell:
        "echo {params.recipe} > {output:q} 2> {log:q}"


rule calibrate_pairs:
    input:
        calibration_input(config),
    output:
        pairs=f"{CALIBRATION}/pairs.jsonl",
        summary=f"{CALIBRATION}/pairs.summary.json",
    log:
        "logs/calibrate/pairs.log",
    benchmark:
        "benchmarks/calibrate/pairs.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
        prompts=command_flags("clean-prompts", config["prompts"]),
        options=command_flags("calibrate-pairs", config["calibrate"]),
    shell:
        "{params.salmon} calibrate pairs --input {input:q} {params.prompts} {params.options}"
        " --output {output.pairs:q} --summary {output.summary:q} > {log:q} 2>&1"


rule calibrate_judge_shard:
    input:
        fingerprint=f"{CALIBRATION}/fingerprint.txt",
        pairs=f"{CALIBRATION}/pairs.jsonl",
        model=ancient(f"{model_dir()}/params.json"),
        principles=config["judge"]["principles"],
        template=config["judge"]["template"],
    output:
        judgments=f"{CALIBRATION}/judgments/shard-{{i}}-of-{{n}}.jsonl",
        summary=f"{CALIBRATION}/judgments/shard-{{i}}-of-{{n}}.summary.json",
    log:
        "logs/calibrate/judge/shard-{i}-of-{n}.log",
    benchmark:
        "benchmarks/calibrate/judge/shard-{i}-of-{n}.tsv"
    conda:
        "../envs/salmon-wf.yaml"
    threads: config["model"]["threads"]
    resources:
        **JUDGE_RESOURCES,
    params:
        command=lambda w: shard_command(
            "judge", judge_args(), calibration_recipe(RECIPES), w
        ),
    shell:
        "{params.command} --pairs {input.pairs:q} --principles {input.principles:q}"
        " --template {input.template:q} --output {output.judgments:q}"
        " --summary {output.summary:q} > {log:q} 2>&1"


rule calibrate_gather:
    input:
        pairs=f"{CALIBRATION}/pairs.jsonl",
        principles=config["judge"]["principles"],
        shards=shard_paths(
            f"{CALIBRATION}/judgments/shard-{{i}}-of-{{n}}.jsonl", CAL_SHARDS
        ),
        summaries=shard_paths(
            f"{CALIBRATION}/judgments/shard-{{i}}-of-{{n}}.summary.json", CAL_SHARDS
        ),
    output:
        judgments=f"{CALIBRATION}/judgments.jsonl",
        summary=f"{CALIBRATION}/judgments.summary.json",
    log:
        "logs/calibrate/gather.log",
    benchmark:
        "benchmarks/calibrate/gather.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
    shell:
        "{params.salmon} gather --prompts {input.pairs:q} --principles {input.principles:q}"
        " --shards {input.shards:q} --output {output.judgments:q}"
        " --summaries {input.summaries:q} --summary {output.summary:q} > {log:q} 2>&1"


rule calibrate_summary:
    input:
        pairs=f"{CALIBRATION}/pairs.jsonl",
        pairs_summary=f"{CALIBRATION}/pairs.summary.json",
        judgments=f"{CALIBRATION}/judgments.jsonl",
        judgments_summary=f"{CALIBRATION}/judgments.summary.json",
        principles=config["judge"]["principles"],
        template=config["judge"]["template"],
    output:
        f"{RESULTS}/calibration.json",
    log:
        "logs/calibrate/summary.log",
    benchmark:
        "benchmarks/calibrate/summary.tsv"
    localrule: CHEAP_LOCAL
    conda:
        "../envs/salmon-wf.yaml"
    resources:
        **CPU_RESOURCES,
    params:
        salmon=SALMON,
        options=command_flags("calibrate-summary", config["aggregate"]),
        model=model_dir(),
    shell:
        "{params.salmon} calibrate summary --pairs {input.pairs:q}"
        " --pairs-summary {input.pairs_summary:q} --judgments {input.judgments:q}"
        " --judgments-summary {input.judgments_summary:q} --principles {input.principles:q}"
        " --template {input.template:q} --model {params.model:q}"
        " {params.options} --output {output:q} > {log:q} 2>&1"


# Shown in the report under "Calibration" when the report is asked for with this target
# (`snakemake --report report.html all calibrate`); the report without it does not need them.
rule calibrate_figures:
    input:
        f"{RESULTS}/calibration.json",
    output:
        **{
            name: report(
                f"{CALIBRATION}/{name}.png",
                category="Calibration",
                caption=f"../report/calibration_{name}.rst",
            )
            for name in CAL_FIGURES
        },
    log:
        "logs/calibrate/figures.log",
    localrule: True
    conda:
        "../envs/salmon-wf.yaml"
    params:
        salmon=SALMON,
        folder=lambda w, output: os.path.dirname(output.agreement),
    shell:
        "{params.salmon} calibrate figures --calibration {input:q} --output {params.folder:q}"
        " > {log:q} 2>&1"
