#!/usr/bin/env python3
"""Browser tests of the web UI: the real server (`wardwatch serve --demo`)
driven by Debian's Chromium through Playwright.

Run: python3 tests/browser/test_ui.py
Needs: /usr/bin/chromium (apt-get install chromium), `pip install playwright`
(never `playwright install`: the system browser is used), and the server
binary, built by `cargo build -p wardwatch` (WARDWATCH_BIN overrides the path).
WARDWATCH_SCREENSHOTS=DIR saves screenshots at 1400x1000 and 800x1100.

Two servers, one after the other, each with its own port and data dir.

`serve --demo` (authentication off, as on loopback): the checks run in order
as one nurse's session would: the worklist (fired only, server-filtered,
severity then time), the "authentication is off" banner, acknowledging an
alert (recorded on the server and shown on the row), a rule the engine
suspends, contrast, and finally the server is killed and the connection
indicator must turn stale.

`serve --demo --auth`, with a viewer and an admin key made by `wardwatch
api-key create` first: the sign-in panel and nothing else before signing in,
a wrong key refused, the viewer's worklist fed live over the fetch() stream,
acknowledging as the key's name (and a 409 when someone was first), no rule
controls for a viewer but for an admin, a 403 shown where the action was,
and a revoked key signing the page out.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/wardwatch/target")
BIN = os.environ.get("WARDWATCH_BIN") or os.path.join(TARGET, "debug", "wardwatch")
CHROMIUM = os.environ.get("WARDWATCH_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("WARDWATCH_SCREENSHOTS")

# Budgets this test exercises, set here rather than relying on defaults: a
# rule firing on every reading of 300 demo patients passes 500 alerts within
# two seconds; `by` longer than 40 characters is refused by the server.
CONFIG = """
[limits]
max_alerts_per_rule_minute = 500
max_ack_by_chars = 40
"""
SEV_RANK = {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, fn, timeout=15.0, interval=0.1):
    """Polls fn until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # a server still starting, a stale element
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def make_key(workdir, name, *roles):
    """An API key made by the CLI in the data dir of a server not started yet."""
    args = [BIN, "api-key", "create", "--data-dir", os.path.join(workdir, "data"), "--name", name]
    for role in roles:
        args += ["--role", role]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    key = out.stdout.strip()
    assert out.returncode == 0 and key.startswith("wwk_"), f"api-key create: {out}"
    return key


