"""The dashboard (scheduler/web), against real processes.

In real headless Chromium (Debian's ``chromium``, driven by Playwright with the system browser;
skipped, saying why, only where no ``chromium`` is installed): a run's page shows its tasks
changing state live (a stage waits for a file the test creates), the DAG and the timeline render,
a task's log shows user text as text, nothing is fetched from anywhere but the scheduler; a
screenshot of each page is kept under ``$OUTRIDER_TEST_ARTIFACTS`` (default ``tests/artifacts/``,
git-ignored).

Over HTTPS (``--http-listen`` on a non-loopback address): no client certificate is refused at the
handshake, an agent's with 403, a submitter sees its own runs only (another's is 404, as one that
does not exist), an admin sees all. One scheduler per mode, shared by the module's tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outrider.localcluster import LocalCluster
from outrider.pipeline import Pipeline

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(os.environ.get("OUTRIDER_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def waiting(marks: Path) -> Pipeline:
    """prep (prints some hostile text, makes an output) -> gate (waits for marks/go) -> report."""
    p = Pipeline("dash")
    p.task(
        "prep",
        run="echo 'prep <img src=x onerror=\"window.pwned=1\"> done'; echo data > \"$OUTRIDER_OUTPUTS/o\"; "
        # a figure the stage records (outrider.metrics' file, written directly as any stage may)
        "echo '{\"name\": \"rows_kept\", \"value\": 0.875, \"step\": 3}' >> \"$OUTRIDER_METRICS_FILE\"",
        outputs=["o"],
    )
    p.task(
        "gate",
        run=f'echo waiting; while [ ! -e "{marks}/go" ]; do sleep 0.05; done; echo released',
        inputs={"i": "prep.o"},
    )
    p.task("report", run="echo reported", after=["gate"])
    return p


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    """A scheduler whose dashboard is on loopback (plain HTTP, the local operator), one agent."""
    c = LocalCluster(tmp_path_factory.mktemp("dash") / "cluster", heartbeat_interval="0.5s", lease_ttl="3s")
    try:
        port = free_port()
        c.start_scheduler(["--http-listen", f"127.0.0.1:{port}"])
        c.add_agent("edge-1", labels={"tier": "edge"}, slots=2)
        c.wait_agents(["edge-1"])
        yield c, f"http://127.0.0.1:{port}"
    finally:
        c.stop()


def until(page: Any, expression: str, cluster: LocalCluster, api: str, timeout_ms: int = 30_000) -> None:
    """Wait for ``expression`` to hold in the page; on a timeout, fail with what the API and the
    daemons say (the page's own state is in the screenshot the test keeps)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(expression, timeout=timeout_ms)
    except PlaywrightTimeout:
        page.screenshot(path=str(ARTIFACTS / "dashboard-timeout.png"), full_page=True)
        tails = "\n".join(f"--- {d.name}\n{d.tail(30)}" for d in [cluster.scheduler, *cluster.agents.values()] if d)
        raise AssertionError(f"timed out waiting for {expression}\n{api}: {get(api)}\n{tails}") from None


def is_in(task: str, state: str) -> str:
    """A page expression: the DAG's box of ``task`` shows ``state``."""
    return f"() => document.querySelector('#dag g.node[data-task=\"{task}\"]').classList.contains('{state}')"


def node_state(page: Any, task: str) -> str:
    return str(page.eval_on_selector(f'#dag g.node[data-task="{task}"]', "g => g.getAttribute('class')"))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (`make sysdeps` installs Debian's)")
def test_the_run_page_follows_the_run_live_in_chromium(loopback: tuple[LocalCluster, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    cluster, base = loopback
    marks = tmp_path / "marks"
    marks.mkdir()
    with cluster.client() as client:
        run_id = client.submit(waiting(marks)).run_id
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    elsewhere: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(base) else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(f"{base}/runs/{run_id}")
            # The page polls the JSON: the gate stage runs (waiting for its file), prep is done.
            api = f"{base}/api/runs/{run_id}"
            until(page, is_in("gate", "st-running"), cluster, api)
            assert "st-succeeded" in node_state(page, "prep")
            assert "st-pending" in node_state(page, "report")
            assert page.locator("#dag path.edge").count() == 2  # prep -> gate -> report
            assert page.locator("#timeline g.bar").count() >= 2  # prep's attempt and gate's, on edge-1
            assert "edge-1" in page.inner_text("#timeline-box")
            page.screenshot(path=str(ARTIFACTS / "dashboard-run-running.png"), full_page=True)
            status, body = get(f"{base}/api/runs/{run_id}/tasks/report")  # why pending: as `outrider explain`
            assert status == 200 and json.loads(body)["explain"]["reason"] == "upstream", body
            assert "gate (running)" in json.loads(body)["explain"]["message"]
            (marks / "go").touch()
            # Without a reload: the nodes turn green as the run finishes.
            until(page, is_in("report", "st-succeeded"), cluster, api)
            until(page, "() => document.querySelector('#run-state').textContent.includes('succeeded')", cluster, api)
            assert page.locator("#timeline g.bar").count() == 3
            assert "succeeded" in page.inner_text("#tasks")
            page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

            # A task's page: its log (hostile text shown as text, never run), why it is where it is.
            page.goto(f"{base}/runs/{run_id}/tasks/prep")
            until(page, "() => document.querySelector('#log').textContent.includes('done')", cluster, api)
            assert '<img src=x onerror="window.pwned=1">' in page.inner_text("#log")
            assert page.locator("#log img").count() == 0
            assert page.evaluate("() => window.pwned === undefined")
            assert "finished" in page.inner_text("#explain")
            assert "rows_kept" in page.inner_text("main") and "0.875" in page.inner_text("main")  # recorded
            page.screenshot(path=str(ARTIFACTS / "dashboard-task.png"), full_page=True)

            # The output's lineage: made by prep of this run.
            page.locator("a[href^='/artifacts/']").first.click()
            page.wait_for_selector("text=made by")
            assert "prep" in page.inner_text("main") and run_id in page.inner_text("main")

            # The overview: the agent with its labels, the run with its owner.
            page.goto(base + "/")
            page.wait_for_selector("#agents td")
            assert "edge-1" in page.inner_text("#agents") and "tier=edge" in page.inner_text("#agents")
            assert run_id in page.inner_text("#runs")
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
        finally:
            browser.close()
    assert elsewhere == [], f"the dashboard fetched from elsewhere: {elsewhere}"
    assert errors == [], errors
    assert (ARTIFACTS / "dashboard-run.png").stat().st_size > 10_000


def test_bad_paths_and_ids_are_bounded_answers(loopback: tuple[LocalCluster, str]) -> None:
    _, base = loopback
    assert get(base + "/nope")[0] == 404
    assert get(base + "/api/runs/no-such-run")[0] == 404
    status, body = get(base + "/runs/bad%20id%3Cscript%3E")
    assert status == 400 and "<script>" not in body and "not a run id" in body
    status, body = get(base + "/api/artifacts/sha256:xyz/lineage")
    assert status == 400 and "digest" in json.loads(body)["error"]
    assert get(base + "/static/../server.py")[0] == 404
    status, _ = get(base + "/api/overview")
    assert status == 200
    req = urllib.request.Request(base + "/api/overview", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 405
    # DNS rebinding: a name from elsewhere that resolves to loopback is not the local operator.
    req = urllib.request.Request(base + "/api/overview", headers={"Host": "evil.example:7480"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 403 and "not a loopback name" in info.value.read().decode()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str, dict[str, str]]]:
    """A scheduler whose dashboard listens on every interface (so: HTTPS, client certificates
    required), no agents; a pending run each of alice and bob."""
    c = LocalCluster(tmp_path_factory.mktemp("dash-tls") / "cluster")
    try:
        port = free_port()
        c.start_scheduler(["--http-listen", f"0.0.0.0:{port}"])
        runs = {}
        for who in ("alice", "bob"):
            with c.client(who) as client:
                p = Pipeline(f"of-{who}")
                p.task("t", run="true")
                runs[who] = client.submit(p).run_id
        yield c, f"https://127.0.0.1:{port}", runs
    finally:
        c.stop()


def tls(cluster: LocalCluster, role: str | None, name: str = "") -> ssl.SSLContext:
    ca = cluster.pki / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    if role is not None:
        _, cert, key = cluster.issue(role, name or role)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_https_needs_a_client_certificate_and_follows_ownership(
    mtls: tuple[LocalCluster, str, dict[str, str]],
) -> None:
    cluster, base, runs = mtls
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        get(base + "/api/runs", tls(cluster, None))  # refused at the handshake

    status, body = get(base + "/api/runs", tls(cluster, "agent", "edge-9"))
    assert status == 403 and "may not view the dashboard" in json.loads(body)["error"]

    alice = tls(cluster, "submitter", "alice")
    status, body = get(base + "/api/runs", alice)
    assert status == 200
    seen = json.loads(body)
    assert [r["run_id"] for r in seen["runs"]] == [runs["alice"]] and seen["others"] == 1
    assert get(base + f"/runs/{runs['alice']}", alice)[0] == 200
    mine, theirs = get(base + f"/api/runs/{runs['bob']}", alice), get(base + "/api/runs/run-0000-none", alice)
    assert mine[0] == theirs[0] == 404  # another's run reads as one that does not exist
    assert get(base + f"/runs/{runs['bob']}/tasks/t", alice)[0] == 404
    status, page = get(base + "/", alice)
    assert status == 200 and runs["alice"] in page and runs["bob"] not in page
    assert "spiffe://outrider.local/submitter/alice" in page

    status, body = get(base + "/api/runs", tls(cluster, "admin", "root"))
    assert status == 200 and {r["run_id"] for r in json.loads(body)["runs"]} == set(runs.values())

    # Plain HTTP on the TLS port is no way around it.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(base.replace("https", "http") + "/api/runs")
