"""``outrider watch`` on a terminal: a live view of a run, redrawn in place.

Piped (or under ``--json``) ``watch`` prints one line per event; on a terminal it draws
this view instead: each task's state, agent, attempt and elapsed time, a line about
transfers, and the run's progress, redrawn as events arrive and once a second (elapsed
times move on). It draws with plain ANSI escapes (cursor up, clear to the end of the
screen, cursor hidden while drawing; no curses), and restores the cursor on every exit,
Ctrl-C included. When the run ends the last frame stays, and the run's summary follows,
as when piped.

The transfer line shows the artifact transfers in flight on the agents running the run's
tasks, bytes done of bytes in all (each agent sends them with its heartbeat figures, so
they move once per heartbeat interval; ``ListAgents``, asked at most every 2 s while a task
runs), then the bytes of the outputs recorded so far and, from the run's trace
(``GetTrace``, asked again at most once a second after an attempt ends), how many fetches
and uploads finished attempts did and how long they took in all.

:class:`View` folds events into state and :func:`render` draws it: both pure, for tests.
"""

from __future__ import annotations

import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

TERMINAL = ("succeeded", "failed", "cancelled")
TASK_DONE = ("succeeded", "failed", "upstream_failed", "cancelled")
#: Events that put a task back in the queue (a new attempt follows).
REQUEUED = ("ready", "retrying", "lost", "released", "pending")

HIDE, SHOW, CLEAR_DOWN = "\x1b[?25l", "\x1b[?25h", "\x1b[J"


@dataclass
class Row:
    name: str
    state: str = "pending"
    agent: str = ""
    attempt: int = 0
    started: float = 0.0
    finished: float = 0.0
    note: str = ""
    output_bytes: int = 0
    input_bytes: int = 0


@dataclass
class View:
    """What the live view shows, folded from the watch's events."""

    run_id: str
    pipeline: str = ""
    state: str = ""
    created: float = 0.0
    finished: float = 0.0
    rows: dict[str, Row] = field(default_factory=dict)
    last: str = ""  # the latest event, in words
    note: str = ""  # a connection note (reconnecting)
    fetches: tuple[int, float] = (0, 0.0)  # finished attempts' input fetches: how many, seconds in all
    uploads: tuple[int, float] = (0, 0.0)  # and their output uploads
    ended: int = 0  # events that ended an attempt: the trace has news
    moving: list[tuple[str, str, int, int]] = field(default_factory=list)  # (agent, direction, done, total)

    def apply_agents(self, agents: Iterable[Any]) -> None:
        """Fold ``ListAgents``' answer in: the transfers in flight on the agents running this run's tasks."""
        ours = {r.agent for r in self.rows.values() if r.state == "running" and r.agent}
        self.moving = [
            (a.name, t.direction, t.done_bytes, t.total_bytes) for a in agents if a.name in ours for t in a.transfers
        ]

    def apply_trace(self, trace: Any) -> None:
        """Fold a run's trace (a ``GetTraceResponse``) in: its finished transfer spans, summed."""
        sums = {"transfer.fetch": [0, 0.0], "transfer.upload": [0, 0.0]}
        for span in trace.spans:
            if span.name in sums and span.end >= span.start > 0:
                sums[span.name][0] += 1
                sums[span.name][1] += span.end - span.start
        self.fetches = (int(sums["transfer.fetch"][0]), float(sums["transfer.fetch"][1]))
        self.uploads = (int(sums["transfer.upload"][0]), float(sums["transfer.upload"][1]))

    def apply(self, ev: Any) -> None:
        """Fold one watch event (a ``RunEvent``) in: a snapshot, a task's or the run's event."""
        if ev.HasField("snapshot"):
            self._snapshot(ev.snapshot)
        if not ev.seq:
            return
        self.note = ""
        when = time.strftime("%H:%M:%S", time.localtime(ev.ts))
        if not ev.task:
            self.state = ev.state
            if ev.state in TERMINAL:
                self.finished = ev.ts
            self.last = f"{when} run {ev.state}"
            return
        row = self.rows.setdefault(ev.task, Row(ev.task))
        if ev.state in TASK_DONE or ev.state in ("retrying", "lost", "released"):
            self.ended += 1
        row.state = ev.state if ev.state not in REQUEUED else ("pending" if ev.state == "pending" else "ready")
        if ev.state == "running":
            row.agent, row.attempt, row.started, row.finished = ev.agent, ev.attempt, ev.ts, 0.0
            row.note = ""
        elif ev.state in TASK_DONE:
            row.finished = ev.ts
            if ev.agent:
                row.agent, row.attempt = ev.agent, ev.attempt
            row.note = ev.message if ev.state != "succeeded" else ""
        elif ev.state in REQUEUED and ev.state not in ("ready", "pending"):
            row.note = f"{ev.state}: {ev.message}" if ev.message else ev.state
        where = f" on {ev.agent}" if ev.agent and ev.state == "running" else ""
        self.last = f"{when} {ev.task} {ev.state}{where}"

    def _snapshot(self, run: Any) -> None:
        self.run_id, self.pipeline, self.state = run.run_id, run.pipeline, run.state
        self.created, self.finished = run.created_at, run.finished_at
        outputs: dict[tuple[str, str], int] = {}
        for t in run.tasks:
            for o in t.outputs:
                outputs[(t.name, o.name)] = o.size
        for t in run.tasks:
            row = self.rows.setdefault(t.name, Row(t.name))
            row.state, row.agent, row.attempt = t.state, t.agent, t.attempts
            row.started, row.finished = t.started_at, t.finished_at
            row.output_bytes = sum(o.size for o in t.outputs)
            row.note = t.error if t.state in ("failed", "upstream_failed") else ""


