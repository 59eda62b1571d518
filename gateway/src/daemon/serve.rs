//! `s2cs serve`: the SciStream control server (from the `control` crate) on
//! top of [`SessionDataPlane`], with the command-line flags of both.
//!
//! [`Gateway::prepare`] reads and validates the whole configuration, loads
//! the relay engine, builds the control server (TLS certificate, persisted
//! sessions) and binds the control listener; [`Gateway::serve`] then serves
//! until the shutdown future completes (see [`shutdown_signals`]) and drains:
//! pending calls get a grace period and every session is stopped.
//!
//! The data channel's flags (certificates, peer verification, TLS 1.2,
//! proof deadline) are [`crate::channel::args::ChannelArgs`]; they and their
//! files are checked first, before the relay engine loads or anything binds.
//!
//! Optional parts: `--xdp-iface` attaches the XDP guard of the data ports to
//! the WAN interface (see [`crate::xdp`]) and hands it to the data plane;
//! `--metrics-listen` serves the Prometheus metrics (see [`crate::metrics`]).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control::{ControlError, ControlServer, ServerArgs, ServerConfig, StateLock};

use crate::channel::args::{ChannelArgs, ChannelOptionError, describe_verification};
use crate::channel::identity::ChannelIdentity;
use crate::channel::{ChannelConfig, ChannelFailures, ChannelPaths, Fingerprint};
use crate::metrics::{self, Metrics, MetricsError};
use crate::relay::DataPath;
use crate::relay_limit::DEFAULT_MAX_RELAYED;
use crate::session::{
    ChannelMode, PathChoice, SessionDataPlane, SessionError, SessionOptions, WanLiveness,
    engine_for,
};
use crate::wan_admission::{Admission, AdmissionLimits};
use crate::xdp::{AttachMode, PeerNet, XdpError, XdpGuard};

