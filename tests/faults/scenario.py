"""What every fault scenario does around its fault: submit, wait for a moment worth breaking, wait for the end, judge.

Waiting is polling with a deadline on something observable (the stages' records, the
scheduler's status and event log), never a bare sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrider.errors import OutriderError
from tests.faults.nscluster import NsCluster, wait_until
from tests.faults.workload import Figures, Shape, judge, max_step, pipeline, reassign_seconds

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Scenario:
    """One scenario's bookkeeping: its cluster, workload shape, runs, and when it started."""

    name: str
    cluster: NsCluster
    shape: Shape
    runs: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    reassign_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> Path:
        return self.cluster.records

    def submit(self, count: int, *, prefix: str = "p", **labels: Any) -> list[str]:
        """Submit ``count`` prep → train → eval pipelines; their run ids (also kept in ``runs``)."""
        ids = []
        for i in range(count):
            p = pipeline(f"{prefix}{len(self.runs) + i}", self.records, self.shape, **labels)
            ids.append(call_with_retry(lambda p=p: self.cluster.client().submit(p).run_id, self.cluster))
        self.runs += ids
        return ids

    def status(self, run_id: str) -> Any:
        return call_with_retry(lambda: self.cluster.client().get_run(run_id), self.cluster)

    def task(self, run_id: str, name: str) -> Any:
        return {t.name: t for t in self.status(run_id).tasks}[name]

    def wait_steps(self, run_ids: Iterable[str], at_least: int, task: str = "train", timeout: float = 60.0) -> None:
        """Until the task of every run has recorded step ``at_least``."""
        ids = list(run_ids)
        wait_until(
            lambda: all(max_step(self.records, r, task) >= at_least for r in ids),
            timeout,
            f"{task} of {len(ids)} run(s) to reach step {at_least}",
        )

    def wait_runs(self, timeout: float) -> dict[str, Any]:
        """Until every run ended; their final status. On timeout, fails showing where each stands."""
        last: dict[str, Any] = {}

        def ended() -> bool:
            for r in self.runs:
                if r not in last or last[r].state not in TERMINAL:
                    try:
                        last[r] = self.cluster.client().get_run(r)
                    except OutriderError:
                        return False
            return all(s.state in TERMINAL for s in last.values())

        try:
            wait_until(ended, timeout, f"{len(self.runs)} run(s) to end", interval=0.2)
        except TimeoutError as exc:
            where = "\n".join(
                f"  {r}: {s.state} " + ", ".join(f"{t.name}={t.state}/{t.attempts}@{t.agent}" for t in s.tasks)
                for r, s in last.items()
            )
            raise AssertionError(f"{exc}; the runs stand at:\n{where}") from None
        return last

    def wait_reassigned(self, run_id: str, task: str, after_attempt: int, timeout: float) -> int:
        """Wait until the task runs as an attempt after ``after_attempt`` on another agent; that attempt."""
        holder = ""

        def started() -> int | None:
            nonlocal holder
            for e in self.cluster.events([run_id]):
                if e["task"] != task or e["state"] != "running":
                    continue
                if e["attempt"] == after_attempt:
                    holder = e["agent"]
                elif e["attempt"] > after_attempt and e["agent"] != holder:
                    return int(e["attempt"])
            return None

        return int(wait_until(started, timeout, f"{run_id}/{task} to run on another agent", interval=0.1))

    def note_reassign(
        self, statuses: Mapping[str, Any], hit: Mapping[str, int], t_fault: float, task: str = "train"
    ) -> None:
        """Add the seconds from ``t_fault`` to the start of the committing attempt, per hit run."""
        events = self.cluster.events(list(hit))
        for r, attempt in hit.items():
            secs = reassign_seconds(events, r, task, attempt, t_fault)
            if secs is not None:
                self.reassign_s.append(secs)

    def finish(
        self,
        statuses: Mapping[str, Any],
        figures: Callable[[Figures], None],
        cutoff: float | Mapping[tuple[str, str], float] | None = None,
    ) -> Figures:
        """Judge, print and keep the figures; the caller then asserts (``Figures.check``)."""
        fig = judge(
            self.name,
            self.shape,
            self.cluster.events(self.runs),
            statuses,
            self.records,
            client=self.cluster.client(),
            scratch=self.cluster.root / "downloads",
            cutoff=cutoff,
        )
        fig.reassign_s = self.reassign_s
        fig.notes = self.notes
        fig.duration_s = time.monotonic() - self.t0
        print(fig.summary())
        figures(fig)
        return fig


def call_with_retry(fn: Callable[[], Any], cluster: NsCluster, timeout: float = 30.0) -> Any:
    """Call the SDK, riding out a scheduler that is restarting (the call fails while it is down)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except OutriderError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stage_stopped_at(records: Path, run_id: str, task: str, epoch: int) -> float | None:
    """When attempt ``epoch`` of the task last recorded anything (None: never ran)."""
    from tests.faults.workload import read_records

    times = [ln.t for ln in read_records(records, run_id, task) if ln.epoch == epoch]
    return max(times, default=None)
