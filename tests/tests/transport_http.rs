//! Issue 14, transport and browser safety, over real connections:
//!
//! - with `[http] tls_cert_file`/`tls_key_file` the server speaks HTTPS
//!   only, with that certificate, and a client stuck in its handshake holds
//!   up no one;
//! - a `Host` the server does not answer for (DNS rebinding) gets 421;
//! - requests a cross-site page could send without a CORS preflight
//!   (`text/plain`, form-urlencoded) change nothing: 415;
//! - every answer carries the security headers, and none a CORS header.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wardwatch::config::Config;
use wardwatch_tests::{recent_ms, Server};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// A server on 127.0.0.1 without credentials (loopback allows that), so
/// these tests see the transport layers and not authentication.
fn config() -> Config {
    let mut config = Config::default();
    config.auth.required = Some(false);
    config
}

fn port_of(server: &Server) -> u16 {
    let (_, port) = server.base_url.rsplit_once(':').expect("host:port");
    port.parse().expect("a port")
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn self_signed(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    (cert_pem, cert_file, key_file)
}

/// A client that trusts `cert_pem` and nothing else.
fn trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_server_speaks_https_only() {
    let certs = tempfile::tempdir().unwrap();
    let (cert_pem, cert_file, key_file) = self_signed(certs.path());
    let mut config = config();
    config.http.tls_cert_file = Some(cert_file);
    config.http.tls_key_file = Some(key_file);
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    // `spawn_in`: the harness waits over plain HTTP, which this server
    // does not speak.
    let mut server = Server::spawn_in(config, data_dir).expect("server spawns");
    let port = port_of(&server);
    let healthz = format!("https://localhost:{port}/healthz");
    let client = trusting(&cert_pem);

    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        server.check_alive().await.expect("the server runs");
        if let Ok(r) = client.get(&healthz).send().await {
            break r;
        }
        assert!(Instant::now() < deadline, "no HTTPS answer on {healthz}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert_eq!(response.headers()["content-security-policy"], CSP);

    // A client stuck before its handshake (connected, silent) and one that
    // sends garbage hold up no one else.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\x05hello")
        .await
        .unwrap();
    let fresh = trusting(&cert_pem);
    let started = Instant::now();
    let r = fresh
        .get(&healthz)
        .send()
        .await
        .expect("HTTPS while others stall");
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a fresh client waited {:?} behind a stalled handshake",
        started.elapsed()
    );
    // The broken handshake is dropped: the server closes that connection.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match garbage.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a TLS alert first
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a failed handshake left its connection open"
    );

    // Plain HTTP on the same port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let e = plain
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await
        .expect_err("plain HTTP on the HTTPS port was answered");
    assert!(!e.is_timeout(), "plain HTTP hung instead of failing: {e:?}");

    // A client that does not trust the certificate refuses the server.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let e = untrusting
        .get(&healthz)
        .send()
        .await
        .expect_err("an untrusted certificate was accepted");
    assert!(
        format!("{e:?}").contains("UnknownIssuer"),
        "not a certificate verification failure: {e:?}"
    );

    // The silent client does not hold the shutdown back either.
    drop((client, fresh, plain, untrusting));
    let stopped = server.stop_within(Duration::from_secs(20)).await;
    stopped.expect("the HTTPS server stops gracefully");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled connection is still open after the stop: {n:?}"
    );
}

