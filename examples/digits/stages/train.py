"""train (gpu tier): fit a small MLP on features/train.npz; write `model` (pickle).

Checkpoints after every epoch (outrider.checkpoint) and resumes from the last one: a retry,
or the same attempt resumed on another agent after this one was lost or drained, goes on
from the epoch it had reached instead of starting over. Asked to stop (SIGTERM: the agent
drains, or the attempt must end), it finishes the epoch, checkpoints, and exits.

env: EPOCHS (passes over the training set), HIDDEN (hidden units), SEED,
TRAIN_FAIL_ATTEMPTS (fail attempts 1..N on purpose, before training, to exercise retries),
TRAIN_FAIL_AFTER_EPOCH (attempt 1 fails right after checkpointing this epoch, to watch the
retry resume; 0 = never), EPOCH_SLEEP (seconds per epoch added, to watch it happen).
"""
import pickle
import signal
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from _stage import context, env_float, env_int, fail, input_path, log, output_path

try:
    import outrider.checkpoint as checkpoint
    import outrider.metrics as recorded
except ImportError:  # outrider is not installed where this stage runs: no checkpoints
    checkpoint = recorded = None

ctx = context()
epochs = env_int("EPOCHS", 40)
hidden = env_int("HIDDEN", 64)
seed = env_int("SEED", 0)
fail_attempts = env_int("TRAIN_FAIL_ATTEMPTS", 0)
fail_after = env_int("TRAIN_FAIL_AFTER_EPOCH", 0)
epoch_sleep = env_float("EPOCH_SLEEP", 0.0)
if epochs < 1:
    fail(f"EPOCHS must be >= 1, got {epochs}")

log(f"attempt {ctx['attempt']}: MLP(hidden={hidden}) for {epochs} epochs, seed={seed}")
if ctx["attempt"] <= fail_attempts:
    fail(f"injected failure on attempt {ctx['attempt']} (TRAIN_FAIL_ATTEMPTS={fail_attempts})")

stop_requested = []
signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))

with np.load(input_path("features") / "train.npz") as data:
    X, y = data["X"], data["y"]
classes = np.unique(y)

state = checkpoint.load() if checkpoint is not None else None
if state is not None:
    clf, first = state["model"], state["epoch"] + 1
    log(f"resuming from the checkpoint of epoch {state['epoch']}")
else:
    clf, first = MLPClassifier(hidden_layer_sizes=(hidden,), learning_rate_init=1e-3,
                               batch_size=64, random_state=seed), 1
t0 = time.monotonic()
every = max(1, epochs // 8)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    for epoch in range(first, epochs + 1):
        clf.partial_fit(X, y, classes=classes)
        if epoch_sleep:
            time.sleep(epoch_sleep)
        if epoch % every == 0 or epoch == epochs:
            acc = clf.score(X, y)
            log(f"epoch {epoch:3d}/{epochs} loss={clf.loss_:.4f} train_acc={acc:.3f}")
            if recorded is not None:  # the curve, per epoch: `outrider status` shows the last point
                recorded.log("loss", clf.loss_, step=epoch)
                recorded.log("train_accuracy", acc, step=epoch)
        if checkpoint is not None:
            # The whole estimator (weights and optimizer state): training goes on where it was.
            checkpoint.save({"epoch": epoch, "model": clf})
        if stop_requested:
            log(f"asked to stop: checkpointed after epoch {epoch}; exiting")
            sys.exit(143)
        if ctx["attempt"] == 1 and epoch == fail_after:
            fail(f"injected failure after epoch {epoch} (TRAIN_FAIL_AFTER_EPOCH={fail_after})")
elapsed = time.monotonic() - t0

out = output_path("model")
with open(out, "wb") as f:
    # No run id or timestamp inside: same inputs + env give byte-identical bytes,
    # so the content-addressed model (and everything downstream) can be memoized.
    pickle.dump({"model": clf, "epochs": epochs, "hidden": hidden, "seed": seed},
                f, protocol=pickle.HIGHEST_PROTOCOL)
log(f"trained in {elapsed:.2f}s; wrote model ({out.stat().st_size} bytes)")
