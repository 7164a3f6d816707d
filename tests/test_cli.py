"""The engine's commands as users run them: tiny-model, generate (plain and under torchrun)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from salmon_wf.cli import main
from salmon_wf.model.parallel import teardown_model_parallel

GENERATE = ["generate", "--prompt", "Tell me about the sea.", "--max-new-tokens", "12"]
GENERATE += ["--temperature", "0.8", "--seed", "5", "--style", "plain", "--no-stop"]


def test_tiny_model_command_writes_meta_layout(tmp_path: Path) -> None:
    assert main(["tiny-model", str(tmp_path / "m"), "--mp", "2", "--seed", "1"]) == 0
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["consolidated.00.pth", "consolidated.01.pth", "params.json", "tokenizer.model"]
    params = json.loads((tmp_path / "m" / "params.json").read_text())
    assert params["n_kv_heads"] == 2 and params["vocab_size"] == 512


def test_generate_prints_the_same_text_in_one_process_and_under_torchrun(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        assert main([*GENERATE, "--model", str(tiny_dir)]) == 0
    finally:
        teardown_model_parallel()
    single = capsys.readouterr().out
    assert len(single.strip()) > 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "salmon_wf.cli", *GENERATE, "--model", str(tiny_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == single  # rank 0 prints; MP=2 gives the same tokens
