//! Issue 14: rules may be scoped to a hospital (they see only its events)
//! or global (admins only), over real HTTP with authentication on.
//!
//! - an author limited to h1 makes rules for h1, not for h2 nor for every
//!   hospital; an admin makes a global rule;
//! - over events of h1 and h2, the h1 rule fires only for the h1 patient,
//!   the global rule for both;
//! - a caller limited to h2 lists the global rule but not h1's, gets 404
//!   for h1's rule, cannot change the global one (403) nor h1's (404);
//! - the `rules` history table shows each rule's hospital, and to a caller
//!   limited to a hospital only its rules and the global ones;
//! - a replay runs a stored rule with its scope, and a draft with the
//!   `hospital_id` it is given.
//!
//! Each test checks that a global canary rule still fires.

mod common;

use std::time::{Duration, Instant};

use common::auth::{call, claims, post_readings, start, Provider, Setup};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wardwatch_tests::{recent_ms, Server};

/// Fires on every reading `post_readings` sends (heart rate 199).
const TACHY: &str = "SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 180";

/// A token of `sub` with `roles`, limited to `hospitals`.
fn limited(idp: &Provider, sub: &str, roles: &[&str], hospitals: &[&str]) -> String {
    let mut c = claims(sub, sub, roles);
    c["hospitals"] = json!(hospitals);
    idp.sign(&c)
}

/// `POST /api/rules` as `credential`: the status and the answer.
async fn create_rule(
    server: &Server,
    credential: &str,
    name: &str,
    hospital: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({"name": name, "sql": TACHY});
    if let Some(h) = hospital {
        body["hospital_id"] = json!(h);
    }
    let (status, _, text) = call(
        server,
        Method::POST,
        "/api/rules",
        Some(credential),
        Some(body),
    )
    .await;
    let answer = serde_json::from_str(&text).unwrap_or_else(|_| json!({"text": text}));
    (status, answer)
}

