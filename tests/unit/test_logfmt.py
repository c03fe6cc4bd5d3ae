"""The daemons' log formats (outrider/logfmt.py) and their settings in both daemons' configs."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from outrider import logfmt
from outrider.errors import ConfigError


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _logger(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logfmt.JsonFormatter() if fmt == "json" else logfmt.TextFormatter())
    lg = logging.getLogger(f"test.logfmt.{fmt}")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg, out


def test_json_lines_carry_what_a_record_is_about() -> None:
    lg, out = _logger("json")
    lg.info("plain %s", "line")
    with logfmt.context(run_id="run-1", task="train", attempt=2, trace_id="ab" * 16):
        lg.warning('quoted "%s"\nand a second line', "x")
        lg.info("the call's own fields win", extra=logfmt.about("run-2", "eval"))
    try:
        raise ValueError("boom")
    except ValueError:
        lg.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # one record per line, whatever the message holds
    plain, about, own, failed = (json.loads(x) for x in lines)
    assert set(plain) == {"ts", "level", "logger", "msg"} and plain["msg"] == "plain line"
    assert plain["level"] == "info" and plain["logger"] == "test.logfmt.json" and plain["ts"].endswith("Z")
    assert about["msg"] == 'quoted "x"\nand a second line' and about["level"] == "warning"
    assert (about["run_id"], about["task"], about["attempt"], about["trace_id"]) == ("run-1", "train", 2, "ab" * 16)
    assert (own["run_id"], own["task"], own["attempt"]) == ("run-2", "eval", 2)
    assert "run_id" not in failed and "ValueError: boom" in failed["exc"] and "Traceback" in failed["exc"]


def test_text_lines_are_readable_with_the_context_at_the_end() -> None:
    lg, out = _logger("text")
    lg.info("no context")
    with logfmt.context(run_id="run-1", task="train", attempt=1):
        lg.info("with context")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" INFO test.logfmt.text: no context")
    assert second.endswith(" INFO test.logfmt.text: with context [run=run-1 task=train attempt=1]")


def test_an_asyncio_task_keeps_the_context_it_was_started_in() -> None:
    lg, out = _logger("json")

    async def stage(name: str) -> None:
        with logfmt.context(task=name):
            await asyncio.sleep(0)
            lg.info("in %s", name)

    async def main() -> None:
        with logfmt.context(run_id="r"):
            await asyncio.gather(stage("a"), stage("b"))
        lg.info("after")

    asyncio.run(main())
    recs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert {(r["msg"], r.get("run_id"), r.get("task")) for r in recs} == {
        ("in a", "r", "a"),
        ("in b", "r", "b"),
        ("after", None, None),
    }


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert logfmt.resolve("auto", _Tty()) == "text"
    assert logfmt.resolve("auto", io.StringIO()) == "json"
    assert logfmt.resolve("text", io.StringIO()) == "text" and logfmt.resolve("json", _Tty()) == "json"
    assert logfmt.trace_of(f"00-{'ab' * 16}-{'cd' * 8}-01") == "ab" * 16 and logfmt.trace_of("junk") == ""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        out = io.StringIO()
        assert logfmt.setup("auto", "warning", out) == "json"
        logging.getLogger("x").info("dropped")
        logging.getLogger("x").warning("kept")
        assert [json.loads(x)["msg"] for x in out.getvalue().splitlines()] == ["kept"]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_both_daemons_take_log_format_from_flag_and_toml(tmp_path) -> None:
    from agent.main import load_config as agent_config
    from scheduler.main import load_config as scheduler_config

    state = ["--state-dir", str(tmp_path / "s")]
    assert scheduler_config(state).log_format == "auto"
    assert scheduler_config([*state, "--log-format", "json"]).log_format == "json"
    toml = tmp_path / "s.toml"
    toml.write_text('log_format = "text"\n')
    assert scheduler_config(["--config", str(toml), *state]).log_format == "text"
    toml.write_text('log_format = "yaml"\n')
    with pytest.raises(ConfigError, match=r"log_format must be one of auto, json, text.*'yaml'"):
        scheduler_config(["--config", str(toml), *state])
    from outrider import pki

    pki.init_ca(tmp_path / "pki", "test.ml")
    pki.issue(tmp_path / "pki", "agent", "a")
    base = ["--scheduler", "127.0.0.1:1", "--pki-dir", str(tmp_path / "pki"), "--name", "a", *state]
    assert agent_config([*base, "--log-format", "text"]).log_format == "text"
    toml.write_text('log_format = "json"\n')
    assert agent_config(["--config", str(toml), *base]).log_format == "json"
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        agent_config([*base, "--log-format", "xml"])
