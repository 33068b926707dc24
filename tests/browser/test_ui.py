#!/usr/bin/env python3
"""Browser tests of the web UI: the real server (`wardwatch serve --demo`)
driven by Debian's Chromium through Playwright.

Run: python3 tests/browser/test_ui.py
Needs: /usr/bin/chromium (apt-get install chromium), `pip install playwright
cryptography` (never `playwright install`: the system browser is used), and
the server binary, built by `cargo build -p wardwatch` (WARDWATCH_BIN
overrides the path).
WARDWATCH_SCREENSHOTS=DIR saves screenshots at 1400x1000 and 800x1100 (the
ones in docs/screenshots are made so). The server inherits this process's
environment, so WARDWATCH_WEB_DIR=web makes it serve the page, app.js,
app.css, vendor.js and vendor.css from web/ rather than from the binary.

Five servers, one after the other, each with its own port and data dir.

`serve --demo` (authentication off, as on loopback): the checks run in order
as one nurse's session would: the worklist (fired and unacknowledged,
server-filtered, grouped by hospital and patient, severity then time), the
"authentication is off" banner, the rule workshop (the server's validation
error marked in the editor at its line and column, a 6-hour backtest of the
draft beside the running version, a new version and its diff; every rule
setting as a form field: description, allowed lateness, keep duplicates and
an escalation on a validated output column, stored exactly and shown again
by Edit), deactivating with a reason and reactivating, a rule's tuning
chart, a patient's vitals around an alert, the audit desk (saved queries,
the audit log, replay audits, dead letters), acknowledging an alert (it
leaves the worklist for the acknowledged view), a rule the engine suspends,
paging through its storm of alerts with "Show older" (each page the server's
next for `until`), a signal-loss rule's clear folded into the alert it
clears, contrast, the page without /vendor.js (plain SQL field, no charts), and
finally the server is killed and the connection indicator must turn stale.

`serve --demo --auth`, with a viewer and an admin key made by `wardwatch
api-key create` first: the sign-in panel and nothing else before signing in,
a wrong key refused, the viewer's worklist fed live over the fetch() stream,
acknowledging as the key's name (and a 409 when someone was first), a
patient's trend, no rule controls, tuning or audit desk for a viewer but for
an admin, a 403 shown where the action was, and a revoked key signing the
page out.

`serve --demo --auth` with `[auth.ui_login]` pointing at TestIdP, an OpenID
provider run here (http.server on loopback, ES256 tokens signed with the
`cryptography` package, its public key in the server's JWKS file): "Sign in
with …" through its login form (authorization code, PKCE S256) as an author
and, with the keyboard only, as a viewer, each as the server's whoami says
with the token the page kept; a planted code with another state not spent;
the provider's error shown; the IdP refusing a wrong verifier; an expired
token signing the page out and the button signing in again.

Instances on one data directory: `serve --demo` without `[instance]` lists
none in the operations strip; `serve --demo --auth` with `[instance] id = 3`
and another instance's file left behind shows an admin "instance 3 · all
rules · live" and the other as gone, in words (`test_instances_strip` runs
this part alone under pytest).
"""

import base64
import hashlib
import html
import http.client
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
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
    this harness's own requests carry `key`; `more_config` follows CONFIG."""

    def __init__(self, workdir, auth=False, key=None, more_config=""):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key
        config = os.path.join(workdir, "wardwatch.toml")
        with open(config, "w") as f:
            f.write(CONFIG + more_config)
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
        hospital: tr.dataset.hospital, windowStart: tr.dataset.windowStart,
        acked: tr.dataset.acked === "true" }))""")


def blocks(items, key):
    """Consecutive runs of items with the same key: [(key, [items])]."""
    out = []
    for it in items:
        if out and out[-1][0] == key(it):
            out[-1][1].append(it)
        else:
            out.append((key(it), [it]))
    return out


def assert_worklist_order(rs):
    """Grouped by hospital, then patient: each group in one piece, groups
    in the order of their first alert, and the alerts of a patient most
    severe first, then newest."""
    rank = lambda r: (SEV_RANK.get(r["severity"], -1), r["time"])
    def ordered(seq, what):
        for a, b in zip(seq, seq[1:]):
            assert rank(a) >= rank(b), f"{what} out of order (severity, then newest): {a} before {b}"
    hospitals = blocks(rs, lambda r: r["hospital"])
    names = [h for h, _ in hospitals]
    assert len(names) == len(set(names)), f"a hospital's alerts are split: {names}"
    ordered([members[0] for _, members in hospitals], "hospitals")
    for h, members in hospitals:
        patients = blocks(members, lambda r: r["patient"])
        names = [p for p, _ in patients]
        assert len(names) == len(set(names)), f"a patient's alerts are split in {h}: {names}"
        ordered([m[0] for _, m in patients], f"patients of {h}")
        for _, m in patients:
            ordered(m, "alerts of a patient")


GROUPS_JS = """
() => {
  // Each group header against the rows under it.
  const out = [];
  let hospital = null, patient = null;
  for (const tr of document.querySelectorAll("#alerts tr")) {
    if (tr.classList.contains("hospital-row")) {
      hospital = { hospital: tr.dataset.hospital, text: tr.textContent, rows: 0, patients: 0 };
      out.push(hospital);
    } else if (tr.classList.contains("patient-row")) {
      patient = { hospital: tr.dataset.hospital, patient: tr.dataset.patient, text: tr.textContent, rows: 0 };
      out.push(patient);
      hospital.patients++;
    } else if (tr.classList.contains("alert")) {
      hospital.rows++;
      patient.rows++;
      if (tr.dataset.hospital !== hospital.hospital || tr.dataset.patient !== patient.patient) {
        out.push({ misplaced: tr.dataset.alertId });
      }
    }
  }
  return out;
}
"""


def check_groups(page, server):
    """Every header counts the rows under it, and each row is under the
    hospital the server gives its alert."""
    groups = page.evaluate(GROUPS_JS)
    assert groups and not [g for g in groups if "misplaced" in g], groups
    for g in groups:
        n = g["rows"]
        assert f"{n} alert{'s' if n != 1 else ''}" in g["text"], f"header {g['text']!r} over {n} rows"
        if "patients" in g:
            p = g["patients"]
            assert f"{p} patient{'s' if p != 1 else ''}" in g["text"], f"header {g['text']!r} over {p} patients"
    by_id = {a["id"]: a for a in server.get("/api/alerts?status=fired&acknowledged=false&limit=2000")["alerts"]}
    for r in rows(page):
        if r["id"] in by_id:
            want = by_id[r["id"]].get("hospital_id") or "unknown"
            assert r["hospital"] == want, f"alert {r['id']} under {r['hospital']}, the server says {want}"
    return len([g for g in groups if "patients" in g]), len([g for g in groups if "patients" not in g])


def check_worklist(page, server):
    # The demo's cooldowns turn most repeats into suppressed alerts; both
    # kinds must exist for "fired only" to mean anything.
    wait_until("fired and suppressed alerts on the server", lambda:
               server.get("/api/alerts?status=fired&limit=1")["alerts"]
               and server.get("/api/alerts?status=suppressed&limit=1")["alerts"], 30)
    fired_before = len(server.get("/api/alerts?status=fired&acknowledged=false&limit=200")["alerts"])
    page.goto(server.base + "/")
    wait_until("the live indicator", lambda: page.get_attribute("#live-status", "data-state") == "live")
    assert not page.is_checked("#show-suppressed"), "suppressed alerts shown by default"
    assert page.input_value("#filter-ack") == "false", "the worklist does not default to unacknowledged"
    assert not page.is_checked("#sound-critical"), "sound on by default"
    rs = wait_until("alert rows", lambda: rows(page))
    assert all(r["status"] == "fired" for r in rs), f"non-fired rows by default: {rs}"
    assert not any(r["acked"] for r in rs), f"acknowledged rows in the worklist: {rs}"
    # The page asks the server for fired alerts, so it shows every fired one
    # (up to its 200), not the fired few among the newest of all statuses.
    assert len(rs) >= fired_before, f"{len(rs)} rows shown, {fired_before} fired alerts on the server"
    assert_worklist_order(rs)
    patients, hospitals = wait_until("group headers matching the rows", lambda: check_groups(page, server))

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
    on_server = server.get(f"/api/alerts?status=fired&acknowledged=false&severity={sev}&limit=200")["alerts"]
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
    on_server = server.get(f"/api/alerts?patient={patient}&acknowledged=false&limit=200")["alerts"]
    page.fill("#filter-patient", patient)
    prs = wait_until(f"the {len(on_server)} rows of {patient}", lambda: (lambda rs: len(rs) >= len(on_server)
                     and all(r["patient"] == patient for r in rs) and rs)(rows(page)))
    page.fill("#filter-patient", "")
    page.uncheck("#show-suppressed")
    wait_until("fired rows of every patient", lambda: (lambda rs: rs and all(r["status"] == "fired" for r in rs)
               and len({r["patient"] for r in rs}) > 1)(rows(page)))
    print(f"  patient filter: {len(prs)} alerts of {patient}"
          f" ({sum(r['status'] == 'suppressed' for r in prs)} suppressed)")
    print(f"  worklist: fired and unacknowledged by default, {patients} patients in {hospitals} hospitals"
          f" with counts; {sev} filter; severity then time within each group")


def check_acknowledge(page, server):
    shoot(page, "worklist")  # a few minutes into the demo: several hospitals and patients
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
    # Seen: it leaves the worklist of unacknowledged alerts.
    page.wait_for_selector(row, state="detached")
    assert "acknowledged view" in page.text_content("#live-notice")
    assert page.evaluate("document.activeElement !== document.body"), "focus lost after acknowledging"

    # Recorded on the server, by the name typed.
    alerts = server.get(f"/api/alerts?rule={target['ruleId']}&limit=10000")["alerts"]
    alert = next((a for a in alerts if a["id"] == target["id"]), None)
    assert alert is not None, f"alert {target['id']} not listed by the server"
    assert alert.get("ack", {}).get("by") == name, f"server recorded {alert.get('ack')}"
    assert alert["ack"].get("note") == "seen at the bedside", alert["ack"]

    # The acknowledged view: the server's acknowledged alerts, this one with who and the note.
    acked = server.get("/api/alerts?status=fired&acknowledged=true&limit=200")["alerts"]
    assert target["id"] in {a["id"] for a in acked}, "the server does not list it as acknowledged"
    page.select_option("#filter-ack", "true")
    page.wait_for_selector(f"{row} .ack-info")
    shown = page.text_content(f"{row} .ack-info")
    assert name in shown and "seen at the bedside" in shown, f"row shows {shown!r}"
    rs = wait_until("the acknowledged rows", lambda: (lambda rs: len(rs) >= len(acked) and rs)(rows(page)))
    assert all(r["acked"] for r in rs), f"unacknowledged rows in the acknowledged view: {rs}"

    # Acknowledged at another screen: it leaves this worklist too, within a
    # poll, without a reload.
    page.select_option("#filter-ack", "false")
    other = wait_until("another unacknowledged row", lambda: [r for r in rows(page) if r["id"] != target["id"]])[0]
    status, _ = server.request("POST", f"/api/alerts/{other['id']}/ack", {"by": "Desk Nurse", "note": "phoned"})
    assert status in (200, 201), status
    t0 = time.monotonic()
    page.wait_for_selector(f"#alert-{other['id']}", state="detached", timeout=12000)
    elsewhere = time.monotonic() - t0
    assert "acknowledged by Desk Nurse" in page.text_content("#live-notice"), page.text_content("#live-notice")

    # After a reload the worklist is unacknowledged again, without it.
    page.reload()
    wait_until("rows after reload", lambda: rows(page))
    assert page.input_value("#filter-ack") == "false"
    assert target["id"] not in {r["id"] for r in rows(page)}, "an acknowledged alert back in the worklist"
    wait_until("the live indicator after reload", lambda: page.get_attribute("#live-status", "data-state") == "live")
    print(f"  acknowledge: {target['id']} by {name!r} recorded, left the worklist, shown in the"
          f" acknowledged view ({len(rs)} rows, the server has {len(acked)}); one acknowledged elsewhere"
          f" left it {elsewhere:.1f} s later")


def critical_reading(patient):
    """A reading the demo rule "Critical SpO2 reading" (spo2_pct < 85)
    turns into a critical alert at once, for a patient of the test's own."""
    return {"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": int(time.time() * 1000),
            "spo2_pct": 80.0, "heart_rate_bpm": 70, "source_device": "BEDSIDE", "sequence_number": 1}