/// Flags of `s2cs serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address the control server (gRPC over TLS) listens on. Its IP is added
    /// to the names of a self-signed certificate generated on first start.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:5000")]
    pub control_listen: SocketAddr,
    /// Data path for plaintext legs: auto (splice: faster than sockmap on
    /// every kernel measured; `s2cs check` says why), sockmap (the in-kernel
    /// relay, opt-in), splice or copy.
    #[arg(long, value_name = "PATH", default_value = "auto")]
    pub data_path: PathChoice,
    /// Data-channel options.
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// Seconds the open connections of a released session may go on before
    /// they are reset (release waits for them this long, then resets them).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub release_grace: f64,
    /// Seconds a WAN connection may be idle before TCP keepalive probes
    /// check that the peer gateway is still there (three probes, a third of
    /// this apart); 0 turns keepalive off.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub wan_keepalive: f64,
    /// Seconds data sent on a WAN connection may stay unacknowledged before
    /// the connection is declared dead (TCP_USER_TIMEOUT) and both of its
    /// legs are ended; 0 leaves the kernel's limit (about 15 minutes).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub wan_user_timeout: f64,
    /// WAN connections that have not yet proved a session secret (waiting
    /// or in handshake), held by the whole gateway; more are reset at once,
    /// except from a source with fewer than 16 (they never take the places
    /// of authenticated connections).
    #[arg(long, value_name = "N", default_value_t = AdmissionLimits::default().max_unauthenticated)]
    pub max_unauthenticated: usize,
    /// Of those, from one source (an IPv4 address or an IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = AdmissionLimits::default().per_source_queue)]
    pub max_unauthenticated_per_source: usize,
    /// TLS handshakes in progress from one source; its other connections
    /// wait their turn.
    #[arg(long, value_name = "N", default_value_t = AdmissionLimits::default().per_source_handshakes)]
    pub handshakes_per_source: usize,
    /// TLS handshakes started per second from one source.
    #[arg(long, value_name = "N", default_value_t = AdmissionLimits::default().rate_per_source)]
    pub handshakes_per_source_per_sec: u32,
    /// Connections relayed at once by all sessions together; at the limit a
    /// new connection is reset at once and counted
    /// (s2cs_connections_refused_total{reason="relay_limit"}).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RELAYED)]
    pub max_relayed_connections: usize,
    /// Attach the XDP guard to this (WAN-facing) interface: TCP to the
    /// session port range is dropped before the socket layer unless a live
    /// PROD session allows the source for that port.
    #[arg(long, value_name = "IFACE")]
    pub xdp_iface: Option<String>,
    /// Peer gateway address or prefix (e.g. 192.0.2.7 or 192.0.2.0/24)
    /// allowed on live data ports by the XDP guard; repeatable. Without it,
    /// a live data port is open to every source.
    #[arg(long, value_name = "IP[/LEN]", requires = "xdp_iface")]
    pub xdp_peer: Vec<PeerNet>,
    /// Serve Prometheus metrics over HTTP on this address (GET /metrics).
    /// It reveals session ids and traffic: bind it to a management address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Control-server options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Why the gateway could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Operator: a flag or the configuration file is wrong.
    #[error("invalid configuration: {reason}")]
    Config { reason: String },
    /// Operator: a data-channel option is wrong (the source names it).
    #[error("invalid configuration")]
    Channel(#[from] ChannelOptionError),
    /// Operator or system: the configuration is rejected, or the control
    /// server failed while serving.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Operator or system: the data plane cannot run as asked.
    #[error(transparent)]
    DataPlane(#[from] SessionError),
    /// Operator or system: the XDP guard cannot be attached as asked.
    #[error("the XDP guard cannot be set up")]
    Xdp(#[from] XdpError),
    /// Operator or system: the metrics endpoint cannot be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Operator: the control address is taken or not local.
    #[error("binding the control listener {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A configured gateway, bound and ready to serve.
pub struct Gateway {
    server: ControlServer,
    listener: tokio::net::TcpListener,
    control_addr: SocketAddr,
    cert_path: Option<PathBuf>,
    path: DataPath,
    channel: ChannelMode,
    channel_cert: Option<(PathBuf, Fingerprint)>,
    /// The data channel's certificate in use (rotated by a reload).
    channel_identity: Option<Arc<ChannelIdentity>>,
    metrics: Arc<Metrics>,
    metrics_listener: Option<(tokio::net::TcpListener, SocketAddr)>,
    /// What the refusal log sums up once a second.
    refusals: Option<(Arc<ChannelFailures>, Arc<Admission>)>,
    /// Detached when the gateway is dropped (after serving).
    xdp: Option<Arc<XdpGuard>>,
}

/// The control server's configuration of `args`: the flags and file, with
/// the control address among the self-signed certificate's names.
pub fn control_config(args: &ServeArgs) -> Result<ServerConfig, ControlError> {
    let mut cfg = args.server.clone().into_config()?;
    let control_ip = args.control_listen.ip();
    if !control_ip.is_unspecified() && !cfg.tls.names.contains(&control_ip.to_string()) {
        cfg.tls.names.push(control_ip.to_string());
    }
    Ok(cfg)
}

impl Gateway {
    /// Validates everything first (flags, configuration file, control and
    /// channel certificates, authentication files, the XDP interface), so a
    /// bad option leaves no port bound, no program loaded and nothing
    /// attached; then loads the relay engine, binds the metrics and control
    /// listeners, attaches the XDP guard and builds the control server
    /// (restoring persisted sessions).
    pub async fn prepare(args: ServeArgs) -> Result<Self, ServeError> {
        let (wan_liveness, admission) =
            check_flags(&args).map_err(|reason| ServeError::Config { reason })?;
        let cfg = control_config(&args)?;
        // Before anything is generated, bound or loaded: a second gateway on
        // this state directory stops here, naming the first one's pid.
        let state_lock = match &cfg.state_dir {
            Some(dir) => Some(StateLock::acquire(dir)?),
            None => None,
        };
        let cert_path = cert_path(&cfg);
        // Everything is checked before anything is loaded, bound or attached.
        ControlServer::preflight(&cfg)?;
        let mut channel_settings = args
            .channel
            .settings(cfg.state_dir.as_deref(), cfg.effective_advertise_ip())?;
        // Kernel TLS as this kernel offers it: the channel's path per
        // connection and, where it cannot take new keys, the suite order.
        let ktls = match &channel_settings {
            Some(_) if !args.channel.no_ktls => crate::channel::probe_ktls(),
            _ => crate::channel::KtlsSupport::unavailable("kernel TLS disabled by configuration"),
        };
        if let Some(settings) = channel_settings.as_mut() {
            settings.prefer_chacha20 = args.channel.ktls_without_rekey.prefer_chacha20(&ktls);
            if settings.prefer_chacha20 {
                tracing::info!(
                    "data channel: this kernel's TLS cannot take new keys (Linux 6.14 and later can): \
                     ChaCha20-Poly1305 preferred so long streams stay on kernel TLS \
                     (--ktls-without-rekey)"
                );
            }
        }
        let channel_config = match channel_settings {
            Some(settings) => Some(channel_config(settings).map_err(|err| ServeError::Config {
                reason: format!("secure data channel: {err}"),
            })?),
            None => None,
        };
        if let Some(iface) = &args.xdp_iface {
            XdpGuard::preflight(iface, cfg.port_range.first..=cfg.port_range.last)?;
        }
        let (engine, path) = engine_for(args.data_path)?;
        let options = SessionOptions {
            stop_grace: Duration::from_secs_f64(args.release_grace),
            wan_liveness,
            ..SessionOptions::default()
        };
        let metrics = Metrics::new()?;
        if let Some(kernel) = engine.kernel() {
            metrics.watch_kernel_relay(kernel);
        }
        let metrics_listener = match args.metrics_listen {
            Some(addr) => {
                let listener = metrics::bind(addr).await?;
                let local = listener
                    .local_addr()
                    .map_err(|source| MetricsError::Bind { addr, source })?;
                Some((listener, local))
            }
            None => None,
        };
        let mode = args.channel.mode;
        let mut channel_cert = None;
        let mut channel_identity = None;
        let mut channel_failures = None;
        let secure = match channel_config {
            None => None,
            Some((config, cert)) => {
                channel_cert = Some((cert, config.fingerprint()));
                channel_identity = Some(Arc::clone(config.identity()));
                metrics.watch_channel(config.failures());
                metrics.watch_key_updates(config.key_updates());
                channel_failures = Some(Arc::clone(config.failures()));
                // Plaintext after authentication relays on the same data
                // path as every plaintext leg (--data-path).
                let caps = ChannelPaths {
                    ktls: ktls.clone(),
                    engine: engine.clone(),
                    path,
                };
                let quic = crate::channel::quic::QuicChannel::new(&config).map_err(|err| {
                    ServeError::Config {
                        reason: format!("secure data channel for UDP (QUIC): {err}"),
                    }
                })?;
                let udp_fast = if mode == ChannelMode::PlaintextAfterAuth {
                    match crate::udp_fastpath::UdpFastPath::load() {
                        Ok(fast) => Some(fast),
                        Err(err) => {
                            tracing::warn!(error = %crate::error_chain::error_chain(&err), "no kernel path for UDP flows: in plaintext-after-auth mode they stay on the encrypted QUIC channel (see s2cs check)");
                            None
                        }
                    }
                } else {
                    None
                };
                Some(Arc::new(crate::session::SecureWan {
                    config,
                    caps,
                    quic: Arc::new(quic),
                    udp_fast,
                }))
            }
        };
        let mut data_plane = SessionDataPlane::new(engine, path, mode, options)
            .with_metrics(Arc::clone(&metrics))
            .with_admission(admission)
            .with_relay_limit(args.max_relayed_connections);
        let refusals = channel_failures
            .take()
            .map(|failures| (failures, Arc::clone(data_plane.admission())));
        if let Some(secure) = secure {
            data_plane = data_plane.with_secure_channel(secure);
        }
        // The control port is bound before the guard is attached and
        // sessions are restored: a port in use stops the start here.
        let listener = tokio::net::TcpListener::bind(args.control_listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: args.control_listen,
                source,
            })?;
        let control_addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: args.control_listen,
            source,
        })?;
        // The guard is attached before sessions are restored, so restored
        // PROD sessions open their ports in it.
        let xdp = match &args.xdp_iface {
            Some(iface) => {
                let range = cfg.port_range.first..=cfg.port_range.last;
                let guard = Arc::new(XdpGuard::attach(iface, range)?);
                metrics.watch_xdp(&guard);
                data_plane = data_plane.with_xdp(Arc::clone(&guard), args.xdp_peer.clone());
                Some(guard)
            }
            None => None,
        };
        let data_plane = Arc::new(data_plane);
        metrics.watch_data_plane(&data_plane);
        let server =
            ControlServer::with_state_lock(cfg, data_plane, metrics.control_observer(), state_lock)
                .await?;
        metrics.watch_control(server.handle());
        Ok(Gateway {
            server,
            listener,
            control_addr,
            cert_path,
            path,
            channel: mode,
            channel_cert,
            channel_identity,
            metrics,
            metrics_listener,
            refusals,
            xdp,
        })
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The XDP guard's interface and mode, if attached.
    pub fn xdp(&self) -> Option<(&str, AttachMode)> {
        self.xdp.as_deref().map(|g| (g.iface(), g.mode()))
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A handle on the control server (sessions, reload).
    pub fn control_handle(&self) -> control::ServerHandle {
        self.server.handle()
    }

    /// Where the control server listens.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// SHA-256 fingerprint of the control certificate (None without TLS).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.server.tls_fingerprint()
    }

    /// The control certificate clients pin (`s2uc --server-cert`).
    pub fn cert_path(&self) -> Option<&std::path::Path> {
        self.cert_path.as_deref()
    }

    /// The data path of plaintext legs.
    pub fn data_path(&self) -> DataPath {
        self.path
    }

    /// How the link between gateways is carried.
    pub fn channel(&self) -> ChannelMode {
        self.channel
    }

    /// The data channel's certificate file and its SHA-256 fingerprint (what
    /// peers pin with --channel-peer-fingerprint); None with --channel plain.
    /// The data channel's certificate in use, for a reload to rotate.
    pub fn channel_identity(&self) -> Option<Arc<ChannelIdentity>> {
        self.channel_identity.clone()
    }

    pub fn channel_cert(&self) -> Option<(&std::path::Path, Fingerprint)> {
        self.channel_cert.as_ref().map(|(p, f)| (p.as_path(), *f))
    }

    /// Serves until `shutdown` completes, then drains and stops every session.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Gateway {
            server,
            listener,
            metrics,
            metrics_listener,
            refusals,
            xdp,
            ..
        } = self;
        let refusal_log = refusals.map(|(failures, admission)| {
            tokio::spawn(crate::refusal_log::run(failures, admission))
        });
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let metrics_task = metrics_listener.map(|(listener, _)| {
            tokio::spawn(metrics::serve_http(listener, metrics, async move {
                // Also ends when the sender is dropped (the control server failed).
                let _ = stop_rx.wait_for(|stop| *stop).await;
            }))
        });
        let shutdown = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let served = server.serve(listener, shutdown).await;
        if let Some(task) = refusal_log {
            task.abort();
        }
        if let Some(task) = metrics_task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %crate::error_chain::error_chain(&err), "metrics endpoint failed")
                }
                Err(err) => tracing::warn!(error = %err, "metrics endpoint task failed"),
            }
        }
        // Every session is stopped: the guard can go (it detaches on drop).
        drop(xdp);
        served?;
        Ok(())
    }
}

