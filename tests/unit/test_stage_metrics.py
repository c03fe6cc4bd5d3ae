"""Stage metrics without processes: the SDK's checks, the agent's bounded read of the file,
the wire's checks of a completion's figures, the store (both backends) and the CLI's views."""
from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from agent import stagemetrics as agent_metrics
from outrider import cli_metrics, metrics
from outrider.v1 import agent_pb2, common_pb2, control_pb2
from scheduler.api import stagemetrics as wire_metrics
from scheduler.api import wire
from scheduler.store.changes import Changes
from tests.helpers.backends import Backend

NOW = 1_800_000_000.0


# --------------------------------------------------------------------------- the SDK


@pytest.mark.parametrize(("args", "kept"), [
    (("accuracy", 0.93), ("accuracy", 0.93, None)),
    (("val/loss", 1, 3), ("val/loss", 1.0, 3)),
    (("a.b:c-d_e", -2.5, 0), ("a.b:c-d_e", -2.5, 0)),
    (("x" * 64, 0.0, 2**53), ("x" * 64, 0.0, 2**53)),
])
def test_check_keeps_good_values(args: tuple[Any, ...], kept: tuple[Any, ...]) -> None:
    assert metrics.check(*args) == kept


@pytest.mark.parametrize(("args", "words"), [
    (("", 1.0), "not valid"),
    (("1st", 1.0), "not valid"),
    (("has space", 1.0), "not valid"),
    (("x" * 65, 1.0), "at most 64"),
    ((3, 1.0), "must be a string"),
    (("acc", float("nan")), "finite"),
    (("acc", math.inf), "finite"),
    (("acc", "0.9"), "must be a number"),
    (("acc", True), "must be a number"),
    (("acc", None), "must be a number"),
    (("acc", 1.0, 1.5), "whole number"),
    (("acc", 1.0, True), "whole number"),
    (("acc", 1.0, -1), "from 0 to 2**53"),
    (("acc", 1.0, 2**53 + 1), "from 0 to 2**53"),
])
def test_check_refuses_bad_values_naming_the_problem(args: tuple[Any, ...], words: str) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        metrics.check(*args)
    assert words in str(err.value)


def test_log_appends_json_lines_to_the_stage_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(metrics.ENV, str(path))
    metrics.log("accuracy", 0.5, step=1)
    metrics.log("accuracy", 0.75, step=2)
    metrics.log("rows_dropped", 3)
    with pytest.raises(ValueError):
        metrics.log("accuracy", float("nan"))  # nothing written
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["name"], d["value"], d["step"]) for d in lines] == [
        ("accuracy", 0.5, 1), ("accuracy", 0.75, 2), ("rows_dropped", 3.0, None)]
    assert all(abs(d["ts"] - lines[0]["ts"]) < 60 for d in lines)
    summary = metrics.read_file(path)
    assert summary.skipped == 0
    assert {p.name: (p.value, p.step, p.count) for p in summary.points} == {
        "accuracy": (0.75, 2, 2), "rows_dropped": (3.0, None, 1)}


def test_log_outside_outrider_writes_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(metrics.ENV, raising=False)
    metrics.log("loss", 0.25, step=7)
    line = json.loads(capsys.readouterr().err)
    assert (line["name"], line["value"], line["step"]) == ("loss", 0.25, 7)


# --------------------------------------------------------------------------- the file, bounded


def test_summarize_counts_bad_lines_and_keeps_the_rest() -> None:
    data = b"\n".join([
        b'{"name": "acc", "value": 0.5, "step": 1, "ts": 10}',
        b"not json",
        b'["a", 1]',
        b'{"name": "acc"}',
        b'{"name": "acc", "value": NaN}',
        b'{"name": "acc", "value": "0.9"}',
        b'{"name": "bad name", "value": 1}',
        b'{"name": "acc", "value": 1, "ts": "yesterday"}',
        b"",
        b'{"name": "acc", "value": 0.8, "step": 2}',
        b'{"name": "loss", "value": 0.1, "step": null}',
    ])
    s = metrics.summarize(data, NOW)
    assert {p.name: (p.value, p.step, p.ts, p.count) for p in s.points} == {
        "acc": (0.8, 2, NOW, 2), "loss": (0.1, None, NOW, 1)}
    assert s.skipped == 7
    assert s.reason == "line 2: not a JSON object"


