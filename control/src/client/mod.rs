//! The client side: a connection to a control server over TLS with a pinned
//! server certificate, an optional client certificate ([`ClientIdentity`],
//! for servers that require one) and a bearer token, and the operations
//! `s2uc` and `appctrl` are made of (inbound, outbound, one-shot connect of
//! both sides, release, status, list, watch, hello).
//!
//! The operations are typed: a session id is a [`SessionId`] and a side is a
//! [`Role`]; they become the protocol's strings only in the gRPC messages
//! built here. [`Client::raw`] hands out the generated gRPC clients for what
//! the typed operations cannot send (tests of the server's own validation,
//! SciStream's own client's quirks).
//!
//! Layout: `error` ([`ClientError`]), `transport` (token interceptor,
//! connection options, client certificate, TLS refusal hints), `token` (the
//! pasted token's file), `login` and `login_store` (the OAuth2 login with
//! PKCE and its tokens per scope), this file (the operations).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

mod error;
pub mod login;
mod login_store;
pub(crate) mod server_tls;
mod tls_probe;
mod token;
mod transport;

pub use error::ClientError;
pub use login_store::{LoginStore, default_login_store};
pub use token::{TokenSource, default_token_file, resolve_token, validate_token, write_token_file};
use transport::refused_message;
pub use transport::{AuthChannel, ClientIdentity, ClientOptions, TokenInterceptor, host_of};

use crate::proto;
use crate::proto::control_client::ControlClient;
use crate::proto::control_ext_client::ControlExtClient;
use crate::secret::SessionSecret;
use crate::types::{Role, SessionId};
use tls_probe::ProbeTarget;

/// Both services over one channel.
#[derive(Clone)]
pub struct Client {
    /// `scistream.Control`
    control: ControlClient<AuthChannel>,
    /// `scistream.ControlExt`
    ext: ControlExtClient<AuthChannel>,
    /// How to repeat the TLS handshake to diagnose a closed connection
    /// (None over plaintext).
    probe: Option<Arc<ProbeTarget>>,
}

/// The generated gRPC clients of one [`Client`] (see [`Client::raw`]).
#[derive(Clone)]
pub struct RawClients {
    /// `scistream.Control`
    pub control: ControlClient<AuthChannel>,
    /// `scistream.ControlExt`
    pub ext: ControlExtClient<AuthChannel>,
}

/// Result of the PROD side setup.
pub struct Inbound {
    /// Session id.
    pub uid: SessionId,
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
    pub uid: SessionId,
    /// The PROD gateway's WAN listeners.
    pub prod_listeners: Vec<String>,
    /// Where ConsApp connects (the CONS gateway's LAN listeners).
    pub cons_listeners: Vec<String>,
}

