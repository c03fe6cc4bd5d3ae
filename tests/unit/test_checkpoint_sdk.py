"""outrider.checkpoint, the stage's side: save and load by the documented rule, never a
half-written checkpoint, nothing outside Outrider, and no gRPC imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from outrider import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ckdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "ck"
    monkeypatch.setenv(checkpoint.ENV, str(d))
    return d


def test_outside_outrider_save_does_nothing_and_load_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(checkpoint.ENV, raising=False)
    assert checkpoint.save({"epoch": 1}) is None
    assert checkpoint.load() is None


def test_objects_round_trip_and_the_newest_wins(ckdir: Path) -> None:
    assert checkpoint.load() is None
    first = checkpoint.save({"epoch": 1})
    second = checkpoint.save({"epoch": 2, "weights": [0.5] * 3})
    assert first is not None and second is not None and first != second
    assert (first / checkpoint.MARKER).exists() and (second / checkpoint.MARKER).exists()
    assert checkpoint.load() == {"epoch": 2, "weights": [0.5] * 3}
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".tmp-")]  # built aside, renamed in


def test_files_and_directories_are_copied(ckdir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00\x01")
    checkpoint.save(model)
    model.write_bytes(b"changed after the save")
    got = checkpoint.load()
    assert isinstance(got, Path) and got.name == "model.bin" and got.read_bytes() == b"\x00\x01"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    checkpoint.save(tree)
    got = checkpoint.load()
    assert isinstance(got, Path) and (got / "sub" / "a.txt").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        checkpoint.save(tmp_path / "missing")
    assert isinstance(checkpoint.load(), Path)  # the failed save left nothing behind
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".")]


def test_the_plain_directory_rule(ckdir: Path) -> None:
    """A stage in any language: a new subdirectory, ``.complete`` created last."""
    ckdir.mkdir()
    done = ckdir / "ckpt-1"
    done.mkdir()
    (done / "state.txt").write_text("epoch 1")
    (done / checkpoint.MARKER).touch()
    half = ckdir / "ckpt-2"  # being written: no marker yet
    half.mkdir()
    (half / "state.txt").write_text("epo")
    os.utime(done / checkpoint.MARKER, ns=(1, 1))
    assert checkpoint.latest() == done
    assert checkpoint.load() == done  # no metadata: the directory itself
    (half / checkpoint.MARKER).touch()
    assert checkpoint.latest() == half
    (ckdir / ".hidden").mkdir()
    (ckdir / ".hidden" / checkpoint.MARKER).touch()
    assert checkpoint.latest() == half  # hidden names are never checkpoints


def test_importing_it_is_light() -> None:
    code = "import outrider.checkpoint, sys; print(sorted(m for m in ('grpc', 'google.protobuf', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
