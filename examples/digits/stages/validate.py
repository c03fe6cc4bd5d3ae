"""validate (edge): check the raw data; write `report` (JSON) and pass it on as `clean`.

Exits non-zero with a clear message when the data is bad (the report is still written).
"""
import json
import shutil

import numpy as np

from _stage import env_float, fail, input_path, log, output_path

EXPECTED_FEATURES = 64           # 8x8 pixels
VALUE_MIN, VALUE_MAX = 0.0, 16.0
EXPECTED_CLASSES = list(range(10))

src = input_path("raw")
min_ratio = env_float("MIN_CLASS_RATIO", 0.5)
problems: list[str] = []

try:
    with np.load(src) as data:
        X, y = data["X"], data["y"]
except Exception as exc:  # not an .npz, or missing arrays
    fail(f"cannot read input 'raw' as .npz with arrays X and y: {exc}")

log(f"checking X{tuple(X.shape)} y{tuple(y.shape)}")
if X.ndim != 2 or X.shape[1] != EXPECTED_FEATURES:
    problems.append(f"X must be (n, {EXPECTED_FEATURES}), got {tuple(X.shape)}")
if y.ndim != 1 or y.shape[0] != X.shape[0]:
    problems.append(f"y must be ({X.shape[0]},), got {tuple(y.shape)}")
n_nan = int(np.isnan(X).sum()) if np.issubdtype(X.dtype, np.floating) else 0
if n_nan:
    problems.append(f"X has {n_nan} NaN values")
finite = X[np.isfinite(X)] if np.issubdtype(X.dtype, np.floating) else X
lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
if finite.size and (lo < VALUE_MIN or hi > VALUE_MAX):
    problems.append(f"X values must lie in [{VALUE_MIN:g}, {VALUE_MAX:g}], got [{lo:g}, {hi:g}]")

classes, counts = np.unique(y, return_counts=True)
class_counts = {int(c): int(n) for c, n in zip(classes, counts)}
if sorted(class_counts) != EXPECTED_CLASSES:
    problems.append(f"expected classes {EXPECTED_CLASSES}, got {sorted(class_counts)}")
ratio = float(counts.min() / counts.max()) if counts.size else 0.0
if ratio < min_ratio:
    problems.append(f"class imbalance: rarest/commonest = {ratio:.2f} < MIN_CLASS_RATIO={min_ratio}")

report = {
    "ok": not problems,
    "problems": problems,
    "n_samples": int(X.shape[0]),
    "n_features": int(X.shape[1]) if X.ndim == 2 else None,
    "value_range": [lo, hi],
    "nan_count": n_nan,
    "class_counts": class_counts,
    "class_balance_ratio": round(ratio, 4),
}
output_path("report").write_text(json.dumps(report, indent=2) + "\n")
log(f"classes={len(class_counts)} balance={ratio:.2f} range=[{lo:g}, {hi:g}] nan={n_nan}")

if problems:
    for p in problems:
        log(f"FAIL: {p}")
    fail(f"data validation failed with {len(problems)} problem(s); not passing it on")

shutil.copyfile(src, output_path("clean"))
log("data OK; passed on as clean")
