"""The vectorised rendering's literals and lines against the Python calls they stand for."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from collections.abc import Iterator
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pytest

from salmon_wf.stages.aggregate.maths import decide, draw
from salmon_wf.stages.aggregate.render import PairTexts, Renderer
from salmon_wf.stages.aggregate.settings import Settings
from salmon_wf.stages.aggregate.tables import Pairs
from salmon_wf.stages.aggregate.texts import contains, float_reprs, json_insides, strings
from salmon_wf.stages.aggregate.write import PreferenceFiles, _Writer, preference_files

ODD_TEXTS = [
    "",
    "plain",
    'quote " and backslash \\ and slash /',
    "lines\nand\r\ntabs\t",
    "\b\f",
    "".join(chr(c) for c in range(32)),  # every control character
    "\x7f \u2028 \u2029 é ß 中文 \U0001f600",  # not escaped with ensure_ascii=False
    '\\"\\n',  # escapes already written out
    "\x00",
    "ends with a control \x1f",
]


def json_strings(texts: list[str]) -> list[str]:
    """The renderer's pieces hold the quotes; json_insides is what goes between them."""
    return [f'"{inside}"' for inside in json_insides(strings(texts)).to_pylist()]


def test_json_strings_are_encode_basestring() -> None:
    texts = [*ODD_TEXTS, "As an AI language model, " * 3, "x" * 5000]
    got = json_strings(texts)
    assert got == [encode_basestring(t) for t in texts]
    assert got == [json.dumps(t, ensure_ascii=False) for t in texts]
    assert json_strings(["no escapes", "here"]) == ['"no escapes"', '"here"']
    assert json_strings([]) == []


def test_float_reprs_are_pythons_repr() -> None:
    edge = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        1e-4,
        9.999999999999999e-05,
        1e-5,
        -1e-05,
        1e16,
        9999999999999998.0,
    ]
    edge += [1e15, 123456789012345.6, 0.1, 2 / 3, -4 / 3, 1e22, 1.5e300, 5e-324, sys.float_info.max]
    edge += [math.inf, -math.inf, 1234.5, 100.0, 3.0e-4, 0.00012345]
    rng = np.random.default_rng(7)
    wide = 10.0 ** rng.uniform(-8, 20, 20_000) * rng.choice([-1.0, 1.0], 20_000)
    bits = rng.integers(0, 2**63, 20_000, dtype=np.uint64).view(np.float64)
    bits = bits[np.isfinite(bits)]
    f32 = rng.normal(0, 1, 20_000).astype(np.float32).astype(np.float64) / 3.7
    values = np.concatenate([np.array(edge), wide, bits, f32, rng.normal(0, 2, 20_000)])
    assert float_reprs(values).to_pylist() == [repr(v) for v in values.tolist()]
    assert float_reprs(np.array([2.5, 0.5])).to_pylist() == ["2.5", "0.5"]  # no sign pass
    assert float_reprs(np.array([])).to_pylist() == []


def test_contains_is_a_plain_substring_test() -> None:
    texts = ["As an AI language model, no", "as an ai", "x (a.*) y", ""]
    assert contains(texts, "As an AI").tolist() == [True, False, False, False]
    assert contains(pa.array(texts), "(a.*)").tolist() == [False, False, True, False]


