(function () {
  "use strict";

  var MAX_ALERTS = 200; // a page of the worklist, per severity
  var POLL_MS = 5000;
  var SEVERITIES = ["info", "low", "medium", "high", "critical"];

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") node.textContent = v;
        else if (k === "className") node.className = v;
        else node.setAttribute(k, v === true ? "" : String(v));
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function pad2(n) { return n < 10 ? "0" + n : String(n); }

  function hms(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "–";
    var d = new Date(ms);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function fullTime(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "";
    var d = new Date(ms);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      hms(ms) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function fmtCount(n) {
    return typeof n === "number" && isFinite(n) ? n.toLocaleString() : "–";
  }

  // Numbers are rounded to one decimal; whole numbers (counts) stay whole.
  // Timestamps arrive as RFC 3339 strings and are shown as local HH:MM:SS.
  var ISO_TS = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$/;
  function fmtValue(v) {
    if (v === null || v === undefined) return "null";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(1);
    if (typeof v === "string") {
      if (ISO_TS.test(v)) {
        var s = v.replace(" ", "T");
        if (!/(Z|[+-]\d{2}:?\d{2})$/.test(s)) s += "Z"; // event time is UTC
        var t = Date.parse(s);
        if (!isNaN(t)) return hms(t);
      }
      return v;
    }
    if (typeof v === "boolean") return String(v);
    return JSON.stringify(v);
  }

  function fmtPairs(obj) {
    if (!obj || typeof obj !== "object") return "";
    return Object.keys(obj).map(function (k) { return k + "=" + fmtValue(obj[k]); }).join("  ");
  }

  function severityBadge(sev) {
    var s = String(sev || "").toLowerCase();
    var cls = SEVERITIES.indexOf(s) >= 0 ? "sev-" + s : "sev-info";
    return el("span", { className: "badge " + cls, text: s || "?" });
  }

  /* ------------------------------------------------------------- requests */

  // The signed-in caller: GET /api/whoami's answer (also when authentication
  // is off), null while signed out. `credential` is what signed them in.
  var me = null;
  var credential = null;

  // `headers` plus Authorization when there is a credential to send.
  function withCredential(headers, cred) {
    var c = cred === undefined ? credential : cred;
    if (c) headers.Authorization = "Bearer " + c;
    return headers;
  }

  // One request, answered as {status, ok, body}; `cred` overrides the
  // signed-in credential (signing in tries one before keeping it).
  async function requestJson(url, options, cred) {
    var opts = Object.assign({}, options || {});
    opts.headers = withCredential(Object.assign({ "Accept": "application/json" }, opts.headers || {}), cred);
    var resp = await fetch(url, opts);
    var body = null;
    var text = await resp.text();
    if (text) {
      try { body = JSON.parse(text); } catch (e) { body = { raw: text }; }
    }
    return { status: resp.status, ok: resp.ok, body: body };
  }

  // Every API call of a signed-in page: a 401 means the credential expired
  // or was revoked, so the page signs out and says why.
  async function fetchJson(url, options) {
    var r = await requestJson(url, options);
    if (r.status === 401) credentialRejected(errorText(r.body, r.status));
    return r;
  }

  function errorText(body, status) {
    var e = body && body.error;
    if (e && typeof e === "object") {
      var msg = e.message || "error";
      if (typeof e.line === "number" && e.line > 0) {
        return "line " + e.line + ", column " + e.column + ": " + msg;
      }
      return msg;
    }
    if (body && body.raw) return "HTTP " + status + ": " + body.raw;
    return "HTTP " + status;
  }

  /* ---------------------------------------------------------------- health */

  // /readyz is the heartbeat: a hung server must not look alive, so each
  // poll gives up after READY_TIMEOUT_MS.
  var READY_TIMEOUT_MS = 4000;

  async function refreshReadiness() {
    var box = $("readiness");
    var ctl = window.AbortController ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, READY_TIMEOUT_MS) : null;
    try {
      var r = await fetchJson("/readyz", ctl ? { signal: ctl.signal } : undefined);
      var b = r.body || {};
      var ready = b.ready === true;
      // Ready but not well: rules failing or suspended, lag, a stalled engine.
      var degraded = Array.isArray(b.degraded) ? b.degraded : [];
      var stalled = degraded.some(function (d) { return /engine stalled/.test(d); });
      box.className = !ready ? "not-ready" : degraded.length ? "ready degraded" : "ready";
      $("readiness-state").textContent = !ready ? "Not ready" : degraded.length ? "Degraded" : "Ready";
      $("readiness-detail").textContent =
        "storage: " + (b.storage || "?") + " · kafka: " + (b.kafka || "?") +
        (degraded.length ? " · " + degraded.join(", ") : "");
      // A stalled engine sends no alerts although the feed is open: stale.
      setConnection({
        ready: ready && !stalled,
        readyReason: !ready ? "server not ready" : stalled ? "engine stalled" : null
      });
    } catch (e) {
      box.className = "not-ready";
      $("readiness-state").textContent = "Server unreachable";
      $("readiness-detail").textContent = "";
      setConnection({ ready: false, readyReason: "server unreachable" });
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  function parseMetrics(text) {
    var out = {};
    text.split("\n").forEach(function (line) {
      if (!line || line.charAt(0) === "#") return;
      var m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m && !m[2]) out[m[1]] = Number(m[3]);
    });
    return out;
  }

  async function refreshCounters() {
    try {
      // Public unless [auth] protect_metrics; then the credential opens it.
      var resp = await fetch("/metrics", { headers: withCredential({}) });
      if (!resp.ok) return;
      var m = parseMetrics(await resp.text());
      $("count-events-in").textContent = fmtCount(m.wardwatch_events_in_total);
      $("count-events-rejected").textContent = fmtCount(m.wardwatch_events_rejected_total);
      $("count-alerts-fired").textContent = fmtCount(m.wardwatch_alerts_fired_total);
    } catch (e) { /* readiness shows the outage */ }
  }

  /* --------------------------------------------------------------- history */

  // Rows drawn from one answer (the server bounds what it sends).
  var HISTORY_ROWS_SHOWN = 500;
  // The SQL of the result on screen, for Export CSV.
  var historySql = null;

  function historyError(message) {
    $("history-error").hidden = !message;
    $("history-error").textContent = message || "";
    if (message) $("history-sql").setAttribute("aria-invalid", "true");
    else $("history-sql").removeAttribute("aria-invalid");
  }

  async function runHistory(ev) {
    ev.preventDefault();
    var sql = $("history-sql").value;
    historyError(null);
    if (!sql.trim()) { historyError("Write a query."); return; }
    var btn = $("history-run");
    btn.disabled = true;
    $("history-status").textContent = "running…";
    var started = Date.now();
    try {
      var r = await fetchJson("/api/query", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ sql: sql })
      });
      if (!r.ok) {
        historyError(errorText(r.body, r.status));
        $("history-status").textContent = "";
        return;
      }
      var columns = (r.body.columns || []).map(function (c) { return c.name; });
      var result = r.body.rows || [];
      var head = $("history-head");
      head.replaceChildren(el("tr", null, columns.map(function (c) { return el("th", { scope: "col", text: c }); })));
      var body = $("history-rows");
      body.replaceChildren.apply(body, result.slice(0, HISTORY_ROWS_SHOWN).map(function (row) {
        return el("tr", null, columns.map(function (c) {
          var v = row[c];
          return el("td", { text: v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v) });
        }));
      }));
      historySql = sql;
      $("history-csv").disabled = false;
      $("history-status").textContent = fmtCount(result.length) + " rows in " + fmtDuration(Date.now() - started) +
        (result.length > HISTORY_ROWS_SHOWN ? " (first " + HISTORY_ROWS_SHOWN + " shown; Export CSV has all)" : "") +
        (r.body.truncated ? " — cut short: " + (r.body.error || "limit reached") : "");
    } catch (e) {
      historyError("Could not reach the server: " + e.message);
      $("history-status").textContent = "";
    } finally {
      btn.disabled = false;
    }
  }

  // The same query again as CSV (written by the server), saved as a file.
  async function exportHistoryCsv() {
    if (!historySql) return;
    var btn = $("history-csv");
    btn.disabled = true;
    try {
      var resp = await fetch("/api/query", {
        method: "POST",
        headers: withCredential({ "Content-Type": "application/json", "Accept": "text/csv" }),
        body: JSON.stringify({ sql: historySql })
      });
      if (resp.status === 401) { credentialRejected("HTTP 401"); return; }
      if (!resp.ok) {
        var text = await resp.text();
        var body = null;
        try { body = JSON.parse(text); } catch (e) { body = { raw: text }; }
        historyError(errorText(body, resp.status));
        return;
      }
      var url = URL.createObjectURL(await resp.blob());
      var link = el("a", { href: url, download: "wardwatch-query.csv", hidden: true });
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    } catch (e) {
      historyError("Could not reach the server: " + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  /* ------------------------------------------------------- saved queries */

  // Named queries kept in this browser (localStorage): list, run, delete.
  var SAVED_KEY = "wardwatch.savedQueries";

  function savedQueries() {
    try {
      var list = JSON.parse(localStorage.getItem(SAVED_KEY) || "[]");
      return Array.isArray(list) ? list.filter(function (q) { return q && typeof q.name === "string" && typeof q.sql === "string"; }) : [];
    } catch (e) { return []; }
  }

  function storeSavedQueries(list) {
    try { localStorage.setItem(SAVED_KEY, JSON.stringify(list)); return true; } catch (e) { return false; }
  }

  function renderSavedQueries() {
    var ul = $("saved-queries");
    var list = savedQueries();
    if (!list.length) {
      ul.replaceChildren(el("li", { className: "muted small", text: "None yet: write a query, name it and save it." }));
      return;
    }
    ul.replaceChildren.apply(ul, list.map(function (q, i) {
      var run = el("button", { type: "button", className: "secondary saved-run", "aria-label": "Run saved query " + q.name, text: "Run" });
      run.addEventListener("click", function () {
        $("history-sql").value = q.sql;
        $("history-form").requestSubmit();
      });
      var del = el("button", { type: "button", className: "danger saved-delete", "aria-label": "Delete saved query " + q.name, text: "Delete" });
      del.addEventListener("click", function () {
        storeSavedQueries(savedQueries().filter(function (x) { return x.name !== q.name; }));
        renderSavedQueries();
        $("saved-query-status").textContent = "Deleted “" + q.name + "”.";
        var first = $("saved-queries").querySelector("button");
        (first || $("saved-query-name")).focus();
      });
      return el("li", { className: "saved-query", "data-name": q.name, id: "saved-query-" + i }, [
        el("span", { className: "saved-name", text: q.name }),
        el("code", { className: "saved-sql", title: q.sql, text: shorten(q.sql.replace(/\s+/g, " "), 110) }),
        el("span", { className: "saved-actions" }, [run, del])
      ]);
    }));
  }

  function saveQuery(ev) {
    ev.preventDefault();
    var name = $("saved-query-name").value.trim();
    var sql = $("history-sql").value.trim();
    var status = $("saved-query-status");
    status.className = "small";
    if (!name) { status.textContent = "Name the query first."; status.className = "small error-text"; $("saved-query-name").focus(); return; }
    if (!sql) { status.textContent = "Write the query first."; status.className = "small error-text"; $("history-sql").focus(); return; }
    var list = savedQueries();
    var replaced = list.some(function (q) { return q.name === name; });
    list = list.filter(function (q) { return q.name !== name; });
    list.push({ name: name, sql: sql, saved_at_ms: Date.now() });
    list.sort(function (a, b) { return a.name.localeCompare(b.name); });
    if (!storeSavedQueries(list)) { status.textContent = "This browser does not let the page save anything."; status.className = "small error-text"; return; }
    renderSavedQueries();
    $("saved-query-name").value = "";
    status.textContent = (replaced ? "Replaced “" : "Saved “") + name + "”.";
  }

  /* ------------------------------------------------------------ audit desk */

  // The audit log, replay audits (audit_log rows whose action is "replay")
  // and dead letters over a range of time. The range becomes two integers
  // of milliseconds made here from the pickers: no typed text enters SQL.
  var AUDIT_ROWS = 500;
  var DEAD_LETTERS_SCAN = 1000;

  function localInputValue(ms) {
    var d = new Date(ms);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + "T" + hms(ms);
  }

  function setAuditRange(spanMs) {
    var now = Date.now() + 60000; // a minute ahead: what happens while reading is in range
    $("audit-from").value = localInputValue(now - spanMs);
    $("audit-to").value = localInputValue(now);
  }

  // Integer milliseconds from a datetime-local value, or null.
  function pickedMs(input) {
    var t = new Date(input.value).getTime(); // "YYYY-MM-DDTHH:MM[:SS]" is local time
    return isFinite(t) ? Math.trunc(t) : null;
  }

  function auditError(text) {
    $("audit-error").textContent = text || "";
    $("audit-error").hidden = !text;
  }

  async function auditQuery(sql) {
    var r = await fetchJson("/api/query", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ sql: sql })
    });
    if (!r.ok) throw new Error(errorText(r.body, r.status));
    return r.body;
  }

  function tsMs(v) {
    if (typeof v === "number") return v;
    if (typeof v === "string") {
      var s = v.replace(" ", "T");
      if (!/(Z|[+-]\d{2}:?\d{2})$/.test(s)) s += "Z";
      var t = Date.parse(s);
      return isNaN(t) ? null : t;
    }
    return null;
  }

  function parseDetails(text) {
    try { var d = JSON.parse(text); return d && typeof d === "object" ? d : {}; } catch (e) { return {}; }
  }

  function whoOf(d) {
    var w = d.who;
    if (!w) return d.by ? String(d.by) : "";
    return w.name || w.subject || "";
  }

  function auditTable(head, rows) {
    $("audit-head").replaceChildren(el("tr", null, head.map(function (h) { return el("th", { scope: "col", text: h }); })));
    var body = $("audit-rows");
    body.replaceChildren.apply(body, rows);
  }

  var AUDIT_ACTION = /^[a-z][a-z0-9_]{0,63}$/; // what an action name looks like

  async function showAudit(ev) {
    if (ev) ev.preventDefault();
    auditError(null);
    var view = $("audit-view").value;
    var from = pickedMs($("audit-from")), to = pickedMs($("audit-to"));
    if (from === null || to === null) { auditError("Pick both ends of the range."); return; }
    if (from >= to) { auditError("“From” must be before “to”."); return; }
    $("audit-caption").textContent = $("audit-view").selectedOptions[0].textContent + " from " + fullTime(from) + " to " + fullTime(to);
    $("audit-table").setAttribute("data-view", view);
    $("audit-table").setAttribute("data-from", from);
    $("audit-table").setAttribute("data-to", to);
    $("audit-status").textContent = "Loading…";
    $("audit-show").disabled = true;
    // Only the latest request is drawn (the table or range may change meanwhile).
    var seq = ++auditSeq, mine = epoch;
    var current = function () { return seq === auditSeq && mine === epoch; };
    try {
      if (view === "dead") await showDeadLetters(from, to, current);
      else await showAuditLog(view, from, to, current);
    } catch (e) {
      if (!current()) return;
      auditError(e.message);
      $("audit-status").textContent = "";
      auditTable([], []);
    } finally {
      if (seq === auditSeq) $("audit-show").disabled = false;
    }
  }

  var auditSeq = 0;

  async function showAuditLog(view, from, to, current) {
    var action = view === "replay" ? "replay" : $("audit-action").value;
    if (action && !AUDIT_ACTION.test(action)) throw new Error("not an action name: " + action);
    // `at` is a UTC timestamp in milliseconds; both bounds are integers made above.
    var sql = "SELECT seq, at, action, details FROM audit_log WHERE at >= to_timestamp_millis(" + from +
      ") AND at < to_timestamp_millis(" + to + ")" + (action ? " AND action = '" + action + "'" : "") +
      " ORDER BY seq DESC LIMIT " + AUDIT_ROWS;
    var answer = await auditQuery(sql);
    if (!current()) return;
    var rows = answer.rows || [];
    if (view === "replay") {
      auditTable(["When", "Who", "What", "Events from", "to", "Audit"], rows.map(function (r) {
        var d = parseDetails(r.details);
        var what = d.rule_id ? "rule " + d.rule_id + (d.version ? " v" + d.version : "") : d.sql ? "draft: " + shorten(String(d.sql).replace(/\s+/g, " "), 120) : "–";
        return el("tr", { "data-seq": r.seq, "data-action": r.action }, [
          el("td", { className: "nowrap", text: fullTime(tsMs(r.at)) }), el("td", { text: whoOf(d) }), el("td", { text: what }),
          el("td", { className: "nowrap", text: fullTime(d.from_ms) }), el("td", { className: "nowrap", text: fullTime(d.to_ms) }),
          el("td", { text: d.audit ? "yes" : "no" })
        ]);
      }));
    } else {
      auditTable(["Seq", "When", "Action", "Who", "Details"], rows.map(function (r) {
        var d = parseDetails(r.details);
        var rest = Object.assign({}, d);
        delete rest.who; delete rest.at_ms; delete rest.action;
        return el("tr", { "data-seq": r.seq, "data-action": r.action }, [
          el("td", { text: String(r.seq) }), el("td", { className: "nowrap", text: fullTime(tsMs(r.at)) }),
          el("td", { text: r.action }), el("td", { text: whoOf(d) }),
          el("td", { className: "audit-details", text: JSON.stringify(rest) })
        ]);
      }));
      refreshAuditActions(from, to);
    }
    $("audit-status").textContent = fmtCount(rows.length) + (rows.length === AUDIT_ROWS ? " (the newest " + AUDIT_ROWS + ")" : "") +
      " records" + (action ? " of “" + action + "”" : "") + ", newest first.";
  }

  // The action menu: the actions recorded in the range (the server's list).
  async function refreshAuditActions(from, to) {
    var answer;
    try {
      answer = await auditQuery("SELECT DISTINCT action FROM audit_log WHERE at >= to_timestamp_millis(" + from +
        ") AND at < to_timestamp_millis(" + to + ") ORDER BY action");
    } catch (e) { return; }
    var select = $("audit-action");
    var current = select.value;
    var names = (answer.rows || []).map(function (r) { return r.action; }).filter(function (a) { return AUDIT_ACTION.test(a); });
    if (current && names.indexOf(current) < 0) names.unshift(current);
    select.replaceChildren.apply(select, [el("option", { value: "", text: "any" })].concat(names.map(function (n) {
      return el("option", { value: n, text: n });
    })));
    select.value = current;
  }

  // The server lists the newest dead letters (no time filter): the newest
  // DEAD_LETTERS_SCAN are asked for, and those received in the range shown.
  async function showDeadLetters(from, to, current) {
    var r = await fetchJson("/api/dead-letters?limit=" + DEAD_LETTERS_SCAN);
    if (!current()) return;
    if (!r.ok) throw new Error(errorText(r.body, r.status));
    var all = (r.body && r.body.dead_letters) || [];
    var inRange = all.filter(function (d) { return d.received_at_ms >= from && d.received_at_ms < to; });
    auditTable(["Received", "Origin", "Reason", "Payload"], inRange.map(function (d) {
      return el("tr", { "data-received-ms": d.received_at_ms }, [
        el("td", { className: "nowrap", text: fullTime(d.received_at_ms) }), el("td", { text: d.origin }),
        el("td", { text: d.reason }),
        el("td", { className: "audit-details", title: d.payload, text: shorten(d.payload || "", 200) + (d.payload_truncated ? " (cut)" : "") })
      ]);
    }));
    $("audit-status").textContent = fmtCount(inRange.length) + " of the newest " + fmtCount(all.length) + " dead letters (" +
      fmtCount(r.body.total) + " kept in all) were received in this range.";
  }

  function auditViewChanged() {
    $("audit-action-label").hidden = $("audit-view").value !== "audit";
    showAudit();
  }

  /* ------------------------------------------------------------ operations */

  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 3600000) return Math.round(ms / 60000) + " min";
    return (ms / 3600000).toFixed(1) + " h";
  }

  function fmtBytes(n) {
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MiB";
    if (n >= 1024) return Math.round(n / 1024) + " KiB";
    return n + " B";
  }

  var INSTANCE_ROLES = { all: "all rules", patient_rules: "patient rules", global_rules: "global rules" };

  // Instances sharing the data directory (`[instance] id` set), one line
  // each; none for a single instance. A gone one (not heard from for 10 s)
  // says so in words, not only in colour. Ages are by the server's clock.
  function showInstances(list, now) {
    var ul = $("ops-instances");
    ul.hidden = !list.length;
    ul.replaceChildren.apply(ul, list.map(function (i) {
      var parts = ["instance " + i.id, INSTANCE_ROLES[i.role] || String(i.role).replace(/_/g, " ")];
      // `[]`: every partition; absent: a group member, or no Kafka.
      if (i.partitions) {
        parts.push(!i.partitions.length ? "all partitions"
          : (i.partitions.length === 1 ? "partition " : "partitions ") + i.partitions.join(", "));
      }
      var silent = Math.max(0, now - i.seen_at_ms);
      var state = i.live
        ? el("span", { className: "ok-text", text: "live" })
        : el("span", { className: "error-text", text: "gone · last seen " +
            (silent < 60000 ? Math.round(silent / 1000) + " s" : fmtDuration(silent)) + " ago" });
      return el("li", {
        "data-instance-id": i.id, "data-live": String(!!i.live),
        title: "listening on " + i.listen + ", pid " + i.pid + ", started " + fullTime(i.started_at_ms)
      }, [parts.join(" · ") + " · ", state]);
    }));
  }

  // The operations strip (admins): GET /api/ops, every poll.
  async function refreshOps() {
    if (!may("admin")) return;
    var seen = epoch;
    var r = await fetchJson("/api/ops");
    if (seen !== epoch) return;
    $("ops-error").hidden = r.ok;
    if (!r.ok) { $("ops-error").textContent = errorText(r.body, r.status); return; }
    var ops = r.body;
    var c = ops.checkpoints;
    $("ops-checkpoints").textContent = c.enabled
      ? "Checkpoints every " + fmtDuration(c.interval_ms) + ": " + fmtCount(c.written) + " written" +
        (c.failures ? ", " + fmtCount(c.failures) + " FAILED" : "") +
        (c.age_ms === null ? ", none yet" : ", latest " + fmtDuration(c.age_ms) + " ago (" +
          fmtBytes(c.bytes) + ", took " + fmtDuration(c.duration_ms) + ")") +
        (c.restore_ms === null ? "" : "; restored at start in " + fmtDuration(c.restore_ms))
      : "Checkpoints off (they need Kafka and checkpoint_interval_ms > 0).";
    showInstances(ops.instances || [], typeof ops.now_ms === "number" ? ops.now_ms : Date.now());
    var e = ops.engine;
    $("ops-summary").textContent = (e.stalled_ms !== null ? "ENGINE STALLED " + fmtDuration(e.stalled_ms) + " · " : "") +
      "queue " + e.inputs_waiting + (e.consumer_lag === null ? "" : " · lag " + fmtCount(e.consumer_lag));
    var rows = $("ops-partition-rows");
    rows.replaceChildren.apply(rows, ops.partitions.map(function (p) {
      return el("tr", null, [
        el("td", { text: p.partition < 0 ? "local (HTTP, demo)" : String(p.partition) }),
        el("td", { text: p.consumer_lag === null ? "–" : fmtCount(p.consumer_lag) }),
        el("td", { text: p.latest_event_ms === null ? "–" : fullTime(p.latest_event_ms) }),
        // Events dated ahead of the server clock (within max_future_skew_ms).
        el("td", { text: p.event_lag_ms !== null && p.event_lag_ms < 0 ? "ahead " + fmtDuration(-p.event_lag_ms) : fmtDuration(p.event_lag_ms) }),
        el("td", { text: p.idle ? "idle" : "" })
      ]);
    }));
    if (!ops.partitions.length) rows.appendChild(el("tr", null, [el("td", { colspan: 5, text: "No partition has delivered anything yet." })]));
    var b = ops.budgets;
    $("ops-budgets").textContent = "Each rule may hold " + fmtBytes(b.max_state_bytes) + " of state, do " +
      fmtCount(b.max_work_per_batch) + " units of work per batch and fire " + fmtCount(b.max_alerts_per_minute) +
      " alerts a minute; over any, it is suspended.";
    var ruleRows = $("ops-rule-rows");
    ruleRows.replaceChildren.apply(ruleRows, ops.rules.map(function (x) {
      var state = el("td", { text: x.state, className: x.state === "running" ? null : "error-text" });
      if (x.suspension) state.title = x.suspension;
      return el("tr", null, [
        el("td", { text: x.id }),
        state,
        el("td", { text: fmtCount(x.open_panes) }),
        el("td", { text: fmtCount(x.alerts_fired) }),
        el("td", { text: fmtCount(x.alerts_suppressed) }),
        el("td", { text: fmtCount(x.late_events) }),
        el("td", { text: fmtCount(x.errors_total) })
      ]);
    }));
  }

  /* ----------------------------------------------------------------- rules */

  function statsLine(stats) {
    if (!stats) return null;
    var parts = [
      ["matched", stats.events_matched],
      ["late", stats.late_events],
      ["fired", stats.alerts_fired],
      ["suppressed", stats.alerts_suppressed],
      ["open panes", stats.open_panes]
    ].map(function (p) { return p[0] + " " + fmtCount(p[1]); });
    return el("div", { className: "rule-stats", text: parts.join(" · ") });
  }

  var RULE_STATES = ["suspended", "failing", "active", "inactive"]; // display order

  function ruleState(rule) {
    var s = String(rule.state || "");
    if (RULE_STATES.indexOf(s) >= 0) return s;
    return rule.active ? "active" : "inactive"; // older servers without `state`
  }

  // Why a rule is not doing its job, in the server's words.
  function ruleProblem(rule, state) {
    if (state === "suspended") {
      var sus = rule.stats && rule.stats.suspension;
      var when = sus ? " (at " + fullTime(sus.at_processing_ms) + ")" : "";
      return el("p", { className: "rule-problem", role: "note" }, [
        el("b", { text: "Suspended" + when + ": " }),
        (sus && sus.message) || "stopped by the engine; save a new version to run it again."
      ]);
    }
    var h = rule.health;
    if (state === "failing") {
      return el("p", { className: "rule-problem", role: "note" }, [
        el("b", { text: "Failing" + (h && h.last_error_at_ms ? " (last error " + fullTime(h.last_error_at_ms) + ")" : "") + ": " }),
        (h && h.last_error) || "run-time errors in the last minute."
      ]);
    }
    if (h && h.last_error && state === "active") {
      return el("p", { className: "rule-meta" }, [
        "Earlier error" + (h.last_error_at_ms ? " at " + fullTime(h.last_error_at_ms) : "") +
        " (" + fmtCount(h.errors_total) + " since start): " + h.last_error
      ]);
    }
    return null;
  }

  function renderRule(rule) {
    var active = !!rule.active;
    var state = ruleState(rule);
    var head = el("div", { className: "rule-head" }, [
      el("span", { className: "rule-name", text: rule.name }),
      severityBadge(rule.severity),
      el("span", { className: "state-tag " + state, text: state })
    ]);
    if (active && may("author")) {
      var btn = el("button", {
        type: "button", className: "danger deactivate", id: "deactivate-" + rule.id,
        "data-rule-id": rule.id, "aria-label": "Deactivate rule " + rule.name, text: "Deactivate",
        "aria-describedby": ruleErrors[rule.id] ? "rule-action-error-" + rule.id : null
      });
      btn.addEventListener("click", function () { openDeactivate(rule, btn); });
      var edit = el("button", {
        type: "button", className: "secondary edit", id: "edit-" + rule.id,
        "aria-label": "Edit rule " + rule.name, text: "Edit"
      });
      edit.addEventListener("click", function () { startEdit(rule); });
      var actions = [edit, btn];
      if (V) {
        var open = !!tuning[rule.id];
        var tune = el("button", {
          type: "button", className: "secondary tuning-toggle", id: "tuning-toggle-" + rule.id,
          "aria-expanded": String(open), "aria-controls": "tuning-" + rule.id,
          "aria-label": "Tuning chart of " + rule.name, text: "Tuning"
        });
        tune.addEventListener("click", function () { toggleTuning(rule); });
        actions.unshift(tune);
      }
      head.appendChild(el("span", { className: "actions" }, actions));
    }
    if (!active && may("author")) {
      var re = el("button", {
        type: "button", className: "secondary reactivate", id: "reactivate-" + rule.id,
        "data-rule-id": rule.id, "aria-label": "Reactivate rule " + rule.name, text: "Reactivate",
        "aria-describedby": ruleErrors[rule.id] ? "rule-action-error-" + rule.id : null
      });
      re.addEventListener("click", function () { reactivate(rule, re); });
      head.appendChild(el("span", { className: "actions" }, [re]));
    }
    var meta = el("div", {
      className: "rule-meta",
      text: [
        "v" + rule.version,
        rule.window ? "window: " + rule.window : "per event",
        "cooldown " + rule.cooldown_seconds + " s",
        "id " + rule.id
      ].join(" · ")
    });
    var sql = el("details", { className: "rule-sql" }, [
      // Ids let the 5-second redraw give focus back to the same summary.
      el("summary", { text: "SQL", id: "rule-sql-summary-" + rule.id }),
      el("pre", { text: rule.sql })
    ]);
    return el("article", {
      className: "rule " + state,
      id: "rule-" + rule.id, "data-rule-id": rule.id, "data-active": String(active), "data-state": state
    }, [head, ruleActionError(rule), ruleProblem(rule, state), deactivationLine(rule), meta, statsLine(rule.stats), sql,
      active && tuning[rule.id] ? tuning[rule.id].node : null]);
  }

  // Who stopped a deactivated rule, when and why (the server's record).
  function deactivationLine(rule) {
    if (rule.active) return null;
    var d = rule.deactivation;
    if (!d) return el("p", { className: "deactivation small", text: "Deactivated (who and why were not recorded)." });
    return el("p", { className: "deactivation small" }, [
      el("span", { className: "deactivation-who", text: "Deactivated by " + d.by + " at " + fullTime(d.at_ms) + ": " }),
      el("q", { className: "deactivation-reason", text: d.reason })
    ]);
  }

  // A refused action on a rule (403, 404…), shown in its card until the
  // next attempt; announced once, not on every 5-second redraw.
  var ruleErrors = {}; // rule id -> { message, announced }

  function ruleActionError(rule) {
    var e = ruleErrors[rule.id];
    if (!e) return null;
    var p = el("p", {
      className: "error-text small rule-action-error", id: "rule-action-error-" + rule.id,
      role: e.announced ? null : "alert", text: e.message
    });
    e.announced = true;
    return p;
  }

  var openSql = {};

  // Bumped at every sign-in and sign-out: answers to an earlier session's
  // requests are dropped rather than drawn for the next user.
  var epoch = 0;

  async function refreshRules() {
    var container = $("rules");
    var mine = epoch;
    try {
      var r = await fetchJson("/api/rules");
      if (mine !== epoch) return;
      if (!r.ok) throw new Error(errorText(r.body, r.status));
      var rules = (r.body && r.body.rules) || [];
      // Rules in trouble first: suspended, failing, active, inactive.
      rules.sort(function (a, b) {
        var d = RULE_STATES.indexOf(ruleState(a)) - RULE_STATES.indexOf(ruleState(b));
        if (d) return d;
        return String(a.name).localeCompare(String(b.name));
      });
      updateRuleFilter(rules);
      // Keep the SQL sections the user opened open across refreshes.
      container.querySelectorAll("article.rule").forEach(function (a) {
        var d = a.querySelector("details.rule-sql");
        openSql[a.getAttribute("data-rule-id")] = !!(d && d.open);
      });
      var focusedId = document.activeElement && container.contains(document.activeElement)
        ? document.activeElement.id : null;
      var frag = document.createDocumentFragment();
      var draw = function (rule) {
        var node = renderRule(rule);
        if (openSql[rule.id]) node.querySelector("details.rule-sql").open = true;
        return node;
      };
      var running = rules.filter(function (x) { return x.active; });
      var stopped = rules.filter(function (x) { return !x.active; });
      running.forEach(function (rule) { frag.appendChild(draw(rule)); });
      if (!rules.length) {
        frag.appendChild(el("p", {
          className: "muted small", id: "rules-empty", text: may("author") ? "No rules yet. Add one below." : "No rules yet."
        }));
      }
      // Deactivated rules apart, folded: they alert for no one.
      if (stopped.length) {
        var was = $("rules-deactivated");
        var list = el("details", { id: "rules-deactivated", open: !!(was && was.open) }, [
          el("summary", { id: "rules-deactivated-summary", text: "Deactivated rules (" + stopped.length + ")" })
        ].concat(stopped.map(draw)));
        frag.appendChild(list);
      }
      Object.keys(tuning).forEach(function (id) {
        if (running.some(function (x) { return x.id === id; })) return;
        if (tuning[id].chart) tuning[id].chart.destroy(); // the rule stopped: so does its chart
        delete tuning[id];
      });
      container.replaceChildren(frag);
      refreshTuning();
      if (focusedId && $(focusedId)) $(focusedId).focus();
      var activeCount = rules.filter(function (x) { return x.active; }).length;
      var trouble = ["suspended", "failing"].map(function (st) {
        var n = rules.filter(function (x) { return ruleState(x) === st; }).length;
        return n ? " · " + n + " " + st : "";
      }).join("");
      $("rules-count").textContent = activeCount + " active of " + rules.length + trouble;
      $("rules-error").hidden = true;
    } catch (e) {
      if (mine !== epoch) return;
      $("rules-error").textContent = "Could not load rules: " + e.message;
      $("rules-error").hidden = false;
    }
  }

  // Deactivating stops the rule alerting for every patient: the dialog asks
  // why, and the reason is kept with the rule and in the audit log.
  var MAX_REASON_CHARS = 500;
  var deactivateTarget = null; // { rule, opener }

  function openDeactivate(rule, opener) {
    deactivateTarget = { rule: rule, opener: opener };
    $("deactivate-summary").textContent = "“" + rule.name + "” (v" + rule.version + ") stops alerting for every patient " +
      "until an author reactivates it.";
    $("deactivate-reason").value = "";
    $("deactivate-reason").removeAttribute("aria-invalid");
    deactivateCount();
    deactivateError(null);
    $("deactivate-submit").disabled = false;
    $("deactivate-dialog").showModal();
    $("deactivate-reason").focus();
  }

  function deactivateCount() {
    var n = Array.from($("deactivate-reason").value).length;
    $("deactivate-count").textContent = n + " of " + MAX_REASON_CHARS + " characters";
  }

  function deactivateError(text) {
    $("deactivate-error").textContent = text || "";
    $("deactivate-error").hidden = !text;
  }

  function closeDeactivate() {
    var t = deactivateTarget;
    deactivateTarget = null;
    if ($("deactivate-dialog").open) $("deactivate-dialog").close();
    if (!t) return;
    var back = t.opener && t.opener.isConnected ? t.opener : $("deactivate-" + t.rule.id) || $("rules-heading");
    if (back) back.focus();
  }

  async function submitDeactivate(ev) {
    ev.preventDefault();
    if (!deactivateTarget) return;
    var rule = deactivateTarget.rule;
    var reason = $("deactivate-reason").value.trim();
    if (!reason) {
      deactivateError("Say why it is deactivated: the reason is kept with the rule.");
      $("deactivate-reason").setAttribute("aria-invalid", "true");
      $("deactivate-reason").focus();
      return;
    }
    if (Array.from(reason).length > MAX_REASON_CHARS) {
      deactivateError("The reason is longer than " + MAX_REASON_CHARS + " characters.");
      return;
    }
    $("deactivate-submit").disabled = true;
    delete ruleErrors[rule.id];
    try {
      var r = await fetchJson("/api/rules/" + encodeURIComponent(rule.id) + "?reason=" + encodeURIComponent(reason),
        { method: "DELETE" });
      if (r.status === 401) return; // signed out; the sign-in panel says why
      if (r.status === 400) {
        // Something the author can fix in the dialog (the reason's length).
        deactivateError("Not deactivated: " + errorText(r.body, r.status));
        $("deactivate-submit").disabled = false;
        return;
      }
      if (!r.ok) throw new Error(errorText(r.body, r.status));
      $("rule-status").textContent = "Deactivated “" + rule.name + "”.";
    } catch (e) {
      ruleErrors[rule.id] = { message: "Not deactivated: " + e.message, announced: false };
    }
    closeDeactivate();
    await refreshRules();
    var back = $("deactivate-" + rule.id) || $("rules-heading");
    if (back && document.activeElement === document.body) back.focus();
  }

  async function reactivate(rule, btn) {
    btn.disabled = true;
    delete ruleErrors[rule.id];
    try {
      var r = await fetchJson("/api/rules/" + encodeURIComponent(rule.id) + "/reactivate", {
        method: "POST",
        // The server takes a POST only as JSON (a form on another site cannot send that).
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: "{}"
      });
      if (r.status === 401) return;
      if (!r.ok) throw new Error(errorText(r.body, r.status));
      $("rule-status").textContent = "Reactivated “" + rule.name + "”" +
        (r.body && r.body.version ? " (version " + r.body.version + ")." : ".");
    } catch (e) {
      ruleErrors[rule.id] = { message: "Not reactivated: " + e.message, announced: false };
    }
    await refreshRules();
    var back = $("reactivate-" + rule.id) || $("deactivate-" + rule.id);
    if (back) back.focus();
  }

  /* ---------------------------------------------------------------- tuning */

  // Per rule (authors): fired and suppressed alerts per bucket of event
  // time, from GET /api/rules/{id}/alert-rate, drawn with uPlot, with the
  // same numbers as a table. Each open panel keeps its node (and chart)
  // across the rules list's 5-second redraws.
  var TUNING_RANGES = {
    hour: { label: "last hour, 1-minute buckets", span: 3600000, bucket: 60000 },
    six: { label: "last 6 hours, 5-minute buckets", span: 6 * 3600000, bucket: 300000 },
    day: { label: "last 24 hours, 15-minute buckets", span: 24 * 3600000, bucket: 900000 }
  };
  var tuning = {}; // rule id -> { node, chart, range, seq }

  function toggleTuning(rule) {
    if (tuning[rule.id]) {
      var t = tuning[rule.id];
      if (t.chart) t.chart.destroy();
      t.node.remove();
      delete tuning[rule.id];
    } else {
      tuning[rule.id] = tuningPanel(rule);
      var art = $("rule-" + rule.id);
      if (art) art.appendChild(tuning[rule.id].node);
      loadTuning(rule.id);
    }
    var btn = $("tuning-toggle-" + rule.id);
    if (btn) btn.setAttribute("aria-expanded", String(!!tuning[rule.id]));
  }

  function tuningPanel(rule) {
    var t = { rule: rule, chart: null, range: "hour", seq: 0 };
    var select = el("select", { id: "tuning-range-" + rule.id, className: "tuning-range" },
      Object.keys(TUNING_RANGES).map(function (k) { return el("option", { value: k, text: TUNING_RANGES[k].label }); }));
    select.addEventListener("change", function () { t.range = select.value; loadTuning(rule.id); });
    t.summary = el("p", { className: "tuning-summary small", role: "status", "aria-live": "polite", text: "Loading…" });
    t.chartBox = el("div", { className: "tuning-chart", role: "img", "aria-label": "Alerts per bucket of " + rule.name });
    t.table = el("table", { className: "tuning-table" });
    t.node = el("div", { className: "tuning", id: "tuning-" + rule.id, "data-rule-id": rule.id }, [
      el("label", { className: "small", for: "tuning-range-" + rule.id, text: "Range " }, [select]),
      t.summary, t.chartBox,
      el("details", { className: "tuning-data" }, [el("summary", { id: "tuning-data-" + rule.id, text: "The numbers" }), el("div", { className: "table-wrap" }, [t.table])])
    ]);
    return t;
  }

  function refreshTuning() {
    Object.keys(tuning).forEach(loadTuning);
  }

  async function loadTuning(id) {
    var t = tuning[id];
    if (!t) return;
    var range = TUNING_RANGES[t.range];
    // Whole buckets, up to the end of the current one.
    var until = Math.ceil((Date.now() + 1) / range.bucket) * range.bucket;
    var since = until - range.span;
    var seq = ++t.seq, mine = epoch;
    var r;
    try {
      r = await fetchJson("/api/rules/" + encodeURIComponent(id) + "/alert-rate?since=" + since + "&until=" + until +
        "&bucket_ms=" + range.bucket);
    } catch (e) {
      if (tuning[id] === t) t.summary.textContent = "Could not reach the server: " + e.message;
      return;
    }
    if (tuning[id] !== t || seq !== t.seq || mine !== epoch) return;
    if (!r.ok) { t.summary.textContent = "Not available: " + errorText(r.body, r.status); return; }
    drawTuning(t, r.body, since, until);
  }

  function drawTuning(t, body, since, until) {
    var buckets = body.buckets || [];
    var xs = [], fired = [], suppressed = [], nf = 0, ns = 0;
    // The server lists the buckets that had alerts; the chart shows the
    // empty ones between as zero.
    var byStart = new Map();
    buckets.forEach(function (b) { byStart.set(b.start_ms, b); nf += b.fired; ns += b.suppressed; });
    var step = body.bucket_ms || TUNING_RANGES[t.range].bucket;
    for (var x = Math.floor(since / step) * step; x < until; x += step) {
      var b = byStart.get(x);
      xs.push(x); fired.push(b ? b.fired : 0); suppressed.push(b ? b.suppressed : 0);
    }
    var share = nf + ns ? Math.round(100 * ns / (nf + ns)) : 0;
    t.summary.textContent = TUNING_RANGES[t.range].label.replace(/^./, function (c) { return c.toUpperCase(); }) + ": " +
      fmtCount(nf) + " fired, " + fmtCount(ns) + " suppressed" +
      (nf + ns ? " — " + share + "% suppressed by the cooldown" + (nf ? " (" + (ns / nf).toFixed(1) + " suppressed per fired)" : "") : "") + ".";
    t.node.setAttribute("data-since", since);
    t.node.setAttribute("data-until", until);
    t.node.setAttribute("data-bucket-ms", body.bucket_ms);
    t.node.setAttribute("data-buckets", buckets.length);
    t.node.setAttribute("data-fired", nf);
    t.node.setAttribute("data-suppressed", ns);
    t.table.replaceChildren(
      el("thead", null, [el("tr", null, ["Bucket start", "Fired", "Suppressed"].map(function (h) { return el("th", { scope: "col", text: h }); }))]),
      el("tbody", null, buckets.map(function (b) {
        return el("tr", { "data-start-ms": b.start_ms }, [
          el("td", { text: fullTime(b.start_ms).slice(0, 19) }), el("td", { text: String(b.fired) }), el("td", { text: String(b.suppressed) })
        ]);
      })));
    var data = [xs, fired, suppressed];
    var width = chartWidth(t.chartBox, 420);
    if (t.chart && t.chart.bucketMs === body.bucket_ms) {
      t.chart.setData(data);
      if (t.chart.width !== width) t.chart.setSize({ width: width, height: 170 });
    } else {
      if (t.chart) t.chart.destroy();
      var bars = V.uPlot.paths.bars;
      t.chart = new V.uPlot({
        width: width, height: 170, ms: 1,
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true, range: [since, until] } },
        axes: [timeAxis(), { label: "alerts", size: 50 }],
        series: [
          timeSeries(),
          { label: "fired", stroke: "#0b5cad", fill: "rgba(11, 92, 173, 0.55)", paths: bars({ size: [0.45, 40], align: -1 }), points: { show: false } },
          { label: "suppressed", stroke: "#6b7280", fill: "rgba(107, 114, 128, 0.45)", paths: bars({ size: [0.45, 40], align: 1 }), points: { show: false } }
        ]
      }, data, t.chartBox);
      t.chart.bucketMs = body.bucket_ms;
    }
    t.chartBox.setAttribute("data-points", t.chart.data[0].length);
  }

  // The time axis and legend of a chart, in the 24-hour local time the
  // rest of the page uses (uPlot's own default is "1:20am").
  function timeAxis() {
    return {
      values: function (u, ticks, axis, space, incr) {
        return ticks.map(function (t) { return incr < 60000 ? hms(t) : hms(t).slice(0, 5); });
      }
    };
  }

  function timeSeries() {
    return { label: "Time", value: function (u, v) { return v === null || v === undefined ? "–" : hms(v); } };
  }

  // A chart as wide as its box (which may not be laid out yet).
  function chartWidth(box, fallback) {
    var w = box.clientWidth || (box.parentNode && box.parentNode.clientWidth) || fallback;
    return Math.max(240, Math.floor(w));
  }

  /* ------------------------------------------------------------ SQL editor */

  // CodeMirror and uPlot from /vendor.js; null if it did not load, and then
  // the rule form keeps its plain textarea and no chart is drawn.
  var V = window.WardwatchVendor || null;

  // The columns of `vitals` (README, "Columns of vitals"), for completion.
  var VITALS_COLUMNS = ["hospital_id", "patient_id", "event_time", "heart_rate_bpm", "spo2_pct",
    "respiration_rate", "systolic_bp_mmhg", "diastolic_bp_mmhg", "source_device", "sequence_number", "timestamp_unix_ms"];

  var sqlEditor = null;   // the rule form's EditorView
  var setSqlError = null; // StateEffect: the server's error below its line, or null

  // The message of a server error, drawn as a block below the line it is
  // on, with a caret under its column.
  function sqlErrorWidget(err) {
    class SqlErrorWidget extends V.WidgetType {
      eq(other) { return other.err === this.err; }
      toDOM() {
        return el("div", {
          className: "cm-ww-error", "data-line": err.line, "data-column": err.column,
          "aria-hidden": "true" // #rule-error says the same to screen readers
        }, [
          el("div", { className: "cm-ww-caret", text: " ".repeat(Math.max(0, err.column - 1)) + "^" }),
          el("div", { className: "cm-ww-message", text: err.message })
        ]);
      }
      ignoreEvent() { return true; }
    }
    var w = new SqlErrorWidget();
    w.err = err;
    return w;
  }

  function createSqlEditor() {
    var textarea = $("rule-sql");
    setSqlError = V.StateEffect.define();
    var errorField = V.StateField.define({
      create: function () { return V.Decoration.none; },
      update: function (deco, tr) {
        deco = deco.map(tr.changes);
        tr.effects.forEach(function (e) {
          if (!e.is(setSqlError)) return;
          if (!e.value) { deco = V.Decoration.none; return; }
          var line = tr.state.doc.line(Math.min(e.value.line, tr.state.doc.lines));
          deco = V.Decoration.set([V.Decoration.widget({ widget: sqlErrorWidget(e.value), block: true, side: 1 }).range(line.to)]);
        });
        return deco;
      },
      provide: function (f) { return V.EditorView.decorations.from(f); }
    });
    // Chromium edits a multi-line selection, or inserts a line break, by
    // merging paragraphs with inline style, which the CSP refuses (and logs).
    // Such an insertion is made here instead; plain typing stays native.
    var noInlineStyle = V.EditorView.domEventHandlers({
      beforeinput: function (e, view) {
        if (e.inputType !== "insertText" && e.inputType !== "insertReplacementText") return false;
        var text = e.data !== null && e.data !== undefined ? e.data
          : e.dataTransfer ? e.dataTransfer.getData("text/plain") : null;
        if (text === null) return false;
        // Where the browser would insert: its target range (the editor may
        // not have read a selection just made, as by select-all, yet).
        var sel = view.state.selection.main, doc = view.state.doc;
        var from = sel.from, to = sel.to;
        var target = e.getTargetRanges ? e.getTargetRanges()[0] : null;
        var dom = view.root.getSelection ? view.root.getSelection() : document.getSelection();
        try {
          if (target) {
            from = view.posAtDOM(target.startContainer, target.startOffset);
            to = view.posAtDOM(target.endContainer, target.endOffset);
          } else if (dom && dom.rangeCount && view.contentDOM.contains(dom.anchorNode)) {
            from = view.posAtDOM(dom.anchorNode, dom.anchorOffset);
            to = view.posAtDOM(dom.focusNode, dom.focusOffset);
          }
        } catch (err) { from = sel.from; to = sel.to; }
        var multiLine = from !== to && doc.lineAt(from).number !== doc.lineAt(to).number;
        if (!multiLine && !/[\r\n]/.test(text)) return false;
        e.preventDefault();
        var insert = text.replace(/\r\n?/g, "\n");
        view.dispatch({
          changes: { from: Math.min(from, to), to: Math.max(from, to), insert: insert },
          selection: { anchor: Math.min(from, to) + insert.length },
          userEvent: "input.type", scrollIntoView: true
        });
        return true;
      }
    });
    sqlEditor = new V.EditorView({
      parent: $("rule-sql-editor"),
      state: V.EditorState.create({
        doc: textarea.value,
        extensions: [
          V.lineNumbers(), V.highlightActiveLineGutter(), V.history(), V.drawSelection(),
          V.indentOnInput(), V.bracketMatching(), V.closeBrackets(), V.highlightActiveLine(),
          V.syntaxHighlighting(V.defaultHighlightStyle, { fallback: true }),
          V.sql({ dialect: V.PostgreSQL, upperCaseKeywords: true, schema: { vitals: VITALS_COLUMNS }, defaultTable: "vitals" }),
          // Completion only on Ctrl-Space: Enter while typing must add a line.
          V.autocompletion({ activateOnTyping: false }),
          V.lintGutter(), errorField, noInlineStyle, V.EditorView.lineWrapping,
          V.placeholder(textarea.getAttribute("placeholder") || ""),
          // No Tab binding: Tab moves on to the next control, as in a textarea.
          V.keymap.of([].concat(V.closeBracketsKeymap, V.defaultKeymap, V.historyKeymap, V.completionKeymap, V.lintKeymap)),
          V.EditorView.contentAttributes.of({
            id: "rule-sql-input", "aria-labelledby": "rule-sql-label",
            "aria-describedby": "rule-sql-hint rule-error", spellcheck: "false"
          }),
          V.EditorView.updateListener.of(function (u) {
            if (!u.docChanged) return;
            textarea.value = u.state.doc.toString();
            ruleSqlChanged();
          })
        ]
      })
    });
    textarea.hidden = true;
    $("rule-sql-editor").hidden = false;
    $("rule-sql-keys").hidden = false;
    $("rule-sql-label").addEventListener("click", function () { sqlEditor.focus(); });
  }

  function ruleSql() { return sqlEditor ? sqlEditor.state.doc.toString() : $("rule-sql").value; }

  function setRuleSql(text) {
    if (!sqlEditor) { $("rule-sql").value = text; return; }
    sqlEditor.dispatch({
      changes: { from: 0, to: sqlEditor.state.doc.length, insert: text },
      effects: setSqlError.of(null)
    });
  }

  function focusRuleSql() { if (sqlEditor) sqlEditor.focus(); else $("rule-sql").focus(); }

  // The server's error at its (1-based) line and column: underlined, with
  // its message below the line; the caret is put there.
  function markSqlError(message, line, column) {
    if (!sqlEditor) return;
    var doc = sqlEditor.state.doc;
    var l = doc.line(Math.min(Math.max(1, line), doc.lines));
    var from = Math.min(l.from + Math.max(0, (column || 1) - 1), l.to);
    var word = sqlEditor.state.wordAt(from);
    var to = word && word.from === from ? word.to : Math.min(from + 1, l.to);
    if (to === from && from > l.from) from--; // past the end of the line: its last character
    sqlEditor.dispatch(V.setDiagnostics(sqlEditor.state, [{ from: from, to: Math.max(to, from), severity: "error", message: message, source: "server" }]), {
      effects: setSqlError.of({ line: l.number, column: column || 1, message: message }),
      selection: sqlEditor.hasFocus ? undefined : { anchor: from }
    });
  }

  function clearSqlError() {
    if (!sqlEditor) return;
    sqlEditor.dispatch(V.setDiagnostics(sqlEditor.state, []), { effects: setSqlError.of(null) });
  }

  // Checked as the author types: the server's answer to the SQL as it is
  // VALIDATE_AFTER_MS after the last keystroke; older answers are dropped.
  var VALIDATE_AFTER_MS = 600;
  var validateTimer = null;
  var validateSeq = 0;

  function ruleSqlChanged() {
    $("rule-sql").removeAttribute("aria-invalid");
    renderDiff();
    clearTimeout(validateTimer);
    validateSeq++;
    validateTimer = setTimeout(function () { validateRule(true); }, VALIDATE_AFTER_MS);
  }

  function stopValidating() {
    clearTimeout(validateTimer);
    validateTimer = null;
    validateSeq++;
  }

  /* ------------------------------------------------------------- rule form */

  function showRuleError(message, line, column) {
    var box = $("rule-error");
    var sql = $("rule-sql");
    if (!message) {
      box.hidden = true;
      box.textContent = "";
      sql.removeAttribute("aria-invalid");
      if (sqlEditor) sqlEditor.contentDOM.removeAttribute("aria-invalid");
      clearSqlError();
      return;
    }
    // Unchanged text is left alone: the box is an alert, announced on change.
    if (box.textContent !== message) box.textContent = message;
    box.hidden = false;
    if (!(typeof line === "number" && line > 0)) clearSqlError();
    if (typeof line === "number" && line > 0 && sqlEditor) {
      sqlEditor.contentDOM.setAttribute("aria-invalid", "true");
      markSqlError(message.replace(/^line \d+, column \d+: /, ""), line, column);
    } else if (typeof line === "number" && line > 0) {
      sql.setAttribute("aria-invalid", "true");
      // Put the caret where the problem is, for the next time the field has focus.
      var lines = sql.value.split("\n");
      var offset = 0;
      for (var i = 0; i < Math.min(line - 1, lines.length); i++) offset += lines[i].length + 1;
      offset += Math.max(0, (column || 1) - 1);
      offset = Math.min(offset, sql.value.length);
      try { sql.setSelectionRange(offset, offset); } catch (e) { /* not focusable yet */ }
    }
  }

  function showValidation(body) {
    var box = $("rule-validation");
    if (!body) { box.hidden = true; box.replaceChildren(); return; }
    var kind = body.kind === "windowed" ? "windowed" : "per event";
    var cols = (body.columns || []).map(function (c) { return c.name + " " + c.type; }).join(", ");
    box.replaceChildren(
      el("span", { className: "ok-text", text: "✓ Valid: " + kind + (body.window ? " (" + body.window + ")" : "") + ". " }),
      el("span", { text: "Columns: " }),
      el("code", { text: cols || "none" })
    );
    box.hidden = false;
    setEscalationColumns(body.columns || []);
  }

  // The escalation column is one of the rule's numeric output columns, as
  // the server's validation names them; a chosen one stays listed (marked)
  // while the SQL changes, so the server's own error can say what is wrong.
  var NUMERIC_TYPE = /^(u?int|float|decimal|double)/i;

  function setEscalationColumns(columns, keep) {
    var select = $("rule-esc-column");
    var current = keep !== undefined ? keep : select.value;
    var names = columns.filter(function (c) { return NUMERIC_TYPE.test(String(c.type)); }).map(function (c) { return c.name; });
    var opts = [el("option", { value: "", text: "none" })].concat(names.map(function (n) {
      return el("option", { value: n, text: n });
    }));
    if (current && names.indexOf(current) < 0) {
      opts.push(el("option", { value: current, text: current + " (not a numeric output column)" }));
    }
    select.replaceChildren.apply(select, opts);
    select.value = current || "";
    select.setAttribute("data-columns", names.join(" "));
  }

  var MAX_DESCRIPTION_BYTES = 4096;

  function descriptionBytes() { return new TextEncoder().encode($("rule-description").value).length; }

  function descriptionCount() {
    var n = descriptionBytes();
    var count = $("rule-description-count");
    count.textContent = n + " of " + MAX_DESCRIPTION_BYTES + " bytes";
    count.className = n > MAX_DESCRIPTION_BYTES ? "small error-text" : "small muted";
  }

  // A field the author must fix: marked invalid, named in the error box,
  // and focused.
  function fieldError(id, message) {
    showRuleError(message);
    $(id).setAttribute("aria-invalid", "true");
    $(id).focus();
  }

  function clearFieldErrors() {
    ["rule-name", "rule-cooldown", "rule-description", "rule-lateness", "rule-esc-column", "rule-esc-above", "rule-esc-below"]
      .forEach(function (id) { $(id).removeAttribute("aria-invalid"); });
  }

  // The form's settings beyond name, severity, cooldown, hospital and SQL,
  // as RuleRequest has them; null and a message when one is not valid.
  function ruleSettings() {
    var out = {};
    var description = $("rule-description").value.trim();
    if (new TextEncoder().encode(description).length > MAX_DESCRIPTION_BYTES) {
      return { error: "The description is longer than " + MAX_DESCRIPTION_BYTES + " bytes.", field: "rule-description" };
    }
    out.description = description || null;
    var late = $("rule-lateness").value.trim();
    if (late === "" && $("rule-lateness").validity.badInput) {
      return { error: "Allowed lateness must be a whole number of milliseconds.", field: "rule-lateness" };
    }
    if (late !== "") {
      var ms = Number(late);
      if (!Number.isInteger(ms) || ms < 0) {
        return { error: "Allowed lateness must be a whole number of milliseconds, 0 or more (empty: the server's default).", field: "rule-lateness" };
      }
      out.allowed_lateness_ms = ms;
    } else {
      out.allowed_lateness_ms = null; // the engine's default
    }
    out.keep_duplicates = $("rule-keep-duplicates").checked;
    out.escalation = null;
    var column = $("rule-esc-column").value;
    var above = $("rule-esc-above").value.trim(), below = $("rule-esc-below").value.trim();
    if (column) {
      var esc = { column: column, above: null, below: null, severity: $("rule-esc-severity").value || null };
      var bad = null;
      [["above", above, "rule-esc-above"], ["below", below, "rule-esc-below"]].forEach(function (t) {
        if (t[1] === "" && !$(t[2]).validity.badInput) return;
        var v = Number(t[1]);
        if (t[1] === "" || !isFinite(v)) bad = bad || { error: "The escalation threshold “" + t[0] + "” must be a number.", field: t[2] };
        else esc[t[0]] = v;
      });
      if (bad) return bad;
      if (esc.above === null && esc.below === null) {
        return { error: "Give the escalation a threshold: above, below or both.", field: "rule-esc-above" };
      }
      out.escalation = esc;
    } else if (above !== "" || below !== "") {
      return { error: "Choose the column the escalation thresholds apply to (validate the SQL to list them).", field: "rule-esc-column" };
    }
    return { settings: out };
  }

  // A refusal that names a setting of the form (the server's words) marks
  // that field too; errors in the SQL carry a line and column instead.
  var FIELD_OF_ERROR = [
    [/escalat/i, "rule-esc-column"], [/description/i, "rule-description"],
    [/allowed_lateness|lateness/i, "rule-lateness"], [/cooldown/i, "rule-cooldown"]
  ];

  function handleErrorResponse(r) {
    var e = r.body && r.body.error;
    if (e && typeof e === "object" && !(typeof e.line === "number" && e.line > 0) && r.status === 400) {
      FIELD_OF_ERROR.some(function (m) {
        if (!m[0].test(String(e.message || ""))) return false;
        $(m[1]).setAttribute("aria-invalid", "true");
        return true;
      });
    }
    if (e && typeof e === "object" && typeof e.line === "number" && e.line > 0) {
      showRuleError(errorText(r.body, r.status), e.line, e.column);
    } else {
      showRuleError(errorText(r.body, r.status));
    }
  }

  // `asTyped`: the check while typing (no button, no message for an empty
  // field, nothing said if the server cannot be reached).
  async function validateRule(asTyped) {
    asTyped = asTyped === true;
    var btn = $("rule-validate");
    var sql = ruleSql();
    if (!may("author")) return;
    if (!asTyped) stopValidating();
    var seq = ++validateSeq;
    if (!sql.trim()) {
      showValidation(null);
      showRuleError(asTyped ? null : "Write the rule's SQL first.");
      return;
    }
    if (!asTyped) {
      showRuleError(null);
      showValidation(null);
      $("rule-status").textContent = "";
      btn.disabled = true;
    }
    try {
      var r = await fetchJson("/api/rules/validate", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ sql: sql })
      });
      if (seq !== validateSeq) return; // typed on, or saved, meanwhile
      if (r.ok && r.body && r.body.valid) { showRuleError(null); showValidation(r.body); }
      else { showValidation(null); handleErrorResponse(r); }
    } catch (e) {
      if (!asTyped && seq === validateSeq) showRuleError("Could not reach the server: " + e.message);
    } finally {
      if (!asTyped) btn.disabled = false;
    }
  }

  // The rule being edited (a new version is saved over it), or null.
  var editing = null;

  function startEdit(rule) {
    editing = rule;
    $("rule-name").value = rule.name;
    $("rule-severity").value = rule.severity;
    $("rule-cooldown").value = String(rule.cooldown_seconds);
    $("rule-hospital").value = rule.hospital_id || "";
    $("rule-description").value = rule.description || "";
    descriptionCount();
    $("rule-lateness").value = rule.allowed_lateness_ms === null || rule.allowed_lateness_ms === undefined ? "" : String(rule.allowed_lateness_ms);
    $("rule-keep-duplicates").checked = !!rule.keep_duplicates;
    var esc = rule.escalation;
    // Listed until the validation of the SQL (below) names the columns.
    setEscalationColumns([], esc ? esc.column : "");
    $("rule-esc-above").value = esc && typeof esc.above === "number" ? String(esc.above) : "";
    $("rule-esc-below").value = esc && typeof esc.below === "number" ? String(esc.below) : "";
    $("rule-esc-severity").value = esc && esc.severity ? esc.severity : "";
    clearFieldErrors();
    setRuleSql(rule.sql);
    $("rule-form-heading").textContent = "Edit “" + rule.name + "”: saving makes version " + (rule.version + 1);
    $("rule-submit").textContent = "Save version " + (rule.version + 1);
    $("rule-cancel-edit").hidden = false;
    $("rule-backtest").hidden = true;
    showRuleError(null);
    showValidation(null);
    $("rule-status").textContent = "";
    renderDiff();
    $("rule-form").scrollIntoView({ block: "nearest" });
    focusRuleSql();
  }

  function endEdit() {
    editing = null;
    $("rule-form").reset();
    setEscalationColumns([], "");
    descriptionCount();
    clearFieldErrors();
    setRuleSql("");
    stopValidating();
    showValidation(null);
    $("rule-form-heading").textContent = "Add a rule";
    $("rule-submit").textContent = "Add rule";
    $("rule-cancel-edit").hidden = true;
    $("rule-diff-box").hidden = true;
    $("rule-backtest").hidden = true;
  }

  // Line diff (longest common subsequence) of the running SQL and the edit.
  function lineDiff(before, after) {
    var a = before.split("\n"), b = after.split("\n");
    var n = a.length, m = b.length, i, j;
    var lcs = [];
    for (i = 0; i <= n; i++) { lcs.push(new Array(m + 1).fill(0)); }
    for (i = n - 1; i >= 0; i--) {
      for (j = m - 1; j >= 0; j--) {
        lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    var out = [];
    i = 0; j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && a[i] === b[j]) { out.push(["same", a[i]]); i++; j++; }
      else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(["add", b[j]]); j++; }
      else { out.push(["del", a[i]]); i++; }
    }
    return out;
  }

  function renderDiff() {
    if (!editing) return;
    var box = $("rule-diff");
    var lines = lineDiff(editing.sql, ruleSql());
    var changed = lines.some(function (l) { return l[0] !== "same"; });
    box.replaceChildren.apply(box, lines.map(function (l) {
      var mark = l[0] === "add" ? "+ " : l[0] === "del" ? "- " : "  ";
      return el("span", { className: l[0], text: mark + l[1] });
    }));
    $("rule-diff-caption").textContent = changed
      ? "Changes to the SQL against version " + editing.version + ":"
      : "The SQL is unchanged from version " + editing.version + ".";
    $("rule-diff-box").hidden = false;
  }

  var HOUR_MS = 3600000;
  var BACKTEST_HOURS = [1, 6, 24]; // the choices by the button; the server replays at most 24 h

  function backtestHours() {
    var h = Number($("rule-backtest-hours").value);
    return BACKTEST_HOURS.indexOf(h) >= 0 ? h : 1;
  }

  // Fired alerts per patient of a replay report.
  function firedByPatient(report) {
    var counts = {};
    (report.alerts || []).forEach(function (a) {
      if (a.status !== "fired") return;
      var p = patientOf(a);
      counts[p] = (counts[p] || 0) + 1;
    });
    return counts;
  }

  function showBacktest(draft, live, hours) {
    var box = $("rule-backtest");
    var mine = firedByPatient(draft);
    var theirs = live ? firedByPatient(live) : null;
    var total = function (c) { return Object.keys(c).reduce(function (n, k) { return n + c[k]; }, 0); };
    var suppressed = (draft.alerts || []).filter(function (a) { return a.status !== "fired"; }).length;
    var lines = [el("p", { className: "small", text:
      "Backtest over the last " + (hours === 1 ? "hour" : hours + " hours") + ": " + fmtCount(draft.events) + " events, " + fmtCount(total(mine)) +
      " alerts fired (" + fmtCount(suppressed) + " suppressed) for " + Object.keys(mine).length + " patients" +
      (theirs ? "; the running version fired " + fmtCount(total(theirs)) + " for " + Object.keys(theirs).length + " patients." : ".") })];
    var patients = Object.keys(mine);
    if (theirs) Object.keys(theirs).forEach(function (p) { if (patients.indexOf(p) < 0) patients.push(p); });
    patients.sort(function (a, b) { return ((mine[b] || 0) - (mine[a] || 0)) || (a < b ? -1 : 1); });
    if (patients.length) {
      var head = [el("th", { scope: "col", text: "Patient" }), el("th", { scope: "col", text: "Draft" })];
      if (theirs) head.push(el("th", { scope: "col", text: "Running" }));
      lines.push(el("table", { className: "backtest" }, [
        el("caption", { className: "visually-hidden", text: "Fired alerts per patient" }),
        el("thead", null, [el("tr", null, head)]),
        el("tbody", null, patients.slice(0, 10).map(function (p) {
          var cells = [el("td", { text: p }), el("td", { text: String(mine[p] || 0) })];
          if (theirs) cells.push(el("td", { text: String(theirs[p] || 0) }));
          return el("tr", null, cells);
        }))
      ]));
    }
    box.replaceChildren.apply(box, lines);
    box.hidden = false;
  }

  // Replays the draft (and, when editing, the running version) over the
  // archive's last 1, 6 or 24 hours: what it would have fired, before it is saved.
  async function backtestRule() {
    var btn = $("rule-backtest-button");
    showRuleError(null);
    showValidation(null);
    $("rule-backtest").hidden = true;
    stopValidating();
    var sql = ruleSql();
    if (!sql.trim()) { showRuleError("Write the rule's SQL first."); return; }
    var hours = backtestHours();
    var to = Date.now(), from = to - hours * HOUR_MS;
    var body = { sql: sql, from_ms: from, to_ms: to };
    var cooldown = Number($("rule-cooldown").value.trim());
    if ($("rule-cooldown").value.trim() !== "" && Number.isInteger(cooldown) && cooldown >= 0) body.cooldown_seconds = cooldown;
    var hospital = $("rule-hospital").value.trim();
    if (hospital) body.hospital_id = hospital;
    var post = function (b) {
      return fetchJson("/api/replay", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(b)
      });
    };
    btn.disabled = true;
    try {
      var r = await post(body);
      if (!r.ok) { handleErrorResponse(r); return; }
      var live = null;
      if (editing) {
        var lr = await post({ rule_id: editing.id, from_ms: from, to_ms: to });
        if (lr.ok) live = lr.body;
      }
      showBacktest(r.body, live, hours);
    } catch (e) {
      showRuleError("Could not reach the server: " + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  async function submitRule(ev) {
    ev.preventDefault();
    var btn = $("rule-submit");
    showRuleError(null);
    showValidation(null);
    $("rule-status").textContent = "";
    stopValidating();
    clearFieldErrors();
    var name = $("rule-name").value.trim();
    var sql = ruleSql();
    var cooldownRaw = $("rule-cooldown").value.trim();
    if (!name) { fieldError("rule-name", "Give the rule a name."); return; }
    if (!sql.trim()) { showRuleError("Write the rule's SQL."); focusRuleSql(); return; }
    var draft = { name: name, severity: $("rule-severity").value, sql: sql };
    // A rule limited to one hospital sees only its events; without one it
    // is global, which only an admin may make.
    var hospital = $("rule-hospital").value.trim();
    if (hospital) { draft.hospital_id = hospital; }
    if (cooldownRaw !== "") {
      var cooldown = Number(cooldownRaw);
      if (!Number.isInteger(cooldown) || cooldown < 0) {
        fieldError("rule-cooldown", "Cooldown must be a whole number of seconds, 0 or more.");
        return;
      }
      draft.cooldown_seconds = cooldown;
    }
    // Every setting is sent, so a new version is exactly what the form shows.
    var more = ruleSettings();
    if (more.error) { fieldError(more.field, more.error); return; }
    Object.assign(draft, more.settings);
    var target = editing;
    btn.disabled = true;
    try {
      var r = await fetchJson(target ? "/api/rules/" + encodeURIComponent(target.id) : "/api/rules", {
        method: target ? "PUT" : "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(draft)
      });
      if (r.status === 201 || r.ok) {
        var saved = (r.body && r.body.name) || name;
        endEdit();
        $("rule-status").textContent = target
          ? "Saved “" + saved + "” as version " + (r.body && r.body.version) + "."
          : "Added “" + saved + "”.";
        await refreshRules();
      } else {
        handleErrorResponse(r);
      }
    } catch (e) {
      showRuleError("Could not reach the server: " + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  /* ---------------------------------------------------------------- alerts */

  // The worklist: what the server returns for the current filters (fired
  // only unless "show suppressed" is ticked), most severe first, then newest.
  var alerts = [];          // sorted; per severity at most its page count (paging.cap)
  var rowsById = new Map(); // alert id -> <tr>
  var SEV_RANK = { critical: 4, high: 3, medium: 2, low: 1, info: 0 };

  function sevRank(a) {
    var r = SEV_RANK[String(a.severity || "").toLowerCase()];
    return r === undefined ? -1 : r;
  }

  // True when a belongs before b in the worklist.
  function before(a, b) {
    var sa = sevRank(a), sb = sevRank(b);
    if (sa !== sb) return sa > sb;
    var ea = a.event_time_ms || 0, eb = b.event_time_ms || 0;
    if (ea !== eb) return ea > eb;
    var fa = a.fired_at_ms || 0, fb = b.fired_at_ms || 0;
    if (fa !== fb) return fa > fb;
    return String(a.id) > String(b.id);
  }

  function currentFilters() {
    var f = {};
    var sev = $("filter-severity").value;
    var rule = $("filter-rule").value;
    var patient = $("filter-patient").value.trim();
    if (sev) f.severity = sev;
    if (rule) f.rule = rule;
    if (patient) f.patient = patient;
    if (!$("show-suppressed").checked) f.status = "fired";
    // The worklist is what is still to be seen: unacknowledged by default.
    var acked = $("filter-ack").value;
    if (acked === "true" || acked === "false") f.acknowledged = acked;
    return f;
  }

  function queryString(f, extra) {
    var q = new URLSearchParams();
    Object.keys(f).forEach(function (k) { q.set(k, f[k]); });
    Object.keys(extra || {}).forEach(function (k) { q.set(k, extra[k]); });
    var s = q.toString();
    return s ? "?" + s : "";
  }

  function patientOf(a) {
    var key = a.key || {};
    if (key.patient_id !== undefined && key.patient_id !== null) return String(key.patient_id);
    var rest = fmtPairs(key);
    return rest || "–";
  }

  function explanationText(a) {
    var x = a.explanation || {};
    var lines = [
      "Condition: " + (x.condition || "–"),
      "Events: " + fmtCount(x.event_count),
      "First event: " + fullTime(x.first_event_ms),
      "Last event: " + fullTime(x.last_event_ms)
    ];
    if (a.window_start_ms !== null && a.window_start_ms !== undefined) {
      lines.push("Window: " + fullTime(a.window_start_ms) + " – " + fullTime(a.window_end_ms));
    }
    lines.push("Rule: " + a.rule_name + " (" + a.rule_id + " v" + a.rule_version + ")");
    if (x.suppressed_by) lines.push("Suppressed by alert " + x.suppressed_by + " (cooldown)");
    lines.push("Alert id: " + a.id);
    return lines;
  }

  function explanationDetails(a) {
    var x = a.explanation || {};
    var items = [
      ["Condition", x.condition || "–"],
      ["Events", fmtCount(x.event_count)],
      ["First event", fullTime(x.first_event_ms)],
      ["Last event", fullTime(x.last_event_ms)]
    ];
    if (a.window_start_ms !== null && a.window_start_ms !== undefined) {
      items.push(["Window", fullTime(a.window_start_ms) + " – " + fullTime(a.window_end_ms)]);
    }
    items.push(["Rule version", a.rule_id + " v" + a.rule_version]);
    if (x.suppressed_by) items.push(["Suppressed by", x.suppressed_by]);
    if (x.escalated_from) items.push(["Escalates", x.escalated_from]);
    if (x.clears) items.push(["Clears", "alert " + x.clears + " (the readings came back)"]);
    if (x.late) items.push(["Late", "decided by events after the window's allowed lateness"]);
    items.push(["Alert id", a.id]);
    var dl = el("dl", { className: "explanation" });
    items.forEach(function (p) {
      dl.appendChild(el("dt", { text: p[0] }));
      dl.appendChild(el("dd", { text: p[1] }));
    });
    return el("details", { className: "why" }, [
      el("summary", { text: "explain", "aria-label": "Explain alert for " + patientOf(a) }),
      dl
    ]);
  }

  function ackCell(a) {
    var td = el("td", { className: "ack-cell" });
    if (a.ack) {
      var info = el("span", {
        className: "ack-info", tabindex: "-1",
        title: "Acknowledged by " + a.ack.by + " at " + fullTime(a.ack.at_ms)
      }, ["✓ " + a.ack.by + " · " + hms(a.ack.at_ms)]);
      if (a.ack.note) info.appendChild(el("span", { className: "ack-note", text: a.ack.note }));
      td.appendChild(info);
    } else if (may("viewer")) {
      var btn = el("button", {
        type: "button", className: "secondary ack-button",
        "aria-label": "Acknowledge " + (a.rule_name || a.rule_id) + " for " + patientOf(a),
        text: "Acknowledge"
      });
      btn.addEventListener("click", function () { openAck(a.id, btn); });
      td.appendChild(btn);
    }
    return td;
  }

  // Suppressed repeats folded into the fired alert they repeat (their
  // explanation's suppressed_by), counted among the newest REPEATS_SCAN
  // suppressed alerts for the same filters; refreshed every POLL_MS.
  var REPEATS_SCAN = 2000;
  var repeatCounts = new Map(); // fired alert id -> suppressed repeats seen

  function repeatsTag(a) {
    var n = repeatCounts.get(a.id) || 0;
    return el("span", {
      className: "repeats", hidden: n === 0 || $("show-suppressed").checked,
      title: n + " suppressed repeats within the cooldown (among the newest " + REPEATS_SCAN + " suppressed alerts)",
      text: "+" + n + " repeat" + (n === 1 ? "" : "s")
    });
  }

  async function refreshRepeats() {
    if ($("show-suppressed").checked) return; // the repeats are rows then
    var f = Object.assign({}, currentFilters(), { status: "suppressed" });
    delete f.acknowledged; // repeats are counted whether their alert was acknowledged or not
    var mine = epoch;
    try {
      var r = await fetchJson("/api/alerts" + queryString(f, { limit: REPEATS_SCAN }));
      if (!r.ok || mine !== epoch) return; // the list's own errors are shown; counts are extra
      var counts = new Map();
      ((r.body && r.body.alerts) || []).forEach(function (a) {
        var by = a.explanation && a.explanation.suppressed_by;
        if (by) counts.set(by, (counts.get(by) || 0) + 1);
      });
      repeatCounts = counts;
      rowsById.forEach(function (row, id) {
        var old = row.querySelector(".repeats");
        var a = alertById(id);
        if (old && a) old.replaceWith(repeatsTag(a));
      });
    } catch (e) { /* the connection state shows an outage */ }
  }

  // Acknowledged elsewhere (another nurse, another screen): the live feed
  // carries new alerts only, so every POLL_MS the newest acknowledged alerts
  // for the same filters are asked for, and those still listed leave the
  // unacknowledged worklist.
  async function refreshAcked() {
    var f = currentFilters();
    if (f.acknowledged !== "false" || !alerts.length || !synced) return;
    var mine = epoch, seq = loadSeq;
    try {
      // As many as are listed (older pages included), so none is missed.
      var limit = Math.min(Math.max(MAX_ALERTS, alerts.length), MAX_LIMIT);
      var r = await fetchJson("/api/alerts" + queryString(Object.assign({}, f, { acknowledged: "true" }), { limit: limit }));
      if (!r.ok || mine !== epoch || seq !== loadSeq || currentFilters().acknowledged !== "false") return;
      var gone = ((r.body && r.body.alerts) || []).filter(function (a) {
        return rowsById.has(a.id) && !(ackTarget && ackTarget.id === a.id);
      });
      gone.forEach(function (a) { removeAlert(a.id); });
      if (gone.length) {
        updateAlertCount();
        notice(gone.length === 1
          ? gone[0].rule_name + " for " + patientOf(gone[0]) + " was acknowledged by " + (gone[0].ack ? gone[0].ack.by : "someone") + "."
          : gone.length + " alerts were acknowledged elsewhere.");
      }
    } catch (e) { /* the connection state shows an outage */ }
  }

  function shorten(text, n) {
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  function alertRow(a, fresh) {
    var status = a.status === "suppressed" ? "suppressed" : "fired";
    var values = fmtPairs(a.values);
    var sev = String(a.severity || "").toLowerCase();
    return el("tr", {
      className: "alert status-" + status + " severity-" + sev + (fresh ? " fresh" : "") + (a.ack ? " acked" : ""),
      id: "alert-" + a.id,
      "data-alert-id": a.id,
      "data-rule-id": a.rule_id,
      "data-patient": patientOf(a),
      "data-status": status,
      "data-severity": sev,
      "data-event-time": a.event_time_ms,
      "data-hospital": hospitalOf(a),
      "data-window-start": a.window_start_ms,
      "data-window-end": a.window_end_ms,
      "data-acked": String(!!a.ack),
      "data-clears": clearsOf(a),
      title: explanationText(a).join("\n")
    }, [
      el("td", { className: "severity" }, [severityBadge(sev)]),
      patientCell(a),
      el("td", { className: "alert-rule" }, [
        a.rule_name || a.rule_id,
        clearsOf(a) ? el("span", { className: "clears", text: "Readings back: clears alert " + clearsOf(a) }) : null,
        el("span", { className: "alert-values", title: values, text: shorten(values, 160) })
      ]),
      el("td", { className: "time", title: fullTime(a.event_time_ms) }, [
        hms(a.event_time_ms),
        el("span", { className: "status", text: status }),
        el("span", { className: "cleared", hidden: true }),
        repeatsTag(a)
      ]),
      ackCell(a),
      el("td", { className: "why-cell" }, [explanationDetails(a)])
    ]);
  }

  function hospitalOf(a) { return a.hospital_id ? String(a.hospital_id) : "unknown"; }

  function hasPatient(a) { return !!(a.key && a.key.patient_id !== undefined && a.key.patient_id !== null); }

  // The patient's id opens their vitals around this alert.
  function patientCell(a) {
    var td = el("td", { className: "patient" });
    if (!hasPatient(a) || !V) { td.textContent = patientOf(a); return td; }
    var b = el("button", {
      type: "button", className: "link trend-link",
      "aria-label": "Vital signs of " + patientOf(a) + " around this alert", text: patientOf(a)
    });
    b.addEventListener("click", function () { openTrend(a.id, b); });
    td.appendChild(b);
    return td;
  }

  function alertById(id) {
    for (var i = 0; i < alerts.length; i++) if (alerts[i].id === id) return alerts[i];
    return null;
  }

  var loaded = false;

  function updateAlertCount() {
    var fired = 0, suppressed = 0, unacked = 0;
    var folded = foldedClears();
    var listed = alerts.filter(function (a) { return !folded.has(a.id); });
    listed.forEach(function (a) {
      if (a.status === "suppressed") suppressed++; else fired++;
      if (!a.ack && a.status !== "suppressed") unacked++;
    });
    var patients = new Set(listed.map(function (a) { return hospitalOf(a) + "\u0000" + patientOf(a); })).size;
    $("alerts-count").textContent = listed.length
      ? fired + " fired (" + unacked + " unacknowledged)" +
        ($("show-suppressed").checked ? ", " + suppressed + " suppressed" : "") +
        " for " + patients + " patient" + (patients === 1 ? "" : "s")
      : "";
    updatePaging(listed.length, folded.size);
    var empty = $("alerts-empty");
    var f = currentFilters();
    var narrowed = f.severity || f.rule || f.patient || $("show-suppressed").checked;
    var emptyText = !loaded ? "Loading alerts…"
      : narrowed ? "No alerts match these filters."
      : f.acknowledged === "false" ? "No unacknowledged fired alerts."
      : f.acknowledged === "true" ? "No acknowledged fired alerts." : "No fired alerts.";
    if (alerts.length === 0 && !empty) {
      $("alerts").appendChild(el("tr", { id: "alerts-empty" }, [el("td", { colspan: "6", text: emptyText })]));
    } else if (alerts.length === 0) {
      empty.firstChild.textContent = emptyText;
    } else if (empty) {
      empty.remove();
    }
  }

  // The rows grouped by hospital, then patient (events carry no ward). A
  // group's place is that of its first alert, so the most severe, newest
  // alert leads, and inside a patient's group the rows keep the order
  // severity, then time. Redrawn at most once a frame; row nodes are
  // reused, so an open "explain" stays open.
  var renderScheduled = false;

  function scheduleRender() {
    if (renderScheduled) return;
    renderScheduled = true;
    requestAnimationFrame(function () { renderScheduled = false; renderAlerts(); });
  }

  // Header rows, kept from one redraw to the next (only their counts change).
  var groupRows = new Map();

  function groupRow(kept, key, attrs, name, count) {
    var row = groupRows.get(key);
    if (!row) {
      row = el("tr", attrs, [el("th", { colspan: "6", scope: "colgroup" }, [
        el("span", { className: "group-name", text: name }), el("span", { className: "group-count" })
      ])]);
    }
    var c = row.querySelector(".group-count");
    if (c.textContent !== count) c.textContent = count;
    kept.set(key, row);
    return row;
  }

  function sevSummary(list) {
    var by = {};
    list.forEach(function (a) { var s = String(a.severity || "").toLowerCase(); by[s] = (by[s] || 0) + 1; });
    return SEVERITIES.slice().reverse().filter(function (s) { return by[s]; })
      .map(function (s) { return by[s] + " " + s; }).join(", ");
  }

  // A signal-loss rule's clear (explanation.clears) rides on the alert it
  // clears when that one is listed: that row says "cleared at", and the
  // clear has no row of its own. Otherwise the clear is a row, saying what
  // it clears.
  function clearsOf(a) { return a.explanation && a.explanation.clears ? String(a.explanation.clears) : null; }

  // The ids of the clears folded into their alert's row.
  function foldedClears() {
    var out = new Set();
    alerts.forEach(function (a) {
      var c = clearsOf(a);
      if (c && rowsById.has(c) && c !== a.id) out.add(a.id);
    });
    return out;
  }

  function markCleared(row, clear) {
    var tag = row.querySelector(".cleared");
    if (!tag) return;
    var text = clear ? "cleared at " + hms(clear.event_time_ms) : "";
    if (tag.textContent !== text) tag.textContent = text;
    tag.hidden = !clear;
    tag.title = clear ? "The readings came back at " + fullTime(clear.event_time_ms) + " (alert " + clear.id + ")" : "";
    if (clear) row.setAttribute("data-cleared-by", clear.id); else row.removeAttribute("data-cleared-by");
  }

  var clearedMarks = new Map(); // alert id -> id of the clear its row shows

  function renderAlerts() {
    var hospitals = [], byHospital = new Map();
    var folded = foldedClears();
    var clearFor = new Map(); // alert id -> its folded clear
    alerts.forEach(function (a) { if (folded.has(a.id) && !clearFor.has(clearsOf(a))) clearFor.set(clearsOf(a), a); });
    // Only rows whose mark changes are touched: a storm redraws every frame.
    clearedMarks.forEach(function (cid, id) {
      var c = clearFor.get(id);
      if (c && c.id === cid) return;
      if (rowsById.has(id)) markCleared(rowsById.get(id), null);
      clearedMarks.delete(id);
    });
    clearFor.forEach(function (c, id) {
      if (clearedMarks.get(id) === c.id) return;
      markCleared(rowsById.get(id), c);
      clearedMarks.set(id, c.id);
    });
    alerts.forEach(function (a) {
      if (folded.has(a.id)) return;
      var h = hospitalOf(a), p = patientOf(a);
      var hg = byHospital.get(h);
      if (!hg) { hg = { id: h, alerts: [], patients: [], byPatient: new Map() }; byHospital.set(h, hg); hospitals.push(hg); }
      hg.alerts.push(a);
      var pg = hg.byPatient.get(p);
      if (!pg) { pg = { id: p, alerts: [] }; hg.byPatient.set(p, pg); hg.patients.push(pg); }
      pg.alerts.push(a);
    });
    var focused = document.activeElement;
    var nodes = [];
    var kept = new Map();
    hospitals.forEach(function (hg) {
      nodes.push(groupRow(kept, "h\u0000" + hg.id, { className: "group-row hospital-row", "data-hospital": hg.id },
        hg.id === "unknown" ? "Hospital not known" : "Hospital " + hg.id,
        " · " + hg.patients.length + " patient" + (hg.patients.length === 1 ? "" : "s") +
        " · " + hg.alerts.length + " alert" + (hg.alerts.length === 1 ? "" : "s") + ": " + sevSummary(hg.alerts)));
      hg.patients.forEach(function (pg) {
        nodes.push(groupRow(kept, "p\u0000" + hg.id + "\u0000" + pg.id,
          { className: "group-row patient-row", "data-hospital": hg.id, "data-patient": pg.id },
          "Patient " + pg.id, " · " + pg.alerts.length + " alert" + (pg.alerts.length === 1 ? "" : "s") + ": " + sevSummary(pg.alerts)));
        pg.alerts.forEach(function (a) { nodes.push(rowsById.get(a.id)); });
      });
    });
    groupRows = kept;
    var empty = $("alerts-empty");
    if (empty) nodes.push(empty);
    // Only what moved is moved: a row taken out and put back would lose
    // focus and replay its "new" highlight.
    var tbody = $("alerts");
    var want = new Set(nodes);
    var cur = tbody.firstElementChild;
    nodes.forEach(function (n) {
      while (cur && !want.has(cur)) { var gone = cur; cur = cur.nextElementSibling; gone.remove(); }
      if (n === cur) cur = cur.nextElementSibling;
      else tbody.insertBefore(n, cur);
    });
    while (cur) { var rest = cur; cur = cur.nextElementSibling; rest.remove(); }
    if (focused && focused !== document.activeElement && focused.isConnected) focused.focus({ preventScroll: true });
  }

  // Paging, per severity: `cap` alerts of it are kept (a page, plus what
  // Show older added); `more` says older ones may exist on the server.
  // Reset by new filters, kept by a resync (reconnect, lagged feed).
  var paging = { cap: {}, more: {} };
  var MAX_LIMIT = 10000; // the server's largest `limit`

  function sevOf(a) { return String(a.severity || "").toLowerCase(); }
  function capOf(sev) { return paging.cap[sev] || MAX_ALERTS; }

  function addAlert(a, fresh) {
    if (!a || !a.id || rowsById.has(a.id)) return false;
    var i = 0;
    while (i < alerts.length && before(alerts[i], a)) i++;
    var sev = sevOf(a), same = 0, last = -1;
    alerts.forEach(function (x, j) { if (sevOf(x) === sev) { same++; last = j; } });
    if (same >= capOf(sev)) {
      // A full page of this severity: the oldest of it (last, as the list
      // is severity first, then newest) makes way, and is older than shown now.
      paging.more[sev] = true;
      if (i > last) return false;
      rowsById.delete(alerts[last].id);
      alerts.splice(last, 1);
    }
    alerts.splice(i, 0, a);
    rowsById.set(a.id, alertRow(a, fresh));
    scheduleRender();
    if (fresh && sevRank(a) === SEV_RANK.critical && a.status !== "suppressed") chime();
    return true;
  }

  function removeAlert(id) {
    alerts = alerts.filter(function (x) { return x.id !== id; });
    rowsById.delete(id);
    scheduleRender();
  }

  function clearAlerts() {
    alerts = [];
    rowsById.clear();
    clearedMarks.clear();
    groupRows = new Map();
    $("alerts").replaceChildren();
  }

  // Two short tones for a new critical alert, only once the user has
  // ticked the box (the click is what lets the page make sound).
  var audio = null;

  function chime() {
    if (!audio || !$("sound-critical").checked) return;
    try {
      var t = audio.currentTime;
      [0, 0.22].forEach(function (d) {
        var osc = audio.createOscillator(), gain = audio.createGain();
        osc.frequency.value = 880;
        gain.gain.setValueAtTime(0.0001, t + d);
        gain.gain.exponentialRampToValueAtTime(0.2, t + d + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, t + d + 0.18);
        osc.connect(gain).connect(audio.destination);
        osc.start(t + d);
        osc.stop(t + d + 0.2);
      });
      $("sound-critical").setAttribute("data-chimes", String(Number($("sound-critical").getAttribute("data-chimes") || 0) + 1));
    } catch (e) { /* no audio output: the row is still there */ }
  }

  function soundToggled() {
    if ($("sound-critical").checked && !audio) {
      var Ctx = window.AudioContext || window.webkitAudioContext;
      if (Ctx) { try { audio = new Ctx(); } catch (e) { audio = null; } }
    }
    if (audio && audio.state === "suspended") audio.resume();
  }

  // Each load supersedes the previous one; an answer to an older query
  // (filters changed meanwhile) is dropped.
  var loadSeq = 0;

  // The server lists newest first, so one query for the newest 200 would
  // let a storm of low alerts push every older critical one off the page.
  // One query per severity (the newest MAX_ALERTS of each), merged most
  // severe first, keeps the worst alerts on top whatever floods below them.
  async function loadAlerts() {
    var seq = ++loadSeq;
    var f = currentFilters();
    var severities = f.severity ? [f.severity] : SEVERITIES.slice().reverse();
    var limits = severities.map(function (sev) { return Math.min(capOf(sev), MAX_LIMIT); });
    var answers = await Promise.all(severities.map(function (sev, k) {
      return fetchJson("/api/alerts" + queryString(Object.assign({}, f, { severity: sev }), { limit: limits[k] }));
    }));
    if (seq !== loadSeq) return false;
    var list = [];
    answers.forEach(function (r, k) {
      if (!r.ok) throw new Error(errorText(r.body, r.status));
      var got = (r.body && r.body.alerts) || [];
      paging.more[severities[k]] = got.length >= limits[k];
      list = list.concat(got);
    });
    var focusedAlert = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("tr.alert") : null;
    var focusedId = focusedAlert ? focusedAlert.getAttribute("data-alert-id") : null;
    clearAlerts();
    list.forEach(function (a) { addAlert(a, false); });
    renderAlerts(); // now, so the focused row can be focused again below
    refreshRepeats();
    loaded = true;
    if (focusedId && rowsById.has(focusedId)) {
      var b = rowsById.get(focusedId).querySelector("button, summary");
      if (b) b.focus();
    }
    return true;
  }

  // "Show older": for each severity that filled its page, the next page
  // of the same query, older than its oldest row. `until` is exclusive, so
  // it is that row's millisecond + 1: alerts sharing the millisecond are
  // not skipped; those already listed are dropped by id, and a page with
  // nothing new ends that severity's paging.
  async function showOlder() {
    var seq = loadSeq, mine = epoch;
    var f = currentFilters();
    var btn = $("alerts-older");
    var sevs = SEVERITIES.slice().reverse().filter(function (sev) {
      return paging.more[sev] && (!f.severity || f.severity === sev) && oldestOf(sev) !== null;
    });
    if (!sevs.length) { updateAlertCount(); return; }
    btn.disabled = true;
    try {
      var answers = await Promise.all(sevs.map(function (sev) {
        return fetchJson("/api/alerts" + queryString(Object.assign({}, f, { severity: sev }),
          { limit: MAX_ALERTS, until: oldestOf(sev) + 1 }));
      }));
      if (seq !== loadSeq || mine !== epoch) return; // new filters meanwhile: that list is gone
      var added = 0;
      answers.forEach(function (r, k) {
        var sev = sevs[k];
        if (!r.ok) throw new Error(errorText(r.body, r.status));
        var got = (r.body && r.body.alerts) || [];
        var fresh = got.filter(function (a) { return !rowsById.has(a.id); });
        var count = alerts.filter(function (a) { return sevOf(a) === sev; }).length;
        paging.cap[sev] = Math.min(count + fresh.length, MAX_LIMIT);
        fresh.forEach(function (a) { if (addAlert(a, false)) added++; });
        paging.more[sev] = fresh.length > 0 && got.length >= MAX_ALERTS && paging.cap[sev] < MAX_LIMIT;
      });
      renderAlerts();
      showAlertsError(null);
      notice(added ? added + " older alert" + (added === 1 ? "" : "s") + " added below their newer ones." : "No older alerts.");
    } catch (e) {
      if (mine === epoch) showAlertsError("Could not load older alerts: " + e.message);
    } finally {
      btn.disabled = false;
      updateAlertCount();
    }
  }

  function oldestOf(sev) {
    var t = null;
    alerts.forEach(function (a) {
      if (sevOf(a) === sev && typeof a.event_time_ms === "number" && (t === null || a.event_time_ms < t)) t = a.event_time_ms;
    });
    return t;
  }

  // How many rows are shown, and whether older ones wait on the server.
  function updatePaging(listed, folded) {
    var f = currentFilters();
    var waiting = SEVERITIES.slice().reverse().filter(function (sev) {
      return paging.more[sev] && (!f.severity || f.severity === sev);
    });
    $("alerts-older").hidden = !waiting.length;
    $("alerts-older").setAttribute("data-severities", waiting.join(" "));
    var text = !loaded ? "" : "Showing " + listed + " alert" + (listed === 1 ? "" : "s") +
      (folded ? " (and " + folded + " clear" + (folded === 1 ? "" : "s") + " folded into the alerts they clear)" : "") +
      (waiting.length ? "; older " + waiting.join(", ") + " alerts are not loaded." : loaded && listed ? "; that is all of them." : ".");
    var shown = $("alerts-shown");
    if (shown.textContent !== text) shown.textContent = text;
    shown.setAttribute("data-shown", String(listed));
  }

  var synced = false;
  var pendingLive = [];

  function notice(text) {
    var n = $("live-notice");
    n.textContent = text || "";
    n.hidden = !text;
  }

  function showAlertsError(text) {
    $("alerts-error").textContent = text || "";
    $("alerts-error").hidden = !text;
  }

  // The list comes from the server; live alerts that arrive while it loads
  // are held and merged after (duplicates are dropped by alert id).
  async function resync() {
    var mine = epoch;
    synced = false;
    try {
      if (await loadAlerts()) showAlertsError(null);
    } catch (e) {
      if (mine === epoch) showAlertsError("Could not load alerts: " + e.message);
    }
    if (mine !== epoch) return;
    synced = true;
    pendingLive.splice(0).forEach(function (a) { addAlert(a, true); });
    updateAlertCount();
  }

  /* --------------------------------------------------------- patient trend */

  // A patient's vital signs around an alert (GET /api/patients/{id}/vitals):
  // from 10 minutes before its window to 10 minutes after (15 minutes
  // either side of a per-event alert), one uPlot chart per vital, with the
  // alert's window shaded (or its moment drawn as a line).
  var TREND_MARGIN_MS = 600000;
  var TREND_EVENT_MARGIN_MS = 900000;
  var TREND_CHARTS = [
    { title: "Heart rate", unit: "bpm", series: [["heart_rate_bpm", "heart rate", "#b00020"]] },
    { title: "SpO2", unit: "%", series: [["spo2_pct", "SpO2", "#0b5cad"]] },
    { title: "Respiration rate", unit: "/min", series: [["respiration_rate", "respiration", "#146c2e"]] },
    { title: "Blood pressure", unit: "mmHg", series: [["systolic_bp_mmhg", "systolic", "#7c2d12"], ["diastolic_bp_mmhg", "diastolic", "#8a5a00"]] }
  ];
  var trend = { opener: null, charts: [], seq: 0 };

  function trendRange(a) {
    var windowed = typeof a.window_start_ms === "number" && typeof a.window_end_ms === "number";
    var since = windowed ? a.window_start_ms - TREND_MARGIN_MS : a.event_time_ms - TREND_EVENT_MARGIN_MS;
    var until = windowed ? a.window_end_ms + TREND_MARGIN_MS : a.event_time_ms + TREND_EVENT_MARGIN_MS;
    // Nothing after now exists yet; the server answers at most 24 hours.
    until = Math.max(since + 1, Math.min(until, Date.now()));
    return { since: since, until: until, windowed: windowed };
  }

  function closeTrend() {
    trend.seq++;
    trend.charts.forEach(function (c) { c.destroy(); });
    trend.charts = [];
    $("trend-charts").replaceChildren();
    if ($("trend-dialog").open) $("trend-dialog").close();
    var back = trend.opener;
    trend.opener = null;
    if (back && back.isConnected) back.focus();
  }

  async function openTrend(alertId, opener) {
    var a = alertById(alertId);
    if (!a || !hasPatient(a)) return;
    var patient = String(a.key.patient_id);
    var seq = ++trend.seq;
    trend.opener = opener;
    trend.charts.forEach(function (c) { c.destroy(); });
    trend.charts = [];
    var range = trendRange(a);
    $("trend-heading").textContent = "Patient " + patient + (a.hospital_id ? " · hospital " + a.hospital_id : "");
    $("trend-alert").replaceChildren(severityBadge(a.severity), " " + (a.rule_name || a.rule_id) + " · " +
      a.status + " · " + fullTime(a.event_time_ms) + (a.ack ? " · acknowledged by " + a.ack.by : ""));
    var cap = $("trend-window");
    cap.textContent = range.windowed
      ? "Alert window " + hms(a.window_start_ms) + "–" + hms(a.window_end_ms) + " (shaded)"
      : "Alert at " + hms(a.event_time_ms) + " (the vertical line)";
    cap.setAttribute("data-start-ms", range.windowed ? a.window_start_ms : a.event_time_ms);
    cap.setAttribute("data-end-ms", range.windowed ? a.window_end_ms : a.event_time_ms);
    var charts = $("trend-charts");
    charts.replaceChildren();
    charts.setAttribute("data-patient", patient);
    charts.setAttribute("data-since", range.since);
    charts.setAttribute("data-until", range.until);
    charts.removeAttribute("data-points");
    $("trend-explanation").replaceChildren(el("h3", { text: "Why it alerted" }), explanationList(a));
    $("trend-error").hidden = true;
    $("trend-status").textContent = "Loading vital signs " + hms(range.since) + "–" + hms(range.until) + "…";
    if (!$("trend-dialog").open) $("trend-dialog").showModal();
    $("trend-close").focus();
    var r;
    try {
      r = await fetchJson("/api/patients/" + encodeURIComponent(patient) + "/vitals?since=" + range.since + "&until=" + range.until);
    } catch (e) {
      r = { ok: false, status: 0, body: { error: { message: "could not reach the server: " + e.message } } };
    }
    if (seq !== trend.seq || !$("trend-dialog").open) return;
    if (!r.ok) {
      $("trend-status").textContent = "";
      $("trend-error").textContent = "No vital signs: " + errorText(r.body, r.status);
      $("trend-error").hidden = false;
      return;
    }
    var readings = (r.body && r.body.readings) || [];
    $("trend-status").textContent = fmtCount(readings.length) + " readings from " + fullTime(range.since) + " to " +
      fullTime(range.until) + (r.body.truncated ? " — cut short at the server's limit; the latest are missing" : "") + ".";
    drawTrend(readings, range, a);
  }

  function drawTrend(readings, range, a) {
    var box = $("trend-charts");
    var xs = readings.map(function (x) { return x.event_time_ms; });
    var mark = range.windowed ? [a.window_start_ms, a.window_end_ms] : [a.event_time_ms, a.event_time_ms];
    // The window as a band behind the lines (a 2-pixel line for a moment).
    var band = {
      drawClear: [function (u) {
        var x0 = u.valToPos(mark[0], "x", true), x1 = u.valToPos(mark[1], "x", true);
        var ctx = u.ctx;
        ctx.save();
        ctx.fillStyle = range.windowed ? "rgba(245, 158, 11, 0.22)" : "rgba(176, 0, 32, 0.8)";
        var left = Math.max(u.bbox.left, Math.min(x0, x1));
        var w = range.windowed ? Math.min(u.bbox.left + u.bbox.width, Math.max(x0, x1)) - left : 2 * (window.devicePixelRatio || 1);
        if (w > 0) ctx.fillRect(left, u.bbox.top, w, u.bbox.height);
        ctx.restore();
      }]
    };
    var width = trendChartWidth();
    var sync = V.uPlot.sync("trend");
    TREND_CHARTS.forEach(function (c) {
      var fig = el("figure", { className: "trend-chart" });
      var caption = el("figcaption", { text: c.title + " (" + c.unit + ")" });
      fig.appendChild(caption);
      box.appendChild(fig);
      var data = [xs].concat(c.series.map(function (sd) {
        return readings.map(function (x) { return typeof x[sd[0]] === "number" ? x[sd[0]] : null; });
      }));
      var present = data.slice(1).reduce(function (n, col) { return n + col.filter(function (v) { return v !== null; }).length; }, 0);
      var chart = new V.uPlot({
        width: width, height: 150, ms: 1,
        cursor: { sync: { key: sync.key }, drag: { x: false, y: false } },
        scales: { x: { time: true, range: [range.since, range.until] } },
        axes: [timeAxis(), { size: 50 }],
        hooks: band,
        series: [timeSeries()].concat(c.series.map(function (sd) {
          return { label: sd[1], stroke: sd[2], width: 1.5, spanGaps: true, points: { show: readings.length < 120 } };
        }))
      }, data, fig);
      trend.charts.push(chart);
      // What the lines show, for a screen reader: the canvas has no text.
      fig.appendChild(el("p", { className: "visually-hidden", text: c.series.map(function (sd, i) {
        var vals = data[i + 1].filter(function (v) { return v !== null; });
        return vals.length
          ? sd[1] + ": " + vals.length + " readings, lowest " + fmtValue(Math.min.apply(null, vals)) + ", highest " +
            fmtValue(Math.max.apply(null, vals)) + ", last " + fmtValue(vals[vals.length - 1]) + " " + c.unit
          : sd[1] + ": no readings";
      }).join("; ") + "." }));
      fig.setAttribute("data-series", c.series.map(function (sd) { return sd[0]; }).join(" "));
      fig.setAttribute("data-points", chart.data[0].length);
      fig.setAttribute("data-values", present);
    });
    box.setAttribute("data-points", xs.length);
  }

  // Two charts a row where there is room for both.
  function trendChartWidth() {
    var w = chartWidth($("trend-charts"), 640);
    return w >= 860 ? Math.floor((w - 16) / 2) : w;
  }

  // The explanation as a list (the row's "explain", open).
  function explanationList(a) {
    var d = explanationDetails(a);
    return d.querySelector("dl");
  }

  // Charts follow the window's width (a tablet turned, a resized window).
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      trend.charts.forEach(function (c) {
        var w = trendChartWidth();
        if (c.width !== w) c.setSize({ width: w, height: 150 });
      });
      Object.keys(tuning).forEach(function (id) {
        var t = tuning[id];
        if (!t.chart) return;
        var w = chartWidth(t.chartBox, 420);
        if (t.chart.width !== w) t.chart.setSize({ width: w, height: 170 });
      });
    }, 150);
  });

  /* -------------------------------------------------------- connection */

  // "● live" only while the alert feed is open AND /readyz answers ready;
  // anything else is stale, and the rows say so.
  var conn = { feed: false, feedReason: "connecting", ready: null, readyReason: null, since: null, wasLive: false };

  function setConnection(change) {
    Object.keys(change).forEach(function (k) { conn[k] = change[k]; });
    var s = $("live-status");
    var live = conn.feed && conn.ready === true;
    var reasons = [];
    if (!conn.feed && conn.feedReason) reasons.push(conn.feedReason);
    if (conn.ready === false && conn.readyReason) reasons.push(conn.readyReason);
    if (live) {
      conn.wasLive = true;
      conn.since = null;
      s.textContent = "● live";
      s.className = "live";
      s.setAttribute("data-state", "live");
    } else if (!conn.wasLive && conn.ready !== false) {
      s.textContent = "connecting…";
      s.className = "";
      s.setAttribute("data-state", "connecting");
    } else {
      if (conn.since === null) conn.since = Date.now();
      s.textContent = "○ stale — " + (reasons.join(", ") || "not connected");
      s.className = "down";
      s.setAttribute("data-state", "stale");
    }
    var stale = s.getAttribute("data-state") === "stale";
    $("alerts-table").classList.toggle("stale", stale);
    $("alerts-table").setAttribute("aria-describedby", stale ? "stale-banner" : "alerts-count");
    var banner = $("stale-banner");
    banner.hidden = !stale;
    if (stale) {
      banner.textContent = "Not connected since " + hms(conn.since) + " (" + reasons.join(", ") +
        "): the alerts below may be out of date.";
    }
  }

  /* ------------------------------------------------------ live feed */

  // EventSource cannot send an Authorization header, so the feed is a
  // fetch() whose body is read as it arrives and parsed here.

  // A text/event-stream parser (the WHATWG rules for the fields we use).
  // push() takes decoded text split anywhere, even mid-line or between
  // "\r" and "\n"; onEvent({type, data, id}) runs at the blank line that
  // ends an event with data. Comments (the server's keep-alives) and
  // `retry:` are skipped: reconnecting has its own backoff.
  function sseParser(onEvent) {
    var buffer = "", type = "", data = [], lastId = "";
    function line(text) {
      if (text === "") {
        if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id: lastId });
        type = "";
        data = [];
        return;
      }
      if (text.charAt(0) === ":") return;
      var colon = text.indexOf(":");
      var name = colon < 0 ? text : text.slice(0, colon);
      var value = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
      if (name === "event") type = value;
      else if (name === "data") data.push(value);
      else if (name === "id" && value.indexOf("\u0000") < 0) lastId = value;
    }
    return {
      push: function (text) {
        buffer += text;
        var eol = /\r\n|\r|\n/g, start = 0, m;
        while ((m = eol.exec(buffer))) {
          // A "\r" that ends the chunk may be half of "\r\n": wait for more.
          if (m[0] === "\r" && m.index === buffer.length - 1) break;
          line(buffer.slice(start, m.index));
          start = eol.lastIndex;
        }
        buffer = buffer.slice(start);
      }
    };
  }

  var FEED_RETRY_MIN_MS = 1000;
  var FEED_RETRY_MAX_MS = 30000;
  var feed = null;            // the feed being read: { ctl: AbortController }
  var reconnectTimer = null;
  var retryMs = FEED_RETRY_MIN_MS;

  function stopLive() {
    if (reconnectTimer) { clearTimeout(reconnectTimer); reconnectTimer = null; }
    if (feed) { feed.ctl.abort(); feed = null; }
  }

  // A new list and a new feed (new filters, or just signed in).
  function connectLive() {
    stopLive();
    retryMs = FEED_RETRY_MIN_MS;
    openFeed(false);
    resync();
  }

  // Doubling waits between attempts, so a server that is down or
  // restarting is not hammered by every open page.
  function scheduleReconnect() {
    if (reconnectTimer || !me) return;
    var wait = retryMs;
    retryMs = Math.min(retryMs * 2, FEED_RETRY_MAX_MS);
    reconnectTimer = setTimeout(function () { reconnectTimer = null; openFeed(true); }, wait);
  }

  async function openFeed(reconnecting) {
    if (!window.ReadableStream || !window.TextDecoder || !window.AbortController) {
      setConnection({ feed: false, feedReason: "live feed not supported by this browser" });
      return;
    }
    var mine = { ctl: new AbortController() };
    feed = mine;
    var reason;
    try {
      // The feed takes the same filters as the list (its `limit` is ignored).
      var resp = await fetch("/api/alerts/stream" + queryString(currentFilters()), {
        headers: withCredential({ "Accept": "text/event-stream" }),
        signal: mine.ctl.signal,
        cache: "no-store"
      });
      if (feed !== mine) return;
      if (resp.ok && resp.body) {
        feedOpened(reconnecting);
        await readFeed(resp.body, mine);
        reason = "alert feed closed";
      } else {
        reason = await feedRefused(resp, mine);
        if (reason === null) return;
      }
    } catch (e) {
      reason = "alert feed lost";
    }
    if (feed !== mine) return; // closed by us (new filters, signed out)
    feed = null;
    setConnection({ feed: false, feedReason: reason + ", reconnecting" });
    refreshReadiness();
    scheduleReconnect();
  }

  function feedOpened(reconnecting) {
    retryMs = FEED_RETRY_MIN_MS;
    setConnection({ feed: true, feedReason: null });
    // After a reconnect, fill whatever was missed while disconnected.
    if (reconnecting) resync();
    refreshReadiness();
  }

  async function readFeed(body, mine) {
    var reader = body.getReader();
    var decoder = new TextDecoder();
    var parser = sseParser(feedEvent);
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done || feed !== mine) return;
      parser.push(decoder.decode(chunk.value, { stream: true }));
    }
  }

  // A feed answered with an error: 401 signs out and 403 will not change
  // by retrying (both end the feed: null); anything else is retried.
  async function feedRefused(resp, mine) {
    var body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON */ }
    var message = errorText(body, resp.status);
    if (resp.status === 401) { credentialRejected(message); return null; }
    if (feed !== mine) return null;
    if (resp.status === 403) {
      feed = null;
      showAlertsError("No live feed: " + message);
      setConnection({ feed: false, feedReason: "alert feed refused" });
      return null;
    }
    return "alert feed refused (" + message + ")";
  }

  function feedEvent(ev) {
    if (ev.type === "alert") {
      var a;
      try { a = JSON.parse(ev.data); } catch (e) { return; }
      // A new alert is unacknowledged: never one for the acknowledged view.
      if (currentFilters().acknowledged === "true" && !a.ack) return;
      if (!synced) { pendingLive.push(a); return; }
      if (addAlert(a, true)) scheduleCount();
    } else if (ev.type === "lagged") {
      var missed = "some";
      try { missed = JSON.parse(ev.data).missed; } catch (e) { /* keep "some" */ }
      notice("Live feed fell behind: " + missed + " alerts were skipped; reloading the list.");
      resync();
    }
  }

  var countScheduled = false;
  function scheduleCount() {
    if (countScheduled) return;
    countScheduled = true;
    requestAnimationFrame(function () { countScheduled = false; updateAlertCount(); });
  }

  // New filters: a new query and a new feed, both filtered by the server.
  function applyFilters() {
    loaded = false;
    paging = { cap: {}, more: {} };
    clearAlerts();
    pendingLive = [];
    updateAlertCount();
    connectLive();
  }

  function updateRuleFilter(rules) {
    var select = $("filter-rule");
    var current = select.value;
    var opts = [el("option", { value: "", text: "any" })];
    rules.forEach(function (r) { opts.push(el("option", { value: r.id, text: r.name })); });
    // Keep a chosen rule even if it has gone from the list.
    if (current && !rules.some(function (r) { return r.id === current; })) {
      opts.push(el("option", { value: current, text: current }));
    }
    var same = select.options.length === opts.length && opts.every(function (o, i) {
      return select.options[i].value === o.value && select.options[i].textContent === o.textContent;
    });
    if (same) return; // do not disturb someone using the menu
    select.replaceChildren.apply(select, opts);
    select.value = current;
  }

  /* ------------------------------------------------------- acknowledge */

  var ackTarget = null; // { id, opener }

  // With authentication on, the server records the signed-in caller as
  // `by` (and ignores one sent); with it off, the page asks for a name.
  function serverNamesAcker() { return !!(me && me.auth_required); }

  function openAck(id, opener) {
    var a = alertById(id);
    if (!a) return;
    ackTarget = { id: id, opener: opener };
    $("ack-summary").textContent = a.severity + " · " + (a.rule_name || a.rule_id) + " · " +
      patientOf(a) + " · " + fullTime(a.event_time_ms);
    $("ack-error").hidden = true;
    $("ack-error").textContent = "";
    $("ack-note").value = "";
    var named = serverNamesAcker();
    $("ack-by-field").hidden = named;
    $("ack-as").hidden = !named;
    $("ack-as").textContent = named ? "as " + me.name : "";
    if (!named) {
      try { $("ack-by").value = localStorage.getItem("wardwatch.ackBy") || ""; } catch (e) { /* private mode */ }
    }
    $("ack-submit").disabled = false;
    $("ack-dialog").showModal();
    (named || $("ack-by").value ? $("ack-note") : $("ack-by")).focus();
  }

  function closeAck() {
    var t = ackTarget;
    ackTarget = null;
    if ($("ack-dialog").open) $("ack-dialog").close();
    if (!t) return;
    // The row may have been redrawn meanwhile: focus its new copy.
    var back = t.opener && t.opener.isConnected ? t.opener
      : rowsById.has(t.id) ? rowsById.get(t.id).querySelector(".ack-info, .ack-button") : null;
    if (back) back.focus();
  }

  function ackError(text) {
    $("ack-error").textContent = text;
    $("ack-error").hidden = false;
  }

  function showAck(id, ack) {
    var i = -1;
    alerts.forEach(function (x, j) { if (x.id === id) i = j; });
    if (i < 0) return;
    alerts[i] = Object.assign({}, alerts[i], { ack: ack });
    var old = rowsById.get(id);
    var row = alertRow(alerts[i], false);
    if (old) old.replaceWith(row);
    rowsById.set(id, row);
    clearedMarks.delete(id); // the new row is marked at the next redraw
    scheduleRender();
    if (ackTarget) ackTarget.opener = row.querySelector(".ack-info");
  }

  // Acknowledged: in the unacknowledged worklist the row leaves (it is in
  // the acknowledged view now); focus goes to the next row's button.
  function ackDone(id, ack) {
    if (currentFilters().acknowledged !== "false") { showAck(id, ack); return; }
    var row = rowsById.get(id);
    var next = null;
    if (row) {
      for (var n = row.nextElementSibling; n && !next; n = n.nextElementSibling) {
        if (n.classList.contains("alert")) next = n.querySelector(".ack-button");
      }
    }
    var a = alertById(id);
    removeAlert(id);
    if (ackTarget) ackTarget.opener = next || $("alerts-heading");
    notice("Acknowledged " + (a ? (a.rule_name || a.rule_id) + " for " + patientOf(a) : "the alert") +
      ": it is in the acknowledged view now.");
  }

  async function submitAck(ev) {
    ev.preventDefault();
    if (!ackTarget) return;
    var id = ackTarget.id;
    var named = serverNamesAcker();
    var by = named ? me.name : $("ack-by").value.trim();
    var note = $("ack-note").value.trim();
    if (!by) { ackError("Enter your name: the acknowledgement records who saw the alert."); $("ack-by").focus(); return; }
    $("ack-submit").disabled = true;
    var body = named ? { note: note || null } : { by: by, note: note || null };
    try {
      var r = await fetchJson("/api/alerts/" + encodeURIComponent(id) + "/ack", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(body)
      });
      if (r.status === 401) return; // signed out; the sign-in panel says why
      if (r.status === 409) {
        // Someone else was first: say who (the server's message), and
        // reload the list so the row shows their acknowledgement.
        ackError("Already acknowledged: " + errorText(r.body, r.status));
        resync();
        return;
      }
      if (!r.ok) throw new Error(errorText(r.body, r.status));
      if (!named) {
        try { localStorage.setItem("wardwatch.ackBy", by); } catch (e) { /* private mode */ }
      }
      ackDone(id, (r.body && r.body.ack) || { alert_id: id, by: by, note: note || null, at_ms: Date.now() });
      updateAlertCount();
      closeAck();
    } catch (e) {
      ackError("Not acknowledged: " + e.message);
      $("ack-submit").disabled = false;
    }
  }

  /* --------------------------------------------------------- signing in */

  var CREDENTIAL_KEY = "wardwatch.credential";

  // Kept for this tab only (sessionStorage, not localStorage): a shared
  // ward computer forgets it when the tab closes.
  function keepCredential(c) {
    credential = c;
    try {
      if (c) sessionStorage.setItem(CREDENTIAL_KEY, c); else sessionStorage.removeItem(CREDENTIAL_KEY);
    } catch (e) { /* storage off: kept in memory until reload */ }
  }

  function storedCredential() {
    try { return sessionStorage.getItem(CREDENTIAL_KEY); } catch (e) { return null; }
  }

  // Mirrors the server's rule: admin holds every role, and any role but
  // ingest may do what a viewer does.
  function rolesAllow(roles, need) {
    return (roles || []).some(function (r) {
      return r === need || r === "admin" || (need === "viewer" && r !== "ingest");
    });
  }

  function may(need) { return !!me && rolesAllow(me.roles, need); }

  // Why a caller the server accepted still cannot use this page, or null.
  function cannotUse(who) {
    if (rolesAllow(who.roles, "viewer")) return null;
    return "“" + who.name + "” has the role " + ((who.roles || []).join(", ") || "none") +
      ": this page needs viewer, author, auditor or admin.";
  }

  function signInError(text) {
    $("sign-in-error").textContent = text || "";
    $("sign-in-error").hidden = !text;
  }

  // Signed out: only the sign-in panel, with the reason when there is one.
  function showSignIn(message) {
    $("session-checking").hidden = true;
    $("session").hidden = true;
    $("auth-off-banner").hidden = true;
    $("rules-panel").hidden = true;
    $("alerts-panel").hidden = true;
    $("ops-panel").hidden = true;
    $("history-panel").hidden = true;
    $("sign-in-panel").hidden = false;
    $("credential").value = "";
    signInError(message);
    $("provider-sign-in").hidden = !login;
    (login ? $("provider-sign-in-button") : $("credential")).focus();
  }

  // Shows what the caller's roles allow: elements marked data-needs-role
  // (or data-lacks-role, their stand-ins) here; rule and alert controls
  // as they are drawn.
  function applyRoles() {
    document.querySelectorAll("[data-needs-role]").forEach(function (node) {
      node.hidden = !may(node.getAttribute("data-needs-role"));
    });
    document.querySelectorAll("[data-lacks-role]").forEach(function (node) {
      node.hidden = may(node.getAttribute("data-lacks-role"));
    });
  }

  function showSession() {
    var off = !me.auth_required;
    $("auth-off-banner").hidden = !off;
    $("session").hidden = off; // no one to sign out when everyone is anonymous
    var scope = me.hospitals ? " · hospitals " + me.hospitals.join(", ") : "";
    $("session-who").textContent = "Signed in as " + me.name + " (" + me.roles.join(", ") + ")" + scope;
  }

  function signedIn(who) {
    me = who;
    epoch++;
    $("session-checking").hidden = true;
    $("sign-in-panel").hidden = true;
    signInError(null);
    showSession();
    applyRoles();
    $("rules-panel").hidden = false;
    $("alerts-panel").hidden = false;
    refreshRules();
    refreshOps();
    applyFilters();
  }

  // Forgets the caller and everything loaded for them.
  function signOut(message) {
    keepCredential(null);
    me = null;
    epoch++;
    loadSeq++;
    stopLive();
    if ($("ack-dialog").open) $("ack-dialog").close();
    ackTarget = null;
    if ($("deactivate-dialog").open) $("deactivate-dialog").close();
    deactivateTarget = null;
    closeTrend();
    Object.keys(tuning).forEach(function (id) { if (tuning[id].chart) tuning[id].chart.destroy(); delete tuning[id]; });
    stopValidating();
    $("audit-head").replaceChildren();
    $("audit-rows").replaceChildren();
    $("audit-status").textContent = "";
    auditError(null);
    clearAlerts();
    pendingLive = [];
    loaded = false;
    ruleErrors = {};
    openSql = {};
    if (editing) endEdit();
    historySql = null;
    $("history-csv").disabled = true;
    $("history-head").replaceChildren();
    $("history-rows").replaceChildren();
    $("history-status").textContent = "";
    $("rules").replaceChildren();
    $("rules-count").textContent = "";
    updateRuleFilter([]);
    showAlertsError(null);
    notice(null);
    conn.wasLive = false;
    setConnection({ feed: false, feedReason: "connecting", since: null });
    showSignIn(message);
  }

  // A 401 while signed in: the credential expired or was revoked.
  function credentialRejected(message) {
    if (!me) return; // already signed out (several requests fail at once)
    signOut("Signed out: " + message);
  }

  // On load: the answer of the identity provider when we come back from
  // it, else whoever the kept credential (if any) makes us, or the sign-in
  // panel. Retried while the server cannot be reached.
  async function boot() {
    var kept = storedCredential();
    var r;
    try {
      // Public: whether to offer the identity provider's sign-in.
      var ui = await requestJson("/api/ui-config", undefined, null);
      login = ui.ok && ui.body && ui.body.login ? ui.body.login : null;
      if (login) $("provider-sign-in-button").textContent = "Sign in with " + login.name;
    } catch (e) {
      $("session-checking").textContent = "Cannot reach the server to check who you are; retrying…";
      setTimeout(boot, POLL_MS);
      return;
    }
    var answer = providerAnswer();
    if (answer) { finishProviderSignIn(answer); return; }
    try {
      r = await requestJson("/api/whoami", undefined, kept);
    } catch (e) {
      $("session-checking").textContent = "Cannot reach the server to check who you are; retrying…";
      setTimeout(boot, POLL_MS);
      return;
    }
    var refusal = r.ok ? cannotUse(r.body) : errorText(r.body, r.status);
    if (!refusal) {
      credential = kept;
      signedIn(r.body);
      return;
    }
    keepCredential(null);
    // The first visit needs no error: only a kept credential that stopped working does.
    showSignIn(kept || r.ok || r.status !== 401 ? refusal : null);
  }

  async function submitSignIn(ev) {
    ev.preventDefault();
    // Tolerate a pasted "Bearer …" header value.
    var c = $("credential").value.trim().replace(/^bearer\s+/i, "");
    if (!c) { signInError("Paste an API key or access token first."); $("credential").focus(); return; }
    $("sign-in-submit").disabled = true;
    try {
      var r = await requestJson("/api/whoami", undefined, c);
      var refusal = r.ok ? cannotUse(r.body) : errorText(r.body, r.status);
      if (refusal) { signInError(refusal); $("credential").focus(); return; }
      keepCredential(c);
      signedIn(r.body);
    } catch (e) {
      signInError("Could not reach the server: " + e.message);
    } finally {
      $("sign-in-submit").disabled = false;
    }
  }

  /* ------------------------------------ signing in at the identity provider */

  // The authorization code flow with PKCE (RFC 7636, S256) as a public
  // client: the provider signs the person in and sends them back here with
  // a code; only this tab, holding the verifier, can turn it into a token.
  var LOGIN_KEY = "wardwatch.login"; // {state, verifier} while away at the provider
  var login = null; // GET /api/ui-config's `login`, or null: paste only

  function base64url(bytes) {
    var bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function randomToken(nbytes) {
    var b = new Uint8Array(nbytes);
    crypto.getRandomValues(b);
    return base64url(b);
  }

  // The provider sends people back to the page itself.
  function redirectUri() { return location.origin + "/"; }

  async function startProviderSignIn() {
    if (!login) return;
    signInError(null);
    // Web Crypto's digest exists only in a secure context (https, loopback).
    if (!window.crypto || !crypto.subtle) {
      signInError("Signing in with " + login.name + " needs this page over https.");
      return;
    }
    var btn = $("provider-sign-in-button");
    btn.disabled = true;
    try {
      var verifier = randomToken(32); // 43 characters, 256 bits
      var state = randomToken(16);
      var digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
      sessionStorage.setItem(LOGIN_KEY, JSON.stringify({ state: state, verifier: verifier }));
      var q = new URLSearchParams({
        response_type: "code",
        client_id: login.client_id,
        redirect_uri: redirectUri(),
        scope: login.scope,
        state: state,
        code_challenge: base64url(new Uint8Array(digest)),
        code_challenge_method: "S256"
      });
      var ep = login.authorization_endpoint;
      location.assign(ep + (ep.indexOf("?") < 0 ? "?" : "&") + q.toString());
    } catch (e) {
      // sessionStorage off, most likely: the verifier could not be kept.
      signInError("Could not start signing in with " + login.name + ": " + e.message);
      btn.disabled = false;
    }
  }

  // The provider's answer in the address (?code=…&state=… or ?error=…),
  // or null. The page has no query of its own.
  function providerAnswer() {
    var q = new URLSearchParams(location.search);
    if (!q.has("code") && !q.has("error")) return null;
    return {
      code: q.get("code"), state: q.get("state"),
      error: q.get("error"), description: q.get("error_description")
    };
  }

  function providerError(error, description) {
    return "Not signed in with " + login.name + ": " + (description ? description + " (" + error + ")" : error);
  }

  async function finishProviderSignIn(answer) {
    // A code in the address must not be used twice, nor be left for a
    // bookmark or a reload.
    history.replaceState(null, "", location.pathname + location.hash);
    var pending = null;
    try { pending = JSON.parse(sessionStorage.getItem(LOGIN_KEY) || "null"); } catch (e) { /* none */ }
    keepCredential(null);
    $("session-checking").textContent = "Signing in…";
    if (!login) {
      showSignIn("Not signed in: this server no longer signs people in through an identity provider.");
      return;
    }
    // Only the answer to this tab's own request: anything else may be
    // someone else's code planted in a link (login CSRF).
    if (!pending || !answer.state || answer.state !== pending.state) {
      showSignIn("Not signed in: the answer from " + login.name +
        " does not match a sign-in started in this tab. Sign in again.");
      return;
    }
    try { sessionStorage.removeItem(LOGIN_KEY); } catch (e) { /* gone with the tab */ }
    if (answer.error) { showSignIn(providerError(answer.error, answer.description)); return; }
    if (!answer.code) { showSignIn(providerError("invalid_request", "no code in its answer")); return; }
    var token;
    try {
      var resp = await fetch(login.token_endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json" },
        body: new URLSearchParams({
          grant_type: "authorization_code",
          code: answer.code,
          redirect_uri: redirectUri(),
          client_id: login.client_id,
          code_verifier: pending.verifier
        }),
        credentials: "omit",
        cache: "no-store"
      });
      var body = null;
      try { body = await resp.json(); } catch (e) { /* not JSON */ }
      if (!resp.ok || !body || typeof body.access_token !== "string" || !body.access_token) {
        var err = body && typeof body.error === "string" ? body.error : null;
        showSignIn(providerError(err || "HTTP " + resp.status, err ? body.error_description : "no access token in its answer"));
        return;
      }
      token = body.access_token;
    } catch (e) {
      showSignIn("Not signed in: could not reach " + login.name + " for the token (" + e.message + ").");
      return;
    }
    // The same check as a pasted token: this server must accept it.
    var r;
    try {
      r = await requestJson("/api/whoami", undefined, token);
    } catch (e) {
      showSignIn("Signed in with " + login.name + ", but this server cannot be reached: " + e.message);
      return;
    }
    var refusal = r.ok ? cannotUse(r.body) : errorText(r.body, r.status);
    if (refusal) { showSignIn("Not signed in: " + refusal); return; }
    keepCredential(token);
    signedIn(r.body);
  }

  /* ------------------------------------------------------------------ boot */

  // Only while signed in: nothing is asked for on behalf of no one.
  function whenSignedIn(fn) { return function () { if (me) fn(); }; }

  $("sign-in-form").addEventListener("submit", submitSignIn);
  $("provider-sign-in-button").addEventListener("click", startProviderSignIn);
  // Back from the provider without signing in (the page restored as it was left).
  window.addEventListener("pageshow", function () { $("provider-sign-in-button").disabled = false; });
  $("sign-out").addEventListener("click", function () { signOut(null); });
  $("rule-form").addEventListener("submit", submitRule);
  $("rule-validate").addEventListener("click", function () { validateRule(false); });
  $("rule-sql").addEventListener("input", ruleSqlChanged);
  $("rule-description").addEventListener("input", function () { descriptionCount(); $("rule-description").removeAttribute("aria-invalid"); });
  ["rule-lateness", "rule-esc-column", "rule-esc-above", "rule-esc-below", "rule-name", "rule-cooldown"].forEach(function (id) {
    $(id).addEventListener("input", function () { $(id).removeAttribute("aria-invalid"); });
  });
  if (V) createSqlEditor();
  $("rule-backtest-button").addEventListener("click", backtestRule);
  $("history-form").addEventListener("submit", runHistory);
  $("history-csv").addEventListener("click", exportHistoryCsv);
  $("saved-query-form").addEventListener("submit", saveQuery);
  $("audit-form").addEventListener("submit", showAudit);
  $("audit-view").addEventListener("change", auditViewChanged);
  $("audit-action").addEventListener("change", function () { showAudit(); });
  $("audit-last-hour").addEventListener("click", function () { setAuditRange(3600000); showAudit(); });
  $("audit-last-day").addEventListener("click", function () { setAuditRange(24 * 3600000); showAudit(); });
  setAuditRange(3600000);
  renderSavedQueries();
  $("rule-cancel-edit").addEventListener("click", function () {
    endEdit();
    $("rule-status").textContent = "";
  });
  $("alerts-older").addEventListener("click", showOlder);
  $("alert-filters").addEventListener("submit", function (ev) { ev.preventDefault(); applyFilters(); });
  $("filter-severity").addEventListener("change", applyFilters);
  $("filter-rule").addEventListener("change", applyFilters);
  $("show-suppressed").addEventListener("change", applyFilters);
  $("filter-ack").addEventListener("change", function () { notice(null); applyFilters(); });
  $("sound-critical").addEventListener("change", soundToggled);
  var patientTimer = null;
  $("filter-patient").addEventListener("input", function () {
    clearTimeout(patientTimer);
    patientTimer = setTimeout(applyFilters, 400);
  });
  $("ack-form").addEventListener("submit", submitAck);
  $("trend-close").addEventListener("click", closeTrend);
  $("trend-dialog").addEventListener("cancel", function (ev) { ev.preventDefault(); closeTrend(); });
  $("deactivate-form").addEventListener("submit", submitDeactivate);
  $("deactivate-cancel").addEventListener("click", closeDeactivate);
  $("deactivate-dialog").addEventListener("cancel", function (ev) { ev.preventDefault(); closeDeactivate(); });
  $("deactivate-reason").addEventListener("input", function () {
    deactivateCount();
    $("deactivate-reason").removeAttribute("aria-invalid");
  });
  $("ack-cancel").addEventListener("click", closeAck);
  $("ack-dialog").addEventListener("cancel", function (ev) { ev.preventDefault(); closeAck(); });

  // The feed's parser, for tests/browser (it cannot reach into this closure).
  window.wardwatch = Object.freeze({ sseParser: sseParser });

  refreshReadiness();
  refreshCounters();
  boot();
  setInterval(refreshReadiness, POLL_MS);
  setInterval(refreshCounters, POLL_MS);
  setInterval(whenSignedIn(refreshRules), POLL_MS);
  setInterval(whenSignedIn(refreshRepeats), POLL_MS);
  setInterval(whenSignedIn(refreshAcked), POLL_MS);
  setInterval(whenSignedIn(refreshOps), POLL_MS);
})();