class Server:
    """`serve --demo` in `workdir`; with `auth`, `serve --demo --auth`, and
    this harness's own requests carry `key`."""

    def __init__(self, workdir, auth=False, key=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key
        config = os.path.join(workdir, "wardwatch.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        self.log = open(os.path.join(workdir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--demo", "--config", config,
             "--listen", f"127.0.0.1:{self.port}", "--data-dir", os.path.join(workdir, "data")]
            + (["--auth"] if auth else []),
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until("/readyz to say ready", lambda: self.alive() and self.get("/readyz").get("ready"), 30)

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}; see {self.log.name}")
        return True

    def request(self, method, path, body=None, key=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if key or self.key:
            headers["Authorization"] = f"Bearer {key or self.key}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path, key=None):
        status, body = self.request("GET", path, key=key)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def ingest(self, *readings):
        """POSTs vital-sign readings as NDJSON; the server must accept them all."""
        body = "".join(json.dumps(r) + "\n" for r in readings).encode()
        headers = {"Content-Type": "application/x-ndjson"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.base + "/api/ingest", data=body, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202, resp.status
            answer = json.loads(resp.read())
        assert answer.get("accepted") == len(readings), answer

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
            self.proc.wait(10)
        self.log.close()


def rows(page):
    """The worklist as the page shows it."""
    return page.eval_on_selector_all("#alerts tr.alert", """trs => trs.map(tr => ({
        id: tr.dataset.alertId, status: tr.dataset.status, severity: tr.dataset.severity,
        time: Number(tr.dataset.eventTime), ruleId: tr.dataset.ruleId, patient: tr.dataset.patient,
        acked: tr.dataset.acked === "true" }))""")


def assert_worklist_order(rs):
    keys = [(SEV_RANK.get(r["severity"], -1), r["time"]) for r in rs]
    for a, b, ra, rb in zip(keys, keys[1:], rs, rs[1:]):
        assert a >= b, f"rows out of order (severity, then newest): {ra} before {rb}"


def check_worklist(page, server):
    # The demo's cooldowns turn most repeats into suppressed alerts; both
    # kinds must exist for "fired only" to mean anything.
    wait_until("fired and suppressed alerts on the server", lambda:
               server.get("/api/alerts?status=fired&limit=1")["alerts"]
               and server.get("/api/alerts?status=suppressed&limit=1")["alerts"], 30)
    fired_before = len(server.get("/api/alerts?status=fired&limit=200")["alerts"])
    page.goto(server.base + "/")
    wait_until("the live indicator", lambda: page.get_attribute("#live-status", "data-state") == "live")
    assert not page.is_checked("#show-suppressed"), "suppressed alerts shown by default"
    rs = wait_until("alert rows", lambda: rows(page))
    assert all(r["status"] == "fired" for r in rs), f"non-fired rows by default: {rs}"
    # The page asks the server for fired alerts, so it shows every fired one
    # (up to its 200), not the fired few among the newest of all statuses.
    assert len(rs) >= fired_before, f"{len(rs)} rows shown, {fired_before} fired alerts on the server"
    assert_worklist_order(rs)

    # Suppressed repeats are folded into the fired alert they repeat.
    counts = {}
    for a in server.get("/api/alerts?status=suppressed&limit=2000")["alerts"]:
        by = a["explanation"].get("suppressed_by")
        if by:
            counts[by] = counts.get(by, 0) + 1
    shown = {r["id"] for r in rows(page)}
    folded = {i: n for i, n in counts.items() if i in shown}
    assert folded, f"no fired row with suppressed repeats (repeats of {list(counts)[:5]})"
    def repeats_shown():
        for i, n in folded.items():
            text = page.text_content(f"#alert-{i} .repeats") or ""
            m = re.fullmatch(r"\+(\d+) repeats?", text.strip())
            if not (m and int(m.group(1)) >= n and page.is_visible(f"#alert-{i} .repeats")):
                return False
        return True
    wait_until(f"repeat counts on {len(folded)} fired rows", repeats_shown, 12)
    print(f"  repeats: {sum(folded.values())} suppressed repeats folded into {len(folded)} fired rows")

    page.check("#show-suppressed")
    rs = wait_until("a suppressed row", lambda: [r for r in rows(page) if r["status"] == "suppressed"] and rows(page))
    assert_worklist_order(rs)
    page.uncheck("#show-suppressed")
    rs = wait_until("fired rows only again", lambda: (lambda rs: rs and all(r["status"] == "fired" for r in rs) and rs)(rows(page)))

    # A severity filter is answered by the server: the page shows at least
    # what the server had before the filter was chosen.
    sev = rs[0]["severity"]
    on_server = server.get(f"/api/alerts?status=fired&severity={sev}&limit=200")["alerts"]
    page.select_option("#filter-severity", sev)
    def filtered():
        rs = rows(page)
        return (len(rs) >= len(on_server) and all(r["severity"] == sev and r["status"] == "fired" for r in rs)
                and rs)
    rs = wait_until(f"the {len(on_server)} {sev} rows", filtered)
    page.select_option("#filter-severity", "")
    rs = wait_until("all severities again", lambda: rows(page))

    # So is a patient filter (with suppressed repeats, which the demo has
    # for most patients that alert).
    patient = next(r["patient"] for r in rs if r["patient"].startswith("P"))
    page.check("#show-suppressed")
    on_server = server.get(f"/api/alerts?patient={patient}&limit=200")["alerts"]
    page.fill("#filter-patient", patient)
    prs = wait_until(f"the {len(on_server)} rows of {patient}", lambda: (lambda rs: len(rs) >= len(on_server)
                     and all(r["patient"] == patient for r in rs) and rs)(rows(page)))
    page.fill("#filter-patient", "")
    page.uncheck("#show-suppressed")
    wait_until("fired rows of every patient", lambda: (lambda rs: rs and all(r["status"] == "fired" for r in rs)
               and len({r["patient"] for r in rs}) > 1)(rows(page)))
    print(f"  patient filter: {len(prs)} alerts of {patient}"
          f" ({sum(r['status'] == 'suppressed' for r in prs)} suppressed)")
    print(f"  worklist: {len(rs)} {sev} rows; fired only by default; severity then time")


def check_acknowledge(page, server):
    target = wait_until("an unacknowledged row", lambda: [r for r in rows(page) if not r["acked"]])[0]
    row = f'#alert-{target["id"]}'
    page.click(f"{row} button.ack-button")
    assert page.is_visible("#ack-dialog"), "no acknowledge dialog"

    # A refusal by the server is shown in the dialog, not swallowed.
    page.fill("#ack-by", "x" * 41)
    page.click("#ack-submit")
    page.wait_for_selector("#ack-error:not([hidden])")
    err = page.text_content("#ack-error")
    assert "limit is 40" in err, f"server's refusal not shown: {err!r}"
    assert page.is_visible("#ack-dialog")

    name = f"Nurse Playwright {os.getpid()}"
    page.fill("#ack-by", name)
    page.fill("#ack-note", "seen at the bedside")
    page.click("#ack-submit")
    page.wait_for_selector("#ack-dialog", state="hidden")
    page.wait_for_selector(f"{row} .ack-info")
    shown = page.text_content(f"{row} .ack-info")
    assert name in shown and "seen at the bedside" in shown, f"row shows {shown!r}"
    assert page.get_attribute(row, "data-acked") == "true"

    # Recorded on the server, by the name typed.
    alerts = server.get(f"/api/alerts?rule={target['ruleId']}&limit=10000")["alerts"]
    alert = next((a for a in alerts if a["id"] == target["id"]), None)
    assert alert is not None, f"alert {target['id']} not listed by the server"
    assert alert.get("ack", {}).get("by") == name, f"server recorded {alert.get('ack')}"
    assert alert["ack"].get("note") == "seen at the bedside", alert["ack"]

    # After a reload the row shows it again, from the server's list.
    page.reload()
    page.wait_for_selector(f"{row} .ack-info", timeout=10000)
    assert name in page.text_content(f"{row} .ack-info")
    wait_until("the live indicator after reload", lambda: page.get_attribute("#live-status", "data-state") == "live")
    print(f"  acknowledge: {target['id']} by {name!r} recorded and shown")


def critical_reading(patient):
    """A reading the demo rule "Critical SpO2 reading" (spo2_pct < 85)
    turns into a critical alert at once, for a patient of the test's own."""
    return {"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": int(time.time() * 1000),
            "spo2_pct": 80.0, "heart_rate_bpm": 70, "source_device": "BEDSIDE", "sequence_number": 1}


def check_rule_states(page, server):
    # A critical alert of our own, before the storm: a reading under the demo
    # rule "Critical SpO2 reading" (spo2_pct < 85) for a patient of our own.
    server.ingest(critical_reading("PW-CRIT"))
    critical = wait_until("the critical alert for PW-CRIT", lambda: server.get(
        "/api/alerts?patient=PW-CRIT&status=fired&severity=critical&limit=1")["alerts"])[0]

    status, rule = server.request("POST", "/api/rules", {
        "name": "Storm of every reading",
        "sql": "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 0",
        "severity": "low", "cooldown_seconds": 0})
    assert status == 201, f"rule not created: {status} {rule}"
    rid = rule["id"]
    wait_until("the server to suspend the storm rule",
               lambda: server.get(f"/api/rules/{rid}")["state"] == "suspended", 30)
    art = f'#rule-{rid}'
    # The rules panel refreshes every 5 s.
    page.wait_for_selector(f'{art}[data-state="suspended"]', timeout=12000)
    assert page.text_content(f"{art} .state-tag").strip() == "suspended"
    problem = page.text_content(f"{art} .rule-problem")
    assert "budget of 500 alerts" in problem, f"suspension reason not shown: {problem!r}"
    first = page.eval_on_selector("#rules article.rule", "a => a.dataset.ruleId")
    assert first == rid, f"suspended rule not listed first (first is {first})"
    assert "1 suspended" in page.text_content("#rules-count")
    # /readyz lists it as degraded (still ready), and the header says so.
    assert "1 rules suspended" in server.get("/readyz").get("degraded", []), server.get("/readyz")
    wait_until("the header to say degraded", lambda: "1 rules suspended" in page.text_content("#readiness-detail")
               and page.text_content("#readiness-state") == "Degraded", 8)

    # The storm's 500 low alerts are newer than the critical one made above,
    # burying it below the server's newest 200; the worklist still leads with it.
    newest = {a["id"] for a in server.get("/api/alerts?status=fired&limit=200")["alerts"]}
    assert critical["id"] not in newest, "the storm did not bury the critical alert (test proves nothing)"
    page.reload()
    wait_until("rows after reload", lambda: rows(page))
    shown = [r["id"] for r in rows(page)]
    assert critical["id"] in shown, f"critical alert {critical['id']} buried by the storm is not shown"

    # No REST call can make a rule fail at run time (the server refuses SQL
    # that fails on its samples), so the failing render is checked against a
    # server answer with one rule marked failing, as the API documents it.
    def failing(route):
        body = json.loads(route.fetch().text())
        r = next(r for r in body["rules"] if r["state"] == "active")
        r["state"] = "failing"
        r["health"] = {"errors_total": 3, "last_error": "Divide by zero error", "last_error_at_ms": int(time.time() * 1000)}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))
        failing.id = r["id"]
    page.route("**/api/rules", failing)
    page.wait_for_selector('#rules article.rule[data-state="failing"]', timeout=12000)
    art = f"#rule-{failing.id}"
    assert "Divide by zero error" in page.text_content(f"{art} .rule-problem")
    assert page.text_content(f"{art} .state-tag").strip() == "failing"
    page.unroute("**/api/rules", failing)
    print(f"  rule states: {rid} shown suspended with its reason; failing shown with its error;"
          f" a critical alert older than the storm's 500 still shown")


