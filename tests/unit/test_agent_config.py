"""The agent's config loader: every path setting comes out absolute (issue 7, fault 6),
and the keys added for durability (drain, preemption) load from flags and TOML."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from outrider import pki
from outrider.errors import ConfigError


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, "test.ml")
    pki.issue(d, "agent", "edge-1")
    return d


def load(*argv: str):  # type: ignore[no-untyped-def]
    from agent.main import load_config

    return load_config(list(argv))


def test_relative_flags_resolve_against_the_working_directory(
    pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pki_dir.parent)
    cfg = load("--scheduler", "s:1", "--pki-dir", pki_dir.name, "--name", "edge-1", "--state-dir", "state")
    assert cfg.state_dir == str(pki_dir.parent / "state")
    assert cfg.pki_dir == str(pki_dir)
    assert (cfg.ca, cfg.cert, cfg.key) == tuple(str(pki_dir / n) for n in ("ca.crt", "edge-1.crt", "edge-1.key"))


def test_relative_toml_paths_resolve_against_the_file(
    pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    rel_pki = os.path.relpath(pki_dir, etc)
    (etc / "agent.toml").write_text(
        f'scheduler = "s:1"\nca = "{rel_pki}/ca.crt"\ncert = "{rel_pki}/edge-1.crt"\n'
        f'key = "{rel_pki}/edge-1.key"\nstate_dir = "var/state"\npreemption_file = "notice"\n'
    )
    monkeypatch.chdir("/")
    cfg = load("--config", str(etc / "agent.toml"))
    assert cfg.state_dir == str(etc / "var" / "state")
    assert cfg.preemption_file == str(etc / "notice")
    assert cfg.cert == str(pki_dir / "edge-1.crt")
    # A flag still wins, resolved against the working directory.
    monkeypatch.chdir(tmp_path)
    cfg = load("--config", str(etc / "agent.toml"), "--state-dir", "mine", "--preemption-file", "/run/notice")
    assert (cfg.state_dir, cfg.preemption_file) == (str(tmp_path / "mine"), "/run/notice")


def test_home_is_expanded(pki_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(pki_dir.parent))
    cfg = load("--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-1", "--state-dir", "~/agent")
    assert cfg.state_dir == str(pki_dir.parent / "agent")


def test_drain_grace_and_preemption_file(pki_dir: Path, tmp_path: Path) -> None:
    base = ("--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-1")
    cfg = load(*base)
    assert (cfg.drain_grace, cfg.preemption_file) == (60.0, "")
    cfg = load(*base, "--drain-grace", "2m", "--preemption-file", str(tmp_path / "notice"))
    assert (cfg.drain_grace, cfg.preemption_file) == (120.0, str(tmp_path / "notice"))
    with pytest.raises(ConfigError, match="drain_grace"):
        load(*base, "--drain-grace", "soon")


def test_max_extract_bytes_from_flags_and_toml(pki_dir: Path, tmp_path: Path) -> None:
    """The ceiling on what one directory artifact may expand to in a work dir (issue 8)."""
    base = ("--scheduler", "s:1", "--pki-dir", str(pki_dir), "--name", "edge-1")
    assert load(*base).max_extract_bytes == 10 << 30
    assert load(*base, "--max-extract-bytes", "512MiB").max_extract_bytes == 512 << 20
    toml = tmp_path / "agent.toml"
    toml.write_text(f'scheduler = "s:1"\npki_dir = "{pki_dir}"\nname = "edge-1"\nmax_extract_bytes = "2GiB"\n')
    assert load("--config", str(toml)).max_extract_bytes == 2 << 30
    with pytest.raises(ConfigError, match="max_extract_bytes"):
        load(*base, "--max-extract-bytes", "lots")
