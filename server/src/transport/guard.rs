//! What a browser may do with the server, whatever page it runs: layers
//! over every route.
//!
//! - **`Host` allow-list** (DNS rebinding): a hostile page whose name
//!   resolves to this server's address sends its own name as `Host`; such
//!   requests get `421`.
//! - **Content type** (cross-site request forgery): a page on another site
//!   can POST to us without JavaScript permission only as a "simple"
//!   request: `text/plain`, form-urlencoded or multipart. Requests that
//!   change state must be `application/json` (or NDJSON for ingest), which
//!   a browser sends cross-site only after a CORS preflight we never
//!   answer; anything else gets `415`.
//! - **Security headers** on every answer: a CSP that allows only this
//!   server's own scripts and styles, no framing, no sniffing, no referrer;
//!   `no-store` on the API; HSTS when serving TLS. No CORS headers at all.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use axum::body::HttpBody as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::api::error::ApiError;
use crate::config::Config;

const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The policy, with the identity provider's token endpoint allowed to be
/// fetched when the UI signs people in through it (`[auth.ui_login]`).
fn content_security_policy(config: &Config) -> HeaderValue {
    let origin = config
        .auth
        .ui_login
        .as_ref()
        .and_then(|l| url::Url::parse(&l.token_endpoint).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null");
    let policy = match origin {
        Some(origin) => CONTENT_SECURITY_POLICY.replace(
            "connect-src 'self'",
            &format!("connect-src 'self' {origin}"),
        ),
        None => CONTENT_SECURITY_POLICY.to_string(),
    };
    HeaderValue::from_str(&policy).expect("a URL origin is a valid header value")
}

/// A year; sent only over TLS (browsers ignore it over plain HTTP anyway).
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// The one route that takes something other than JSON.
const INGEST_PATH: &str = "/api/ingest";

/// Wraps every route of `router` (and its 404 and 405 answers) in the
/// `Host` and content-type checks and the security headers.
pub(crate) fn protect(router: Router, config: &Config) -> Router {
    let hosts = Arc::new(AllowedHosts::from_config(config));
    let headers = Arc::new(SecurityHeaders {
        hsts: super::tls_configured(config),
        csp: content_security_policy(config),
    });
    let served = Arc::new(ServedMethods::of_the_api());
    // The last layer is the outermost, so refusals get the headers too.
    router
        .layer(middleware::from_fn_with_state(served, content_type_layer))
        .layer(middleware::from_fn_with_state(hosts, host_layer))
        .layer(middleware::from_fn_with_state(headers, security_headers))
}

/// The methods each API route serves, by the path as axum matches it
/// (`/api/rules/{id}`), from the route list the OpenAPI document is built
/// from. A method a route does not serve reaches no handler, so it is left
/// to answer its 405 rather than a 415 (axum's `route_layer` would not do:
/// it wraps the 405 answer too).
struct ServedMethods(HashMap<String, HashSet<Method>>);

impl ServedMethods {
    fn of_the_api() -> Self {
        let doc = crate::api::routes().into_openapi();
        let routes = doc.paths.paths.iter().map(|(path, item)| {
            let methods = [
                (&item.get, Method::GET),
                (&item.put, Method::PUT),
                (&item.post, Method::POST),
                (&item.delete, Method::DELETE),
                (&item.options, Method::OPTIONS),
                (&item.head, Method::HEAD),
                (&item.patch, Method::PATCH),
                (&item.trace, Method::TRACE),
            ];
            let served = methods
                .into_iter()
                .filter(|(operation, _)| operation.is_some())
                .map(|(_, method)| method)
                .collect();
            (path.clone(), served)
        });
        Self(routes.collect())
    }

    /// False only for a known route and a method it does not serve: a
    /// route missing from the list is checked as if it served everything.
    fn may_serve(&self, request: &Request) -> bool {
        let route = request.extensions().get::<MatchedPath>();
        match route.and_then(|r| self.0.get(r.as_str())) {
            Some(methods) => methods.contains(request.method()),
            None => true,
        }
    }
}

/// The host names requests may name.
#[derive(Debug)]
enum AllowedHosts {
    Any,
    /// Canonical names: see [`host_of`].
    Only(HashSet<String>),
}

impl AllowedHosts {
    /// `[http] allowed_hosts` (`"*"` allows any); when it is empty, the
    /// loopback names and the listen address (unless it is 0.0.0.0 or ::).
    fn from_config(config: &Config) -> Self {
        let configured = &config.http.allowed_hosts;
        if configured.iter().any(|h| h.trim() == "*") {
            return Self::Any;
        }
        let mut names = HashSet::new();
        for entry in configured {
            match host_of(entry) {
                Some(host) => {
                    names.insert(host);
                }
                None => tracing::warn!("[http] allowed_hosts: `{entry}` is not a host name"),
            }
        }
        if configured.is_empty() {
            names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
            let ip = config.listen.ip();
            if !ip.is_unspecified() {
                names.insert(ip.to_canonical().to_string());
            }
        }
        Self::Only(names)
    }

    fn allows(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(names) => names.contains(host),
        }
    }
}

