//! Test helpers: a real control server with TLS on 127.0.0.1:0, in-process,
//! and [`s2uc`], which runs the real `s2uc` binary.
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

/// A session id the test chose (valid by construction: panics otherwise).
/// Tests of the server's uid validation send strings through
/// `Client::raw()` instead.
pub fn uid(s: &str) -> control::SessionId {
    control::SessionId::parse(s).expect("a valid test uid")
}

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

/// Token introspection at `http://{idp}/introspect` with the client
/// "rs-client" / "rs-secret" (the secret in a 0600 file in `dir`).
pub fn introspection(
    idp: SocketAddr,
    dir: &std::path::Path,
    required_scope: Option<&str>,
) -> AuthConfig {
    use std::os::unix::fs::PermissionsExt as _;
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, "rs-secret\n").expect("client secret file");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 0600");
    AuthConfig::Introspection(control::auth::IntrospectionConfig {
        url: format!("http://{idp}/introspect"),
        client_id: "rs-client".into(),
        client_secret: None,
        client_secret_file: Some(secret_file),
        required_scope: required_scope.map(str::to_owned),
        required_audience: None,
        cache_max_secs: 300,
        ca_file: None,
    })
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
        TestServer::start_with(cfg, |dp| dp).await
    }

    /// Like [`TestServer::start`], the userspace data plane seen through
    /// `wrap` (e.g. one that is slow to start sessions).
    pub async fn start_with(
        cfg: ServerConfig,
        wrap: impl FnOnce(Arc<PlainCopyDataPlane>) -> Arc<dyn control::DataPlane>,
    ) -> TestServer {
        let state_dir = cfg.state_dir.clone().expect("tests use a state dir");
        let dp = Arc::new(PlainCopyDataPlane::new());
        let server = ControlServer::new(cfg, wrap(dp.clone()))
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

    /// Connects with `opts` and makes one call (`version`): the caller's
    /// identity, or the error as text.
    pub async fn call_with(opts: &ClientOptions) -> Result<String, String> {
        let client = Client::connect(opts).await.map_err(|e| e.to_string())?;
        client
            .version()
            .await
            .map(|v| v.identity)
            .map_err(|e| e.to_string())
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

/// Runs the real `s2uc` binary with `args`, `env` on top of a clean
/// environment for it (HOME = `home`, no S2UC_* variables from the caller)
/// and `stdin` as its standard input; stdout and stderr are piped (not a
/// terminal).
pub async fn s2uc(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    home: &std::path::Path,
    stdin: &[u8],
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_s2uc"));
    cmd.args(args)
        .env("HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in [
        "S2UC_TOKEN",
        "S2UC_CLIENT_CERT",
        "S2UC_CLIENT_KEY",
        "S2UC_CHANNEL_SECRET",
        "S2UC_AUTH_SERVER",
        "S2UC_CLIENT_ID",
        "S2UC_AUTH_CA",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting s2uc");
    let mut input = child.stdin.take().expect("s2uc's stdin is piped");
    input.write_all(stdin).await.expect("writing s2uc's stdin");
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("s2uc must finish within 30 s")
        .expect("collecting s2uc's output")
}
