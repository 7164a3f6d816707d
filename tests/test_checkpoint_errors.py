"""Bad checkpoints and tokenizers fail before any compute, with the file and the field named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from salmon_wf.errors import CheckpointError
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import ParallelContext


@pytest.fixture
def broken(tiny_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    return copy


def edit_params(model_dir: Path, **changes: object) -> None:
    path = model_dir / "params.json"
    params = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    path.write_text(json.dumps(params))


def expect(model_dir: Path, ctx: ParallelContext, *fragments: str, **kwargs: object) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model(model_dir, ctx, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_no_checkpoint_files(broken: Path, single_rank: ParallelContext) -> None:
    for f in broken.glob("consolidated.*.pth"):
        f.unlink()
    expect(broken, single_rank, str(broken), "no consolidated.NN.pth")


def test_missing_params_json_and_keys(broken: Path, single_rank: ParallelContext) -> None:
    edit_params(broken, n_layers=None, dim=None)
    expect(broken, single_rank, "params.json", "missing required key(s) dim, n_layers")
    (broken / "params.json").unlink()
    expect(broken, single_rank, "params.json not found")


def test_shape_mismatch_names_the_weight(broken: Path, single_rank: ParallelContext) -> None:
    edit_params(broken, hidden_dim=96)
    expect(broken, single_rank, "layers.0.feed_forward.w1.weight", "(160, 64)", "(96, 64)")


def test_missing_weight_names_file_and_key(broken: Path, single_rank: ParallelContext) -> None:
    path = broken / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    del state["layers.1.attention.wk.weight"]
    torch.save(state, path)
    expect(broken, single_rank, "consolidated.00.pth", "layers.1.attention.wk.weight")


def test_tokenizer_larger_than_embedding(broken: Path, single_rank: ParallelContext) -> None:
    edit_params(broken, vocab_size=100)
    expect(broken, single_rank, "tokenizer has 512 tokens", "embedding has 100 rows")


def test_missing_or_bad_tokenizer(broken: Path, single_rank: ParallelContext) -> None:
    (broken / "tokenizer.json").write_text("{not json")
    expect(broken, single_rank, "tokenizer.json", tokenizer_path=broken / "tokenizer.json")
    (broken / "tokenizer.model").unlink()
    (broken / "tokenizer.json").unlink()
    expect(broken, single_rank, "no tokenizer.model or tokenizer.json")


def test_badly_numbered_shards(broken: Path, single_rank: ParallelContext) -> None:
    (broken / "consolidated.00.pth").rename(broken / "consolidated.03.pth")
    expect(broken, single_rank, "consolidated.00..00.pth")


def test_heads_must_divide_model_parallel_size(tiny_dir: Path) -> None:
    from salmon_wf.model.checkpoint import load_rank_state
    from salmon_wf.model.params import ModelArgs

    args = ModelArgs.load(tiny_dir / "params.json")
    with pytest.raises(CheckpointError, match="not divisible by world size 3"):
        load_rank_state(tiny_dir, args, rank=0, world=3)