def check_rule_states(page, server):
    # A critical alert of our own, before the storm: a reading under the demo
    # rule "Critical SpO2 reading" (spo2_pct < 85) for a patient of our own.
    # It arrives live while a nurse is on another row's button: the new row
    # and its group appear, and the nurse's place (and row) stays.
    row = rows(page)[-1]
    button = f'#alert-{row["id"]} button.ack-button'
    page.focus(button)
    page.eval_on_selector(button, "b => { b.dataset.kept = 'yes'; }")
    server.ingest(critical_reading("PW-CRIT"))
    critical = wait_until("the critical alert for PW-CRIT", lambda: server.get(
        "/api/alerts?patient=PW-CRIT&status=fired&severity=critical&limit=1")["alerts"])[0]
    page.wait_for_selector(f'#alert-{critical["id"]}.fresh')
    page.wait_for_selector('#alerts tr.patient-row[data-patient="PW-CRIT"]')
    assert page.evaluate("document.activeElement.dataset.kept") == "yes", "a live alert took the focus away"

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
  // A row redrawn between finding and measuring is gone from the page: not measured.
  return els.filter(e => e.isConnected).map(e => {
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
                                      " #alerts .trend-link, #alerts tr.group-row .group-name, #alerts tr.group-row .group-count,"
                                      " #alerts .ack-info, #alerts .repeats:not([hidden]), #rules .rule-meta, #rules .deactivation,"
                                      " #rule-sql-editor .cm-line span, #rule-sql-editor .cm-gutterElement, #alert-filters label",
                                      CONTRAST_JS)
    badges = page.eval_on_selector_all("#rules .badge, #alerts .badge", CONTRAST_JS)
    assert any("trend-link" in c["cls"] for c in cells) and any("group-name" in c["cls"] for c in cells), "new views not checked"
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
    page.set_viewport_size({"width": 1400, "height": 1000})
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

    # Deactivating asks first (for a reason); Escape leaves the rule running.
    rid = page.eval_on_selector('#rules article.rule[data-state="active"]', "a => a.dataset.ruleId")
    page.focus(f"#deactivate-{rid}")
    page.keyboard.press("Enter")
    page.wait_for_selector("#deactivate-dialog", state="visible")
    assert page.evaluate("document.activeElement.id") == "deactivate-reason"
    page.keyboard.type("not sure")
    page.keyboard.press("Escape")
    page.wait_for_selector("#deactivate-dialog", state="hidden")
    assert page.evaluate("document.activeElement.id") == f"deactivate-{rid}", "focus not returned to Deactivate"
    time.sleep(0.3)
    assert server.get(f"/api/rules/{rid}")["active"] is True, "deactivated without confirmation"

    # The SQL editor is one Tab stop: Tab goes in, typing types, Tab goes on.
    page.focus("#rule-description")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "rule-sql-input", page.evaluate("document.activeElement.outerHTML.slice(0, 80)")
    page.keyboard.type("SELECT patient_id FROM vitals")
    assert editor_text(page) == "SELECT patient_id FROM vitals"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "rule-lateness", "Tab is kept by the editor"
    page.focus("#rule-sql-input")
    page.keyboard.press("Control+a")
    page.keyboard.press("Backspace")
    assert editor_text(page) == ""

    # The rules list is redrawn every 5 s; a keyboard user's place in it stays.
    page.focus(f"#rule-sql-summary-{rid}")
    time.sleep(5.5)
    assert page.evaluate("document.activeElement.id") == f"rule-sql-summary-{rid}", "focus lost by the rules' redraw"
    print("  keyboard: skip link first, dialogs by keyboard, Escape records nothing; the editor is one Tab stop;"
          " focus kept across the rules' redraw")


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
        page.screenshot(path=os.path.join(SHOTS, "stale-1400x1000.png"))
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
    # A single instance (no [instance] section): no list of instances.
    assert ops["instances"] == [], ops["instances"]
    assert page.is_hidden("#ops-instances") and not page.query_selector("#ops-instances li")
    assert "instance" not in page.inner_text("#ops-panel").lower()
    print(f"  ops: {running} rules against their budgets, the local partition, checkpoints off, no instances listed")


EDITOR = "#rule-sql-editor"

# Where CodeMirror shows the error: the underlined range's line (counted
# among the editor's lines) and column (the text of that line before it),
# the message drawn below the line, and the editor's text line by line.
MARK_JS = """
() => {
  const lines = [...document.querySelectorAll("#rule-sql-editor .cm-content > .cm-line")];
  const text = lines.map(l => l.querySelector(".cm-placeholder") ? "" : l.textContent);
  const mark = document.querySelector("#rule-sql-editor .cm-lintRange-error");
  const below = document.querySelector("#rule-sql-editor .cm-ww-error");
  if (!mark) return { text, mark: null };
  const line = mark.closest(".cm-line");
  const before = document.createRange();
  before.setStart(line, 0);
  before.setEndBefore(mark);
  return {
    text, line: lines.indexOf(line) + 1, column: before.toString().length + 1, marked: mark.textContent,
    message: below && below.querySelector(".cm-ww-message").textContent,
    belowLine: below && Number(below.dataset.line), belowColumn: below && Number(below.dataset.column),
    gutter: !!document.querySelector("#rule-sql-editor .cm-lint-marker-error")
  };
}
"""


def editor_text(page):
    return "\n".join(page.evaluate(MARK_JS)["text"])


def set_editor(page, text):
    """Replaces the editor's text as a paste would (one insertion)."""
    page.fill(f"{EDITOR} .cm-content", text)
    wait_until("the editor to hold the text", lambda: editor_text(page) == text, 5)


def check_rule_edit(page, server):
    """An author edits a rule in the workshop: the editor holds the running
    version; an error on line 2 is marked where the server says, as the
    author types (no button); fixed, the draft is backtested, the diff shows
    the changed line, and saving makes the next version."""
    rules = [r for r in server.get("/api/rules")["rules"]
             if r["active"] and re.search(r"\d+\s*$", r["sql"]) and "event_time" in (r["sql"].split("\n") + [""])[1]]
    assert rules, "no active rule ending in a number with event_time on line 2 to edit"
    rule = rules[0]
    page.click(f"#edit-{rule['id']}")
    wait_until("the running SQL in the editor", lambda: editor_text(page) == rule["sql"], 5)
    assert page.evaluate("document.activeElement.id") == "rule-sql-input", "focus not in the editor"
    assert page.text_content("#rule-submit") == f"Save version {rule['version'] + 1}"
    # Highlighted as SQL: keywords and names are drawn in tokens.
    assert page.query_selector_all(f"{EDITOR} .cm-line span"), "no syntax highlighting"

    # The author retypes it with a misspelt column on line 2: the check as
    # they type marks it where the server puts it. (The editor indents new
    # lines itself, so the server is asked about the text as it stands.)
    lines = rule["sql"].split("\n")
    page.keyboard.press("Control+a")
    page.keyboard.press("Backspace")
    typed = [lines[0], lines[1].replace("event_time", "event_tme", 1)] + lines[2:]
    page.keyboard.type("\n".join(l.strip() for l in typed))
    wait_until("the typed lines", lambda: [l.strip() for l in editor_text(page).split("\n")] == [l.strip() for l in typed], 5)
    broken = editor_text(page)
    status, answer = server.request("POST", "/api/rules/validate", {"sql": broken})
    assert status == 400 and answer["error"]["line"] == 2, (status, answer)
    err = answer["error"]
    mark = wait_until("the inline error", lambda: (lambda m: m.get("mark", True) and m)(page.evaluate(MARK_JS)), 8)
    assert (mark["line"], mark["column"]) == (err["line"], err["column"]), f"marked at {mark}, server says {err}"
    assert (mark["belowLine"], mark["belowColumn"]) == (err["line"], err["column"]), mark
    assert mark["message"] == err["message"], (mark["message"], err["message"])
    assert mark["gutter"], "no error marker in the gutter"
    assert err["message"] in page.text_content("#rule-error"), "the message is not shown as text too"
    assert page.get_attribute("#rule-sql-input", "aria-invalid") == "true"
    shoot(page, "workshop", "#rule-form")

    # Fixed, with a new threshold on the last line: the marker goes, the
    # check says valid, and the diff shows the change.
    old_line = lines[-1]
    number = re.search(r"(\d+)\s*$", old_line).group(1)
    new_line = old_line[: old_line.rfind(number)] + str(int(number) + 1)
    fixed = "\n".join(lines[:-1] + [new_line])
    set_editor(page, fixed)
    wait_until("the error to clear", lambda: page.evaluate(MARK_JS)["mark"] is None
               and page.is_visible("#rule-validation") and page.is_hidden("#rule-error"), 8)
    assert "Valid" in page.text_content("#rule-validation")
    diff = page.text_content("#rule-diff")
    assert f"- {old_line}" in diff and f"+ {new_line}" in diff, diff
    # Backtest the edit, and the running version beside it, over the last
    # 6 hours: both replays the page asks for span 6 h ending now, and the
    # table is the server's answers, per patient.
    replays = []
    def seen(req):
        if req.method == "POST" and req.url.endswith("/api/replay"):
            replays.append(req)
    page.on("request", seen)
    page.select_option("#rule-backtest-hours", "6")
    asked_at = int(time.time() * 1000)
    page.click("#rule-backtest-button")
    page.wait_for_selector("#rule-backtest:not([hidden])")
    page.remove_listener("request", seen)
    assert len(replays) == 2, [r.post_data for r in replays]
    bodies = [r.post_data_json for r in replays]
    for b in bodies:
        assert b["to_ms"] - b["from_ms"] == 6 * 3600000, b
        assert abs(b["to_ms"] - asked_at) < 10000, (b, asked_at)
    assert bodies[0]["sql"] == fixed and bodies[1]["rule_id"] == rule["id"], bodies
    draft, live = [r.response().json() for r in replays]
    summary = page.text_content("#rule-backtest")
    assert summary.startswith("Backtest over the last 6 hours:"), summary
    events = int(re.search(r"([\d,]+) events", summary).group(1).replace(",", ""))
    assert events == draft["events"] > 0 and "the running version fired" in summary, (summary, draft["events"])
    def per_patient(report):
        out = {}
        for a in report["alerts"]:
            if a["status"] == "fired":
                p = a["key"]["patient_id"]
                out[p] = out.get(p, 0) + 1
        return out
    mine, theirs = per_patient(draft), per_patient(live)
    table = page.eval_on_selector_all("#rule-backtest table.backtest tbody tr",
                                      "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
    assert len(table) == min(10, len(set(mine) | set(theirs))), (table, mine, theirs)
    for p, d, r in table:
        assert (int(d), int(r)) == (mine.get(p, 0), theirs.get(p, 0)), (p, d, r, mine.get(p), theirs.get(p))
    page.click("#rule-submit")
    wait_until("saved", lambda: f"as version {rule['version'] + 1}" in (page.text_content("#rule-status") or ""))
    saved = server.get(f"/api/rules/{rule['id']}")
    assert saved["version"] == rule["version"] + 1 and saved["sql"] == fixed, saved
    assert saved["cooldown_seconds"] == rule["cooldown_seconds"] and saved["name"] == rule["name"], saved
    page.wait_for_selector(f"#rule-{rule['id']} .rule-meta:has-text('v{rule['version'] + 1}')")
    assert page.is_hidden("#rule-diff-box") and page.text_content("#rule-form-heading") == "Add a rule"
    assert editor_text(page) == "", "the editor kept the saved SQL"
    print(f"  rule workshop: error typed on line 2 marked at {err['line']}:{err['column']} ({err['message'][:40]}…)"
          f" as the server says; {rule['name']!r} v{rule['version']} → v{saved['version']},"
          f" diff {old_line!r} → {new_line!r}; backtested over 6 h ({events} events, {len(table)} patients"
          f" draft beside running)")


RULE_FIELDS_JS = """
() => ({
  description: document.getElementById("rule-description").value,
  lateness: document.getElementById("rule-lateness").value,
  keep: document.getElementById("rule-keep-duplicates").checked,
  column: document.getElementById("rule-esc-column").value,
  above: document.getElementById("rule-esc-above").value,
  below: document.getElementById("rule-esc-below").value,
  severity: document.getElementById("rule-esc-severity").value
})
"""


def check_rule_fields(page, server):
    """Every setting of a rule is a field of the form: the author sets a
    description, allowed lateness, keep duplicates and an escalation on one
    of the columns the validation lists; an escalation column the SQL no
    longer outputs is refused by the server, its message shown and the field
    marked; saved, the server holds exactly what was entered, Edit shows it
    again, and emptied fields are sent as null (the server's defaults)."""
    name = f"Form settings {os.getpid()}"
    description = "Paged to the ward's charge nurse — “ward 3” only"
    sql = ("SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n\n"
           "FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id\n"
           "HAVING AVG(heart_rate_bpm) > 150")
    page.fill("#rule-name", name)
    page.select_option("#rule-severity", "high")
    page.fill("#rule-cooldown", "60")
    page.fill("#rule-hospital", "PW-FORM")  # no events: it never fires meanwhile
    page.fill("#rule-description", description)
    assert page.text_content("#rule-description-count") == f"{len(description.encode())} of 4096 bytes"
    set_editor(page, sql)
    columns = [c["name"] for c in server.request("POST", "/api/rules/validate", {"sql": sql})[1]["columns"]]
    # The checked-as-typed validation fills the column menu with the numeric output columns.
    wait_until("the escalation columns", lambda: page.get_attribute("#rule-esc-column", "data-columns")
               == " ".join(c for c in columns if c != "patient_id"), 8)
    page.select_option("#rule-esc-column", "avg_hr")
    page.fill("#rule-esc-above", "140.5")
    page.select_option("#rule-esc-severity", "critical")
    page.fill("#rule-lateness", "2500")
    page.check("#rule-keep-duplicates")

    # The column renamed in the SQL: the chosen one stays, marked, and the
    # server's refusal is shown as it says it, at the field.
    renamed = sql.replace("AS avg_hr", "AS mean_hr")
    set_editor(page, renamed)
    wait_until("the renamed column listed", lambda: "mean_hr" in (page.get_attribute("#rule-esc-column", "data-columns") or ""), 8)
    assert page.input_value("#rule-esc-column") == "avg_hr"
    page.click("#rule-submit")
    status, refusal = server.request("POST", "/api/rules", {
        "name": name, "severity": "high", "cooldown_seconds": 60, "hospital_id": "PW-FORM", "sql": renamed,
        "description": description, "allowed_lateness_ms": 2500, "keep_duplicates": True,
        "escalation": {"column": "avg_hr", "above": 140.5, "below": None, "severity": "critical"}})
    assert status == 400, (status, refusal)
    wait_until("the server's refusal", lambda: page.text_content("#rule-error") == refusal["error"]["message"], 8)
    assert page.get_attribute("#rule-esc-column", "aria-invalid") == "true"
    assert not [r for r in server.get("/api/rules")["rules"] if r["name"] == name], "refused, yet stored"

    page.select_option("#rule-esc-column", "mean_hr")
    page.click("#rule-submit")
    wait_until("added", lambda: f"Added “{name}”" in (page.text_content("#rule-status") or ""))
    rid = next(r["id"] for r in server.get("/api/rules")["rules"] if r["name"] == name)
    saved = server.get(f"/api/rules/{rid}")
    want = {"description": description, "allowed_lateness_ms": 2500, "keep_duplicates": True,
            "escalation": {"column": "mean_hr", "above": 140.5, "below": None, "severity": "critical"},
            "severity": "high", "cooldown_seconds": 60, "hospital_id": "PW-FORM", "sql": renamed}
    assert {k: saved[k] for k in want} == want, saved
    assert page.evaluate(RULE_FIELDS_JS) == {"description": "", "lateness": "", "keep": False, "column": "",
                                             "above": "", "below": "", "severity": ""}, "the form kept the saved rule"

    # Edit shows every setting again; emptied, they go back to the defaults.
    page.click(f"#edit-{rid}")
    wait_until("the rule in the form", lambda: editor_text(page) == renamed, 5)
    assert page.evaluate(RULE_FIELDS_JS) == {"description": description, "lateness": "2500", "keep": True,
                                             "column": "mean_hr", "above": "140.5", "below": "", "severity": "critical"}
    page.fill("#rule-lateness", "")
    page.uncheck("#rule-keep-duplicates")
    page.select_option("#rule-esc-column", "")
    page.fill("#rule-esc-above", "")
    page.select_option("#rule-esc-severity", "")
    page.click("#rule-submit")
    wait_until("saved", lambda: "as version 2" in (page.text_content("#rule-status") or ""))
    v2 = server.get(f"/api/rules/{rid}")
    assert (v2["version"], v2["description"], v2["allowed_lateness_ms"], v2["keep_duplicates"], v2["escalation"]) == \
        (2, description, None, False, None), v2
    print(f"  rule settings: description, lateness 2500 ms, keep duplicates and an escalation on mean_hr stored as"
          f" entered; a column no longer output refused ({refusal['error']['message'][:50]}…); Edit shows them;"
          f" emptied they are null (v2)")


def check_paging(page, server):
    """More alerts than a page: "Show older" adds exactly the next page the
    server gives for `until` = the oldest row's millisecond + 1 (exclusive,
    so alerts sharing it are not skipped), minus rows already shown, with no
    duplicate, until the server has no more."""
    rid = next(r["id"] for r in server.get("/api/rules")["rules"] if r["name"] == "Storm of every reading")
    query = f"rule={rid}&status=fired&acknowledged=false&severity=low"
    total = len(server.get(f"/api/alerts?{query}&limit=10000")["alerts"])
    page_size = 200
    assert total > 2 * page_size, f"the storm made {total} alerts: not enough to page"
    # Its low alerts (the server adds a high one saying the rule was suspended).
    page.select_option("#filter-rule", rid)
    page.select_option("#filter-severity", "low")
    wait_until("a page of the storm", lambda: (lambda rs: len(rs) == page_size and all(
        r["ruleId"] == rid and r["severity"] == "low" for r in rs))(rows(page)))
    assert page.is_visible("#alerts-older")
    assert page.text_content("#alerts-shown").startswith(f"Showing {page_size} alerts; older low alerts are not loaded")
    clicks = 0
    while page.is_visible("#alerts-older"):
        before = rows(page)
        shown = [r["id"] for r in before]
        oldest = min(r["time"] for r in before)
        nxt = [a["id"] for a in server.get(f"/api/alerts?{query}&limit={page_size}&until={oldest + 1}")["alerts"]
               if a["id"] not in shown]
        page.click("#alerts-older")
        clicks += 1
        want = len(shown) + len(nxt)
        after = wait_until(f"{want} rows after Show older", lambda: (lambda rs: len(rs) == want and rs)(rows(page)))
        ids = [r["id"] for r in after]
        assert len(ids) == len(set(ids)), "a row shown twice"
        assert set(ids) - set(shown) == set(nxt), "the added rows are not the server's next page"
        assert_worklist_order(after)
        wait_until("the count of rows shown", lambda: page.get_attribute("#alerts-shown", "data-shown") == str(want), 5)
        assert clicks <= total // page_size + 2, "Show older does not end"
    assert len(rows(page)) == total, f"{len(rows(page))} rows after paging, the server has {total}"
    assert "that is all of them" in page.text_content("#alerts-shown")
    page.select_option("#filter-rule", "")
    page.select_option("#filter-severity", "")
    wait_until("every rule's rows again", lambda: len({r["ruleId"] for r in rows(page)}) > 1)
    print(f"  paging: {total} alerts of the storm in pages of {page_size}: {clicks} Show older, each the server's next"
          f" page, no duplicates")


def check_clears(page, server):
    """A signal-loss rule's clear is folded into the alert it clears: the
    silenced alert's row says when the readings came back and the clear has
    no row; without that alert on the page, the clear is a row of its own
    that says what it clears."""
    patient = f"PW-SILENT-{os.getpid()}"
    status, rule = server.request("POST", "/api/rules", {
        # Readings are dated by this clock, and the demo's may run a little
        # ahead of it: a second of lateness keeps them from being late.
        "name": "Silent monitor (test)", "severity": "high", "cooldown_seconds": 0, "allowed_lateness_ms": 1500,
        "sql": "SELECT patient_id, COUNT(*) AS readings, MAX(timestamp_unix_ms) AS last_reading_ms\n"
               f"FROM vitals WHERE patient_id = '{patient}'\n"
               "GROUP BY SESSION(event_time, INTERVAL '2' SECOND), patient_id"})
    assert status == 201, (status, rule)
    rid = rule["id"]
    t0 = time.monotonic()
    def reading():
        return {"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": int(time.time() * 1000), "spo2_pct": 97.0}
    try:
        server.ingest(reading())
        time.sleep(0.3)
        server.ingest(reading())
        silence = wait_until("the silence alert", lambda: server.get(f"/api/alerts?rule={rid}&limit=10")["alerts"], 15)[0]
        page.wait_for_selector(f"#alert-{silence['id']}")
        # The monitor sends again, a reading every half second, as monitors do.
        def back():
            server.ingest(reading())
            return [a for a in server.get(f"/api/alerts?rule={rid}&limit=10")["alerts"]
                    if a["explanation"].get("clears") == silence["id"]]
        clear = wait_until("the clear", back, 15, 0.5)[0]
        assert clear["severity"] == "info", clear
        row = f"#alert-{silence['id']}[data-cleared-by='{clear['id']}']"
        page.wait_for_selector(row)
        assert page.text_content(f"{row} .cleared") == f"cleared at {hms(clear['event_time_ms'])}"
        assert not page.query_selector(f"#alert-{clear['id']}"), "the folded clear has a row of its own"
        assert "clear folded" in page.text_content("#alerts-shown")
        # Info alerts only: the cleared alert is not listed, so the clear is a row.
        page.select_option("#filter-severity", "info")
        page.wait_for_selector(f"#alert-{clear['id']}")
        text = page.text_content(f"#alert-{clear['id']} .clears")
        assert text == f"Readings back: clears alert {silence['id']}", text
        page.select_option("#filter-severity", "")
        page.wait_for_selector(row)
    finally:
        server.request("DELETE", f"/api/rules/{rid}?reason=test+done")
    print(f"  clears: {clear['id']} folded into {silence['id']} (cleared at {hms(clear['event_time_ms'])});"
          f" a row of its own without it ({time.monotonic() - t0:.1f} s)")


def check_deactivate(page, server):
    """Deactivating asks why (the reason is required) and the server keeps
    who, when and why; the rule moves to the folded list of deactivated
    rules, from where Reactivate makes it run again."""
    rule = next(r for r in server.get("/api/rules")["rules"] if r["state"] == "active" and "SpO2" not in r["name"])
    rid = rule["id"]
    page.click(f"#deactivate-{rid}")
    page.wait_for_selector("#deactivate-dialog", state="visible")
    assert page.evaluate("document.activeElement.id") == "deactivate-reason"
    page.click("#deactivate-submit")
    page.wait_for_selector("#deactivate-error:not([hidden])")
    assert server.get(f"/api/rules/{rid}")["active"] is True, "deactivated without a reason"
    reason = f"Too noisy on ward 3 & during rounds ({os.getpid()})"
    page.fill("#deactivate-reason", reason)
    assert page.text_content("#deactivate-count") == f"{len(reason)} of 500 characters"
    page.click("#deactivate-submit")
    page.wait_for_selector("#deactivate-dialog", state="hidden")
    stopped = wait_until("the server to deactivate it", lambda: (lambda r: not r["active"] and r)(server.get(f"/api/rules/{rid}")))
    d = stopped["deactivation"]
    assert d and d["reason"] == reason and d["by"] and d["at_ms"] > 0, stopped

    # Folded away, with who, when and why once opened.
    art = f"#rules-deactivated #rule-{rid}"
    page.wait_for_selector(art, state="attached")
    assert not page.is_visible(art), "the deactivated list is not folded"
    page.click("#rules-deactivated > summary")
    text = page.text_content(f"{art} .deactivation")
    assert d["by"] in text and reason in text, text
    ratios = page.eval_on_selector_all(f"{art} .deactivation span, {art} .deactivation q, #rules-deactivated > summary, {art} .rule-meta", CONTRAST_JS)
    assert len(ratios) >= 3 and all(c["ratio"] >= 4.5 for c in ratios), ratios
    assert not page.query_selector(f"#rules > #rule-{rid}"), "still among the running rules"
    page.click(f"#reactivate-{rid}")
    page.wait_for_selector(f"#rules > #rule-{rid}[data-state='active']")
    back = server.get(f"/api/rules/{rid}")
    assert back["active"] is True and back["deactivation"] is None, back
    print(f"  deactivate: {rule['name']!r} asked for a reason, kept by the server ({d['by']}: {reason!r}),"
          f" listed apart, reactivated")


TUNING_JS = """
id => {
  const t = document.getElementById("tuning-" + id);
  if (!t || !t.dataset.buckets) return null;
  return {
    since: Number(t.dataset.since), until: Number(t.dataset.until), bucket: Number(t.dataset.bucketMs),
    buckets: Number(t.dataset.buckets), points: Number(t.querySelector(".tuning-chart").dataset.points),
    summary: t.querySelector(".tuning-summary").textContent,
    rows: [...t.querySelectorAll(".tuning-table tbody tr")].map(tr =>
      [Number(tr.dataset.startMs), Number(tr.cells[1].textContent), Number(tr.cells[2].textContent)]),
    canvas: !!t.querySelector(".tuning-chart canvas")
  };
}
"""


def check_tuning(page, server):
    """A rule's tuning chart: the buckets the server answers for the same
    range, drawn (every bucket of the range a point) and as a table, with
    the suppressed share."""
    # The running rule with the most alerts in the last hour, so there is something to chart.
    now = int(time.time() * 1000)
    def alerts_of(rid):
        answer = server.get(f"/api/rules/{rid}/alert-rate?since={now - 3600000}&until={now + 60000}&bucket_ms=60000")
        return sum(b["fired"] + b["suppressed"] for b in answer["buckets"])
    rid = max((r["id"] for r in server.get("/api/rules")["rules"] if r["active"]), key=alerts_of)
    page.click(f"#tuning-toggle-{rid}")
    assert page.get_attribute(f"#tuning-toggle-{rid}", "aria-expanded") == "true"

    def same_as_server():
        shown = page.evaluate(TUNING_JS, rid)
        if not shown:
            return None
        answer = server.get(f"/api/rules/{rid}/alert-rate?since={shown['since']}&until={shown['until']}"
                            f"&bucket_ms={shown['bucket']}")
        want = [[b["start_ms"], b["fired"], b["suppressed"]] for b in answer["buckets"]]
        return shown["rows"] == want and shown["buckets"] == len(want) and want and (shown, answer)
    shown, answer = wait_until("the tuning chart to match the server", same_as_server, 15)
    fired = sum(b["fired"] for b in answer["buckets"])
    suppressed = sum(b["suppressed"] for b in answer["buckets"])
    assert shown["canvas"], "no chart drawn"
    assert shown["points"] == (shown["until"] - shown["since"]) // shown["bucket"], shown
    assert f"{fired:,} fired, {suppressed:,} suppressed" in shown["summary"], shown["summary"]
    share = round(100 * suppressed / (fired + suppressed))
    assert f"{share}% suppressed" in shown["summary"], shown["summary"]
    ratios = page.eval_on_selector_all(f"#tuning-{rid} .tuning-summary, #tuning-{rid} label, #tuning-{rid} .u-legend th, #tuning-{rid} summary", CONTRAST_JS)
    assert len(ratios) >= 3 and all(c["ratio"] >= 4.5 for c in ratios), ratios
    # It stays open (and drawn) across the rules list's 5-second redraws.
    time.sleep(5.5)
    assert page.evaluate(TUNING_JS, rid)["canvas"], "the chart went with a redraw"
    print(f"  tuning: {len(answer['buckets'])} buckets with alerts as the server answers ({fired} fired,"
          f" {suppressed} suppressed, {share}% suppressed), {shown['points']} points drawn")
    page.click(f"#tuning-toggle-{rid}")
    page.wait_for_selector(f"#tuning-{rid}", state="detached")


def hms(ms):
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def check_trend(page, server, key=None):
    """A patient's vitals around a windowed alert: the page asks for the
    window with 10 minutes either side, draws every reading the server
    answered, and names the shaded window as the server gives it."""
    target = wait_until("a windowed alert in the worklist", lambda: [r for r in rows(page) if r["windowStart"]], 60)[0]
    alert = next(a for a in server.get(f"/api/alerts?rule={target['ruleId']}&limit=10000", key=key)["alerts"]
                 if a["id"] == target["id"])
    with page.expect_response(lambda r: "/api/patients/" in r.url) as resp:
        page.click(f"#alert-{target['id']} button.trend-link")
    answer = resp.value.json()
    page.wait_for_selector("#trend-dialog", state="visible")
    page.wait_for_selector("#trend-charts[data-points]")
    ws, we = alert["window_start_ms"], alert["window_end_ms"]
    caption = page.text_content("#trend-window")
    assert caption == f"Alert window {hms(ws)}–{hms(we)} (shaded)", (caption, ws, we)
    assert (int(page.get_attribute("#trend-window", "data-start-ms")), int(page.get_attribute("#trend-window", "data-end-ms"))) == (ws, we)
    since, until = int(page.get_attribute("#trend-charts", "data-since")), int(page.get_attribute("#trend-charts", "data-until"))
    assert since == ws - 600000 and we < until <= we + 600000, (since, until, ws, we)
    readings = answer["readings"]
    assert readings and answer["patient_id"] == target["patient"], answer.get("patient_id")
    assert int(page.get_attribute("#trend-charts", "data-points")) == len(readings)
    figs = page.eval_on_selector_all("#trend-charts figure", "fs => fs.map(f => [f.dataset.series, Number(f.dataset.points), Number(f.dataset.values), !!f.querySelector('canvas')])")
    assert len(figs) == 4 and all(n == len(readings) and c for _, n, _, c in figs), figs
    hr = next(v for s, _, v, _ in figs if s == "heart_rate_bpm")
    assert hr == sum(1 for r in readings if r["heart_rate_bpm"] is not None), (hr, figs)
    # Asked again for the same range, the server has those readings (and
    # perhaps a few that were still on their way).
    again = server.get(f"/api/patients/{target['patient']}/vitals?since={since}&until={until}", key=key)["readings"]
    assert {r["event_time_ms"] for r in readings} <= {r["event_time_ms"] for r in again}
    assert all(since <= r["event_time_ms"] < until or r["event_time_ms"] == until for r in readings)
    assert alert["explanation"]["condition"] in page.text_content("#trend-explanation")
    ratios = page.eval_on_selector_all("#trend-window, #trend-status, #trend-heading, .trend-chart figcaption, #trend-explanation dd", CONTRAST_JS)
    assert all(c["ratio"] >= 4.5 for c in ratios), [c for c in ratios if c["ratio"] < 4.5]
    if key is None:
        shoot(page, "trend")
    page.keyboard.press("Escape")
    page.wait_for_selector("#trend-dialog", state="hidden")
    assert page.evaluate("document.activeElement.classList.contains('trend-link')"), "focus not back on the row"
    print(f"  patient trend: {target['patient']} {len(readings)} readings in 4 charts, window"
          f" {hms(ws)}–{hms(we)} shaded and named")
    if key is not None:
        return
    # A per-event alert: 15 minutes either side of its moment, drawn as a line.
    one = wait_until("a per-event alert in the worklist", lambda: [r for r in rows(page) if not r["windowStart"]], 30)[0]
    page.click(f"#alert-{one['id']} button.trend-link")
    page.wait_for_selector("#trend-charts[data-points]")
    assert page.text_content("#trend-window") == f"Alert at {hms(one['time'])} (the vertical line)"
    since, until = int(page.get_attribute("#trend-charts", "data-since")), int(page.get_attribute("#trend-charts", "data-until"))
    # (Up to now: a reading may be dated a little ahead of the clock.)
    assert since == one["time"] - 900000 and since < until <= one["time"] + 900000, (since, until, one)
    page.click("#trend-close")
    page.wait_for_selector("#trend-dialog", state="hidden")
    print(f"  patient trend: per-event alert of {one['patient']} at {hms(one['time'])} marked by a line")


def check_audit_desk(page, server):
    """An auditor saves a query (in the browser), finds it after a reload,
    runs it from the list, and sees that run in the audit log table; the
    replay audits and dead letters of the range are the server's."""
    tag = f"saved-{os.getpid()}"
    sql = f"SELECT '{tag}' AS tag, severity, count(*) AS n FROM rules GROUP BY severity ORDER BY severity"
    name = f"Rules by severity {os.getpid()}"
    page.fill("#history-sql", sql)
    page.fill("#saved-query-name", name)
    page.click("#saved-query-save")
    wait_until("saved", lambda: "Saved" in page.text_content("#saved-query-status"))
    page.reload()
    item = f'#saved-queries li[data-name="{name}"]'
    page.wait_for_selector(item)
    page.fill("#history-sql", "")
    status, before = server.request("POST", "/api/query", {"sql": "SELECT max(seq) AS s FROM audit_log"})
    assert status == 200, before
    first_seq = before["rows"][0]["s"]
    page.click(f"{item} button.saved-run")
    wait_until("the saved query's rows", lambda: page.query_selector_all("#history-rows tr")
               and "rows in" in page.text_content("#history-status"))
    shown = [[td.text_content() for td in tr.query_selector_all("td")] for tr in page.query_selector_all("#history-rows tr")]
    # Asked only now, so the page's run is the first of this SQL in the audit log.
    status, answer = server.request("POST", "/api/query", {"sql": sql})
    assert status == 200, answer
    want = [[tag, r["severity"], str(r["n"])] for r in answer["rows"]]
    assert shown == want, (shown, want)
    assert page.input_value("#history-sql") == sql

    # The audit log of the last hour has that run: the first history_query
    # of this SQL recorded after it started.
    status, records = server.request("POST", "/api/query", {"sql":
        f"SELECT seq, details FROM audit_log WHERE action = 'history_query' AND seq > {first_seq} ORDER BY seq"})
    run = next(r for r in records["rows"] if json.loads(r["details"])["sql"] == sql)
    page.select_option("#audit-view", "audit")
    page.click("#audit-last-hour")
    row = f'#audit-rows tr[data-seq="{run["seq"]}"]'
    page.wait_for_selector(row)
    cells = [td.text_content() for td in page.query_selector_all(f"{row} td")]
    assert cells[2] == "history_query" and tag in cells[4], cells
    frm, to = int(page.get_attribute("#audit-table", "data-from")), int(page.get_attribute("#audit-table", "data-to"))
    assert to - frm == 3600000, (frm, to)
    shoot(page, "audit", "#history-panel")

    # Replay audits: the range's audit records whose action is replay (the
    # backtests of the rule workshop made some).
    page.select_option("#audit-view", "replay")
    status, replays = server.request("POST", "/api/query", {"sql":
        f"SELECT seq FROM audit_log WHERE action = 'replay' AND at >= to_timestamp_millis({frm})"
        f" AND at < to_timestamp_millis({to}) ORDER BY seq DESC"})
    assert status == 200 and replays["rows"], replays
    want = [str(r["seq"]) for r in replays["rows"]]
    wait_until("the replay audits", lambda: page.get_attribute("#audit-table", "data-view") == "replay"
               and page.eval_on_selector_all("#audit-rows tr", "trs => trs.map(t => t.dataset.seq)") == want)

    # Dead letters received in the range, among the newest the server lists.
    page.select_option("#audit-view", "dead")
    letters = server.get("/api/dead-letters?limit=1000")["dead_letters"]
    def dead_shown():
        if page.get_attribute("#audit-table", "data-view") != "dead":
            return None
        shown = page.eval_on_selector_all("#audit-rows tr", "trs => trs.map(t => Number(t.dataset.receivedMs))")
        inside = [d["received_at_ms"] for d in letters if frm <= d["received_at_ms"] < to]
        # The server may have received more since it was asked.
        return shown and set(inside) <= set(shown) | {x for x in inside if x > max(shown)} and shown
    shown = wait_until("the dead letters", dead_shown)
    assert all(frm <= t < to for t in shown), shown
    ratios = page.eval_on_selector_all("#audit-rows td, #saved-queries li span, #saved-queries code", CONTRAST_JS)
    assert all(c["ratio"] >= 4.5 for c in ratios), [c for c in ratios if c["ratio"] < 4.5]
    page.click(f"{item} button.saved-delete")
    page.wait_for_selector(item, state="detached")
    print(f"  audit desk: saved query run after a reload ({len(want)} replay audits, {len(shown)} dead letters"
          f" in the range); its run is audit record {run['seq']}")


def check_without_vendor(browser, server):
    """If /vendor.js cannot be loaded (a proxy stripping it, an old cache),
    the page still works: the plain SQL field, checked as typed, and no
    charts rather than broken ones."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/vendor.js", lambda route: route.abort())
    page.goto(server.base + "/")
    wait_until("rows", lambda: rows(page))
    assert page.is_visible("#rule-sql") and page.is_hidden("#rule-sql-editor")
    assert not page.query_selector(".tuning-toggle") and not page.query_selector(".trend-link")
    sql = "SELECT patient_id\nFROM vitals WHERE heart_rate_bmp > 1"
    page.fill("#rule-sql", sql)
    _, answer = server.request("POST", "/api/rules/validate", {"sql": sql})
    err = answer["error"]
    wait_until("the error as text", lambda: page.get_attribute("#rule-sql", "aria-invalid") == "true"
               and page.text_content("#rule-error") == f"line {err['line']}, column {err['column']}: {err['message']}")
    assert not errors, errors
    page.close()
    print("  without vendor.js: the plain SQL field, checked as typed; no charts")


def shoot(page, name, selector=None):
    """Screenshots at both sizes (WARDWATCH_SCREENSHOTS), `selector` in view."""
    if not SHOTS:
        return
    for w, h in ((1400, 1000), (800, 1100)):
        page.set_viewport_size({"width": w, "height": h})
        time.sleep(0.4)  # the charts follow the width after 150 ms
        # Rows just arrived flash for 2.5 s; the pictures show them settled.
        page.evaluate("document.querySelectorAll('#alerts tr.fresh').forEach(tr => tr.classList.remove('fresh'))")
        if selector:
            page.eval_on_selector(selector, "e => e.scrollIntoView({block: 'start'})")
        else:
            page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.path.join(SHOTS, f"{name}-{w}x{h}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})
    time.sleep(0.3)
    page.evaluate("window.scrollTo(0, 0)")


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
    # No identity provider configured: no button for one.
    assert server.get("/api/ui-config") == {"auth_required": True, "login": None}
    assert page.is_hidden("#provider-sign-in")
    assert page.evaluate("document.activeElement.id") == "credential"
    time.sleep(0.5)  # time for any stray request to go out
    assert not rows(page)
    asked = {u.split("?")[0] for u, _ in api_requests}
    assert asked == {"/api/ui-config", "/api/whoami"}, f"asked for {asked} before signing in"

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
    assert not page.is_visible("#rule-sql-editor .cm-content"), "a viewer sees the SQL editor"
    assert not page.query_selector("#rules button.deactivate"), "a viewer sees Deactivate"
    assert not page.query_selector("#rules button.edit"), "a viewer sees Edit"
    assert not page.query_selector("#rules button.tuning-toggle"), "a viewer sees Tuning"
    assert not page.query_selector("#rules button.reactivate"), "a viewer sees Reactivate"
    assert page.is_hidden("#ops-panel"), "a viewer sees the operations strip"
    assert page.is_hidden("#history-panel") and page.is_hidden("#audit-form"), "a viewer sees the audit desk"
    assert not [u for u, _ in api_requests if u.startswith(("/api/rules/validate", "/api/query", "/api/dead-letters"))]

    # The live feed is the fetch stream, with the credential: new alerts
    # arrive as rows without a reload.
    loads = len(api_requests)
    patients = [f"PW-AUTH-{os.getpid()}-{i}" for i in (1, 2)]
    # The nurse asked for a sound on new critical alerts (a click: the page
    # may play sound only after one).
    page.check("#sound-critical")
    server.ingest(*(critical_reading(p) for p in patients))
    for p in patients:
        page.wait_for_selector(f'#alerts tr.alert.fresh[data-patient="{p}"]')
    chimes = int(page.get_attribute("#sound-critical", "data-chimes") or 0)
    assert chimes >= len(patients), f"{chimes} chimes for {len(patients)} new critical alerts"
    page.uncheck("#sound-critical")
    streams = [h for u, h in api_requests if u.startswith("/api/alerts/stream")]
    assert streams and all(h == f"Bearer {key}" for h in streams), "feed opened without the credential"
    # (The 5-second polls for repeats and for acknowledgements made elsewhere are not reloads.)
    reloaded = [u for u, _ in api_requests[loads:] if u.startswith("/api/alerts?")
                and "suppressed" not in u and "acknowledged=true" not in u]
    assert not reloaded, f"the list was reloaded rather than fed live: {reloaded}"

    # Acknowledging: the server records the signed-in name; no name field.
    row = f'#alerts tr.alert[data-patient="{patients[0]}"]'
    page.click(f"{row} button.ack-button")
    assert page.is_hidden("#ack-by-field"), "name field shown with authentication on"
    assert page.text_content("#ack-as").strip() == f"as {name}"
    page.fill("#ack-note", "checked the probe")
    page.click("#ack-submit")
    page.wait_for_selector("#ack-dialog", state="hidden")
    page.wait_for_selector(row, state="detached")
    listed = server.get(f"/api/alerts?patient={patients[0]}&limit=10", key=key)["alerts"]
    assert listed[0]["ack"]["by"] == name, listed[0].get("ack")

    # Someone else was first (409): who, shown in the dialog, then on the row.
    other = f'#alerts tr.alert[data-patient="{patients[1]}"]'
    alert_id = page.get_attribute(other, "data-alert-id")
    page.click(f"{other} button.ack-button")
    status, _ = server.request("POST", f"/api/alerts/{alert_id}/ack", {"note": "from the desk"})
    assert status in (200, 201), status
    page.click("#ack-submit")
    page.wait_for_selector("#ack-error:not([hidden])")
    err = page.text_content("#ack-error")
    assert "already acknowledged by Charge Admin" in err, err
    # The list is asked for again: both have left the unacknowledged worklist.
    page.wait_for_selector(other, state="detached")
    page.click("#ack-cancel")
    page.wait_for_selector("#ack-dialog", state="hidden")
    page.select_option("#filter-ack", "true")
    page.wait_for_selector(f"{other} .ack-info")
    assert "Charge Admin" in page.text_content(f"{other} .ack-info")
    assert name in page.text_content(f"{row} .ack-info")
    page.select_option("#filter-ack", "false")
    wait_until("the unacknowledged rows", lambda: rows(page) and not any(r["acked"] for r in rows(page)))
    # A viewer may see a patient's trend.
    check_trend(page, server, key)
    sign_out(page)
    print(f"  viewer: alerts listed and fed live over fetch; acknowledged as {name!r}; 409 shows {err!r};"
          " a patient's trend; no rule controls, tuning or audit desk; signed out")


def check_admin(page, key):
    """An admin (holding the author's rights) sees the rule controls."""
    sign_in(page, key)
    assert page.text_content("#session-who") == "Signed in as Charge Admin (admin)"
    page.wait_for_selector("#rules button.deactivate")
    assert page.is_visible("#rule-form") and page.is_hidden("#rules-readonly")
    assert page.is_visible("#rule-sql-editor .cm-content") and page.query_selector("#rules button.tuning-toggle")
    assert page.is_visible("#audit-form") and page.is_visible("#saved-query-form")
    page.wait_for_selector("#ops-rule-rows tr")
    assert page.is_visible("#ops-panel") and page.is_visible("#history-panel")
    wait_until("rows", lambda: rows(page))
    sign_out(page)
    assert page.is_hidden("#ops-panel")
    print("  admin: rule editor, Deactivate, Tuning, the audit desk and the operations strip shown")


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

    rid = page.wait_for_selector("#rules button.deactivate").get_attribute("data-rule-id")
    page.click(f"#deactivate-{rid}")
    page.fill("#deactivate-reason", "testing a refusal")
    page.click("#deactivate-submit")
    page.wait_for_selector("#deactivate-dialog", state="hidden")
    page.wait_for_selector(f"#rule-{rid} .rule-action-error")
    err = page.text_content(f"#rule-{rid} .rule-action-error")
    assert "needs the author role" in err and "Temp Viewer" in err, err
    assert server.get(f"/api/rules/{rid}")["active"] is True
    page.fill("#rule-name", "Refused rule")
    set_editor(page, "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 250")
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


# ------------------------------------------- instances on one data directory

INSTANCE_CONFIG = "[instance]\nid = 3\n"


def check_no_instances(page, server):
    """A single instance: the operations strip lists no instances."""
    page.goto(server.base + "/")
    page.wait_for_selector("#ops-panel:not([hidden])")
    wait_until("ops partition", lambda: "local" in (page.text_content("#ops-partition-rows") or ""))
    assert server.get("/api/ops")["instances"] == []
    assert page.is_hidden("#ops-instances") and not page.query_selector("#ops-instances li")
    text = page.inner_text("#ops-panel")
    assert "instance" not in text.lower(), text
    print("  no [instance]: nothing about instances in the operations strip")


def check_instances(page, server, key):
    """With `[instance] id = 3`, an admin's operations strip lists this
    instance as live and one whose file was left behind (planted, 45 s
    silent) as gone, in words and readable."""
    sign_in(page, key)
    page.wait_for_selector("#ops-panel:not([hidden])")
    listed = server.get("/api/ops")["instances"]
    assert [(i["id"], i["live"]) for i in listed] == [(3, True), (7, False)], listed
    page.wait_for_selector('#ops-instances li[data-instance-id="3"]')
    page.wait_for_selector('#ops-instances li[data-instance-id="7"]')
    assert page.is_visible("#ops-instances")
    live = page.text_content('#ops-instances li[data-instance-id="3"]')
    assert live == "instance 3 · all rules · live", live
    gone = page.text_content('#ops-instances li[data-instance-id="7"]')
    m = re.fullmatch(r"instance 7 · patient rules · partitions 0, 1 · gone · last seen (\d+) s ago", gone)
    assert m and 44 <= int(m.group(1)) <= 75, gone
    title = page.get_attribute('#ops-instances li[data-instance-id="3"]', "title")
    assert title.startswith(f"listening on 127.0.0.1:{server.port}, pid {server.proc.pid}"), title
    measured = page.eval_on_selector_all("#ops-instances li, #ops-instances li span", CONTRAST_JS)
    assert len(measured) == 4, measured
    for c in measured:
        assert c["opacity"] == 1, f"drawn translucent: {c}"
        assert c["ratio"] >= 4.5, f"contrast {c['ratio']:.2f}:1 below 4.5:1: {c}"
    sign_out(page)
    assert page.is_hidden("#ops-panel")
    print(f"  instances: {live!r}; {gone!r}; contrast >= 4.5:1")


def run_instances(browser, work):
    """`serve --demo` without [instance] (no instances listed), then
    `serve --demo --auth` with `[instance] id = 3` signed in as an admin."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(10000)
    page_errors = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    single = os.path.join(work, "single")
    os.makedirs(single)
    server = Server(single)
    try:
        check_no_instances(page, server)
    except BaseException:
        dump_log(server)
        raise
    finally:
        server.kill()

    shared = os.path.join(work, "shared")
    os.makedirs(os.path.join(shared, "data", "instances"))
    # Another instance's file, left by a process killed 45 s after its
    # last announcement: listed as gone.
    now = int(time.time() * 1000)
    with open(os.path.join(shared, "data", "instances", "i7.json"), "w") as f:
        json.dump({"id": 7, "role": "patient_rules", "partitions": [0, 1], "listen": "127.0.0.1:1",
                   "pid": 1, "started_at_ms": now - 600000, "seen_at_ms": now - 45000}, f)
    admin = make_key(shared, "Charge Admin", "admin")
    server = Server(shared, auth=True, key=admin, more_config=INSTANCE_CONFIG)
    try:
        page.goto(server.base + "/")
        check_instances(page, server, admin)
        assert not page_errors, f"uncaught errors: {page_errors}"
        page.close()
    except BaseException:
        dump_log(server)
        raise
    finally:
        server.kill()


def test_instances_strip():
    """For pytest: run_instances alone, in a browser of its own."""
    assert os.path.exists(BIN), f"no server binary at {BIN}: cargo build -p wardwatch"
    with tempfile.TemporaryDirectory(prefix="wardwatch-browser-") as work, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            run_instances(browser, work)
        finally:
            browser.close()


# ----------------------------------------- sign-in through the identity provider
#
# A third server, `serve --demo --auth` with [auth.ui_login], and a small
# OpenID provider of our own: an authorization endpoint with a login form
# and a token endpoint that checks PKCE, signing ES256 tokens whose public
# key the server reads from its JWKS file.

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier):
    return b64url(hashlib.sha256(verifier.encode()).digest())


IDP_LOGIN_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test IdP: sign in</title>
<link rel="icon" href="data:,"></head>
<body><h1>Test IdP</h1>{error}
<form method="post" action="/authorize">{hidden}
<label for="username">User name</label> <input id="username" name="username" autocomplete="username" autofocus>
<button type="submit" name="action" value="sign_in">Sign in</button>
<button type="submit" name="action" value="cancel">Cancel</button>
</form></body></html>
"""


class TestIdP:
    """An OpenID provider for one public client, as a hospital's Keycloak
    would be set up for the page: the code goes only to the registered
    redirect URI, the token endpoint wants the code once, the same
    redirect_uri and client_id, and the verifier whose S256 is the challenge;
    it answers the wardwatch origin's CORS. Tokens last `USERS[…][2]` s."""

    __test__ = False  # a helper, not a pytest test class

    CLIENT_ID = "wardwatch-ui"
    AUDIENCE = "wardwatch"
    NAME = "Test IdP"
    CANCELLED = "The user cancelled signing in"
    USERS = {
        "ana": ("Ana Author", ["author"], 600),
        "victor": ("Victor Viewer", ["viewer"], 600),
        "sam": ("Sam Shortshift", ["viewer"], 4),
    }

    def __init__(self, workdir):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = f"test-idp-{os.getpid()}"
        self.web_origin = None  # wardwatch's, once it listens
        self.codes = {}  # code -> what /authorize granted
        self.authorize_requests = []  # query of each GET /authorize
        self.token_requests = []  # (headers, form, status) of each POST /token
        self.lock = threading.Lock()
        numbers = self.key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
               "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}
        self.jwks_file = os.path.join(workdir, "idp-jwks.json")
        with open(self.jwks_file, "w") as f:
            json.dump({"keys": [jwk]}, f)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.issuer = self.base + "/realms/test"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def redirect_uri(self):
        return self.web_origin + "/"

    def config(self):
        """The server's [auth] for this provider (roles where Keycloak has them)."""
        return f"""
[auth]
jwks_file = "{self.jwks_file}"
issuer = "{self.issuer}"
audience = "{self.AUDIENCE}"
roles_claim = "realm_access.roles"
leeway_seconds = 0
[auth.ui_login]
authorization_endpoint = "{self.base}/authorize"
token_endpoint = "{self.base}/token"
client_id = "{self.CLIENT_ID}"
name = "{self.NAME}"
"""

    def sign(self, claims):
        """A JWS ES256 compact token: r||s, not the DER the library gives."""
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = (b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())).encode()
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return signing_input.decode() + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def access_token(self, user):
        name, roles, lifetime = self.USERS[user]
        now = int(time.time())
        return self.sign({"iss": self.issuer, "aud": self.AUDIENCE, "azp": self.CLIENT_ID, "sub": f"idp-{user}",
                          "name": name, "realm_access": {"roles": roles}, "scope": "openid profile",
                          "iat": now, "exp": now + lifetime}), lifetime

    def authorize_refusal(self, q):
        """Why an authorization request is refused (shown, never redirected), or None."""
        if q.get("client_id") != self.CLIENT_ID:
            return "unknown client_id"
        if q.get("redirect_uri") != self.redirect_uri():
            return "redirect_uri not registered"
        if q.get("response_type") != "code":
            return "response_type must be code"
        if q.get("code_challenge_method") != "S256" or not re.fullmatch(r"[A-Za-z0-9_-]{43}", q.get("code_challenge", "")):
            return "PKCE with S256 required"
        return None

    def handler(self):
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status, body, content_type, headers=()):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def form(self):
                n = int(self.headers.get("Content-Length") or 0)
                return dict(urllib.parse.parse_qsl(self.rfile.read(n).decode(), keep_blank_values=True))

            def login_form(self, q, error=""):
                hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                                 for k, v in q.items() if k not in ("username", "action"))
                self.answer(200, IDP_LOGIN_FORM.format(hidden=hidden, error=error), "text/html; charset=utf-8")

            def redirect(self, q, **params):
                params["state"] = q.get("state", "")
                self.send_response(302)
                self.send_header("Location", q["redirect_uri"] + "?" + urllib.parse.urlencode(params))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/favicon.ico":
                    return self.answer(204, "", "text/plain")
                if url.path != "/authorize":
                    return self.answer(404, "not found", "text/plain")
                q = dict(urllib.parse.parse_qsl(url.query))
                with idp.lock:
                    idp.authorize_requests.append(q)
                refusal = idp.authorize_refusal(q)
                if refusal:
                    return self.answer(400, "invalid_request: " + refusal, "text/plain")
                self.login_form(q)

            def do_POST(self):
                if self.path == "/authorize":
                    return self.post_authorize()
                if self.path == "/token":
                    return self.post_token()
                self.answer(404, "not found", "text/plain")

            def post_authorize(self):
                q = self.form()
                refusal = idp.authorize_refusal(q)
                if refusal:
                    return self.answer(400, "invalid_request: " + refusal, "text/plain")
                if q.get("action") == "cancel":
                    return self.redirect(q, error="access_denied", error_description=idp.CANCELLED)
                user = q.get("username", "").strip()
                if user not in idp.USERS:
                    return self.login_form(q, '<p role="alert">Unknown user.</p>')
                code = secrets.token_urlsafe(24)
                with idp.lock:
                    idp.codes[code] = {"user": user, "challenge": q["code_challenge"], "used": False,
                                       "redirect_uri": q["redirect_uri"], "client_id": q["client_id"]}
                self.redirect(q, code=code)

            def cors(self):
                # Like Keycloak's "web origins": only the registered origin may read answers.
                origin = self.headers.get("Origin")
                if origin and origin == idp.web_origin:
                    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
                return [("Vary", "Origin")]

            def do_OPTIONS(self):
                if self.path != "/token":
                    return self.answer(404, "not found", "text/plain")
                self.answer(204, "", "text/plain", self.cors() + [
                    ("Access-Control-Allow-Methods", "POST"),
                    ("Access-Control-Allow-Headers", "Content-Type, Accept"),
                    ("Access-Control-Max-Age", "600")])

            def post_token(self):
                form = self.form()
                status, body = self.exchange(form)
                with idp.lock:
                    idp.token_requests.append((dict(self.headers), form, status))
                self.answer(status, json.dumps(body), "application/json", self.cors())

            def exchange(self, form):
                def refuse(error, why):
                    return 400, {"error": error, "error_description": why}
                if self.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
                    return refuse("invalid_request", "form body expected")
                if form.get("grant_type") != "authorization_code":
                    return refuse("unsupported_grant_type", "authorization_code only")
                with idp.lock:
                    grant = idp.codes.get(form.get("code", ""))
                    if not grant or grant["used"]:
                        return refuse("invalid_grant", "unknown or used code")
                    if form.get("client_id") != grant["client_id"]:
                        return refuse("invalid_client", "not the client the code was given to")
                    if form.get("redirect_uri") != grant["redirect_uri"]:
                        return refuse("invalid_grant", "redirect_uri differs from the authorization request")
                    if s256(form.get("code_verifier", "")) != grant["challenge"]:
                        return refuse("invalid_grant", "PKCE verification failed")
                    grant["used"] = True
                token, lifetime = idp.access_token(grant["user"])
                return 200, {"access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                             "scope": "openid profile"}

        return Handler

    def code_for(self, user, challenge, state="direct"):
        """A code for `user` as the login form would give it, asked for
        without a browser (the redirect is read, not followed)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.httpd.server_address[1], timeout=10)
        conn.request("POST", "/authorize", urllib.parse.urlencode({
            "client_id": self.CLIENT_ID, "redirect_uri": self.redirect_uri(), "response_type": "code",
            "scope": "openid profile", "state": state, "code_challenge": challenge,
            "code_challenge_method": "S256", "username": user, "action": "sign_in"}),
            {"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 302, resp.status
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.getheader("Location")).query))
        assert q["state"] == state, q
        return q["code"]

    def token(self, form):
        """POST /token as a server-side client would: (status, answer)."""
        req = urllib.request.Request(self.base + "/token", data=urllib.parse.urlencode(form).encode(),
                                     method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def no_csp_violations(page):
    violations = page.evaluate("window.__cspViolations")
    assert violations == [], f"CSP violations since the last load: {violations}"


def provider_sign_in(page, idp, server, user, keyboard=False):
    """Signs in at the provider's form as a person would; back on the page
    signed in. Returns the token exchange the IdP saw."""
    exchanges = len(idp.token_requests)
    if keyboard:
        assert page.evaluate("document.activeElement.id") == "provider-sign-in-button", "button not focused"
        page.keyboard.press("Enter")
    else:
        page.click("#provider-sign-in-button")
    page.wait_for_url(idp.base + "/authorize?**")
    page.wait_for_selector("#username")
    if keyboard:
        assert page.evaluate("document.activeElement.id") == "username"
        page.keyboard.type(user)
        page.keyboard.press("Enter")
    else:
        page.fill("#username", user)
        page.click("button[value=sign_in]")
    page.wait_for_url(server.base + "/**")
    page.wait_for_selector("#session:not([hidden]), #sign-in-error:not([hidden])")
    assert page.is_visible("#session"), f"not signed in: {page.text_content('#sign-in-error')!r}"
    assert len(idp.token_requests) == exchanges + 1, "not one token request"
    return idp.token_requests[-1]


def check_provider_sign_in(page, server, idp):
    """The author signs in at the provider: the page sends a fresh S256
    challenge, spends the code once with its verifier, and keeps the token
    as a pasted one; the server takes the token for the IdP's user."""
    ui = server.get("/api/ui-config")
    assert ui["auth_required"] is True and ui["login"]["name"] == idp.NAME, ui
    page.goto(server.base + "/")
    page.wait_for_selector("#provider-sign-in-button")
    label = page.text_content("#provider-sign-in-button")
    assert label == "Sign in with " + ui["login"]["name"], label
    assert page.is_visible("#sign-in-form") and page.is_hidden("#alerts-panel")
    # The button comes before the paste form, and takes the focus.
    assert page.evaluate("""() => !!(document.getElementById('provider-sign-in-button')
        .compareDocumentPosition(document.getElementById('credential')) & Node.DOCUMENT_POSITION_FOLLOWING)""")
    assert page.evaluate("document.activeElement.id") == "provider-sign-in-button"

    headers, form, status = provider_sign_in(page, idp, server, "ana")
    asked = idp.authorize_requests[-1]
    assert {k: asked[k] for k in ("response_type", "client_id", "redirect_uri", "scope", "code_challenge_method")} == {
        "response_type": "code", "client_id": ui["login"]["client_id"], "redirect_uri": server.base + "/",
        "scope": ui["login"]["scope"], "code_challenge_method": "S256"}, asked
    assert len(asked["state"]) >= 22, asked
    assert status == 200, (form, status)
    assert set(form) == {"grant_type", "code", "redirect_uri", "client_id", "code_verifier"}, form
    assert re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", form["code_verifier"]), form["code_verifier"]
    assert s256(form["code_verifier"]) == asked["code_challenge"]
    assert headers.get("Origin") == server.base, headers
    assert not headers.get("Authorization") and not headers.get("Cookie"), "credentials sent to the IdP"

    # Signed in as the token's user, with what the server gives that token.
    assert page.text_content("#session-who") == "Signed in as Ana Author (author)"
    token, local = session_credential(page)
    who = server.get("/api/whoami", key=token)
    assert (who["name"], who["roles"], who["auth_required"]) == ("Ana Author", ["author"], True), who
    assert token.count(".") == 2 and token not in local, "the token is not kept as a pasted one is"
    assert "code=" not in page.url and urllib.parse.urlsplit(page.url).query == "", page.url
    assert page.evaluate("sessionStorage.getItem('wardwatch.login')") is None, "verifier kept after use"
    page.wait_for_selector("#rules button.deactivate")
    assert page.is_visible("#rule-form") and page.is_hidden("#rules-readonly")
    wait_until("rows", lambda: rows(page))
    no_csp_violations(page)
    sign_out(page)
    print(f"  provider: 'Sign in with {idp.NAME}' → its form → signed in as Ana Author (author), as whoami says"
          " with the kept token; S256 challenge of the verifier sent; address cleaned")


def check_provider_refusals(page, server, idp):
    """A return this tab did not start, the provider's own error, and a
    verifier that does not match the challenge are all refused."""
    # (a) Someone else's code in a link, while this tab is at the provider.
    planted = idp.code_for("ana", s256(secrets.token_urlsafe(32)), state="attacker")
    exchanges = len(idp.token_requests)
    page.click("#provider-sign-in-button")
    page.wait_for_url(idp.base + "/authorize?**")
    page.goto(f"{server.base}/?code={planted}&state=attacker")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    shown = page.text_content("#sign-in-error")
    assert "does not match a sign-in started in this tab" in shown, shown
    assert page.is_hidden("#session") and page.is_hidden("#alerts-panel")
    assert session_credential(page)[0] is None and urllib.parse.urlsplit(page.url).query == "", page.url
    assert len(idp.token_requests) == exchanges and not idp.codes[planted]["used"], "the planted code was spent"

    # (b) The provider says no: its error_description is shown.
    page.click("#provider-sign-in-button")
    page.wait_for_url(idp.base + "/authorize?**")
    page.click("button[value=cancel]")
    page.wait_for_url(server.base + "/**")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    cancelled = page.text_content("#sign-in-error")
    assert cancelled == f"Not signed in with {idp.NAME}: {idp.CANCELLED} (access_denied)", cancelled
    assert page.is_hidden("#session") and session_credential(page)[0] is None

    # (c) The IdP checks PKCE: a wrong verifier is refused, the right one
    # (once) is not; so the page's successful exchanges sent the right one.
    verifier = secrets.token_urlsafe(32)
    code = idp.code_for("victor", s256(verifier))
    exchange = {"grant_type": "authorization_code", "code": code, "client_id": idp.CLIENT_ID,
                "redirect_uri": idp.redirect_uri()}
    wrong = idp.token(dict(exchange, code_verifier=secrets.token_urlsafe(32)))
    assert wrong == (400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}), wrong
    status, right = idp.token(dict(exchange, code_verifier=verifier))
    assert status == 200 and server.get("/api/whoami", key=right["access_token"])["name"] == "Victor Viewer", right
    again = idp.token(dict(exchange, code_verifier=verifier))
    assert again[0] == 400 and again[1]["error"] == "invalid_grant", again
    no_csp_violations(page)
    print(f"  provider refusals: a planted code with a wrong state not spent ({shown!r}); the provider's error"
          f" shown ({cancelled!r}); the IdP answers 400 invalid_grant to a wrong verifier and to a used code")


