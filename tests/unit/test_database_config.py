"""The ``database`` setting (flag and TOML key) and ``database_password_file``: which backend,
where, and the clear errors for what is wrong (scheduler/store/select.py, scheduler/main.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from outrider.errors import ConfigError
from scheduler.main import load_config
from scheduler.store.select import normalise, open_store, read_password_file
from scheduler.store.sqlite import SqliteStore
from tests.helpers.backends import PostgresBackend


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "etc" / "scheduler.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def test_the_default_is_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    cfg = load_config([])
    assert (cfg.database, cfg.database_password_file) == ("", "")
    store = open_store("", "", tmp_path)
    try:
        assert isinstance(store, SqliteStore) and store.path == tmp_path / "outrider.db"
    finally:
        store.close()


def test_sqlite_paths_are_made_absolute_as_every_path_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(["--database", "db/x.db"]).database == str(tmp_path / "db" / "x.db")
    assert load_config(["--database", "sqlite:///srv/o/x.db"]).database == "/srv/o/x.db"
    cfg = load_config(["--config", toml(tmp_path, 'database = "state/o.db"\n')])
    assert cfg.database == str(tmp_path / "etc" / "state" / "o.db")  # against the file's directory
    cfg = load_config(["--config", toml(tmp_path, 'database = "sqlite:///var/o.db"\n')])
    assert cfg.database == "/var/o.db"


def test_a_postgresql_uri_passes_through_with_its_tls_parameters(tmp_path: Path) -> None:
    uri = "postgresql://sched@db.example:5432/outrider?sslmode=verify-full&sslrootcert=/etc/outrider/pg-ca.crt"
    assert load_config(["--database", uri]).database == uri
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = load_config(["--config", toml(tmp_path, f'database = "{uri}"\ndatabase_password_file = "../pw"\n')])
    assert (cfg.database, cfg.database_password_file) == (uri, str(pw))
    assert load_config(["--database", "postgres://db.example/o"]).database == "postgres://db.example/o"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("postgresql://sched:s3cret@db.example/outrider", "password file"),
        ("postgresql://db.example/outrider?password=s3cret", "password file"),
        ("mysql://db.example/outrider", "unknown scheme 'mysql'"),
        ("sqlite://relative.db", "absolute path"),
        ("postgresql://db.example:notaport:9/x?=", "not a valid PostgreSQL URI"),
    ],
)
def test_a_bad_database_is_a_clear_error(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(["--database", value])
    assert words in str(exc.value)
    assert "s3cret" not in str(exc.value)
    assert str(exc.value).startswith("--database")


def test_a_bad_database_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, 'database = "postgresql://u:s3cret@h/d"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", path])
    assert str(exc.value).startswith(path) and "s3cret" not in str(exc.value)
    with pytest.raises(ConfigError, match="must be a string"):
        normalise(5, "/", "x")  # type: ignore[arg-type]


def test_a_password_file_is_only_for_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="database_password_file is for a PostgreSQL database"):
        load_config(["--database-password-file", str(tmp_path / "pw")])
    with pytest.raises(ConfigError, match="is for a PostgreSQL database"):
        open_store("", str(tmp_path / "pw"), tmp_path)


def test_the_password_file_is_read_and_checked(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("first line\nsecond\n")
    pw.chmod(0o600)
    assert read_password_file(str(pw)) == "first line"
    pw.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_password_file(str(pw))
    pw.chmod(0o600)
    pw.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        read_password_file(str(pw))
    with pytest.raises(ConfigError, match="cannot read"):
        read_password_file(str(tmp_path / "missing"))


def test_open_store_reaches_postgresql_with_the_password_file(pg_backend: PostgresBackend, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(pg_backend.server.password + "\n")
    os.chmod(pw, 0o600)
    store = open_store(pg_backend.uri, str(pw), tmp_path)
    try:
        assert type(store).__name__ == "PostgresStore"
        assert store.load().runs == []
    finally:
        store.close()
    assert not (tmp_path / "outrider.db").exists()
