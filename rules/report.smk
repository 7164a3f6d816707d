# The Snakemake report's figures (snakemake --report report.html): drawn from the stage outputs,
# so the report rebuilds when they change (the responses ancient, as in pair_responses: a new
# shard count regathers the same bytes). Logic in salmon_wf.report.figures; captions in report/.


FIGURE_CAPTIONS = {
    "prompts": "Prompts",
    "responses": "Responses",
    "consistency": "Judgments",
    "scores": "Judgments",
    "correlation": "Judgments",
    "labels": "Preferences",
}


rule report_figures:
    input:
        prompts=f"{RESULTS}/prompts.summary.json",
        pairs=f"{RESULTS}/pairs.summary.json",
        responses=[ancient(f"{RESULTS}/responses/{run}.jsonl") for run in RUNS],
        judgments=f"{RESULTS}/judgments.jsonl",
        preferences=f"{RESULTS}/preferences.json",
        stats=f"{RESULTS}/preferences.stats.json",
        ledger=f"{RESULTS}/ledger.json",
    output:
        **{
            name: report(
                f"{RESULTS}/report/{name}.png",
                category=category,
                caption=f"../report/{name}.rst",
            )
            for name, category in FIGURE_CAPTIONS.items()
        },
        examples=report(
            f"{RESULTS}/report/examples.html",
            category="Preferences",
            caption="../report/examples.rst",
        ),
    log:
        "logs/report_figures.log",
    benchmark:
        "benchmarks/report_figures.tsv"
    localrule: True
    conda:
        "../envs/salmon-wf.yaml"
    params:
        python=PYTHON,
        runs=" ".join(shlex.quote(run) for run in RUNS),
        results=lambda w, input: os.path.dirname(input.prompts),
        folder=lambda w, output: os.path.dirname(output.examples),
    shell:
        "{params.python} -m salmon_wf.report.figures --results {params.results:q}"
        " --runs {params.runs} --output {params.folder:q} > {log:q} 2>&1"
