# Shared set-up: config validation with defaults, paths, and the helpers every rule uses.
import sys

import yaml
from snakemake.utils import min_version, validate

from salmon_wf.workflow import Recipes, flags, group_shape, run_settings, slurm_resources

min_version("9.0")

SCHEMA_PATH = workflow.source_path("../schemas/config.schema.yaml")
validate(config, SCHEMA_PATH, set_default=True)
with open(SCHEMA_PATH) as schema_file:
    SCHEMA = yaml.safe_load(schema_file)

RESULTS = config["results_dir"]
MODELS = config["models_dir"]
RUNS = list(config["sampling"]["runs"])
RECIPES = Recipes(config, SCHEMA)
# The interpreter running snakemake also runs the stages: no PATH or activation needed.
SALMON = f"{sys.executable} -m salmon_wf.cli"
GPU_RESOURCES = slurm_resources(config, "gpu")
CPU_RESOURCES = slurm_resources(config, "cpu")
CHEAP_LOCAL = config["slurm"]["cheap_rules_local"]


wildcard_constraints:
    run="|".join(RUNS),
    i=r"\d+",
    n=r"\d+",


def run_cfg(run):
    return run_settings(config, SCHEMA, run)


def model_dir():
    if config["model"]["source"] == "dir":
        return config["model"]["path"]
    return f"{MODELS}/{config['model']['name']}"


def model_args():
    """Flags every model-running stage takes."""
    m = config["model"]
    return flags(
        {
            "model": model_dir(),
            "dtype": m["dtype"],
            "device": m["device"],
            "max_seq_len": m["max_seq_len"],
            "threads": m["threads"],
        }
    )


def launcher():
    """One model-parallel group: in-process, torchrun, or srun + torchrun inside SLURM."""
    nodes, per_node = group_shape(config)
    return (
        f"{sys.executable} -m salmon_wf.launch --nodes {nodes} --ranks-per-node {per_node} --"
    )


def shard_paths(pattern, n, **fields):
    return [pattern.format(i=i, n=n, **fields) for i in range(n)]