def test_summarize_bounds_names_lines_and_line_length() -> None:
    many = b"\n".join(b'{"name": "m%d", "value": %d}' % (i, i) for i in range(metrics.MAX_NAMES + 5))
    s = metrics.summarize(many + b'\n{"name": "m0", "value": -1}', NOW)
    assert len(s.points) == metrics.MAX_NAMES
    assert s.skipped == 5 and f"more than {metrics.MAX_NAMES} names" in s.reason
    assert next(p for p in s.points if p.name == "m0").value == -1  # a known name still updates

    lines = b"\n".join([b'{"name": "n", "value": 1}'] * (metrics.MAX_LINES + 10))
    s = metrics.summarize(lines, NOW)
    assert s.skipped == 10 and str(metrics.MAX_LINES) in s.reason
    assert s.points[0].count == metrics.MAX_LINES

    long = b'{"name": "n", "value": 1, "pad": "' + b"x" * metrics.MAX_LINE_BYTES + b'"}'
    s = metrics.summarize(long, NOW)
    assert s.skipped == 1 and "longer than" in s.reason and not s.points


def workdir(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    (w / ".outrider").mkdir(parents=True)
    return w


def test_agent_reads_the_file_bounded_and_never_raises(tmp_path: Path) -> None:
    w = workdir(tmp_path)
    assert agent_metrics.read(w) == metrics.FileSummary()  # no file: nothing, no complaint
    f = w / ".outrider" / agent_metrics.FILE
    line = b'{"name": "acc", "value": 0.5, "note": "' + b"x" * 80 + b'"}\n'  # the byte bound comes first
    f.write_bytes(line * (metrics.MAX_FILE_BYTES // len(line) + 1000))  # over the byte bound
    s = agent_metrics.read(w)
    assert s.points[0].name == "acc" and s.points[0].count <= metrics.MAX_FILE_BYTES // len(line)
    assert s.skipped == 1 and "over" in s.reason


def test_agent_refuses_links_fifos_and_hard_links(tmp_path: Path) -> None:
    w = workdir(tmp_path)
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"name": "leak", "value": 1}\n')
    f = w / ".outrider" / agent_metrics.FILE

    f.symlink_to(secret)  # the file a link
    s = agent_metrics.read(w)
    assert not s.points and s.skipped == 1 and "cannot open" in s.reason
    f.unlink()

    os.link(secret, f)  # a hard link to a file elsewhere
    s = agent_metrics.read(w)
    assert not s.points and "one link" in s.reason
    f.unlink()

    os.mkfifo(f)  # would block a plain open
    s = agent_metrics.read(w)
    assert not s.points and "regular file" in s.reason
    f.unlink()

    (w / ".outrider").rename(tmp_path / "elsewhere")  # .outrider itself swapped for a link
    (tmp_path / "elsewhere" / agent_metrics.FILE).write_text('{"name": "leak", "value": 1}\n')
    (w / ".outrider").symlink_to(tmp_path / "elsewhere")
    s = agent_metrics.read(w)
    assert not s.points and s.skipped == 1


def test_attach_fills_the_completion() -> None:
    s = metrics.summarize(b'{"name": "acc", "value": 0.5, "step": 3, "ts": 10}\n{"name": "n", "value": 2}\nbad', NOW)
    c = agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id="r", task="t", epoch=1))
    agent_metrics.attach(c, s)
    acc, n = c.metrics
    assert (acc.name, acc.value, acc.step, acc.ts, acc.count) == ("acc", 0.5, 3, 10.0, 1)
    assert not n.HasField("step")
    assert (c.metrics_skipped.count, c.metrics_skipped.reason) == (1, "line 3: not a JSON object")
    # The outbox journals the completion as bytes: the figures survive the round trip.
    again = agent_pb2.Completion.FromString(c.SerializeToString())
    assert again == c and again.metrics[0].HasField("step") and not again.metrics[1].HasField("step")


