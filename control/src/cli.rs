//! Command lines of `s2uc` and `appctrl` (clap definitions) and what each
//! command does. The binaries only parse, set up logging and call [`run_s2uc`]
//! or [`run_appctrl`]. SciStream's underscore spellings (`--server_cert`,
//! `--num_conn`, `--remote_ip`, `--receiver_ports`) are accepted as aliases.
//!
//! Session uids and roles given on the command line are checked here
//! ([`SessionId::parse`], [`Role::parse`]) before any connection is made; a
//! bad one is refused with a message naming the field and the value.
//!
//! Credentials are global options of both binaries: the bearer token
//! ([`TokenOpts`]) and, for servers that require client certificates, a
//! client certificate and key ([`ClientCertOpts`], also from
//! `$S2UC_CLIENT_CERT` / `$S2UC_CLIENT_KEY`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use tokio_stream::StreamExt;
use zeroize::Zeroizing;

use crate::cli_login::token_of;
use crate::client::{
    Client, ClientError, ClientIdentity, ClientOptions, TokenSource, connect_both_as,
    default_token_file, listeners_from, new_uid, resolve_token,
};
use crate::secret::SessionSecret;
use crate::types::{Role, SessionId};
use crate::watch_view::WatchView;
use crate::{cli_json, status_text};

/// How to reach one control server.
#[derive(Args, Clone, Debug)]
pub struct ServerOpts {
    /// Control server address (host:port).
    #[arg(long, default_value = "localhost:5000")]
    pub s2cs: String,
    /// The server's control certificate (PEM) to pin.
    #[arg(
        long = "server-cert",
        alias = "server_cert",
        default_value = "server.crt"
    )]
    pub server_cert: PathBuf,
    /// TLS name to verify instead of the host part of --s2cs.
    #[arg(long)]
    pub tls_domain: Option<String>,
}

pub use crate::cli_login::TokenOpts;

/// The client certificate presented to servers that require one (`s2cs
/// --client-ca`).
#[derive(Args, Clone, Debug, Default)]
pub struct ClientCertOpts {
    /// Client certificate (PEM) for servers that require client certificates.
    #[arg(
        long,
        global = true,
        env = "S2UC_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM, mode 0600) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "S2UC_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl ClientCertOpts {
    /// Loads and checks the certificate and key, if given.
    pub fn load(&self) -> Result<Option<ClientIdentity>, ClientError> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => ClientIdentity::load(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => Err(ClientError::Invalid(
                "--client-cert and --client-key must be given together".into(),
            )),
        }
    }
}

/// Session shape.
#[derive(Args, Clone, Debug)]
pub struct StreamOpts {
    /// Number of parallel connections (listeners) per side.
    #[arg(long = "num-conn", alias = "num_conn", default_value_t = 5)]
    pub num_conn: i32,
    /// Cap the session at this many Mbit/s (default 0: no cap, unless the
    /// gateway's operator sets a maximum; `s2uc status` shows the cap in
    /// force and where it came from).
    #[arg(long, default_value_t = 0, value_name = "MBPS")]
    pub rate: i32,
}

