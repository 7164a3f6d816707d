"""import-hf: tiny random transformers models of each family give transformers' logits and greedy
text at MP 1 and 2; rope scaling; every weight format; clear errors; bounded memory."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import spawn
from hf_models import (
    LLAMA3_SCALING,
    hf_greedy,
    hf_logits,
    random_hf_model,
    save_hf,
)

from salmon_wf.cli import main as cli_main
from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.errors import CheckpointError
from salmon_wf.model.hf_import import config_to_args, import_hf, to_meta_layout
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.synthetic import child_peak_rss, llama_config, write_random_checkpoint
from salmon_wf.model.tokenizer import load_tokenizer

pytest.importorskip("transformers")

PROMPT = "Explain why the sky looks blue, and why sunsets are red, in a few short sentences. "
CASES = {
    "llama": {},
    # LLaMA 3.1-style scaling, tied embeddings (SmolLM2 / Llama 3.2), a 2-token prompt is not
    # enough: the prompt below is ~60 tokens, well past the 16-position original context.
    "llama3": {"rope_scaling": LLAMA3_SCALING, "tie_word_embeddings": True},
    "llama_bias": {"attention_bias": True, "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "mistral": {"head_dim": 24},  # n_heads * head_dim = 96 != hidden 64
    "qwen2": {},  # q/k/v biases always on
}


def family(case: str) -> str:
    return case.split("_")[0].removesuffix("3")


def quiet(_message: str) -> None:
    return None


@pytest.fixture
def hf_dir(request: pytest.FixtureRequest, tiny_dir: Path, tmp_path: Path) -> tuple[object, Path]:
    case = request.param
    model = random_hf_model(family(case), seed=1, **CASES[case])
    return model, save_hf(model, tmp_path / f"hf-{case}", tiny_dir)


def prompt_ids(loaded: object) -> list[int]:
    return loaded.tokenizer.encode(PROMPT * 2, bos=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("hf_dir", list(CASES), indirect=True)
def test_logits_and_greedy_text_equal_transformers(
    hf_dir: tuple[object, Path], tmp_path: Path, single_rank: ParallelContext
) -> None:
    model, folder = hf_dir
    out = import_hf(folder, tmp_path / "out", log=quiet)
    loaded = load_model(out, single_rank)
    ids = prompt_ids(loaded)
    assert len(ids) > 50
    theirs = hf_logits(model, ids)
    ours = loaded.model(torch.tensor([ids]))
    assert theirs.abs().max() > 2  # real-scale logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    sampler = Sampler(loaded.model, loaded.tokenizer, max_batch=2)
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    (done,) = sampler.generate([Request("a", ids)], params)
    expected = hf_greedy(model, ids, 16)
    assert done.token_ids == expected
    assert done.text == loaded.tokenizer.decode(expected)


@pytest.mark.parametrize("hf_dir", ["llama3", "mistral", "qwen2", "llama_bias"], indirect=True)
def test_two_ranks_from_an_mp2_import_equal_transformers(
    hf_dir: tuple[object, Path], tmp_path: Path
) -> None:
    model, folder = hf_dir
    out = import_hf(folder, tmp_path / "out", mp=2, log=quiet)
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
    ]
    ids = load_tokenizer(out).encode(PROMPT * 2, bos=True)
    reference = hf_logits(model, ids)
    work = tmp_path / "work"
    work.mkdir()
    for result in spawn(2, out, work, "logits", {"tokens": [ids]}):
        torch.testing.assert_close(torch.tensor(result["logits"]), reference, rtol=1e-4, atol=1e-4)


def test_rope_scaling_matters_and_meta_use_scaled_rope_equals_hf_llama3(
    tiny_dir: Path, tmp_path: Path, single_rank: ParallelContext
) -> None:
    """Meta's params.json says only `use_scaled_rope: true` (factor 8, low 1, high 4, original
    8192): the same weights must give HF's llama3-scaled logits, and differ from unscaled ones."""
    meta_defaults = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    # head size 64 and theta 5e5 (LLaMA 3's): wavelengths up to ~3e6 cross 2048 and 8192.
    shape = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
    shape |= {"rope_theta": 500000.0, "max_position_embeddings": 16384}
    model = random_hf_model("llama", seed=3, rope_scaling=dict(meta_defaults), **shape)
    out = import_hf(save_hf(model, tmp_path / "hf", tiny_dir), tmp_path / "out", log=quiet)
    params = json.loads((out / "params.json").read_text())
    assert params["rope_scaling"] == meta_defaults
    params.pop("rope_scaling")
    meta = tmp_path / "meta"
    shutil.copytree(out, meta)
    (meta / "params.json").write_text(json.dumps({**params, "use_scaled_rope": True}))
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    (plain / "params.json").write_text(json.dumps(params))

    ids = load_model(meta, single_rank).tokenizer.encode(PROMPT * 6, bos=True)
    assert len(ids) > 150
    theirs = hf_logits(model, ids)
    scaled = load_model(meta, single_rank).model(torch.tensor([ids]))
    unscaled = load_model(plain, single_rank).model(torch.tensor([ids]))
    torch.testing.assert_close(scaled, theirs, rtol=1e-4, atol=1e-4)
    assert (unscaled - theirs).abs().max() > 1e-2


