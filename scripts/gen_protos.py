#!/usr/bin/env python3
"""Regenerate the committed wire stubs in outrider/v1/ from proto/outrider/v1/*.proto.

The proto package ``outrider.v1`` maps onto the Python package ``outrider.v1``, so
the generated ``from outrider.v1 import common_pb2`` imports work without rewriting.

    python scripts/gen_protos.py            # regenerate in place
    python scripts/gen_protos.py --check    # exit 1 if the committed stubs differ
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "outrider" / "v1"
OUT_DIR = ROOT / "outrider" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(dest: Path) -> list[Path]:
    """Run protoc into ``dest`` and return the generated files."""
    from grpc_tools import protoc  # imported here: only this script needs grpcio-tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((dest / "outrider" / "v1").glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, change nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in OUT_DIR.glob("*") if p.name.endswith(GENERATED_SUFFIXES)}
        if args.check:
            drift = sorted(set(fresh) ^ set(committed))
            drift += sorted(
                n for n in set(fresh) & set(committed)
                if not filecmp.cmp(fresh[n], committed[n], shallow=False)
            )
            if drift:
                print("generated stubs differ from proto/: " + ", ".join(drift), file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print(f"stubs in sync ({len(fresh)} files)")
            return 0
        for name, path in committed.items():
            if name not in fresh:
                path.unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, OUT_DIR / name)
        print(f"wrote {len(fresh)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
