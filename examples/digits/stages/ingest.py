"""ingest (edge): capture the digits data set and write it as `raw` (.npz: X, y)."""
import os

import numpy as np
from sklearn.datasets import load_digits

from _stage import context, fail, log, output_path

ctx = context()
log(f"run={ctx['run_id']} attempt={ctx['attempt']} traceparent={ctx['traceparent'] or '-'}")

digits = load_digits()
X = digits.data.astype(np.float64)   # (1797, 64), pixel intensities 0..16
y = digits.target.astype(np.int64)   # (1797,), labels 0..9
log(f"captured {X.shape[0]} images of {int(np.sqrt(X.shape[1]))}x{int(np.sqrt(X.shape[1]))} px, "
    f"{len(np.unique(y))} classes")

# Fault injection for demos: make validate reject the data.
corrupt = os.environ.get("DIGITS_CORRUPT", "").strip().lower()
if corrupt == "nan":
    X[::97, 5] = np.nan
elif corrupt == "range":
    X[3, 10] = 255.0
elif corrupt == "shape":
    X = X[:, :60]
elif corrupt:
    fail(f"unknown DIGITS_CORRUPT={corrupt!r} (use nan, range or shape)")
if corrupt:
    log(f"WARNING: corrupting data on purpose (DIGITS_CORRUPT={corrupt})")

out = output_path("raw")
# Write through a file object: np.savez on a path would append ".npz".
with open(out, "wb") as f:
    np.savez_compressed(f, X=X, y=y)
log(f"wrote raw ({out.stat().st_size} bytes)")
