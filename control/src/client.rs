//! The client side: a connection to a control server over TLS with a pinned
//! server certificate, an optional client certificate ([`ClientIdentity`],
//! for servers that require one) and a bearer token, and the operations
//! `s2uc` and `appctrl` are made of (inbound, outbound, one-shot connect of
//! both sides, release, status, list, watch, hello).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::proto;
use crate::proto::control_client::ControlClient;
use crate::proto::control_ext_client::ControlExtClient;
use crate::secret::SessionSecret;
use crate::tls_probe::{self, ProbeTarget};

/// Client-side errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Network/TLS: could not reach the server.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Server: a call failed.
    #[error("{call} failed: {code:?}: {message}")]
    Rpc {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// User: bad input.
    #[error("{0}")]
    Invalid(String),
    /// Server: the token was refused (UNAUTHENTICATED).
    #[error("the server {server} refused the token (UNAUTHENTICATED): {message}")]
    TokenRefused { server: String, message: String },
    /// Server: a token is required and none was sent (UNAUTHENTICATED).
    #[error(
        "the server {server} requires a token (UNAUTHENTICATED): {message}; pass --token, set $S2UC_TOKEN or run s2uc login"
    )]
    TokenMissing { server: String, message: String },
}

impl ClientError {
    /// A failed call. A call that failed below gRPC (the connection broke)
    /// carries the cause in the status's source chain: it is appended.
    pub fn rpc(call: &'static str, s: tonic::Status) -> Self {
        let mut message = s.message().to_owned();
        let chain = source_chain(&s);
        if chain.starts_with(&message) {
            message = chain;
        } else if !chain.is_empty() && !message.contains(&chain) {
            message = format!("{message}: {chain}");
        }
        ClientError::Rpc {
            call,
            code: s.code(),
            message,
        }
    }

    /// The gRPC code, for RPC failures.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct TokenInterceptor(Option<MetadataValue<Ascii>>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An authenticated channel.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

/// How to reach a control server.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// "host:port" of the control server.
    pub s2cs: String,
    /// The server certificate (PEM) to pin.
    pub server_cert: Option<PathBuf>,
    /// The server certificate (PEM) itself (takes precedence).
    pub server_cert_pem: Option<Vec<u8>>,
    /// TLS name to verify (default: the host part of `s2cs`).
    pub tls_domain: Option<String>,
    /// Bearer token.
    pub token: Option<Zeroizing<String>>,
    /// Client certificate and key, for servers that require one.
    pub client_identity: Option<ClientIdentity>,
    /// Plaintext (only for servers started with TLS disabled).
    pub plaintext: bool,
}

/// A client certificate chain and its private key (PEM), checked when
/// loaded: presented to control servers that require client certificates.
#[derive(Clone)]
pub struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
}

impl ClientIdentity {
    /// Reads `cert` and `key` (PEM). The key must be readable by its owner
    /// only (mode 0600), like every other secret the control plane reads.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| ClientError::Io {
                context: format!("reading {what} {}", path.display()),
                source: e,
            })
        };
        let cert_pem = read(cert, "client certificate")?;
        crate::auth::check_private_file(key, "client key")
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let key_pem = Zeroizing::new(read(key, "client key")?);
        Self::from_pem(cert_pem, key_pem.to_vec()).map_err(|e| match e {
            ClientError::Invalid(reason) => ClientError::Invalid(format!(
                "{reason} (certificate {}, key {})",
                cert.display(),
                key.display()
            )),
            other => other,
        })
    }

    /// Checks that `cert_pem` holds a certificate chain and `key_pem` a
    /// private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, ClientError> {
        let key_pem = Zeroizing::new(key_pem);
        let mut certs = 0;
        for c in CertificateDer::pem_slice_iter(&cert_pem) {
            c.map_err(|e| {
                ClientError::Invalid(format!("the client certificate is not valid PEM: {e}"))
            })?;
            certs += 1;
        }
        if certs == 0 {
            return Err(ClientError::Invalid(
                "the client certificate file holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)".into(),
            ));
        }
        // The parsed key is dropped at once; only the PEM is kept (zeroized).
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            ClientError::Invalid(format!(
                "the client key file holds no usable private key (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {e}"
            ))
        })?;
        Ok(ClientIdentity { cert_pem, key_pem })
    }
}

