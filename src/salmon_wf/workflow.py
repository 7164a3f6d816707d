"""Helpers the Snakefile calls: resolved per-run settings, CLI flags, and content fingerprints.

Partial rebuilds rest on fingerprints. The pair stage reads the gathered responses as `ancient`
inputs, so regathering identical bytes (a run's shard count changed) does not re-pair or
re-judge; what the pairs depend on (both runs' sampling settings without their layout, the
model, the prompts, min_chars) and what the judgments depend on (the pairs' fingerprint, the
judge settings, the principle and template contents) are fingerprints written by stamp rules
with no upstream, whose params Snakemake always checks. Changing a run's temperature therefore
reruns that run, both stamps, the pairing, the judge and the aggregation; the principle file
reruns the judge stamp, the judge and the aggregation; a run's shard count reruns only that
run's sampling. The group shapes (model.mp for sampling, judge.mp for judging, each over its
nodes per group) are layout too: the shard commands and, past one rank, the stamps carry
them, so the judge's shape reruns judging and what follows, never sampling.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import json
import os
import shlex
from pathlib import Path
from typing import Any

from salmon_wf.config import run_settings
from salmon_wf.errors import ConfigError

# Settings that change how work is split or batched, not what it computes (model.mp and
# judge.mp: any checkpoint MP loads on any group of ranks; the shard commands carry the shape).
LAYOUT_KEYS = frozenset({"shards", "batch_size", "max_rows", "threads", "mp"})


def ease_garbage_collection(threshold: int = 20_000) -> None:
    """Keep Python's cyclic GC from re-scanning what Snakemake has built (called at parse time).

    A thousand-shard dry run builds ~3,000 jobs of many small objects, and with the default
    thresholds the collector re-walks every live object (Snakemake's and its plugins' modules
    included) over and over: ~1 s of a 5.3 s dry run here. `gc.freeze()` moves everything
    alive now (imported modules, the parsed config) out of the collector's sight, and a higher
    first-generation threshold makes collections rarer. Cyclic garbage is still collected.
    """
    gc.freeze()
    gc.set_threshold(threshold, 20, 20)


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: str | Path, hash_limit: int = 1 << 24) -> str:
    """Content hash for small files (configs, templates); size + mtime for large data files."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return digest(sorted((p.name, file_stamp(p)) for p in path.iterdir() if p.is_file()))
    stat = path.stat()
    if stat.st_size <= hash_limit:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{stat.st_size}-{stat.st_mtime_ns}"


# SALMON's texts in its repository's prompts/ folder, and the config keys they fill.
SALMON_PROMPTS = {
    ("sampling", "defaults", "meta_prompt"): "dromedary_inference_prompt.txt",
    ("judge", "template"): "synthetic_preference_prompt.txt",
    ("judge", "principles"): "principles/principle_collection_rm.json",
}


def resolve_salmon_prompts(config: dict[str, Any]) -> None:
    """Fill the three text paths from `salmon_prompts_dir`; fail, naming them, when any is empty.

    SALMON's meta prompt, judging template and principle file are not ours to ship, so the
    SALMON preset leaves their paths empty and the user points at a SALMON checkout.
    """
    folder = config.get("salmon_prompts_dir")
    if folder:
        absent = [name for name in SALMON_PROMPTS.values() if not (Path(folder) / name).is_file()]
        if absent:
            raise ValueError(f"salmon_prompts_dir {folder}: no {', '.join(absent)} in it")
        for (*parents, key), name in SALMON_PROMPTS.items():
            node = config
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = str(Path(folder) / name)
    empty = [f"judge.{k}" for k in ("template", "principles") if not config["judge"].get(k)]
    runs = [r for r in config["sampling"]["runs"] if not run_settings(config, r)["meta_prompt"]]
    if runs:
        empty.append(f"sampling.defaults.meta_prompt (runs {', '.join(runs)})")
    if empty:
        names = ", ".join(SALMON_PROMPTS.values())
        raise ValueError(
            f"unset: {', '.join(empty)}. SALMON's own texts are not shipped with salmon-wf: set "
            f"salmon_prompts_dir to the prompts/ folder of a SALMON checkout "
            f"(github.com/IBM/SALMON, with {names}), or set those keys to your own files."
        )


