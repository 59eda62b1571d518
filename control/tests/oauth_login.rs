//! `s2uc login` / `check-auth` / `logout` with OAuth2 (authorization code
//! with PKCE), end to end: the real `s2uc` binary signs in at a local
//! authorization server over HTTPS (Globus Auth cannot be reached here, so
//! the test starts one with Globus's endpoint layout: authorize, token,
//! refresh, revoke and introspection), and a real control server configured
//! by the `s2cs` flags `--introspect-url ... --introspect-ca ...` validates
//! the tokens it hands out at the same server.
//!
//! The test plays the person at the browser: it opens the authorize URL
//! `s2uc` printed, checks what it asks for, and pastes the code (once the
//! whole redirect URL) back. It checks that the server saw a correct PKCE
//! verifier, that tokens are stored 0600 and never printed, that an expired
//! access token is refreshed before use, that the control server knows the
//! user, that logout revokes both tokens at the server, and that bad input
//! (a wrong code, an untrusted server, http) is refused with a clear line.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use clap::Parser as _;
use common::{TestServer, base_config, port_range};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const BASE: u16 = 33000;
const CLIENT_ID: &str = "native-app-7c1e";
const SCOPE: &str = "https://auth.facility.example/scopes/s2cs/scistream";
const USER: &str = "alice@facility.example";
const RS_ID: &str = "rs-client";
const RS_SECRET: &str = "rs-secret-9d2f";

/// One authorization code handed out and not yet exchanged.
struct Grant {
    challenge: String,
    scope: String,
    redirect_uri: String,
}

/// One token: whose, for what, until when, and whether it was revoked.
#[derive(Clone)]
struct Issued {
    scope: String,
    exp: u64,
    revoked: bool,
}

/// The local authorization server's state.
#[derive(Default)]
struct Idp {
    base: OnceLock<String>,
    codes: Mutex<HashMap<String, Grant>>,
    access: Mutex<HashMap<String, Issued>>,
    refresh: Mutex<HashMap<String, Issued>>,
    /// Lifetime of the access tokens the next grants carry.
    expires_in: AtomicU64,
    refreshes: AtomicU32,
    revocations: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

fn now() -> u64 {
    control::client::login::unix_now()
}

impl Idp {
    fn base(&self) -> &str {
        self.base.get().expect("the server is listening")
    }

    fn all_tokens(&self) -> Vec<String> {
        let mut all: Vec<String> = lock(&self.access).keys().cloned().collect();
        all.extend(lock(&self.refresh).keys().cloned());
        all
    }

