"""Trace export over OTLP (scheduler/otlp.py): optional, off by default; the tracing switch.

The conversion to OpenTelemetry spans is tested only where the ``otel`` extra is installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider.errors import ConfigError
from scheduler import otlp
from scheduler.core import tracing
from scheduler.core.tracing import Span
from scheduler.main import load_config

TRACE = "0af7651916cd43dd8448eb211c80319c"


def _config(tmp_path: Path, *argv: str):  # type: ignore[no-untyped-def]
    return load_config(["--state-dir", str(tmp_path / "s"), *argv])


def test_tracing_is_on_by_default_and_switched_by_flag_or_toml(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.tracing is True and cfg.otlp_endpoint == ""
    assert _config(tmp_path, "--tracing", "off").tracing is False
    toml = tmp_path / "s.toml"
    toml.write_text("tracing = false\n")
    assert _config(tmp_path, "--config", str(toml)).tracing is False
    toml.write_text('tracing = "maybe"\n')
    with pytest.raises(ConfigError, match="tracing must be true or false"):
        _config(tmp_path, "--config", str(toml))


def test_an_endpoint_needs_a_url_tracing_on_and_the_otel_extra(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="otlp_endpoint must be an http:// or https:// URL"):
        _config(tmp_path, "--otlp-endpoint", "collector:4317")
    with pytest.raises(ConfigError, match="tracing is off"):
        _config(tmp_path, "--otlp-endpoint", "http://127.0.0.1:4317", "--tracing", "off")
    monkeypatch.setattr(otlp, "available", lambda: "opentelemetry-sdk")
    with pytest.raises(ConfigError, match=r"opentelemetry-sdk is not installed: pip install 'outrider\[otel\]'"):
        _config(tmp_path, "--otlp-endpoint", "http://127.0.0.1:4317")


def test_without_the_extra_the_scheduler_refuses_to_start_when_export_is_asked(tmp_path: Path) -> None:
    if not otlp.available():
        pytest.skip("the otel extra is installed here: nothing is missing")
    with pytest.raises(ConfigError, match="is not installed"):
        _config(tmp_path, "--otlp-endpoint", "http://127.0.0.1:4317")


def _spans() -> list[Span]:
    root = tracing.root_id(TRACE)
    att = tracing.attempt_id(TRACE, "train", 1)
    return [
        Span(TRACE, root, "", "run", 100.0, 110.0, attributes={"run_id": "run-1", "state": "succeeded"}),
        Span(TRACE, att, root, "attempt", 101.0, 109.5, "train", 1, "gpu-1", {"state": "succeeded"}),
        Span(TRACE, tracing.span_id(TRACE, "train", 1, "execute"), att, "execute", 102.0, 109.0, "train", 1, "gpu-1"),
        Span(TRACE, tracing.span_id(TRACE, "train", 2, "queue"), att, "queue", 111.0, 0.0, "train", 2),  # open
    ]


def test_spans_convert_to_opentelemetry_with_their_w3c_ids_and_times() -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (opentelemetry-sdk) is not installed")
    got = otlp.to_otel(_spans())
    assert [s.name for s in got] == ["run", "attempt", "execute"]  # an open span is not exported
    run, attempt, execute = got
    assert {f"{s.context.trace_id:032x}" for s in got} == {TRACE}
    assert f"{run.context.span_id:016x}" == tracing.root_id(TRACE) and run.parent is None
    assert attempt.parent.span_id == run.context.span_id and execute.parent.span_id == attempt.context.span_id
    assert (execute.start_time, execute.end_time) == (102_000_000_000, 109_000_000_000)
    assert execute.attributes["outrider.agent"] == "gpu-1" and execute.attributes["outrider.attempt"] == 1
    assert run.attributes["outrider.run_id"] == "run-1"
    assert run.resource.attributes["service.name"] == "outrider-scheduler"


def test_the_exporter_hands_ended_spans_to_a_batching_otlp_exporter() -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (opentelemetry-sdk) is not installed")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    sink = otlp.Exporter("http://127.0.0.1:4317", exporter=memory)
    sink(_spans())
    sink.close()  # flushes the batch
    assert sorted(s.name for s in memory.get_finished_spans()) == ["attempt", "execute", "run"]
