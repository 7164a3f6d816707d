"""Hugging Face weight files read one tensor at a time: safetensors or PyTorch `.bin` pickles.

Both formats are memory-mapped by their readers, and a mapped page that was read stays resident
(and counts in the process's memory) for as long as the mapping lives. So every `read` opens the
file, copies the one tensor out and closes it again: what stays in memory is that copy, never the
rest of a multi-gigabyte shard. Headers are read once, up front, for names, shapes and dtypes, so
every check runs before any weight is read. `.bin` files are loaded only with
`torch.load(weights_only=True, mmap=True)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import load_weights

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorFiles:
    """Name -> tensor over one or several files of one format (a checkpoint or an adapter)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.info: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in _list_file(file).items():
                if name in self.info:
                    raise CheckpointError(
                        f"{file}: tensor '{name}' is also in {self.info[name].file}"
                    )
                self.info[name] = info

    @property
    def names(self) -> list[str]:
        return list(self.info)

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(i) for i in self.info.values())

    def read(self, name: str) -> torch.Tensor:
        """A fresh CPU tensor (not a view of a mapping that outlives this call)."""
        info = self.info[name]
        if info.file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(info.file), framework="pt") as f:
                    tensor = f.get_tensor(name)
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise CheckpointError(
                    f"cannot read tensor '{name}' ({exc})", file=info.file
                ) from exc
        else:
            state = load_weights(info.file)
            tensor = state[name].clone()
            del state
        if tuple(tensor.shape) != info.shape:
            raise CheckpointError(f"{info.file}: tensor '{name}' changed shape while reading")
        return tensor


def _nbytes(info: TensorInfo) -> int:
    count = 1
    for d in info.shape:
        count *= d
    return count * torch.empty((), dtype=info.dtype).element_size()


def _list_file(file: Path) -> dict[str, TensorInfo]:
    if not file.is_file():
        raise CheckpointError(f"{file}: weight file not found")
    out: dict[str, TensorInfo] = {}
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is no dict)
                    part = f.get_slice(name)
                    kind = part.get_dtype()
                    if kind not in _SAFETENSORS_DTYPES:
                        raise CheckpointError(
                            f"{file}: tensor '{name}' has dtype {kind}; only float weights "
                            f"({', '.join(_SAFETENSORS_DTYPES)}) are supported (a quantised "
                            "base must be dequantised first)"
                        )
                    out[name] = TensorInfo(file, tuple(part.get_shape()), _SAFETENSORS_DTYPES[kind])
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
        return out
    for name, tensor in load_weights(file).items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{file}: tensor '{name}' has dtype {tensor.dtype}")
        out[name] = TensorInfo(file, tuple(tensor.shape), tensor.dtype)
    return out


def _from_index(index: Path) -> TensorFiles:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a weight index (no weight_map: {exc})") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map must be a non-empty object")
    files = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    tensors = TensorFiles(files)
    listed, found = set(weight_map), set(tensors.info)
    if listed != found:
        diff = sorted(listed ^ found)[:5]
        raise CheckpointError(f"{index}: weight_map and the files' tensors differ ({diff})")
    for name, file in weight_map.items():
        if tensors.info[name].file.name != Path(file).name:
            raise CheckpointError(f"{index}: '{name}' is listed in {file}, found elsewhere")
    return tensors


def open_weights(folder: Path, stem: str) -> TensorFiles:
    """`stem`.safetensors, its sharded index, `pytorch_`stem.bin or its index (in that order).

    stem is "model" for a model folder, "adapter_model" for a PEFT adapter.
    """
    bin_stem = "pytorch_model" if stem == "model" else stem
    candidates = [
        (folder / f"{stem}.safetensors.index.json", True),
        (folder / f"{stem}.safetensors", False),
        (folder / f"{bin_stem}.bin.index.json", True),
        (folder / f"{bin_stem}.bin", False),
    ]
    for path, is_index in candidates:
        if path.is_file():
            return _from_index(path) if is_index else TensorFiles([path])
    names = ", ".join(p.name for p, _ in candidates)
    raise CheckpointError(f"{folder}: no weights found (looked for {names})")