def _chunked_and_sliced(texts: list[str]) -> list[pa.ChunkedArray | pa.Array]:
    """The same texts as Arrow holds them after reads and slices: chunks, offsets not 0."""
    padded = pa.array(["pad ab", *texts, "ab pad"], pa.large_string()).slice(1, len(texts))
    thirds = [texts[: len(texts) // 3], texts[len(texts) // 3 : 2 * len(texts) // 3]]
    thirds.append(texts[2 * len(texts) // 3 :])
    parts = [pa.array(["x", *part], pa.large_string()).slice(1) for part in thirds]
    return [pa.chunked_array(parts), padded, pa.chunked_array([], pa.large_string())]


def test_contains_over_chunks_and_slices_is_pythons_in() -> None:
    rng = np.random.default_rng(3)
    alphabet = ["a", "b", "ab", "é", "中", " ", "\n"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 6))) for _ in range(3000)]
    for phrase in ["ab", "ba", "aab", "é中", "b ", "中文", "", "abababab"]:
        expected = [phrase in t for t in texts]
        chunked, sliced, empty = _chunked_and_sliced(texts)
        assert contains(chunked, phrase).tolist() == expected, phrase
        assert contains(sliced, phrase).tolist() == expected, phrase
        assert contains(empty, phrase).tolist() == []
    # A phrase only ever across the end of one row and the start of the next is in neither.
    assert contains(["xa", "by", "ab"], "ab").tolist() == [False, False, True]
    assert contains(["xab", "ab", ""], "ab").tolist() == [True, True, False]


def test_json_insides_over_chunks_and_slices() -> None:
    rng = np.random.default_rng(4)
    pieces = ["a", '"', "\\", "\n", "\x01", "\x1f", "é", " ", "\t"]
    texts = ["".join(rng.choice(pieces, rng.integers(0, 5))) for _ in range(2000)]
    texts[-1] = "late \x02 control"  # a rare control in the last chunk only
    chunked, sliced, _ = _chunked_and_sliced(texts)
    expected = [encode_basestring(t)[1:-1] for t in texts]
    assert json_insides(chunked).to_pylist() == expected
    assert json_insides(sliced).to_pylist() == expected
    plain = pa.chunked_array([pa.array(["no escapes"]), pa.array(["here", ""])])
    assert json_insides(plain) is plain


def test_lines_are_json_dumps_of_odd_records() -> None:
    """Every line equals json.dumps of its record, for texts that need every kind of escape."""
    n = len(ODD_TEXTS)
    dims = ("Concise", "Honest 'and' \"Quoted\"", "Ethical\\", "Specific")
    ids = [f"id-{i}\n" if i % 3 == 0 else f"id-{i}" for i in range(n)]
    output_1, output_2 = ODD_TEXTS[3:] + ODD_TEXTS[:3], ODD_TEXTS[5:] + ODD_TEXTS[:5]
    pairs = Pairs(
        pa.array(ids),
        ODD_TEXTS,
        ODD_TEXTS[::-1],
        pa.array(output_1),  # Arrow arrays or lists
        output_2,
        np.zeros((n, 4)),
        np.zeros((n, 4)),
    )
    renderer = Renderer(pairs, dims)
    names = ["en", "de", 'f"r']
    indices = [(0, 1 if i % 2 else 0, 2) for i in range(n)]
    renderer.set_languages(names, indices)
    codes = [[names[k] for k in row] for row in indices]
    settings = Settings(geometric_p=0.3)
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1, (n, 4)) * (rng.random((n, 4)) < 0.7)
    z[0, :] = 0.0
    z[1, 0] = 1e-7
    for _ in range(20):
        d = draw(rng, n, 4, settings)
        out = decide(z, d, np.zeros((n, 2), bool), None, settings)
        index = np.flatnonzero(out.keep)[::-1]
        lines = renderer.lines(index, d, out)
        rendered = renderer.jsonl(index, d, out)
        assert rendered.count == len(lines) == index.size
        assert rendered.jsonl.to_pybytes() == "".join(f"{line}\n" for line in lines).encode()
        assert rendered.items.to_pybytes() == "".join(f",\n{line}" for line in lines).encode()
        for line, i in zip(lines, index.tolist(), strict=True):
            k, swap = int(out.k[i]), bool(d.swap[i])
            first, second = (output_2, output_1) if swap else (output_1, output_2)
            lang = [codes[i][0], codes[i][2], codes[i][1]] if swap else list(codes[i])
            record = {
                "id": ids[i],
                "instruction": ODD_TEXTS[i],
                "input": ODD_TEXTS[::-1][i],
                "output_1": first[i],
                "output_2": second[i],
                "preference": int(out.preference[i]),
                "dimensions": str(tuple(dims[j] for j in d.order[i][:k])),
                "negative_definitions": str(tuple(int(b) for b in d.negate[i][:k])),
                "dimension_scores": str(tuple(out.scores[i][:k].tolist())),
                "doinate_dimension_idx": int(out.dominant[i]),
                "lang": lang,
                "flip": bool(out.noise_flip[i]),
                "rule_flag": bool(out.rule[i] > 0),
                "swapped": swap,
                "rule": ("none", "ai_language_model", "language")[int(out.rule[i])],
            }
            assert line == json.dumps(record, ensure_ascii=False)
    assert renderer.lines(np.array([], np.int64), d, out) == []
    empty = renderer.jsonl(np.array([], np.int64), d, out)
    assert empty.count == 0 and empty.jsonl.to_pybytes() == empty.items.to_pybytes() == b""


