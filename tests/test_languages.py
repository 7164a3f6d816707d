"""`salmon-wf languages` (pairs.languages.jsonl) and the aggregation reading it (--languages)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_aggregate import LANG_PAIRS, USED, principles_file, write_inputs

from salmon_wf import cli
from salmon_wf.errors import RecordError

TEXTS = [
    {
        "id": "en-de-none",
        "instruction": "How can I keep basil fresh for longer in my kitchen?",
        "output_1": "Stellen Sie die Stiele in ein Glas Wasser, nicht in den Kühlschrank.",
        "output_2": "1234 !!!",
        "scores": {d: (1.5, 0.5) for d in USED},
    },
    {
        "id": 'ünïcode "id"',
        "instruction": "Wie lange muss ich Spaghetti kochen, damit sie al dente sind?",
        "output_1": "",
        "output_2": "Cook them for about eight to ten minutes and taste one before you drain them.",
        "scores": {d: (-1.5, -0.5) for d in USED},
    },
]


def languages(pairs: Path, output: Path, *flags: str) -> list[str]:
    argv = ["languages", "--pairs", str(pairs), "--output", str(output), "--workers", "1"]
    assert cli.run_command([*argv, *flags]) == 0
    return output.read_text(encoding="utf-8").splitlines()


def aggregate(tmp_path: Path, inputs: tuple[Path, Path, Path], out: Path, *flags: str) -> None:
    pairs, summary, judgments = inputs
    argv = ["aggregate", "--pairs", str(pairs), "--pairs-summary", str(summary)]
    argv += ["--judgments", str(judgments), "--principles", str(principles_file(tmp_path))]
    argv += ["--output", str(out / "preferences.json")]
    argv += ["--output-jsonl", str(out / "preferences.jsonl"), "--stats", str(out / "stats.json")]
    assert cli.run_command([*argv, "--workers", "1", *flags]) == 0


def test_one_line_per_pair_in_order_null_without_letters(tmp_path: Path) -> None:
    pairs, _, _ = write_inputs(tmp_path, TEXTS)
    lines = languages(pairs, tmp_path / "pairs.languages.jsonl")
    assert lines == [
        '{"id": "en-de-none", "instruction": "en", "output_1": "de", "output_2": null}',
        '{"id": "ünïcode \\"id\\"", "instruction": "de", "output_1": null, "output_2": "en"}',
    ]
    # --langid-max-chars: the identifier reads only the heads ("St", "Wi": other guesses).
    short = languages(pairs, tmp_path / "short.jsonl", "--langid-max-chars", "2")
    assert json.loads(short[0])["output_1"] != "de" and json.loads(short[1])["instruction"] != "de"


def test_aggregate_reading_the_file_writes_the_same_bytes(tmp_path: Path) -> None:
    """The codes read from the file are the aggregation's own: the same outputs, byte for byte."""
    unjudged = {"id": "unjudged", "scores": {}, "instruction": LANG_PAIRS[-1]["instruction"]}
    judged = [p | {"scores": {d: (1.5, 0.5) for d in USED}} for p in LANG_PAIRS]
    inputs = write_inputs(tmp_path, [unjudged, *judged, *TEXTS])
    codes = tmp_path / "pairs.languages.jsonl"
    languages(inputs[0], codes)
    flags = ("--passes", "8", "--noise", "0", "--rule-noise", "0")
    aggregate(tmp_path, inputs, tmp_path / "detected", *flags)
    aggregate(tmp_path, inputs, tmp_path / "read", *flags, "--languages", str(codes))
    for name in ("preferences.json", "preferences.jsonl", "stats.json"):
        detected = (tmp_path / "detected" / name).read_bytes()
        assert detected == (tmp_path / "read" / name).read_bytes(), name
    stats = json.loads((tmp_path / "read" / "stats.json").read_text())
    assert stats["skipped"]["language"] == 8  # the language rule saw the file's codes