/// The `source()` chain of `e` (not `e` itself), joined with ": ".
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// What a TLS alert from the server (`alert`, e.g. "received fatal alert:
/// UnknownCA") means for the user.
fn tls_refusal_hint(alert: &str) -> &'static str {
    const NO_CERT: &[&str] = &["CertificateRequired", "HandshakeFailure"];
    const BAD_CERT: &[&str] = &[
        "UnknownCA",
        "BadCertificate",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateExpired",
        "CertificateRevoked",
        "DecryptError",
    ];
    if NO_CERT.iter().any(|a| alert.contains(a)) {
        "it requires a client certificate: pass --client-cert and --client-key"
    } else if BAD_CERT.iter().any(|a| alert.contains(a)) {
        "it does not accept this client certificate: not signed by a CA it trusts, expired, or not for client authentication"
    } else {
        "see the server's log"
    }
}

/// The message of a call that failed because the server refused the TLS
/// handshake with `alert`.
fn refused_message(message: &str, alert: &str) -> String {
    format!(
        "{message}; the server refused the TLS handshake ({alert}): {}",
        tls_refusal_hint(alert)
    )
}

/// The host part of "host:port" / "[v6]:port".
pub fn host_of(s2cs: &str) -> &str {
    let h = match s2cs.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => s2cs,
    };
    h.trim_start_matches('[').trim_end_matches(']')
}

/// Both services over one channel.
#[derive(Clone)]
pub struct Client {
    /// `scistream.Control`
    pub control: ControlClient<AuthChannel>,
    /// `scistream.ControlExt`
    pub ext: ControlExtClient<AuthChannel>,
    /// How to repeat the TLS handshake to diagnose a closed connection
    /// (None over plaintext).
    probe: Option<Arc<ProbeTarget>>,
}

/// Result of the PROD side setup.
pub struct Inbound {
    /// Session id.
    pub uid: String,
    /// The PROD gateway's WAN listeners.
    pub listeners: Vec<String>,
    /// ProdApp listeners (targets).
    pub prod_listeners: Vec<String>,
    /// The data-channel secret (None from servers that do not send one).
    pub secret: Option<SessionSecret>,
}

/// Result of a one-shot connect.
pub struct Connected {
    /// Session id (same on both gateways).
    pub uid: String,
    /// The PROD gateway's WAN listeners.
    pub prod_listeners: Vec<String>,
    /// Where ConsApp connects (the CONS gateway's LAN listeners).
    pub cons_listeners: Vec<String>,
}

/// A fresh random (version 4) UUID string.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Builds the ProdApp listener list from `--remote_ip` and `--receiver_ports`.
pub fn listeners_from(remote_ip: &str, ports: &str) -> Result<Vec<String>, ClientError> {
    let ip: std::net::IpAddr = remote_ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            ClientError::Invalid(format!("--remote_ip {remote_ip:?} is not an IP address"))
        })?;
    ports
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let port: u16 = p
                .trim()
                .parse()
                .map_err(|_| ClientError::Invalid(format!("bad port {p:?} in --receiver_ports")))?;
            Ok(SocketAddr::new(ip, port).to_string())
        })
        .collect()
}

