/* asynctask dashboard: fills the pages from /api/ and refreshes them every 2 s.
   Plain JavaScript, no framework, nothing loaded from the network.  Text from the API is always
   put into the page as text (never as HTML). */
"use strict";
(function () {
  var PERIOD_MS = 2000;
  var body = document.body;
  var READ_ONLY = body.dataset.readOnly === "1";
  var CSRF = document.querySelector('meta[name="csrf-token"]').content;
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs) {
    var node = document.createElement(tag);
    var i;
    for (var key in attrs || {}) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "cls") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    }
    for (i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    }
    return node;
  }
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    return node;
  }
  function byId(id) { return document.getElementById(id); }
  function fill(node, children) {
    while (node.firstChild) node.removeChild(node.firstChild);
    children.forEach(function (child) { node.appendChild(child); });
  }
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 1) return Math.round(seconds * 1000) + "ms";
    if (seconds < 60) return seconds.toFixed(1) + "s";
    var s = Math.floor(seconds);
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
  }
  function when(epoch) {
    if (typeof epoch !== "number") return "-";
    return new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  function ago(epoch) {
    if (typeof epoch !== "number") return "-";
    return age(Math.max(0, Date.now() / 1000 - epoch)) + " ago";
  }
  function status(text, bad) {
    var node = byId("status");
    node.textContent = text;
    node.className = "status" + (bad ? " err" : "");
  }
  function api(path) {
    return fetch(path, { headers: { "Accept": "application/json" }, credentials: "same-origin" }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok && r.status !== 404) throw new Error((data && data.error) || ("HTTP " + r.status));
        data.__status = r.status;
        return data;
      });
    });
  }
  function poll(refresh) {
    var busy = false;
    function tick() {
      if (busy) return;
      busy = true;
      Promise.resolve().then(refresh).then(function () {
        status("updated " + new Date().toLocaleTimeString());
      }, function (err) {
        status(String(err.message || err), true);
      }).then(function () { busy = false; });
    }
    tick();
    setInterval(tick, PERIOD_MS);
    return tick;
  }
  function cell(value, cls) { return el("td", cls ? { cls: cls } : {}, value === null || value === undefined ? "-" : String(value)); }
  function postForm(form) {
    var data = new URLSearchParams(new FormData(form));
    return fetch(form.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRF-Token": CSRF, "Accept": "application/json" }
    }).then(function (r) {
      return r.json().then(function (answer) {
        if (!r.ok) throw new Error(answer.error || ("HTTP " + r.status));
        return answer;
      });
    });
  }
  /* Action forms: confirm, then POST with the CSRF header; a page without this script posts the form itself. */
  function wireActions(root, after) {
    root.querySelectorAll("form.action").forEach(function (form) {
      if (form.dataset.wired) return;
      form.dataset.wired = "1";
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
        postForm(form).then(function (answer) {
          flash((answer.replayed !== undefined ? "replayed " + answer.replayed : "purged " + answer.purged) + " dead tasks of " + answer.queue);
          after();
        }, function (err) { flash(String(err.message || err), true); });
      });
    });
  }
  function flash(text, bad) {
    var node = byId("flash");
    if (!node) {
      node = el("div", { id: "flash" });
      document.querySelector("main").insertBefore(node, document.querySelector("main").firstChild);
    }
    node.className = "flash" + (bad ? " err" : "");
    node.textContent = text;
  }

  /* -- the chart: backlog (top) and throughput (bottom) over the sampled history -- */
  function drawChart(history) {
    var box = byId("chart");
    var samples = history.samples || [];
    var W = 1000, H = 220, L = 48, R = 10, TOP = 10, MID = 130, LOW = 150, BOT = 200;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img" });
    var now = Date.now() / 1000;
    var t0 = samples.length ? Math.max(samples[0].at, now - history.history_s) : now - 60;
    var span = Math.max(now - t0, 60);
    function x(t) { return L + (W - L - R) * (t - (now - span)) / span; }
    function series(key, top, bottom, max, color, dashed) {
      var points = samples.filter(function (s) { return s[key] !== null && s[key] !== undefined; })
        .map(function (s) { return x(s.at).toFixed(1) + "," + (bottom - (bottom - top) * s[key] / max).toFixed(1); });
      if (!points.length) return;
      var line = svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2 });
      if (dashed) line.setAttribute("stroke-dasharray", "5,3");
      root.appendChild(line);
    }
    function maxOf(keys) {
      var max = 0;
      samples.forEach(function (s) { keys.forEach(function (k) { if (s[k] > max) max = s[k]; }); });
      return max || 1;
    }
    var css = getComputedStyle(document.documentElement);
    function color(name) { return css.getPropertyValue("--" + name).trim(); }
    var backlogMax = maxOf(["ready", "delayed", "in_flight", "dead"]);
    var rateMax = maxOf(["done_per_s", "failed_per_s"]);
    [[TOP, MID, backlogMax, "tasks"], [LOW, BOT, rateMax, "tasks/s"]].forEach(function (panel) {
      root.appendChild(svg("line", { x1: L, y1: panel[1], x2: W - R, y2: panel[1], "class": "axis" }));
      root.appendChild(svg("line", { x1: L, y1: panel[0], x2: L, y2: panel[1], "class": "axis" }));
      var top = svg("text", { x: L - 6, y: panel[0] + 10, "text-anchor": "end" });
      top.textContent = panel[2] >= 10 ? Math.round(panel[2]) : +panel[2].toFixed(2);
      root.appendChild(top);
      var unit = svg("text", { x: L - 6, y: panel[1], "text-anchor": "end" });
      unit.textContent = panel[3];
      root.appendChild(unit);
    });
    series("ready", TOP, MID, backlogMax, color("ready"));
    series("delayed", TOP, MID, backlogMax, color("delayed"));
    series("in_flight", TOP, MID, backlogMax, color("in_flight"));
    series("dead", TOP, MID, backlogMax, color("dead"));
    series("done_per_s", LOW, BOT, rateMax, color("done"));
    series("failed_per_s", LOW, BOT, rateMax, color("failed"), true);
    [0, 0.25, 0.5, 0.75, 1].forEach(function (f) {
      var label = svg("text", { x: x(now - span + f * span), y: H - 4, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle" });
      label.textContent = f === 1 ? "now" : "-" + age(span * (1 - f));
      root.appendChild(label);
    });
    fill(box, [root]);
    var note = samples.length + " samples every " + (history.interval_s || "?") + " s";
    if (samples.length && samples[samples.length - 1].done_per_s === null) note += "; throughput needs the worker registry";
    byId("chart-note").textContent = "(" + note + ")";
  }

  /* -- pages -- */
  function queuesPage() {
    var page = 1;
    var prefix = byId("prefix");
    var tick = poll(function () {
      var query = "/api/queues?page=" + page + "&prefix=" + encodeURIComponent(prefix.value);
      return Promise.all([api(query), api("/api/history")]).then(function (answers) {
        var data = answers[0];
        page = data.page;
        fill(byId("queues"), data.queues.length ? data.queues.map(function (q) {
          return el("tr", { "data-queue": q.queue },
            el("td", {}, el("a", { href: "/queues/" + encodeURIComponent(q.queue) }, q.queue)),
            cell(q.ready, "n"), cell(q.delayed, "n"), cell(q.in_flight, "n"),
            cell(q.dead, q.dead ? "n hot" : "n"), cell(age(q.oldest_ready_age_s), "n"));
        }) : [el("tr", {}, el("td", { colspan: 6, cls: "muted" }, "no queues"))]);
        byId("queue-count").textContent = "(" + data.total + ")";
        byId("page-info").textContent = "page " + data.page + " of " + data.pages;
        byId("prev").className = "btn" + (data.page > 1 ? "" : " off");
        byId("next").className = "btn" + (data.page < data.pages ? "" : " off");
        drawChart(answers[1]);
      });
    });
    byId("prev").addEventListener("click", function (e) { e.preventDefault(); page = Math.max(1, page - 1); tick(); });
    byId("next").addEventListener("click", function (e) { e.preventDefault(); page += 1; tick(); });
    prefix.addEventListener("input", function () { page = 1; tick(); });
    byId("queue-filter").addEventListener("submit", function (e) { e.preventDefault(); page = 1; tick(); });
  }

  function deadPage() {
    var queue = body.dataset.queue;
    var base = "/api/queues/" + encodeURIComponent(queue);
    var cursor = "";
    var next = "";
    var open = {};
    function replayForm(id) {
      var form = el("form", { method: "post", action: base + "/dead/replay", cls: "action" },
        el("input", { type: "hidden", name: "csrf_token", value: CSRF }),
        el("input", { type: "hidden", name: "id", value: id }),
        el("button", { type: "submit", cls: "replay" }, "Replay"));
      return form;
    }
    function render(data) {
      var items = data.dead.map(function (d) {
        var lines = (d.reason || "").split("\n").filter(function (l) { return l.trim(); });
        var details = el("details", { cls: "dead", "data-id": d.id },
          el("summary", {},
            el("code", {}, d.id),
            el("span", {}, "attempts " + d.attempts),
            el("span", {}, d.dead_at_utc),
            el("span", { cls: "reason" }, lines.length ? lines[lines.length - 1] : "")),
          el("div", { cls: "body" },
            el("div", {}, el("h3", {}, d.payload !== undefined ? "payload" : "body (does not decode)"),
              el("pre", { cls: "payload" }, d.payload !== undefined ? JSON.stringify(d.payload, null, 2) : d.body),
              READ_ONLY ? null : replayForm(d.id)),
            el("div", {}, el("h3", {}, "reason"), el("pre", { cls: "traceback" }, d.reason))));
        if (open[d.id]) details.open = true;
        details.addEventListener("toggle", function () { open[d.id] = details.open; });
        return details;
      });
      fill(byId("dead"), items.length ? items : [el("p", { cls: "muted" }, "no dead letters" + (cursor ? " on this page" : ""))]);
      wireActions(byId("dead"), tick);
      next = data.next;
      byId("next").className = "btn" + (next ? "" : " off");
      byId("first").className = "btn" + (cursor ? "" : " off");
      byId("page-info").textContent = cursor ? "a later page" : "first page";
    }
    var tick = poll(function () {
      return Promise.all([api(base), api(base + "/dead?after=" + encodeURIComponent(cursor))]).then(function (a) {
        var s = a[0];
        if (a[0].__status === 404) throw new Error(s.error);
        fill(byId("stats"), [el("tr", {}, cell(s.ready, "n"), cell(s.delayed, "n"), cell(s.in_flight, "n"),
          cell(s.dead, s.dead ? "n hot" : "n"), cell(age(s.oldest_ready_age_s), "n"))]);
        render(a[1]);
      });
    });
    wireActions(document, tick);
    byId("next").addEventListener("click", function (e) { e.preventDefault(); if (next) { cursor = next; tick(); } });
    byId("first").addEventListener("click", function (e) { e.preventDefault(); cursor = ""; tick(); });
  }

  function workersPage() {
    poll(function () {
      return api("/api/workers").then(function (data) {
        if (!data.available) {
          fill(byId("workers"), [el("p", { cls: "muted" }, data.error || "registry not available")]);
          return;
        }
        byId("worker-count").textContent = "(" + data.supervisors.length + " supervisors)";
        fill(byId("workers"), data.supervisors.length ? data.supervisors.map(function (s) {
          var rows = (s.children || []).map(function (c) {
            var running = (c.running || []).map(function (r) { return r.task_id + " (" + ago(r.started_at) + ")"; }).join(", ");
            return el("tr", {}, cell(c.queue), cell(c.worker), cell(c.pid), cell(c.concurrency, "n"),
              cell(c.done, "n"), cell(c.failed, c.failed ? "n hot" : "n"), cell(running || "-"), cell(ago(c.last_fetch_at)));
          });
          return el("div", { cls: "sup" },
            el("h3", {}, s.host + " pid " + s.pid + " ",
              el("span", { cls: "pill" + (s.state === "running" ? "" : " stop") }, s.state || "running")),
            el("p", { cls: "muted" }, "started " + when(s.started_at) + " · heartbeat " + ago(s.heartbeat_at) +
              " · version " + s.version + " · queues " + (s.queues || []).join(", ")),
            el("table", { cls: "grid" },
              el("thead", {}, el("tr", {}, el("th", {}, "queue"), el("th", {}, "worker"), el("th", {}, "pid"),
                el("th", { cls: "n" }, "concurrency"), el("th", { cls: "n" }, "done"), el("th", { cls: "n" }, "failed"),
                el("th", {}, "running"), el("th", {}, "last fetch"))),
              el("tbody", {}, ...rows)));
        }) : [el("p", { cls: "muted" }, "no supervisor is running")]);
      });
    });
  }

  function schedulesPage() {
    poll(function () {
      return api("/api/schedules").then(function (data) {
        if (!data.available) {
          fill(byId("schedules"), [el("tr", {}, el("td", { colspan: 6, cls: "muted" }, data.error))]);
          return;
        }
        fill(byId("schedules"), data.schedules.length ? data.schedules.map(function (s) {
          return el("tr", {}, cell(s.defined_in), cell(s.fires), cell(s.queue), cell(s.when + " (" + s.timezone + ")"),
            cell(s.next_fire || "never again"), cell((s.last_fire || "-") + (s.last_task ? " (task " + s.last_task + ")" : "")));
        }) : [el("tr", {}, el("td", { colspan: 6, cls: "muted" }, "no schedules"))]);
      });
    });
  }

  function taskPage() {
    var id = byId("task-id").value.trim();
    var queue = byId("task-queue").value.trim();
    if (!id) return;
    poll(function () {
      var path = "/api/tasks/" + encodeURIComponent(id) + (queue ? "?queue=" + encodeURIComponent(queue) : "");
      return api(path).then(function (r) {
        var rows = [["status", el("span", { cls: "status-" + r.status }, r.status)]];
        var missing = r.__status === 404;
        if (missing) rows.push(["", r.error]);
        if (r.queue) rows.push(["queue", r.queue]);
        if (r.attempts !== undefined) rows.push(["attempts", String(r.attempts)]);
        if (r.started_at) rows.push(["started", when(r.started_at)]);
        if (r.finished_at) rows.push(["finished", when(r.finished_at)]);
        if (r.result !== undefined) rows.push(["result", el("pre", {}, JSON.stringify(r.result, null, 2))]);
        if (r.error && !missing) rows.push(["error", el("pre", {}, r.error.type + ": " + r.error.message + (r.error.detail ? "\n\n" + r.error.detail : ""))]);
        fill(byId("task"), [el("table", { cls: "grid" }, el("tbody", {}, ...rows.map(function (row) {
          return el("tr", {}, el("th", {}, row[0]), el("td", {}, row[1]));
        })))]);
      });
    });
  }

  var pages = { queues: queuesPage, dead: deadPage, workers: workersPage, schedules: schedulesPage, task: taskPage };
  (pages[body.dataset.page] || function () {})();
})();