CONTRAST_JS = """
els => {
  const lin = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
  const parse = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = rgb => 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2]);
  // The first opaque background behind an element; opacity must be 1 all the way up.
  const bg = e => {
    for (let n = e; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] === 1)) return c;
    }
    return [255, 255, 255];
  };
  const opacity = e => { let o = 1; for (let n = e; n; n = n.parentElement) o *= Number(getComputedStyle(n).opacity); return o; };
  return els.map(e => {
    const fg = lum(parse(getComputedStyle(e).color)), b = lum(bg(e));
    return { text: e.textContent.trim().slice(0, 40), cls: e.className,
             ratio: (Math.max(fg, b) + 0.05) / (Math.min(fg, b) + 0.05), bg: b, opacity: opacity(e) };
  });
}
"""


def check_contrast(page):
    page.check("#show-suppressed")
    wait_until("a suppressed row", lambda: page.query_selector("#alerts tr.status-suppressed"))
    page.evaluate("document.querySelectorAll('#alerts tr.fresh').forEach(tr => tr.classList.remove('fresh'))")
    cells = page.eval_on_selector_all("#alerts tr.status-suppressed td.alert-rule, #alerts tr.status-suppressed .status,"
                                      " #alerts tr.status-suppressed .alert-values, #alerts tr.alert td.patient,"
                                      " #alerts .ack-info, #alerts .repeats:not([hidden])", CONTRAST_JS)
    badges = page.eval_on_selector_all("#rules .badge, #alerts .badge", CONTRAST_JS)
    for c in cells + badges:
        assert c["opacity"] == 1, f"drawn translucent: {c}"
        assert c["ratio"] >= 4.5, f"contrast {c['ratio']:.2f}:1 below 4.5:1: {c}"
    by_sev = {}
    for b in badges:
        sev = re.search(r"sev-(\w+)", b["cls"]).group(1)
        by_sev[sev] = b["bg"]
    assert {"critical", "high"} <= set(by_sev), f"demo rules lack critical/high badges: {by_sev}"
    crit, high = by_sev["critical"], by_sev["high"]
    apart = (max(crit, high) + 0.05) / (min(crit, high) + 0.05)
    assert apart >= 3, f"critical and high badges differ by only {apart:.2f}:1"
    page.uncheck("#show-suppressed")
    print(f"  contrast: {len(cells)} row cells (suppressed and fired) and {len(badges)} badges >= 4.5:1; critical/high {apart:.1f}:1 apart")