impl Client {
    /// Connects (TLS with the pinned certificate unless `plaintext`).
    pub async fn connect(opts: &ClientOptions) -> Result<Self, ClientError> {
        let scheme = if opts.plaintext { "http" } else { "https" };
        let uri = format!("{scheme}://{}", opts.s2cs);
        let conn_err = |source| ClientError::Connect {
            endpoint: opts.s2cs.clone(),
            source,
        };
        let mut ep = Endpoint::from_shared(uri)
            .map_err(conn_err)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let mut probe = None;
        if !opts.plaintext {
            let pem = match (&opts.server_cert_pem, &opts.server_cert) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => std::fs::read(path).map_err(|e| ClientError::Io {
                    context: format!("reading server certificate {}", path.display()),
                    source: e,
                })?,
                (None, None) => {
                    return Err(ClientError::Invalid(
                        "no server certificate: pass --server-cert FILE (the gateway's control certificate)".into(),
                    ));
                }
            };
            let domain = opts
                .tls_domain
                .clone()
                .unwrap_or_else(|| host_of(&opts.s2cs).to_owned());
            probe = Some(ProbeTarget {
                s2cs: opts.s2cs.clone(),
                server_cert_pem: pem.clone(),
                domain: domain.clone(),
                identity: opts
                    .client_identity
                    .as_ref()
                    .map(|id| (id.cert_pem.clone(), id.key_pem.clone())),
            });
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name(domain);
            if let Some(id) = &opts.client_identity {
                tls = tls.identity(Identity::from_pem(&id.cert_pem, &*id.key_pem));
            }
            ep = ep.tls_config(tls).map_err(|e| {
                ClientError::Invalid(format!(
                    "TLS settings for {} rejected: {e}: {}{}",
                    opts.s2cs,
                    source_chain(&e),
                    if opts.client_identity.is_some() {
                        " (does the client key belong to the client certificate?)"
                    } else {
                        ""
                    }
                ))
            })?;
        }
        let channel = match ep.connect().await {
            Ok(c) => c,
            Err(e) => {
                let err = conn_err(e);
                return Err(match &probe {
                    Some(p) => match tls_probe::refusal(p.clone()).await {
                        Some(alert) => {
                            ClientError::Invalid(refused_message(&err.to_string(), &alert))
                        }
                        None => err,
                    },
                    None => err,
                });
            }
        };
        let token = match &opts.token {
            Some(t) => Some(
                format!("Bearer {}", t.as_str())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::Invalid("the token is not printable ASCII".into()))?,
            ),
            None => None,
        };
        let ic = TokenInterceptor(token);
        Ok(Client {
            control: ControlClient::with_interceptor(channel.clone(), ic.clone()),
            ext: ControlExtClient::with_interceptor(channel, ic),
            probe: probe.map(Arc::new),
        })
    }

    /// The result of a call; a failure below gRPC (the connection closed)
    /// is diagnosed with [`tls_probe`]: a refused TLS handshake (client
    /// certificate missing or not accepted) is said so.
    async fn finish<T>(
        &self,
        call: &'static str,
        r: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, ClientError> {
        let status = match r {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => s,
        };
        // A status the server sent has no source; one made from a transport
        // failure does.
        let below_grpc = std::error::Error::source(&status).is_some()
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            );
        let err = ClientError::rpc(call, status);
        let (Some(probe), true) = (&self.probe, below_grpc) else {
            return Err(err);
        };
        match (tls_probe::refusal(ProbeTarget::clone(probe)).await, err) {
            (
                Some(alert),
                ClientError::Rpc {
                    call,
                    code,
                    message,
                },
            ) => Err(ClientError::Rpc {
                call,
                code,
                message: refused_message(&message, &alert),
            }),
            (_, err) => Err(err),
        }
    }

    /// `req` (asking for a channel secret).
    pub async fn req(
        &self,
        uid: &str,
        role: &str,
        num_conn: i32,
        rate: i32,
    ) -> Result<proto::Response, ClientError> {
        self.req_with(uid, role, num_conn, rate, true).await
    }

    /// `req`; without `want_channel_secret` it is what SciStream's own
    /// client sends (the gateways then derive the secret from the uid).
    pub async fn req_with(
        &self,
        uid: &str,
        role: &str,
        num_conn: i32,
        rate: i32,
        want_channel_secret: bool,
    ) -> Result<proto::Response, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .req(proto::Request {
                uid: uid.into(),
                role: role.into(),
                num_conn,
                rate,
                want_channel_secret,
            })
            .await;
        self.finish("req", r).await
    }

    /// `hello`.
    pub async fn hello(
        &self,
        uid: &str,
        role: &str,
        listeners: &[String],
    ) -> Result<proto::AppResponse, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .hello(proto::Hello {
                uid: uid.into(),
                prod_listeners: listeners.to_vec(),
                role: role.into(),
            })
            .await;
        self.finish("hello", r).await
    }

    /// `hello`, retried while the server does not know the uid yet (the req
    /// sent just before may not have arrived): first after 5 ms, backing off
    /// to 100 ms, for up to 5 s (as long as SciStream's own client waits).
    pub async fn hello_after_req(
        &self,
        uid: &str,
        role: &str,
        listeners: &[String],
    ) -> Result<proto::AppResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut pause = Duration::from_millis(5);
        loop {
            match self.hello(uid, role, listeners).await {
                Err(e)
                    if e.code() == Some(tonic::Code::NotFound)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    /// `update`.
    pub async fn update(
        &self,
        uid: &str,
        role: &str,
        targets: &[String],
        secret: Option<&SessionSecret>,
    ) -> Result<proto::Response, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .update(proto::UpdateTargets {
                uid: uid.into(),
                remote_listeners: targets.to_vec(),
                role: role.into(),
                channel_secret: secret.map(|s| s.expose().to_vec()).unwrap_or_default(),
            })
            .await;
        self.finish("update", r).await
    }

    /// `release`.
    pub async fn release(&self, uid: &str) -> Result<proto::Response, ClientError> {
        let mut c = self.control.clone();
        let r = c.release(proto::Release { uid: uid.into() }).await;
        self.finish("release", r).await
    }

    /// The PROD side: req + hello (ProdApp's listeners) + update.
    /// `want_secret` false asks as SciStream's own client does.
    pub async fn inbound(
        &self,
        uid: &str,
        num_conn: i32,
        rate: i32,
        prod_app: &[String],
        want_secret: bool,
    ) -> Result<Inbound, ClientError> {
        let (resp, hello) = tokio::join!(
            self.req_with(uid, "PROD", num_conn, rate, want_secret),
            self.hello_after_req(uid, "PROD", prod_app)
        );
        let resp = resp?;
        hello?;
        let secret = if resp.channel_secret.is_empty() {
            None
        } else {
            Some(
                SessionSecret::from_bytes(&resp.channel_secret)
                    .map_err(|e| ClientError::Invalid(e.to_string()))?,
            )
        };
        self.update(uid, "PROD", &resp.prod_listeners, None).await?;
        Ok(Inbound {
            uid: uid.to_owned(),
            listeners: resp.listeners,
            prod_listeners: resp.prod_listeners,
            secret,
        })
    }

    /// The CONS side: req + hello + update with the PROD gateway's listeners
    /// and the secret. Returns where ConsApp connects.
    pub async fn outbound(
        &self,
        uid: &str,
        prod_gateway: &[String],
        num_conn: i32,
        rate: i32,
        secret: Option<&SessionSecret>,
    ) -> Result<Vec<String>, ClientError> {
        let (resp, hello) = tokio::join!(
            self.req(uid, "CONS", num_conn, rate),
            self.hello_after_req(uid, "CONS", prod_gateway)
        );
        let resp = resp?;
        hello?;
        let up = self.update(uid, "CONS", prod_gateway, secret).await?;
        Ok(if up.listeners.is_empty() {
            resp.listeners
        } else {
            up.listeners
        })
    }

    /// `ControlExt.status`.
    pub async fn status(&self, uid: &str) -> Result<proto::SessionStatus, ClientError> {
        let mut c = self.ext.clone();
        let r = c.status(proto::StatusRequest { uid: uid.into() }).await;
        self.finish("status", r).await
    }

    /// `ControlExt.list`.
    pub async fn list(&self) -> Result<proto::SessionList, ClientError> {
        let mut c = self.ext.clone();
        let r = c.list(proto::ListRequest {}).await;
        self.finish("list", r).await
    }

    /// `ControlExt.version` (also tells the identity the server sees).
    pub async fn version(&self) -> Result<proto::VersionInfo, ClientError> {
        let mut c = self.ext.clone();
        let r = c.version(proto::VersionRequest {}).await;
        self.finish("version", r).await
    }

    /// `ControlExt.watch`.
    pub async fn watch(
        &self,
        uid: &str,
        interval_ms: u32,
    ) -> Result<tonic::Streaming<proto::WatchEvent>, ClientError> {
        let mut c = self.ext.clone();
        let r = c
            .watch(proto::WatchRequest {
                uid: uid.into(),
                interval_ms,
            })
            .await;
        self.finish("watch", r).await
    }
}

