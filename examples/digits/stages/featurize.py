"""featurize (hpc): standard-scale features and split train/test with a fixed seed.

Writes `features` as a DIRECTORY: train.npz, test.npz, scaler.json.
"""
import json

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _stage import env_float, env_int, input_path, log, output_path

test_size = env_float("TEST_SIZE", 0.2)
seed = env_int("SEED", 42)

with np.load(input_path("clean")) as data:
    X, y = data["X"], data["y"]

X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=test_size, random_state=seed, stratify=y)
scaler = StandardScaler().fit(X_train)   # fit on train only: no test leakage
X_train_s = scaler.transform(X_train)
X_test_s = scaler.transform(X_test)

out = output_path("features")
out.mkdir(parents=True, exist_ok=True)
np.savez_compressed(out / "train.npz", X=X_train_s, y=y_train)
np.savez_compressed(out / "test.npz", X=X_test_s, y=y_test)
(out / "scaler.json").write_text(json.dumps({
    "kind": "StandardScaler",
    "mean": scaler.mean_.tolist(),
    "scale": scaler.scale_.tolist(),
    "n_features": int(scaler.n_features_in_),
    "test_size": test_size,
    "seed": seed,
}) + "\n")
log(f"split train={len(y_train)} test={len(y_test)} (test_size={test_size}, seed={seed})")
log(f"wrote features/: {', '.join(sorted(p.name for p in out.iterdir()))}")
