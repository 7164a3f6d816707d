"""Shared fixtures: tiny models built once per session, a world-size-1 model-parallel context."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import HAVE_SMOLLM2, write_jsonl

from salmon_wf.model.gguf_import import SMOLLM2_PACKAGE, import_gguf
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext, setup_model_parallel, teardown_model_parallel
from salmon_wf.model.tiny import make_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct imported once per session (dequantising takes a few seconds)."""
    if not HAVE_SMOLLM2:
        pytest.skip(f"{SMOLLM2_PACKAGE} is not installed")
    out = tmp_path_factory.mktemp("smollm2") / "model"
    start = time.perf_counter()
    import_gguf("smollm2", out, mp=1, log=lambda _message: None)
    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    print(f"\nSmolLM2 import at mp 1: {time.perf_counter() - start:.1f} s, files {sizes}")
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-mp1"), mp=1, seed=0)


@pytest.fixture(scope="session")
def tiny_dir_mp2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-mp2"), mp=2, seed=0)


@pytest.fixture
def single_rank() -> Iterator[ParallelContext]:
    ctx = setup_model_parallel("cpu")
    yield ctx
    teardown_model_parallel()


@pytest.fixture
def tiny(tiny_dir: Path, single_rank: ParallelContext) -> LoadedModel:
    return load_model(tiny_dir, single_rank)


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two sampling runs (run 1 lacks p0, has an extra id; p3 is short) and their prompts."""
    answers = [
        "Bread needs flour, water, salt and yeast.",
        "Trains run on rails between cities.",
        "Sleep helps the body recover.",
        "ok",
        "The sea is salty because of minerals.",
    ]
    run0 = [
        {"id": f"p{i}", "instruction": f"Question {i}?", "input": "", "response": a}
        for i, a in enumerate(answers)
    ]
    run1 = [dict(r, response=r["response"][::-1] + " More words here.") for r in run0]
    run1 = [*run1[1:][::-1], {"id": "extra", "instruction": "x", "response": "only in run 1"}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": r["id"]} for r in run0])
    return (
        write_jsonl(tmp_path / "r0.jsonl", run0),
        write_jsonl(tmp_path / "r1.jsonl", run1),
        prompts,
    )