/// Sets up both gateways for one stream: PROD side first (ProdApp's
/// listeners as targets), then CONS side with the PROD gateway's listeners
/// and the secret. On a CONS failure the PROD session is released.
pub async fn connect_both(
    prod: &Client,
    cons: &Client,
    prod_app: &[String],
    num_conn: i32,
    rate: i32,
) -> Result<Connected, ClientError> {
    connect_both_as(prod, cons, prod_app, num_conn, rate, true).await
}

/// [`connect_both`]; with `want_secret` false, as SciStream's own client
/// does it: no data-channel secret is asked for or sent, and the gateways
/// derive a weak one from the uid (for tests of such sessions).
pub async fn connect_both_as(
    prod: &Client,
    cons: &Client,
    prod_app: &[String],
    num_conn: i32,
    rate: i32,
    want_secret: bool,
) -> Result<Connected, ClientError> {
    let uid = new_uid();
    let inbound = prod
        .inbound(&uid, num_conn, rate, prod_app, want_secret)
        .await?;
    match cons
        .outbound(
            &uid,
            &inbound.listeners,
            num_conn,
            rate,
            inbound.secret.as_ref(),
        )
        .await
    {
        Ok(cons_listeners) => Ok(Connected {
            uid,
            prod_listeners: inbound.listeners,
            cons_listeners,
        }),
        Err(e) => {
            let _ = prod.release(&uid).await;
            Err(e)
        }
    }
}