/// What `s2uc --help` ends with: output for scripts and exit status.
const S2UC_AFTER_HELP: &str = "\
OUTPUT FOR SCRIPTS:
  connect, status, list and check-auth take --json and then print one JSON
  document on stdout (field names are stable; absent values are null).
  session (status; list prints {\"sessions\": [...]}): uid, role, state, owner,
  num_conn, listeners, prod_listeners, targets, created_unix, legacy_secret,
  rate_cap_mbps (null: no cap), rate_source, counters {bytes_to_target,
  bytes_from_target, connections_total, connections_active, udp {datagrams_to_target,
  bytes_to_target, datagrams_from_target, bytes_from_target, flows_total,
  flows_active, flows_refused, dropped_oversize, dropped_rate, dropped_backlog,
  max_payload}}, restore_error,
  pinned_peer. connect: uid, prod_listeners, consumer_listeners, setup_seconds.
  check-auth: token {present, source}, login {scope, auth_server, expires_unix,
  refreshable} (when the token is a login's), server {address, version, identity}.

EXIT STATUS:
  0  the command did what it says.
  1  it failed: one line on stderr, `s2uc: error: ` and the causes.
  2  the command line is wrong (unknown flag, missing argument).";

/// The SciStream user client.
#[derive(Parser, Debug)]
#[command(
    name = "s2uc",
    version,
    about = "SciStream user client: sets up streams through gateways",
    after_long_help = S2UC_AFTER_HELP
)]
pub struct S2uc {
    /// Token options.
    #[command(flatten)]
    pub token: TokenOpts,
    /// Client certificate options.
    #[command(flatten)]
    pub cert: ClientCertOpts,
    /// Command.
    #[command(subcommand)]
    pub cmd: S2ucCmd,
}

/// s2uc commands.
#[derive(Subcommand, Debug)]
pub enum S2ucCmd {
    /// Set up the PROD side (gateway beside ProdApp).
    InboundRequest {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        stream: StreamOpts,
        /// ProdApp's IP.
        #[arg(long = "remote-ip", alias = "remote_ip", default_value = "127.0.0.1")]
        remote_ip: String,
        /// ProdApp's ports, comma-separated.
        #[arg(
            long = "receiver-ports",
            alias = "receiver_ports",
            default_value = "5074"
        )]
        receiver_ports: String,
    },
    /// Set up the CONS side with the PROD gateway's listeners.
    OutboundRequest {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        stream: StreamOpts,
        /// Data-channel secret (hex) printed by inbound-request.
        #[arg(long, env = "S2UC_CHANNEL_SECRET", hide_env_values = true)]
        channel_secret: Option<String>,
        /// Session uid from inbound-request.
        uid: String,
        /// PROD gateway listeners, comma-separated ip:port.
        prod_lstn: String,
    },
    /// Release a session.
    Release {
        #[command(flatten)]
        server: ServerOpts,
        /// Session uid.
        uid: String,
    },
    /// Show where the token comes from and, with --s2cs, who the server says you are.
    CheckAuth {
        /// Ask this server to validate the token.
        #[arg(long)]
        s2cs: Option<String>,
        /// The server's control certificate (PEM).
        #[arg(
            long = "server-cert",
            alias = "server_cert",
            default_value = "server.crt"
        )]
        server_cert: PathBuf,
        /// Print one JSON document: token {present, source} and, with
        /// --s2cs, server {address, version, identity}.
        #[arg(long)]
        json: bool,
    },
    /// Sign in (OAuth2 with PKCE, Globus Auth by default) and store the
    /// tokens (mode 0600); with --token or --token-stdin, store a token
    /// pasted by hand.
    Login {
        #[command(flatten)]
        opts: crate::cli_login::LoginOpts,
    },
    /// Revoke the stored logins at their servers and delete them and the
    /// token file.
    Logout,
    /// Set up both sides in one command and print where ConsApp connects.
    Connect {
        /// PROD gateway control server.
        #[arg(long)]
        prod_s2cs: String,
        /// CONS gateway control server.
        #[arg(long)]
        cons_s2cs: String,
        /// PROD gateway's control certificate.
        #[arg(long)]
        prod_cert: PathBuf,
        /// CONS gateway's control certificate.
        #[arg(long)]
        cons_cert: PathBuf,
        #[command(flatten)]
        stream: StreamOpts,
        /// ProdApp listeners, comma-separated ip:port.
        #[arg(long)]
        producer: String,
        /// Ask for no data-channel secret, as SciStream's own client does
        /// (the gateways derive a weak one from the uid): for tests of such
        /// sessions only.
        #[arg(long, hide = true)]
        as_old_client: bool,
        /// Print one JSON document: uid, prod_listeners, consumer_listeners,
        /// setup_seconds.
        #[arg(long)]
        json: bool,
    },
    /// Show one session.
    Status {
        #[command(flatten)]
        server: ServerOpts,
        /// Print the session as one JSON document.
        #[arg(long)]
        json: bool,
        /// Session uid.
        uid: String,
    },
    /// List your sessions.
    List {
        #[command(flatten)]
        server: ServerOpts,
        /// Print `{"sessions": [...]}` as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write man pages and shell completions into OUT (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// The folder (man/ and completions/ are made in it).
        out: PathBuf,
    },
    /// Live throughput of a session.
    Watch {
        #[command(flatten)]
        server: ServerOpts,
        /// Interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u32,
        /// Session uid.
        uid: String,
    },
}