def check_tablet(page, server):
    page.set_viewport_size({"width": 800, "height": 1100})
    page.wait_for_selector("#alerts tr.alert")
    page.evaluate("window.scrollTo(0, 0)")
    box = page.eval_on_selector("#alerts tr.alert", "tr => tr.getBoundingClientRect().toJSON()")
    assert 0 <= box["top"] < 1100, f"first alert row at y={box['top']} is below the fold at tablet width"
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "ui-800x1100.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "ui-1400x1000.png"))
    print(f"  tablet width: first alert row at y={box['top']:.0f} of 1100")


def check_hung(page, server):
    """A server that stops answering (SIGSTOP) keeps the feed's connection
    open: only the /readyz heartbeat can tell, and it must."""
    assert page.get_attribute("#live-status", "data-state") == "live"
    server.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        wait_until("the indicator to go stale on a hung server",
                   lambda: page.get_attribute("#live-status", "data-state") == "stale", 15)
        took = time.monotonic() - t0
        assert "server unreachable" in page.text_content("#live-status"), page.text_content("#live-status")
    finally:
        server.proc.send_signal(signal.SIGCONT)
    wait_until("live again after the server resumed",
               lambda: page.get_attribute("#live-status", "data-state") == "live", 15)
    assert page.is_hidden("#stale-banner")
    print(f"  hung server: stale after {took:.1f} s, live again once it answered")


def check_keyboard(page, server):
    """The first Tab stop skips to the alerts; the acknowledge dialog opens
    from the keyboard, and Escape closes it without recording anything."""
    page.reload()
    wait_until("rows", lambda: rows(page))
    wait_until("live", lambda: page.get_attribute("#live-status", "data-state") == "live")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#alerts-panel"
    target = next(r for r in rows(page) if not r["acked"])
    page.focus(f'#alert-{target["id"]} button.ack-button')
    page.keyboard.press("Enter")
    assert page.is_visible("#ack-dialog")
    assert page.evaluate("document.activeElement.id") in ("ack-by", "ack-note")
    page.keyboard.press("Escape")
    page.wait_for_selector("#ack-dialog", state="hidden")
    assert page.evaluate("document.activeElement.classList.contains('ack-button')"), "focus not returned to the row"
    alerts = server.get(f"/api/alerts?rule={target['ruleId']}&limit=10000")["alerts"]
    assert not next(a for a in alerts if a["id"] == target["id"]).get("ack"), "Escape recorded an acknowledgement"

    # Deactivating asks first; dismissing leaves the rule running.
    asked = []
    def dismiss(d):
        asked.append(d.message)
        d.dismiss()
    page.once("dialog", dismiss)
    rid = page.eval_on_selector('#rules article.rule[data-state="active"]', "a => a.dataset.ruleId")
    page.click(f"#deactivate-{rid}")
    wait_until("the confirmation", lambda: asked)
    time.sleep(0.3)
    assert server.get(f"/api/rules/{rid}")["active"] is True, "deactivated without confirmation"
    print(f"  keyboard: skip link first, dialog by keyboard, Escape records nothing; deactivate asks ({asked[0][:40]}…)")


def check_stale(page, server):
    assert page.get_attribute("#live-status", "data-state") == "live"
    assert page.is_hidden("#stale-banner")
    server.kill()
    t0 = time.monotonic()
    wait_until("the indicator to go stale", lambda: page.get_attribute("#live-status", "data-state") == "stale", 12)
    took = time.monotonic() - t0
    assert "live" not in page.text_content("#live-status").replace("stale", ""), page.text_content("#live-status")
    assert page.is_visible("#stale-banner"), "no stale banner"
    assert "stale" in (page.get_attribute("#alerts-table", "class") or ""), "table not marked stale"
    # Every row is drawn dimmed (the same grey), the critical ones included.
    backgrounds = set(page.eval_on_selector_all(
        "#alerts tr.alert td.patient", "tds => tds.map(td => getComputedStyle(td).backgroundColor)"))
    assert backgrounds == {"rgb(233, 236, 241)"}, f"rows not all dimmed: {backgrounds}"
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, "ui-stale.png"))
    print(f"  stale: indicator stale {took:.1f} s after the server was killed")


