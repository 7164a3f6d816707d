"""model.source hf in the workflow helpers: the conversion command and the source fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from salmon_wf.workflow import conversion_command, model_source_stamps


def hf_model(tmp_path: Path, adapters: list[str]) -> dict:
    return {"source": "hf", "path": str(tmp_path / "my model"), "mp": 2, "dtype": "bf16"} | {
        "adapters": adapters
    }


def test_hf_command_quotes_paths_and_keeps_adapter_order(tmp_path: Path) -> None:
    model = hf_model(tmp_path, ["b dir", "a"])
    command = conversion_command(model, "models/x y", "PY -m salmon_wf.cli")
    assert command == (
        f"PY -m salmon_wf.cli import-hf '{tmp_path}/my model' 'models/x y' --mp 2 --dtype bf16"
        " --adapter 'b dir' --adapter a"
    )


def test_adapter_content_changes_the_stamps(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    (tmp_path / "my model").mkdir()
    model = hf_model(tmp_path, [str(adapter)])
    before = model_source_stamps(model)
    (adapter / "adapter_model.safetensors").write_bytes(b"two")
    after = model_source_stamps(model)
    assert before["stamp"] == after["stamp"] and before["adapter_stamps"] != after["adapter_stamps"]
    assert "adapter_stamps" not in model_source_stamps(hf_model(tmp_path, []))
    with pytest.raises(ValueError, match=r"model\.adapters needs model\.source: hf"):
        model_source_stamps(model | {"source": "gguf"})
