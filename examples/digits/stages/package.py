"""package (edge): bundle model + metrics + report + manifest into `bundle` (a directory).

Standard library only, so it runs on a bare edge box.
"""
import hashlib
import json
import shutil
import time
from pathlib import Path

from _stage import context, input_path, log, output_path


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory tree (sorted relative paths + file digests)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        h.update(digest(p).encode() + b"\n")
    return h.hexdigest()


ctx = context()
out = output_path("bundle")
out.mkdir(parents=True, exist_ok=True)

files = {"model": "model.pkl", "metrics": "metrics.json", "report": "validation-report.json"}
inputs = {}
for name, target in files.items():
    src = input_path(name)
    shutil.copyfile(src, out / target)
    inputs[name] = {"file": target, "sha256": digest(src), "bytes": src.stat().st_size}

metrics = json.loads((out / "metrics.json").read_text())
manifest = {
    "pipeline": "digits",
    "run_id": ctx["run_id"],
    "task": ctx["task"],
    "attempt": ctx["attempt"],
    "traceparent": ctx["traceparent"],
    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "accuracy": metrics.get("accuracy"),
    "inputs": inputs,
}
(out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

log(f"bundle for run {ctx['run_id'] or '-'}: accuracy={metrics.get('accuracy')}")
for name, info in inputs.items():
    log(f"  {info['file']:<24} {info['bytes']:>8} B  sha256:{info['sha256'][:16]}")
log(f"wrote bundle/ with {len(list(out.iterdir()))} files")