/// Builds the data channel's configuration (generating the self-signed
/// certificate on first start) and logs how it is set up; returns it with
/// the certificate file.
fn channel_config(
    settings: crate::channel::ChannelSettings,
) -> Result<(ChannelConfig, PathBuf), crate::channel::ChannelError> {
    let cert = match &settings.certs {
        crate::channel::CertSource::Files { cert, .. } => cert.clone(),
        crate::channel::CertSource::SelfSigned { dir, .. } => {
            dir.join(crate::channel::config::CHANNEL_CERT_FILE)
        }
    };
    let verification = describe_verification(&settings.verify);
    let (tls12, timeout) = (settings.allow_tls12, settings.proof_timeout);
    let config = ChannelConfig::new(settings)?;
    tracing::info!(
        cert = %cert.display(),
        fingerprint = %config.fingerprint(),
        versions = if tls12 { "TLS 1.3, TLS 1.2" } else { "TLS 1.3" },
        proof_timeout = ?timeout,
        "data channel: {verification}"
    );
    Ok((config, cert))
}

/// Where the control certificate is (operator's, or the self-signed one).
fn cert_path(cfg: &ServerConfig) -> Option<PathBuf> {
    if cfg.tls.dangerous_disable {
        return None;
    }
    if let Some(cert) = &cfg.tls.cert {
        return Some(cert.clone());
    }
    let dir = match (&cfg.tls.self_signed_dir, &cfg.state_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(state)) => state.join("tls"),
        (None, None) => return None,
    };
    Some(dir.join(control::tls::CONTROL_CERT_FILE))
}

