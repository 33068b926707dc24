//! HTTPS with rustls: the certificate and key from `[http]`, and a listener
//! for `axum::serve` whose handshakes run off the accept loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past it the accept loop waits for one to
/// end (new connections queue in the kernel's backlog), which bounds the
/// memory a flood of half-open clients can take.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes one peer address may have in flight: one client holding
/// idle connections open cannot take every slot above from the others.
const MAX_HANDSHAKES_PER_PEER: usize = 32;

/// Handshakes in flight per peer address.
#[derive(Clone, Default)]
struct PeerSlots(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One handshake's claim on its peer's slots, given back when dropped.
struct PeerSlot {
    slots: PeerSlots,
    ip: std::net::IpAddr,
}

impl PeerSlots {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock().expect("peer slots lock");
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.0.lock().expect("peer slots lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Established connections waiting for `axum::serve` to take them.
const READY_QUEUE: usize = 64;

/// The server's TLS settings: the PEM certificate chain and private key
/// (PKCS#8, PKCS#1 or SEC1), ALPN `http/1.1`, and ring as the crypto
/// provider, passed in rather than installed process-wide.
pub(crate) fn load_tls_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "reading the TLS certificate chain ([http] tls_cert_file) {}",
                cert_file.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "no PEM certificate (BEGIN CERTIFICATE) in [http] tls_cert_file {}",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "reading the TLS private key ([http] tls_key_file) {}: expected a PEM PKCS#8, \
             PKCS#1 or SEC1 key",
            key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "using the certificate {} with the key {} ([http] tls_cert_file, tls_key_file)",
                cert_file.display(),
                key_file.display()
            )
        })?;
    // HTTP/1.1 only: axum's server is built without HTTP/2 here, so
    // offering h2 would break clients that pick it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An `axum::serve` listener that speaks TLS. A task accepts TCP
/// connections and gives each handshake a task of its own, bounded by
/// [`HANDSHAKE_TIMEOUT`], so a slow or broken client never holds up another
/// one; failed handshakes are logged at debug and dropped. Dropping the
/// listener (axum does at graceful shutdown) stops that task, closes the
/// port and abandons the handshakes in progress.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: std::io::Result<SocketAddr>,
    accepting: tokio::task::AbortHandle,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local_addr = tcp.local_addr();
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Self {
            ready,
            local_addr,
            accepting: accepting.abort_handle(),
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped, or
            // if it panicked: then no connection ever comes.
            None => {
                tracing::error!("the TLS accept loop stopped: no new connections are accepted");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    // Owned here, so aborting this task aborts the handshakes too.
    let mut handshakes = JoinSet::new();
    let peers = PeerSlots::default();
    loop {
        while handshakes.len() >= MAX_HANDSHAKES {
            handshakes.join_next().await;
        }
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            // Reap finished handshakes while waiting for connections.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            () = ready.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let Some(slot) = peers.take(peer.ip(), MAX_HANDSHAKES_PER_PEER) else {
            tracing::debug!(%peer, "too many TLS handshakes from this address; connection dropped");
            continue;
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        handshakes.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // Fails only when the server is shutting down.
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}")
                }
            }
        });
    }
}

/// What axum's own TCP listener does: a connection that went away before
/// it was accepted is nothing; anything else (out of file descriptors) is
/// logged and retried after a second.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn one_peer_holds_at_most_its_share_of_handshakes() {
        let slots = PeerSlots::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| slots.take(a, 3).expect("a slot")).collect();
        assert!(slots.take(a, 3).is_none(), "a fourth from the same peer");
        assert!(slots.take(b, 3).is_some(), "another peer is not affected");
        drop(held);
        assert!(
            slots.take(a, 3).is_some(),
            "finished handshakes give their slots back"
        );
        assert_eq!(slots.0.lock().unwrap().len(), 0, "nothing left behind");
    }

    fn self_signed() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.pem(), cert.key_pair.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_load_with_http1_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let config = load_tls_config(
            &write(dir.path(), "cert.pem", &cert),
            &write(dir.path(), "key.pem", &key),
        )
        .unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn errors_name_the_file_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let cert_file = write(dir.path(), "cert.pem", &cert);
        let key_file = write(dir.path(), "key.pem", &key);

        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", load_tls_config(&missing, &key_file).unwrap_err());
        assert!(
            e.contains("tls_cert_file") && e.contains("missing.pem"),
            "{e}"
        );

        // A key where the certificate should be: no certificate in it.
        let e = format!("{:#}", load_tls_config(&key_file, &key_file).unwrap_err());
        assert!(
            e.contains("no PEM certificate") && e.contains("key.pem"),
            "{e}"
        );

        // A certificate where the key should be.
        let e = format!("{:#}", load_tls_config(&cert_file, &cert_file).unwrap_err());
        assert!(e.contains("tls_key_file") && e.contains("cert.pem"), "{e}");

        // A key that is not the certificate's.
        let (_, other_key) = self_signed();
        let other = write(dir.path(), "other-key.pem", &other_key);
        let e = format!("{:#}", load_tls_config(&cert_file, &other).unwrap_err());
        assert!(e.contains("other-key.pem") && e.contains("cert.pem"), "{e}");
    }
}
