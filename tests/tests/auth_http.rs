//! Issue 14: who may do what, over real HTTP.
//!
//! A server with authentication on, trusting an identity provider whose
//! JWKS is a file holding a P-256 key made here (the tokens are signed with
//! its private half, as a provider would), and API keys for services:
//!
//! - every route the OpenAPI document lists answers 401 (with a
//!   `WWW-Authenticate` challenge) without credentials, except the public
//!   ones; each role gets exactly the routes of the table below and 403
//!   naming the role for the rest;
//! - tokens that are expired, for another audience or issuer, signed by
//!   another key or with a shared secret, or without a role are refused;
//! - API keys are stored hashed (the data directory never holds the secret),
//!   work for their role, and stop working when revoked;
//! - reads of patient data and acknowledgements are in the audit log with
//!   who made them; an acknowledgement records the authenticated caller and
//!   cannot be overwritten; a canary rule still fires through all of it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::auth::{call, claims, now_s, post_readings, start, start_with, Provider, Setup};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use wardwatch_tests::recent_ms;

/// Routes anyone may call.
const PUBLIC: &[&str] = &[
    "/",
    "/app.js",
    "/app.css",
    "/vendor.js",
    "/vendor.css",
    "/api/ui-config",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/openapi.json",
];

/// Who may call each (method, path): the contract this test holds the
/// server to, written independently of the server's code. A route added
/// to the server and not here fails the first test.
fn allowed(method: &str, path: &str) -> &'static [&'static str] {
    const HUMANS: &[&str] = &["viewer", "author", "auditor", "admin"];
    match (method, path) {
        ("get", "/api/rules" | "/api/rules/{id}") => HUMANS,
        ("post", "/api/rules" | "/api/rules/validate") => &["author", "admin"],
        ("put" | "delete", "/api/rules/{id}") => &["author", "admin"],
        ("post", "/api/rules/{id}/reactivate") => &["author", "admin"],
        ("get", "/api/rules/{id}/alert-rate" | "/api/patients/{patient_id}/vitals") => HUMANS,
        ("get", "/api/alerts" | "/api/alerts/stream") => HUMANS,
        ("post", "/api/alerts/{id}/ack") => HUMANS,
        ("get", "/api/dead-letters") => &["auditor", "admin"],
        ("post", "/api/ingest") => &["ingest", "admin"],
        ("post", "/api/query") => &["auditor", "admin"],
        ("post", "/api/replay") => &["author", "auditor", "admin"],
        ("get" | "delete", "/api/replay/{job}") => &["author", "auditor", "admin"],
        ("get", "/api/whoami") => &["viewer", "author", "auditor", "admin", "ingest"],
        ("get" | "post", "/api/keys") => &["admin"],
        ("delete", "/api/keys/{id}") => &["admin"],
        ("get", "/api/hospitals" | "/api/hospitals/{id}" | "/api/rule-templates") => HUMANS,
        ("post", "/api/hospitals") => &["admin"],
        ("put" | "delete", "/api/hospitals/{id}") => &["admin"],
        ("get", "/api/ops") => &["admin"],
        _ => panic!("{method} {path}: a route this test does not know; add it to `allowed`"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_credentials_and_each_role_gets_exactly_its_routes() {
    let Setup { server, idp, .. } = start().await;
    let doc: Value = server
        .http
        .get(server.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                routes.push((method.clone(), path.clone()));
            }
        }
    }
    assert!(routes.len() >= 25, "{routes:?}");

    let tokens: BTreeMap<&str, String> = ["viewer", "author", "auditor", "admin", "ingest"]
        .into_iter()
        .map(|role| {
            (
                role,
                idp.sign(&claims(
                    &format!("u-{role}"),
                    &format!("{role} user"),
                    &[role],
                )),
            )
        })
        .collect();
    let mut checked = 0;
    for (method, path) in &routes {
        let http_method: Method = method.to_uppercase().parse().unwrap();
        let concrete = path
            .replace("{id}", "nonexistent")
            .replace("{job}", "nonexistent");
        let body = (method != "get" && method != "delete").then(|| json!({}));
        if PUBLIC.contains(&path.as_str()) {
            let (status, _, _) = call(&server, http_method, &concrete, None, body).await;
            assert!(
                status.is_success(),
                "{method} {path} is public but answered {status}"
            );
            continue;
        }
        let (status, headers, text) =
            call(&server, http_method.clone(), &concrete, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without credentials: {text}");
        assert!(
            headers
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
            "{method} {path}: 401 without a Bearer challenge"
        );
        let (status, _, _) = call(
            &server,
            http_method.clone(),
            &concrete,
            Some("not-a-token"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 401, "{method} {path} with garbage");
        for (role, token) in &tokens {
            let (status, _, text) = call(
                &server,
                http_method.clone(),
                &concrete,
                Some(token),
                body.clone(),
            )
            .await;
            let may = allowed(method, path).contains(role);
            if may {
                assert!(
                    status != 401 && status != 403,
                    "{role} may {method} {path} but got {status}: {text}"
                );
            } else {
                assert_eq!(status, 403, "{role} may not {method} {path}: {text}");
                let needed = allowed(method, path)
                    .iter()
                    .find(|r| **r != "admin")
                    .unwrap_or(&"admin");
                assert!(
                    text.contains(needed),
                    "{role} on {method} {path}: the 403 should name the role ({needed}): {text}"
                );
            }
            checked += 1;
        }
    }
    // 25 protected routes, five roles each.
    assert!(checked >= 125, "{checked}");

    // The document says which routes need the bearer credential.
    assert_eq!(
        doc["paths"]["/api/query"]["post"]["security"],
        json!([{"bearer": []}])
    );
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_skew_is_tolerated() {
    let Setup { server, idp, .. } = start().await;
    let whoami = |token: String| {
        let server = &server;
        async move { call(server, Method::GET, "/api/whoami", Some(&token), None).await }
    };
    let good = claims("u1", "Dr. Jane Smith", &["viewer", "offline_access"]);
    let (status, _, text) = whoami(idp.sign(&good)).await;
    assert_eq!(status, 200, "{text}");
    let me: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["roles"].clone(), me["via"].as_str()),
        (Some("Dr. Jane Smith"), json!(["viewer"]), Some("token"))
    );

    let with = |change: Value| {
        let mut c = good.clone();
        c.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        c
    };
    let refused = [
        ("expired", idp.sign(&with(json!({"exp": now_s() - 600})))),
        ("other audience", idp.sign(&with(json!({"aud": "billing"})))),
        (
            "other issuer",
            idp.sign(&with(json!({"iss": "https://evil.test"}))),
        ),
        (
            "not yet valid",
            idp.sign(&with(json!({"nbf": now_s() + 600}))),
        ),
        ("signed by another key", Provider::new("k1").0.sign(&good)),
        ("unknown kid", Provider::new("k2").0.sign(&good)),
        (
            "shared secret (HS256)",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(b"secret"),
            )
            .unwrap(),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(br#"{"alg":"none","typ":"JWT"}"#),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good.to_string())
            ),
        ),
    ];
    for (why, token) in refused {
        let (status, headers, text) = whoami(token).await;
        assert_eq!(status, 401, "{why}: {text}");
        assert!(headers.contains_key("www-authenticate"), "{why}");
    }
    // Within the 60 s clock skew: accepted.
    let (status, _, text) = whoami(idp.sign(&with(json!({"exp": now_s() - 20})))).await;
    assert_eq!(status, 200, "20 s past expiry is within the skew: {text}");
    // A valid person with none of our roles is known but may do nothing.
    let (status, _, text) = whoami(idp.sign(&with(
        json!({"realm_access": {"roles": ["offline_access"]}}),
    )))
    .await;
    assert_eq!(status, 403, "{text}");
}

fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(grep_dir(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_hashed_at_rest_revocable_and_reads_are_audited() {
    let Setup {
        server,
        idp,
        admin_key,
    } = start().await;
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/keys",
        Some(&admin_key),
        Some(json!({"name": "icu-gateway", "roles": ["ingest"]})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let made: Value = serde_json::from_str(&text).unwrap();
    let gateway = made["key"].as_str().unwrap().to_string();
    let key_id = made["api_key"]["id"].as_str().unwrap().to_string();
    // wwk_<hex id>_<base64url secret, which may hold '_'>
    let (_, secret) = gateway
        .strip_prefix("wwk_")
        .and_then(|rest| rest.split_once('_'))
        .unwrap();
    let secret = secret.to_string();
    assert!(secret.len() >= 40, "{gateway}");

    // An author's canary rule, through a token.
    let author = idp.sign(&claims("u-a", "Rule Author", &["author"]));
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/rules",
        Some(&author),
        Some(json!({"name": "canary", "sql": "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 180", "hospital_id": "h1"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");

    // The gateway key posts events; it may do nothing else.
    let t = recent_ms(1000, 60);
    let events = format!(
        "{}\n",
        json!({"patient_id": "P-canary", "hospital_id": "h1", "source_device": "BEDSIDE",
               "timestamp_unix_ms": t, "sequence_number": 1, "heart_rate_bpm": 199.0})
    );
    let response = server
        .http
        .post(server.url("/api/ingest"))
        .bearer_auth(&gateway)
        .header("content-type", "application/x-ndjson")
        .body(events)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let counts: Value = response.json().await.unwrap();
    if counts["accepted"] != 1 {
        let (_, _, letters) = call(
            &server,
            Method::GET,
            "/api/dead-letters",
            Some(&admin_key),
            None,
        )
        .await;
        panic!("the event was refused: {counts} {letters}");
    }
    let (status, _, _) = call(&server, Method::GET, "/api/alerts", Some(&gateway), None).await;
    assert_eq!(status, 403);

    // A clinician sees the canary's alert and acknowledges it as herself.
    let nurse = idp.sign(&claims("u-n", "Nurse Kim", &["viewer"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let alert_id = loop {
        let (status, _, text) = call(
            &server,
            Method::GET,
            "/api/alerts?patient=P-canary",
            Some(&nurse),
            None,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let list: Value = serde_json::from_str(&text).unwrap();
        if let Some(id) = list["alerts"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "the canary never fired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ack = format!("/api/alerts/{alert_id}/ack");
    let (status, _, text) = call(
        &server,
        Method::POST,
        &ack,
        Some(&nurse),
        Some(json!({"by": "Dr. Jane Smith", "note": "checked"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let acked: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        acked["ack"]["by"], "Nurse Kim",
        "the caller, not the body's `by`"
    );
    assert_eq!(acked["ack"]["by_subject"], "u-n", "the caller's stable id");
    let other = idp.sign(&claims("u-o", "Someone Else", &["viewer"]));
    let (status, _, text) = call(
        &server,
        Method::POST,
        &ack,
        Some(&other),
        Some(json!({"note": "mine"})),
    )
    .await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("Nurse Kim"), "{text}");

    // An auditor reads history; then the audit log shows who read what.
    let auditor = idp.sign(&claims("u-aud", "Auditor Lee", &["auditor"]));
    let sql = "SELECT count(*) AS n FROM vitals WHERE patient_id = 'P-canary'";
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/query",
        Some(&auditor),
        Some(json!({"sql": sql})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/query",
        Some(&auditor),
        Some(json!({"sql": "SELECT action, details FROM audit_log ORDER BY seq"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let log: Value = serde_json::from_str(&text).unwrap();
    let entries: Vec<(String, Value)> = log["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["action"].as_str().unwrap().to_string(),
                serde_json::from_str(row["details"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let find = |action: &str, pred: &dyn Fn(&Value) -> bool| {
        entries
            .iter()
            .find(|(a, d)| a == action && pred(d))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no {action} entry in {entries:#?}"))
    };
    let created = find("api_key_created", &|d| d["key_id"] == key_id.as_str());
    assert_eq!(created["who"]["via"], "api_key");
    let read = find("read_alerts", &|d| d["who"]["name"] == "Nurse Kim");
    assert_eq!(read["who"]["from"], "127.0.0.1");
    find("alert_acknowledged", &|d| d["who"]["subject"] == "u-n");
    find("rule_created", &|d| d["who"]["name"] == "Rule Author");
    let query = find("history_query", &|d| d["sql"] == sql);
    assert_eq!(query["who"]["roles"], json!(["auditor"]));

    // Only hashes at rest: the secret appears nowhere in the data dir.
    let stored = grep_dir(server.data_dir.path(), secret.as_bytes());
    assert!(
        stored.is_empty(),
        "the key's secret is stored in {stored:?}"
    );
    let (status, _, text) = call(&server, Method::GET, "/api/keys", Some(&admin_key), None).await;
    assert_eq!(status, 200);
    assert!(
        !text.contains(&secret) && text.contains("icu-gateway"),
        "{text}"
    );

    // Revoked: refused at once on this instance.
    let (status, _, text) = call(
        &server,
        Method::DELETE,
        &format!("/api/keys/{key_id}"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, _) = call(&server, Method::GET, "/api/whoami", Some(&gateway), None).await;
    assert_eq!(status, 401);
    // A viewer cannot make keys.
    let (status, _, _) = call(
        &server,
        Method::POST,
        "/api/keys",
        Some(&nurse),
        Some(json!({"name": "x", "roles": ["admin"]})),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_limited_to_a_hospital_sees_only_its_rows_everywhere() {
    let Setup {
        server,
        idp,
        admin_key,
    } = start().await;
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/rules",
        Some(&admin_key),
        Some(json!({"name": "canary", "sql": "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 180"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");

    let scoped = |sub: &str, roles: &[&str]| {
        let mut c = claims(sub, sub, roles);
        c["hospitals"] = json!(["h1"]);
        idp.sign(&c)
    };
    let nurse_h1 = scoped("nurse-h1", &["viewer"]);
    let auditor_h1 = scoped("auditor-h1", &["auditor"]);

    // The live feed of the h1 nurse, open before the alerts.
    let mut feed = server
        .http
        .get(server.url("/api/alerts/stream"))
        .bearer_auth(&nurse_h1)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);

    // An unscoped sender posts for both hospitals; a sender limited to h1
    // has its h2 reading refused.
    let counts = post_readings(&server, &admin_key, &[("P-h2", "h2"), ("P-h1", "h1")]).await;
    assert_eq!(counts["accepted"], 2, "{counts}");
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/keys",
        Some(&admin_key),
        Some(json!({"name": "h1-gateway", "roles": ["ingest"], "hospitals": ["h1"]})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let h1_gateway: Value = serde_json::from_str(&text).unwrap();
    let counts = post_readings(
        &server,
        h1_gateway["key"].as_str().unwrap(),
        &[("P-h2b", "h2"), ("P-h1b", "h1")],
    )
    .await;
    assert_eq!(
        (counts["accepted"].as_u64(), counts["rejected"].as_u64()),
        (Some(1), Some(1))
    );

    // Everyone unscoped sees all three alerts; the h1 nurse only h1's.
    let admin_sees = |path: &'static str| {
        let server = &server;
        let key = admin_key.clone();
        async move {
            let (_, _, text) = call(server, Method::GET, path, Some(&key), None).await;
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = admin_sees("/api/alerts").await;
        if all["alerts"].as_array().unwrap().len() >= 3 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "the canary did not fire 3 times: {all}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let h2_alert = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["hospital_id"] == "h2")
        .unwrap_or_else(|| panic!("no h2 alert in {all}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, text) = call(&server, Method::GET, "/api/alerts", Some(&nurse_h1), None).await;
    assert_eq!(status, 200, "{text}");
    let mine: Value = serde_json::from_str(&text).unwrap();
    let hospitals: Vec<&str> = mine["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["hospital_id"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(hospitals, ["h1", "h1"], "{mine}");
    let (status, _, _) = call(
        &server,
        Method::POST,
        &format!("/api/alerts/{h2_alert}/ack"),
        Some(&nurse_h1),
        Some(json!({"note": "not mine"})),
    )
    .await;
    assert_eq!(status, 404, "another hospital's alert is not there for h1");

    // The live feed carried only h1's alerts.
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(10);
    while seen.matches("event: alert").count() < 2 && Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), feed.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    assert_eq!(seen.matches("event: alert").count(), 2, "{seen}");
    assert!(
        !seen.contains("\"h2\""),
        "the h1 feed carried an h2 alert: {seen}"
    );

    // History SQL: only h1 rows, whatever the SQL.
    let query = |sql: &str| {
        let server = &server;
        let token = auditor_h1.clone();
        let sql = sql.to_string();
        async move {
            let (status, _, text) = call(
                server,
                Method::POST,
                "/api/query",
                Some(&token),
                Some(json!({"sql": sql})),
            )
            .await;
            (status, text)
        }
    };
    for sql in [
        "SELECT DISTINCT hospital_id FROM vitals",
        "SELECT DISTINCT v.hospital_id FROM vitals v JOIN datafusion.public.vitals w ON v.patient_id = w.patient_id",
        "SELECT hospital_id FROM vitals WHERE patient_id IN (SELECT patient_id FROM vitals WHERE hospital_id = 'h2') UNION SELECT 'h1'",
        "WITH x AS (SELECT * FROM \"vitals\") SELECT DISTINCT hospital_id FROM x",
        "SELECT DISTINCT hospital_id FROM alerts",
    ] {
        let (status, text) = query(sql).await;
        assert_eq!(status, 200, "{sql}: {text}");
        let rows: Value = serde_json::from_str(&text).unwrap();
        let seen: Vec<&str> = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["hospital_id"].as_str())
            .collect();
        assert_eq!(seen, ["h1"], "{sql}: {text}");
    }
    let (status, text) = query("SELECT count(*) FROM audit_log").await;
    assert_eq!(status, 400, "{text}");
    // Dead letters and replays read every hospital: refused.
    let (status, _, _) = call(
        &server,
        Method::GET,
        "/api/dead-letters",
        Some(&auditor_h1),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let t = recent_ms(1000, 0);
    let (status, _, _) = call(
        &server,
        Method::POST,
        "/api/replay",
        Some(&auditor_h1),
        Some(json!({"sql": "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 180", "from_ms": t - 3_600_000, "to_ms": t})),
    )
    .await;
    assert_eq!(status, 403);
    // The unscoped auditor still sees both hospitals.
    let auditor = idp.sign(&claims("auditor", "Auditor", &["auditor"]));
    let (_, _, text) = call(
        &server,
        Method::POST,
        "/api/query",
        Some(&auditor),
        Some(json!({"sql": "SELECT DISTINCT hospital_id FROM vitals ORDER BY 1"})),
    )
    .await;
    assert!(text.contains("\"h1\"") && text.contains("\"h2\""), "{text}");

    // An admin limited to h1 manages only h1's keys: the unlimited ones are
    // neither listed nor revocable by them.
    let admin_h1 = scoped("admin-h1", &["admin"]);
    let (status, _, text) = call(&server, Method::GET, "/api/keys", Some(&admin_h1), None).await;
    assert_eq!(status, 200, "{text}");
    let keys: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["h1-gateway"], "{text}");
    let bootstrap_id = admin_key
        .strip_prefix("wwk_")
        .and_then(|rest| rest.split_once('_'))
        .unwrap()
        .0;
    let (status, _, _) = call(
        &server,
        Method::DELETE,
        &format!("/api/keys/{bootstrap_id}"),
        Some(&admin_h1),
        None,
    )
    .await;
    assert_eq!(status, 404, "an h1 admin revoked the unlimited admin key");
    let (status, _, _) = call(&server, Method::GET, "/api/whoami", Some(&admin_key), None).await;
    assert_eq!(status, 200, "the unlimited admin key still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_replay_is_its_starters_and_admins_only() {
    let Setup {
        server,
        idp,
        admin_key,
    } = start().await;
    let alice = idp.sign(&claims("u-alice", "Alice", &["author"]));
    let bob = idp.sign(&claims("u-bob", "Bob", &["auditor"]));
    let t = recent_ms(1000, 0);
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/replay",
        Some(&alice),
        Some(
            json!({"sql": "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 180",
                    "from_ms": t - 3_600_000, "to_ms": t, "async": true}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let job: Value = serde_json::from_str(&text).unwrap();
    let path = format!("/api/replay/{}", job["job"].as_str().unwrap());
    let (status, _, _) = call(&server, Method::GET, &path, Some(&alice), None).await;
    assert_eq!(status, 200, "the starter reads it");
    let (status, _, _) = call(&server, Method::GET, &path, Some(&bob), None).await;
    assert_eq!(status, 404, "another auditor does not see it");
    let (status, _, _) = call(&server, Method::DELETE, &path, Some(&bob), None).await;
    assert_eq!(status, 404, "nor cancel it");
    let (status, _, _) = call(&server, Method::GET, &path, Some(&admin_key), None).await;
    assert_eq!(status, 200, "an admin does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hospitals_claim_required_a_token_without_it_is_refused() {
    let Setup { server, idp, .. } =
        start_with(|config| config.auth.require_hospitals_claim = true).await;
    let unlimited = idp.sign(&claims("u1", "No Claim", &["viewer"]));
    let (status, _, text) = call(&server, Method::GET, "/api/whoami", Some(&unlimited), None).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("hospitals"), "{text}");
    let mut limited = claims("u2", "With Claim", &["viewer"]);
    limited["hospitals"] = json!(["h1"]);
    let (status, _, text) = call(
        &server,
        Method::GET,
        "/api/whoami",
        Some(&idp.sign(&limited)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

/// One caller flooding the API gets 429s with `Retry-After`; another caller,
/// the health probes and alerting are not held up; failing credentials from
/// one address are slowed the same way; the flooder is served again once
/// its bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_request_rate_is_refused_and_others_are_not() {
    let Setup {
        server,
        idp,
        admin_key,
    } = start_with(|c| {
        c.limits.max_requests_per_second_per_caller = 5;
        c.limits.max_request_burst_per_caller = 10;
    })
    .await;
    let flooder = idp.sign(&claims("flooder", "Flooder", &["viewer"]));
    let other = idp.sign(&claims("other", "Other", &["viewer"]));
    let (mut ok, mut refused) = (0, 0);
    for i in 0..30 {
        let (status, headers, text) =
            call(&server, Method::GET, "/api/rules", Some(&flooder), None).await;
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                assert!(
                    text.contains("max_requests_per_second_per_caller"),
                    "{text}"
                );
            }
            s => panic!("unexpected {s}: {text}"),
        }
        // Others (within their own rate) and the probes are served meanwhile.
        if i % 4 == 0 {
            let (status, _, text) =
                call(&server, Method::GET, "/api/rules", Some(&other), None).await;
            assert_eq!(status, 200, "{text}");
        }
        let (status, _, _) = call(&server, Method::GET, "/healthz", None, None).await;
        assert_eq!(status, 200);
    }
    assert!(refused >= 10, "{ok} served, {refused} refused");
    assert!(ok >= 10, "the burst is served: {ok}");

    // Guessing credentials: 401 until the address's bucket is empty, then 429.
    let mut statuses = vec![];
    for _ in 0..30 {
        let (status, _, _) = call(
            &server,
            Method::GET,
            "/api/rules",
            Some("wwk_nope_nope"),
            None,
        )
        .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses[0], 401);
    assert!(statuses.contains(&429), "{statuses:?}");
    // Refused before its credentials are checked: a right key from that
    // address gets the same 429, so guessing learns nothing from it.
    let (status, _, text) = call(&server, Method::GET, "/api/rules", Some(&other), None).await;
    assert_eq!(status.as_u16(), 429, "{text}");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Alerting goes on: the admin's canary fires on a fresh reading.
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/rules",
        Some(&admin_key),
        Some(json!({"name": "canary", "sql": "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 180"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    post_readings(&server, &admin_key, &[("P-rate", "h1")]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, text) = call(
            &server,
            Method::GET,
            "/api/alerts?patient=P-rate",
            Some(&admin_key),
            None,
        )
        .await;
        if text.contains("P-rate") {
            break;
        }
        assert!(Instant::now() < deadline, "the canary never fired: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The bucket refills: served again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, _, text) = call(&server, Method::GET, "/api/rules", Some(&flooder), None).await;
    assert_eq!(status, 200, "{text}");
}