def _dur(secs: float) -> str:
    if secs < 0:
        secs = 0.0
    if secs < 60:
        return f"{secs:.1f}s"
    if secs < 3600:
        return f"{int(secs // 60)}m{int(secs % 60):02d}s"
    return f"{int(secs // 3600)}h{int(secs % 3600 // 60):02d}m"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


_ORDER = {"running": 0, "failed": 1, "ready": 2, "pending": 3}


def render(view: View, now: float, width: int = 100, height: int = 40) -> list[str]:
    """The lines of one frame (no escapes), each at most ``width`` characters; at most
    ``height`` lines (tasks beyond are counted, running and failed ones shown first)."""
    rows = list(view.rows.values())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    done = sum(counts.get(s, 0) for s in TASK_DONE)
    took = _dur((view.finished or now) - view.created) if view.created else "-"
    head = f"run {view.run_id}  pipeline {view.pipeline or '-'}  {(view.state or '?').upper()}  {took}"
    lines = [head, f"{'TASK':<20} {'STATE':<16} {'AGENT':<16} {'ATTEMPT':>7} {'ELAPSED':>8}  NOTE"]
    room = max(1, height - 5)
    shown = rows
    if len(rows) > room:
        shown = sorted(rows, key=lambda r: _ORDER.get(r.state, 4))[: room - 1]
    for r in shown:
        elapsed = _dur((r.finished or now) - r.started) if r.started else "-"
        attempt = str(r.attempt) if r.attempt else "-"
        lines.append(
            f"{r.name[:20]:<20} {r.state:<16} {(r.agent or '-')[:16]:<16} {attempt:>7} {elapsed:>8}  {r.note}".rstrip()
        )
    if len(shown) < len(rows):
        lines.append(f"… and {len(rows) - len(shown)} more tasks")
    made = sum(r.output_bytes for r in rows)
    running = counts.get("running", 0)
    done_transfers = ""
    if view.fetches[0] or view.uploads[0]:
        (nf, sf), (nu, su) = view.fetches, view.uploads
        done_transfers = f"{nf} fetch(es) {sf:.1f}s, {nu} upload(s) {su:.1f}s done; "
    moving = ", ".join(
        f"{agent} {'↓' if way == 'in' else '↑'} {_bytes(done)}"
        + (f"/{_bytes(total)} {100 * done // total}%" if total else "")
        for agent, way, done, total in view.moving[:4]
    )
    if len(view.moving) > 4:
        moving += f" and {len(view.moving) - 4} more"
    lines.append(
        f"transfers: {moving + '; ' if moving else ''}{done_transfers}{_bytes(made)} of outputs recorded, "
        f"{running} task(s) running"
    )
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], 4)))
    last = f"  ·  last: {view.last}" if view.last else ""
    note = f"  ·  {view.note}" if view.note else ""
    lines.append(f"{done}/{len(rows)} tasks done ({tally}){last}{note}")
    return [line if len(line) <= width else line[: max(1, width - 1)] + "…" for line in lines]


