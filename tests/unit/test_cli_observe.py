"""The client side of events, lineage, prefixes and the live watch view, without processes:
the pure renderers, the argument resolution and the view's drawing loop."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest

from outrider import cli_observe, cli_watchview
from outrider.v1 import common_pb2, control_pb2

RUN = "run-18f3a2b4c5d-abcdef"
DIGEST = "ab" * 32


def ev(seq: int, task: str, state: str, ts: float, agent: str = "", attempt: int = 0, message: str = "") -> Any:
    return control_pb2.RunEvent(run_id=RUN, task=task, state=state, ts=ts, agent=agent, attempt=attempt,
                                message=message, seq=seq, score=2.5 if state == "running" else 0.0)


def snapshot(ts: float) -> Any:
    run = control_pb2.RunStatus(run_id=RUN, pipeline="p", state="running", created_at=ts)
    run.tasks.add(name="prep", state="succeeded", agent="a1", attempts=1, started_at=ts, finished_at=ts + 2,
                  outputs=[common_pb2.ArtifactRef(name="d", digest=DIGEST, size=3 * 2**20, kind="file")])
    run.tasks.add(name="train", state="ready")
    run.tasks.add(name="eval", state="pending")
    return control_pb2.RunEvent(run_id=RUN, state="running", snapshot=run)


def test_the_view_folds_events_and_renders_a_frame() -> None:
    view = cli_watchview.View(RUN)
    view.apply(snapshot(100.0))
    view.apply(ev(5, "train", "running", 103.0, "a2", 1, "placed with score 2.500 (load 0.500)"))
    lines = cli_watchview.render(view, now=110.5, width=120, height=20)
    assert lines[0] == f"run {RUN}  pipeline p  RUNNING  10.5s"
    assert lines[1].split() == ["TASK", "STATE", "AGENT", "ATTEMPT", "ELAPSED", "NOTE"]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["prep"] == ["prep", "succeeded", "a1", "1", "2.0s"]
    assert rows["train"] == ["train", "running", "a2", "1", "7.5s"]  # ticking: now - started
    assert rows["eval"] == ["eval", "pending", "-", "-", "-"]
    assert lines[5] == "transfers: 3.0 MiB of outputs recorded, 1 task(s) running"
    # Transfers in flight on the agents running this run's tasks (ListAgents), bytes done of all.
    moving = common_pb2.TransferProgress(digest="d" * 64, direction="in", done_bytes=3 << 20, total_bytes=12 << 20)
    elsewhere = common_pb2.TransferProgress(digest="e" * 64, direction="out", done_bytes=1, total_bytes=2)
    view.apply_agents([control_pb2.AgentInfo(name="a2", transfers=[moving]),
                       control_pb2.AgentInfo(name="a9", transfers=[elsewhere])])
    lines = cli_watchview.render(view, now=110.5, width=120, height=20)
    assert lines[5] == "transfers: a2 ↓ 3.0 MiB/12.0 MiB 25%; 3.0 MiB of outputs recorded, 1 task(s) running"
    assert lines[6].startswith("1/3 tasks done (1 running, 1 pending, 1 succeeded)")
    # A retry puts the task back, saying why; the run's end stops the clocks.
    view.apply(ev(6, "train", "retrying", 104.0, "a2", 1, "exit 1; attempt 2 of 3 in 1.0s"))
    view.apply(ev(7, "train", "running", 105.0, "a1", 2))
    view.apply(ev(8, "train", "succeeded", 106.0, "a1", 2))
    view.apply(ev(9, "eval", "failed", 107.0, "a1", 1, "exit 3"))
    view.apply(ev(10, "", "failed", 107.5))
    lines = cli_watchview.render(view, now=500.0, width=120, height=20)
    assert lines[0].endswith("FAILED  7.5s")
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert rows["train"].split()[:5] == ["train", "succeeded", "a1", "2", "1.0s"]
    assert rows["eval"].split()[:5] == ["eval", "failed", "a1", "1", "-"] and rows["eval"].endswith("exit 3")
    assert "last: " in lines[-1] and "run failed" in lines[-1]


def test_a_frame_fits_the_terminal() -> None:
    view = cli_watchview.View(RUN, pipeline="big", state="running", created=1.0)
    for i in range(50):
        view.rows[f"t{i}"] = cli_watchview.Row(f"t{i}", state="running" if i == 49 else "pending", note="x" * 300)
    lines = cli_watchview.render(view, now=2.0, width=40, height=12)
    assert len(lines) <= 12 and all(len(line) <= 40 for line in lines)
    assert lines[2].startswith("t49") and "more tasks" in lines[-3]  # running first; the rest counted


def test_the_live_view_redraws_in_place_and_restores_the_cursor() -> None:
    out = io.StringIO()
    events = [snapshot(100.0), ev(5, "train", "running", 101.0, "a2", 1), ev(6, "", "succeeded", 102.0)]
    view = cli_watchview.watch_live(iter(events), RUN, out, clock=lambda: 103.0, size=lambda: (100, 30))
    text = out.getvalue()
    assert text.startswith(cli_watchview.HIDE) and text.endswith(cli_watchview.SHOW)
    assert "\x1b[7F" in text  # up over the previous 7-line frame, then cleared and drawn again
    assert view.state == "succeeded"

    def broken() -> Any:
        yield snapshot(100.0)
        raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        cli_watchview.watch_live(broken(), RUN, out, clock=lambda: 103.0, size=lambda: (100, 30))
    assert out.getvalue().endswith(cli_watchview.SHOW)  # Ctrl-C: the cursor comes back


def test_the_transfer_line_sums_the_finished_transfers_of_the_trace() -> None:
    view = cli_watchview.View(RUN, state="running", created=1.0)
    trace = control_pb2.GetTraceResponse(run_id=RUN)
    trace.spans.add(name="transfer.fetch", start=10.0, end=10.5)
    trace.spans.add(name="transfer.fetch", start=20.0, end=20.25)
    trace.spans.add(name="transfer.upload", start=11.0, end=11.125)
    trace.spans.add(name="execute", start=10.5, end=11.0)
    trace.spans.add(name="transfer.upload", start=30.0, end=0.0)  # not ended: not counted
    view.apply_trace(trace)
    line = cli_watchview.render(view, now=2.0, width=200)[-2]
    assert line.startswith("transfers: 2 fetch(es) 0.8s, 1 upload(s) 0.1s done; 0 B of outputs recorded"), line

    asked: list[int] = []

    def fetch() -> Any:
        asked.append(1)
        if len(asked) > 1:
            raise RuntimeError("UNIMPLEMENTED")
        return trace

    events = [snapshot(100.0), ev(5, "train", "succeeded", 101.0, "a2", 1), ev(6, "eval", "failed", 101.5, "a2", 1),
              ev(7, "", "failed", 102.0)]
    out = io.StringIO()
    view = cli_watchview.watch_live(iter(events), RUN, out, clock=lambda: 103.0, size=lambda: (150, 30), trace=fetch)
    assert view.fetches == (2, 0.75) and 1 <= len(asked) <= 2  # asked when attempts ended; a failure: no more
    assert "2 fetch(es) 0.8s" in out.getvalue()


def test_event_lines_and_json() -> None:
    e = ev(42, "train", "running", 0.0, "a2", 1, "placed with score 2.500 (load 0.500)")
    assert cli_observe.event_json(e) == {"seq": 42, "time": 0.0, "run_id": RUN, "task": "train", "attempt": 1,
                                         "kind": "running", "agent": "a2",
                                         "message": "placed with score 2.500 (load 0.500)", "score": 2.5}
    assert cli_observe.event_json(ev(43, "", "succeeded", 0.0))["score"] is None
    line = cli_observe.event_line(e)
    assert line.split()[0] == "42" and line.endswith("train            running attempt 1 on a2: placed "
                                                                   "with score 2.500 (load 0.500)")
    assert "(run)" in cli_observe.event_line(ev(43, "", "succeeded", 0.0))
    alert = control_pb2.RunEvent(state="alert", agent="edge-3", message="agent_silent edge-3: not heard", seq=44)
    line = cli_observe.event_line(alert)
    assert line.endswith("  -  (scheduler)      alert agent edge-3: agent_silent edge-3: not heard"), line


def _lineage() -> Any:
    ref = common_pb2.ArtifactRef
    return control_pb2.LineageResponse(
        digest=DIGEST, direction="up", raw_inputs=["c" * 64],
        steps=[control_pb2.LineageStep(run_id=RUN, pipeline="p", task="train", attempt=2, agent="a1",
                                       command=["python", "train.py"], code_digest="c" * 64, depth=1,
                                       state="succeeded",
                                       inputs=[ref(name="data", digest="d" * 64, size=5, kind="file")],
                                       outputs=[ref(name="model", digest=DIGEST, size=7, kind="file")])])


def test_lineage_text_json_and_dot() -> None:
    resp = _lineage()
    text = "\n".join(cli_observe.lineage_lines(resp))
    assert f"artifact {DIGEST}" in text and f"<- train (succeeded) run {RUN} attempt 2 on a1" in text
    assert "command: python train.py" in text and "input  data=dddddddddddd (file, 5 B)" in text
    assert "raw inputs (made by no task): cccccccccccc" in text
    doc = cli_observe.lineage_json(resp)
    assert doc["steps"][0]["inputs"] == [{"name": "data", "digest": "d" * 64, "size": 5, "kind": "file"}]
    assert doc["truncated"] is None and doc["raw_inputs"] == ["c" * 64]
    dot = cli_observe.lineage_dot(resp)
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert f'"{"d" * 64}" -> "{RUN}/train" [label="data"];' in dot
    assert f'"{RUN}/train" -> "{DIGEST}" [label="model"];' in dot
    assert f'"{DIGEST}" [shape=ellipse, label="{DIGEST[:12]}\\nmodel", style=bold];' in dot


class FakeClient:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.control = self

    def Resolve(self, req: Any) -> Any:
        raise AssertionError("called through _call")

    def _call(self, method: Any, req: Any) -> Any:
        self.asked.append((req.kind, req.prefix))
        return control_pb2.ResolveResponse(full=f"{req.kind}:{req.prefix}")


def test_only_prefixes_are_resolved_each_with_one_call() -> None:
    client = FakeClient()
    args = argparse.Namespace(run=RUN, digest=DIGEST, runs=[RUN, "18f3"])
    cli_observe.resolve_args(client, args)
    assert client.asked == [("run", "18f3")] and args.runs == [RUN, "run:18f3"] and args.run == RUN
    args = argparse.Namespace(run="run-18f3", digest="abcd", agent="x")
    cli_observe.resolve_args(client, args)
    assert (args.run, args.digest) == ("run:run-18f3", "artifact:abcd")
    # Not the shape of an id: left to the verb, which says "no run ..." as before.
    client.asked.clear()
    args = argparse.Namespace(run="run-nope", digest="my-model.pt")
    cli_observe.resolve_args(client, args)
    assert client.asked == [] and (args.run, args.digest) == ("run-nope", "my-model.pt")


def test_version_names_the_package_and_the_wire_protocol() -> None:
    assert cli_observe.version_text().endswith("(wire protocol outrider.v1)")


class FlakyStream:
    """A scheduler that goes away after two events, then serves the rest from where asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.control = self

    def WatchEvents(self) -> None:
        raise AssertionError("called through _stream")

    def _stream(self, method: Any, req: Any, timeout: Any) -> Any:
        from outrider.client import ConnectionFailed

        self.asked.append(req.after_seq)
        assert req.follow
        for seq in range(req.after_seq + 1, req.after_seq + 3):
            yield control_pb2.RunEvent(run_id=RUN, state="ready", task="t", seq=seq)
        if len(self.asked) < 3:
            raise ConnectionFailed("scheduler gone", "UNAVAILABLE")


