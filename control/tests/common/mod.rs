//! Test helpers: a real control server with TLS on 127.0.0.1:0, in-process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use control::auth::AuthConfig;
use control::client::{Client, ClientOptions};
use control::ports::PortRange;
use control::{ControlServer, PlainCopyDataPlane, ServerConfig, ServerHandle};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// Hands out disjoint port ranges below the ephemeral range; each test
/// binary passes its own base.
pub fn port_range(base: u16, len: u16) -> PortRange {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let off = NEXT.fetch_add(len, Ordering::SeqCst);
    let first = base + off;
    PortRange {
        first,
        last: first + len - 1,
    }
}

/// A baseline config: no auth, loopback allowed, state in `dir`.
pub fn base_config(range: PortRange, dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        port_range: range,
        listener_ip: "127.0.0.1".parse().unwrap(),
        hello_timeout_secs: 5.0,
        auth: Some(AuthConfig::None),
        allow: control::allowlist::AllowList(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]),
        state_dir: Some(dir.to_path_buf()),
        ..ServerConfig::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub cert_pem: Vec<u8>,
    pub fingerprint: String,
    pub handle: ServerHandle,
    pub dp: Arc<PlainCopyDataPlane>,
    pub state_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<Result<(), control::ControlError>>>,
}

impl TestServer {
    pub async fn start(cfg: ServerConfig) -> TestServer {
        let state_dir = cfg.state_dir.clone().expect("tests use a state dir");
        let dp = Arc::new(PlainCopyDataPlane::new());
        let server = ControlServer::new(cfg, dp.clone())
            .await
            .expect("control server must start");
        let cert_pem = server.cert_pem().expect("TLS is on").to_vec();
        let fingerprint = server.tls_fingerprint().expect("TLS is on").to_owned();
        let handle = server.handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind control listener");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            cert_pem,
            fingerprint,
            handle,
            dp,
            state_dir,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    pub fn options(&self, token: Option<&str>) -> ClientOptions {
        ClientOptions {
            s2cs: self.addr.to_string(),
            server_cert_pem: Some(self.cert_pem.clone()),
            token: token.map(|t| Zeroizing::new(t.to_owned())),
            ..ClientOptions::default()
        }
    }

    pub async fn client(&self, token: Option<&str>) -> Client {
        Client::connect(&self.options(token))
            .await
            .expect("client must connect over TLS")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await
                .expect("server task must not panic")
                .expect("server must exit cleanly");
        }
    }
}

/// Polls `f` until it is true or the deadline passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
