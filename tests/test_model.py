"""The model: cached decoding, model parallelism and resharding, an independent implementation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mp_worker import run_rank

from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.loader import LoadedModel
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.transformer import KVCache

TEXT = "Explain why the sky looks blue. ### 你好"


def spawn(world: int, model_dir: Path, tmp: Path, job: str, spec: dict) -> list[dict]:
    (tmp / "job.json").write_text(json.dumps(spec))
    args = (world, str(tmp / "store"), str(model_dir), str(tmp), job)
    mp.spawn(run_rank, args=args, nprocs=world, join=True)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


def test_cached_incremental_decoding_equals_full_forward(tiny: LoadedModel) -> None:
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    tokens = torch.tensor([ids, ids[::-1]])
    full = tiny.model(tokens)
    cache = KVCache.allocate(tiny.model, 2, len(ids) + 4)
    parts = [tiny.model(tokens[:, :5], 0, cache)]
    for pos in range(5, len(ids)):
        parts.append(tiny.model(tokens[:, pos : pos + 1], pos, cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-4)


def test_rows_at_different_positions_match_their_own_runs(tiny: LoadedModel) -> None:
    """Continuous batching: rows of one decode step sit at different positions and cache rows."""
    a = tiny.tokenizer.encode("short prompt", bos=True)
    b = tiny.tokenizer.encode("a much longer prompt than the other one", bos=True)
    cache = KVCache.allocate(tiny.model, 3, 64)
    tiny.model(torch.tensor([a]), 0, cache, torch.tensor([2]))
    tiny.model(torch.tensor([b]), 0, cache, torch.tensor([0]))
    step = tiny.model(
        torch.tensor([[7], [9]]), torch.tensor([len(a), len(b)]), cache, torch.tensor([2, 0])
    )
    alone_a = tiny.model(torch.tensor([[*a, 7]]))[0, -1]
    alone_b = tiny.model(torch.tensor([[*b, 9]]))[0, -1]
    torch.testing.assert_close(step[:, -1], torch.stack([alone_a, alone_b]), rtol=1e-5, atol=1e-4)


def test_lm_head_only_at_requested_positions(tiny: LoadedModel) -> None:
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    tokens = torch.tensor([ids, ids])
    full = tiny.model(tokens)
    picked = tiny.model(tokens, logits_at=torch.tensor([3, len(ids) - 1]))
    assert picked.shape == (2, tiny.args.vocab_size)
    torch.testing.assert_close(picked, torch.stack([full[0, 3], full[1, -1]]))


@pytest.mark.parametrize("ckpt", ["tiny_dir", "tiny_dir_mp2"])
def test_two_gloo_ranks_match_one_process(
    ckpt: str, request: pytest.FixtureRequest, tiny: LoadedModel, tmp_path: Path
) -> None:
    """MP=2 equals MP=1 (fp32, 1e-5) from an MP=1 checkpoint and from an MP=2 checkpoint."""
    model_dir = request.getfixturevalue(ckpt)
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    reference = tiny.model(torch.tensor([ids]))
    ranks = spawn(2, model_dir, tmp_path, "logits", {"tokens": [ids]})
    for result in ranks:
        torch.testing.assert_close(torch.tensor(result["logits"]), reference, rtol=0, atol=1e-5)


def test_mp2_checkpoint_loads_on_one_rank(tiny_dir: Path, tiny_dir_mp2: Path) -> None:
    args = ModelArgs.load(tiny_dir / "params.json")
    one = load_rank_state(tiny_dir, args, rank=0, world=1)
    two = load_rank_state(tiny_dir_mp2, args, rank=0, world=1)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert len(list(tiny_dir_mp2.glob("consolidated.*.pth"))) == 2


def test_hugging_face_llama_gives_the_same_logits(tiny: LoadedModel) -> None:
    """An independent implementation (transformers' LlamaForCausalLM) on the same weights."""
    transformers = pytest.importorskip("transformers")
    args = tiny.args
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.max_seq_len,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    state = load_rank_state(tiny.model_dir, args, 0, 1)

    def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
        """Meta's interleaved rotary pairs -> HF's half-split layout, per head."""
        out_dim, in_dim = w.shape
        per_head = w.view(heads, out_dim // heads // 2, 2, in_dim)
        return per_head.transpose(1, 2).reshape(out_dim, in_dim)

    hf_state = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    for i in range(args.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        hf_state |= {
            q + "self_attn.q_proj.weight": unpermute(
                state[p + "attention.wq.weight"], args.n_heads
            ),
            q + "self_attn.k_proj.weight": unpermute(
                state[p + "attention.wk.weight"], args.kv_heads
            ),
            q + "self_attn.v_proj.weight": state[p + "attention.wv.weight"],
            q + "self_attn.o_proj.weight": state[p + "attention.wo.weight"],
            q + "mlp.gate_proj.weight": state[p + "feed_forward.w1.weight"],
            q + "mlp.down_proj.weight": state[p + "feed_forward.w2.weight"],
            q + "mlp.up_proj.weight": state[p + "feed_forward.w3.weight"],
            q + "input_layernorm.weight": state[p + "attention_norm.weight"],
            q + "post_attention_layernorm.weight": state[p + "ffn_norm.weight"],
        }
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = torch.tensor([tiny.tokenizer.encode(TEXT, bos=True)])
    with torch.no_grad():
        theirs = hf(ids).logits
    ours = tiny.model(ids)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