/// (rule id, patient, hospital) of every alert, sorted, once `done` holds
/// for them (within 20 s).
async fn alerts_when(
    server: &Server,
    admin_key: &str,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, text) =
            call(server, Method::GET, "/api/alerts", Some(admin_key), None).await;
        assert_eq!(status, 200, "{text}");
        let list: Value = serde_json::from_str(&text).unwrap();
        let mut alerts: Vec<(String, String, String)> = list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
                (
                    s(&a["rule_id"]),
                    s(&a["key"]["patient_id"]),
                    s(&a["hospital_id"]),
                )
            })
            .collect();
        alerts.sort();
        if done(&alerts) {
            return alerts;
        }
        assert!(Instant::now() < deadline, "alerts never came: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn id_of(rule: &Value) -> String {
    rule["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_limited_to_a_hospital_makes_rules_that_see_only_its_events() {
    let Setup {
        server,
        idp,
        admin_key,
    } = start().await;
    let author_h1 = limited(&idp, "author-h1", &["author"], &["h1"]);

    let (status, h1_rule) = create_rule(&server, &author_h1, "tachy h1", Some("h1")).await;
    assert_eq!(status, 201, "{h1_rule}");
    assert_eq!(h1_rule["hospital_id"], "h1");
    let (status, answer) = create_rule(&server, &author_h1, "tachy h2", Some("h2")).await;
    assert_eq!(status, 403, "another hospital's rule: {answer}");
    let (status, answer) = create_rule(&server, &author_h1, "tachy everywhere", None).await;
    assert_eq!(status, 403, "a global rule: {answer}");
    assert!(
        answer.to_string().contains("needs the admin role"),
        "{answer}"
    );
    // Nor may an unlimited author make a global rule.
    let author = idp.sign(&claims("author", "Author", &["author"]));
    let (status, answer) = create_rule(&server, &author, "tachy everywhere", None).await;
    assert_eq!(status, 403, "{answer}");
    let (status, canary) = create_rule(&server, &admin_key, "canary", None).await;
    assert_eq!(status, 201, "{canary}");
    assert_eq!(canary["hospital_id"], Value::Null);

    let counts = post_readings(&server, &admin_key, &[("P-h1", "h1"), ("P-h2", "h2")]).await;
    assert_eq!(counts["accepted"], 2, "{counts}");
    // Once the canary fired for both, the h1 rule has seen both events.
    let (h1, canary) = (id_of(&h1_rule), id_of(&canary));
    let alerts = alerts_when(&server, &admin_key, |alerts| {
        alerts.iter().filter(|a| a.0 == canary).count() == 2
    })
    .await;
    let mut want = vec![
        (canary.clone(), "P-h1".into(), "h1".into()),
        (canary.clone(), "P-h2".into(), "h2".into()),
        (h1.clone(), "P-h1".into(), "h1".into()),
    ];
    want.sort();
    assert_eq!(alerts, want);

    // The `rules` table says which hospital each rule is for.
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/query",
        Some(&admin_key),
        Some(json!({"sql": "SELECT id, hospital_id FROM rules ORDER BY id"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let rows: Value = serde_json::from_str(&text).unwrap();
    let mut rows: Vec<(String, Value)> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["hospital_id"].clone(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![(h1.clone(), json!("h1")), (canary.clone(), Value::Null)];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(rows, want);

    // A draft backtested for h1 sees only h1's archived events.
    let (from_ms, to_ms) = (recent_ms(1000, 120), recent_ms(1000, 0) + 1000);
    let replay = |extra: Value| {
        let (server, key) = (&server, admin_key.clone());
        let mut body = json!({"from_ms": from_ms, "to_ms": to_ms, "cooldown_seconds": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        async move {
            let (status, _, text) =
                call(server, Method::POST, "/api/replay", Some(&key), Some(body)).await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while replay(json!({"sql": TACHY})).await.1["events"] != 2 {
        assert!(Instant::now() < deadline, "the events were never archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, backtest) = replay(json!({"sql": TACHY, "hospital_id": "h1"})).await;
    assert_eq!(status, 200, "{backtest}");
    let patients: Vec<&str> = backtest["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"]["patient_id"].as_str().unwrap())
        .collect();
    assert_eq!(patients, ["P-h1"], "{backtest}");
    // A stored rule replays with its own scope.
    let (status, stored) = replay(json!({"rule_id": h1})).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["alerts"].as_array().unwrap().len(), 1, "{stored}");
    let (status, refused) = replay(json!({"rule_id": h1, "hospital_id": "h2"})).await;
    assert_eq!(status, 400, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_limited_to_a_hospital_sees_its_and_global_rules_and_changes_only_its_own() {
    let Setup {
        server,
        idp,
        admin_key,
    } = start().await;
    let author_h1 = limited(&idp, "author-h1", &["author"], &["h1"]);
    let author_h2 = limited(&idp, "author-h2", &["author"], &["h2"]);
    let viewer_h2 = limited(&idp, "viewer-h2", &["viewer"], &["h2"]);
    let auditor_h2 = limited(&idp, "auditor-h2", &["auditor"], &["h2"]);
    let (status, h1_rule) = create_rule(&server, &author_h1, "tachy h1", Some("h1")).await;
    assert_eq!(status, 201, "{h1_rule}");
    let (status, canary) = create_rule(&server, &admin_key, "canary", None).await;
    assert_eq!(status, 201, "{canary}");
    let (h1, canary) = (id_of(&h1_rule), id_of(&canary));

    // The h2 viewer lists the global rule, not h1's, and h1's is not there.
    let (status, _, text) = call(&server, Method::GET, "/api/rules", Some(&viewer_h2), None).await;
    assert_eq!(status, 200, "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [canary.as_str()], "{text}");
    let (status, _, text) = call(
        &server,
        Method::GET,
        &format!("/api/rules/{h1}"),
        Some(&viewer_h2),
        None,
    )
    .await;
    assert_eq!(status, 404, "{text}");
    let (status, _, text) = call(
        &server,
        Method::GET,
        &format!("/api/rules/{canary}"),
        Some(&viewer_h2),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // Unlimited, the viewer sees both.
    let viewer = idp.sign(&claims("viewer", "Viewer", &["viewer"]));
    let (_, _, text) = call(&server, Method::GET, "/api/rules", Some(&viewer), None).await;
    assert!(text.contains(&h1) && text.contains(&canary), "{text}");
    // Once the engine has counted, the unlimited viewer sees every rule's
    // counters; the limited one not a global rule's (they count every
    // hospital's events).
    post_readings(&server, &admin_key, &[("P-h1", "h1"), ("P-h2", "h2")]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, text) = call(&server, Method::GET, "/api/rules", Some(&viewer), None).await;
        let list: Value = serde_json::from_str(&text).unwrap();
        let counted = list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["stats"]["events_matched"].as_u64().is_some_and(|n| n > 0));
        if counted {
            break;
        }
        assert!(Instant::now() < deadline, "no counters: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, text) = call(&server, Method::GET, "/api/rules", Some(&viewer_h2), None).await;
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["rules"][0]["id"], canary.as_str());
    assert_eq!(list["rules"][0]["stats"], Value::Null, "{text}");
    assert_eq!(list["rules"][0]["state"], "active", "{text}");
    let (_, _, text) = call(
        &server,
        Method::GET,
        &format!("/api/rules/{canary}"),
        Some(&viewer_h2),
        None,
    )
    .await;
    let detail: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(detail["id"], canary.as_str(), "{text}");
    assert!(detail.as_object().unwrap().contains_key("stats"), "{text}");
    assert_eq!(detail["stats"], Value::Null, "{text}");

    // A patient's readings and a rule's alert rate: the h2 viewer gets only
    // h2's, where the unlimited viewer gets both hospitals'.
    let count = |who: String, path: String| {
        let server = &server;
        async move {
            let (status, _, text) = call(server, Method::GET, &path, Some(&who), None).await;
            assert_eq!(status, 200, "{path}: {text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let vitals = |p: &str| format!("/api/patients/{p}/vitals");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = count(viewer.clone(), vitals("P-h1")).await;
        if all["readings"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "P-h1's reading never archived: {all}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let theirs = count(viewer_h2.clone(), vitals("P-h1")).await;
    assert_eq!(theirs["readings"], json!([]), "{theirs}");
    let own = count(viewer_h2.clone(), vitals("P-h2")).await;
    assert_eq!(own["readings"].as_array().map(Vec::len), Some(1), "{own}");
    let fired = |rate: &Value| -> u64 {
        rate["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["fired"].as_u64().unwrap() + b["suppressed"].as_u64().unwrap())
            .sum()
    };
    let rate = format!("/api/rules/{canary}/alert-rate");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = count(viewer.clone(), rate.clone()).await;
        if fired(&all) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the canary's two alerts: {all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let theirs = count(viewer_h2.clone(), rate.clone()).await;
    assert_eq!(
        fired(&theirs),
        1,
        "the h2 viewer counts only h2's alert: {theirs}"
    );

    // Global rules are read-only to limited authors; another hospital's
    // rule is not there for them.
    let edit = json!({"name": "edited", "sql": TACHY, "hospital_id": "h2"});
    for (method, path, body, who, expected) in [
        (
            Method::PUT,
            &canary,
            Some(edit.clone()),
            &author_h2,
            403_u16,
        ),
        (Method::DELETE, &canary, None, &author_h2, 403),
        (Method::PUT, &h1, Some(edit.clone()), &author_h2, 404),
        (Method::DELETE, &h1, None, &author_h2, 404),
        // Nor may h1's author move its rule to h2.
        (Method::PUT, &h1, Some(edit.clone()), &author_h1, 403),
    ] {
        let path = format!("/api/rules/{path}");
        let (status, _, text) = call(&server, method.clone(), &path, Some(who), body).await;
        assert_eq!(status, expected, "{method} {path}: {text}");
    }
    let (status, _, text) = call(
        &server,
        Method::PUT,
        &format!("/api/rules/{h1}"),
        Some(&author_h1),
        Some(json!({"name": "tachy h1 (edited)", "sql": TACHY, "hospital_id": "h1"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // History SQL: the h2 auditor's `rules` hold the global rule only.
    let (status, _, text) = call(
        &server,
        Method::POST,
        "/api/query",
        Some(&auditor_h2),
        Some(json!({"sql": "SELECT id, hospital_id FROM rules"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let rows: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        rows["rows"],
        json!([{"id": canary, "hospital_id": null}]),
        "{text}"
    );

    // The canary still fires, for both hospitals; h1's rule for h1 only.
    let counts = post_readings(&server, &admin_key, &[("P-h2", "h2"), ("P-h1", "h1")]).await;
    assert_eq!(counts["accepted"], 2, "{counts}");
    let alerts = alerts_when(&server, &admin_key, |alerts| {
        alerts.iter().filter(|a| a.0 == canary).count() == 2
    })
    .await;
    let h1_alerts: Vec<_> = alerts.iter().filter(|a| a.0 == h1).collect();
    assert_eq!(h1_alerts, [&(h1.clone(), "P-h1".into(), "h1".into())]);
    // And the h2 viewer is shown only the canary's h2 alert.
    let (_, _, text) = call(&server, Method::GET, "/api/alerts", Some(&viewer_h2), None).await;
    let list: Value = serde_json::from_str(&text).unwrap();
    let seen: Vec<(&str, &str)> = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule_id"].as_str().unwrap(),
                a["hospital_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(canary.as_str(), "h2")], "{text}");
}