def test_a_renderer_of_every_candidate_kept_to_some_renders_as_one_of_those() -> None:
    """The stage encodes every candidate before it knows the kept pairs (Renderer.kept)."""
    texts = [f'text {i} "q"\n' for i in range(9)]
    outputs_1, outputs_2 = [t + "one" for t in texts], [t + "two" for t in texts]
    ids = [f"id-{i}" for i in range(9)]
    kept = np.array([1, 2, 5, 8])
    every = PairTexts(ids, texts, texts[::-1], outputs_1, outputs_2)
    chosen = PairTexts(*([column[i] for i in kept.tolist()] for column in every))
    names, codes = ["en", "de"], np.array([(0, i % 2, 1) for i in range(kept.size)])
    settings = Settings(geometric_p=0.3)
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1, (kept.size, 3))
    d = draw(rng, kept.size, 3, settings)
    out = decide(z, d, np.zeros((kept.size, 2), bool), None, settings)
    index = np.flatnonzero(out.keep)
    rendered = []
    for renderer in (
        Renderer(every, ("A", "B", "C")).kept(kept),
        Renderer(chosen, ("A", "B", "C")),
    ):
        renderer.set_languages(names, codes)
        rendered.append(renderer.lines(index, d, out))
    assert rendered[0] == rendered[1] and len(rendered[0]) == index.size > 0
    assert json.loads(rendered[0][0])["id"] == ids[int(kept[index[0]])]


def test_renderer_takes_chunked_and_empty_columns() -> None:
    """Columns as parsed (chunked, or with no chunk at all) render as one array does."""
    texts = ["a", 'b "q"', "c\n", "d"]
    chunked = pa.chunked_array([pa.array(texts[:1]), pa.array(texts[1:])])
    escaped = json_insides(strings(chunked)).to_pylist()
    assert [f'"{x}"' for x in escaped] == [encode_basestring(t) for t in texts]
    assert contains(chunked, '"q"').tolist() == [False, True, False, False]
    empty = pa.chunked_array([], pa.string())
    pairs = Pairs(empty, empty, empty, empty, empty, np.zeros((0, 2)), np.zeros((0, 2)))
    renderer = Renderer(pairs, ("Concise", "Honest"))
    renderer.set_languages([], np.zeros((0, 3), np.int32))
    d = draw(np.random.default_rng(0), 0, 2, Settings())
    out = decide(np.zeros((0, 2)), d, np.zeros((0, 2), bool), None, Settings())
    assert renderer.lines(np.array([], np.int64), d, out) == []