/// The application controller.
#[derive(Parser, Debug)]
#[command(name = "appctrl", version, about = "SciStream application controller")]
pub struct AppCtrl {
    /// Token options.
    #[command(flatten)]
    pub token: TokenOpts,
    /// Client certificate options.
    #[command(flatten)]
    pub cert: ClientCertOpts,
    /// Command.
    #[command(subcommand)]
    pub cmd: AppCtrlCmd,
}

/// appctrl commands.
#[derive(Subcommand, Debug)]
pub enum AppCtrlCmd {
    /// Announce the application's listeners for a session.
    Hello {
        #[command(flatten)]
        server: ServerOpts,
        /// Session uid.
        uid: String,
        /// PROD or CONS.
        role: String,
        /// Listeners, comma-separated ip:port.
        listeners: String,
    },
    /// Start mock producer listeners (echo servers on loopback), announce
    /// them with hello and serve until Ctrl-C.
    Mock {
        #[command(flatten)]
        server: ServerOpts,
        /// Session uid.
        uid: String,
        /// PROD or CONS.
        #[arg(default_value = "PROD")]
        role: String,
        /// Number of mock listeners.
        #[arg(long, default_value_t = 1)]
        num_listeners: usize,
    },
    /// Write man pages and shell completions into OUT (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// The folder (man/ and completions/ are made in it).
        out: PathBuf,
    },
}

/// `generate-docs`: the binary's man pages and completions, made from `cmd`.
fn generate_docs(cmd: clap::Command, out: &Path) -> Result<(), ClientError> {
    let files =
        crate::cli_docs::write(cmd, crate::cli_docs::CLIENT_EXIT_STATUS, out).map_err(|e| {
            ClientError::Io {
                context: format!("writing documents into {}", out.display()),
                source: std::io::Error::other(e),
            }
        })?;
    println!("wrote {} files into {}", files.len(), out.display());
    Ok(())
}

async fn connect(s: &ServerOpts, t: &TokenOpts, c: &ClientCertOpts) -> Result<Client, ClientError> {
    Client::connect(&ClientOptions {
        s2cs: s.s2cs.clone(),
        server_cert: Some(s.server_cert.clone()),
        tls_domain: s.tls_domain.clone(),
        token: token_of(t).await?,
        client_identity: c.load()?,
        ..ClientOptions::default()
    })
    .await
}

/// Where a token came from, for `check-auth` (never the token itself).
fn describe_source(src: TokenSource, file: &Path) -> String {
    match src {
        TokenSource::Flag => "--token".into(),
        TokenSource::Env => "$S2UC_TOKEN".into(),
        TokenSource::File => format!("token file {}", file.display()),
    }
}

/// The `UID` argument, checked before anything is sent: the error names
/// the value and what is wrong with it (`invalid uid: "a/b": only ...`).
fn uid_arg(s: &str) -> Result<SessionId, ClientError> {
    SessionId::parse(s).map_err(|e| ClientError::Invalid(e.to_string()))
}

