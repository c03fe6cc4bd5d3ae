"""``stage_user`` (issue 8): the config keys, the checks that refuse a user the agent cannot
switch to, the state dir lock-down, the work dir hand-over, and the keeper's choice between
its fast ``posix_spawn`` and a spawn that changes ids."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import stageuser
from agent.keeper import Keeper
from outrider import pki
from outrider.errors import ConfigError

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, "test.ml")
    pki.issue(d, "agent", "edge-1")
    return d


def load(pki_dir: Path, *argv: str) -> Any:
    from agent.main import load_config

    return load_config(["--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-1", *argv])


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")


def test_unset_by_default(pki_dir: Path) -> None:
    cfg = load(pki_dir)
    assert (cfg.stage_user, cfg.stage_group) == ("", "")
    assert stageuser.resolve("") is None


@ROOT_ONLY
def test_flag_and_toml_name_the_stage_user(pki_dir: Path, tmp_path: Path) -> None:
    pw = nobody()
    cfg = load(pki_dir, "--stage-user", "nobody")
    assert cfg.stage_user == "nobody"
    toml = tmp_path / "agent.toml"
    toml.write_text(f'stage_user = "{pw.pw_uid}"\nstage_group = "{pw.pw_gid}"\n')
    cfg = load(pki_dir, "--config", str(toml))
    assert (cfg.stage_user, cfg.stage_group) == (str(pw.pw_uid), str(pw.pw_gid))
    assert stageuser.resolve(cfg.stage_user, cfg.stage_group) == stageuser.StageUser("nobody", pw.pw_uid, pw.pw_gid)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--stage-user", "no-such-user-xyz"), "no such user 'no-such-user-xyz'"),
        (("--stage-user", "nobody", "--stage-group", "no-such-group-xyz"), "no such group 'no-such-group-xyz'"),
        (("--stage-user", "root"), "is root"),
        (("--stage-group", "nogroup"), "stage_group is set but stage_user is not"),
    ],
)
def test_bad_stage_users_are_refused(pki_dir: Path, argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(pki_dir, *argv)


def test_an_agent_that_cannot_switch_users_refuses_to_start(pki_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nobody()
    monkeypatch.setattr(stageuser, "missing_caps", lambda: ["CAP_SETGID", "CAP_SETUID"])
    with pytest.raises(ConfigError, match=r"cannot run stages as another user.*CAP_SETGID, CAP_SETUID"):
        load(pki_dir, "--stage-user", "nobody")


def test_missing_caps_reads_the_effective_set() -> None:
    everything = "Name:\tx\nCapEff:\t000001ffffffffff\n"
    assert stageuser.missing_caps(everything) == []
    only_setuid_setgid = f"CapEff:\t{(1 << 6) | (1 << 7):016x}\n"
    assert stageuser.missing_caps(only_setuid_setgid) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL"]
    assert len(stageuser.missing_caps("CapEff:\t0000000000000000\n")) == len(stageuser.REQUIRED_CAPS)


def test_lock_down_keeps_everything_but_work_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for d in ("work", "cache", "pki"):
        (state / d).mkdir(parents=True)
    (state / "journal").write_text("x")
    os.chmod(state / "journal", 0o644)
    os.chmod(state / "pki", 0o755)
    old = os.umask(0o022)
    try:
        stageuser.lock_down(state)
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    assert stat.S_IMODE(state.stat().st_mode) == 0o711
    assert modes == {"work": 0o711, "cache": 0o700, "pki": 0o700, "journal": 0o600}


@ROOT_ONLY
def test_hand_over_gives_the_work_dir_but_not_the_output_files(tmp_path: Path) -> None:
    pw = nobody()
    w = tmp_path / "w"
    (w / ".outrider" / "outputs").mkdir(parents=True)
    (w / ".outrider" / "stdout").write_text("")
    (w / "code.py").write_text("")
    (w / "link").symlink_to("/etc/passwd")
    stageuser.hand_over(w, stageuser.StageUser("nobody", pw.pw_uid, pw.pw_gid))
    for p in (w, w / ".outrider", w / ".outrider" / "outputs", w / "code.py"):
        assert p.stat().st_uid == pw.pw_uid, p
    assert (w / "link").lstat().st_uid == pw.pw_uid
    assert Path("/etc/passwd").stat().st_uid == 0  # the link, not what it points at
    assert (w / ".outrider" / "stdout").stat().st_uid == os.geteuid()


def test_open_own_file_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    os.close(stageuser.open_own_file(str(tmp_path / "f")))
    (tmp_path / "l").symlink_to(tmp_path / "f")
    with pytest.raises(OSError):
        stageuser.open_own_file(str(tmp_path / "l"))


def test_keeper_without_a_user_keeps_posix_spawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = Keeper(str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **kw: calls.append("posix_spawn") or 4242)
    monkeypatch.setattr(k, "_spawn_as", lambda *a: calls.append("as user") or 4343)
    out, err = str(tmp_path / "out"), str(tmp_path / "err")
    assert k._launch(["/bin/true"], {}, str(tmp_path), out, err) == 4242
    k._handle({"op": "hello", "env": {}, "grace": 1, "user": [1234, 5678]})
    assert k.user == (1234, 5678)
    assert k._launch(["/bin/true"], {}, str(tmp_path), out, err) == 4343
    k._handle({"op": "hello", "env": {}, "grace": 1})  # (a probe's hello: the user stays)
    assert k.user == (1234, 5678)
    k._handle({"op": "hello", "env": {}, "grace": 1, "user": None})
    assert k._launch(["/bin/true"], {}, str(tmp_path), out, err) == 4242
    assert calls == ["posix_spawn", "as user", "posix_spawn"]


@ROOT_ONLY
def test_keeper_starts_a_stage_as_the_user_and_reaps_it_itself(tmp_path: Path) -> None:
    pw = nobody()
    os.chmod(tmp_path, 0o755)
    k = Keeper(str(tmp_path))
    k.user = (pw.pw_uid, pw.pw_gid)
    out = tmp_path / "out"
    pid = k._launch(["sh", "-c", "id -u; id -g; id -G"], {"PATH": os.defpath}, str(tmp_path), str(out), str(out))
    popen = k._popens[pid]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out.read_text().split() == [str(pw.pw_uid), str(pw.pw_gid), str(pw.pw_gid)]  # no other groups
    popen.returncode = 0  # (what _reap does; the Popen must not reap on its own)
    with pytest.raises(FileNotFoundError) as exc:
        k._launch(["no-such-program-xyz"], {"PATH": os.defpath}, str(tmp_path), str(out), str(out))
    assert exc.value.filename == "no-such-program-xyz"


@ROOT_ONLY
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to run a keeper with ambient capabilities")
def test_a_non_root_keepers_capabilities_do_not_reach_the_stage(tmp_path: Path) -> None:
    """The systemd set-up without root: the agent (here the keeper) runs as a user with
    AmbientCapabilities=CAP_SETUID and co.; the stage it starts as nobody holds none of them."""
    pw, agent_uid = nobody(), 1  # (daemon: any user other than root and nobody)
    os.chmod(tmp_path, 0o777)
    script = tmp_path / "k.py"
    script.write_text(
        f"import os, sys\nsys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
        "from agent.keeper import Keeper\n"
        f"k = Keeper({str(tmp_path)!r})\nk.user = ({pw.pw_uid}, {pw.pw_gid})\n"
        "pid = k._launch(['sh', '-c', 'id -u; grep -E \"^Cap(Prm|Eff|Amb)\" /proc/self/status'], "
        f"{{'PATH': os.defpath}}, {str(tmp_path)!r}, {str(tmp_path / 'out')!r}, {str(tmp_path / 'out')!r})\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    caps = "+chown,+dac_override,+fowner,+kill,+setgid,+setuid"
    subprocess.run(
        ["setpriv", f"--reuid={agent_uid}", f"--regid={agent_uid}", "--clear-groups", f"--inh-caps={caps}",
         f"--ambient-caps={caps}", sys.executable, "-I", "-S", str(script)],
        check=True, timeout=30,
    )
    lines = (tmp_path / "out").read_text().split("\n")
    assert lines[0] == str(pw.pw_uid)
    assert {line.split()[0]: int(line.split()[1], 16) for line in lines[1:] if line} == {
        "CapPrm:": 0, "CapEff:": 0, "CapAmb:": 0
    }
