"""The committed wire stubs (outrider/v1/*_pb2*.py*) match proto/, and the check notices drift.

``scripts/gen_protos.py`` is imported as a module; the drift tests point its
ROOT/PROTO_ROOT/PROTO_DIR/OUT_DIR globals at a copy of the tree in tmp_path, so
the real checkout is never touched.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (the [test] extra) is needed to regenerate stubs")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_protos.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, Path]:
    """The script, pointed at a copy of proto/ and outrider/v1/ under tmp_path."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "proto", root / "proto")
    shutil.copytree(REPO / "outrider" / "v1", root / "outrider" / "v1",
                    ignore=shutil.ignore_patterns("__pycache__"))
    mod = load_script()
    monkeypatch.setattr(mod, "ROOT", root)
    monkeypatch.setattr(mod, "PROTO_ROOT", root / "proto")
    monkeypatch.setattr(mod, "PROTO_DIR", root / "proto" / "outrider" / "v1")
    monkeypatch.setattr(mod, "OUT_DIR", root / "outrider" / "v1")
    return mod, root


def test_committed_stubs_match_protos(capsys: pytest.CaptureFixture[str]) -> None:
    mod = load_script()
    rc = mod.main(["--check"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "in sync" in out


def test_every_proto_has_committed_stubs() -> None:
    protos = sorted(p.stem for p in (REPO / "proto" / "outrider" / "v1").glob("*.proto"))
    assert protos, "no .proto files found"
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (REPO / "outrider" / "v1" / f"{stem}{suffix}").is_file(), f"{stem}{suffix} is not committed"


def test_copied_tree_is_in_sync(tree: tuple[ModuleType, Path]) -> None:
    mod, _ = tree
    assert mod.main(["--check"]) == 0


def test_check_detects_an_edited_proto(tree: tuple[ModuleType, Path], capsys: pytest.CaptureFixture[str]) -> None:
    mod, root = tree
    proto = root / "proto" / "outrider" / "v1" / "common.proto"
    text = proto.read_text()
    anchor = "message LeaseRef {\n"
    assert anchor in text
    proto.write_text(text.replace(anchor, anchor + "  string drift_canary = 99;\n"))
    committed = {p.name: p.read_bytes() for p in (root / "outrider" / "v1").iterdir() if p.is_file()}

    rc = mod.main(["--check"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "common_pb2.py" in err and "common_pb2.pyi" in err
    assert "gen_protos.py" in err  # says how to fix it
    # --check changes nothing.
    assert {p.name: p.read_bytes() for p in (root / "outrider" / "v1").iterdir() if p.is_file()} == committed

    # Regenerating brings the tree back in sync, with the new field in the stubs.
    assert mod.main([]) == 0
    assert "drift_canary" in (root / "outrider" / "v1" / "common_pb2.pyi").read_text()
    assert mod.main(["--check"]) == 0


def test_check_detects_a_stale_extra_stub(tree: tuple[ModuleType, Path], capsys: pytest.CaptureFixture[str]) -> None:
    mod, root = tree
    (root / "outrider" / "v1" / "removed_pb2.py").write_text("# a stub whose .proto was deleted\n")
    assert mod.main(["--check"]) == 1
    assert "removed_pb2.py" in capsys.readouterr().err
    assert mod.main([]) == 0  # regenerating deletes it
    assert not (root / "outrider" / "v1" / "removed_pb2.py").exists()


def test_check_detects_a_missing_stub(tree: tuple[ModuleType, Path], capsys: pytest.CaptureFixture[str]) -> None:
    mod, root = tree
    (root / "outrider" / "v1" / "agent_pb2_grpc.py").unlink()
    assert mod.main(["--check"]) == 1
    assert "agent_pb2_grpc.py" in capsys.readouterr().err


def test_check_detects_a_hand_edited_stub(tree: tuple[ModuleType, Path], capsys: pytest.CaptureFixture[str]) -> None:
    mod, root = tree
    stub = root / "outrider" / "v1" / "control_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    assert mod.main(["--check"]) == 1
    assert "control_pb2.pyi" in capsys.readouterr().err