/// A fresh session id: a random (version 4) UUID.
pub fn new_uid() -> SessionId {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    #[allow(
        clippy::expect_used,
        reason = "a UUID (hex digits and dashes) is always a valid session id"
    )]
    SessionId::parse(&uuid).expect("a UUID is a valid session id")
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
    /// The generated gRPC clients (clones sharing this client's channel and
    /// token), for messages the typed operations cannot send: an invalid uid
    /// or role, an empty role, a malformed secret (tests of the server's
    /// validation), or SciStream's own client's exact calls. Their results
    /// are raw [`tonic::Status`]es; [`ClientError::rpc`] turns one into the
    /// error the typed operations return (without the TLS refusal
    /// diagnosis).
    pub fn raw(&self) -> RawClients {
        RawClients {
            control: self.control.clone(),
            ext: self.ext.clone(),
        }
    }

    /// Connects (TLS with the pinned certificate unless `plaintext`).
    pub async fn connect(opts: &ClientOptions) -> Result<Self, ClientError> {
        // TLS, when on, is made by `server_tls` below tonic: the URI is http.
        let uri = format!("http://{}", opts.s2cs);
        let conn_err = |source| ClientError::Connect {
            endpoint: opts.s2cs.clone(),
            source,
        };
        let ep = Endpoint::from_shared(uri)
            .map_err(conn_err)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let mut probe = None;
        let connected = if opts.plaintext {
            ep.connect().await
        } else {
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
            let identity = opts
                .client_identity
                .as_ref()
                .map(|id| (id.cert_pem.as_slice(), id.key_pem.as_slice()));
            let config = server_tls::client_config(&pem, identity)?;
            server_tls::connect(ep, opts.s2cs.clone(), domain, config).await
        };
        let channel = match connected {
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
        uid: &SessionId,
        role: Role,
        num_conn: i32,
        rate: i32,
    ) -> Result<proto::Response, ClientError> {
        self.req_with(uid, role, num_conn, rate, true).await
    }

    /// `req`; without `want_channel_secret` it is what SciStream's own
    /// client sends (the gateways then derive the secret from the uid).
    pub async fn req_with(
        &self,
        uid: &SessionId,
        role: Role,
        num_conn: i32,
        rate: i32,
        want_channel_secret: bool,
    ) -> Result<proto::Response, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .req(proto::Request {
                uid: uid.as_str().to_owned(),
                role: role.as_str().to_owned(),
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
        uid: &SessionId,
        role: Role,
        listeners: &[String],
    ) -> Result<proto::AppResponse, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .hello(proto::Hello {
                uid: uid.as_str().to_owned(),
                prod_listeners: listeners.to_vec(),
                role: role.as_str().to_owned(),
            })
            .await;
        self.finish("hello", r).await
    }

    /// `hello`, retried while the server does not know the uid yet (the req
    /// sent just before may not have arrived): first after 5 ms, backing off
    /// to 100 ms, for up to 5 s (as long as SciStream's own client waits).
    pub async fn hello_after_req(
        &self,
        uid: &SessionId,
        role: Role,
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
        uid: &SessionId,
        role: Role,
        targets: &[String],
        secret: Option<&SessionSecret>,
    ) -> Result<proto::Response, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .update(proto::UpdateTargets {
                uid: uid.as_str().to_owned(),
                remote_listeners: targets.to_vec(),
                role: role.as_str().to_owned(),
                channel_secret: secret.map(|s| s.expose().to_vec()).unwrap_or_default(),
            })
            .await;
        self.finish("update", r).await
    }

    /// `release`.
    pub async fn release(&self, uid: &SessionId) -> Result<proto::Response, ClientError> {
        let mut c = self.control.clone();
        let r = c
            .release(proto::Release {
                uid: uid.as_str().to_owned(),
            })
            .await;
        self.finish("release", r).await
    }

    /// The PROD side: req + hello (ProdApp's listeners) + update.
    /// `want_secret` false asks as SciStream's own client does.
    pub async fn inbound(
        &self,
        uid: &SessionId,
        num_conn: i32,
        rate: i32,
        prod_app: &[String],
        want_secret: bool,
    ) -> Result<Inbound, ClientError> {
        let (resp, hello) = tokio::join!(
            self.req_with(uid, Role::Prod, num_conn, rate, want_secret),
            self.hello_after_req(uid, Role::Prod, prod_app)
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
        self.update(uid, Role::Prod, &resp.prod_listeners, None)
            .await?;
        Ok(Inbound {
            uid: uid.clone(),
            listeners: resp.listeners,
            prod_listeners: resp.prod_listeners,
            secret,
        })
    }

    /// The CONS side: req + hello + update with the PROD gateway's listeners
    /// and the secret. Returns where ConsApp connects.
    pub async fn outbound(
        &self,
        uid: &SessionId,
        prod_gateway: &[String],
        num_conn: i32,
        rate: i32,
        secret: Option<&SessionSecret>,
    ) -> Result<Vec<String>, ClientError> {
        let (resp, hello) = tokio::join!(
            self.req(uid, Role::Cons, num_conn, rate),
            self.hello_after_req(uid, Role::Cons, prod_gateway)
        );
        let resp = resp?;
        hello?;
        let up = self.update(uid, Role::Cons, prod_gateway, secret).await?;
        Ok(if up.listeners.is_empty() {
            resp.listeners
        } else {
            up.listeners
        })
    }

    /// `ControlExt.status`.
    pub async fn status(&self, uid: &SessionId) -> Result<proto::SessionStatus, ClientError> {
        let mut c = self.ext.clone();
        let r = c
            .status(proto::StatusRequest {
                uid: uid.as_str().to_owned(),
            })
            .await;
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
        uid: &SessionId,
        interval_ms: u32,
    ) -> Result<tonic::Streaming<proto::WatchEvent>, ClientError> {
        let mut c = self.ext.clone();
        let r = c
            .watch(proto::WatchRequest {
                uid: uid.as_str().to_owned(),
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

#[cfg(test)]
mod tests {
    use super::transport::tls_refusal_hint;
    use super::*;

    #[test]
    fn uid_format() {
        let u = new_uid();
        let s = u.as_str();
        assert_eq!(s.len(), 36);
        assert_eq!(SessionId::parse(s).as_ref().ok(), Some(&u));
        assert_eq!(&s[14..15], "4", "version 4");
        assert!("89ab".contains(&s[19..20]), "RFC 4122 variant: {s}");
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
