"""Meta-layout `consolidated.NN.pth` files written tensor by tensor, never held whole in memory.

`torch.save` needs every tensor of a file in memory at once: a 70B model at MP 1 would need
140 GB. Instead each rank's file is first saved with `torch.serialization.skip_data()` from
fake tensors (shapes and dtypes, no storage: nothing is allocated, so a node with strict
overcommit accepts it too), which writes the pickle, the zip records and the room for every
tensor's bytes. Each weight's slice is
then written at its record's offset as soon as it is converted, and the zip CRCs are filled in
at the end, so the result is an ordinary `torch.save` file (torch.load with weights_only, or
`unzip -t`, accept it). Peak memory is the tensor being converted, whatever the model size or MP.

torch.save numbers storages in the order the pickler meets them, which for a dict of distinct
tensors is insertion order: record `data/i` holds the i-th tensor. That order and every record's
size are checked against the layout before anything is written.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import split_dim
from salmon_wf.model.params import ModelArgs

_DATA_RECORD = re.compile(r"(?:.*/)?data/(\d+)")
_DESCRIPTOR_SIGNATURE = 0x08074B50
_CENTRAL_SIGNATURE = 0x02014B50


class ShardWriter:
    """Writes `mp` shard files for the weights in `shapes` (full shapes, Meta names)."""

    def __init__(
        self,
        out_dir: Path,
        args: ModelArgs,
        shapes: dict[str, tuple[int, ...]],
        mp: int,
        dtype: torch.dtype,
    ) -> None:
        self.args, self.mp, self.dtype = args, mp, dtype
        self.shapes = shapes
        self.dims = {name: split_dim(name, args, mp) for name in shapes}
        for name, shape in shapes.items():
            dim = self.dims[name]
            if dim is not None and shape[dim] % mp:
                raise CheckpointError(
                    f"{name}: dim {dim} of {shape} is not divisible by MP {mp} "
                    "(choose an --mp that divides it)"
                )
        self.paths = [out_dir / f"consolidated.{rank:02d}.pth" for rank in range(mp)]
        self.records: list[dict[str, tuple[int, int]]] = []  # name -> (data offset, nbytes)
        for path in self.paths:
            self.records.append(self._skeleton(path))
        self.crcs: list[dict[str, int]] = [{} for _ in range(mp)]
        self.handles: list[BinaryIO] = [open(path, "r+b") for path in self.paths]  # noqa: SIM115

    def slice_shape(self, name: str) -> tuple[int, ...]:
        shape, dim = list(self.shapes[name]), self.dims[name]
        if dim is not None:
            shape[dim] //= self.mp
        return tuple(shape)

    def rank_bytes(self) -> int:
        """Bytes of one rank's weights in the stored dtype (every rank holds the same amount)."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return sum(_numel(self.slice_shape(name)) * size for name in self.shapes)

    def _skeleton(self, path: Path) -> dict[str, tuple[int, int]]:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():  # shapes and dtypes only: nothing is allocated, even virtually
            layout = {n: torch.empty(self.slice_shape(n), dtype=self.dtype) for n in self.shapes}
        with torch.serialization.skip_data(materialize_fake_tensors=True):
            torch.save(layout, path)
        size = torch.empty((), dtype=self.dtype).element_size()
        sizes = [_numel(self.slice_shape(n)) * size for n in self.shapes]
        del layout
        offsets = _data_offsets(path)
        if sorted(offsets) != list(range(len(sizes))):
            raise RuntimeError(f"{path}: torch.save wrote records {sorted(offsets)[:5]}...")
        records = {}
        for i, name in enumerate(self.shapes):
            offset, nbytes = offsets[i]
            if nbytes != sizes[i]:
                raise RuntimeError(f"{path}: record data/{i} is {nbytes} bytes, not {sizes[i]}")
            records[name] = (offset, nbytes)
        return records

    def write(self, name: str, full: torch.Tensor) -> None:
        """Store weight `name` (full shape, any float dtype): each rank's slice goes to its file."""
        if tuple(full.shape) != self.shapes[name]:
            raise CheckpointError(
                f"{name}: shape {tuple(full.shape)}, expected {self.shapes[name]}"
            )
        if name in self.crcs[0]:
            raise RuntimeError(f"{name} written twice")
        dim = self.dims[name]
        if dim is None:
            full = full.to(self.dtype)
        parts = [full] * self.mp if dim is None else list(full.chunk(self.mp, dim=dim))
        for rank, part in enumerate(parts):
            # Cast and slice in one copy (a column slice is not contiguous: .to makes it so).
            data = part.to(self.dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
            offset, nbytes = self.records[rank][name]
            if data.nbytes != nbytes:
                raise RuntimeError(f"{name}: {data.nbytes} bytes for a {nbytes}-byte record")
            handle = self.handles[rank]
            handle.seek(offset)
            handle.write(data.data)
            self.crcs[rank][name] = zlib.crc32(data.data)

    def close(self) -> None:
        """Check every weight was written, fill in the CRCs and close the files."""
        missing = [n for n in self.shapes if n not in self.crcs[0]]
        for handle in self.handles:
            handle.close()
        if missing:
            raise RuntimeError(f"weights never written: {missing[:5]}")
        for rank, path in enumerate(self.paths):
            by_index = {i: self.crcs[rank][name] for i, name in enumerate(self.shapes)}
            _patch_crcs(path, by_index)

    def abort(self) -> None:
        for handle in self.handles:
            handle.close()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _data_offsets(path: Path) -> dict[int, tuple[int, int]]:
    """Record number -> (offset of its bytes in the file, size) for every `data/N` record."""
    out = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            match = _DATA_RECORD.fullmatch(info.filename)
            if not match:
                continue
            f.seek(info.header_offset)
            header = f.read(30)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            out[int(match.group(1))] = (
                info.header_offset + 30 + name_len + extra_len,
                info.file_size,
            )
    return out


def _patch_crcs(path: Path, crcs: dict[int, int]) -> None:
    """Write each data record's CRC-32 into its data descriptor and its central-directory entry.

    torch's writer puts sizes and CRC in a data descriptor after the bytes (flag bit 3); with
    skip_data the CRC there is 0. torch.load ignores it; zip tools check it.
    """
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        central = archive.start_dir
    with open(path, "r+b") as f:
        for info in infos:
            match = _DATA_RECORD.fullmatch(info.filename)
            f.seek(central)
            entry = f.read(46)
            if struct.unpack("<I", entry[:4])[0] != _CENTRAL_SIGNATURE:
                raise RuntimeError(f"{path}: unexpected central directory layout")
            name_len, extra_len, comment_len = struct.unpack("<HHH", entry[28:34])
            if match:
                crc = struct.pack("<I", crcs[int(match.group(1))])
                f.seek(central + 16)
                f.write(crc)
                f.seek(info.header_offset)
                header = f.read(30)
                flags = struct.unpack("<H", header[6:8])[0]
                data_end = info.header_offset + 30 + sum(struct.unpack("<HH", header[26:30]))
                data_end += info.file_size
                if flags & 0x8:
                    f.seek(data_end)
                    signature = struct.unpack("<I", f.read(4))[0]
                    f.seek(data_end + 4 if signature == _DESCRIPTOR_SIGNATURE else data_end)
                else:
                    f.seek(info.header_offset + 14)
                f.write(crc)
            central += 46 + name_len + extra_len + comment_len
