"""What the importers (import-gguf, import-hf) share: the output directory and storage dtypes.

An import writes into OUT_DIR.tmp and renames it to OUT_DIR only once every file is written, so a
killed run never leaves a complete-looking OUT_DIR; an existing OUT_DIR is replaced only when it
holds nothing but files an import writes.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from salmon_wf.errors import CheckpointError, ConfigError
from salmon_wf.model.dtypes import DTYPES

# Files an import writes: an existing OUT_DIR holding only these may be replaced.
OUTPUT_FILES = re.compile(
    r"params\.json|consolidated\.\d+\.pth|tokenizer(_config)?\.json|tokenizer\.model"
    r"|special_tokens_map\.json|generation_config\.json|chat_template\.jinja"
)


def rename_tensor(
    name: str,
    global_names: dict[str, str],
    layer_tensor: re.Pattern[str],
    layer_names: dict[str, str],
) -> str | None:
    """Meta-layout key of a foreign tensor name: a global one, or a layer tensor whose pattern
    captures (layer, module, weight|bias). None for names the model does not have."""
    if name in global_names:
        return global_names[name]
    match = layer_tensor.fullmatch(name)
    if match and match.group(2) in layer_names:
        return f"layers.{match.group(1)}.{layer_names[match.group(2)]}.{match.group(3)}"
    return None


def check_out_dir(out: Path) -> None:
    """Refuse to replace a directory holding anything an import did not write."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not OUTPUT_FILES.fullmatch(p.name)]
        if foreign:
            raise CheckpointError(
                f"{out}: not empty and not a model directory ({', '.join(sorted(foreign)[:5])}); "
                "refusing to replace it"
            )


def fresh_tmp_dir(out: Path) -> Path:
    """An empty OUT_DIR.tmp (one left by a killed run is removed)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished OUT_DIR.tmp to OUT_DIR, replacing an older import there."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def add_output_arguments(parser: argparse.ArgumentParser, dtype_note: str = "") -> None:
    """OUT_DIR, --mp and --dtype, the same for every import command."""
    parser.add_argument("out_dir", type=Path, help="model directory to create (or replace)")
    parser.add_argument("--mp", type=int, default=1, help="model-parallel shards to write")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help=f"dtype of the stored weights ({dtype_note}the loader casts to its own dtype)",
    )


def check_dtype_and_mp(dtype: str, mp: int) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"must be one of {sorted(DTYPES)}, got {dtype!r}", field="--dtype")
    if mp < 1:
        raise ConfigError(f"must be at least 1, got {mp}", field="--mp")