class Screen:
    """Redraws a frame in place on a terminal: up over the previous frame, clear, draw."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.drawn = 0

    def draw(self, lines: list[str]) -> None:
        up = f"\x1b[{self.drawn}F" if self.drawn else "\r"
        self.out.write(up + CLEAR_DOWN + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)


def watch_live(
    events: Iterable[Any],
    run_id: str,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.time,
    size: Callable[[], tuple[int, int]] | None = None,
    view: View | None = None,
    trace: Callable[[], Any] | None = None,
    agents: Callable[[], Iterable[Any]] | None = None,
) -> View:
    """Draw the run's live view from ``events`` (a watch, snapshot first) until it ends;
    returns the final view. The cursor is shown again however this returns. ``trace()``
    (optional) answers the run's trace, asked when an attempt has ended (at most once a
    second, and once at the end); if it fails it is not asked again. ``agents()`` (optional)
    answers ``ListAgents``, asked at most every 2 s while a task runs (for transfers in flight);
    if it fails it is not asked again."""
    view = view or View(run_id)
    q: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump() -> None:
        try:
            for ev in events:
                q.put(("event", ev))
            q.put(("end", None))
        except BaseException as exc:  # handed to the drawing thread, which raises it
            q.put(("error", exc))

    threading.Thread(target=pump, name="outrider-watch-view", daemon=True).start()
    screen = Screen(out)
    seen, asked_at, agents_at = 0, float("-inf"), float("-inf")
    out.write(HIDE)
    try:
        while True:
            try:
                kind, item = q.get(timeout=1.0)
            except queue.Empty:
                kind, item = "tick", None
            if kind == "error":
                raise item
            if kind == "event":
                view.apply(item)
                while not q.empty() and q.queue[0][0] == "event":  # draw once per burst
                    view.apply(q.get_nowait()[1])
            if trace is not None and view.ended > seen and (kind == "end" or time.monotonic() - asked_at >= 1.0):
                seen, asked_at = view.ended, time.monotonic()
                try:
                    view.apply_trace(trace())
                except Exception:  # an older scheduler, tracing off: the line says what it knows
                    trace = None
            running = any(r.state == "running" for r in view.rows.values())
            if agents is not None and (running or view.moving) and time.monotonic() - agents_at >= 2.0:
                agents_at = time.monotonic()
                try:
                    view.apply_agents(agents() if running else ())
                except Exception:  # an older scheduler, a submitter not allowed: the line says the rest
                    agents = None
            width, height = size() if size is not None else shutil.get_terminal_size((100, 40))
            screen.draw(render(view, clock(), width, height))
            if kind == "end":
                return view
    finally:
        out.write(SHOW)
        out.flush()


def run_live(client: Any, run_id: str, out: TextIO = sys.stdout) -> Any:
    """``outrider watch`` on a terminal: the live view until the run ends (a lost connection
    is resumed, said on the view's last line); returns the run's final status."""
    view = View(run_id)

    def reconnecting(tries: int, exc: Exception) -> None:
        view.note = f"connection lost ({exc}); reconnecting (try {tries})"

    from outrider.cli_trace import get_trace

    events = client.follow(run_id, on_reconnect=reconnecting)
    watch_live(events, run_id, out, view=view, trace=lambda: get_trace(client, run_id), agents=client.list_agents)
    return client.get_run(run_id)