    /// A token answer: a new access token, and a new refresh token (the
    /// server rotates them).
    fn grant(&self, scope: &str) -> serde_json::Value {
        let lifetime = self.expires_in.load(Ordering::SeqCst);
        let (at, rt) = (random_token("at"), random_token("rt"));
        let issued = Issued {
            scope: scope.into(),
            exp: now() + lifetime,
            revoked: false,
        };
        lock(&self.access).insert(at.clone(), issued.clone());
        lock(&self.refresh).insert(rt.clone(), issued);
        serde_json::json!({
            "access_token": at, "token_type": "Bearer", "expires_in": lifetime,
            "refresh_token": rt, "scope": scope, "resource_server": "s2cs",
        })
    }
}

fn oauth_error(code: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// The sign-in page: the user "consents" and is sent to the redirect URI
/// with a code, as Globus does.
async fn authorize(State(idp): State<Arc<Idp>>, uri: axum::http::Uri) -> Response {
    let q: HashMap<String, String> = match reqwest::Url::parse(&format!("https://idp{uri}")) {
        Ok(url) => url.query_pairs().into_owned().collect(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let want = |k: &str, v: &str| q.get(k).map(String::as_str) == Some(v);
    let redirect = format!("{}/v2/web/auth-code", idp.base());
    if !want("client_id", CLIENT_ID)
        || !want("response_type", "code")
        || !want("code_challenge_method", "S256")
        || !want("redirect_uri", &redirect)
        || !want("access_type", "offline")
    {
        return (StatusCode::BAD_REQUEST, format!("unexpected request {q:?}")).into_response();
    }
    let (Some(challenge), Some(state), Some(scope)) =
        (q.get("code_challenge"), q.get("state"), q.get("scope"))
    else {
        return (StatusCode::BAD_REQUEST, "no challenge, state or scope").into_response();
    };
    let code = random_token("code");
    lock(&idp.codes).insert(
        code.clone(),
        Grant {
            challenge: challenge.clone(),
            scope: scope.clone(),
            redirect_uri: redirect.clone(),
        },
    );
    let location = format!("{redirect}?code={code}&state={state}");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn token(State(idp): State<Arc<Idp>>, Form(f): Form<HashMap<String, String>>) -> Response {
    if f.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return oauth_error("invalid_client", "unknown client");
    }
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = f.get("code").cloned().unwrap_or_default();
            let Some(grant) = lock(&idp.codes).remove(&code) else {
                return oauth_error("invalid_grant", "unknown or used code");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if computed != grant.challenge {
                return oauth_error("invalid_grant", "PKCE verifier does not match");
            }
            if f.get("redirect_uri") != Some(&grant.redirect_uri) {
                return oauth_error("invalid_grant", "redirect_uri differs");
            }
            axum::Json(idp.grant(&grant.scope)).into_response()
        }
        Some("refresh_token") => {
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            let issued = lock(&idp.refresh).get(&rt).cloned();
            match issued {
                Some(issued) if !issued.revoked => {
                    // Rotated: the old refresh token is spent.
                    lock(&idp.refresh).insert(
                        rt,
                        Issued {
                            revoked: true,
                            ..issued.clone()
                        },
                    );
                    idp.refreshes.fetch_add(1, Ordering::SeqCst);
                    axum::Json(idp.grant(&issued.scope)).into_response()
                }
                _ => oauth_error("invalid_grant", "refresh token revoked or unknown"),
            }
        }
        _ => oauth_error("unsupported_grant_type", "what grant?"),
    }
}

async fn revoke(State(idp): State<Arc<Idp>>, Form(f): Form<HashMap<String, String>>) -> StatusCode {
    let t = f.get("token").cloned().unwrap_or_default();
    for table in [&idp.access, &idp.refresh] {
        if let Some(issued) = lock(table).get_mut(&t) {
            issued.revoked = true;
        }
    }
    lock(&idp.revocations).push(t);
    StatusCode::OK
}

async fn introspect(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{RS_ID}:{RS_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let t = f.get("token").cloned().unwrap_or_default();
    let answer = match lock(&idp.access).get(&t) {
        Some(i) if !i.revoked && i.exp > now() => serde_json::json!({
            "active": true, "scope": i.scope, "username": USER, "exp": i.exp,
        }),
        _ => serde_json::json!({"active": false}),
    };
    axum::Json(answer).into_response()
}

/// TLS on top of a TCP listener, for axum.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A CA (its certificate in `dir/ca.pem`) and the authorization server's
/// certificate for 127.0.0.1, signed by it. Returns the CA file, the chain
/// and the key.
fn test_pki(
    dir: &Path,
) -> (
    PathBuf,
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "facility auth test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
        .expect("CA certificate");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, issuer.pem()).expect("writing the CA");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &*issuer).expect("signing");
    (
        ca_file,
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// Starts the authorization server over HTTPS on loopback.
async fn serve_idp(dir: &Path) -> (Arc<Idp>, PathBuf) {
    let (ca_file, chain, key) = test_pki(dir);
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server certificate");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let idp = Arc::new(Idp {
        expires_in: AtomicU64::new(3600),
        ..Idp::default()
    });
    let addr = tcp.local_addr().expect("address");
    idp.base.set(format!("https://{addr}")).expect("set once");
    let app = axum::Router::new()
        .route("/v2/oauth2/authorize", get(authorize))
        .route("/v2/oauth2/token", post(token))
        .route("/v2/oauth2/token/revoke", post(revoke))
        .route("/v2/oauth2/token/introspect", post(introspect))
        .with_state(Arc::clone(&idp));
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    (idp, ca_file)
}

/// The control server, set up by the `s2cs` flags an operator would pass.
async fn control_server(idp: &Idp, ca_file: &Path, dir: &Path) -> TestServer {
    #[derive(clap::Parser)]
    struct S2csFlags {
        #[command(flatten)]
        server: control::ServerArgs,
    }
    let secret = dir.join("rs-secret");
    std::fs::write(&secret, RS_SECRET).expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let url = format!("{}/v2/oauth2/token/introspect", idp.base());
    let flags = S2csFlags::try_parse_from([
        "s2cs",
        "--introspect-url",
        &url,
        "--client-id",
        RS_ID,
        "--client-secret-file",
        &secret.display().to_string(),
        "--required-scope",
        SCOPE,
        "--introspect-ca",
        &ca_file.display().to_string(),
    ])
    .expect("s2cs flags parse");
    let auth = flags
        .server
        .into_config()
        .expect("flags make a configuration")
        .auth;
    let mut cfg = base_config(port_range(BASE, 10), dir);
    cfg.auth = auth;
    TestServer::start(cfg).await
}

/// What one s2uc run printed; never a token the server issued.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn clean_env(cmd: &mut tokio::process::Command, home: &Path) {
    cmd.env("HOME", home)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    for var in [
        "S2UC_TOKEN",
        "S2UC_AUTH_SERVER",
        "S2UC_CLIENT_ID",
        "S2UC_AUTH_CA",
    ] {
        cmd.env_remove(var);
    }
}

fn check_no_token(idp: &Idp, what: &str, run: &Run) {
    for t in idp.all_tokens() {
        assert!(
            !run.stdout.contains(&t) && !run.stderr.contains(&t),
            "{what} printed a token:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

async fn s2uc(idp: &Idp, home: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_s2uc"));
    cmd.args(args).stdin(std::process::Stdio::null());
    clean_env(&mut cmd, home);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("s2uc must finish within 60 s")
        .expect("running s2uc");
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    check_no_token(idp, &format!("s2uc {args:?}"), &run);
    run
}

/// What the person at the browser pastes back.
enum Paste {
    Code,
    WholeUrl,
    Bogus,
}

/// `s2uc login`, with the test as the person at the browser.
async fn login(idp: &Idp, home: &Path, ca: &Path, paste: Paste) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_s2uc"));
    cmd.args([
        "login",
        "--auth-server",
        idp.base(),
        "--client-id",
        CLIENT_ID,
        "--scope",
        SCOPE,
        "--auth-ca",
    ])
    .arg(ca)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    clean_env(&mut cmd, home);
    let mut child = cmd.spawn().expect("starting s2uc login");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut printed = String::new();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.expect("reading s2uc") {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("https://") {
                return line;
            }
        }
        panic!("s2uc login printed no URL:\n{printed}");
    })
    .await
    .expect("s2uc login must print the URL within 30 s");
    // The browser: open the URL, get sent to the page with the code.
    let browser = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(ca).expect("CA")).expect("CA PEM"),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let answer = browser.get(&url).send().await.expect("opening the URL");
    assert_eq!(
        answer.status(),
        StatusCode::FOUND,
        "the authorize URL was refused: {url}"
    );
    let location = answer.headers()[header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let code = reqwest::Url::parse(&location)
        .expect("location URL")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    let pasted = match paste {
        Paste::Code => code,
        Paste::WholeUrl => location,
        Paste::Bogus => "code-that-was-never-issued".into(),
    };
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(format!("{pasted}\n").as_bytes())
        .await
        .expect("pasting");
    drop(stdin);
    let mut stderr = String::new();
    let mut err_pipe = child.stderr.take().expect("piped");
    let rest = async {
        while let Some(line) = stdout.next_line().await.expect("reading s2uc") {
            printed.push_str(&line);
            printed.push('\n');
        }
        tokio::io::AsyncReadExt::read_to_string(&mut err_pipe, &mut stderr)
            .await
            .expect("stderr");
        child.wait().await.expect("s2uc login exits")
    };
    let status = tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .expect("s2uc login must finish within 30 s");
    let run = Run {
        ok: status.success(),
        stdout: printed,
        stderr,
    };
    check_no_token(idp, "s2uc login", &run);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_use_and_logout_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let (idp, ca) = serve_idp(dir.path()).await;
    let srv = control_server(&idp, &ca, dir.path()).await;
    let server_cert = dir.path().join("s2cs.crt");
    std::fs::write(&server_cert, &srv.cert_pem).expect("server cert");
    let s2cs = srv.addr.to_string();
    let cert = server_cert.display().to_string();
    let ca_s = ca.display().to_string();
    let store = home.join(".scistream/s2uc-logins.json");

    // A code that was never issued: refused by the server, said plainly,
    // nothing stored.
    let r = login(&idp, &home, &ca, Paste::Bogus).await;
    assert!(!r.ok, "a bogus code must fail: {}", r.stdout);
    assert!(
        r.stderr
            .contains("s2uc: error: exchanging the authorization code")
            && r.stderr.contains("invalid_grant"),
        "{}",
        r.stderr
    );
    assert!(!store.exists());

    // Sign in; the first access token is about to expire (30 s is within
    // the refresh margin), the refreshed ones live an hour.
    idp.expires_in.store(30, Ordering::SeqCst);
    let r = login(&idp, &home, &ca, Paste::Code).await;
    assert!(r.ok, "login failed: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("logged in for scope {SCOPE}")),
        "{}",
        r.stdout
    );
    let mode = std::fs::metadata(&store)
        .expect("login store")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the login store must be 0600");
    assert_eq!(
        std::fs::metadata(store.parent().expect("dir"))
            .expect("dir")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    idp.expires_in.store(3600, Ordering::SeqCst);

    // check-auth: the expired token is refreshed first, then the control
    // server (introspecting at the same authorization server) knows the user.
    let check = [
        "check-auth",
        "--s2cs",
        &s2cs,
        "--server-cert",
        &cert,
        "--auth-ca",
        &ca_s,
    ];
    let r = s2uc(&idp, &home, &check).await;
    assert!(r.ok, "check-auth failed: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("the login for scope {SCOPE}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("expires in 60 min"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("identity \"{USER}\"")),
        "{}",
        r.stdout
    );
    assert_eq!(idp.refreshes.load(Ordering::SeqCst), 1, "one refresh");

    // The refreshed token is used as it is: no second refresh; a session
    // call with it works, and --json says what the login is.
    let mut json = check.to_vec();
    json.push("--json");
    let r = s2uc(&idp, &home, &json).await;
    assert!(r.ok, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("one JSON document");
    assert_eq!(v["login"]["scope"], SCOPE);
    assert_eq!(v["login"]["refreshable"], true);
    assert_eq!(v["server"]["identity"], USER);
    let r = s2uc(
        &idp,
        &home,
        &["list", "--s2cs", &s2cs, "--server-cert", &cert],
    )
    .await;
    assert!(r.ok, "list with the login's token: {}", r.stderr);
    assert_eq!(
        idp.refreshes.load(Ordering::SeqCst),
        1,
        "no refresh of a live token"
    );

    // Logout revokes the access and the refresh token at the server and
    // deletes them here.
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&store).expect("store")).expect("JSON");
    let login_entry = &stored["logins"][SCOPE];
    let (at, rt) = (
        login_entry["access_token"]
            .as_str()
            .expect("access")
            .to_owned(),
        login_entry["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned(),
    );
    let r = s2uc(&idp, &home, &["logout", "--auth-ca", &ca_s]).await;
    assert!(r.ok, "logout failed: {}", r.stderr);
    assert!(
        r.stdout.contains("1 login(s) revoked and deleted"),
        "{}",
        r.stdout
    );
    let revoked = lock(&idp.revocations).clone();
    assert!(
        revoked.contains(&at) && revoked.contains(&rt),
        "both revoked"
    );
    assert!(lock(&idp.access)[&at].revoked && lock(&idp.refresh)[&rt].revoked);
    assert!(!store.exists(), "logout deletes the store");
    let r = s2uc(&idp, &home, &["check-auth"]).await;
    assert!(r.stdout.contains("token: none"), "{}", r.stdout);

    // Pasting the whole page URL works too (its state is this login's).
    let r = login(&idp, &home, &ca, Paste::WholeUrl).await;
    assert!(r.ok, "login with the URL: {}", r.stderr);
    let r = s2uc(&idp, &home, &check).await;
    assert!(
        r.ok && r.stdout.contains(USER),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_plain_authorization_servers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let (idp, _ca) = serve_idp(dir.path()).await;
    // Without --auth-ca the test CA is not trusted: the exchange fails
    // with the certificate named, before any code could be sent.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_s2uc"));
    cmd.args([
        "login",
        "--auth-server",
        idp.base(),
        "--client-id",
        CLIENT_ID,
        "--scope",
        SCOPE,
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    clean_env(&mut cmd, &home);
    let mut child = cmd.spawn().expect("s2uc");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(b"some-code\n").await.expect("paste");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("bounded")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("s2uc: error: exchanging the authorization code")
            && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let r = s2uc(
        &idp,
        &home,
        &["login", "--auth-server", "http://127.0.0.1:9"],
    )
    .await;
    assert!(!r.ok);
    assert!(r.stderr.contains("must be an https:// URL"), "{}", r.stderr);
}