# --------------------------------------------------------------------------- the wire


def completion(*ms: agent_pb2.StageMetric, skipped: int = 0, reason: str = "") -> agent_pb2.Completion:
    c = agent_pb2.Completion(lease=common_pb2.LeaseRef(run_id="r", task="t", epoch=1), outcome="succeeded",
                             started_at=1.0, finished_at=2.0, metrics=ms)
    if skipped:
        c.metrics_skipped.count, c.metrics_skipped.reason = skipped, reason
    return c


def test_wire_keeps_valid_figures_and_counts_the_rest_without_refusing_the_result() -> None:
    good = agent_pb2.StageMetric(name="acc", value=0.9, step=3, ts=NOW, count=4)
    bad = [
        agent_pb2.StageMetric(name="no spaces", value=1, ts=NOW, count=1),
        agent_pb2.StageMetric(name="nan", value=math.nan, ts=NOW, count=1),
        agent_pb2.StageMetric(name="step", value=1, step=-1, ts=NOW, count=1),
        agent_pb2.StageMetric(name="ts", value=1, ts=math.inf, count=1),
        agent_pb2.StageMetric(name="count", value=1, ts=NOW, count=0),
        agent_pb2.StageMetric(name="acc", value=0.1, ts=NOW, count=1),  # given twice
    ]
    c = wire.completion_from_proto(completion(good, *bad, skipped=2, reason="line 9: not a JSON object"))
    assert [(m.name, m.value, m.step, m.count) for m in c.metrics] == [("acc", 0.9, 3, 4)]
    assert c.metrics_skipped == 2 + len(bad)
    assert c.metrics_skipped_reason == "line 9: not a JSON object"  # the agent's first reason is kept

    c = wire.completion_from_proto(completion(bad[1]))
    assert c.metrics_skipped == 1 and "completion.metrics[0].value must be a finite number" in c.metrics_skipped_reason


def test_wire_bounds_the_number_of_figures_and_the_skipped_report() -> None:
    many = [agent_pb2.StageMetric(name=f"m{i}", value=i, ts=NOW, count=1) for i in range(metrics.MAX_NAMES + 3)]
    c = wire.completion_from_proto(completion(*many, skipped=-5, reason="x" * 10_000))
    assert len(c.metrics) == metrics.MAX_NAMES
    assert c.metrics_skipped == 3 and f"more than {metrics.MAX_NAMES} names" in c.metrics_skipped_reason
    c = wire.completion_from_proto(completion(skipped=2**62, reason="x" * 10_000))
    assert c.metrics_skipped == 2**53 and len(c.metrics_skipped_reason) < 400


def test_one_answer_holds_at_most_max_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.store.base import MetricRow, MetricSkipRow

    monkeypatch.setattr(wire_metrics, "MAX_FIGURES", 5)
    asked: list[tuple[str, int]] = []

    async def read(run_id: str, limit: int) -> tuple[list[MetricRow], list[MetricSkipRow]]:
        asked.append((run_id, limit))
        rows = [MetricRow("t", 1, f"m{i}", float(i), None, 1.0, 1) for i in range({"a": 3, "b": 4, "c": 1}[run_id])]
        return rows[:limit], [MetricSkipRow("t", 1, 1, "why")]

    found = asyncio.run(wire_metrics.gather(read, ["a", "b", "c"]))
    assert asked == [("a", 6), ("b", 3), ("c", 1)]
    assert [(r, len(rows), cut) for r, rows, _, cut in found] == [("a", 3, False), ("b", 2, True), ("c", 0, True)]
    resp = wire_metrics.response(found)
    assert [(r.run_id, len(r.metrics), len(r.skipped), r.truncated) for r in resp.runs] == [
        ("a", 3, 1, False), ("b", 2, 1, True), ("c", 0, 0, True)]
    assert not resp.runs[0].metrics[0].HasField("step")