/// The host of an authority (`Host` header, HTTP/2 `:authority`, or an
/// `allowed_hosts` entry), in the form the allow-list compares: the port
/// dropped, names lower-cased without a trailing dot, IP addresses in their
/// canonical text (`::1` for `[::1]` or `[0:0::1]`). `None` when it is not
/// an authority at all.
fn host_of(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => "",
            _ => after.strip_prefix(':')?,
        };
        return port_ok(port).then(|| IpAddr::V6(ip).to_canonical().to_string());
    } else if let Ok(ip) = authority.parse::<Ipv6Addr>() {
        // Bare IPv6 is not valid in `Host`, but reads well in the config.
        return Some(IpAddr::V6(ip).to_canonical().to_string());
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, ""),
        }
    };
    if !port_ok(port) {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.contains(['[', ']', ':', '/', '@', ' ']) {
        return None;
    }
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    })
}

/// An empty port (`host:`) is allowed by RFC 3986.
fn port_ok(port: &str) -> bool {
    port.is_empty() || (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
}

async fn host_layer(
    State(hosts): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    // Health probes name the pod or host address (Kubernetes sends the pod
    // IP as `Host`); what they answer is no secret worth rebinding for.
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    match check_host(&hosts, &request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn content_type_layer(
    State(served): State<Arc<ServedMethods>>,
    request: Request,
    next: Next,
) -> Response {
    if !served.may_serve(&request) {
        return next.run(request).await;
    }
    match check_content_type(&request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Every name the request gives for the server must be allowed: its `Host`
/// header and, for HTTP/2 (`:authority`) or an absolute URI, the URI's
/// authority.
fn check_host(hosts: &AllowedHosts, request: &Request) -> Result<(), ApiError> {
    let mut headers = request.headers().get_all(header::HOST).iter();
    let host_header = headers.next();
    if headers.next().is_some() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "more than one Host header".into(),
        ));
    }
    let uri_authority = request.uri().authority().map(|a| a.as_str());
    if host_header.is_none() && uri_authority.is_none() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "the request has no Host header; it is needed to check the host against \
             [http] allowed_hosts"
                .into(),
        ));
    }
    let header_text = match host_header.map(|v| v.to_str()) {
        Some(Ok(text)) => Some(text),
        Some(Err(_)) => {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "the Host header is not ASCII".into(),
            ))
        }
        None => None,
    };
    for authority in header_text.into_iter().chain(uri_authority) {
        let Some(host) = host_of(authority) else {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                format!("malformed Host `{}`", shorten(authority)),
            ));
        };
        if !hosts.allows(&host) {
            return Err(refusal(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer for the host `{}`: a name it is reached by \
                     must be listed in [http] allowed_hosts",
                    shorten(&host)
                ),
            ));
        }
    }
    Ok(())
}

/// Requests that change state must say they are JSON (or NDJSON for
/// ingest): the types a cross-site form or `fetch` without a CORS preflight
/// cannot send. DELETE without a body needs no type.
fn check_content_type(request: &Request) -> Result<(), ApiError> {
    let method = request.method();
    let needs_type =
        if *method == Method::POST || *method == Method::PUT || *method == Method::PATCH {
            true
        } else if *method == Method::DELETE {
            has_body(request)
        } else {
            false
        };
    if !needs_type {
        return Ok(());
    }
    let ingest = *method == Method::POST && request.uri().path() == INGEST_PATH;
    let accepted: &[&str] = if ingest {
        &["application/json", "application/x-ndjson"]
    } else {
        &["application/json"]
    };
    let mut types = request.headers().get_all(header::CONTENT_TYPE).iter();
    let first = types.next();
    let single = types.next().is_none();
    let essence = first
        .filter(|_| single)
        .and_then(|v| v.to_str().ok())
        .map(media_type_essence);
    match essence {
        Some(essence) if accepted.contains(&essence.as_str()) => Ok(()),
        _ => Err(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{method} {} needs Content-Type: {} (other types are refused: a page on \
                 another site could send them)",
                request.uri().path(),
                accepted.join(" or ")
            ),
        )),
    }
}