def check_provider_viewer(page, server, idp):
    """A viewer signs in through the provider with the keyboard only, and
    sees no rule editor."""
    page.wait_for_selector("#sign-in-panel", state="visible")
    provider_sign_in(page, idp, server, "victor", keyboard=True)
    assert page.text_content("#session-who") == "Signed in as Victor Viewer (viewer)"
    who = server.get("/api/whoami", key=session_credential(page)[0])
    assert (who["name"], who["roles"]) == ("Victor Viewer", ["viewer"]), who
    page.wait_for_selector("#rules article.rule")
    assert page.is_hidden("#rule-form") and page.is_visible("#rules-readonly")
    assert not page.query_selector("#rules button.deactivate") and page.is_hidden("#history-panel")
    wait_until("rows", lambda: rows(page))
    sign_out(page)
    print("  provider viewer: signed in with the keyboard only; rules read-only, no editor or audit desk")


def check_provider_expiry(page, server, idp):
    """A token that expires signs the page out (the polls get 401); the
    button signs in again."""
    provider_sign_in(page, idp, server, "sam")
    token = session_credential(page)[0]
    lifetime = idp.USERS["sam"][2]
    t0 = time.monotonic()
    page.wait_for_selector("#sign-in-panel", state="visible", timeout=(lifetime + 12) * 1000)
    took = time.monotonic() - t0
    _, refusal = server.request("GET", "/api/whoami", key=token)
    shown = page.text_content("#sign-in-error")
    assert shown == "Signed out: " + refusal["error"]["message"], (shown, refusal)
    assert session_credential(page)[0] is None and page.is_visible("#provider-sign-in-button")
    provider_sign_in(page, idp, server, "ana")
    assert page.text_content("#session-who") == "Signed in as Ana Author (author)"
    sign_out(page)
    print(f"  provider expiry: a {lifetime} s token signed out after {took:.1f} s ({shown!r}); the button signed in again")