def check_ops(page, server):
    """The operations strip: every running rule against its budgets, the
    demo's local partition with how far behind its events are, and
    checkpoints reported off (no Kafka)."""
    page.wait_for_selector("#ops-panel:not([hidden])")
    wait_until("ops partition", lambda: "local" in (page.text_content("#ops-partition-rows") or ""))
    ops = server.get("/api/ops")
    running = len(ops["rules"])
    assert running > 0, ops
    wait_until("ops rules", lambda: len(page.query_selector_all("#ops-rule-rows tr")) == running)
    shown = page.text_content("#ops-rule-rows")
    for rule in ops["rules"]:
        assert rule["id"] in shown, (rule["id"], shown)
    assert "Checkpoints off" in page.text_content("#ops-checkpoints")
    assert "suspended" in page.text_content("#ops-budgets")
    print(f"  ops: {running} rules against their budgets, the local partition, checkpoints off")


def check_rule_edit(page, server):
    """An author edits a rule: the form holds the running version, the
    diff shows the changed line, and saving makes the next version."""
    rules = [r for r in server.get("/api/rules")["rules"]
             if r["active"] and re.search(r"\d+\s*$", r["sql"])]
    assert rules, "no active rule ending in a number to edit"
    rule = rules[0]
    page.click(f"#edit-{rule['id']}")
    assert page.input_value("#rule-sql") == rule["sql"]
    assert page.text_content("#rule-submit") == f"Save version {rule['version'] + 1}"
    old_line = rule["sql"].rstrip().split("\n")[-1]
    number = re.search(r"(\d+)\s*$", old_line).group(1)
    new_line = old_line[: old_line.rfind(number)] + str(int(number) + 1)
    page.fill("#rule-sql", rule["sql"].rstrip()[: -len(old_line)] + new_line)
    diff = page.text_content("#rule-diff")
    assert f"- {old_line}" in diff and f"+ {new_line}" in diff, diff
    # Backtest the edit, and the running version beside it, over the last hour.
    page.click("#rule-backtest-button")
    page.wait_for_selector("#rule-backtest:not([hidden])")
    summary = page.text_content("#rule-backtest")
    events = int(re.search(r"([\d,]+) events", summary).group(1).replace(",", ""))
    assert events > 0 and "the running version fired" in summary, summary
    page.click("#rule-submit")
    wait_until("saved", lambda: f"as version {rule['version'] + 1}" in (page.text_content("#rule-status") or ""))
    saved = server.get(f"/api/rules/{rule['id']}")
    assert saved["version"] == rule["version"] + 1 and saved["sql"].endswith(new_line), saved
    assert saved["cooldown_seconds"] == rule["cooldown_seconds"] and saved["name"] == rule["name"], saved
    page.wait_for_selector(f"#rule-{rule['id']} .rule-meta:has-text('v{rule['version'] + 1}')")
    assert page.is_hidden("#rule-diff-box") and page.text_content("#rule-form-heading") == "Add a rule"
    print(f"  rule edit: {rule['name']!r} v{rule['version']} → v{saved['version']}, diff {old_line!r} → {new_line!r};"
          f" backtested over {events} events")


def check_history(page, server):
    """An auditor runs history SQL: an error is shown where the query is; the
    result is the server's; Export CSV saves the same rows as a file."""
    page.wait_for_selector("#history-panel:not([hidden])")
    page.fill("#history-sql", "SELECT nope FROM rules")
    page.click("#history-run")
    page.wait_for_selector("#history-error:not([hidden])")
    err = page.text_content("#history-error")
    assert "nope" in err, err
    sql = "SELECT id, version, severity FROM rules ORDER BY id"
    page.fill("#history-sql", sql)
    page.click("#history-run")
    page.wait_for_selector("#history-error", state="hidden")
    status, answer = server.request("POST", "/api/query", {"sql": sql})
    assert status == 200, answer
    want = [[str(r["id"]), str(r["version"]), r["severity"]] for r in answer["rows"]]
    wait_until("history rows", lambda: len(page.query_selector_all("#history-rows tr")) == len(want))
    shown = [[td.text_content() for td in tr.query_selector_all("td")]
             for tr in page.query_selector_all("#history-rows tr")]
    assert shown == want, (shown, want)
    with page.expect_download() as download:
        page.click("#history-csv")
    path = download.value.path()
    with open(path, encoding="utf-8") as f:
        lines = f.read().strip().split("\n")
    assert lines[0] == "id,version,severity", lines[:2]
    assert [l.split(",") for l in lines[1:]] == want, (lines, want)
    print(f"  history: error shown ({err!r}); {len(want)} rows as the server answers; CSV saved with the same rows")


def check_auth_off_banner(page, server):
    """With authentication off (the loopback demo) a banner says so, for as
    long as the page is open; there is no one to sign in or out."""
    assert server.get("/api/whoami")["auth_required"] is False
    banner = "#auth-off-banner"
    assert page.is_visible(banner), "no banner while authentication is off"
    text = page.text_content(banner).strip()
    assert text == ("Authentication is off: anyone who can reach this server can see and change "
                    "everything (demo mode)."), text
    assert page.get_attribute(banner, "role") in ("status", "alert")
    ratio = page.eval_on_selector_all(banner, CONTRAST_JS)[0]["ratio"]
    assert ratio >= 4.5, f"banner contrast {ratio:.2f}:1"
    assert page.is_hidden("#sign-in-panel") and page.is_hidden("#session")
    print(f"  auth off: banner shown ({ratio:.1f}:1 contrast), no sign-in panel")