def profile_names(argv: list[str], env: dict[str, str]) -> list[str]:
    """The --profile values of a snakemake command line (else $SNAKEMAKE_PROFILE), as given."""
    names = [b for a, b in itertools.pairwise(argv) if a == "--profile"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--profile=")]
    return names or ([env["SNAKEMAKE_PROFILE"]] if env.get("SNAKEMAKE_PROFILE") else [])


def shadowed_profiles(
    names: list[str], repo: Path, config_dirs: list[str]
) -> list[tuple[str, Path]]:
    """Profiles of the user's (or the site's) with the name of a repo-root profile link.

    Snakemake 9 looks a profile name up in the working directory first, then in the user's and
    the site's config folders (~/.config/snakemake, /etc/xdg/snakemake). The repo root's
    `slurm` link to profiles/slurm makes `snakemake --profile slurm` work from there without
    installing anything; a profile of that name of the user's is left alone, and from the repo
    root it is not the one used (the Snakefile cannot see the directory snakemake started in,
    so the note it prints says both).
    """
    hidden = []
    for name in names:
        link = repo / name
        if os.sep in name or not link.exists() or link.resolve().parent != repo / "profiles":
            continue
        hidden += [(name, Path(d) / name) for d in config_dirs if (Path(d) / name).exists()]
    return hidden


def semantic(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in LAYOUT_KEYS}


SOURCES_WITH_PATH = ("dir", "gguf", "hf")


def model_source_stamps(model: dict[str, Any]) -> dict[str, Any]:
    """Content stamps of the files a model source reads: `path` and each LoRA adapter folder."""
    adapters = model.get("adapters") or []
    if adapters and model["source"] != "hf":
        raise ValueError(f"model.adapters needs model.source: hf (source is {model['source']})")
    stamps: dict[str, Any] = {}
    if model["source"] in SOURCES_WITH_PATH:
        stamps["stamp"] = file_stamp(model["path"])
    if adapters:
        stamps["adapter_stamps"] = [file_stamp(a) for a in adapters]
    return stamps


def stored_dtype(compute: str) -> str:
    """The dtype an HF import stores for compute dtype `compute`: auto picks per machine at load
    time, so the store is fp32, which casts losslessly to whatever auto picks."""
    return "fp32" if compute == "auto" else compute


def conversion_command(model: dict[str, Any], out: str, salmon: str) -> str:
    """The shell command that writes the Meta-layout model `out` for sources other than dir.

    An HF folder is stored in the compute dtype (bf16 halves a 70B model's disk); its adapters
    are merged in the order given.
    """
    q, mp = shlex.quote, model["mp"]
    if model["source"] == "tiny":
        return f"{salmon} tiny-model {q(out)} --mp {mp} --seed {model['tiny_seed']}"
    if model["source"] == "hf":
        adapters = "".join(f" --adapter {q(a)}" for a in model.get("adapters") or [])
        return (
            f"{salmon} import-hf {q(model['path'])} {q(out)} --mp {mp} "
            f"--dtype {q(stored_dtype(model['dtype']))}{adapters}"
        )
    gguf = "smollm2" if model["source"] == "smollm2" else model["path"]
    return f"{salmon} import-gguf {q(gguf)} {q(out)} --mp {mp}"


class Recipes:
    """Fingerprints of what each stage's output content depends on.

    Memoised: Snakemake evaluates params per job, and a DAG may hold thousands of shard jobs.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @functools.cache  # noqa: B019 - one Recipes per workflow run
    def prompts(self) -> str:
        cfg = self.config["prompts"]
        return digest({"prompts": cfg, "input": file_stamp(cfg["input"])})

    @functools.cache  # noqa: B019 - one Recipes per workflow run
    def model(self) -> str:
        cfg = semantic(self.config["model"])  # without mp: any checkpoint MP, the same model
        if not cfg.get("adapters"):
            cfg.pop("adapters", None)  # fingerprints of adapter-less models stay as they were
        return digest(cfg | model_source_stamps(self.config["model"]))

    @functools.cache  # noqa: B019 - one Recipes per workflow run
    def conversion(self) -> str:
        """What prepare_model reads: a changed adapter or source file reruns the conversion."""
        return digest(model_source_stamps(self.config["model"]))

    @functools.cache  # noqa: B019 - one Recipes per workflow run
    def sample(self, run: str) -> str:
        settings = semantic(run_settings(self.config, run))
        settings["meta_prompt_stamp"] = file_stamp(settings.get("meta_prompt", ""))
        return digest({"run": settings, "prompts": self.prompts(), "model": self.model()})

    @functools.cache  # noqa: B019 - one Recipes per workflow run
    def pairs(self) -> str:
        runs = [self.sample(r) for r in self.config["sampling"]["runs"]]
        judge = self.config["judge"]
        filter_ = {"min_chars": judge["min_chars"], "of": judge["min_chars_of"]}
        return digest(filter_ | {"runs": runs})

    @functools.cache  # noqa: B019 - one Recipes per workflow run
    def judge(self) -> str:
        cfg = semantic(self.config["judge"])
        cfg.pop("min_chars")  # in the pairs' fingerprint
        cfg.pop("min_chars_of")
        stamps = {k: file_stamp(cfg[k]) for k in ("principles", "template")}
        return digest({"judge": cfg, "stamps": stamps, "pairs": self.pairs()})

    def of(self, stage: str) -> str:
        """The stamp rule's params of stage "pairs", "judge" or "sample-<run>"."""
        if stage.startswith("sample-"):
            return self.with_group("sample", self.sample(stage.removeprefix("sample-")))
        if stage == "judge":
            return self.with_group("judge", self.judge())
        # the responses are `ancient` to pair_responses: a resampling at another MP (which can
        # flip a near-tie token) must reach the pairs, and the judge through them, by the stamp
        return self.with_group("sample", self.pairs())

    def with_group(self, stage: str, recipe: str) -> str:
        """A shard stage's stamp: its fingerprint and, past one rank, its group's MP.

        The shard commands carry the shape, but a model.mp change also reruns prepare_model,
        and Snakemake does not check the params of jobs after a job that reruns: the stamp
        (no upstream) makes such a change rerun the shards it reaches (the sampling's, and the
        judge's when judge.mp is null). The fingerprints proper leave the MP out (LAYOUT_KEYS),
        and one rank adds nothing, so stamps written before stay valid.
        """
        mp = group_mp(self.config, stage)
        return recipe if mp == 1 else f"{recipe}-mp{mp}"


# The keys of each shard stage's group shape: (MP, nodes per group); the judge's own keys
# fall back to the sampling's when null.
SHAPE_KEYS = {
    "sample": (("model", "mp"), ("slurm", "nodes_per_group")),
    "judge": (("judge", "mp"), ("slurm", "judge_nodes_per_group")),
}


def _shape_value(config: dict[str, Any], stage: str, which: int) -> tuple[int, str]:
    """One of a stage's shape values and the dotted key it came from (the judge's, else the
    sampling's)."""
    for name in dict.fromkeys((stage, "sample")):
        section, key = SHAPE_KEYS[name][which]
        value = config.get(section, {}).get(key)
        if value is not None:
            return value, f"{section}.{key}"
    raise KeyError(f"{SHAPE_KEYS['sample'][which]} is not set")


def group_mp(config: dict[str, Any], stage: str = "sample") -> int:
    """Model-parallel ranks of one `stage` ("sample" or "judge") shard job."""
    return _shape_value(config, stage, 0)[0]


def group_shape(config: dict[str, Any], stage: str = "sample") -> tuple[int, int]:
    """(nodes, ranks per node) of one `stage` model-parallel group (= one shard job).

    Sampling's is model.mp over slurm.nodes_per_group; the judge's (its shards and the
    calibration's) judge.mp over slurm.judge_nodes_per_group, each null one the sampling's.
    A shape that does not divide is a ConfigError naming the keys in effect.
    """
    (mp, mp_key), (nodes, nodes_key) = (_shape_value(config, stage, w) for w in (0, 1))
    if mp % nodes:
        raise ConfigError(
            f"{mp} is not divisible by {nodes_key} {nodes} (a group's ranks are spread"
            " evenly over its nodes)",
            field=f"config {mp_key}",
        )
    return nodes, mp // nodes


def check_group_shapes(config: dict[str, Any]) -> None:
    """Both stages' shapes, checked at start (before any job is planned or submitted)."""
    for stage in SHAPE_KEYS:
        group_shape(config, stage)


def explicit_gpus(site: dict[str, Any], kind: str, jobs: dict[str, Any]) -> int | None:
    """The explicit GPUs per node of a shard job, None for its group's ranks per node.

    gpu_jobs' count is sized for the sampling's shape (6 per node for MP 12 over 2 nodes): the
    judge takes its own from judge_jobs, and of gpu_jobs' only 0 (a cluster without GPUs)."""
    if kind != "judge":
        return jobs.get("gpus_per_node")
    own = (site.get("judge_jobs") or {}).get("gpus_per_node")
    return 0 if own is None and site["gpu_jobs"].get("gpus_per_node") == 0 else own


def slurm_resources(config: dict[str, Any], kind: str) -> dict[str, Any]:
    """Snakemake resources for snakemake-executor-plugin-slurm from config.yaml's slurm section.

    kind "gpu": the sampling shard jobs. One task per node and `gres=gpu:<ranks per node>`,
    which SLURM applies per node. Multi-node groups are `mpi="srun"` jobs (the plugin then does
    not wrap the job in its own srun: our launcher calls srun itself); a one-node job runs
    inside the plugin's `srun -n1` step and the launcher's srun joins it with --overlap.
    kind "judge": the judge's shard jobs (and the calibration's): gpu_jobs with judge_jobs'
    keys over them, and the judge's group shape.
    kind "cpu": model conversion and, when not local, the cheap rules.
    Empty settings are left out so the cluster's defaults apply. Other executors ignore them.
    """
    site = config["slurm"]
    if kind == "judge":
        jobs = site["gpu_jobs"] | (site.get("judge_jobs") or {})
    else:
        jobs = site[f"{kind}_jobs"]
    resources: dict[str, Any] = {
        "slurm_partition": jobs.get("partition", ""),
        "slurm_account": jobs.get("account", ""),
        "qos": jobs.get("qos", ""),
        "constraint": jobs.get("constraint", ""),
        "slurm_extra": jobs.get("extra", ""),
        "runtime": jobs["runtime"],
        "mem_mb": jobs["mem_mb"],
        "cpus_per_task": jobs["cpus_per_task"],
    }
    if kind in ("gpu", "judge"):
        nodes, per_node = group_shape(config, "judge" if kind == "judge" else "sample")
        explicit = explicit_gpus(site, kind, jobs)
        gpus = per_node if explicit is None else explicit
        # One node and one task are SLURM's defaults. The plugin accepts mpi jobs only with
        # several tasks, and turns `tasks` of a GPU job into --ntasks-per-gpu (one task per
        # GPU, not per node) unless tasks_per_gpu is given: 0 leaves that flag out.
        if nodes > 1:
            resources |= {"nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "mpi": "srun"}
        if gpus:
            resources["gres"] = f"gpu:{gpus}"
    return {k: v for k, v in resources.items() if v not in ("", None)}