def test_a_failed_write_of_either_file_is_raised(tmp_path: Path) -> None:
    """Each file has its own writer thread; an error in either reaches the caller."""

    class Broken(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError("disk full")

    for broken in (0, 1):
        handles = [io.BytesIO(), io.BytesIO()]
        handles[broken] = Broken()
        files = PreferenceFiles(_Writer(handles[0]), _Writer(handles[1]))
        assert files.as_lines is not None
        with pytest.raises(OSError, match="disk full"), files.as_list, files.as_lines:
            files.write(['{"a": 1}', '{"a": 2}'])
        written = handles[1 - broken].getvalue()  # the other file's writer carried on
        assert written == [b'{"a": 1}\n{"a": 2}\n', b'\n{"a": 1},\n{"a": 2}'][broken]
    target = tmp_path / "p.json"
    with preference_files(target, tmp_path / "p.jsonl") as ok:
        ok.write(['{"a": 1}'])
    assert target.read_text() == '[\n{"a": 1}\n]\n'


def test_a_late_write_error_of_the_list_commits_neither_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list's last bytes are written when the block ends: if that fails, the JSONL copy
    (whose writer finished first) must not have been committed either."""
    import salmon_wf.stages.aggregate.write as write_module

    real = write_module.atomic_file

    @contextlib.contextmanager
    def failing_list(path: Path) -> Iterator[BinaryIO]:
        with real(path) as handle:
            if path.suffix == ".json":
                original = handle.write

                def write(data: bytes) -> int:
                    if bytes(data).endswith(b"]\n"):
                        raise OSError("disk full at the end")
                    return original(data)

                handle.write = write  # type: ignore[method-assign]
            yield handle

    monkeypatch.setattr(write_module, "atomic_file", failing_list)
    monkeypatch.setattr(write_module, "DIRECT_IO", False)  # writes through handle.write
    target, copy = tmp_path / "p.json", tmp_path / "p.jsonl"
    raises = pytest.raises(OSError, match="disk full at the end")
    with raises, write_module.preference_files(target, copy) as files:
        files.write(['{"a": 1}'])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither file, no temporaries
    # The same by direct I/O, where the list's last bytes go at the sink's close.
    monkeypatch.setattr(write_module, "atomic_file", real)
    monkeypatch.setattr(write_module, "DIRECT_IO", True)
    real_write_all = write_module._write_all

    def failing_end(fd: int, data: memoryview) -> None:
        if bytes(data).endswith(b"]\n"):
            raise OSError("disk full at the end")
        real_write_all(fd, data)

    monkeypatch.setattr(write_module, "_write_all", failing_end)
    with raises, write_module.preference_files(target, copy) as files:
        files.write(['{"a": 1}'])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _lines(n: int) -> list[str]:
    return [json.dumps({"id": i, "text": "é" * (i % 97)}, ensure_ascii=False) for i in range(n)]


def test_direct_writes_give_the_same_bytes_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines spanning many staging blocks (8 KiB here) come out byte for byte as buffered."""
    import fcntl
    import os

    import salmon_wf.stages.aggregate.write as write_module

    lines = _lines(3000)  # ~200 KB: ~25 blocks and a partial one
    expected_list = ("[\n" + ",\n".join(lines) + "\n]\n").encode()
    expected_jsonl = "".join(line + "\n" for line in lines).encode()
    real_write = os.write
    direct_writes: list[int] = []

    def counted(fd: int, data: memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(write_module, "STAGING", 8192)
    monkeypatch.setattr(write_module.os, "write", counted)
    for direct in (True, False):
        monkeypatch.setattr(write_module, "DIRECT_IO", direct)
        target, copy = tmp_path / f"{direct}.json", tmp_path / f"{direct}.jsonl"
        with write_module.preference_files(target, copy) as files:
            for start in range(0, len(lines), 700):
                files.write(lines[start : start + 700])
        assert target.read_bytes() == expected_list
        assert copy.read_bytes() == expected_jsonl
        assert json.loads(target.read_text()) == [json.loads(line) for line in lines]
        if direct and hasattr(os, "O_DIRECT"):  # whole blocks went direct, none buffered
            whole = len(expected_list) // 8192 + len(expected_jsonl) // 8192
            assert direct_writes == [8192] * whole


def test_a_refused_direct_write_falls_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that takes O_DIRECT's flag but refuses its writes (EINVAL) gets the same
    bytes buffered, from the refused block on."""
    import errno
    import fcntl
    import os

    import salmon_wf.stages.aggregate.write as write_module

    real_write = os.write
    refused: list[int] = []

    def picky(fd: int, data: memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(write_module, "STAGING", 8192)
    monkeypatch.setattr(write_module, "DIRECT_IO", True)
    monkeypatch.setattr(write_module.os, "write", picky)
    lines = _lines(1000)
    target = tmp_path / "p.json"
    with write_module.preference_files(target, None) as files:
        files.write(lines)
    assert target.read_bytes() == ("[\n" + ",\n".join(lines) + "\n]\n").encode()
    if hasattr(os, "O_DIRECT"):
        assert len(refused) == 1  # once, then the file's flags are buffered