# Records the page's CSP violations (reset by a reload; check_keyboard reloads).
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def check_csp(page, server, csp_console):
    with urllib.request.urlopen(server.base + "/", timeout=10) as resp:
        policy = resp.headers.get("Content-Security-Policy") or ""
    assert "script-src 'self'" in policy and "style-src 'self'" in policy, f"no CSP on the page: {policy!r}"
    violations = page.evaluate("window.__cspViolations")
    assert violations == [], f"CSP violations since the last load: {violations}"
    assert not csp_console, f"CSP violations logged: {csp_console}"
    print("  CSP: the page runs under script-src/style-src 'self' without a violation")


# ------------------------------------------------------------------ auth on
#
# A second server, `serve --demo --auth`, with keys made by the CLI before it
# starts: a viewer (a nurse) and an admin (who may do what an author does).

SSE_SAMPLE = (": keep-alive\r\n\r\nevent: alert\r\nid: a1\r\ndata: {\"x\":1}\r\n\r\n"
              "event: lagged\ndata: {\"missed\":3}\n\ndata:first\ndata: second\r\rdata\n\n"
              "event: no-data\n\nid: z\nevent: alert\ndata: é\n\nevent: alert\ndata: cut off")
SSE_EXPECTED = [
    {"type": "alert", "data": "{\"x\":1}", "id": "a1"},
    {"type": "lagged", "data": "{\"missed\":3}", "id": "a1"},
    {"type": "message", "data": "first\nsecond", "id": "a1"},
    {"type": "message", "data": "", "id": "a1"},
    {"type": "alert", "data": "é", "id": "z"},
]
SSE_SPLITS_JS = """
([text, expected]) => {
  const parse = chunks => {
    const out = [];
    const p = window.wardwatch.sseParser(e => out.push(e));
    chunks.forEach(c => p.push(c));
    return JSON.stringify(out);
  };
  const want = JSON.stringify(expected);
  const bad = [];
  for (let i = 0; i <= text.length; i++)
    for (let j = i; j <= text.length; j += 3)
      if (parse([text.slice(0, i), text.slice(i, j), text.slice(j)]) !== want) bad.push([i, j]);
  return { whole: parse([text]), bad: bad.slice(0, 5), tried: (text.length + 1) * (text.length + 1) / 3 };
}
"""


def check_sse_parser(page):
    """The feed's text/event-stream parser gives the same events however
    the stream is cut into chunks (mid-line, between \\r and \\n)."""
    r = page.evaluate(SSE_SPLITS_JS, [SSE_SAMPLE, SSE_EXPECTED])
    assert json.loads(r["whole"]) == SSE_EXPECTED, r["whole"]
    assert not r["bad"], f"different events when split at {r['bad']}"
    print(f"  feed parser: same events over ~{r['tried']:.0f} ways of splitting the stream")


def session_credential(page):
    return page.evaluate("[sessionStorage.getItem('wardwatch.credential'), JSON.stringify(localStorage)]")


def sign_in(page, key):
    page.fill("#credential", key)
    page.click("#sign-in-submit")
    page.wait_for_selector("#session", state="visible")


def sign_out(page):
    page.click("#sign-out")
    page.wait_for_selector("#sign-in-panel", state="visible")
    assert page.is_hidden("#alerts-panel") and page.is_hidden("#rules-panel")
    assert not rows(page) and not page.query_selector("#rules article.rule"), "data left after signing out"
    assert session_credential(page)[0] is None, "credential kept after signing out"


def check_signed_out(page, server, api_requests):
    """Before signing in: the panel, nothing else, and no data asked for."""
    page.goto(server.base + "/")
    page.wait_for_selector("#sign-in-panel", state="visible")
    assert page.get_attribute("#credential", "type") == "password"
    assert page.text_content("label[for=credential]").strip() == "API key or access token"
    assert page.is_hidden("#sign-in-error"), "an error before any attempt"
    for hidden in ("#alerts-panel", "#rules-panel", "#session", "#auth-off-banner"):
        assert page.is_hidden(hidden), f"{hidden} shown before signing in"
    time.sleep(0.5)  # time for any stray request to go out
    assert not rows(page)
    asked = {u.split("?")[0] for u, _ in api_requests}
    assert asked == {"/api/whoami"}, f"asked for {asked} before signing in"

    # A wrong key: the server's reason, and still signed out.
    _, refusal = server.request("GET", "/api/whoami", key="wwk_0000000000000000_wrong")
    page.fill("#credential", "wwk_0000000000000000_wrong")
    page.click("#sign-in-submit")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    shown = page.text_content("#sign-in-error")
    assert shown == refusal["error"]["message"], f"shown {shown!r}, server said {refusal}"
    assert page.is_visible("#sign-in-panel") and page.is_hidden("#alerts-panel")
    assert session_credential(page)[0] is None, "a refused key was kept"
    print(f"  signed out: only the sign-in panel; a wrong key shows {shown!r}")