/// Default token file: `$HOME/.scistream/s2uc-token`.
pub fn default_token_file() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".scistream").join("s2uc-token")
}

/// Where a token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token`
    Flag,
    /// `S2UC_TOKEN`
    Env,
    /// the token file
    File,
}

/// Picks the token: flag, then environment, then the token file (which must
/// be mode 0600). None when there is none at all.
pub fn resolve_token(
    flag: Option<&str>,
    env: Option<&str>,
    file: &Path,
) -> Result<Option<(Zeroizing<String>, TokenSource)>, ClientError> {
    if let Some(t) = flag.filter(|t| !t.is_empty()) {
        return Ok(Some((Zeroizing::new(t.to_owned()), TokenSource::Flag)));
    }
    if let Some(t) = env.filter(|t| !t.is_empty()) {
        return Ok(Some((Zeroizing::new(t.to_owned()), TokenSource::Env)));
    }
    if !file.exists() {
        return Ok(None);
    }
    crate::auth::check_private_file(file, "token file")
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    let t = Zeroizing::new(
        std::fs::read_to_string(file)
            .map_err(|e| ClientError::Io {
                context: format!("reading token file {}", file.display()),
                source: e,
            })?
            .trim()
            .to_owned(),
    );
    Ok((!t.is_empty()).then_some((t, TokenSource::File)))
}

