"""LoRA / QLoRA adapters: merged at import (HF base) or at load (Meta layout), equal to PEFT's
merge_and_unload; rsLoRA scale, subsets of targets, fan_in_fan_out, .bin adapters; clear errors."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import spawn
from hf_models import hf_logits, random_hf_model, save_hf

from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.hf_import import import_hf
from salmon_wf.model.loader import load_model
from salmon_wf.model.lora import load_adapters, merge_into_rank_state
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs

peft = pytest.importorskip("peft")

TEXT = "Explain why the sky looks blue, and why sunsets are red, in a few short sentences."
FIRST = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
SECOND = {
    "r": 8,
    "lora_alpha": 4,
    "use_rslora": True,  # scale alpha / sqrt(r) = 1.41, not alpha / r = 0.5
    "target_modules": ["k_proj", "o_proj", "gate_proj", "up_proj"],
}


def quiet(_message: str) -> None:
    return None


def make_adapter(base: Any, folder: Path, seed: int, **options: Any) -> Path:
    """A random PEFT LoRA (init_lora_weights=False: B is not zero) saved to `folder`."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(init_lora_weights=False, lora_dropout=0.0, **options)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn_like(param))
    model.save_pretrained(folder)
    return folder


def peft_merged(base: Any, adapters: list[Path]) -> Any:
    model = copy.deepcopy(base)
    for adapter in adapters:
        model = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


@pytest.fixture
def setup(tiny_dir: Path, tmp_path: Path) -> tuple[Any, Path, list[Path]]:
    base = random_hf_model("llama", seed=5)
    folder = save_hf(base, tmp_path / "base", tiny_dir)
    adapters = [
        make_adapter(base, tmp_path / "first", seed=6, **FIRST),
        make_adapter(base, tmp_path / "second", seed=7, **SECOND),
    ]
    return base, folder, adapters


def ids_for(model_dir: Path) -> list[int]:
    from salmon_wf.model.tokenizer import load_tokenizer

    return load_tokenizer(model_dir).encode(TEXT, bos=True)


def test_import_merge_equals_peft_merge_and_unload(
    setup: tuple[Any, Path, list[Path]], tmp_path: Path, single_rank: ParallelContext
) -> None:
    base, folder, adapters = setup
    out = import_hf(folder, tmp_path / "out", adapters=adapters, log=quiet)
    ids = ids_for(out)
    theirs = hf_logits(peft_merged(base, adapters), ids)
    ours = load_model(out, single_rank).model(torch.tensor([ids]))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (theirs - hf_logits(base, ids)).abs().max() > 0.1  # the adapters change the model
    only_first = hf_logits(peft_merged(base, adapters[:1]), ids)
    assert (theirs - only_first).abs().max() > 0.1  # and so does the rsLoRA one


def test_load_time_merge_into_a_meta_layout_model(
    setup: tuple[Any, Path, list[Path]], tmp_path: Path, single_rank: ParallelContext
) -> None:
    base, folder, adapters = setup
    plain = import_hf(folder, tmp_path / "plain", mp=2, log=quiet)
    ids = ids_for(plain)
    theirs = hf_logits(peft_merged(base, adapters), ids)
    loaded = load_model(plain, single_rank, adapters=adapters)
    torch.testing.assert_close(loaded.model(torch.tensor([ids])), theirs, rtol=1e-4, atol=1e-4)

    # Two gloo ranks, each merging into its own slice, give the same logits.
    work = tmp_path / "work"
    work.mkdir()
    spec = {"tokens": [ids], "adapters": [str(a) for a in adapters]}
    for result in spawn(2, plain, work, "logits", spec):
        torch.testing.assert_close(torch.tensor(result["logits"]), theirs, rtol=1e-4, atol=1e-4)

    # Each of two ranks merges only its slice: together they equal the one-rank merge.
    args = ModelArgs.load(plain / "params.json")
    merged = load_adapters(adapters, args)
    whole = load_rank_state(plain, args, 0, 1)
    merge_into_rank_state(whole, args, merged, 0, 1)
    parts = []
    for rank in range(2):
        state = load_rank_state(plain, args, rank, 2)
        merge_into_rank_state(state, args, merged, rank, 2)
        parts.append(state)
    for name in ("layers.0.attention.wk.weight", "layers.1.feed_forward.w2.weight"):
        dim = 0 if "wk" in name else 1
        joined = torch.cat([p[name] for p in parts], dim=dim)
        torch.testing.assert_close(joined, whole[name], rtol=0, atol=1e-6)


def test_bin_adapter_and_fan_in_fan_out_merge_like_peft(
    setup: tuple[Any, Path, list[Path]], tmp_path: Path, single_rank: ParallelContext
) -> None:
    """adapter_model.bin is read with weights_only; fan_in_fan_out: true (a Conv1D option PEFT
    turns off for nn.Linear) merges the same A/B exactly as PEFT does."""
    from safetensors.torch import load_file

    base, folder, adapters = setup
    binary = tmp_path / "binary"
    shutil.copytree(adapters[1], binary)
    state = load_file(binary / "adapter_model.safetensors")
    (binary / "adapter_model.safetensors").unlink()
    torch.save(state, binary / "adapter_model.bin")
    config = json.loads((binary / "adapter_config.json").read_text())
    (binary / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": True}))
    out = import_hf(folder, tmp_path / "out", adapters=[adapters[0], binary], log=quiet)
    ids = ids_for(out)
    theirs = hf_logits(peft_merged(base, [adapters[0], binary]), ids)
    ours = load_model(out, single_rank).model(torch.tensor([ids]))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def edit_config(adapter: Path, tmp_path: Path, **changes: Any) -> Path:
    copy_dir = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(adapter, copy_dir)
    config = json.loads((copy_dir / "adapter_config.json").read_text())
    (copy_dir / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return copy_dir


def test_mismatched_adapters_are_errors(
    setup: tuple[Any, Path, list[Path]], tmp_path: Path
) -> None:
    _base, folder, adapters = setup
    other = random_hf_model("llama", seed=8, hidden_size=32, num_attention_heads=2)
    wrong_base = make_adapter(other, tmp_path / "wrong", seed=9, **FIRST)
    deeper = random_hf_model("llama", seed=8, num_hidden_layers=3)
    too_deep = make_adapter(deeper, tmp_path / "deep", seed=9, r=2, target_modules=["o_proj"])
    cases = [
        (wrong_base, ["adapter_model.safetensors", "q_proj.lora_A.weight", "(4, 32)", "(64, 64)"]),
        (too_deep, ["layer 2", "has 2"]),
        (edit_config(adapters[0], tmp_path, bias="all"), ["bias 'all'"]),
        (edit_config(adapters[0], tmp_path, use_dora=True), ["use_dora"]),
        (edit_config(adapters[0], tmp_path, target_modules=["q_proj", "lm_head"]), ["lm_head"]),
        (
            edit_config(adapters[0], tmp_path, target_modules=["q_proj"]),
            ["down_proj", "does not list"],
        ),
        (edit_config(adapters[0], tmp_path, rank_pattern={"q_proj": 2}), ["rank_pattern"]),
        (edit_config(adapters[0], tmp_path, r=8), ["r 8", "(4, 64)"]),
        (tmp_path / "missing", ["adapter_config.json not found"]),
    ]
    for adapter, fragments in cases:
        with pytest.raises(CheckpointError) as info:
            import_hf(folder, tmp_path / "out", adapters=[adapter], log=quiet)
        for fragment in fragments:
            assert fragment in str(info.value), (adapter, str(info.value))
    assert not (tmp_path / "out").exists()
