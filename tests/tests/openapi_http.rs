//! Issue 11: the REST contract. `GET /api/openapi.json` is generated from
//! the API's types; these tests hold it to what the server really does:
//!
//! - the document lists exactly the routes below, with their methods, and
//!   the server serves exactly those (any other method on a listed path is
//!   a 405), each 4xx/5xx of `/api/*` with the one error body;
//! - real answers (rules, alerts, acknowledgements, history SQL, replay,
//!   health, dead letters, errors) carry every key their schema requires
//!   and no key it does not declare, at every depth, with the declared
//!   JSON types and enum values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use wardwatch::config::Config;
use wardwatch_tests::{recent_ms, Server};

/// Every route of the server and its methods. A route added to the server
/// and not here (or the reverse) fails the first test.
const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get"]),
    ("/app.js", &["get"]),
    ("/app.css", &["get"]),
    ("/vendor.js", &["get"]),
    ("/vendor.css", &["get"]),
    ("/api/ui-config", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/api/openapi.json", &["get"]),
    ("/api/rules", &["get", "post"]),
    ("/api/rules/validate", &["post"]),
    ("/api/rules/{id}", &["get", "put", "delete"]),
    ("/api/rules/{id}/reactivate", &["post"]),
    ("/api/rules/{id}/alert-rate", &["get"]),
    ("/api/patients/{patient_id}/vitals", &["get"]),
    ("/api/alerts", &["get"]),
    ("/api/alerts/stream", &["get"]),
    ("/api/alerts/{id}/ack", &["post"]),
    ("/api/dead-letters", &["get"]),
    ("/api/ingest", &["post"]),
    ("/api/query", &["post"]),
    ("/api/replay", &["post"]),
    ("/api/replay/{job}", &["get", "delete"]),
    ("/api/whoami", &["get"]),
    ("/api/keys", &["get", "post"]),
    ("/api/keys/{id}", &["delete"]),
    ("/api/hospitals", &["get", "post"]),
    ("/api/hospitals/{id}", &["get", "put", "delete"]),
    ("/api/rule-templates", &["get"]),
    ("/api/ops", &["get"]),
];

const HTTP_METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

async fn document(server: &Server) -> Value {
    let response = server
        .http
        .get(server.url("/api/openapi.json"))
        .send()
        .await
        .expect("GET /api/openapi.json");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    doc
}

fn documented_routes(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_with_its_methods_and_the_server_serves_exactly_those() {
    let server = Server::start(Config::default())
        .await
        .expect("server starts");
    let doc = document(&server).await;
    let expected: BTreeMap<String, BTreeSet<String>> = ROUTES
        .iter()
        .map(|(path, methods)| {
            let methods = methods.iter().map(|m| m.to_string()).collect();
            (path.to_string(), methods)
        })
        .collect();
    assert_eq!(documented_routes(&doc), expected);

    for (path, methods) in ROUTES {
        // Ids that name nothing: handlers answer 404 with a body, where a
        // route the router does not have answers 404 with none.
        let url = server.url(
            &path
                .replace("{id}", "no-such-id")
                .replace("{job}", "no-such-job"),
        );
        for method in HTTP_METHODS {
            let response = server
                .http
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &url,
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            if !methods.contains(&method) {
                assert_eq!(status, 405, "{method} {path} is served but not documented");
                continue;
            }
            assert_ne!(status, 405, "{method} {path} is documented but not served");
            if *path == "/api/alerts/stream" {
                assert_eq!(status, 200, "{method} {path}");
                continue; // an endless event stream: its headers suffice
            }
            let text = response.text().await.unwrap();
            assert!(
                status != 404 || !text.is_empty(),
                "{method} {path} is documented but not routed"
            );
            if path.starts_with("/api/") && status >= 400 {
                let body: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{method} {path} {status}: not an error body: {body}"
                );
                assert_conforms(&doc, path, method, status, &body);
            }
        }
    }
    server.stop().await.unwrap();
}

/// The schema of `method path`'s answer `status` as JSON.
fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let responses = &doc["paths"][path][method]["responses"];
    let response = &responses[status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path}: status {status} is not documented (documented: {:?})",
        responses.as_object().map(|r| r.keys().collect::<Vec<_>>())
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no application/json schema"
    );
    schema
}

fn assert_conforms(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let schema = response_schema(doc, path, method, status);
    let mut problems = vec![];
    check(doc, body, schema, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "{method} {path} {status} does not match its documented schema:\n  {}\nbody: {body:#}",
        problems.join("\n  ")
    );
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "$ref to a missing schema: {reference}");
            resolve(doc, target)
        }
        None => schema,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `value` against `schema`, adding what does not match to `problems`.