/// Checks a token before it is stored: not empty, and printable ASCII
/// without spaces (it travels in the `authorization` metadata as
/// "Bearer TOKEN"). Surrounding whitespace (a pasted newline) is ignored.
/// The error never contains the token.
pub fn validate_token(token: &str) -> Result<(), ClientError> {
    let t = token.trim();
    if t.is_empty() {
        return Err(ClientError::Invalid(
            "empty token: pass --token TOKEN, or the token on standard input".into(),
        ));
    }
    if t.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
    {
        return Err(ClientError::Invalid(
            "the token starts with \"Bearer \": store the token alone, without that prefix".into(),
        ));
    }
    if let Some((i, _)) = t.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        return Err(ClientError::Invalid(format!(
            "the token has a space, control or non-ASCII character at byte {}: a bearer token is printable ASCII without spaces (is it the right text?)",
            i + 1
        )));
    }
    Ok(())
}

/// Writes the token file with mode 0600 (directory 0700), atomically.
pub fn write_token_file(file: &Path, token: &str) -> Result<(), ClientError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |context: String| move |e| ClientError::Io { context, source: e };
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(token.trim().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, file).map_err(io(format!("renaming to {}", file.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_format() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert!(crate::types::SessionId::parse(&u).is_ok());
        assert_ne!(u, new_uid());
    }

    #[test]
    fn hosts_and_listeners() {
        assert_eq!(host_of("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("gw.example.org"), "gw.example.org");
        assert_eq!(
            listeners_from("10.0.0.1", "5074,5075").unwrap(),
            vec!["10.0.0.1:5074", "10.0.0.1:5075"]
        );
        assert_eq!(listeners_from("::1", "80").unwrap(), vec!["[::1]:80"]);
        assert!(listeners_from("host", "80").is_err());
    }

    #[test]
    fn token_sources() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sub").join("tok");
        assert!(resolve_token(None, None, &f).unwrap().is_none());
        write_token_file(&f, "file-token\n").unwrap();
        let (t, s) = resolve_token(None, None, &f).unwrap().unwrap();
        assert_eq!((t.as_str(), s), ("file-token", TokenSource::File));
        let (t, s) = resolve_token(None, Some("env"), &f).unwrap().unwrap();
        assert_eq!((t.as_str(), s), ("env", TokenSource::Env));
        let (t, s) = resolve_token(Some("flag"), Some("env"), &f)
            .unwrap()
            .unwrap();
        assert_eq!((t.as_str(), s), ("flag", TokenSource::Flag));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(resolve_token(None, None, &f).is_err());
    }

    #[test]
    fn token_validation_never_echoes_the_token() {
        validate_token("  abc.DEF-123_~\n").expect("printable ASCII is a token");
        for bad in [
            "",
            " \n",
            "Bearer secret-xyz",
            "secret xyz",
            "secret\u{e9}xyz",
            "se\tcret",
        ] {
            let e = validate_token(bad)
                .expect_err("must be refused")
                .to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn client_identity_pem_is_checked() {
        let ck = rcgen::generate_simple_self_signed(vec!["client".to_string()]).expect("rcgen");
        let cert = ck.cert.pem().into_bytes();
        let key = ck.signing_key.serialize_pem().into_bytes();
        ClientIdentity::from_pem(cert.clone(), key.clone()).expect("a certificate and its key");
        let e = ClientIdentity::from_pem(b"not pem".to_vec(), key.clone()).err();
        assert!(
            e.is_some_and(|e| e.to_string().contains("no certificate")),
            "a file without certificate is refused"
        );
        let e = ClientIdentity::from_pem(cert.clone(), cert).err();
        assert!(
            e.is_some_and(|e| e.to_string().contains("no usable private key")),
            "a certificate is not a key"
        );
    }

    #[test]
    fn tls_alerts_get_a_hint() {
        let h = tls_refusal_hint("received fatal alert: CertificateRequired");
        assert!(h.contains("requires a client certificate"), "{h}");
        let h = tls_refusal_hint("received fatal alert: UnknownCA");
        assert!(h.contains("does not accept this client certificate"), "{h}");
        let m = refused_message("list failed", "received fatal alert: DecodeError");
        assert!(
            m.contains("refused the TLS handshake") && m.contains("DecodeError"),
            "{m}"
        );
    }
}
