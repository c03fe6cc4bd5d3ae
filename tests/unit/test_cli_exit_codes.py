"""The one table from status names to the CLI's exit codes, and how errors reach it."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from outrider import cli, errors
from outrider.client import ConnectionFailed, _translate
from outrider.pipeline import load_pipeline

EXPECTED = {
    "OK": 2,  # never an error's status; listed so every StatusCode is decided here
    "CANCELLED": 2,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 6,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 7,
    "PERMISSION_DENIED": 4,
    "RESOURCE_EXHAUSTED": 7,
    "FAILED_PRECONDITION": 3,
    "ABORTED": 7,
    "OUT_OF_RANGE": 3,
    "UNIMPLEMENTED": 2,
    "INTERNAL": 2,
    "UNAVAILABLE": 6,
    "DATA_LOSS": 2,
    "UNAUTHENTICATED": 4,
}


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_every_grpc_status_has_its_exit_code() -> None:
    assert {c.name for c in grpc.StatusCode} == set(EXPECTED)
    for name, code in EXPECTED.items():
        assert errors.exit_code(name) == code, name
    # The codes the verbs set themselves are never an error's.
    assert not {0, 1, 130} & set(errors.EXIT_CODES.values())
    assert errors.exit_code("CONFIG_ERROR") == errors.exit_code("USAGE") == errors.EXIT_OTHER == 2


@pytest.mark.parametrize("status", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
def test_a_failed_call_keeps_its_status_on_the_exception(status: grpc.StatusCode) -> None:
    err = _translate(FakeRpcError(status, "why"))
    assert isinstance(err, errors.OutriderError)
    assert errors.status_name(err) == status.name
    assert "why" in str(err)
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED):
        assert isinstance(err, ConnectionFailed) and err.status == status.name


def test_local_errors_are_named(tmp_path: Path) -> None:
    assert errors.status_name(errors.ConfigError("x.toml: invalid TOML")) == "CONFIG_ERROR"
    assert errors.status_name(errors.InvalidArgument("bad")) == "INVALID_ARGUMENT"
    assert errors.status_name(FileNotFoundError(2, "No such file or directory", "f")) == "NOT_FOUND"
    assert errors.status_name(PermissionError(13, "Permission denied", "f")) == "PERMISSION_DENIED"
    assert errors.status_name(IsADirectoryError(21, "Is a directory", "f")) == "UNKNOWN"
    assert errors.status_name(RuntimeError("x")) == "UNKNOWN"
    with pytest.raises(errors.InvalidArgument) as missing:
        load_pipeline(tmp_path / "nowhere.yaml")
    assert errors.status_name(missing.value) == "NOT_FOUND"
    (tmp_path / "bad.yaml").write_text("name: bad\ntasks: {}\nwat: 1\n")
    with pytest.raises(errors.InvalidArgument) as bad:
        load_pipeline(tmp_path / "bad.yaml")
    assert errors.status_name(bad.value) == "INVALID_ARGUMENT"


def test_main_prints_the_error_for_a_person_and_under_json_for_a_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No scheduler needed: pki works on local files, so its errors go through the same table.
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["pki", "init", str(blocker), "--trust-domain", "acme.ml"]) == 3
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("outrider: error: ") and "not a directory" in out.err
    assert cli.main(["pki", "init", str(blocker), "--trust-domain", "acme.ml", "--json"]) == 3
    out = capsys.readouterr()
    got = json.loads(out.out)
    assert got == {"error": {"code": "INVALID_ARGUMENT", "message": got["error"]["message"], "exit_code": 3}}
    assert "not a directory" in got["error"]["message"] and "not a directory" in out.err

    assert cli.main(["plan", str(tmp_path / "nowhere.yaml"), "--json"]) == 5
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "NOT_FOUND"

    assert cli.main(["pki", "issue", "d", "scheduler", "n", "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["error"]["code"] == "USAGE" and "invalid choice" in out.err
    assert cli.main(["pki", "issue", "d", "scheduler", "n"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("usage: outrider pki issue")


def test_a_verb_failing_on_a_local_file_or_an_untranslated_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_such_file(args: object) -> int:
        raise FileNotFoundError(2, "No such file or directory", "/x/y")

    def raw_rpc(args: object) -> int:
        raise FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "spiffe://d/submitter/s may not call X")

    monkeypatch.setattr(cli, "cmd_status", no_such_file)
    assert cli.main(["status", "r", "--json"]) == 5
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == {
        "code": "NOT_FOUND",
        "message": "/x/y: No such file or directory",
        "exit_code": 5,
    }
    monkeypatch.setattr(cli, "cmd_status", raw_rpc)
    assert cli.main(["status", "r"]) == 4
    assert "may not call X" in capsys.readouterr().err


def test_interrupt_and_a_closed_pipe_keep_their_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    def closed_pipe(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_status", interrupted)
    assert cli.main(["status", "r", "--json"]) == 130
    monkeypatch.setattr(cli, "cmd_status", closed_pipe)
    assert cli.main(["status", "r", "--json"]) == 0
    assert capsys.readouterr().out == ""  # neither is an error to report
