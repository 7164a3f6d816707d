"""Shared fixtures: tiny models built once per session, a world-size-1 model-parallel context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext, setup_model_parallel, teardown_model_parallel
from salmon_wf.model.tiny import make_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


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
