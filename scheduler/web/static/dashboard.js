// Outrider dashboard: polls the JSON under /api/ that the page names (body[data-api]) and
// updates the page in place. Text goes in through textContent only (never innerHTML): names,
// labels and log lines are user-controlled. No library, nothing fetched from elsewhere.
(function () {
  "use strict";
  var api = document.body.dataset.api;
  if (!api) return;
  var SVG = "http://www.w3.org/2000/svg";
  var ROW_H = 24, LABEL_W = 130, PLOT_W = 820;
  var live = document.getElementById("live");

  function el(tag, text, cls) {
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (cls) n.className = cls;
    return n;
  }
  function svg(tag, attrs, text) {
    var n = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { n.setAttribute(k, attrs[k]); });
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function state(s) { return el("span", s, "state st-" + s.split(",")[0]); }
  function dur(sec) {
    var s = Math.floor(sec);
    if (s < 60) return sec < 10 ? sec.toFixed(1) + "s" : s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function clock(ts) {
    if (!ts) return "";
    var d = new Date(ts * 1000), p = function (n) { return String(n).padStart(2, "0"); };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function link(href, text, cls) { var a = el("a", text, cls); a.href = href; return a; }
  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) {
      var td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined ? "" : String(c);
      tr.appendChild(td);
    });
    return tr;
  }
  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren();
    if (!rows.length) {
      var td = el("td", empty, "empty"); td.colSpan = cols;
      var tr = document.createElement("tr"); tr.appendChild(td); tbody.appendChild(tr);
    }
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function get(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }
  function poll(fn, ms) {
    function tick() {
      fn().then(function (more) {
        live.textContent = "live"; live.className = "live";
        if (more !== false) setTimeout(tick, ms);
      }, function () {
        live.textContent = "offline (retrying)"; live.className = "live off";
        setTimeout(tick, ms * 3);
      });
    }
    setTimeout(tick, ms);
  }

  function overview(data) {
    var agents = document.querySelector("#agents tbody"), runs = document.querySelector("#runs tbody");
    fill(agents, data.agents.map(function (a) {
      var st = a.state + (a.draining ? ", draining" : "") + (a.revoked ? ", revoked" : "") +
        (a.unhealthy ? ", unhealthy: " + a.unhealthy : "");
      var caps = a.cpu_cores + " cpu, " + (a.memory_bytes / 1073741824).toFixed(1) + " GiB" +
        (a.gpus.length ? ", " + a.gpus.length + " gpu (" + a.gpus.join(", ") + ")" : "");
      var labels = Object.keys(a.labels).map(function (k) { return k + "=" + a.labels[k]; }).join(" ");
      var r = row([a.name, state(st), caps, labels, a.zones.join(", "), a.running + "/" + a.slots,
        (a.clock_offset_s >= 0 ? "+" : "") + (a.clock_offset_s * 1000).toFixed(1) + " ms",
        a.last_seen_ago_s === null ? "never" : dur(a.last_seen_ago_s) + " ago"]);
      r.children[3].className = "mono";
      if (a.clock_suspect) r.children[6].className = "num clock-suspect";
      return r;
    }), "no agents have registered", 8);
    fill(runs, data.runs.runs.map(function (r) {
      var counts = Object.keys(r.task_states).map(function (s) { return r.task_states[s] + " " + s; }).join(", ");
      var tr = row([link("/runs/" + encodeURIComponent(r.run_id), r.run_id), r.pipeline, state(r.state), r.owner,
        clock(r.created_at), dur(r.duration_s), counts]);
      tr.children[0].className = "mono"; tr.children[3].className = "mono";
      return tr;
    }), "no runs you may see", 7);
  }

  function timeline(box, run) {
    var attempts = run.attempts.filter(function (a) { return a.started_at; });
    var old = document.getElementById("timeline"), empty = document.getElementById("timeline-empty");
    if (!attempts.length) return;
    if (empty) empty.remove();
    var start = run.created_at, end = run.finished_at || run.now;
    attempts.forEach(function (a) { end = Math.max(end, a.finished_at || run.now); });
    var span = Math.max(end - start, 1e-3);
    var agents = Array.from(new Set(attempts.map(function (a) { return a.agent; }))).sort();
    var h = 24 + agents.length * ROW_H, w = LABEL_W + PLOT_W + 10;
    var s = svg("svg", { id: "timeline", "class": "timeline", width: w, height: h, viewBox: "0 0 " + w + " " + h,
      role: "img", "aria-label": "attempts over time" });
    s.appendChild(svg("text", { x: LABEL_W, y: 14, "class": "axis" }, "0s"));
    s.appendChild(svg("text", { x: LABEL_W + PLOT_W, y: 14, "class": "axis", "text-anchor": "end" }, dur(span)));
    agents.forEach(function (agent, i) {
      var y = 20 + i * ROW_H;
      s.appendChild(svg("text", { x: 4, y: y + 16, "class": "agent" }, agent.slice(0, 18)));
      s.appendChild(svg("line", { x1: LABEL_W, x2: LABEL_W + PLOT_W, y1: y + ROW_H, y2: y + ROW_H, "class": "grid" }));
    });
    attempts.forEach(function (a) {
      var y = 20 + agents.indexOf(a.agent) * ROW_H;
      var x = LABEL_W + (a.started_at - start) / span * PLOT_W;
      var len = (a.finished_at || run.now) - a.started_at;
      var bw = Math.max(2, len / span * PLOT_W);
      var label = a.task + " #" + a.attempt;
      var g = svg("g", { "class": "bar st-" + a.state });
      g.appendChild(svg("title", {}, label + " on " + a.agent + ": " + a.state + ", " + dur(len)));
      g.appendChild(svg("rect", { x: x.toFixed(1), y: y + 3, width: bw.toFixed(1), height: ROW_H - 6, rx: 3 }));
      if (bw > 40) g.appendChild(svg("text", { x: (x + 4).toFixed(1), y: y + 16 }, label.slice(0, Math.floor(bw / 7))));
      s.appendChild(g);
    });
    if (old) old.replaceWith(s); else box.appendChild(s);
  }

  function runPage(run) {
    var byName = {};
    run.tasks_list.forEach(function (t) { byName[t.name] = t; });
    document.querySelectorAll("#dag g.node").forEach(function (g) {
      var t = byName[g.dataset.task];
      if (!t) return;
      g.setAttribute("class", "node st-" + t.state);
      g.querySelector("title").textContent = t.name + ": " + t.state;
      g.querySelector("text.sub").textContent = t.state;
    });
    document.querySelectorAll("#tasks tbody tr").forEach(function (tr) {
      var t = byName[tr.dataset.task];
      if (!t) return;
      var c = tr.children;
      c[1].replaceChildren(state(t.state));
      c[2].textContent = t.agent;
      c[3].textContent = t.attempts;
      c[4].textContent = t.started_at ? dur(t.duration_s) : "";
      c[5].textContent = t.error.slice(0, 200);
    });
    document.getElementById("run-state").replaceChildren(state(run.state));
    document.getElementById("run-duration").textContent = dur(run.duration_s);
    var box = document.getElementById("timeline-box");
    if (box && run.drawn) timeline(box, run);
    return run.state === "running";
  }

  function explain(ex) {
    var box = document.getElementById("explain");
    var parts = [];
    var p = el("p"); p.id = "explain-message";
    p.appendChild(el("b", ex.reason)); p.appendChild(document.createTextNode(": " + ex.message));
    parts.push(p);
    if (ex.until) parts.push(el("p", "until " + clock(ex.until)));
    parts.push(el("p", ex.agents_considered + " agent(s) considered, " + ex.feasible_agents.length + " feasible" +
      (ex.feasible_agents.length ? ": " + ex.feasible_agents.slice(0, 20).join(", ") : "")));
    var rej = Object.keys(ex.rejections);
    if (rej.length) {
      var ul = el("ul", null, "rejections");
      rej.slice(0, 50).forEach(function (a) {
        var li = el("li"); li.appendChild(el("b", a)); li.appendChild(document.createTextNode(": " + ex.rejections[a]));
        ul.appendChild(li);
      });
      parts.push(ul);
    }
    if (ex.suggestions.length) {
      parts.push(el("p", "would fit if:"));
      var su = el("ul");
      ex.suggestions.forEach(function (s) { su.appendChild(el("li", s)); });
      parts.push(su);
    }
    box.replaceChildren.apply(box, parts);
  }

  function taskPage(t) {
    document.getElementById("task-state").replaceChildren(state(t.state));
    document.getElementById("task-agent").textContent = t.agent;
    document.getElementById("task-attempts").textContent = t.attempts;
    explain(t.explain);
    return !["succeeded", "failed", "upstream_failed", "cancelled"].includes(t.state);
  }

  function logTail() {
    var pre = document.getElementById("log"), label = document.getElementById("log-attempt");
    var attempt = parseInt(label.dataset.attempt, 10) || 0, offset = -1, idle = 0;
    function more() {
      if (!attempt) return get(api).then(function (t) {
        attempt = t.attempts;
        label.dataset.attempt = attempt; label.textContent = "attempt " + attempt;
      });
      return get(pre.dataset.log + "?attempt=" + attempt + "&offset=" + offset).then(function (r) {
        if (r.attempt !== attempt) return;
        if (offset < 0 && r.skipped) pre.appendChild(el("span", "… (earlier output not shown)\n", "note"));
        r.lines.forEach(function (l) { pre.appendChild(el("span", l.text, l.stream === "stderr" ? "stderr" : "")); });
        if (r.lines.length) pre.scrollTop = pre.scrollHeight;
        offset = r.offset;
        if (r.latest !== attempt) {  // a newer attempt started: follow it
          attempt = r.latest; offset = -1;
          label.dataset.attempt = attempt; label.textContent = "attempt " + attempt;
          pre.appendChild(el("span", "\n--- attempt " + attempt + " ---\n", "note"));
        }
        // A finished task's last lines may still be on their way from the agent: ask for 30 s more.
        if (r.finished && !r.lines.length && r.latest === attempt) { idle += 1; if (idle > 30) return false; }
        else idle = 0;
      });
    }
    poll(more, 1000);
  }

  if (api === "/api/overview") poll(function () { return get(api).then(overview); }, 2000);
  else if (document.getElementById("dag") || document.getElementById("tasks")) {
    poll(function () { return get(api).then(runPage); }, 1000);
  } else if (document.getElementById("log")) {
    poll(function () { return get(api).then(taskPage); }, 1000);
    logTail();
  }
})();