def check_viewer(page, server, key, name, api_requests):
    """A viewer: alerts (listed and live), acknowledging as themself, no
    rule controls."""
    sign_in(page, key)
    who = page.text_content("#session-who")
    assert who == f"Signed in as {name} (viewer)", who
    kept, local = session_credential(page)
    assert kept == key and key not in local, "credential not in sessionStorage only"
    wait_until("rows", lambda: rows(page))
    wait_until("live", lambda: page.get_attribute("#live-status", "data-state") == "live")
    assert page.is_hidden("#auth-off-banner")

    # Rules are listed, read-only.
    page.wait_for_selector("#rules article.rule")
    assert page.is_hidden("#rule-form") and page.is_visible("#rules-readonly")
    assert not page.query_selector("#rules button.deactivate"), "a viewer sees Deactivate"
    assert not page.query_selector("#rules button.edit"), "a viewer sees Edit"
    assert page.is_hidden("#ops-panel"), "a viewer sees the operations strip"
    assert page.is_hidden("#history-panel"), "a viewer sees the history console"

    # The live feed is the fetch stream, with the credential: new alerts
    # arrive as rows without a reload.
    loads = len(api_requests)
    patients = [f"PW-AUTH-{os.getpid()}-{i}" for i in (1, 2)]
    server.ingest(*(critical_reading(p) for p in patients))
    for p in patients:
        page.wait_for_selector(f'#alerts tr.alert.fresh[data-patient="{p}"]')
    streams = [h for u, h in api_requests if u.startswith("/api/alerts/stream")]
    assert streams and all(h == f"Bearer {key}" for h in streams), "feed opened without the credential"
    reloaded = [u for u, _ in api_requests[loads:] if u.startswith("/api/alerts?") and "suppressed" not in u]
    assert not reloaded, f"the list was reloaded rather than fed live: {reloaded}"

    # Acknowledging: the server records the signed-in name; no name field.
    row = f'#alerts tr.alert[data-patient="{patients[0]}"]'
    page.click(f"{row} button.ack-button")
    assert page.is_hidden("#ack-by-field"), "name field shown with authentication on"
    assert page.text_content("#ack-as").strip() == f"as {name}"
    page.fill("#ack-note", "checked the probe")
    page.click("#ack-submit")
    page.wait_for_selector("#ack-dialog", state="hidden")
    assert name in page.text_content(f"{row} .ack-info")
    listed = server.get(f"/api/alerts?patient={patients[0]}&limit=10", key=key)["alerts"]
    assert listed[0]["ack"]["by"] == name, listed[0].get("ack")

    # Someone else was first (409): who, shown in the dialog, then on the row.
    other = f'#alerts tr.alert[data-patient="{patients[1]}"]'
    alert_id = page.get_attribute(other, "data-alert-id")
    status, _ = server.request("POST", f"/api/alerts/{alert_id}/ack", {"note": "from the desk"})
    assert status in (200, 201), status
    page.click(f"{other} button.ack-button")
    page.click("#ack-submit")
    page.wait_for_selector("#ack-error:not([hidden])")
    err = page.text_content("#ack-error")
    assert "already acknowledged by Charge Admin" in err, err
    page.wait_for_selector(f"{other} .ack-info")
    assert "Charge Admin" in page.text_content(f"{other} .ack-info")
    page.click("#ack-cancel")
    page.wait_for_selector("#ack-dialog", state="hidden")
    sign_out(page)
    print(f"  viewer: alerts listed and fed live over fetch; acknowledged as {name!r}; 409 shows {err!r};"
          " no rule controls; signed out")


def check_admin(page, key):
    """An admin (holding the author's rights) sees the rule controls."""
    sign_in(page, key)
    assert page.text_content("#session-who") == "Signed in as Charge Admin (admin)"
    page.wait_for_selector("#rules button.deactivate")
    assert page.is_visible("#rule-form") and page.is_hidden("#rules-readonly")
    page.wait_for_selector("#ops-rule-rows tr")
    assert page.is_visible("#ops-panel") and page.is_visible("#history-panel")
    wait_until("rows", lambda: rows(page))
    sign_out(page)
    assert page.is_hidden("#ops-panel")
    print("  admin: rule form, Deactivate and the operations strip shown")


def check_refusals(page, server):
    """Refusals from the server are shown where the action was: a 403 (a
    page that wrongly believes the caller an author, as after a role
    change) and, once the key is revoked, a 401 signs the page out."""
    status, made = server.request("POST", "/api/keys", {"name": "Temp Viewer", "roles": ["viewer"]})
    assert status == 201, made

    def claim_author(route):
        body = json.loads(route.fetch().text())
        body["roles"] = ["author"]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))
    page.route("**/api/whoami", claim_author)
    sign_in(page, made["key"])
    page.unroute("**/api/whoami", claim_author)

    page.once("dialog", lambda d: d.accept())
    rid = page.wait_for_selector("#rules button.deactivate").get_attribute("data-rule-id")
    page.click(f"#deactivate-{rid}")
    page.wait_for_selector(f"#rule-{rid} .rule-action-error")
    err = page.text_content(f"#rule-{rid} .rule-action-error")
    assert "needs the author role" in err and "Temp Viewer" in err, err
    assert server.get(f"/api/rules/{rid}")["active"] is True
    page.fill("#rule-name", "Refused rule")
    page.fill("#rule-sql", "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 250")
    page.click("#rule-submit")
    page.wait_for_selector("#rule-error:not([hidden])")
    assert "needs the author role" in page.text_content("#rule-error")

    # Revoked: the next request (the 5-second polls) gets 401.
    status, _ = server.request("DELETE", f"/api/keys/{made['api_key']['id']}")
    assert status in (200, 204), status
    t0 = time.monotonic()
    page.wait_for_selector("#sign-in-panel", state="visible", timeout=12000)
    took = time.monotonic() - t0
    shown = page.text_content("#sign-in-error")
    _, refusal = server.request("GET", "/api/whoami", key=made["key"])
    assert shown == "Signed out: " + refusal["error"]["message"], shown
    assert session_credential(page)[0] is None and not rows(page)
    print(f"  refusals: 403 shown on the rule card ({err!r}) and the form; revoked key signed out"
          f" after {took:.1f} s ({shown!r})")