def test_follow_events_resumes_after_the_last_seq_seen() -> None:
    from outrider.client_events import follow_events

    client = FlakyStream()
    tries: list[int] = []
    got = []
    for e in follow_events(client, after_seq=10, on_reconnect=lambda n, exc: tries.append(n)):  # type: ignore[arg-type]
        got.append(e.seq)
        if len(got) == 6:
            break
    # Each reconnect resumes after the last event shown; the count of tries restarts once one arrives.
    assert got == [11, 12, 13, 14, 15, 16] and client.asked == [10, 12, 14] and tries == [1, 1]


def test_a_deeper_step_names_the_steps_it_is_tied_to() -> None:
    """Visited once, a step sits under whichever step came before it: the text says which it fed."""
    ref = common_pb2.ArtifactRef
    resp = _lineage()
    resp.steps.append(control_pb2.LineageStep(run_id=RUN, task="prep", attempt=1, depth=2, state="succeeded",
                                              outputs=[ref(name="data", digest="d" * 64, size=5, kind="file")]))
    resp.steps.append(control_pb2.LineageStep(run_id=RUN, task="other", attempt=1, depth=2, state="succeeded",
                                              outputs=[ref(name="x", digest="e" * 64, size=5, kind="file")]))
    text = "\n".join(cli_observe.lineage_lines(resp))
    assert f"<- prep (succeeded) run {RUN} attempt 1 on - (for train)" in text
    assert f"<- other (succeeded) run {RUN} attempt 1 on -\n" in text  # tied to nothing one level up
    assert "(for" not in text.split("<- train")[1].split("\n")[0]  # the first level: the artifact itself