/// The name of the next SIGINT or SIGTERM (a stream that is gone is not
/// waited on).
async fn next_signal(
    sigint: &mut Option<tokio::signal::unix::Signal>,
    sigterm: &mut Option<tokio::signal::unix::Signal>,
) -> &'static str {
    async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
        match signal {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }
    loop {
        tokio::select! {
            got = recv(sigint) => match got {
                Some(()) => return "SIGINT",
                None => *sigint = None,
            },
            got = recv(sigterm) => match got {
                Some(()) => return "SIGTERM",
                None => *sigterm = None,
            },
        }
    }
}

/// The admission limits of unauthenticated WAN connections; the error
/// names the flag.
/// The checks of the gateway's own numbers (grace, WAN liveness, admission
/// and relay budgets) that need nothing but the flags.
/// The error is [`ServeError::Config`]'s reason.
pub fn check_flags(args: &ServeArgs) -> Result<(WanLiveness, AdmissionLimits), String> {
    if !(args.release_grace.is_finite() && args.release_grace >= 0.0) {
        return Err(format!(
            "--release-grace must be a number of seconds >= 0, got {}",
            args.release_grace
        ));
    }
    let wan_liveness = wan_liveness(args.wan_keepalive, args.wan_user_timeout)?;
    let admission = admission_limits(args)?;
    if args.max_relayed_connections == 0 {
        return Err("--max-relayed-connections must be at least 1".into());
    }
    Ok((wan_liveness, admission))
}

