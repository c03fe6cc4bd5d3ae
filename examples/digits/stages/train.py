"""train (gpu tier): fit a small MLP on features/train.npz; write `model` (pickle).

env: EPOCHS (passes over the training set), HIDDEN (hidden units), SEED,
TRAIN_FAIL_ATTEMPTS (fail attempts 1..N on purpose, to exercise retries).
"""
import pickle
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from _stage import context, env_int, fail, input_path, log, output_path

ctx = context()
epochs = env_int("EPOCHS", 40)
hidden = env_int("HIDDEN", 64)
seed = env_int("SEED", 0)
fail_attempts = env_int("TRAIN_FAIL_ATTEMPTS", 0)
if epochs < 1:
    fail(f"EPOCHS must be >= 1, got {epochs}")

log(f"attempt {ctx['attempt']}: MLP(hidden={hidden}) for {epochs} epochs, seed={seed}")
if ctx["attempt"] <= fail_attempts:
    fail(f"injected failure on attempt {ctx['attempt']} (TRAIN_FAIL_ATTEMPTS={fail_attempts})")

with np.load(input_path("features") / "train.npz") as data:
    X, y = data["X"], data["y"]
classes = np.unique(y)

clf = MLPClassifier(hidden_layer_sizes=(hidden,), learning_rate_init=1e-3,
                    batch_size=64, random_state=seed)
t0 = time.monotonic()
every = max(1, epochs // 8)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    for epoch in range(1, epochs + 1):
        clf.partial_fit(X, y, classes=classes)
        if epoch % every == 0 or epoch == epochs:
            acc = clf.score(X, y)
            log(f"epoch {epoch:3d}/{epochs} loss={clf.loss_:.4f} train_acc={acc:.3f}")
elapsed = time.monotonic() - t0

out = output_path("model")
with open(out, "wb") as f:
    # No run id or timestamp inside: same inputs + env give byte-identical bytes,
    # so the content-addressed model (and everything downstream) can be memoized.
    pickle.dump({"model": clf, "epochs": epochs, "hidden": hidden, "seed": seed},
                f, protocol=pickle.HIGHEST_PROTOCOL)
log(f"trained in {elapsed:.2f}s; wrote model ({out.stat().st_size} bytes)")