/// `application/json` of `Application/JSON; charset=utf-8`.
fn media_type_essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a body comes with the request (hyper knows a body without
/// `Content-Length` or `Transfer-Encoding` is empty).
fn has_body(request: &Request) -> bool {
    request.body().size_hint().exact() != Some(0)
}

fn refusal(status: StatusCode, message: String) -> ApiError {
    ApiError {
        status,
        message,
        position: None,
    }
}

/// At most 100 characters of what a client sent, for an error message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

struct SecurityHeaders {
    hsts: bool,
    csp: HeaderValue,
}

async fn security_headers(
    State(config): State<Arc<SecurityHeaders>>,
    request: Request,
    next: Next,
) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, config.csp.clone());
    let set = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if api {
        // Patient data must not stay in a browser's or a proxy's cache.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if config.hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
        );
    }
    response
}

/// Adds the answers of these layers to the OpenAPI document: `421` to every
/// operation, `415` to every POST, PUT and PATCH, each with the error body.
pub(crate) fn document_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let changes_state = [&mut item.post, &mut item.put, &mut item.patch];
        for operation in changes_state.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("415".into())
                .or_insert_with(|| {
                    error("Not sent as `application/json` (`/api/ingest`: or `application/x-ndjson`).")
                });
        }
        let all = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in all.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("421".into())
                .or_insert_with(|| {
                    error("The `Host` is not one this server answers for (`[http] allowed_hosts`).")
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[test]
    fn hosts_are_compared_without_port_case_brackets_or_trailing_dot() {
        assert_eq!(host_of("LocalHost:8080").as_deref(), Some("localhost"));
        assert_eq!(host_of("localhost.").as_deref(), Some("localhost"));
        assert_eq!(
            host_of("ward.example.org").as_deref(),
            Some("ward.example.org")
        );
        assert_eq!(host_of("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(host_of("[::1]").as_deref(), Some("::1"));
        assert_eq!(host_of("[0:0:0:0:0:0:0:1]").as_deref(), Some("::1"));
        assert_eq!(host_of("::1").as_deref(), Some("::1"));
        assert_eq!(host_of("[::ffff:127.0.0.1]").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("host:").as_deref(), Some("host"));
    }

    #[test]
    fn malformed_authorities_are_none() {
        for bad in [
            "",
            ":80",
            "[::1",
            "[nope]:80",
            "[::1]x",
            "[::1]80",
            "a:b",
            "a:123456",
            "u@h",
            "a b",
        ] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

    fn config(listen: &str, allowed: &[&str]) -> Config {
        let mut c = Config {
            listen: listen.parse().unwrap(),
            ..Config::default()
        };
        c.http.allowed_hosts = allowed.iter().map(|h| h.to_string()).collect();
        c
    }

    #[test]
    fn by_default_the_loopback_names_and_the_listen_address_are_allowed() {
        let hosts = AllowedHosts::from_config(&config("10.0.0.5:8080", &[]));
        for ok in ["localhost", "127.0.0.1", "::1", "10.0.0.5"] {
            assert!(hosts.allows(ok), "{ok}");
        }
        assert!(!hosts.allows("evil.example"));
        let hosts = AllowedHosts::from_config(&config("0.0.0.0:8080", &[]));
        assert!(!hosts.allows("0.0.0.0"));
        assert!(hosts.allows("localhost"));
    }

    #[test]
    fn configured_hosts_replace_the_defaults_and_a_star_allows_any() {
        let hosts = AllowedHosts::from_config(&config(
            "127.0.0.1:8080",
            &["Ward.Example.org", "[fd00::5]", "10.0.0.5:8443"],
        ));
        assert!(hosts.allows("ward.example.org"));
        assert!(hosts.allows("fd00::5"));
        assert!(hosts.allows("10.0.0.5"));
        assert!(!hosts.allows("localhost"), "the defaults are replaced");
        let any = AllowedHosts::from_config(&config("127.0.0.1:8080", &["*"]));
        assert!(any.allows("anything.example"));
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::from(body.to_string())).unwrap()
    }

    fn status(result: Result<(), ApiError>) -> Option<u16> {
        result.err().map(|e| e.status.as_u16())
    }

    #[test]
    fn the_host_header_or_uri_authority_must_be_allowed() {
        let hosts = AllowedHosts::from_config(&config("127.0.0.1:8080", &[]));
        let ok = request(Method::GET, "/", &[("host", "localhost:8080")], "");
        assert_eq!(status(check_host(&hosts, &ok)), None);
        let foreign = request(Method::GET, "/", &[("host", "evil.example")], "");
        assert_eq!(status(check_host(&hosts, &foreign)), Some(421));
        let none = request(Method::GET, "/", &[], "");
        assert_eq!(status(check_host(&hosts, &none)), Some(400));
        let twice = request(
            Method::GET,
            "/",
            &[("host", "localhost"), ("host", "evil.example")],
            "",
        );
        assert_eq!(status(check_host(&hosts, &twice)), Some(400));
        // HTTP/2's :authority (and an absolute URI) is the URI's authority.
        let h2 = request(Method::GET, "http://localhost:8080/", &[], "");
        assert_eq!(status(check_host(&hosts, &h2)), None);
        let h2_foreign = request(Method::GET, "http://evil.example/", &[], "");
        assert_eq!(status(check_host(&hosts, &h2_foreign)), Some(421));
        let mixed = request(
            Method::GET,
            "http://evil.example/",
            &[("host", "localhost")],
            "",
        );
        assert_eq!(status(check_host(&hosts, &mixed)), Some(421));
    }

    #[test]
    fn state_changes_must_be_json_and_ingest_may_be_ndjson() {
        let json = [("content-type", "application/json")];
        let json_utf8 = [("content-type", "Application/JSON; charset=utf-8")];
        let ndjson = [("content-type", "application/x-ndjson")];
        let text = [("content-type", "text/plain")];
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let multipart = [("content-type", "multipart/form-data; boundary=x")];
        // Method, path, headers, body, the refusal's status.
        type Case<'a> = (
            Method,
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a str,
            Option<u16>,
        );
        let cases: &[Case] = &[
            (Method::POST, "/api/rules", &json, "{}", None),
            (Method::POST, "/api/rules", &json_utf8, "{}", None),
            (Method::PUT, "/api/rules/x", &json, "{}", None),
            (Method::POST, "/api/rules", &text, "{}", Some(415)),
            (Method::POST, "/api/rules", &form, "a=b", Some(415)),
            (Method::POST, "/api/rules", &multipart, "", Some(415)),
            (Method::POST, "/api/rules", &ndjson, "{}", Some(415)),
            (Method::POST, "/api/rules", &[], "", Some(415)),
            (Method::PATCH, "/api/rules/x", &[], "", Some(415)),
            (Method::POST, "/api/ingest", &ndjson, "{}\n", None),
            (Method::POST, "/api/ingest", &json, "{}\n", None),
            (Method::POST, "/api/ingest", &text, "{}\n", Some(415)),
            (Method::POST, "/api/ingest", &[], "{}\n", Some(415)),
            (Method::DELETE, "/api/rules/x", &[], "", None),
            (Method::DELETE, "/api/rules/x", &text, "{}", Some(415)),
            (Method::DELETE, "/api/rules/x", &json, "{}", None),
            (Method::GET, "/api/rules", &text, "", None),
        ];
        for (method, path, headers, body, expected) in cases {
            let r = request(method.clone(), path, headers, body);
            assert_eq!(
                status(check_content_type(&r)),
                *expected,
                "{method} {path} {headers:?}"
            );
        }
        let two_types = request(
            Method::POST,
            "/api/rules",
            &[
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
            "{}",
        );
        assert_eq!(status(check_content_type(&two_types)), Some(415));
    }

    #[test]
    fn refusals_name_the_accepted_types_and_the_setting() {
        let r = request(
            Method::POST,
            "/api/ingest",
            &[("content-type", "text/plain")],
            "x",
        );
        let e = check_content_type(&r).unwrap_err();
        assert!(e.message.contains("application/x-ndjson"), "{}", e.message);
        assert!(e.message.contains("application/json"), "{}", e.message);
        let hosts = AllowedHosts::from_config(&config("127.0.0.1:8080", &[]));
        let r = request(Method::GET, "/", &[("host", "evil.example")], "");
        let e = check_host(&hosts, &r).unwrap_err();
        assert!(e.message.contains("[http] allowed_hosts"), "{}", e.message);
        assert!(e.message.contains("evil.example"), "{}", e.message);
    }

    #[test]
    fn the_document_lists_the_refusals() {
        let mut doc: utoipa::openapi::OpenApi = utoipa::openapi::OpenApiBuilder::new().build();
        doc.paths = serde_json::from_value(serde_json::json!({
            "/x": {
                "get": {"responses": {"200": {"description": "ok"}}},
                "post": {"responses": {"400": {"description": "bad"}}}
            }
        }))
        .unwrap();
        document_refusals(&mut doc);
        let v = serde_json::to_value(&doc).unwrap();
        let x = &v["paths"]["/x"];
        assert!(x["get"]["responses"]["421"].is_object());
        assert!(x["get"]["responses"]["415"].is_null());
        assert!(x["post"]["responses"]["415"].is_object());
        assert_eq!(
            x["post"]["responses"]["421"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
    }
}
