"""Sampling and judging with their own model-parallel group shapes (SALMON: MP 12 over 2 nodes
to sample, MP 8 on one node to judge), from one config.

The judge's shape (judge.mp over slurm.judge_nodes_per_group, each null one the sampling's) sets
its shard jobs' launcher and SLURM resources, the calibration's too; the checkpoint keeps
model.mp's files and is resharded at load, which the last tests check gives the same logits.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import snakemake, spawn, write_config

from salmon_wf import config as C
from salmon_wf.errors import ConfigError
from salmon_wf.model.checkpoint import load_rank_state, save_checkpoint, shard_dim
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.tiny import TINY_VOCAB, random_weights
from salmon_wf.workflow import check_group_shapes, group_mp, group_shape, slurm_resources


def salmon_config(**judge_keys: object) -> dict:
    """A validated config of SALMON's sampling shape, with the judge's keys given."""
    config: dict = {
        "model": {"mp": 12},
        "slurm": {
            "nodes_per_group": 2,
            "gpu_jobs": {"partition": "gpu", "runtime": 1440, "mem_mb": 400000},
        },
        "judge": {},
    }
    for dotted, value in judge_keys.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return C.validate(config)


# ---------------------------------------------------------------- the config's shapes


def test_the_judge_keys_default_to_the_sampling_shape() -> None:
    config = salmon_config()
    assert config["judge"]["mp"] is None and config["slurm"]["judge_nodes_per_group"] is None
    assert config["slurm"]["judge_jobs"] == {}  # overrides: nothing filled in
    assert group_shape(config, "judge") == group_shape(config, "sample") == (2, 6)
    assert group_mp(config, "judge") == 12
    assert slurm_resources(config, "judge") == slurm_resources(config, "gpu")


def test_salmons_judge_shape_and_jobs_change_only_the_judges_resources() -> None:
    config = salmon_config(
        **{"judge.mp": 8, "slurm.judge_nodes_per_group": 1},
        **{"slurm.judge_jobs": {"partition": "gpu8", "mem_mb": 800000}},
    )
    assert group_shape(config, "sample") == (2, 6) and group_shape(config, "judge") == (1, 8)
    assert (group_mp(config, "sample"), group_mp(config, "judge")) == (12, 8)
    sample, judge = slurm_resources(config, "gpu"), slurm_resources(config, "judge")
    assert sample["gres"] == "gpu:6" and sample["nodes"] == 2 and sample["mpi"] == "srun"
    assert sample["slurm_partition"] == "gpu" and sample["mem_mb"] == 400000
    assert judge == {
        "slurm_partition": "gpu8",
        "runtime": 1440,  # gpu_jobs'
        "mem_mb": 800000,
        "cpus_per_task": 2,  # the slurm_jobs default, through gpu_jobs
        "gres": "gpu:8",  # one node: no nodes, tasks or mpi
    }
    config["slurm"]["judge_jobs"]["gpus_per_node"] = 0  # a judge asking no GPUs, on purpose
    assert "gres" not in slurm_resources(config, "judge")
    assert slurm_resources(config, "gpu")["gres"] == "gpu:6"


def test_the_sampling_gpu_count_does_not_reach_the_judge_except_none() -> None:
    config = salmon_config(**{"judge.mp": 8, "slurm.judge_nodes_per_group": 1})
    config["slurm"]["gpu_jobs"]["gpus_per_node"] = 6  # sized for MP 12 over 2 nodes
    assert slurm_resources(config, "gpu")["gres"] == "gpu:6"
    assert slurm_resources(config, "judge")["gres"] == "gpu:8"  # its 8 ranks, not 6 GPUs
    config["slurm"]["judge_jobs"] = {"gpus_per_node": 4}
    assert slurm_resources(config, "judge")["gres"] == "gpu:4"  # its own, when given
    config["slurm"]["judge_jobs"] = {}
    config["slurm"]["gpu_jobs"]["gpus_per_node"] = 0  # a cluster without GPUs: none for both
    assert "gres" not in slurm_resources(config, "gpu")
    assert "gres" not in slurm_resources(config, "judge")


def test_the_judge_over_nodes_of_its_own() -> None:
    config = salmon_config(**{"judge.mp": 16, "slurm.judge_nodes_per_group": 2})
    judge = slurm_resources(config, "judge")
    assert (judge["nodes"], judge["tasks"], judge["gres"]) == (2, 2, "gpu:8")
    # judge.mp null follows model.mp, over the judge's own nodes
    config = salmon_config(**{"slurm.judge_nodes_per_group": 1})
    assert group_shape(config, "judge") == (1, 12)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        # judge_nodes_per_group null: the sampling's 2 nodes, named as such
        (
            {"judge.mp": 9},
            "config judge.mp: 9 is not divisible by slurm.nodes_per_group 2 (a group's ranks",
        ),
        (
            {"judge.mp": 8, "slurm.judge_nodes_per_group": 3},
            "config judge.mp: 8 is not divisible by slurm.judge_nodes_per_group 3 (",
        ),
        # judge.mp null: model.mp is the judge's MP, and the key named
        (
            {"slurm.judge_nodes_per_group": 5},
            "config model.mp: 12 is not divisible by slurm.judge_nodes_per_group 5 (",
        ),
    ],
)
def test_a_shape_that_does_not_divide_is_one_line_naming_its_keys(
    keys: dict[str, object], message: str
) -> None:
    config = salmon_config(**keys)
    with pytest.raises(ConfigError) as caught:
        check_group_shapes(config)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"judge.mp": 0}, "config judge.mp: 0 is less than the minimum of 1"),
        ({"slurm.judge_nodes_per_group": 0}, "config slurm.judge_nodes_per_group: 0 is less"),
        ({"slurm.judge_jobs": {"mem": 1}}, "config slurm.judge_jobs.mem: unknown key (did you"),
    ],
)
def test_judge_keys_the_schema_refuses_name_themselves(
    keys: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        salmon_config(**keys)


def test_snakemake_stops_at_start_on_a_judge_shape_that_does_not_divide(tmp_path: Path) -> None:
    write_config(tmp_path, **{"judge.mp": 3, "slurm.judge_nodes_per_group": 2})
    with pytest.raises(AssertionError) as caught:
        snakemake(tmp_path, "-n")
    line = "config judge.mp: 3 is not divisible by slurm.judge_nodes_per_group 2"
    assert line in str(caught.value)


# ---------------------------------------------------------------- the planned jobs


def planned(text: str, rule: str) -> list[tuple[dict[str, str], str]]:
    """Each `rule` job of a `snakemake -n -p` output: its resources and its shell command."""
    jobs = re.findall(
        rf"^rule {rule}:\n(.*?)^Shell command: (.*?)$", text, flags=re.MULTILINE | re.DOTALL
    )
    found = []
    for body, command in jobs:
        resources = re.search(r"^\s+resources: (.*)$", body, flags=re.MULTILINE)
        assert resources, body
        found.append((dict(r.split("=", 1) for r in resources.group(1).split(", ")), command))
    return found


SHAPES = {
    "model.mp": 4,
    "slurm.nodes_per_group": 2,
    "judge.mp": 2,
    "slurm.judge_nodes_per_group": 1,
    "slurm.judge_jobs": {"partition": "judges", "mem_mb": 1234},
}


def test_sample_and_judge_shards_are_planned_with_their_own_shapes(tmp_path: Path) -> None:
    write_config(tmp_path, **SHAPES)
    text = snakemake(tmp_path, "-n", "-p", "all", "calibrate")
    sample = planned(text, "sample_shard")
    judges = planned(text, "judge_shard") + planned(text, "calibrate_judge_shard")
    assert len(sample) == 4 and len(judges) == 4  # 2 runs x 2 shards; 2 + 2 judge shards
    for resources, command in sample:
        assert "salmon_wf.launch --nodes 2 --ranks-per-node 2 -- sample " in command
        assert (resources["nodes"], resources["tasks"], resources["mpi"]) == ("2", "2", "srun")
        assert (resources["gres"], resources["slurm_partition"]) == ("gpu:2", "gpu")
    for resources, command in judges:
        assert "salmon_wf.launch --nodes 1 --ranks-per-node 2 -- judge " in command
        assert "nodes" not in resources and "mpi" not in resources
        assert (resources["gres"], resources["slurm_partition"]) == ("gpu:2", "judges")
        assert resources["mem_mb"] == "1234"
    # the checkpoint is written once, with model.mp's files
    assert "tiny-model models/tiny --mp 4 " in text
    # resume fingerprints carry each group's MP: a partial file of another MP is not resumed
    fingerprints = [re.search(r"--fingerprint (\S+)", c).group(1) for _, c in sample + judges]
    assert all(f.rsplit("-", 2)[0].endswith("-mp4") for f in fingerprints[:4])
    assert all(f.rsplit("-", 2)[0].endswith("-mp2") for f in fingerprints[4:])


def test_the_default_judge_shape_is_the_sampling_shape_in_every_command(tmp_path: Path) -> None:
    write_config(tmp_path, **{"model.mp": 2})
    text = snakemake(tmp_path, "-n", "-p")
    commands = [c for rule in ("sample_shard", "judge_shard") for _, c in planned(text, rule)]
    assert len(commands) == 6
    assert all("salmon_wf.launch --nodes 1 --ranks-per-node 2 -- " in c for c in commands)
    write_config(tmp_path, **{"model.mp": 1})
    one_rank = snakemake(tmp_path, "-n", "-p")
    assert not re.search(r"-mp\d", one_rank)  # one rank: fingerprints as before group shapes


# ---------------------------------------------------------------- one checkpoint, any MP

# The tiny model's shape, widened so that 1, 2, 3 and 4 ranks all divide it (12 heads of 4,
# 12 KV heads, an FFN of 96, 516 vocabulary rows of which 512 are tokens).
WIDE = {"dim": 48, "n_layers": 2, "n_heads": 12, "n_kv_heads": 12, "hidden_dim": 96}
TEXT = "Explain why the sky looks blue. ### 你好"


def wide_checkpoint(out: Path, tokenizer_from: Path, mp: int) -> Path:
    """The wide model (seed 0) written as `mp` Meta-layout files, with the tiny tokenizer."""
    args = ModelArgs(**WIDE, vocab_size=TINY_VOCAB, model_vocab_size=516, max_seq_len=256)
    save_checkpoint(random_weights(args, 0), args, out, mp=mp)
    shutil.copy(tokenizer_from / "tokenizer.model", out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict[int, Path]:
    """The wide model written at MP 1, 2 and 3 (the files sampling's model.mp would give)."""
    root = tmp_path_factory.mktemp("wide")
    return {mp: wide_checkpoint(root / f"mp{mp}", tiny_dir, mp) for mp in (1, 2, 3)}


def test_every_rank_slice_is_the_full_weights_chunk_across_unaligned_files(
    wide: dict[int, Path],
) -> None:
    """An MP 3 checkpoint on 2 or 4 ranks (SALMON's 12 -> 8: file and rank slices do not line
    up) and an MP 2 one on 3: each rank's tensor is its chunk of the full weight."""
    args = ModelArgs.load(wide[1] / "params.json")
    full = load_rank_state(wide[1], args, rank=0, world=1)
    for ckpt_mp, world in ((3, 2), (3, 4), (2, 3), (2, 4)):
        assert len(list(wide[ckpt_mp].glob("consolidated.*.pth"))) == ckpt_mp
        for rank in range(world):
            state = load_rank_state(wide[ckpt_mp], args, rank=rank, world=world)
            assert state.keys() == full.keys()
            for name, tensor in state.items():
                dim = shard_dim(name)
                expected = full[name] if dim is None else full[name].chunk(world, dim)[rank]
                assert torch.equal(tensor, expected), (ckpt_mp, world, rank, name)


@pytest.fixture
def reference(
    wide: dict[int, Path], single_rank: ParallelContext
) -> tuple[list[int], torch.Tensor]:
    """The MP 1 checkpoint's logits on one rank, and the token ids they are of."""
    loaded: LoadedModel = load_model(wide[1], single_rank)
    ids = loaded.tokenizer.encode(TEXT, bos=True)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))
    assert logits.abs().max() > 1  # logits of real scale
    return ids, logits


def test_an_mp2_checkpoint_on_one_rank_gives_the_same_logits(
    wide: dict[int, Path], single_rank: ParallelContext
) -> None:
    one = load_model(wide[1], single_rank)
    two = load_model(wide[2], single_rank)
    ids = torch.tensor([one.tokenizer.encode(TEXT, bos=True)])
    with torch.no_grad():
        assert torch.equal(one.model(ids), two.model(ids))  # the same weights, the same maths


@pytest.mark.parametrize(("ckpt_mp", "world"), [(2, 3), (2, 4), (3, 2)])
def test_a_checkpoint_gives_the_same_logits_on_another_number_of_ranks(
    ckpt_mp: int,
    world: int,
    wide: dict[int, Path],
    reference: tuple[list[int], torch.Tensor],
    tmp_path: Path,
) -> None:
    """A judge of another MP than the checkpoint's files (gloo ranks, fp32, 1e-5)."""
    ids, logits = reference
    ranks = spawn(world, wide[ckpt_mp], tmp_path, "logits", {"tokens": [ids]})
    assert len(ranks) == world
    for result in ranks:
        torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=0, atol=1e-5)
