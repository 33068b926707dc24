//! How the HTTP server is reached, and what a browser may do with it
//! (issue 14): the startup checks on the listen address, TLS (rustls) when
//! `[http]` names a certificate and key, and the layers every route sits
//! behind ([`protect`]: the `Host` allow-list against DNS rebinding, the
//! content-type rule against cross-site form posts, security headers).

mod guard;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::serve::ListenerExt as _;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::Config;

pub(crate) use guard::{document_refusals, protect};
use tls::{load_tls_config, TlsListener};

/// Whether requests need credentials: `[auth] required` when set, otherwise
/// on except for `serve --demo`.
pub(crate) fn effective_auth_required(config: &Config, demo_mode: bool) -> bool {
    config.auth.required.unwrap_or(!demo_mode)
}

/// Refuses settings that would expose the server unprotected: plain HTTP
/// or no authentication on an address other hosts can reach, or half a TLS
/// configuration.
pub(crate) fn check_startup(config: &Config, auth_required: bool) -> Result<()> {
    let listen = config.listen;
    let http = &config.http;
    match (&http.tls_cert_file, &http.tls_key_file) {
        (Some(_), None) => bail!(
            "[http] tls_cert_file is set but tls_key_file is not: HTTPS needs both the \
             certificate chain and its private key"
        ),
        (None, Some(_)) => bail!(
            "[http] tls_key_file is set but tls_cert_file is not: HTTPS needs both the \
             certificate chain and its private key"
        ),
        _ => {}
    }
    if let Some(login) = &config.auth.ui_login {
        for (what, url) in [
            ("authorization_endpoint", &login.authorization_endpoint),
            ("token_endpoint", &login.token_endpoint),
        ] {
            if !crate::auth::jwt::fetchable_safely(url) {
                bail!(
                    "[auth.ui_login] {what} must be https:// (plain http only to a loopback \
                     address): sign-in codes and tokens would travel in the clear"
                );
            }
        }
        if login.client_id.trim().is_empty() {
            bail!("[auth.ui_login] client_id is empty");
        }
    }
    if is_loopback(listen) {
        return Ok(());
    }
    if !auth_required {
        bail!(
            "authentication may be off only on a loopback address: listen = {listen} is \
             reachable from other hosts; set [auth] required = true (`serve --demo` turns \
             it off unless [auth] required is set) or listen on 127.0.0.1"
        );
    }
    if tls_configured(config) {
        return Ok(());
    }
    if !http.insecure_http {
        bail!(
            "refusing to serve plain HTTP on {listen}, which is not a loopback address: set \
             [http] tls_cert_file and tls_key_file to serve HTTPS, or [http] insecure_http = \
             true if a TLS-terminating proxy is in front of wardwatch"
        );
    }
    Ok(())
}

/// Warnings about settings that start but are probably not what was meant.
fn warn_about(config: &Config) {
    let http = &config.http;
    if tls_configured(config) && http.insecure_http {
        tracing::warn!("[http] insecure_http is ignored: TLS is configured, HTTPS only");
    }
    if config.listen.ip().is_unspecified() && http.allowed_hosts.is_empty() {
        tracing::warn!(
            "listening on {} with no [http] allowed_hosts: only requests naming localhost, \
             127.0.0.1 or [::1] are answered, others get 421; list the names clients (and \
             health probes) use",
            config.listen
        );
    }
}

/// Both `[http] tls_cert_file` and `tls_key_file` are set.
pub(crate) fn tls_configured(config: &Config) -> bool {
    config.http.tls_cert_file.is_some() && config.http.tls_key_file.is_some()
}

fn is_loopback(addr: SocketAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too.
    addr.ip().to_canonical().is_loopback()
}

/// The HTTP side of the server: settings checked and the certificate
/// loaded ([`Endpoint::prepare`], before storage is opened, so a bad
/// certificate fails the start at once), then bound and served.
pub(crate) struct Endpoint {
    listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Endpoint {
    /// Checks the settings ([`check_startup`]) and loads the certificate and
    /// key; binds nothing yet.
    pub(crate) fn prepare(config: &Config, auth_required: bool) -> Result<Self> {
        check_startup(config, auth_required)?;
        warn_about(config);
        let tls = match (&config.http.tls_cert_file, &config.http.tls_key_file) {
            (Some(cert), Some(key)) => Some(load_tls_config(cert, key)?),
            _ => None,
        };
        Ok(Self {
            listen: config.listen,
            tls,
        })
    }

    /// Opens the port.
    pub(crate) async fn bind(self) -> Result<BoundEndpoint> {
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {}", self.listen))?;
        Ok(BoundEndpoint {
            listener,
            tls: self.tls,
        })
    }
}

/// A bound [`Endpoint`].
pub(crate) struct BoundEndpoint {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl BoundEndpoint {
    /// `https://ADDR` or `http://ADDR`, for the log.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.listener.local_addr() {
            Ok(addr) => format!("{scheme}://{addr}"),
            Err(_) => format!("{scheme}://?"),
        }
    }