/// `GET path` with `Host: host`, status and body.
async fn get_with_host(server: &Server, path: &str, host: &str) -> (u16, String) {
    let r = server
        .http
        .get(server.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} (Host {host}): {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Sends raw bytes and returns the status line of the answer.
async fn raw_status_line(server: &Server, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port_of(server)))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_server_does_not_answer_for_gets_421() {
    let server = Server::start(config()).await.expect("server starts");
    let port = port_of(&server);

    for foreign in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        // A rebinding name that resolves to 127.0.0.1 is still a foreign name.
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        // Health probes are answered whatever name they use (an orchestrator
        // sends the pod's address).
        let (status, body) = get_with_host(&server, "/healthz", &foreign).await;
        assert_eq!(status, 200, "GET /healthz with Host {foreign}: {body}");
        for path in ["/", "/api/rules", "/no-such-page"] {
            let (status, body) = get_with_host(&server, path, &foreign).await;
            assert_eq!(status, 421, "GET {path} with Host {foreign}: {body}");
            let body: Value = serde_json::from_str(&body).expect("a JSON error");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("[http] allowed_hosts"),
                "the refusal does not name the setting: {body}"
            );
        }
    }
    // The canary: the loopback names, as clients write them, are answered.
    for own in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_string(),
    ] {
        let (status, body) = get_with_host(&server, "/api/rules", &own).await;
        assert_eq!(status, 200, "Host {own}: {body}");
    }
    // HTTP/1.1 without Host, or with two, is refused outright; an absolute
    // URI naming a foreign host is a foreign host whatever `Host` says.
    let no_host = raw_status_line(&server, b"GET /api/rules HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let two =
        format!("GET /api/rules HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n");
    let two = raw_status_line(&server, two.as_bytes()).await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let absolute =
        format!("GET http://evil.example/api/rules HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let absolute = raw_status_line(&server, absolute.as_bytes()).await;
    assert!(absolute.starts_with("HTTP/1.1 421"), "{absolute}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_allowed_hosts_replace_the_loopback_names() {
    let mut config = config();
    config.http.allowed_hosts = vec!["Ward.Example.org".into(), "[::1]".into()];
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    // `spawn_in`: the harness waits with `Host: 127.0.0.1`, refused here.
    let mut server = Server::spawn_in(config, data_dir).expect("server spawns");
    let port = port_of(&server);
    let ward = format!("ward.example.org:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_alive().await.expect("the server runs");
        let r = server
            .http
            .get(server.url("/healthz"))
            .header("host", &ward)
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no answer for Host {ward}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get_with_host(&server, "/api/rules", &format!("[::1]:{port}")).await;
    assert_eq!(status, 200, "{body}");
    for replaced in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = get_with_host(&server, "/api/rules", &replaced).await;
        assert_eq!(status, 421, "Host {replaced}: {body}");
    }
    server.stop().await.unwrap();
}

const RULE_SQL: &str = "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85";

fn event(patient: &str) -> String {
    json!({"hospital_id": "H01", "patient_id": patient, "timestamp_unix_ms": recent_ms(1000, 5),
           "spo2_pct": 97.0, "heart_rate_bpm": 70.0, "source_device": "BEDSIDE", "sequence_number": 1})
    .to_string()
}

async fn post_as(server: &Server, path: &str, content_type: &str, body: String) -> (u16, Value) {
    let r = server
        .http
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

fn rule_names(rules: &Value) -> Vec<String> {
    rules["rules"]
        .as_array()
        .expect("a rule list")
        .iter()
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_cross_site_form_can_send_changes_nothing() {
    let mut config = config();
    // Ingest answers once its events are in the archive, so the history
    // query below sees every accepted event.
    config.archive.ingest_durable_ack = true;
    let server = Server::start(config).await.expect("server starts");

    // Bodies that are valid as they stand: only the type is wrong.
    let rule = json!({"name": "Forged", "sql": RULE_SQL, "severity": "high"}).to_string();
    for (path, body) in [
        ("/api/rules", rule.clone()),
        ("/api/ingest", event("P-FORGED")),
    ] {
        for content_type in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let (status, answer) = post_as(&server, path, content_type, body.clone()).await;
            assert_eq!(status, 415, "POST {path} as {content_type}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("application/json"),
                "the refusal does not name the accepted type: {answer}"
            );
        }
        // No content type at all is refused too.
        let r = server
            .http
            .post(server.url(path))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "POST {path} without a content type");
    }
    // A method no handler serves stays a 405, whatever its type.
    for path in ["/", "/healthz"] {
        let r = server.http.post(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 405, "POST {path}");
    }
    let (_, answer) = post_as(&server, "/api/ingest", "text/plain", event("P")).await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("application/x-ndjson"), "{answer}");

    // Nothing was created.
    let rules = server.get_json("/api/rules").await;
    assert!(
        !rule_names(&rules).contains(&"Forged".to_string()),
        "{rules}"
    );
    let metrics = server.metrics().await.unwrap();
    assert_eq!(metrics["wardwatch_events_in_total"], 0.0);

    // The same bodies, sent as JSON / NDJSON, are accepted.
    let (status, created) = post_as(&server, "/api/rules", "application/json", rule).await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = post_as(
        &server,
        "/api/ingest",
        "application/x-ndjson",
        event("P-CANARY"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let (status, answer) = post_as(
        &server,
        "/api/ingest",
        "application/json; charset=utf-8",
        event("P-CANARY-2"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        rule_names(&server.get_json("/api/rules").await)
            .iter()
            .filter(|n| *n == "Forged")
            .count(),
        1
    );
    let (status, rows) = post_as(
        &server,
        "/api/query",
        "application/json",
        json!({"sql": "SELECT DISTINCT patient_id FROM vitals ORDER BY patient_id"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    let patients: Vec<&str> = rows["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {rows}"))
        .iter()
        .filter_map(|r| r["patient_id"].as_str())
        .collect();
    assert_eq!(patients, ["P-CANARY", "P-CANARY-2"], "{rows}");

    // DELETE needs no body and no type; with a form body it is refused.
    let id = created["id"].as_str().expect("the rule's id");
    let r = server
        .http
        .delete(server.url(&format!("/api/rules/{id}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        server.get_json(&format!("/api/rules/{id}")).await["active"],
        true
    );
    let r = server
        .http
        .delete(server.url(&format!("/api/rules/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        server.get_json(&format!("/api/rules/{id}")).await["active"],
        false
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers_and_no_cors() {
    let server = Server::start(config()).await.expect("server starts");
    for path in [
        "/",
        "/app.js",
        "/app.css",
        "/healthz",
        "/api/rules",
        "/api/openapi.json",
        "/api/no-such-route",
    ] {
        let r = server
            .http
            .get(server.url(path))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        let h = r.headers();
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(
            h.get("strict-transport-security").is_none(),
            "HSTS over plain HTTP on {path}"
        );
        let no_store = h.get("cache-control").is_some_and(|v| v == "no-store");
        assert_eq!(no_store, path.starts_with("/api/"), "{path}: {h:?}");
        let cors: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{path}: CORS headers {cors:?}");
    }
    // A CORS preflight gets no permission either (and the refusals carry
    // the headers too).
    let r = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/api/rules"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let (status, _) = get_with_host(&server, "/api/rules", "evil.example").await;
    assert_eq!(status, 421);
    let r = server
        .http
        .get(server.url("/api/rules"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-security-policy"], CSP);
    assert_eq!(r.headers()["cache-control"], "no-store");

    // The page loads its script and style from the server (the CSP forbids
    // inline ones), each with its own type.
    let page = server
        .http
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"<script src="/app.js" defer></script>"#),
        "{page}"
    );
    assert!(page.contains(r#"<link rel="stylesheet" href="/app.css">"#));
    assert!(!page.contains("<script>") && !page.contains("<style"));
    assert!(!page.contains(" style=") && !page.contains(" onclick="));
    assert!(page.contains(r#"<script src="/vendor.js" defer></script>"#));
    assert!(page.contains(r#"<link rel="stylesheet" href="/vendor.css">"#));
    for (path, content_type) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/vendor.js", "text/javascript; charset=utf-8"),
        ("/vendor.css", "text/css; charset=utf-8"),
    ] {
        let r = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(
            r.text().await.unwrap().len() > 1000,
            "{path} is nearly empty"
        );
        // Asked again with its ETag: 304 and no body; another tag: 200.
        let again = server
            .http
            .get(server.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.text().await.unwrap().is_empty());
        let other = server
            .http
            .get(server.url(path))
            .header("if-none-match", "\"0000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "{path}");
    }
    server.stop().await.unwrap();
}

/// With `[auth.ui_login]`, the page learns the identity provider's
/// endpoints from the public `/api/ui-config`, and the CSP lets it fetch the
/// token endpoint's origin (and nothing else new).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_login_is_announced_and_its_token_endpoint_allowed_by_the_csp() {
    let plain = Server::start(config()).await.expect("server starts");
    let answer: serde_json::Value = plain.get_json("/api/ui-config").await;
    assert_eq!(answer["login"], serde_json::Value::Null, "{answer}");
    assert_eq!(answer["auth_required"], false);
    plain.stop().await.unwrap();

    let mut with_login = config();
    with_login.auth.ui_login = Some(wardwatch::config::UiLoginConfig {
        authorization_endpoint: "https://idp.example/realms/ward/auth".into(),
        token_endpoint: "https://idp.example:8443/realms/ward/token".into(),
        client_id: "wardwatch-ui".into(),
        scope: "openid profile".into(),
        name: "Ward IdP".into(),
    });
    let server = Server::start(with_login).await.expect("server starts");
    let answer: serde_json::Value = server.get_json("/api/ui-config").await;
    assert_eq!(answer["login"]["client_id"], "wardwatch-ui", "{answer}");
    assert_eq!(
        answer["login"]["token_endpoint"],
        "https://idp.example:8443/realms/ward/token"
    );
    let r = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-security-policy"],
        CSP.replace(
            "connect-src 'self'",
            "connect-src 'self' https://idp.example:8443"
        )
        .as_str()
    );
    server.stop().await.unwrap();
}
