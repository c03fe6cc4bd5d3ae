"""Tests for the config helpers (outrider.config) and the daemons' load_config.

Flags win over the TOML file, which wins over the defaults; every error names
the key (and the file) it is about.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from outrider import pki
from outrider.config import merge_config, parse_bytes, parse_duration, parse_labels
from outrider.errors import ConfigError, OutriderError

# --------------------------------------------------------------------------- parse_bytes


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("4GiB", 4 * 2**30),
        ("4gib", 4 * 2**30),
        ("4Gi", 4 * 2**30),
        ("512M", 512 * 10**6),
        ("512MB", 512 * 10**6),
        ("1.5KiB", 1536),
        ("1000", 1000),
        (" 2 TiB ", 2 * 2**40),
        ("7b", 7),
        (1000, 1000),
        (1.9, 1),
        (0, 0),
    ],
)
def test_parse_bytes(text: object, want: int) -> None:
    assert parse_bytes(text) == want


@pytest.mark.parametrize("bad", ["4 parsecs", "GiB", "", "-1", "1e3", "4GiBs", None, [], True])
def test_parse_bytes_rejects_naming_the_value(bad: object) -> None:
    with pytest.raises(ValueError) as exc:
        parse_bytes(bad)
    assert repr(bad) in str(exc.value)


def test_parse_bytes_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_bytes(-5)


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("5", 5.0),
        ("1.5s", 1.5),
        ("2d", 172800.0),
        ("1m30s", 90.0),
        (" 10s ", 10.0),
        (5, 5.0),
        (0.5, 0.5),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: object, want: float) -> None:
    assert parse_duration(text) == pytest.approx(want)


@pytest.mark.parametrize("bad", ["5x", "m5", "", "1h 30m", "30M", "1m30", "-5s", "s", None, True, {}])
def test_parse_duration_rejects_naming_the_value(bad: object) -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration(bad)
    assert repr(bad) in str(exc.value)


def test_parse_duration_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-1)


# --------------------------------------------------------------------------- parse_labels


def test_parse_labels() -> None:
    assert parse_labels("site=plant-7,tier=edge") == {"site": "plant-7", "tier": "edge"}
    assert parse_labels(" a = 1 , b=2 ,") == {"a": "1", "b": "2"}
    assert parse_labels("") == {}
    assert parse_labels("k=") == {"k": ""}
    assert parse_labels("url=a=b") == {"url": "a=b"}


@pytest.mark.parametrize("bad", ["tier", "a=1,oops", "=x", " =x"])
def test_parse_labels_rejects_naming_the_item(bad: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_labels(bad)
    item = bad.split(",")[-1].strip()
    assert repr(item) in str(exc.value)


# --------------------------------------------------------------------------- merge_config


KNOWN = {"listen": "0.0.0.0:7443", "lease_ttl": 15.0, "log_level": "info"}


def test_merge_precedence_flags_over_file_over_defaults() -> None:
    merged = merge_config(
        {"listen": "file:1", "lease_ttl": "20s"},
        {"listen": "flag:2", "lease_ttl": None, "config": "x.toml", "log_level": None},
        KNOWN, "x.toml",
    )
    assert merged == {"listen": "flag:2", "lease_ttl": "20s", "log_level": "info"}


def test_merge_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as exc:
        merge_config({"lease_tll": "20s", "listen": "a:1"}, {}, KNOWN, "/etc/outrider/scheduler.toml")
    msg = str(exc.value)
    assert "lease_tll" in msg and "/etc/outrider/scheduler.toml" in msg
    assert "lease_ttl" in msg  # the known keys are listed


def test_merge_does_not_modify_its_inputs() -> None:
    known = dict(KNOWN)
    merge_config({"listen": "a:1"}, {"lease_ttl": 3}, known, "f")
    assert known == KNOWN


# --------------------------------------------------------------------------- scheduler.main.load_config


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_scheduler_defaults() -> None:
    from scheduler.main import load_config

    cfg = load_config([])
    assert (cfg.listen, cfg.lease_ttl, cfg.heartbeat_interval) == ("0.0.0.0:7443", 15.0, 3.0)


def test_scheduler_flags_override_toml(tmp_path: Path) -> None:
    from scheduler.main import load_config

    toml = write(tmp_path / "s.toml", 'listen = "127.0.0.1:9000"\nstate_dir = "/srv/o"\nlease_ttl = "20s"\n'
                                      'heartbeat_interval = 4\nlog_level = "debug"\n')
    cfg = load_config(["--config", toml])
    assert (cfg.listen, cfg.state_dir, cfg.lease_ttl, cfg.heartbeat_interval, cfg.log_level) == (
        "127.0.0.1:9000", "/srv/o", 20.0, 4.0, "debug")
    cfg = load_config(["--config", toml, "--listen", "0.0.0.0:0", "--lease-ttl", "1m", "--state-dir", str(tmp_path)])
    assert (cfg.listen, cfg.lease_ttl, cfg.state_dir, cfg.heartbeat_interval) == (
        "0.0.0.0:0", 60.0, str(tmp_path), 4.0)


@pytest.mark.parametrize("key", ["lease_ttl", "heartbeat_interval"])
def test_scheduler_bad_duration_names_key_and_file(tmp_path: Path, key: str) -> None:
    from scheduler.main import load_config

    toml = write(tmp_path / "s.toml", f'{key} = "soon"\n')
    with pytest.raises(OutriderError) as exc:
        load_config(["--config", toml])
    msg = str(exc.value)
    assert key in msg and toml in msg and "'soon'" in msg


def test_scheduler_bad_duration_flag_names_key() -> None:
    from scheduler.main import load_config

    with pytest.raises(OutriderError, match="lease_ttl"):
        load_config(["--lease-ttl", "15 seconds"])


def test_scheduler_lease_ttl_must_exceed_heartbeat() -> None:
    from scheduler.main import load_config

    with pytest.raises(OutriderError, match="lease_ttl must be longer than heartbeat_interval"):
        load_config(["--lease-ttl", "2s", "--heartbeat-interval", "3s"])
    with pytest.raises(OutriderError, match="heartbeat_interval"):
        load_config(["--heartbeat-interval", "0"])


@pytest.mark.parametrize("listen", ["localhost", "7443", ""])
def test_scheduler_listen_without_port_names_key(tmp_path: Path, listen: str) -> None:
    from scheduler.main import load_config

    toml = write(tmp_path / "s.toml", f'listen = "{listen}"\n')
    with pytest.raises(OutriderError) as exc:
        load_config(["--config", toml])
    assert "listen" in str(exc.value) and toml in str(exc.value)


@pytest.mark.parametrize("listen", ["0.0.0.0:99999", "0.0.0.0:seven", "host:-1"])
def test_scheduler_listen_with_bad_port_names_key(listen: str) -> None:
    """A port that is not a number in 0..65535 is as bad as no port: refuse it at
    start-up naming the key, not later with a bind error."""
    from scheduler.main import load_config

    with pytest.raises(OutriderError, match="listen"):
        load_config(["--listen", listen])


def test_scheduler_unknown_key_names_it(tmp_path: Path) -> None:
    from scheduler.main import load_config

    toml = write(tmp_path / "s.toml", 'lisen = "0.0.0.0:1"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", toml])
    assert "lisen" in str(exc.value) and toml in str(exc.value)


def test_scheduler_paths_are_made_absolute_flags_against_cwd_file_against_its_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 7, fault 6: a relative path in the config never reaches the running daemon."""
    from scheduler.main import load_config

    etc = tmp_path / "etc"
    etc.mkdir()
    toml = write(etc / "s.toml", 'state_dir = "state"\npki_dir = "../pki"\nready_file = "run/ready"\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(["--config", toml])
    assert (cfg.state_dir, cfg.pki_dir, cfg.ready_file) == (
        str(etc / "state"), str(tmp_path / "pki"), str(etc / "run" / "ready"))
    cfg = load_config(["--config", toml, "--state-dir", "mine", "--pki-dir", "./p", "--ready-file", "r"])
    assert (cfg.state_dir, cfg.pki_dir, cfg.ready_file) == (str(work / "mine"), str(work / "p"), str(work / "r"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(["--state-dir", "~/s"]).state_dir == str(tmp_path / "s")
    assert load_config([]).ready_file == ""  # empty stays empty (no ready file)


def test_scheduler_pipeline_limits(tmp_path: Path) -> None:
    from scheduler.main import load_config

    cfg = load_config([])
    assert (cfg.max_pipeline_tasks, cfg.max_pipeline_bytes) == (100_000, 32 << 20)
    toml = write(tmp_path / "s.toml", 'max_pipeline_tasks = 500\nmax_pipeline_bytes = "4MiB"\n')
    cfg = load_config(["--config", toml])
    assert (cfg.max_pipeline_tasks, cfg.max_pipeline_bytes) == (500, 4 << 20)
    cfg = load_config(["--config", toml, "--max-pipeline-tasks", "7", "--max-pipeline-bytes", "1MiB"])
    assert (cfg.max_pipeline_tasks, cfg.max_pipeline_bytes) == (7, 1 << 20)
    for bad in ("max_pipeline_tasks = 0", "max_pipeline_tasks = -1", 'max_pipeline_tasks = "many"',
                'max_pipeline_bytes = "lots"', 'max_pipeline_bytes = "1GiB"', "max_pipeline_bytes = 10"):
        key = bad.split()[0]
        with pytest.raises(ConfigError) as exc:
            load_config(["--config", write(tmp_path / "bad.toml", bad + "\n")])
        assert key in str(exc.value), (bad, str(exc.value))


def test_scheduler_missing_or_invalid_file(tmp_path: Path) -> None:
    from scheduler.main import load_config

    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not found") as exc:
        load_config(["--config", missing])
    assert missing in str(exc.value)
    bad = write(tmp_path / "bad.toml", "listen = \n")
    with pytest.raises(ConfigError, match="invalid TOML") as exc:
        load_config(["--config", bad])
    assert bad in str(exc.value)


# --------------------------------------------------------------------------- agent.main.load_config


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, "test.ml")
    pki.issue(d, "agent", "edge-1")
    return d


def agent_config(*argv: str):  # type: ignore[no-untyped-def]
    from agent.main import load_config

    return load_config(list(argv))


def test_agent_pki_dir_and_name_expand_to_paths(pki_dir: Path) -> None:
    cfg = agent_config("--scheduler", "sched:7443", "--pki-dir", str(pki_dir), "--name", "edge-1")
    assert cfg.ca == str(pki_dir / "ca.crt")
    assert cfg.cert == str(pki_dir / "edge-1.crt")
    assert cfg.key == str(pki_dir / "edge-1.key")
    assert cfg.scheduler == "sched:7443"
    assert (cfg.labels, cfg.slots, cfg.kill_grace) == ({}, 0, 5.0)


def test_agent_explicit_paths_win_over_pki_dir(pki_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.crt"
    shutil.copyfile(pki_dir / "edge-1.crt", other)
    cfg = agent_config("--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-1", "--cert", str(other))
    assert cfg.cert == str(other)
    assert cfg.key == str(pki_dir / "edge-1.key")


def test_agent_flags_override_toml(pki_dir: Path, tmp_path: Path) -> None:
    toml = write(tmp_path / "a.toml",
                 f'scheduler = "sched:7443"\npki_dir = "{pki_dir}"\nname = "edge-1"\nslots = 2\n'
                 'kill_grace = "10s"\nntp_servers = ["ntp1", "ntp2:123"]\n'
                 '[labels]\nsite = "plant-7"\ntier = "edge"\n')
    cfg = agent_config("--config", toml)
    assert cfg.labels == {"site": "plant-7", "tier": "edge"}
    assert (cfg.slots, cfg.kill_grace, cfg.ntp_servers) == (2, 10.0, ["ntp1", "ntp2:123"])
    cfg = agent_config("--config", toml, "--slots", "8", "--labels", "tier=gpu", "--kill-grace", "250ms",
                       "--ntp-servers", "a, b", "--scheduler", "other:1")
    assert cfg.labels == {"tier": "gpu"}  # flags replace the table, they do not merge into it
    assert (cfg.slots, cfg.kill_grace, cfg.ntp_servers, cfg.scheduler) == (8, 0.25, ["a", "b"], "other:1")


def test_agent_labels_may_be_a_string_in_toml(pki_dir: Path, tmp_path: Path) -> None:
    toml = write(tmp_path / "a.toml", f'scheduler = "s:1"\npki_dir = "{pki_dir}"\nname = "edge-1"\n'
                                      'labels = "a=1,b=2"\n')
    assert agent_config("--config", toml).labels == {"a": "1", "b": "2"}


def test_agent_bad_kill_grace_names_key(pki_dir: Path, tmp_path: Path) -> None:
    toml = write(tmp_path / "a.toml", f'scheduler = "s:1"\npki_dir = "{pki_dir}"\nname = "edge-1"\n'
                                      'kill_grace = "a while"\n')
    with pytest.raises(ConfigError) as exc:
        agent_config("--config", toml)
    assert "kill_grace" in str(exc.value) and toml in str(exc.value)


def test_agent_bad_labels_name_the_item(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'gpu'"):
        agent_config("--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-1", "--labels", "site=a,gpu")


def test_agent_labels_must_be_strings(pki_dir: Path, tmp_path: Path) -> None:
    toml = write(tmp_path / "a.toml", f'scheduler = "s:1"\npki_dir = "{pki_dir}"\nname = "edge-1"\n'
                                      '[labels]\ngpus = 2\n')
    with pytest.raises(ConfigError, match="labels"):
        agent_config("--config", toml)


def test_agent_scheduler_without_port_names_key(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match="scheduler: expected HOST:PORT"):
        agent_config("--scheduler", "sched", "--pki-dir", str(pki_dir), "--name", "edge-1")


def test_agent_missing_settings_are_named() -> None:
    with pytest.raises(ConfigError) as exc:
        agent_config()
    for key in ("scheduler", "ca", "cert", "key"):
        assert key in str(exc.value)


def test_agent_negative_slots_refused(pki_dir: Path, tmp_path: Path) -> None:
    toml = write(tmp_path / "a.toml", f'scheduler = "s:1"\npki_dir = "{pki_dir}"\nname = "edge-1"\nslots = -1\n')
    with pytest.raises(ConfigError, match="slots"):
        agent_config("--config", toml)


def test_agent_unknown_key_names_it(tmp_path: Path) -> None:
    toml = write(tmp_path / "a.toml", 'schedular = "s:1"\n')
    with pytest.raises(ConfigError, match="schedular"):
        agent_config("--config", toml)


@pytest.mark.parametrize(("missing", "what"), [("edge-1.crt", "certificate"), ("edge-1.key", "private key"),
                                               ("ca.crt", "CA certificate")])
def test_agent_missing_pki_file_is_named(pki_dir: Path, tmp_path: Path, missing: str, what: str) -> None:
    d = tmp_path / "pki"
    shutil.copytree(pki_dir, d)
    (d / missing).unlink()
    with pytest.raises(ConfigError) as exc:
        agent_config("--scheduler", "s:1", "--pki-dir", str(d), "--name", "edge-1")
    msg = str(exc.value)
    assert str(d / missing) in msg and f"{what} not found" in msg


def test_agent_non_pem_cert_is_named(pki_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "pki"
    shutil.copytree(pki_dir, d)
    (d / "edge-1.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM file") as exc:
        agent_config("--scheduler", "s:1", "--pki-dir", str(d), "--name", "edge-1")
    assert str(d / "edge-1.crt") in str(exc.value)


def test_agent_unknown_name_in_pki_dir_is_named(pki_dir: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        agent_config("--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-9")
    assert str(pki_dir / "edge-9.crt") in str(exc.value)
