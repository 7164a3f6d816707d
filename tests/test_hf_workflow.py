"""The smoke workflow on `model.source: hf`: a tiny HF LlamaForCausalLM + a PEFT LoRA adapter
converted by prepare_model (import-hf), sampled with the tokenizer's chat template; a changed
adapter file reruns the conversion and everything after it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import planned_jobs, snakemake, write_config
from hf_tiny import write_hf_llama, write_lora_adapter

from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.engine.chat import encode_chat
from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.tiny import make_tiny_model
from salmon_wf.model.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EVERYTHING_AFTER_THE_MODEL = Counter(
    prepare_model=1,
    sample_shard=4,
    gather_responses=2,
    fingerprint=4,  # both runs', the pairs' and the judge's stamps
    pair_responses=1,
    languages=1,
    pairs_table=1,
    judge_shard=2,
    gather_judgments=1,
    aggregate=1,
    ledger=1,
    report_figures=1,
)


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("hf-workflow")
    meta = make_tiny_model(root / "meta", mp=1, seed=0)
    hf_dir = write_hf_llama(meta, root / "hf")
    adapter = write_lora_adapter(hf_dir, root / "adapter")
    changes = {
        "model.name": "hf-tiny",
        "model.source": "hf",
        "model.path": str(hf_dir),
        "model.adapters": [str(adapter)],
        "sampling.defaults.style": "chat_template",
    }
    workdir = root / "work"
    workdir.mkdir()
    write_config(workdir, **changes)
    snakemake(workdir, "--cores", "2")
    return workdir, changes | {"meta": meta, "adapter": adapter}


def test_hf_source_converts_merges_and_samples_with_the_chat_template(hf_run) -> None:
    workdir, settings = hf_run
    model_dir = workdir / "models" / "hf-tiny"
    args = ModelArgs.load(model_dir / "params.json")
    ours = load_rank_state(model_dir, args.with_vocab(512), 0, 1)
    base = load_rank_state(settings["meta"], ModelArgs.load(settings["meta"] / "params.json"), 0, 1)
    for layer in range(args.n_layers):
        p = f"layers.{layer}.attention."
        assert not torch.allclose(ours[p + "wq.weight"], base[p + "wq.weight"], atol=1e-3)
        assert not torch.allclose(ours[p + "wv.weight"], base[p + "wv.weight"], atol=1e-3)
        torch.testing.assert_close(ours[p + "wk.weight"], base[p + "wk.weight"])  # not targeted
    log = (workdir / "logs" / "prepare_model" / "hf-tiny.log").read_text()
    assert "1 adapter(s)" in log
    prompts = list(read_jsonl(workdir / "results" / "prompts.jsonl"))
    tok = load_tokenizer(model_dir)
    meta = (REPO / "src/salmon_wf/resources/meta_prompt.txt").read_text().rstrip("\n")
    by_id = {p["id"]: p for p in prompts}
    for run in ("response0", "response1"):
        records = list(read_jsonl(workdir / "results" / "responses" / f"{run}.jsonl"))
        assert [r["id"] for r in records] == [p["id"] for p in prompts]
        first = by_id[records[0]["id"]]
        ids = encode_chat(tok, first["instruction"], first.get("input", ""), meta)
        assert ids[:2] != [tok.bos_id, tok.bos_id] and ids[0] == tok.bos_id
        assert records[0]["n_prompt_tokens"] == len(ids)
    judgments = list(read_jsonl(workdir / "results" / "judgments.jsonl"))
    pairs = list(read_jsonl(workdir / "results" / "pairs.jsonl"))
    principles = json.loads((REPO / "src/salmon_wf/resources/principles.json").read_text())
    assert len(judgments) == len(pairs) * len(principles) > 0
    assert (workdir / "results" / "preferences.json").is_file()


def test_changed_adapter_reruns_conversion_and_everything_after(hf_run) -> None:
    from safetensors.torch import load_file, save_file

    workdir, settings = hf_run
    write_config(workdir, **{k: v for k, v in settings.items() if "." in k})
    assert planned_jobs(workdir) == Counter()
    weights = settings["adapter"] / "adapter_model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    save_file({k: 2 * v if "lora_B" in k else v for k, v in tensors.items()}, weights)
    assert planned_jobs(workdir) == EVERYTHING_AFTER_THE_MODEL
    weights.write_bytes(original)  # the same content as before: nothing to do again
    assert planned_jobs(workdir) == Counter()