def test_run_ids_are_bounded() -> None:
    assert wire_metrics.run_ids(control_pb2.GetStageMetricsRequest(run_ids=["a", "b", "a"])) == ["a", "b"]
    for ids, words in (([], "at least one"), (["r"] * 33, "over the limit of 32"), (["x" * 300], "over the limit")):
        with pytest.raises(Exception) as err:
            wire_metrics.run_ids(control_pb2.GetStageMetricsRequest(run_ids=ids))
        assert words in str(err.value)


# --------------------------------------------------------------------------- the store, both backends


def test_store_keeps_figures_per_attempt(backend: Backend) -> None:
    async def main() -> None:
        store = backend.open()
        store.start(asyncio.get_running_loop())
        try:
            ch = Changes()
            ch.stage_metrics([("r1", "train", 1, "acc", 0.5, 1, 10.0, 2),
                              ("r1", "train", 1, "loss", 0.3, None, 11.0, 1)])
            ch.metrics_skipped("r1", "train", 1, 3, "line 2: not a JSON object")
            await store.commit(ch)
            ch = Changes()
            ch.stage_metrics([("r1", "train", 2, "acc", 0.9, 3, 20.0, 4), ("r2", "train", 1, "acc", 0.1, 0, 5.0, 1)])
            await store.commit(ch)
            found, skipped = await asyncio.to_thread(store.stage_metrics, "r1", 10)
            assert [(m.task, m.attempt, m.name, m.value, m.step, m.ts, m.count) for m in found] == [
                ("train", 1, "acc", 0.5, 1, 10.0, 2),
                ("train", 1, "loss", 0.3, None, 11.0, 1),
                ("train", 2, "acc", 0.9, 3, 20.0, 4),
            ]
            assert [(s.task, s.attempt, s.count, s.reason) for s in skipped] == [
                ("train", 1, 3, "line 2: not a JSON object")]
            assert await asyncio.to_thread(store.stage_metrics, "nope", 10) == ([], [])
            found, _ = await asyncio.to_thread(store.stage_metrics, "r1", 2)  # bounded, in order
            assert [(m.attempt, m.name) for m in found] == [(1, "acc"), (1, "loss")]
            ch = Changes()  # an attempt's figures written again (never twice in practice): replaced
            ch.stage_metrics([("r2", "train", 1, "acc", 0.2, None, 6.0, 2)])
            await store.commit(ch)
            found, _ = await asyncio.to_thread(store.stage_metrics, "r2", 10)
            assert [(m.value, m.step, m.count) for m in found] == [(0.2, None, 2)]
        finally:
            store.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- the CLI's views


def recorded() -> control_pb2.RunStageMetrics:
    rm = control_pb2.RunStageMetrics(run_id="r1")
    rm.metrics.add(task="train", attempt=1, name="acc", value=0.5, step=1, ts=10, count=2)
    rm.metrics.add(task="train", attempt=2, name="acc", value=0.9, step=3, ts=20, count=4)
    rm.metrics.add(task="train", attempt=1, name="loss", value=0.3, ts=11, count=1)
    rm.skipped.add(task="train", attempt=1, count=3, reason="line 2: not a JSON object")
    return rm


def test_status_shows_the_latest_attempts_value_of_each_name(capsys: pytest.CaptureFixture[str]) -> None:
    run = {"tasks": {"train": {}, "other": {}}}
    out = cli_metrics.status_json(run, recorded())
    assert out["tasks"]["train"]["metrics"] == {
        "acc": {"value": 0.9, "step": 3, "attempt": 2, "ts": 20.0, "count": 4},
        "loss": {"value": 0.3, "step": None, "attempt": 1, "ts": 11.0, "count": 1},
    }
    assert out["tasks"]["train"]["metrics_skipped"] == {"attempt": 1, "count": 3, "reason": "line 2: not a JSON object"}
    assert out["tasks"]["other"] == {"metrics": {}, "metrics_skipped": None}
    assert out["metrics_truncated"] is False
    cli_metrics.print_status(recorded())
    text = capsys.readouterr().out
    assert "acc" in text and "0.9 @3" in text and "0.3" in text and "skipped 3 line(s)" in text
    cli_metrics.print_status(control_pb2.RunStageMetrics(run_id="r2"))
    assert capsys.readouterr().out == ""