    /// Serves `app` until `shutdown` completes, then lets the requests in
    /// flight finish (axum's graceful shutdown). Either way handlers can
    /// extract `ConnectInfo<SocketAddr>`, the peer's address.
    pub(crate) async fn serve(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
        match self.tls {
            None => {
                axum::serve(self.listener, make_service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(tls) => {
                // `tap_io` only for its `Connected` impl: axum hands any
                // tapped listener's address to `ConnectInfo`, and the orphan
                // rule keeps us from writing that impl for our own listener.
                let listener = TlsListener::new(self.listener, tls).tap_io(|_| {});
                axum::serve(listener, make_service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config(listen: &str) -> Config {
        Config {
            listen: listen.parse().unwrap(),
            ..Config::default()
        }
    }

    fn message(result: Result<()>) -> String {
        format!("{:#}", result.expect_err("refused"))
    }

    #[test]
    fn loopback_starts_with_plain_http_and_without_authentication() {
        for listen in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "127.1.2.3:80",
            "[::ffff:127.0.0.1]:8080",
        ] {
            check_startup(&config(listen), false).unwrap();
            check_startup(&config(listen), true).unwrap();
        }
    }

    #[test]
    fn ui_login_endpoints_must_be_https_or_loopback() {
        let login = |auth: &str, token: &str| crate::config::UiLoginConfig {
            authorization_endpoint: auth.into(),
            token_endpoint: token.into(),
            client_id: "wardwatch-ui".into(),
            scope: "openid".into(),
            name: "IdP".into(),
        };
        let mut c = config("127.0.0.1:8080");
        c.auth.ui_login = Some(login(
            "https://idp.example/auth",
            "http://127.0.0.1:9/token",
        ));
        check_startup(&c, true).unwrap();
        c.auth.ui_login = Some(login(
            "http://idp.example/auth",
            "https://idp.example/token",
        ));
        let m = message(check_startup(&c, true));
        assert!(m.contains("authorization_endpoint must be https://"), "{m}");
        c.auth.ui_login = Some(login(
            "https://idp.example/auth",
            "http://idp.example/token",
        ));
        let m = message(check_startup(&c, true));
        assert!(m.contains("token_endpoint must be https://"), "{m}");
    }

    #[test]
    fn plain_http_on_a_reachable_address_is_refused_naming_the_settings() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            let m = message(check_startup(&config(listen), true));
            assert!(m.contains("refusing to serve plain HTTP"), "{m}");
            assert!(m.contains(listen), "{m}");
            for setting in ["tls_cert_file", "tls_key_file", "insecure_http = true"] {
                assert!(m.contains(setting), "{setting} not named: {m}");
            }
        }
    }

    #[test]
    fn insecure_http_or_tls_allows_a_reachable_address() {
        let mut c = config("0.0.0.0:8080");
        c.http.insecure_http = true;
        check_startup(&c, true).unwrap();
        let mut c = config("0.0.0.0:8080");
        c.http.tls_cert_file = Some(PathBuf::from("cert.pem"));
        c.http.tls_key_file = Some(PathBuf::from("key.pem"));
        check_startup(&c, true).unwrap();
    }

    #[test]
    fn half_a_tls_configuration_is_refused_even_on_loopback() {
        let mut c = config("127.0.0.1:8080");
        c.http.tls_cert_file = Some(PathBuf::from("cert.pem"));
        let m = message(check_startup(&c, true));
        assert!(m.contains("tls_key_file is not"), "{m}");
        let mut c = config("127.0.0.1:8080");
        c.http.tls_key_file = Some(PathBuf::from("key.pem"));
        let m = message(check_startup(&c, true));
        assert!(m.contains("tls_cert_file is not"), "{m}");
    }

    #[test]
    fn authentication_off_is_refused_off_loopback_whatever_the_transport() {
        let mut c = config("0.0.0.0:8080");
        c.http.tls_cert_file = Some(PathBuf::from("cert.pem"));
        c.http.tls_key_file = Some(PathBuf::from("key.pem"));
        c.http.insecure_http = true;
        let m = message(check_startup(&c, false));
        assert!(
            m.contains("authentication may be off only on a loopback address"),
            "{m}"
        );
        assert!(m.contains("[auth] required"), "{m}");
    }

    #[test]
    fn authentication_defaults_to_on_except_for_the_demo() {
        let mut c = Config::default();
        assert!(effective_auth_required(&c, false));
        assert!(!effective_auth_required(&c, true));
        c.auth.required = Some(true);
        assert!(effective_auth_required(&c, true));
        c.auth.required = Some(false);
        assert!(!effective_auth_required(&c, false));
    }

    #[test]
    fn a_missing_certificate_file_is_named_before_anything_is_bound() {
        let mut c = config("127.0.0.1:0");
        c.http.tls_cert_file = Some(PathBuf::from("/nonexistent/wardwatch-cert.pem"));
        c.http.tls_key_file = Some(PathBuf::from("/nonexistent/wardwatch-key.pem"));
        let m = match Endpoint::prepare(&c, true) {
            Ok(_) => panic!("prepared with a missing certificate"),
            Err(e) => format!("{e:#}"),
        };
        assert!(m.contains("/nonexistent/wardwatch-cert.pem"), "{m}");
    }
}
