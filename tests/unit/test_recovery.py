"""Taking over from a previous agent process, decided on fixed clocks: re-attach what still
runs (or ended with a code), resume what has no process, drop what lapsed, kill the unknown."""

from __future__ import annotations

from pathlib import Path

from agent.journal import LeaseRecord
from agent.recovery import plan, probe_keeper
from agent.stage import key_text
from tests.helpers.agents import assignment

WALL, MONO = 1_700_000_100.0, 5_000.0


def rec(task: str, started: float = WALL - 5, workdir: str = "/w/") -> LeaseRecord:
    return LeaseRecord(assignment(task), started=started, pid=0, workdir=workdir + task)


def held(task: str, renewed: float, code: int | None = None, expired: bool = False, ttl: float = 15.0) -> dict:
    return {"key": key_text(("r1", task, 1)), "pid": 100 + len(task), "code": code, "expired": expired,
            "renewed": renewed, "ttl": ttl}


def test_each_lease_gets_what_its_state_calls_for() -> None:
    records = {("r1", t, 1): rec(t) for t in ("running", "ended", "lapsed", "gone", "killed")}
    keeper = [
        held("running", renewed=MONO - 3),
        held("ended", renewed=MONO - 3, code=0),
        held("lapsed", renewed=MONO - 16),  # its lease ran out while no agent renewed it
        held("killed", renewed=MONO - 3, expired=True),  # the keeper stopped it for its lease
        held("stray", renewed=MONO - 1),  # no lease record: nothing to report it against
    ]
    p = plan(records, {"wall": WALL - 4, "ttl": 15.0}, keeper, WALL, MONO)
    assert sorted(s.lease.task for s in p.reattach) == ["ended", "running"]
    running = next(s for s in p.reattach if s.lease.task == "running")
    assert running.pid == 107 and running.workdir == Path("/w/running") and running.last_renewed == MONO - 3
    assert running.started_at == WALL - 5
    # No process any more (reboot, keeper gone), lease still valid: run again from its checkpoint.
    assert [s.lease.task for s in p.resume] == ["gone"]
    assert p.resume[0].last_renewed == MONO - 4  # the journal's last renewal, on this clock
    assert sorted(k[1] for k in p.dropped) == ["killed", "lapsed"]
    assert sorted(p.kill) == sorted(key_text(("r1", t, 1)) for t in ("lapsed", "killed", "stray"))
    assert p.resume[0].resume_dir == Path("/w/gone")  # its newest checkpoint may still be there
    assert set(p.keep) == {Path("/w/running"), Path("/w/ended"), Path("/w/gone")}


def test_without_a_renewal_on_record_the_start_counts() -> None:
    p = plan({("r1", "a", 1): rec("a", started=WALL - 10)}, {}, [], WALL, MONO)
    assert [s.lease.task for s in p.resume] == ["a"]  # within the default TTL (15 s)
    p = plan({("r1", "a", 1): rec("a", started=WALL - 20)}, {}, [], WALL, MONO)
    assert p.resume == [] and p.dropped == [("r1", "a", 1)]
    # The journal's last renewal covers every lease held then.
    p = plan({("r1", "a", 1): rec("a", started=WALL - 100)}, {"wall": WALL - 8, "ttl": 10.0}, [], WALL, MONO)
    assert [s.lease.task for s in p.resume] == ["a"]
    p = plan({("r1", "a", 1): rec("a", started=WALL - 100)}, {"wall": WALL - 11, "ttl": 10.0}, [], WALL, MONO)
    assert p.dropped == [("r1", "a", 1)]


def test_no_keeper_to_probe(tmp_path: Path) -> None:
    assert probe_keeper(tmp_path, {}, 5.0) == []
    (tmp_path / "keeper.sock").touch()  # a stale socket file: nobody listens
    assert probe_keeper(tmp_path, {}, 5.0, timeout=1.0) == []


def test_a_stage_the_old_process_was_stopping_is_resumed_not_reported() -> None:
    """Its exit (SIGTERM from the agent that was stopping) says nothing about the task."""
    records = {("r1", "cut", 1): rec("cut")}
    p = plan(records, {}, [held("cut", renewed=MONO - 1, code=-15) | {"stopped": True}], WALL, MONO)
    assert p.reattach == [] and [s.lease.task for s in p.resume] == ["cut"]
    assert p.kill == [key_text(("r1", "cut", 1))]  # the keeper forgets it