def edited(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_file_of_other_pairs_names_its_line_and_field(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, [*TEXTS, LANG_PAIRS[0] | {"scores": {"Concise": (1, 1)}}])
    codes = tmp_path / "pairs.languages.jsonl"
    lines = languages(inputs[0], codes)
    cases = {
        "swapped": ([lines[1], lines[0], lines[2]], "line 1: id: 'ünïcode \"id\"' where pair 1"),
        "short": (lines[:2], "line 3: id: missing: the file ends after 2 pairs"),
        "long": ([*lines, lines[2]], "line 4: id: 'en-en-de': more lines than the 3 pairs"),
        "no id": ([lines[0], '{"instruction": "en"}', lines[2]], "line 2: id: None where"),
        "a number": (
            [*lines[:2], lines[2].replace('"output_2": "de"', '"output_2": 7')],
            "line 3: output_2: must be a language code or null",
        ),
        "not json": ([lines[0], "{", lines[2]], "line 2: invalid JSON"),
        "a key missing everywhere": (
            [re.sub(r', "output_2": [^,}]*', "", line) for line in lines],
            "line 1: output_2: missing",
        ),
    }
    for name, (content, message) in cases.items():
        bad = edited(tmp_path / f"{name}.jsonl", content)
        with pytest.raises(RecordError, match=re.escape(f"{bad} {message}")):
            aggregate(tmp_path, inputs, tmp_path / "out", "--languages", str(bad))
        assert not (tmp_path / "out" / "preferences.json").exists(), name


def test_a_bad_setting_or_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs, _, _ = write_inputs(tmp_path, TEXTS)
    output = tmp_path / "pairs.languages.jsonl"
    argv = ["languages", "--pairs", str(pairs), "--output", str(output)]
    missing = tmp_path / "lid.176.bin"
    for flags, line in (
        (["--langid-max-chars", "0"], "--langid-max-chars: must be >= 1, got 0"),
        (["--langid-model", str(missing)], f"language-id model '{missing}': no such file"),
    ):
        assert cli.main([*argv, *flags]) == cli.FAILED
        assert capsys.readouterr().err.splitlines() == [f"salmon-wf languages: error: {line}"]
        assert not output.exists()


def test_a_missing_or_folder_languages_file_is_one_line_before_any_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = write_inputs(tmp_path, TEXTS)
    pairs, summary, judgments = inputs
    judgments.write_text("{not read}\n")  # would be a RecordError if it were read first
    out = tmp_path / "out"
    for path, what in ((tmp_path / "absent.jsonl", "no such file"), (tmp_path, "not a file")):
        argv = ["aggregate", "--pairs", str(pairs), "--pairs-summary", str(summary)]
        argv += ["--judgments", str(judgments), "--principles", str(principles_file(tmp_path))]
        argv += ["--output", str(out / "preferences.json"), "--languages", str(path)]
        assert cli.main([*argv, "--workers", "1"]) == cli.FAILED
        err = capsys.readouterr().err.splitlines()
        assert err == [f"salmon-wf aggregate: error: {path}: {what} (the languages file: "
                       "salmon-wf languages writes it)"]  # fmt: skip
        assert not (out / "preferences.json").exists()


def test_invalid_utf8_or_a_lone_surrogate_in_the_pairs_names_the_line(tmp_path: Path) -> None:
    """Arrow's JSON reader copies string bytes unchecked: invalid UTF-8 must not reach the
    outputs (it goes to the strict reader, which names the line); a lone surrogate escape cannot
    be written as UTF-8 and is named with its line and field."""
    inputs = write_inputs(tmp_path, TEXTS)
    pairs = inputs[0]
    codes = tmp_path / "pairs.languages.jsonl"
    languages(pairs, codes)
    good = pairs.read_bytes()
    first, second = good.splitlines(keepends=True)
    cases = {
        b"\xff": "line 2: invalid UTF-8",
        b"\\ud800": "line 2: field 'output_2' holds a lone surrogate escape",
    }
    for bad, message in cases.items():
        pairs.write_bytes(first + second.replace(b"Cook them", b"Cook" + bad + b" them"))
        with pytest.raises(RecordError, match=re.escape(message)):
            aggregate(tmp_path, inputs, tmp_path / "out", "--languages", str(codes))
        assert not (tmp_path / "out" / "preferences.json").exists()
        assert not (tmp_path / "out" / "preferences.jsonl").exists()
