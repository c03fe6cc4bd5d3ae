"""The client's calls across runs: the event stream, lineage, and ids from a unique prefix.

Functions over a :class:`~outrider.client.Client` (kept out of ``client.py``, which is at
its size limit)::

    with Client.from_env() as client:
        for ev in follow_events(client, after_seq=0):
            print(ev.seq, ev.run_id, ev.task, ev.state, ev.score)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from outrider import errors
from outrider.protocol import is_digest
from outrider.v1 import control_pb2

if TYPE_CHECKING:
    from outrider.client import Client

#: A run id in full, as the scheduler makes them (``run-`` millisecond time ``-`` 24 random bits).
FULL_RUN_ID = re.compile(r"^run-[0-9a-f]+-[0-9a-f]{6}$")


def resolve(client: Client, kind: str, text: str) -> str:
    """The full run id (``kind`` "run") or digest ("artifact") that ``text`` is a unique prefix
    of, asked of the scheduler; a full one is returned as it is, without a call."""
    if (kind == "run" and FULL_RUN_ID.match(text)) or (kind == "artifact" and is_digest(text)):
        return text
    return str(client._call(client.control.Resolve, control_pb2.ResolveRequest(prefix=text, kind=kind)).full)


def lineage(
    client: Client, digest: str, down: bool = False, max_depth: int = 0, max_steps: int = 0
) -> control_pb2.LineageResponse:
    """Which tasks made ``digest`` and from what (up), or what was made from it (``down``)."""
    req = control_pb2.LineageRequest(digest=digest, down=down, max_depth=max_depth, max_steps=max_steps)
    return client._call(client.control.Lineage, req)


def events(
    client: Client, after_seq: int = 0, run_id: str = "", follow: bool = False, timeout: float | None = None
) -> Iterator[control_pb2.RunEvent]:
    """Recorded events after ``after_seq`` (every run the caller may see, or ``run_id``'s), in
    ``seq`` order; with ``follow``, then live ones without end."""
    req = control_pb2.WatchEventsRequest(after_seq=after_seq, run_id=run_id, follow=follow)
    return client._stream(client.control.WatchEvents, req, timeout)


def follow_events(
    client: Client,
    after_seq: int = 0,
    run_id: str = "",
    reconnect_for: float = 300.0,
    on_reconnect: Callable[[int, errors.OutriderError], None] | None = None,
) -> Iterator[control_pb2.RunEvent]:
    """:func:`events` with ``follow`` that survives a lost connection (a restart, a failover):
    it reconnects with a backoff (0.2 s doubling to 5 s, jittered) and resumes after the last
    event it yielded, as :meth:`Client.follow` does for one run; it gives up once
    ``reconnect_for`` seconds pass without a connection."""
    from outrider.client import ConnectionFailed, _unavailable
    from outrider.reconnect import Reconnects

    last = after_seq
    backoff = Reconnects(reconnect_for, on_reconnect, _unavailable)
    while True:
        try:
            for ev in events(client, last, run_id, follow=True):
                if ev.seq <= last:
                    continue
                backoff.connected()
                last = ev.seq
                yield ev
            raise ConnectionFailed("the event stream ended", "UNAVAILABLE")
        except errors.OutriderError as exc:
            backoff.lost(exc)