def write_bin(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """pytorch_model.bin, or `shards` files with pytorch_model.bin.index.json."""
    names = list(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: state[n].clone() for n in part}, folder / file)
        weight_map |= dict.fromkeys(part, file)
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_every_weight_format_gives_the_same_files(tiny_dir: Path, tmp_path: Path) -> None:
    model = random_hf_model("qwen2", seed=2)
    single = save_hf(model, tmp_path / "single", tiny_dir)
    sharded = save_hf(model, tmp_path / "sharded", tiny_dir, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    variants = [single, sharded]
    for shards in (1, 3):
        folder = tmp_path / f"bin{shards}"
        folder.mkdir()
        shutil.copy(single / "config.json", folder / "config.json")
        shutil.copy(single / "tokenizer.model", folder / "tokenizer.model")
        write_bin(folder, state, shards)
        variants.append(folder)
    outputs = [import_hf(v, tmp_path / f"out-{v.name}", mp=2, log=quiet) for v in variants]
    reference = [torch.load(p, weights_only=True) for p in sorted(outputs[0].glob("*.pth"))]
    for out in outputs[1:]:
        assert (out / "params.json").read_text() == (outputs[0] / "params.json").read_text()
        files = sorted(out.glob("*.pth"))
        assert len(files) == 2
        for expected, file in zip(reference, files, strict=True):
            got = torch.load(file, weights_only=True)
            assert got.keys() == expected.keys()
            for name in got:
                assert torch.equal(got[name], expected[name]), (out.name, name)
    # The weights are HF's, permuted (q/k) and sliced by rank, exactly.
    args = ModelArgs.load(outputs[0] / "params.json")
    wq = to_meta_layout(
        "layers.1.attention.wq.weight", state["model.layers.1.self_attn.q_proj.weight"], args
    )
    bk = to_meta_layout(
        "layers.1.attention.wk.bias", state["model.layers.1.self_attn.k_proj.bias"], args
    )
    assert torch.equal(torch.cat([r["layers.1.attention.wq.weight"] for r in reference]), wq)
    assert torch.equal(torch.cat([r["layers.1.attention.wk.bias"] for r in reference]), bk)
    assert not torch.equal(wq, state["model.layers.1.self_attn.q_proj.weight"])


def test_cli_bf16_mp2_files_are_plain_torch_save_zips(tiny_dir: Path, tmp_path: Path) -> None:
    model = random_hf_model("mistral", seed=4, head_dim=24)
    folder = save_hf(model, tmp_path / "hf", tiny_dir)
    out = tmp_path / "out"
    assert cli_main(["import-hf", str(folder), str(out), "--mp", "2", "--dtype", "bf16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "generation_config.json",
        "params.json",
        "tokenizer.model",
    ]
    params = json.loads((out / "params.json").read_text())
    assert (params["head_dim"], params["dim"], params["sliding_window"]) == (24, 64, 4096)
    state = model.state_dict()
    for rank, file in enumerate(sorted(out.glob("*.pth"))):
        with zipfile.ZipFile(file) as archive:
            assert archive.testzip() is None  # every CRC filled in
        shard = torch.load(file, weights_only=True)  # no mmap: the ordinary reader
        w2 = state["model.layers.0.mlp.down_proj.weight"].to(torch.bfloat16).chunk(2, dim=1)[rank]
        assert shard["layers.0.feed_forward.w2.weight"].dtype == torch.bfloat16
        assert torch.equal(shard["layers.0.feed_forward.w2.weight"], w2)
    assert not (tmp_path / "out.tmp").exists()
    assert cli_main(["import-hf", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 1


def edited(folder: Path, tmp_path: Path, **changes: object) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, ["yarn"]),
        (
            {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            ["dynamic"],
        ),
        ({"mlp_bias": True}, ["mlp_bias"]),
        ({"hidden_act": "gelu"}, ["hidden_act", "gelu"]),
        ({"attn_logit_softcapping": 50.0}, ["attn_logit_softcapping"]),
        ({"model_type": "gemma"}, ["model_type", "gemma"]),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, ["quantization_config"]),
        ({"num_hidden_layers": 3}, ["missing weight", "layers.2."]),
        ({"intermediate_size": 80}, ["mlp.down_proj", "(64, 96)", "implies (64, 80)"]),
    ],
)
def test_unsupported_or_mismatched_config_is_an_error(
    changes: dict, fragments: list[str], tiny_dir: Path, tmp_path: Path
) -> None:
    folder = save_hf(random_hf_model("llama"), tmp_path / "hf", tiny_dir)
    bad = edited(folder, tmp_path, **changes)
    with pytest.raises(CheckpointError) as info:
        import_hf(bad, tmp_path / "out", log=quiet)
    message = str(info.value)
    assert "config.json" in message or "safetensors" in message or str(bad) in message
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_quantised_or_duplicated_tensors_are_errors(tiny_dir: Path, tmp_path: Path) -> None:
    """A 4-bit (uint8-packed) base is refused by dtype; a tensor in two shards by name."""
    from safetensors.torch import load_file, save_file

    folder = save_hf(random_hf_model("llama"), tmp_path / "hf", tiny_dir, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.layers.0.mlp.up_proj.weight"
    file = folder / index["weight_map"][name]
    tensors = load_file(file)
    tensors[name] = torch.zeros(tensors[name].shape, dtype=torch.uint8)
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match=f"'{name}' has dtype U8; only float weights"):
        import_hf(folder, tmp_path / "out", log=quiet)
    tensors[name] = torch.zeros(tensors[name].shape)
    save_file(tensors, file)
    other = next(f for f in folder.glob("model-*.safetensors") if f != file)
    save_file({**load_file(other), name: tensors[name]}, other)
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is also in"):
        import_hf(folder, tmp_path / "out", log=quiet)


def test_mp_must_divide_heads(tiny_dir: Path, tmp_path: Path) -> None:
    folder = save_hf(random_hf_model("llama"), tmp_path / "hf", tiny_dir)
    with pytest.raises(CheckpointError, match="--mp 4 must divide"):
        import_hf(folder, tmp_path / "out", mp=4, log=quiet)


def test_sliding_window_below_the_context_is_refused(
    tiny_dir: Path, tmp_path: Path, single_rank: ParallelContext
) -> None:
    """Mistral's window caps the imported context; running past it is an error, not a guess."""
    model = random_hf_model("mistral", sliding_window=32)
    out = import_hf(save_hf(model, tmp_path / "hf", tiny_dir), tmp_path / "out", log=quiet)
    assert ModelArgs.load(out / "params.json").max_seq_len == 32
    load_model(out, single_rank)
    with pytest.raises(CheckpointError, match="sliding_window 32 is smaller than the context 64"):
        load_model(out, single_rank, max_seq_len=64)


def test_params_json_keys_are_known_or_listed(tiny_dir: Path) -> None:
    params = json.loads((tiny_dir / "params.json").read_text())
    assert ModelArgs.from_dict({**params, "max_batch_size": 32}).dim == params["dim"]
    for key in ("moe", "vision_chunk_size", "rope_scaling_factor"):
        with pytest.raises(CheckpointError, match=key):
            ModelArgs.from_dict({**params, key: 1}, "x/params.json")
    with pytest.raises(CheckpointError, match="rope_type 'yarn'"):
        ModelArgs.from_dict({**params, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    scaled = ModelArgs.from_dict({**params, "use_scaled_rope": True, "rope_scaling_factor": 32})
    assert scaled.rope_scaling == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert ModelArgs.from_dict(scaled.to_json()) == scaled


# A generated checkpoint of ~1.5 GB (fp32: 24 layers of dim 1024 plus two 32000-row matrices).
BIG = llama_config(dim=1024, layers=24, heads=16, ffn=2816, vocab=32000)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the child's /proc/self/status")
def test_import_streams_with_memory_bounded_by_a_few_tensors(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Importing a 1.5 GB checkpoint (MP 1, the worst case: one file holds everything) stays under
    the bare interpreter + torch (measured in a child the same way) + 4 x the largest tensor in
    fp32 (the 32000 x 1024 embedding, 131 MB): the tensor read, its cast copy, a slice and
    slack. That bound (~0.75 GB) is half the checkpoint; holding the model, as torch.save of a
    whole state dict would, needs 1.5 GB. Measured here: ~0.37 GB."""
    total = write_random_checkpoint(tmp_path / "big", BIG, tiny_dir / "tokenizer.model")
    assert total > 1.4e9
    largest = BIG["vocab_size"] * BIG["hidden_size"] * 4
    baseline = child_peak_rss("import torch, safetensors, salmon_wf.model.hf_import")
    code = (
        "from salmon_wf.model.hf_import import import_hf\n"
        f"import_hf({str(tmp_path / 'big')!r}, {str(tmp_path / 'out')!r}, log=None)\n"
    )
    peak = child_peak_rss(code)
    bound = baseline + 4 * largest
    print(
        f"\nimport of {total / 1e9:.2f} GB: peak RSS {peak / 1e6:.0f} MB, baseline "
        f"{baseline / 1e6:.0f} MB, bound {bound / 1e6:.0f} MB"
    )
    assert peak < bound
    assert bound < total / 1.8
    shard = torch.load(tmp_path / "out" / "consolidated.00.pth", weights_only=True, mmap=True)
    assert len(shard) == 2 + 24 * 9 + 1


# config.json of released models (weights not needed: the keys and values are what is parsed).
REAL_CONFIGS = {
    "SmolLM2-135M-Instruct": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "is_llama_config": True,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pad_token_id": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_interleaved": False,
        "rope_scaling": None,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
        "transformers_version": "4.42.3",
        "use_cache": True,
        "vocab_size": 49152,
    },
    "Llama-3.1-8B": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0.dev0",
        "use_cache": True,
        "vocab_size": 128256,
    },
    "Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0",
        "use_cache": True,
        "vocab_size": 32000,
    },
    "Qwen2.5-0.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 896,
        "initializer_range": 0.02,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 21,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_released_configs_parse_to_the_right_shape(name: str) -> None:
    notes: list[str] = []
    args = config_to_args(REAL_CONFIGS[name], f"{name}/config.json", notes.append)
    shapes = {
        "SmolLM2-135M-Instruct": (576, 30, 9, 3, 64, 1536, 49152, 8192, True, False, None),
        "Llama-3.1-8B": (4096, 32, 32, 8, 128, 14336, 128256, 131072, False, False, "llama3"),
        "Mistral-7B-v0.1": (4096, 32, 32, 8, 128, 14336, 32000, 4096, False, False, None),
        "Qwen2.5-0.5B-Instruct": (896, 24, 14, 2, 64, 4864, 151936, 32768, True, True, None),
    }
    got = (
        args.dim,
        args.n_layers,
        args.n_heads,
        args.kv_heads,
        args.head_dim,
        args.ffn_hidden_dim,
        args.vocab_size,
        args.max_seq_len,
        args.tie_word_embeddings,
        args.qkv_bias,
        (args.rope_scaling or {}).get("rope_type"),
    )
    assert got == shapes[name]
    assert args.sliding_window == (4096 if name.startswith("Mistral") else None)
    assert bool(notes) == name.startswith("Mistral")  # the window capped the context