def run_provider(browser, work):
    idp = TestIdP(work)
    server = None
    try:
        server = Server(work, auth=True, more_config=idp.config())
        idp.web_origin = server.base
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(10000)
        console_errors, page_errors, csp_console = [], [], []
        page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
        page.on("console", lambda m: "Content Security Policy" in m.text and csp_console.append(m.text))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.add_init_script(CSP_WATCH)

        check_provider_sign_in(page, server, idp)
        check_provider_refusals(page, server, idp)
        check_provider_viewer(page, server, idp)
        check_provider_expiry(page, server, idp)
        check_csp(page, server, csp_console)
        with urllib.request.urlopen(server.base + "/", timeout=10) as resp:
            policy = resp.headers.get("Content-Security-Policy")
        assert f"connect-src 'self' {idp.base};" in policy, policy
        assert not page_errors, f"uncaught errors: {page_errors}"
        # Only the expired token's refusals may be logged.
        unexpected = [m for m in console_errors if not re.search(r"status of 401", m)]
        assert not unexpected, f"console errors: {unexpected}"
        context.close()
    except BaseException:
        if server:
            dump_log(server)
        raise
    finally:
        if server:
            server.kill()
        idp.stop()


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
        check_rule_fields(page, server)
        check_deactivate(page, server)
        check_tuning(page, server)
        check_trend(page, server)
        check_history(page, server)
        check_audit_desk(page, server)
        for check in (check_acknowledge, check_rule_states, check_paging, check_clears):
            check(page, server)
        check_contrast(page)
        check_tablet(page, server)
        check_keyboard(page, server)
        check_csp(page, server, csp_console)
        check_without_vendor(page.context.browser, server)
        assert not page_errors, f"uncaught errors: {page_errors}"
        # The one refusal check_acknowledge provokes is logged by the browser too.
        refused = [m for m in console_errors if re.search(r"status of 400 .*/api/alerts/\w+/ack\]$", m)]
        assert len(refused) == 1, f"expected the provoked 400: {console_errors}"
        console_errors = [m for m in console_errors if m not in refused]
        # And the one wrong query check_history runs.
        wrong_query = [m for m in console_errors if re.search(r"status of 400 .*/api/query\]$", m)]
        assert len(wrong_query) == 1, f"expected the provoked 400 of the query: {console_errors}"
        console_errors = [m for m in console_errors if m not in wrong_query]
        # And the rule the form sent with an escalation column not output.
        esc = [m for m in console_errors if re.search(r"status of 400 .*/api/rules\]$", m)]
        assert len(esc) == 1, f"expected the provoked 400 of saving a rule: {console_errors}"
        console_errors = [m for m in console_errors if m not in esc]
        # And the rule workshop's checks of SQL with an error, as it was typed.
        typed = [m for m in console_errors if re.search(r"status of 400 .*/api/rules/validate\]$", m)]
        assert typed, f"expected the 400s of checking the typed error: {console_errors}"
        console_errors = [m for m in console_errors if m not in typed]
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
        for name, run, how in (("auth-off", run_auth_off, "serve --demo"),
                               ("auth-on", run_auth_on, "serve --demo --auth"),
                               ("provider", run_provider, "serve --demo --auth, [auth.ui_login] at a test IdP"),
                               ("instances", run_instances, "serve --demo, then --auth with [instance] id = 3")):
            t0 = time.monotonic()
            print(f"{name}: {how}")
            os.makedirs(os.path.join(work, name))
            run(browser, os.path.join(work, name))
            print(f"{name}: passed in {time.monotonic() - t0:.1f} s")
        browser.close()
    print(f"browser tests passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
