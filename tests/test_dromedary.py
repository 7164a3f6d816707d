"""Dromedary's expanded shards load as they are: same function as the unexpanded model at MP 1
and MP 3, and no padded vocabulary id is ever sampled or scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dromedary import expand_state, slice_bounds, write_expanded
from helpers import spawn

from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs

TEXT = "Explain why the sky looks blue. ### 你好"
# Tiny: dim 64, 4 heads of 16 (2 KV heads), FFN 160, vocab 512. Six heads, an FFN whose
# 3-way slices are uneven after rounding to 8 (72, 72, 60), and a vocab of 525 (176, 176, 173):
# all divisible by 3, so MP 3 loads; 64 is not, so the embedding is split by vocab row.
QKV, FFN, ROWS = 96, 204, 525


def tiny_state(tiny_dir: Path) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    args = ModelArgs.load(tiny_dir / "params.json")
    return load_rank_state(tiny_dir, args, rank=0, world=1), args


@pytest.fixture(scope="module")
def expanded_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    state, args = tiny_state(tiny_dir)
    big, params = expand_state(state, args, QKV, FFN, ROWS)
    out = tmp_path_factory.mktemp("dromedary") / "model"
    return write_expanded(big, params, out, 3, tiny_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def hostile_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Padded LM-head rows = twice the real rows (then zeros): for any hidden state the best
    padded logit beats the best real one, so only the cut keeps sampling on real tokens."""
    state, args = tiny_state(tiny_dir)
    rows = 2 * args.vocab_size + 8
    big, params = expand_state(state, args, QKV, FFN, rows)
    real = state["output.weight"]
    big["output.weight"][args.vocab_size : 2 * args.vocab_size] = 2 * real
    out = tmp_path_factory.mktemp("hostile") / "model"
    return write_expanded(big, params, out, 3, tiny_dir / "tokenizer.model")


def test_files_follow_dromedary_layout(expanded_dir: Path) -> None:
    params = json.loads((expanded_dir / "params.json").read_text())
    assert "n_kv_heads" not in params and params["vocab_size"] == -1
    shards = [
        torch.load(expanded_dir / f"consolidated.{r:02d}.pth", weights_only=True) for r in range(3)
    ]
    assert [s["layers.0.feed_forward.w1.weight"].shape[0] for s in shards] == [72, 72, 60]
    assert [s["tok_embeddings.weight"].shape for s in shards] == [(176, 64), (176, 64), (173, 64)]
    assert [s["layers.0.attention.wo.weight"].shape[1] for s in shards] == [32, 32, 32]
    assert slice_bounds(9216, 12, 11) == (8448, 9216)  # LLaMA-65B at MP 12: 768 per rank
    args = ModelArgs.load(expanded_dir / "params.json")
    assert (args.attn_heads, args.kv_heads, args.head_dim) == (6, 6, 16)
    assert (args.ffn_hidden_dim, args.vocab_rows) == (204, 525)


def test_expanded_equals_unexpanded_at_mp1(
    expanded_dir: Path, tiny: LoadedModel, single_rank: ParallelContext
) -> None:
    big = load_model(expanded_dir, single_rank)
    assert big.args.vocab_size == 512 and big.args.vocab_rows == 525
    ids = torch.tensor([tiny.tokenizer.encode(TEXT, bos=True)])
    logits = big.model(ids)
    assert logits.shape[-1] == 525
    torch.testing.assert_close(logits[..., :512], tiny.model(ids), rtol=0, atol=1e-5)
    assert logits[..., 512:].abs().max() == 0  # zero rows: logit 0, never a candidate


