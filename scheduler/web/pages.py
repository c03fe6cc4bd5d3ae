"""The dashboard's HTML, rendered on the server from :mod:`scheduler.web.data`'s values.

Every value that came from outside (task and pipeline names, labels, commands, errors, log
text) goes through :func:`e` (``html.escape``, quotes included) and every one in a URL through
:func:`q`; the pages carry no inline script or style (the Content-Security-Policy of
``server.py`` forbids them), only ``/static/dashboard.js`` and ``/static/dashboard.css``, which
update the page from the ``/api/…`` JSON it names in ``data-api``.
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

from scheduler.web.data import Viewer

# The DAG's boxes and gaps, and the timeline's rows (pixels; static/dashboard.js uses the same).
NODE_W, NODE_H, GAP_X, GAP_Y = 170, 34, 50, 12
ROW_H, LABEL_W, PLOT_W = 24, 130, 820


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def q(value: str) -> str:
    return quote(value, safe="")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{duration(seconds)} ago"


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def page(title: str, viewer: Viewer, body: str, api: str = "") -> str:
    data = f' data-api="{e(api)}"' if api else ""
    role = "" if viewer.role == "operator" else f" ({e(viewer.role)})"
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · Outrider</title>"
        '<link rel=stylesheet href="/static/dashboard.css"></head>'
        f'<body{data}><header><a class=brand href="/">Outrider</a><span class=title>{e(title)}</span>'
        f'<span class=viewer title="who the scheduler says you are">{e(viewer.who)}{role}</span>'
        "<span id=live class=live>live</span></header>"
        f"<main>{body}</main>"
        '<script src="/static/dashboard.js"></script></body></html>\n'
    )


def message_page(title: str, text: str, detail: str = "") -> str:
    more = f"<p>{e(detail)}</p>" if detail else ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · Outrider</title>"
        '<link rel=stylesheet href="/static/dashboard.css"></head>'
        f'<body><header><a class=brand href="/">Outrider</a><span class=title>{e(title)}</span></header>'
        f"<main><p class=message>{e(text)}</p>{more}</main></body></html>\n"
    )


def state(s: str) -> str:
    """A state badge; its colour from the first word ("ready, draining" is coloured as ready)."""
    return f'<span class="state st-{e(s.split(",")[0])}">{e(s)}</span>'


def agent_rows(agents: list[dict[str, Any]]) -> str:
    rows = []
    for a in agents:
        status = a["state"] + (", draining" if a["draining"] else "") + (", revoked" if a["revoked"] else "")
        if a["unhealthy"]:
            status += f", unhealthy: {a['unhealthy']}"
        labels = " ".join(f"{k}={v}" for k, v in a["labels"].items())
        caps = f"{a['cpu_cores']} cpu, {a['memory_bytes'] / 2**30:.1f} GiB"
        if a["gpus"]:
            caps += f", {len(a['gpus'])} gpu ({', '.join(a['gpus'])})"
        suspect = " clock-suspect" if a["clock_suspect"] else ""
        rows.append(
            f"<tr><td>{e(a['name'])}</td><td>{state(status)}</td><td>{e(caps)}</td>"
            f"<td class=mono>{e(labels)}</td><td>{e(', '.join(a['zones']))}</td>"
            f'<td>{a["running"]}/{a["slots"]}</td><td class="num{suspect}">{a["clock_offset_s"] * 1000:+.1f} ms</td>'
            f"<td>{e(ago(a['last_seen_ago_s']))}</td></tr>"
        )
    return "".join(rows) or "<tr><td colspan=8 class=empty>no agents have registered</td></tr>"


def run_rows(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        counts = ", ".join(f"{n} {s}" for s, n in r["task_states"].items())
        rows.append(
            f'<tr><td class=mono><a href="/runs/{q(r["run_id"])}">{e(r["run_id"])}</a></td>'
            f"<td>{e(r['pipeline'])}</td><td>{state(r['state'])}</td><td class=mono>{e(r['owner'])}</td>"
            f"<td>{e(clock(r['created_at']))}</td><td>{e(duration(r['duration_s']))}</td>"
            f"<td>{e(counts)}</td></tr>"
        )
    return "".join(rows) or "<tr><td colspan=7 class=empty>no runs you may see</td></tr>"


def index(viewer: Viewer, agents: list[dict[str, Any]], runs: dict[str, Any]) -> str:
    others = f"<p class=note>{runs['others']} run(s) of others are not shown.</p>" if runs["others"] else ""
    body = (
        "<section><h2>Agents</h2><table id=agents><thead><tr><th>name</th><th>state</th><th>capabilities</th>"
        "<th>labels</th><th>zones</th><th>load</th><th>clock offset</th><th>last seen</th></tr></thead>"
        f"<tbody>{agent_rows(agents)}</tbody></table></section>"
        "<section><h2>Runs</h2><table id=runs><thead><tr><th>run</th><th>pipeline</th><th>state</th>"
        "<th>owner</th><th>submitted</th><th>duration</th><th>tasks</th></tr></thead>"
        f"<tbody>{run_rows(runs['runs'])}</tbody></table>{others}</section>"
    )
    return page("Overview", viewer, body, api="/api/overview")


def dag_svg(run: dict[str, Any]) -> str:
    """The run's DAG: one column per topological level, an arrow per dependency."""
    if not run["drawn"]:
        return f"<p class=note>{run['tasks']} tasks: too many to draw; see the table below.</p>"
    columns: dict[int, list[dict[str, Any]]] = {}
    for t in run["tasks_list"]:
        columns.setdefault(t["level"], []).append(t)
    pos = {}
    for level, tasks in columns.items():
        for i, t in enumerate(tasks):
            pos[t["name"]] = (10 + level * (NODE_W + GAP_X), 10 + i * (NODE_H + GAP_Y))
    width = 20 + (max(columns, default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = 20 + max((len(c) for c in columns.values()), default=1) * (NODE_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg id=dag class=dag width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" role=img aria-label="task graph">'
        '<defs><marker id=arrow viewBox="0 0 10 10" refX=10 refY=5 markerWidth=7 markerHeight=7 orient=auto>'
        '<path d="M0,0 L10,5 L0,10 z" class=arrowhead /></marker></defs>'
    ]
    for up, down in run["edges"]:
        (x1, y1), (x2, y2) = pos[up], pos[down]
        x1, y1, y2 = x1 + NODE_W, y1 + NODE_H // 2, y2 + NODE_H // 2
        mid = (x1 + x2) // 2
        parts.append(f'<path class=edge d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" marker-end="url(#arrow)" />')
    for t in run["tasks_list"]:
        x, y = pos[t["name"]]
        label = t["name"] if len(t["name"]) <= 20 else t["name"][:19] + "…"
        parts.append(
            f'<a href="/runs/{q(run["run_id"])}/tasks/{q(t["name"])}">'
            f'<g class="node st-{e(t["state"])}" data-task="{e(t["name"])}">'
            f"<title>{e(t['name'])}: {e(t['state'])}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx=6 />'
            f'<text x="{x + 8}" y="{y + 14}" class=name>{e(label)}</text>'
            f'<text x="{x + 8}" y="{y + 28}" class=sub>{e(t["state"])}</text></g></a>'
        )
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(run: dict[str, Any]) -> str:
    """A Gantt chart of the run's attempts: one row per agent, time from submission to now (or the end)."""
    attempts = [a for a in run["attempts"] if a["started_at"]]
    if not attempts:
        return (
            '<svg id=timeline class=timeline width="0" height="0"></svg>'
            "<p class=note id=timeline-empty>no attempt has started yet</p>"
        )
    start = run["created_at"]
    end = max(run["finished_at"] or run["now"], *(a["finished_at"] or run["now"] for a in attempts))
    span = max(end - start, 1e-3)
    agents = sorted({a["agent"] for a in attempts})
    height = 24 + len(agents) * ROW_H
    width = LABEL_W + PLOT_W + 10
    parts = [
        f'<svg id=timeline class=timeline width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" role=img aria-label="attempts over time">'
        f'<text x="{LABEL_W}" y=14 class=axis>0s</text>'
        f'<text x="{LABEL_W + PLOT_W}" y=14 class=axis text-anchor=end>{e(duration(span))}</text>'
    ]
    for i, agent in enumerate(agents):
        y = 20 + i * ROW_H
        parts.append(f'<text x=4 y="{y + 16}" class=agent>{e(agent[:18])}</text>')
        parts.append(f'<line x1="{LABEL_W}" x2="{LABEL_W + PLOT_W}" y1="{y + ROW_H}" y2="{y + ROW_H}" class=grid />')
    for a in attempts:
        y = 20 + agents.index(a["agent"]) * ROW_H
        x = LABEL_W + (a["started_at"] - start) / span * PLOT_W
        w = max(2.0, ((a["finished_at"] or run["now"]) - a["started_at"]) / span * PLOT_W)
        label = f"{a['task']} #{a['attempt']}"
        tip = f"{label} on {a['agent']}: {a['state']}, {duration((a['finished_at'] or run['now']) - a['started_at'])}"
        parts.append(
            f'<g class="bar st-{e(a["state"])}"><title>{e(tip)}</title>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" rx=3 />'
            + (f'<text x="{x + 4:.1f}" y="{y + 16}">{e(label[: int(w // 7)])}</text>' if w > 40 else "")
            + "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def task_rows(run: dict[str, Any]) -> str:
    rows = []
    for t in run["tasks_list"]:
        rows.append(
            f'<tr data-task="{e(t["name"])}"><td><a href="/runs/{q(run["run_id"])}/tasks/{q(t["name"])}">'
            f"{e(t['name'])}</a></td><td>{state(t['state'])}</td><td>{e(t['agent'])}</td>"
            f"<td>{t['attempts']}</td><td>{e(duration(t['duration_s']) if t['started_at'] else '')}</td>"
            f"<td class=err>{e(t['error'][:200])}</td></tr>"
        )
    return "".join(rows)


def run_page(viewer: Viewer, run: dict[str, Any]) -> str:
    rid = run["run_id"]
    unlisted = run.get("tasks_unlisted", 0)
    more = f"<p class=note>{unlisted} more task(s) not listed here.</p>" if unlisted else ""
    body = (
        f"<section class=facts><div>pipeline <b>{e(run['pipeline'])}</b></div>"
        f"<div>state <span id=run-state>{state(run['state'])}</span></div>"
        f"<div>owner <span class=mono>{e(run['owner'])}</span></div>"
        f"<div>submitted {e(clock(run['created_at']))}</div>"
        f"<div>duration <span id=run-duration>{e(duration(run['duration_s']))}</span></div></section>"
        f"<section><h2>Tasks</h2><div class=scroll>{dag_svg(run)}</div></section>"
        f"<section><h2>Timeline</h2><div class=scroll id=timeline-box>{timeline_svg(run)}</div></section>"
        "<section><h2>Task table</h2><table id=tasks><thead><tr><th>task</th><th>state</th><th>agent</th>"
        f"<th>attempts</th><th>duration</th><th>error</th></tr></thead><tbody>{task_rows(run)}</tbody></table>{more}</section>"
    )
    return page(f"Run {rid}", viewer, body, api=f"/api/runs/{q(rid)}")


def explain_html(ex: dict[str, Any]) -> str:
    parts = [f"<p id=explain-message><b>{e(ex['reason'])}</b>: {e(ex['message'])}</p>"]
    if ex["until"]:
        parts.append(f"<p>until {e(clock(ex['until']))}</p>")
    parts.append(
        f"<p>{ex['agents_considered']} agent(s) considered, {len(ex['feasible_agents'])} feasible"
        + (f": {e(', '.join(ex['feasible_agents'][:20]))}" if ex["feasible_agents"] else "")
        + "</p>"
    )
    if ex["rejections"]:
        items = "".join(f"<li><b>{e(a)}</b>: {e(why)}</li>" for a, why in list(ex["rejections"].items())[:50])
        parts.append(f"<ul class=rejections>{items}</ul>")
    if ex["suggestions"]:
        items = "".join(f"<li>{e(s)}</li>" for s in ex["suggestions"])
        parts.append(f"<p>would fit if:</p><ul>{items}</ul>")
    return "".join(parts)


def artifact_link(digest: str) -> str:
    if not digest:
        return "<span class=note>not made yet</span>"
    return f'<a class=mono href="/artifacts/{q(digest)}">{e(digest[:12])}…</a>'


def task_page(viewer: Viewer, t: dict[str, Any]) -> str:
    rid, name = t["run_id"], t["name"]
    history = "".join(
        f"<tr><td>{a['attempt']}</td><td>{e(a['agent'])}</td><td>{state(a['state'])}</td>"
        f"<td>{e(clock(a['started_at']))}</td>"
        f"<td>{e(duration((a['finished_at'] or time.time()) - a['started_at']))}</td>"
        f"<td>{a['exit_code']}</td><td class=err>{e(a['error'][:300])}</td></tr>"
        for a in t["history"]
    )
    inputs = "".join(f"<li>{e(i['name'])} ← {e(i['from'])} {artifact_link(i['digest'])}</li>" for i in t["inputs"])
    outputs = "".join(
        f"<li>{e(o['name'])}: {artifact_link(o['digest'])} ({o['size']} bytes)</li>" for o in t["outputs"]
    )
    attempt = t["attempts"]
    figures = "".join(
        f"<tr><td>{m['attempt']}</td><td>{e(m['name'])}</td><td class=num>{m['value']:.6g}</td>"
        f"<td>{'' if m['step'] is None else m['step']}</td><td>{m['count']}</td></tr>"
        for m in t.get("metrics", ())
    )
    recorded = (
        "<section><h2>Recorded by the stage</h2><table><thead><tr><th>attempt</th><th>name</th><th>last value</th>"
        f"<th>step</th><th>values</th></tr></thead><tbody>{figures}</tbody></table></section>"
        if figures
        else ""
    )
    body = (
        f'<p><a href="/runs/{q(rid)}">← run {e(rid)}</a></p>'
        f"<section class=facts><div>state <span id=task-state>{state(t['state'])}</span></div>"
        f"<div>agent <span id=task-agent>{e(t['agent'])}</span></div>"
        f"<div>attempts <span id=task-attempts>{attempt}</span></div></section>"
        f"<section><h2>Why it is where it is</h2><div id=explain>{explain_html(t['explain'])}</div></section>"
        f"<section><h2>Attempts</h2><table><thead><tr><th>#</th><th>agent</th><th>state</th><th>started</th>"
        f"<th>duration</th><th>exit</th><th>error</th></tr></thead><tbody>{history}</tbody></table></section>"
        f"<section><h2>Inputs and outputs</h2><ul>{inputs or '<li class=note>no inputs</li>'}</ul>"
        f"<ul>{outputs or '<li class=note>no outputs yet</li>'}</ul></section>{recorded}"
        f'<section><h2>Log <span class=note id=log-attempt data-attempt="{attempt}">attempt {attempt}</span></h2>'
        f'<pre id=log class=log data-log="/api/runs/{q(rid)}/tasks/{q(name)}/log"></pre></section>'
    )
    return page(f"{name} · {rid}", viewer, body, api=f"/api/runs/{q(rid)}/tasks/{q(name)}")


def _artifacts(items: list[dict[str, Any]], what: str) -> str:
    return "".join(f"<li>{what} {e(a['name'])}: {artifact_link(a['digest'])} ({a['size']} bytes)</li>" for a in items)


def lineage_page(viewer: Viewer, lin: dict[str, Any]) -> str:
    down = lin["direction"] == "down"
    digest = lin["digest"]
    other = "up (what it was made from)" if down else "down (what was made from it)"
    parts = [
        f"<section class=facts><div>artifact <span class=mono>{e(digest)}</span></div>"
        f'<div><a href="/artifacts/{q(digest)}{"" if down else "?down=1"}">walk {other}</a></div></section>'
    ]
    by_depth: dict[int, list[dict[str, Any]]] = {}
    for s in lin["steps"]:
        by_depth.setdefault(s["depth"], []).append(s)
    for depth, steps in sorted(by_depth.items()):
        items = "".join(
            f'<li><a href="/runs/{q(s["run_id"])}/tasks/{q(s["task"])}">{e(s["task"])}</a> of run '
            f'<a class=mono href="/runs/{q(s["run_id"])}">{e(s["run_id"])}</a> ({e(s["pipeline"])}), '
            f"attempt {s['attempt']} on {e(s['agent'] or '-')}, {state(s['state'])}"
            f"<br><span class=mono>$ {e(s['command'])}</span>"
            + (f"<br>code bundle {artifact_link(s['code_digest'])}" if s["code_digest"] else "")
            + f"<ul>{_artifacts(s['inputs'], 'input') or '<li class=note>no inputs</li>'}"
            + f"{_artifacts(s['outputs'], 'output')}</ul></li>"
            for s in steps
        )
        word = "used by" if down else "made by"
        parts.append(
            f'<section class="lineage depth-{min(depth - 1, 12)}"><h2>{"level" if down else "step"} {depth}: '
            f"{word}</h2><ul>{items}</ul></section>"
        )
    if lin["raw_inputs"]:
        raw = "".join(f"<li>{artifact_link(d)}</li>" for d in lin["raw_inputs"])
        parts.append(f"<section><h2>Raw inputs (no task made them)</h2><ul>{raw}</ul></section>")
    if lin["truncated"]:
        parts.append(f"<p class=note>{e(lin['truncated'])}</p>")
    return page(f"Lineage {digest[:12]}…", viewer, "".join(parts))
