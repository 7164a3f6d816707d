"""A test hook: kill this process with SIGKILL at a named point, the n-th time it gets there.

    SALMON_WF_TEST_KILL_AT=<point>:<n>    e.g. shard.append:3 (tests/test_kills.py sets it)

A kill -9 at a chosen moment (a record flushed, an output written but not renamed) is what a
node failure or an OOM kill does; a timer or a file watcher cannot hit such a moment twice the
same way, and the tests compare bytes after the rerun. The points: shard.start (partial file
rewritten, no record yet), shard.append (a record or pair flushed), shard.rename (the finished
shard written in order, partial not yet removed), atomic.rename (data/atomic.py: data fsynced,
name not yet replaced), aggregate.chunk (a chunk of preferences queued for writing). Unset, the
variable costs one environment lookup at import and one None check per point.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("SALMON_WF_TEST_KILL_AT")
_reached: dict[str, int] = {}


def kill_point(point: str) -> None:
    """SIGKILL this process when SALMON_WF_TEST_KILL_AT names `point` and its count is reached."""
    if _AT is None:
        return
    name, _, count = _AT.rpartition(":")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] >= int(count):
        os.kill(os.getpid(), signal.SIGKILL)