fn admission_limits(args: &ServeArgs) -> Result<AdmissionLimits, String> {
    let at_least_one = |flag: &str, value: usize| {
        if value == 0 {
            Err(format!("{flag} must be at least 1"))
        } else {
            Ok(value)
        }
    };
    at_least_one(
        "--handshakes-per-source-per-sec",
        args.handshakes_per_source_per_sec as usize,
    )?;
    Ok(AdmissionLimits {
        max_unauthenticated: at_least_one("--max-unauthenticated", args.max_unauthenticated)?,
        per_source_queue: at_least_one(
            "--max-unauthenticated-per-source",
            args.max_unauthenticated_per_source,
        )?,
        per_source_handshakes: at_least_one("--handshakes-per-source", args.handshakes_per_source)?,
        rate_per_source: args.handshakes_per_source_per_sec,
        ..AdmissionLimits::default()
    })
}

/// `--wan-keepalive` and `--wan-user-timeout` (seconds, 0 = off); the error
/// names the flag.
fn wan_liveness(keepalive: f64, user_timeout: f64) -> Result<WanLiveness, String> {
    let seconds = |flag: &str, value: f64, min: f64| -> Result<Option<Duration>, String> {
        if !value.is_finite() || !(0.0..=86_400.0).contains(&value) {
            return Err(format!(
                "{flag} must be a number of seconds from 0 to 86400, got {value}"
            ));
        }
        if value == 0.0 {
            return Ok(None);
        }
        if value < min {
            return Err(format!(
                "{flag} must be 0 (off) or at least {min} s, got {value}"
            ));
        }
        Ok(Some(Duration::from_secs_f64(value)))
    };
    Ok(WanLiveness {
        // TCP_KEEPIDLE counts whole seconds.
        keepalive_idle: seconds("--wan-keepalive", keepalive, 1.0)?,
        user_timeout: seconds("--wan-user-timeout", user_timeout, 0.1)?,
    })
}

/// Raises this process's soft limit of open descriptors to its hard limit
/// (every relayed connection holds two or three); returns the limits before
/// and after, or the error.
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok((soft, hard))
}

/// Exit status after a second SIGINT/SIGTERM cut the drain short.
pub const FORCED_EXIT_STATUS: i32 = 130;

