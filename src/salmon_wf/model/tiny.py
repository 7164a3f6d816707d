"""Create a tiny random-initialised LLaMA plus its own sentencepiece tokenizer (Meta layout).

Tests and the smoke workflow use it: it exercises every code path of the real models (GQA,
SwiGLU, rotary, model parallelism, byte-fallback tokenizer) in milliseconds per step. The
weights are drawn in full from one seeded generator and then split, so the same seed gives the
same model whatever --mp is.
"""

from __future__ import annotations

import argparse
import io
from importlib import resources
from pathlib import Path

import torch

from salmon_wf.model.checkpoint import expected_shapes, save_checkpoint
from salmon_wf.model.params import ModelArgs

TINY_SHAPE = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 160}
TINY_VOCAB = 512


def train_tokenizer(vocab_size: int = TINY_VOCAB) -> bytes:
    """A LLaMA-like sentencepiece BPE model (byte fallback, exact Unicode round trips)."""
    import sentencepiece as spm

    text = resources.files("salmon_wf.resources").joinpath("tiny_corpus.txt").read_text("utf-8")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def random_weights(args: ModelArgs, seed: int) -> dict[str, torch.Tensor]:
    """Scaled normal weights, larger than a trained model's on purpose.

    The output scale (2x) spreads logits wide (few near-ties, so sampled text is robust to last-bit
    differences). The 3x layer scale lets attention outweigh the residual stream: at 1x the
    judge's choice depends only on position and every judgment is position-inconsistent, which
    leaves the smoke workflow's aggregation with nothing to write.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(args).items():
        if name.endswith("norm.weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name == "tok_embeddings.weight":
            tensor = torch.randn(shape, generator=gen)
        else:
            scale = (2.0 if name == "output.weight" else 3.0) / shape[1] ** 0.5
            tensor = scale * torch.randn(shape, generator=gen)
        state[name] = tensor
    return state


def make_tiny_model(
    out_dir: str | Path, mp: int = 1, seed: int = 0, max_seq_len: int = 4096
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(train_tokenizer())
    args = ModelArgs(**TINY_SHAPE, vocab_size=TINY_VOCAB, max_seq_len=max_seq_len)
    save_checkpoint(random_weights(args, seed), args, out, mp=mp)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--mp", type=int, default=1, help="model-parallel shards to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-len", type=int, default=4096)


def run(args: argparse.Namespace) -> int:
    path = make_tiny_model(args.out_dir, mp=args.mp, seed=args.seed, max_seq_len=args.max_seq_len)
    print(f"tiny model written to {path}")
    return 0
