"""What a stage recorded about itself, read when it ends and sent with its completion.

The stage appends JSON lines to ``$OUTRIDER_METRICS_FILE`` (:mod:`outrider.metrics`), which
is ``.outrider/metrics.jsonl`` in its work dir (with the Slurm executor, the shared work dir:
the agent reads it there too). When the attempt ends, however it ends, the runner reads
the file here: bounded (:data:`outrider.metrics.MAX_FILE_BYTES`, ``MAX_LINES``,
``MAX_NAMES``), opened one directory at a time without following a link (a stage running
as another user owns its work dir and could swap ``.outrider`` for a link to the agent's
own files), and never failing the attempt or the agent: what cannot be read is counted and
reported as skipped. The figures ride in ``Completion.metrics`` (so the outbox journals
and re-sends them with the result).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from outrider import metrics
from outrider.v1 import agent_pb2

__all__ = ["FILE", "attach", "open_file", "read", "read_open"]

log = logging.getLogger(__name__)

#: The file's name in the work dir's ``.outrider`` directory.
FILE = "metrics.jsonl"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read(workdir: Path) -> metrics.FileSummary:
    """The summary of ``workdir/.outrider/metrics.jsonl``; never raises."""
    found = open_file(workdir)
    return found if isinstance(found, metrics.FileSummary) else read_open(found)


def open_file(workdir: Path) -> int | metrics.FileSummary:
    """The metrics file of ``workdir`` opened (a descriptor for :func:`read_open`), or, if
    there is none or it cannot be opened, its summary already. A few opens and no read:
    the runner calls it on the event loop, and reads in a thread only a file that is there
    (most stages record nothing: no thread hand-off for them). Never raises."""
    dirs: list[int] = []
    try:
        dirs.append(os.open(workdir, _DIR_FLAGS))
        dirs.append(os.open(".outrider", _DIR_FLAGS, dir_fd=dirs[-1]))
        return os.open(FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirs[-1])
    except FileNotFoundError:
        return metrics.FileSummary()
    except OSError as exc:
        out = metrics.FileSummary()
        out.skip(1, f"cannot open the metrics file: {exc.strerror or exc}")
        return out
    finally:
        for d in dirs:
            os.close(d)


def read_open(fd: int) -> metrics.FileSummary:
    """The summary of the file :func:`open_file` opened (closed here); never raises."""
    try:
        return metrics.read_fd(fd)
    finally:
        os.close(fd)


def attach(completion: agent_pb2.Completion, summary: metrics.FileSummary) -> None:
    """Put ``summary`` into ``completion`` (fields ``metrics`` and ``metrics_skipped``)."""
    for p in summary.points:
        m = completion.metrics.add(name=p.name, value=p.value, ts=p.ts, count=p.count)
        if p.step is not None:
            m.step = p.step
    if summary.skipped:
        completion.metrics_skipped.count = summary.skipped
        completion.metrics_skipped.reason = summary.reason
        ref = completion.lease
        log.warning(
            "stage %s/%s attempt %d: %d line(s) of its metrics file skipped (%s)",
            ref.run_id,
            ref.task,
            ref.epoch,
            summary.skipped,
            summary.reason,
        )