def run_auth_on(browser, work):
    viewer_name = f"Nurse Viewer {os.getpid()}"
    viewer = make_key(work, viewer_name, "viewer")
    admin = make_key(work, "Charge Admin", "admin")
    server = Server(work, auth=True, key=admin)
    try:
        wait_until("fired alerts on the server", lambda: server.get("/api/alerts?status=fired&limit=1")["alerts"], 30)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(10000)
        console_errors, page_errors, csp_console = [], [], []
        page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
        page.on("console", lambda m: "Content Security Policy" in m.text and csp_console.append(m.text))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.add_init_script(CSP_WATCH)
        # (path, Authorization header) of every API request the page makes.
        api_requests = []
        def seen(req):
            path = req.url[len(server.base):]
            if path.startswith("/api/"):
                api_requests.append((path, req.headers.get("authorization")))
        page.on("request", seen)

        check_signed_out(page, server, api_requests)
        check_sse_parser(page)
        check_viewer(page, server, viewer, viewer_name, api_requests)
        check_admin(page, admin)
        check_refusals(page, server)
        check_csp(page, server, csp_console)
        assert not page_errors, f"uncaught errors: {page_errors}"
        # Only the refusals provoked above may be logged.
        unexpected = [m for m in console_errors if not re.search(r"status of (401|403|409)", m)]
        assert not unexpected, f"console errors: {unexpected}"
        context.close()
    except BaseException:
        dump_log(server)
        raise
    finally:
        server.kill()


def dump_log(server):
    print(f"server log: {server.log.name}", file=sys.stderr)
    try:
        with open(server.log.name, "rb") as f:
            sys.stderr.write(f.read()[-3000:].decode(errors="replace"))
    except OSError:
        pass


def run_auth_off(browser, work):
    """`serve --demo` as it runs on loopback: authentication off."""
    server = Server(work)
    console_errors, page_errors = [], []
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(10000)
        page.on("console", lambda m: m.type == "error" and console_errors.append(
            f"{m.text} [{m.location.get('url', '')}]"))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        # The page must work under the server's Content-Security-Policy
        # (no inline script or style): a violation is logged to the
        # console and raised as an event in the page.
        csp_console = []
        page.on("console", lambda m: "Content Security Policy" in m.text and csp_console.append(m.text))
        page.add_init_script(CSP_WATCH)
        check_worklist(page, server)
        check_auth_off_banner(page, server)
        check_ops(page, server)
        check_rule_edit(page, server)
        check_history(page, server)
        for check in (check_acknowledge, check_rule_states):
            check(page, server)
        check_contrast(page)
        check_tablet(page, server)
        check_keyboard(page, server)
        check_csp(page, server, csp_console)
        assert not page_errors, f"uncaught errors: {page_errors}"
        # The one refusal check_acknowledge provokes is logged by the browser too.
        refused = [m for m in console_errors if re.search(r"status of 400 .*/api/alerts/\w+/ack\]$", m)]
        assert len(refused) == 1, f"expected the provoked 400: {console_errors}"
        console_errors = [m for m in console_errors if m not in refused]
        # And the one wrong query check_history runs.
        wrong_query = [m for m in console_errors if re.search(r"status of 400 .*/api/query\]$", m)]
        assert len(wrong_query) == 1, f"expected the provoked 400 of the query: {console_errors}"
        console_errors = [m for m in console_errors if m not in wrong_query]
        assert not console_errors, f"console errors: {console_errors}"
        check_hung(page, server)
        check_stale(page, server)
        # With the server gone, only failed requests may be logged.
        unexpected = [m for m in console_errors if not re.search(r"ERR_CONNECTION_REFUSED|net::ERR_", m)]
        assert not unexpected and not page_errors, f"errors after the server stopped: {unexpected} {page_errors}"
        page.close()
    except BaseException:
        dump_log(server)
        raise
    finally:
        server.kill()


def main():
    assert os.path.exists(BIN), f"no server binary at {BIN}: cargo build -p wardwatch"
    assert os.path.exists(CHROMIUM), f"no browser at {CHROMIUM}: apt-get install chromium"
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wardwatch-browser-") as work, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        for name, run in (("auth-off", run_auth_off), ("auth-on", run_auth_on)):
            t0 = time.monotonic()
            print(f"{name}: serve --demo{' --auth' if name == 'auth-on' else ''}")
            os.makedirs(os.path.join(work, name))
            run(browser, os.path.join(work, name))
            print(f"{name}: passed in {time.monotonic() - t0:.1f} s")
        browser.close()
    print(f"browser tests passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
