//! Why a control server closed the connection: when a server that requires
//! client certificates refuses ours (or our lack of one), TLS 1.3 lets the
//! client finish its side of the handshake first, and the server's alert
//! then arrives on a connection gRPC is already using, which tonic reports
//! only as "connection closed". After such a failure the client makes one
//! fresh handshake here with the same settings (pinned server certificate,
//! server name, client certificate) and reads once: a TLS alert is the
//! server's verdict, anything else means TLS was not the problem.
//!
//! Only run after a call has failed below gRPC, so a working connection
//! costs nothing extra.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use zeroize::Zeroizing;

/// How long the probe waits to connect, and then for the server's verdict.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the probe needs to repeat the client's handshake.
#[derive(Clone)]
pub(crate) struct ProbeTarget {
    /// "host:port".
    pub s2cs: String,
    /// The pinned server certificate (PEM).
    pub server_cert_pem: Vec<u8>,
    /// The TLS name checked in the server's certificate.
    pub domain: String,
    /// Client certificate chain and key (PEM), if the client presents one.
    pub identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

/// The TLS alert with which the server refuses this client's handshake
/// (e.g. "received fatal alert: CertificateRequired"), or `None` if it
/// does not refuse it (or the probe itself cannot run).
pub(crate) async fn refusal(target: ProbeTarget) -> Option<String> {
    tokio::task::spawn_blocking(move || probe(&target))
        .await
        .ok()
        .flatten()
}

/// The same TLS configuration the client connected with.
fn config(t: &ProbeTarget) -> Option<rustls::ClientConfig> {
    let identity = t
        .identity
        .as_ref()
        .map(|(cert, key)| (cert.as_slice(), key.as_slice()));
    super::server_tls::client_config(&t.server_cert_pem, identity).ok()
}

fn probe(t: &ProbeTarget) -> Option<String> {
    let cfg = Arc::new(config(t)?);
    let name = ServerName::try_from(t.domain.clone()).ok()?;
    let addr = t.s2cs.to_socket_addrs().ok()?.next()?;
    let sock = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    sock.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    sock.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let conn = rustls::ClientConnection::new(cfg, name).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // Our side of the handshake, including our certificate (if any).
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return alert(&e);
        }
    }
    // The server judges our certificate after our Finished: the next thing it
    // sends is either an alert or, once accepted, its HTTP/2 settings.
    let mut buf = [0u8; 512];
    match tls.read(&mut buf) {
        // Closed without an alert: not a TLS refusal.
        Ok(0) => None,
        // Its first bytes: accepted.
        Ok(_) => None,
        Err(e) => alert(&e),
    }
}

/// The text of a TLS alert the server sent, if `e` is one.
fn alert(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    matches!(inner, rustls::Error::AlertReceived(_)).then(|| inner.to_string())
}
