"""One Progress for the shard stages (counted items) and the aggregation (timed steps)."""

from __future__ import annotations

import io
import re

import pytest

from salmon_wf import progress as progress_module
from salmon_wf.progress import Progress


def test_update_prints_done_rate_and_eta_at_most_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([100.0, 101.0, 106.0, 107.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = Progress("judge shard 1/2", total=4, done=1, stream=stream)  # 1 resumed
    progress.update()  # t=101: under 5 s since the start, not the last item: silent
    progress.update(extra="12 tokens")  # t=106: 2 done in 6 s
    progress.update()  # t=107: 1 s later, but the last item always prints
    assert stream.getvalue().splitlines() == [
        "[judge shard 1/2] 3/4, 1 resumed (0.33/s, eta 3s) 12 tokens",
        "[judge shard 1/2] 4/4, 1 resumed (0.43/s, eta 0s)",
    ]


def test_a_disabled_progress_counts_but_never_prints(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("sample", total=2, enabled=False)  # a rank other than 0
    progress.update(2)
    progress.step("read")
    assert progress.done == 2
    assert capsys.readouterr() == ("", "")


def test_step_prints_seconds_since_the_last_step_and_peak_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([10.0, 12.5, 12.75])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = Progress("aggregate", stream=stream)
    progress.step("read the pairs: 3 pairs")
    progress.step("encoded the texts")
    lines = stream.getvalue().splitlines()
    pattern = r"aggregate: (.+) \((\d+\.\d) s, peak (\d+\.\d\d) GB\)"
    found = [re.fullmatch(pattern, line).groups() for line in lines]  # type: ignore[union-attr]
    assert [(what, seconds) for what, seconds, _ in found] == [
        ("read the pairs: 3 pairs", "2.5"),
        ("encoded the texts", "0.2"),
    ]
    assert all(float(peak) > 0 for _, _, peak in found)


def test_the_default_stream_is_stderr_at_print_time(capsys: pytest.CaptureFixture[str]) -> None:
    Progress("sample", total=1).update()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(r"\[sample\] 1/1 \(\d+\.\d\d/s, eta 0s\)\n", captured.err)


def test_the_line_has_unit_resumed_tokens_per_second_and_eta() -> None:
    progress = Progress("sample response0 shard 1/2", total=10, done=4, unit="prompts", bar=False)
    progress.done, progress.tokens = 6, 300  # this run: 2 prompts and 300 tokens
    assert progress.line(elapsed=4.0) == (
        "[sample response0 shard 1/2] 6/10 prompts, 4 resumed (0.50/s, 75.0 tokens/s, eta 8s)"
    )
    fresh = Progress("judge shard 2/2", total=3, unit="pairs", bar=False)
    fresh.update(tokens=50)  # the last item prints at once: no resumed, tokens/s shown
    assert re.fullmatch(
        r"\[judge shard 2/2\] 1/3 pairs \(\d+\.\d\d/s, \d+\.\d tokens/s, eta \d+s\)",
        fresh.line(1.0),
    )
    assert fresh.line(2.0).endswith("(0.50/s, 25.0 tokens/s, eta 4s)")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_starting_at_the_resumed_count() -> None:
    pytest.importorskip("tqdm")
    stream = Terminal()
    progress = Progress("sample shard 1/1", total=3, done=1, stream=stream, unit="prompts")
    assert progress._bar is not None and progress._bar.n == 1
    progress.update(tokens=40)
    progress.update(tokens=80)
    text = stream.getvalue()
    assert "sample shard 1/1" in text and "3/3" in text and "tokens/s" in text
    assert "[sample shard 1/1]" not in text  # the bar, not the log lines
    log = io.StringIO()  # not a terminal: lines
    assert Progress("x", total=1, stream=log)._bar is None
