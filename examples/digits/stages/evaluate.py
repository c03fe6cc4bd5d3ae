"""evaluate (hpc): score the model on features/test.npz; write `metrics` (JSON).

Fails (quality gate) when accuracy < MIN_ACCURACY.
"""
import json
import pickle

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from _stage import env_float, fail, input_path, log, output_path

try:
    import outrider.metrics as recorded  # `outrider status` shows these; `outrider metrics` compares runs
except ImportError:  # outrider is not installed where this stage runs: the metrics artifact only
    recorded = None

min_acc = env_float("MIN_ACCURACY", 0.0)
with open(input_path("model"), "rb") as f:
    bundle = pickle.load(f)
clf = bundle["model"]
with np.load(input_path("features") / "test.npz") as data:
    X, y = data["X"], data["y"]

pred = clf.predict(X)
acc = float(accuracy_score(y, pred))
labels = list(range(10))
cm = confusion_matrix(y, pred, labels=labels)
per_class = (cm.diagonal() / np.maximum(cm.sum(axis=1), 1)).round(4).tolist()
metrics = {
    "accuracy": round(acc, 4),
    "macro_f1": round(float(f1_score(y, pred, average="macro")), 4),
    "n_test": int(len(y)),
    "per_class_recall": dict(zip(map(str, labels), per_class)),
    "confusion_matrix": cm.tolist(),
    "model": {"epochs": bundle.get("epochs"), "hidden": bundle.get("hidden")},
}
output_path("metrics").write_text(json.dumps(metrics, indent=2) + "\n")
if recorded is not None:
    recorded.log("accuracy", acc)
    recorded.log("macro_f1", metrics["macro_f1"])

worst = int(np.argmin(per_class))
log(f"test samples={len(y)} macro_f1={metrics['macro_f1']:.3f} "
    f"worst class={worst} (recall {per_class[worst]:.3f})")
print(f"accuracy={acc:.3f}", flush=True)
if acc < min_acc:
    fail(f"accuracy {acc:.3f} is below MIN_ACCURACY={min_acc}")
