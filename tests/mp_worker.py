"""Runs in spawned ranks (gloo, FileStore: no ports): loads a model and saves rank 0's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import setup_model_parallel, teardown_model_parallel


def run_rank(
    rank: int, world: int, store_path: str, model_dir: str, out_dir: str, job: str
) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    ctx = setup_model_parallel("cpu", store=store, rank=rank, world_size=world)
    try:
        spec = json.loads(Path(out_dir, "job.json").read_text())
        loaded = load_model(model_dir, ctx, adapters=spec.get("adapters", ()))
        result: dict = {}
        if job == "logits":
            tokens = torch.tensor(spec["tokens"])
            result["logits"] = loaded.model(tokens).tolist()
        elif job == "sample":
            sampler = Sampler(loaded.model, loaded.tokenizer, max_batch=spec["batch"])
            params = SamplingParams(**spec["params"])
            requests = [Request(k, ids) for k, ids in spec["requests"]]
            result["texts"] = {c.key: c.text for c in sampler.generate(requests, params)}
        elif job == "score":
            scorer = PrefixScorer(loaded.model, max_rows=3)
            result["scores"] = scorer.score(spec["prompts"], spec["ids"]).tolist()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        teardown_model_parallel()