/// Watches SIGINT and SIGTERM from now on: the returned future completes on
/// the first one (the gateway then drains); a second one ends the process
/// at once with [`FORCED_EXIT_STATUS`] (persisted sessions are on disk and
/// come back on the next start). If the SIGTERM handler cannot be
/// installed, only SIGINT is watched. Call it inside the runtime.
pub fn shutdown_signals() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let sigint = signal(SignalKind::interrupt());
    let sigterm = signal(SignalKind::terminate());
    tokio::spawn(async move {
        let (mut sigint, mut sigterm) = match (sigint, sigterm) {
            (Ok(int), Ok(term)) => (Some(int), Some(term)),
            (int, term) => {
                if let Err(err) = &term {
                    tracing::warn!(error = %err, "cannot watch SIGTERM; stop the gateway with SIGINT");
                }
                if let Err(err) = &int {
                    tracing::warn!(error = %err, "cannot watch SIGINT");
                }
                (int.ok(), term.ok())
            }
        };
        let first = next_signal(&mut sigint, &mut sigterm).await;
        tracing::info!("{first} received: stopping (send it again to exit at once)");
        let _ = first_tx.send(());
        let second = next_signal(&mut sigint, &mut sigterm).await;
        eprintln!(
            "s2cs: second {second}: exiting at once without draining; persisted sessions come back on the next start"
        );
        std::process::exit(FORCED_EXIT_STATUS);
    });
    async move {
        let _ = first_rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// `s2cs serve` flags that reach the metrics bind, which must fail (a
    /// TEST-NET address is never local), plus `extra`.
    fn args(state: &std::path::Path, extra: &[&str]) -> ServeArgs {
        let state = state.to_str().expect("UTF-8 temp path");
        let base = [
            "s2cs",
            "--no-auth",
            "--data-path",
            "copy",
            "--state-dir",
            state,
            "--metrics-listen",
            "192.0.2.1:9",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
            .expect("flags")
            .serve
    }

    #[test]
    fn wan_liveness_flags_are_checked_and_zero_turns_them_off() {
        let on = wan_liveness(30.0, 60.0).expect("defaults");
        assert_eq!(on.keepalive_idle, Some(Duration::from_secs(30)));
        assert_eq!(on.user_timeout, Some(Duration::from_secs(60)));
        let off = wan_liveness(0.0, 0.0).expect("off");
        assert_eq!((off.keepalive_idle, off.user_timeout), (None, None));
        for (keepalive, timeout, flag) in [
            (0.5, 60.0, "--wan-keepalive"),
            (-1.0, 60.0, "--wan-keepalive"),
            (f64::NAN, 60.0, "--wan-keepalive"),
            (30.0, 100_000.0, "--wan-user-timeout"),
            (30.0, 0.01, "--wan-user-timeout"),
        ] {
            let err = wan_liveness(keepalive, timeout).expect_err("refused");
            assert!(err.starts_with(flag), "{keepalive} {timeout}: {err}");
        }
    }

    #[tokio::test]
    async fn a_second_gateway_on_a_locked_state_dir_fails_before_binding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = StateLock::acquire(dir.path()).expect("first lock");
        let err = Gateway::prepare(args(dir.path(), &[]))
            .await
            .err()
            .expect("the state dir is locked");
        // Refused at the lock, not at the metrics bind that comes later.
        assert!(
            matches!(
                err,
                ServeError::Control(ControlError::StateDirLocked { .. })
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn channel_options_are_checked_before_anything_is_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The premise: with valid channel options, preparing gets as far as
        // the metrics listener (and fails there).
        let err = Gateway::prepare(args(dir.path(), &[]))
            .await
            .err()
            .expect("the metrics address cannot be bound");
        assert!(matches!(err, ServeError::Metrics(_)), "{err}");
        // A bad channel option fails first, naming the option.
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().expect("UTF-8");
        for (extra, option) in [
            (
                &["--channel-proof-timeout", "0"][..],
                "--channel-proof-timeout",
            ),
            (
                &["--channel-cert", missing, "--channel-key", missing][..],
                "--channel-cert",
            ),
            (&["--channel-peer-ca", missing][..], "--channel-peer-ca"),
            (
                &["--channel", "plain", "--channel-tls12"][..],
                "--channel-tls12",
            ),
        ] {
            let err = Gateway::prepare(args(dir.path(), extra))
                .await
                .err()
                .expect("refused");
            match &err {
                ServeError::Channel(e) => assert_eq!(e.option, option, "{err}"),
                other => panic!("{extra:?}: expected a channel option error, got {other}"),
            }
            let text = crate::error_chain::error_chain(&err);
            assert!(
                text.starts_with(&format!("invalid configuration: {option}")),
                "{text}"
            );
        }
    }

    #[test]
    fn serve_flags_parse_together() {
        use clap::CommandFactory as _;
        #[derive(Debug, clap::Parser)]
        struct Serve {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Serve::command().debug_assert();
        let serve = Serve::try_parse_from([
            "s2cs",
            "--channel",
            "plaintext-after-auth",
            "--data-path",
            "splice",
            "--channel-peer-fingerprint",
            "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89",
        ])
        .expect("flags");
        assert_eq!(
            serve.serve.channel.mode,
            crate::channel::ChannelMode::PlaintextAfterAuth
        );
        assert_eq!(serve.serve.channel.channel_peer_fingerprint.len(), 1);
    }
}