/// The `ROLE` argument ("PROD" or "CONS", any case), checked the same way.
fn role_arg(s: &str) -> Result<Role, ClientError> {
    Role::parse(s).map_err(|e| ClientError::Invalid(e.to_string()))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs one s2uc command.
pub async fn run_s2uc(cli: S2uc) -> Result<(), ClientError> {
    let t = &cli.token;
    let cert = &cli.cert;
    match cli.cmd {
        S2ucCmd::GenerateDocs { out } => {
            generate_docs(<S2uc as clap::CommandFactory>::command(), &out)?
        }
        S2ucCmd::InboundRequest {
            server,
            stream,
            remote_ip,
            receiver_ports,
        } => {
            let c = connect(&server, t, cert).await?;
            let prod_app = listeners_from(&remote_ip, &receiver_ports)?;
            let uid = new_uid();
            let r = c
                .inbound(&uid, stream.num_conn, stream.rate, &prod_app, true)
                .await?;
            println!("uid: {}", r.uid);
            println!("prod_listeners: {}", r.prod_listeners.join(","));
            println!("listeners: {}", r.listeners.join(","));
            if let Some(s) = &r.secret {
                println!("channel_secret: {}", hex::encode(s.expose()));
                eprintln!(
                    "pass the channel secret to outbound-request via $S2UC_CHANNEL_SECRET; keep it private"
                );
            }
        }
        S2ucCmd::OutboundRequest {
            server,
            stream,
            channel_secret,
            uid,
            prod_lstn,
        } => {
            let uid = uid_arg(&uid)?;
            let secret = match channel_secret {
                Some(h) => {
                    let b =
                        Zeroizing::new(hex::decode(h.trim()).map_err(|_| {
                            ClientError::Invalid("--channel-secret is not hex".into())
                        })?);
                    Some(
                        SessionSecret::from_bytes(&b)
                            .map_err(|e| ClientError::Invalid(e.to_string()))?,
                    )
                }
                None => None,
            };
            let c = connect(&server, t, cert).await?;
            let ls = c
                .outbound(
                    &uid,
                    &split_list(&prod_lstn),
                    stream.num_conn,
                    stream.rate,
                    secret.as_ref(),
                )
                .await?;
            println!("uid: {uid}");
            println!("listeners: {}", ls.join(","));
        }
        S2ucCmd::Release { server, uid } => {
            let uid = uid_arg(&uid)?;
            connect(&server, t, cert).await?.release(&uid).await?;
            println!("Release completed");
        }
        S2ucCmd::CheckAuth {
            s2cs,
            server_cert,
            json,
        } => {
            let file = t.token_file.clone().unwrap_or_else(default_token_file);
            let env = std::env::var("S2UC_TOKEN").ok();
            let mut check = cli_json::AuthCheck {
                token_source: resolve_token(t.token.as_deref(), env.as_deref(), &file)?
                    .map(|(_, src)| describe_source(src, &file)),
                login: None,
                server: None,
            };
            if check.token_source.is_none()
                && let Some(login) = crate::cli_login::current_login(t).await?
            {
                check.token_source = Some(format!(
                    "the login for scope {} at {}",
                    login.settings.scope, login.settings.auth_server
                ));
                check.login = Some(login);
            }
            let present = check.token_source.is_some();
            if !json {
                match &check.token_source {
                    Some(source) => println!("token: present (from {source})"),
                    None => println!("token: none (use --token, $S2UC_TOKEN or s2uc login)"),
                }
                if let Some(login) = &check.login {
                    println!(
                        "login: {}",
                        crate::cli_login::expiry_text(login, crate::client::login::unix_now())
                    );
                }
            }
            if let Some(s2cs) = s2cs {
                let server = ServerOpts {
                    s2cs,
                    server_cert,
                    tls_domain: None,
                };
                let c = connect(&server, t, cert).await?;
                let v = c.version().await.map_err(|e| match e {
                    ClientError::Rpc {
                        code: tonic::Code::Unauthenticated,
                        message,
                        ..
                    } if present => ClientError::TokenRefused {
                        server: server.s2cs.clone(),
                        message,
                    },
                    ClientError::Rpc {
                        code: tonic::Code::Unauthenticated,
                        message,
                        ..
                    } => ClientError::TokenMissing {
                        server: server.s2cs.clone(),
                        message,
                    },
                    other => other,
                })?;
                if !json {
                    println!(
                        "server {} (s2cs {}) accepts the token as identity {:?}",
                        server.s2cs, v.version, v.identity
                    );
                }
                check.server = Some(cli_json::ServerAnswer {
                    address: server.s2cs,
                    version: v.version,
                    identity: v.identity,
                });
            }
            if json {
                cli_json::print(&cli_json::auth_check(&check))?;
            }
        }
        S2ucCmd::Login { opts } => crate::cli_login::login(t, &opts).await?,
        S2ucCmd::Logout => crate::cli_login::logout(t).await?,
        S2ucCmd::Connect {
            prod_s2cs,
            cons_s2cs,
            prod_cert,
            cons_cert,
            stream,
            producer,
            as_old_client,
            json,
        } => {
            let token = token_of(t).await?;
            let identity = cert.load()?;
            let opts = |s2cs: String, cert: PathBuf| ClientOptions {
                s2cs,
                server_cert: Some(cert),
                token: token.clone(),
                client_identity: identity.clone(),
                ..ClientOptions::default()
            };
            let p = Client::connect(&opts(prod_s2cs, prod_cert)).await?;
            let c = Client::connect(&opts(cons_s2cs, cons_cert)).await?;
            let started = std::time::Instant::now();
            let r = connect_both_as(
                &p,
                &c,
                &split_list(&producer),
                stream.num_conn,
                stream.rate,
                !as_old_client,
            )
            .await?;
            let setup = started.elapsed().as_secs_f64();
            if json {
                cli_json::print(&cli_json::connected(&r, setup))?;
            } else {
                println!("uid: {}", r.uid);
                println!("prod gateway listeners: {}", r.prod_listeners.join(","));
                println!("consumer connects to: {}", r.cons_listeners.join(","));
                println!("setup time: {setup:.3} s");
            }
        }
        S2ucCmd::Status { server, json, uid } => {
            let uid = uid_arg(&uid)?;
            let s = connect(&server, t, cert).await?.status(&uid).await?;
            if json {
                cli_json::print(&cli_json::session(&s))?;
            } else {
                status_text::print_status(&s);
            }
        }
        S2ucCmd::List { server, json } => {
            let list = connect(&server, t, cert).await?.list().await?.sessions;
            if json {
                cli_json::print(&cli_json::sessions(&list))?;
            } else {
                list.iter().for_each(status_text::print_status);
            }
        }
        S2ucCmd::Watch {
            server,
            interval_ms,
            uid,
        } => {
            let uid = uid_arg(&uid)?;
            let c = connect(&server, t, cert).await?;
            let mut stream = c.watch(&uid, interval_ms).await?;
            let mut view = WatchView::new(std::io::stdout().is_terminal());
            let mut out = std::io::stdout();
            let write_err = |e| ClientError::Io {
                context: "writing to stdout".into(),
                source: e,
            };
            while let Some(ev) = stream.next().await {
                let ev = ev.map_err(|s| ClientError::rpc("watch", s))?;
                // Flushed per event: a pipe sees each line as it happens.
                out.write_all(view.render(&ev).as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(write_err)?;
            }
            out.write_all(view.finish().as_bytes())
                .and_then(|()| out.flush())
                .map_err(write_err)?;
        }
    }
    Ok(())
}

/// Runs one appctrl command.
pub async fn run_appctrl(cli: AppCtrl) -> Result<(), ClientError> {
    let t = &cli.token;
    let cert = &cli.cert;
    match cli.cmd {
        AppCtrlCmd::GenerateDocs { out } => {
            generate_docs(<AppCtrl as clap::CommandFactory>::command(), &out)?
        }
        AppCtrlCmd::Hello {
            server,
            uid,
            role,
            listeners,
        } => {
            let (uid, role) = (uid_arg(&uid)?, role_arg(&role)?);
            let r = connect(&server, t, cert)
                .await?
                .hello(&uid, role, &split_list(&listeners))
                .await?;
            println!("{}", r.message);
            println!("listeners: {}", r.listeners.join(","));
        }
        AppCtrlCmd::Mock {
            server,
            uid,
            role,
            num_listeners,
        } => {
            let (uid, role) = (uid_arg(&uid)?, role_arg(&role)?);
            let echo = crate::mock::start_echo_servers(
                num_listeners,
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            )
            .await
            .map_err(|e| ClientError::Io {
                context: "starting mock listeners".into(),
                source: e,
            })?;
            let ls: Vec<String> = echo.addrs.iter().map(ToString::to_string).collect();
            println!("mock listeners: {}", ls.join(","));
            let r = connect(&server, t, cert)
                .await?
                .hello_after_req(&uid, role, &ls)
                .await?;
            println!("{}", r.message);
            println!("gateway listeners: {}", r.listeners.join(","));
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    Ok(())
}

/// An error as the binaries print it: one line, `PROGRAM: error: ` and the
/// message with each cause not already in it, never a Debug dump or a
/// backtrace (whatever RUST_BACKTRACE says).
pub fn error_line(program: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(err);
    while let Some(current) = cause {
        cause = current.source();
        let text = current.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    format!("{program}: error: {line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_on_one_line_with_each_cause_once() {
        let inner = std::io::Error::other("disk on fire");
        let err = ClientError::Io {
            context: "reading the token".into(),
            source: inner,
        };
        assert_eq!(
            error_line("s2uc", &err),
            "s2uc: error: reading the token: disk on fire"
        );
        let bare = ClientError::Invalid("no server certificate".into());
        assert_eq!(
            error_line("appctrl", &bare),
            "appctrl: error: no server certificate"
        );
    }

    #[test]
    fn underscore_and_dash_spellings() {
        let a = S2uc::try_parse_from([
            "s2uc",
            "inbound-request",
            "--server_cert",
            "c.pem",
            "--num_conn",
            "3",
            "--remote_ip",
            "10.0.0.1",
            "--receiver_ports",
            "1,2",
            "--s2cs",
            "h:1",
            "--rate",
            "5",
        ])
        .unwrap();
        let b = S2uc::try_parse_from([
            "s2uc",
            "inbound-request",
            "--server-cert",
            "c.pem",
            "--num-conn",
            "3",
            "--remote-ip",
            "10.0.0.1",
            "--receiver-ports",
            "1,2",
            "--s2cs",
            "h:1",
            "--rate",
            "5",
        ])
        .unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        S2uc::try_parse_from([
            "s2uc",
            "outbound-request",
            "UID",
            "1.2.3.4:5",
            "--scope",
            "x",
        ])
        .unwrap();
        S2uc::try_parse_from(["s2uc", "release", "UID"]).unwrap();
        S2uc::try_parse_from(["s2uc", "check-auth"]).unwrap();
        AppCtrl::try_parse_from(["appctrl", "hello", "UID", "PROD", "1.2.3.4:5"]).unwrap();
        AppCtrl::try_parse_from(["appctrl", "mock", "UID"]).unwrap();
    }

    #[test]
    fn uid_and_role_arguments_are_checked_naming_the_value() {
        assert_eq!(uid_arg("UID").unwrap().as_str(), "UID");
        let e = uid_arg("a/b").unwrap_err().to_string();
        assert!(e.contains("uid") && e.contains("\"a/b\""), "{e}");
        assert_eq!(role_arg("prod").unwrap(), Role::Prod);
        assert_eq!(role_arg("CONS").unwrap(), Role::Cons);
        let e = role_arg("BOTH").unwrap_err().to_string();
        assert!(e.contains("role") && e.contains("\"BOTH\""), "{e}");
    }
}