fn check(doc: &Value, value: &Value, schema: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = schema[key].as_array() {
            let fits = variants.iter().any(|variant| {
                let mut found = vec![];
                check(doc, value, variant, at, &mut found);
                found.is_empty()
            });
            if !fits {
                problems.push(format!("{at}: matches none of the {key} variants: {value}"));
            }
            return;
        }
    }
    if let Some(parts) = schema["allOf"].as_array() {
        // A flattened struct: the keys of all parts together.
        let parts: Vec<&Value> = parts.iter().map(|p| resolve(doc, p)).collect();
        let Some(object) = value.as_object() else {
            problems.push(format!("{at}: expected an object, got {value}"));
            return;
        };
        for (key, field) in object {
            match parts.iter().find(|p| p["properties"].get(key).is_some()) {
                Some(part) => check(
                    doc,
                    field,
                    &part["properties"][key],
                    &format!("{at}.{key}"),
                    problems,
                ),
                None => problems.push(format!("{at}: key `{key}` is not declared")),
            }
        }
        for part in parts {
            for required in part["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                if !object.contains_key(key) {
                    problems.push(format!("{at}: required key `{key}` is missing"));
                }
            }
        }
        return;
    }
    let actual = json_type(value);
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    // An integer is a number too.
    let declared =
        allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number"));
    if !allowed.is_empty() && !declared {
        problems.push(format!("{at}: a {actual}, declared {allowed:?}: {value}"));
        return;
    }
    if let Some(values) = schema["enum"].as_array() {
        if !value.is_null() && !values.contains(value) {
            problems.push(format!("{at}: {value} is not one of {values:?}"));
        }
    }
    match value {
        Value::Object(object) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (key, field) in object {
                    match properties.get(key) {
                        Some(s) => check(doc, field, s, &format!("{at}.{key}"), problems),
                        None => problems.push(format!("{at}: key `{key}` is not declared")),
                    }
                }
                for required in schema["required"].as_array().into_iter().flatten() {
                    let key = required.as_str().unwrap();
                    if !object.contains_key(key) {
                        problems.push(format!("{at}: required key `{key}` is missing"));
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for (key, field) in object {
                    let s = &schema["additionalProperties"];
                    check(doc, field, s, &format!("{at}.{key}"), problems);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter().enumerate() {
                check(doc, item, &schema["items"], &format!("{at}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

/// Sends a request and returns its status and JSON body.
async fn call(server: &Server, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.http.request(method.clone(), server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
    (status, body)
}

/// Calls `method path`, expects `status`, and checks the answer against the
/// document; returns the answer.
async fn checked(
    server: &Server,
    doc: &Value,
    method: Method,
    route: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let (got, answer) = call(server, method.clone(), path, body).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    assert_conforms(doc, route, &method.as_str().to_lowercase(), status, &answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_have_exactly_the_keys_their_schemas_declare() {
    let server = Server::start(Config::default())
        .await
        .expect("server starts");
    let doc = document(&server).await;
    let t0 = recent_ms(60_000, 10);

    // Rules: with an escalation, so nested optional objects are checked too.
    let rule = json!({
        "name": "Low SpO2",
        "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        "severity": "high",
        "cooldown_seconds": 0,
        "description": "desaturation",
        "escalation": {"column": "spo2_pct", "below": 75, "severity": "critical"}
    });
    let created = checked(
        &server,
        &doc,
        Method::POST,
        "/api/rules",
        "/api/rules",
        Some(rule.clone()),
        201,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let rule_path = format!("/api/rules/{id}");
    checked(
        &server,
        &doc,
        Method::PUT,
        "/api/rules/{id}",
        &rule_path,
        Some(rule),
        200,
    )
    .await;
    let windowed = json!({"sql": "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id HAVING AVG(heart_rate_bpm) > 120"});
    let validation = checked(
        &server,
        &doc,
        Method::POST,
        "/api/rules/validate",
        "/api/rules/validate",
        Some(windowed),
        200,
    )
    .await;
    assert_eq!(validation["kind"], "windowed");
    let refused = checked(
        &server,
        &doc,
        Method::POST,
        "/api/rules/validate",
        "/api/rules/validate",
        Some(json!({"sql": "SELECT nope FROM vitals"})),
        400,
    )
    .await;
    assert!(
        refused["error"]["line"].is_u64(),
        "an SQL error has its position: {refused}"
    );
    checked(
        &server,
        &doc,
        Method::GET,
        "/api/rules/{id}",
        "/api/rules/no-such-rule",
        None,
        404,
    )
    .await;

    // An alert, then its acknowledgement.
    let events: Vec<String> = [(80.0, 1), (70.0, 2)]
        .iter()
        .map(|(spo2, seq)| {
            json!({"hospital_id": "H01", "patient_id": "P-openapi", "timestamp_unix_ms": t0 + seq * 1000,
                   "spo2_pct": spo2, "source_device": "BEDSIDE", "sequence_number": seq})
            .to_string()
        })
        .chain(["{\"not\": \"a vital event\"}".to_string()])
        .collect();
    let response = server
        .http
        .post(server.url("/api/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(events.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ingested: Value = response.json().await.unwrap();
    assert_eq!(ingested, json!({"accepted": 2, "rejected": 1}));
    assert_conforms(&doc, "/api/ingest", "post", 202, &ingested);

    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = loop {
        let alerts = checked(
            &server,
            &doc,
            Method::GET,
            "/api/alerts",
            &format!("/api/alerts?rule={id}"),
            None,
            200,
        )
        .await;
        if alerts["alerts"].as_array().unwrap().len() >= 2 {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "the rule did not fire within 30 s: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alert_id = alerts["alerts"][0]["id"].as_str().unwrap().to_string();
    let acked = checked(
        &server,
        &doc,
        Method::POST,
        "/api/alerts/{id}/ack",
        &format!("/api/alerts/{alert_id}/ack"),
        Some(json!({"by": "nurse on ward 3", "note": "repositioned the probe"})),
        200,
    )
    .await;
    assert_eq!(acked["ack"]["by"], "nurse on ward 3");
    let alerts = checked(
        &server,
        &doc,
        Method::GET,
        "/api/alerts",
        &format!("/api/alerts?rule={id}"),
        None,
        200,
    )
    .await;
    assert!(
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["ack"].is_object()),
        "the acknowledgement shows in the list: {alerts}"
    );
    checked(
        &server,
        &doc,
        Method::GET,
        "/api/alerts",
        "/api/alerts?limit=many",
        None,
        400,
    )
    .await;

    // Rules again, now that the engine has counted and fired.
    // The engine publishes its counters every 100 ms or so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = checked(
            &server,
            &doc,
            Method::GET,
            "/api/rules",
            "/api/rules",
            None,
            200,
        )
        .await;
        if rules["rules"][0]["stats"].is_object() {
            break;
        }
        assert!(Instant::now() < deadline, "no stats for the rule: {rules}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detail = checked(
        &server,
        &doc,
        Method::GET,
        "/api/rules/{id}",
        &rule_path,
        None,
        200,
    )
    .await;
    assert_eq!(detail["history"].as_array().unwrap().len(), 2, "{detail}");

    // History SQL, over alerts and vitals.
    for sql in [
        "SELECT * FROM alerts",
        "SELECT patient_id, spo2_pct, event_time FROM vitals ORDER BY event_time",
    ] {
        let result = checked(
            &server,
            &doc,
            Method::POST,
            "/api/query",
            "/api/query",
            Some(json!({"sql": sql})),
            200,
        )
        .await;
        assert!(
            !result["rows"].as_array().unwrap().is_empty(),
            "{sql}: {result}"
        );
    }
    checked(
        &server,
        &doc,
        Method::POST,
        "/api/query",
        "/api/query",
        Some(json!({"sql": "SELECT * FROM nowhere"})),
        400,
    )
    .await;

    // Replay with an audit, in the request and in the background.
    let replay =
        json!({"rule_id": id, "from_ms": t0 - 60_000, "to_ms": t0 + 60_000, "audit": true});
    let report = checked(
        &server,
        &doc,
        Method::POST,
        "/api/replay",
        "/api/replay",
        Some(replay.clone()),
        200,
    )
    .await;
    assert!(report["audit"].is_object(), "{report}");
    let mut background = replay;
    background["async"] = json!(true);
    let job = checked(
        &server,
        &doc,
        Method::POST,
        "/api/replay",
        "/api/replay",
        Some(background),
        202,
    )
    .await;
    let job_path = format!("/api/replay/{}", job["job"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = checked(
            &server,
            &doc,
            Method::GET,
            "/api/replay/{job}",
            &job_path,
            None,
            200,
        )
        .await;
        if job["state"] == "done" {
            assert!(job["result"]["alerts"].is_array(), "{job}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background replay did not finish: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    checked(
        &server,
        &doc,
        Method::DELETE,
        "/api/replay/{job}",
        &job_path,
        None,
        200,
    )
    .await;

    // Dead letters, health, and a deactivated rule.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let letters = checked(
            &server,
            &doc,
            Method::GET,
            "/api/dead-letters",
            "/api/dead-letters?limit=5",
            None,
            200,
        )
        .await;
        if !letters["dead_letters"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused line is not a dead letter: {letters}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    checked(
        &server,
        &doc,
        Method::GET,
        "/healthz",
        "/healthz",
        None,
        200,
    )
    .await;
    checked(&server, &doc, Method::GET, "/readyz", "/readyz", None, 200).await;
    // Events went through the local partition, and a rule runs.
    let ops = checked(
        &server,
        &doc,
        Method::GET,
        "/api/ops",
        "/api/ops",
        None,
        200,
    )
    .await;
    assert!(
        ops["partitions"].as_array().is_some_and(|p| !p.is_empty())
            && ops["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "{ops}"
    );
    let deactivated = checked(
        &server,
        &doc,
        Method::DELETE,
        "/api/rules/{id}",
        &rule_path,
        None,
        200,
    )
    .await;
    assert_eq!(deactivated["state"], "inactive");

    server.stop().await.unwrap();
}
