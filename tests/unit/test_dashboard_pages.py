"""The dashboard's pieces without processes: escaping, the DAG levels, the log tail, the flag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from outrider.errors import ConfigError, InvalidArgument
from scheduler.logs import LogStore
from scheduler.main import load_config
from scheduler.web import data, pages
from scheduler.web.server import is_loopback

HOSTILE = '<script>alert("x")</script>&"\''
VIEWER = data.Viewer("local operator (loopback)", "operator")


def run_json(error: str = HOSTILE) -> dict:
    tasks = [
        {"name": "a", "state": "succeeded", "agent": HOSTILE, "attempts": 1, "error": "", "exit_code": 0,
         "started_at": 10.0, "finished_at": 11.0, "duration_s": 1.0, "upstream": [], "outputs": [], "level": 0},
        {"name": "b", "state": "failed", "agent": "x", "attempts": 2, "error": error, "exit_code": 1,
         "started_at": 11.0, "finished_at": 12.0, "duration_s": 1.0, "upstream": ["a"], "outputs": [], "level": 1},
    ]
    attempts = [
        {"task": "a", "attempt": 1, "agent": HOSTILE, "state": "succeeded", "started_at": 10.0, "finished_at": 11.0},
        {"task": "b", "attempt": 2, "agent": "x", "state": "failed", "started_at": 11.0, "finished_at": 12.0},
    ]
    return {"run_id": "run-1", "pipeline": "p", "state": "failed", "owner": HOSTILE, "created_at": 9.0,
            "finished_at": 12.0, "duration_s": 3.0, "tasks": 2, "task_states": {"failed": 1}, "now": 13.0,
            "drawn": True, "tasks_list": tasks, "edges": [["a", "b"]], "attempts": attempts}


def test_user_text_is_escaped_everywhere_on_the_run_page() -> None:
    html = pages.run_page(VIEWER, run_json())
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;&#x27;" in html
    assert html.count("<script") == 1 and '<script src="/static/dashboard.js">' in html  # ours only
    assert not re.search(r"\son\w+=", html)  # no inline handler
    assert html.count('class="node st-') == 2 and html.count("class=edge") == 1
    assert html.count('class="bar st-') == 2


def test_the_dag_is_laid_out_by_topological_level() -> None:
    html = pages.dag_svg(run_json())
    xs = [int(x) for x in re.findall(r'<rect x="(\d+)"', html)]
    assert xs == [10, 10 + pages.NODE_W + pages.GAP_X]  # a in column 0, b (downstream) in column 1


def test_ids_are_checked_before_use() -> None:
    for bad in ("", "../x", "a b", "x" * 200, "<b>"):
        with pytest.raises(InvalidArgument):
            data.run_id_arg(bad)
    with pytest.raises(InvalidArgument):
        data.digest_arg("sha256:nothex")
    assert data.digest_arg("sha256:" + "ab" * 32) == data.digest_arg("ab" * 32) == "ab" * 32
    with pytest.raises(InvalidArgument):
        data.task_arg("a/b")


def test_the_log_tail_reads_from_an_offset_and_bounds_the_first_read(tmp_path: Path) -> None:
    logs = LogStore(tmp_path)
    for i in range(10):
        logs.append("r", "t", 1, "stdout" if i % 2 else "stderr", f"line {i}\n".encode(), float(i))
    everything, end = logs.tail("r", "t", 1, 0)
    assert [d for _, _, d in everything] == [f"line {i}\n".encode() for i in range(10)]
    last, end2 = logs.tail("r", "t", 1, -1, limit=14)  # the last 14 bytes' worth: two lines
    assert [d for _, _, d in last] == [b"line 8\n", b"line 9\n"] and end2 == end
    assert logs.tail("r", "t", 1, end) == ([], end)
    logs.append("r", "t", 1, "stdout", b"more\n", 11.0)
    new, _ = logs.tail("r", "t", 1, end)
    assert new == [(11.0, "stdout", b"more\n")]
    assert logs.tail("r", "t", 2, -1) == ([], 0)  # no such attempt's log yet


def test_http_listen_is_loopback_by_default_and_a_bare_port_means_loopback(tmp_path: Path) -> None:
    base = ["--state-dir", str(tmp_path), "--pki-dir", str(tmp_path)]
    assert load_config(base).http_listen == "auto"  # 127.0.0.1:7480 if free (scheduler.server)
    assert load_config([*base, "--http-listen", "off"]).http_listen == ""
    assert load_config([*base, "--http-listen", ""]).http_listen == ""
    assert load_config([*base, "--http-listen", ":7480"]).http_listen == "127.0.0.1:7480"
    with pytest.raises(ConfigError, match="http_listen"):
        load_config([*base, "--http-listen", "nohost"])
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_a_standby_says_which_replica_leads(tmp_path: Path) -> None:
    import asyncio
    import urllib.error
    import urllib.request

    from scheduler.web.server import HttpServer

    def fetch(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def scenario() -> list[tuple[int, str]]:
        http = HttpServer("127.0.0.1:0", None, "outrider.local", LogStore(tmp_path))  # type: ignore[arg-type]
        http.leader_hint = lambda: "sched-b.example:7443"
        address = await http.start()
        try:
            paths = ("/", "/api/runs", "/static/dashboard.css")
            return [await asyncio.to_thread(fetch, address + path) for path in paths]
        finally:
            await http.stop()

    (page, api, css) = asyncio.run(scenario())
    assert page[0] == 503 and "standby" in page[1] and "sched-b.example:7443" in page[1]
    assert api[0] == 503 and "sched-b.example:7443" in api[1]
    assert css[0] == 200


def test_https_follows_a_tls_reload_that_adds_a_ca(tmp_path: Path) -> None:
    """In process: the dashboard on a non-loopback address asks for a client certificate; one from
    a second CA gets in once ``ca.crt`` holds both and the TLS files are reloaded (SIGHUP)."""
    import asyncio
    import ssl
    import urllib.error
    import urllib.request

    from outrider import pki
    from scheduler.tlsreload import TlsMaterial
    from scheduler.web.server import HttpServer

    pki.init_ca(tmp_path / "pki", "outrider.local")
    pki.init_ca(tmp_path / "new", "outrider.local")
    pki.issue(tmp_path / "pki", "admin", "old-admin")
    pki.issue(tmp_path / "pki", "agent", "edge-1")
    pki.issue(tmp_path / "new", "admin", "new-admin")
    tls = TlsMaterial(tmp_path / "pki")

    def status(directory: str, name: str, url: str) -> int | str:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        ctx.load_cert_chain(str(tmp_path / directory / f"{name}.crt"), str(tmp_path / directory / f"{name}.key"))
        try:
            with urllib.request.urlopen(url + "/api/runs", timeout=10, context=ctx) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError) as exc:
            return f"refused: {exc}"

    async def scenario() -> list[int | str]:
        http = HttpServer("0.0.0.0:0", tls, "outrider.local", LogStore(tmp_path / "logs"))
        address = (await http.start()).replace("0.0.0.0", "127.0.0.1")
        try:
            seen = [await asyncio.to_thread(status, d, n, address) for d, n in
                    (("pki", "old-admin"), ("pki", "edge-1"), ("new", "new-admin"))]
            bundle = (tmp_path / "pki" / "ca.crt").read_bytes() + (tmp_path / "new" / "ca.crt").read_bytes()
            (tmp_path / "pki" / "ca.crt").write_bytes(bundle)
            assert tls.reload()
            seen.append(await asyncio.to_thread(status, "new", "new-admin", address))
            return seen
        finally:
            await http.stop()

    old_admin, agent, new_before, new_after = asyncio.run(scenario())
    assert old_admin == 503  # past the certificate checks; a standby (no engine here) answers 503
    assert agent == 403
    assert isinstance(new_before, str) and new_before.startswith("refused")
    assert new_after == 503


def test_on_loopback_only_loopback_host_names_are_let_in() -> None:
    """DNS rebinding: a page from another site whose name resolves to 127.0.0.1 sends that name as Host."""
    from scheduler.web.server import host_name

    assert [host_name(h) for h in ("127.0.0.1:7480", "[::1]:7480", "[::1]", "localhost", "evil.example:7480")] == [
        "127.0.0.1", "::1", "::1", "localhost", "evil.example"]
    assert all(is_loopback(host_name(h)) for h in ("127.0.0.1:7480", "[::1]:7480", "localhost:7480", "127.0.0.2"))
    assert not any(is_loopback(host_name(h)) for h in ("evil.example:7480", "", "10.0.0.1:7480"))


def test_the_task_page_shows_what_the_stage_recorded_escaped() -> None:
    task = {"run_id": "run-1", "name": "t", "state": "succeeded", "agent": "a", "attempts": 1, "history": [],
            "inputs": [], "outputs": [], "explain": {"reason": "finished", "message": "done", "until": 0,
                                                     "agents_considered": 1, "feasible_agents": [], "rejections": {},
                                                     "suggestions": []},
            "metrics": [{"attempt": 1, "name": "acc<b>", "value": 0.9375, "step": 7, "count": 3}]}
    html = pages.task_page(VIEWER, task)
    assert "Recorded by the stage" in html and "acc&lt;b&gt;" in html and "acc<b>" not in html
    assert "<td class=num>0.9375</td><td>7</td><td>3</td>" in html
    del task["metrics"]
    assert "Recorded by the stage" not in pages.task_page(VIEWER, task)
