# Shared set-up: config validation with defaults, paths, and the helpers every rule uses.
import functools
import os
import shlex
import sys
from pathlib import Path

from snakemake.common import get_appdirs
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

from salmon_wf.config import command_flags, run_settings, validate
from salmon_wf.errors import ConfigError
from salmon_wf.workflow import (
    Recipes,
    check_group_shapes,
    conversion_command,
    ease_garbage_collection,
    group_shape,
    profile_names,
    resolve_salmon_prompts,
    shadowed_profiles,
    slurm_resources,
)

min_version("9.0")
ease_garbage_collection()

# The package's schema (salmon_wf/config.schema.yaml = schemas/config.schema.yaml) fills in
# the defaults; a typo'd or ill-typed key stops the workflow here, named in one line.
try:
    validate(config)
    resolve_salmon_prompts(config)
    check_group_shapes(config)
except (ConfigError, ValueError) as error:
    raise WorkflowError(str(error)) from None
_dirs = get_appdirs()
for _name, _theirs in shadowed_profiles(
    profile_names(sys.argv, dict(os.environ)),
    Path(workflow.basedir).resolve(),
    [_dirs.user_config_dir, _dirs.site_config_dir],
):
    print(
        f"salmon-wf: --profile {_name}: you have a profile of that name, {_theirs}, and so has"
        f" this repository (./{_name} -> profiles/{_name}). Snakemake looks in the working"
        f" directory first: from the repository root it uses the repository's, elsewhere yours"
        f" (left as it is). Give a path to choose: --profile {_theirs} or profiles/{_name}.",
        file=sys.stderr,
    )

RESULTS = config["results_dir"]
MODELS = config["models_dir"]
RUNS = list(config["sampling"]["runs"])
RECIPES = Recipes(config)
# The interpreter the stages run in: the one running snakemake (the .venv scripts/setup.sh
# makes; no PATH or activation needed) or, with --sdm conda, the python of the rule's conda
# environment (envs/salmon-wf.yaml; its post-deploy script installs this checkout into it).
# Quoted: every shell rule starts with it, and a .venv path may hold spaces or quotes.
PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else shlex.quote(sys.executable)
)
SALMON = f"{PYTHON} -m salmon_wf.cli"
# The sampling shards' jobs, and the judge's (its own and the calibration's): each of its shape.
GPU_RESOURCES = slurm_resources(config, "gpu")
JUDGE_RESOURCES = slurm_resources(config, "judge")
CPU_RESOURCES = slurm_resources(config, "cpu")
CHEAP_LOCAL = config["slurm"]["cheap_rules_local"]


wildcard_constraints:
    run="|".join(RUNS),
    i=r"\d+",
    n=r"\d+",
    stage="|".join(["pairs", "judge", *(f"sample-{run}" for run in RUNS)]),


def run_cfg(run):
    return run_settings(config, run)


def model_dir():
    if config["model"]["source"] == "dir":
        return config["model"]["path"]
    return f"{MODELS}/{config['model']['name']}"


@functools.cache
def model_args():
    """Flags every model-running stage takes."""
    model = shlex.quote(model_dir())
    return f"--model {model} {command_flags('model', config['model'])}"


@functools.cache
def launcher(stage):
    """One `stage` (sample or judge) model-parallel group: in-process, torchrun, or srun +
    torchrun inside SLURM. Each stage has its own shape: a judge shape change alters only
    the judge shards' commands, so only they (and what follows) rerun."""
    nodes, per_node = group_shape(config, stage)
    return (
        f"{PYTHON} -m salmon_wf.launch --nodes {nodes} --ranks-per-node {per_node} --"
    )


def prepare_model_command():
    """The shell command that writes the Meta-layout model for sources other than dir."""
    m = config["model"]
    return conversion_command(m, f"{MODELS}/{m['name']}", SALMON)


def shard_paths(pattern, n, **fields):
    return [pattern.format(i=i, n=n, **fields) for i in range(n)]


def sample_args(run):
    return f"{command_flags('sample', run_cfg(run))} --label {shlex.quote(run)}"


@functools.cache
def judge_args():
    return command_flags("judge", config["judge"])


# One string per shard job, built here once per job: Snakemake's own placeholder formatting
# costs more than the job's other bookkeeping in a thousand-shard dry run. Functions of the
# wildcards only: a params function that takes `input` or `output` escapes Snakemake's params
# rerun check (seen: a new temperature then reran nothing).
def shard_command(stage, args, recipe, wildcards):
    """Launcher of `stage`'s group shape, model flags, stage flags and this shard's index
    and resume fingerprint. The fingerprint carries the group's MP past one rank: a partial
    file written at another MP (which can flip a near-tie token) is not resumed."""
    i, n = wildcards.i, wildcards.n
    resume = RECIPES.with_group(stage, recipe)
    shard = f"--shard {i} --num-shards {n} --fingerprint {resume}-{i}-{n}"
    return f"{launcher(stage)} {stage} {model_args()} {args} {shard}"


@functools.cache
def _sample_head(run):
    return sample_args(run), RECIPES.sample(run)


def sample_command(wildcards):
    return shard_command("sample", *_sample_head(wildcards.run), wildcards)


def judge_command(wildcards):
    return shard_command("judge", judge_args(), RECIPES.judge(), wildcards)
