"""``make demo``: the example ML pipeline end to end on one machine.

Makes a throwaway CA, starts a scheduler and three agents on loopback (labelled
like a GPU node, an HPC node and an edge box), submits examples/digits, watches
it live, then prints where each task ran, the model's accuracy (as its stages
recorded it), the lineage of every artifact, and, from the scheduler, the run's
trace across the machines (`outrider trace`) and the final bundle's lineage
(`outrider lineage`). Everything it started is stopped on exit, Ctrl-C included.
Exit status 0 when the run succeeded.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from outrider.localcluster import LocalCluster
from outrider.pipeline import load_pipeline

HERE = Path(__file__).resolve().parent
AGENTS = {
    "gpu-1": {"tier": "gpu", "accelerator": "gpu", "site": "lab"},
    "hpc-1": {"tier": "hpc", "site": "campus"},
    "edge-1": {"tier": "edge", "site": "plant-7"},
}
# Data-residency zones each agent sits in (the pipeline keeps its data in the EU).
ZONES = {"gpu-1": "eu,eu-central", "hpc-1": "eu,eu-west", "edge-1": "eu,eu-west"}


def say(msg: str = "") -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=str(HERE / "digits" / "pipeline.yaml"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database) afterwards")
    args = ap.parse_args(argv)

    # Ctrl-C or SIGTERM: unwind through the finally below, which stops everything.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = Path(tempfile.mkdtemp(prefix="outrider-demo-"))
    # Stages run `python3`: make it this interpreter (the venv with numpy and scikit-learn).
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cluster = LocalCluster(root, trust_domain="demo.outrider", env=env)
    try:
        pipeline = load_pipeline(args.pipeline)
        say(f"==> throwaway CA and certificates in {cluster.pki}")
        cluster.init_pki()
        address = cluster.start_scheduler()
        say(f"==> scheduler serving on {address} (mTLS, SQLite in {root / 'scheduler'})")
        for name, labels in AGENTS.items():
            cluster.add_agent(name, labels=labels, slots=2, extra_args=["--zones", ZONES[name]])
        cluster.wait_agents(AGENTS)
        say("==> agents connected: " + ", ".join(
            f"{n} ({','.join(f'{k}={v}' for k, v in ls.items())}; zones {ZONES[n]})" for n, ls in AGENTS.items()))
        with cluster.client("demo-user") as client:
            plan = client.plan(pipeline)
            for tp in plan.tasks:
                if not tp.feasible_agents:
                    say(f"!! task {tp.task} fits no agent: {dict(tp.rejections)}")
                    return 1
            t0 = time.monotonic()
            res = client.submit(pipeline)
            say(f"==> submitted pipeline {pipeline.name!r} as run {res.run_id}")
            for w in res.warnings:
                say(f"    warning: {w}")
            final = None
            for ev in client.watch(res.run_id):
                if ev.HasField("snapshot"):
                    final = ev.snapshot
                if ev.task and ev.state != "ready":
                    where = f" on {ev.agent} (attempt {ev.attempt})" if ev.state == "running" else ""
                    note = f": {ev.message}" if ev.message else ""
                    say(f"    {time.monotonic() - t0:6.2f}s  {ev.task:<10} {ev.state}{where}{note}")
            assert final is not None
            took = time.monotonic() - t0
            say(f"==> run {final.state} in {took:.1f}s")
            say()
            say(f"    {'TASK':<10} {'AGENT':<8} {'ATTEMPTS':<9} {'TIME':>7}  OUTPUTS")
            for t in final.tasks:
                outs = ", ".join(f"{o.name}={o.digest[:12]}" for o in t.outputs) or t.error
                secs = (t.finished_at - t.started_at) if t.started_at and t.finished_at else 0.0
                say(f"    {t.name:<10} {t.agent or '-':<8} {t.attempts:<9} {secs:6.2f}s  {outs}")
            tasks = {t.name: t for t in final.tasks}
            # What the stages recorded (outrider.metrics.log), stored with each attempt by the scheduler.
            recorded = {(m.task, m.name): m for m in client.stage_metrics([res.run_id])[0].metrics}
            acc = recorded.get(("evaluate", "accuracy"))
            if acc is not None:
                say()
                say(f"==> model accuracy on the held-out digits: {acc.value:.3f}  (logged by the evaluate stage;"
                    f" `outrider status {res.run_id}` shows it, `outrider metrics RUN...` compares runs)")
                loss = recorded.get(("train", "loss"))
                if loss is not None:
                    say(f"    final training loss: {loss.value:.4f} at epoch {loss.step}")
            say()
            say("==> lineage (artifact <- task <- inputs):")
            digest_of = {f"{t.name}.{o.name}": o.digest for t in final.tasks for o in t.outputs}
            for name in pipeline.topological_order():
                t = tasks[name]
                ins = ", ".join(f"{inp}={digest_of.get(ref, '?')[:12]}"
                                for inp, ref in pipeline.tasks[name].inputs.items()) or "-"
                for o in t.outputs:
                    say(f"    {o.digest[:12]} ({o.kind}, {o.size} B) <- {name}@{t.agent} <- {ins}")
            say(f"    code bundle: {final.code_digest[:12]}")
            # The same, and more, from the scheduler: the run's trace across the machines, and the
            # lineage of the final bundle as `outrider lineage` walks it.
            env = cluster.client_env("demo-user")
            bundle = tasks["package"].outputs[0].digest if tasks["package"].outputs else ""
            for title, argv in (
                ("the run's trace across machines (outrider trace RUN)", ["trace", res.run_id]),
                ("the bundle's lineage (outrider lineage DIGEST)", ["lineage", bundle[:12]] if bundle else []),
            ):
                if not argv:
                    continue
                done = subprocess.run([sys.executable, "-m", "outrider.cli", *argv], env=env,
                                      capture_output=True, text=True, timeout=60)
                say()
                say(f"==> {title}:")
                for line in (done.stdout or done.stderr).rstrip().splitlines():
                    say(f"    {line}")
            return 0 if final.state == "succeeded" else 1
    except KeyboardInterrupt:
        say("\n==> interrupted; stopping everything")
        return 130
    finally:
        cluster.stop()
        if args.keep:
            say(f"==> logs and state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