def test_expanded_equals_unexpanded_at_mp3(
    expanded_dir: Path, tiny: LoadedModel, tmp_path: Path
) -> None:
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    reference = tiny.model(torch.tensor([ids]))
    for result in spawn(3, expanded_dir, tmp_path, "logits", {"tokens": [ids]}):
        logits = torch.tensor(result["logits"])
        torch.testing.assert_close(logits[..., :512], reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_sampler_never_picks_a_padded_id(
    hostile_dir: Path, tiny: LoadedModel, single_rank: ParallelContext, temperature: float
) -> None:
    big = load_model(hostile_dir, single_rank)
    ids = torch.tensor([tiny.tokenizer.encode(TEXT, bos=True)])
    assert int(big.model(ids)[0, -1].argmax()) >= 512  # the trap is armed
    params = SamplingParams(temperature=temperature, top_p=0.95, max_new_tokens=12, seed=3)
    prompts = ["Explain why the sky looks blue.", "Name three colours.", "你好"]
    requests = [Request(str(i), tiny.tokenizer.encode(p, bos=True)) for i, p in enumerate(prompts)]

    def run(loaded: LoadedModel) -> dict[str, list[int]]:
        sampler = Sampler(loaded.model, loaded.tokenizer, max_batch=2)
        return {c.key: c.token_ids for c in sampler.generate(requests, params)}

    got = run(big)
    assert all(t < 512 for ids_ in got.values() for t in ids_)
    assert got == run(tiny) and sum(map(len, got.values())) > 12


def test_scorer_rejects_padded_ids_and_matches_real_ones(
    hostile_dir: Path, tiny: LoadedModel, single_rank: ParallelContext
) -> None:
    big = load_model(hostile_dir, single_rank)
    prompts = [tiny.tokenizer.encode(t, bos=True) for t in (TEXT, "Output (")]
    with pytest.raises(ValueError, match="outside the vocabulary of 512"):
        PrefixScorer(big.model).score(prompts, [5, 600])
    got = PrefixScorer(big.model).score(prompts, [5, 511])
    torch.testing.assert_close(
        got, PrefixScorer(tiny.model).score(prompts, [5, 511]), atol=1e-5, rtol=0
    )


def test_tokenizer_beyond_the_padded_vocab_is_an_error(
    tiny_dir: Path, tmp_path: Path, single_rank: ParallelContext
) -> None:
    state, args = tiny_state(tiny_dir)
    small = {
        k: v[:504] if k in ("tok_embeddings.weight", "output.weight") else v
        for k, v in state.items()
    }
    big, params = expand_state(small, args, QKV, FFN, 504)
    out = write_expanded(big, params, tmp_path / "model", 1, tiny_dir / "tokenizer.model")
    with pytest.raises(
        CheckpointError, match="tokenizer has 512 tokens but the model's embedding has 504"
    ):
        load_model(out, single_rank)


def test_world_size_must_divide_the_padded_sizes(expanded_dir: Path) -> None:
    args = ModelArgs.load(expanded_dir / "params.json").with_vocab(512)
    with pytest.raises(CheckpointError, match="not divisible by world size 2"):
        load_rank_state(expanded_dir, args, rank=0, world=2)  # 525 rows over 2 ranks


def test_inconsistent_expanded_params_are_refused() -> None:
    base = {"dim": 64, "n_layers": 1, "n_heads": 4}
    with pytest.raises(CheckpointError, match="multiple of the head size 16"):
        ModelArgs.from_dict(base | {"qkv_dim": 100})
    with pytest.raises(CheckpointError, match="repeat the KV heads"):
        ModelArgs.from_dict(base | {"qkv_dim": 96, "n_kv_heads": 2})
    with pytest.raises(CheckpointError, match="below vocab_size"):
        ModelArgs.from_dict(base | {"vocab_size": 512, "model_vocab_size": 500})


def test_ranks_read_only_their_part_of_uneven_file_slices(expanded_dir: Path) -> None:
    """Files cut at 72/72/60 rows, ranks at 68/68/68: each rank's tensor is built from the
    overlapping parts only, never from the whole joined tensor, and the parts add up."""
    args = ModelArgs.load(expanded_dir / "params.json").with_vocab(512)
    full = load_rank_state(expanded_dir, args, rank=0, world=1)
    ranks = [load_rank_state(expanded_dir, args, rank=r, world=3) for r in range(3)]
    for name, dim in [
        ("layers.0.feed_forward.w1.weight", 0),
        ("layers.1.feed_forward.w2.weight", 1),
    ]:
        parts = [state[name] for state in ranks]
        assert [p.shape[dim] for p in parts] == [68, 68, 68]
        torch.testing.assert_close(torch.cat(parts, dim=dim), full[name], rtol=0, atol=0)
        whole = full[name].numel() * full[name].element_size()
        assert all(p.untyped_storage().nbytes() < whole for p in parts)
    # the embedding: vocab rows in the files, split by vocab row on 3 ranks (64 % 3 != 0)
    rows = [state["tok_embeddings.weight"] for state in ranks]
    assert [r.shape for r in rows] == [(175, 64)] * 3
    torch.testing.assert_close(torch.cat(rows), full["tok_embeddings.weight"], rtol=0, atol=0)


def test_three_expanded_files_on_two_ranks(
    tiny_dir: Path, tiny: LoadedModel, tmp_path: Path
) -> None:
    """Resharding to another MP that divides the padded sizes: the vocabulary-split embedding
    of the files becomes Meta's dim-split one (64 % 2 == 0)."""
    state, args = tiny_state(tiny_dir)
    big, params = expand_state(state, args, QKV, FFN, 528)
    out = write_expanded(big, params, tmp_path / "model", 3, tiny_dir / "tokenizer.model")
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    reference = tiny.model(torch.tensor([ids]))
    for result in spawn(2, out, tmp_path, "logits", {"tokens": [ids]}):
        logits = torch.tensor(result["logits"])
        assert logits.shape[-1] == 528
        torch.testing.assert_close(logits[..., :512], reference, rtol=0, atol=1e-5)
