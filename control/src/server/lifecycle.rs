//! A server's life: [`ControlServer`] checks the configuration, builds the
//! shared state and restores persisted sessions, then serves (TLS or plain)
//! with its background tasks (expiring READY sessions, retrying RESTORING
//! ones) until shutdown, which drains calls and stops every session;
//! [`ServerHandle`] inspects and reloads a running server; [`serve`] does it
//! all in one call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use super::Core;
use super::service::Service;
use crate::auth::Authenticator;
use crate::authz::Authz;
use crate::config::ServerConfig;
use crate::dataplane::DataPlane;
use crate::errors::ControlError;
use crate::live::{Live, LiveSettings, Reloaded};
use crate::observe::{NoObserver, Observer};
use crate::persist::Store;
use crate::ports::PortAllocator;
use crate::proto;
use crate::registry::Registry;
use crate::session::SessionState;
use crate::state_lock::StateLock;
use crate::tls::TlsMaterial;
use crate::tls_accept::{ControlIdentity, LoadedCertificate};

/// How long shutdown waits for in-flight calls before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often RESTORING sessions are looked at (each has its own backoff).
const RESTORE_TICK: Duration = Duration::from_millis(250);

/// A read-only view of a running server, for tests and metrics.
#[derive(Clone)]
pub struct ServerHandle {
    core: Arc<Core>,
}

impl ServerHandle {
    /// Listener ports currently leased.
    pub fn ports_in_use(&self) -> usize {
        self.core.registry.ports().in_use()
    }
    /// Sessions in the table.
    pub fn sessions(&self) -> usize {
        self.core.registry.len()
    }
    /// Applies `cfg`'s authentication (the token file read again),
    /// allow-list and rate limits to what starts from now on, without
    /// touching running sessions; refused as a whole, changing nothing, if
    /// `cfg` is invalid or changes anything else (see [`crate::live`]).
    ///
    /// The control certificate is read again too (replaced in place, it is
    /// presented by every handshake from then on; open connections keep
    /// theirs); it is read and checked before anything changes.
    pub fn reload(&self, cfg: &ServerConfig) -> Result<Reloaded, ControlError> {
        let certificate = match &self.core.identity {
            Some(_) => {
                let material = crate::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
                Some(LoadedCertificate::from_material(&material)?)
            }
            None => None,
        };
        let mut done = crate::live::reload(&self.core.live, cfg)?;
        if let (Some(identity), Some(certificate)) = (&self.core.identity, certificate) {
            done.control_certificate = Some(identity.install(certificate));
        }
        Ok(done)
    }

    /// Sessions in each live state (REQUESTED, READY, ACTIVE, RESTORING).
    pub fn sessions_by_state(&self) -> [(SessionState, usize); 4] {
        self.core.registry.count_by_state()
    }
}

/// A configured server, ready to serve.
pub struct ControlServer {
    core: Arc<Core>,
    tls: Option<TlsMaterial>,
}

impl ControlServer {
    /// Validates the configuration, prepares auth and TLS, and restores
    /// persisted sessions.
    pub async fn new(
        cfg: ServerConfig,
        data_plane: Arc<dyn DataPlane>,
    ) -> Result<Self, ControlError> {
        Self::with_observer(cfg, data_plane, Arc::new(NoObserver)).await
    }

    /// Like [`ControlServer::new`], reporting calls and auth failures to
    /// `observer`.
    pub async fn with_observer(
        cfg: ServerConfig,
        data_plane: Arc<dyn DataPlane>,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, ControlError> {
        let lock = match &cfg.state_dir {
            Some(dir) => Some(StateLock::acquire(dir)?),
            None => None,
        };
        Self::with_state_lock(cfg, data_plane, observer, lock).await
    }

    /// Checks everything the server will load, without binding, restoring
    /// or starting anything: the configuration as a whole, the
    /// authentication files, and the control-channel certificate (the
    /// operator's files, or the self-signed pair, generated if missing). A
    /// gateway calls it before it binds, loads or attaches anything, so a bad
    /// option leaves nothing behind.
    pub fn preflight(cfg: &ServerConfig) -> Result<(), ControlError> {
        cfg.validate()?;
        Authenticator::from_config(cfg.auth.as_ref().ok_or_else(|| ControlError::Config {
            reason: "no authentication mode chosen".into(),
        })?)?;
        if !cfg.tls.dangerous_disable {
            crate::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
        }
        Ok(())
    }

    /// Like [`ControlServer::with_observer`], with the state directory's
    /// lock already taken by the caller (the gateway takes it before it
    /// binds or loads anything).
    pub async fn with_state_lock(
        cfg: ServerConfig,
        data_plane: Arc<dyn DataPlane>,
        observer: Arc<dyn Observer>,
        state_lock: Option<StateLock>,
    ) -> Result<Self, ControlError> {
        cfg.validate()?;
        if let (Some(dir), Some(lock)) = (&cfg.state_dir, &state_lock)
            && lock.dir() != dir.as_path()
        {
            return Err(ControlError::Config {
                reason: format!(
                    "the state dir lock is for {}, not {}",
                    lock.dir().display(),
                    dir.display()
                ),
            });
        }
        let live = Live::new(LiveSettings::from_config(&cfg)?, cfg.clone());
        let tls = if cfg.tls.dangerous_disable {
            tracing::warn!("control-channel TLS is DISABLED: tokens travel in the clear");
            None
        } else {
            let m = crate::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
            tracing::info!(cert = %m.cert_path.display(), fingerprint = %m.fingerprint(), "control-channel TLS certificate (SHA-256)");
            Some(m)
        };
        let identity = match &tls {
            Some(m) => Some(Arc::new(ControlIdentity::new(
                LoadedCertificate::from_material(m)?,
            ))),
            None => None,
        };
        let store = match &cfg.state_dir {
            Some(d) => Some(Store::open(&d.join("sessions"))?),
            None => None,
        };
        let registry = Arc::new(Registry::new(
            PortAllocator::new(cfg.port_range, cfg.listener_ip),
            cfg.effective_advertise_ip(),
            cfg.max_sessions,
            Authz::new(cfg.admins.iter().cloned()),
            store,
        ));
        let (shutdown, _) = watch::channel(false);
        let max_calls = cfg.max_concurrent_calls;
        let core = Arc::new(Core {
            cfg,
            registry,
            live,
            identity,
            data_plane,
            shutdown,
            observer,
            _state_lock: state_lock,
            calls: Arc::new(tokio::sync::Semaphore::new(max_calls)),
            watches: std::sync::Mutex::new((0, HashMap::new())),
        });
        core.restore().await?;
        Ok(ControlServer { core, tls })
    }

    /// SHA-256 fingerprint of the control-channel certificate.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.fingerprint())
    }

    /// The control-channel certificate (PEM), for clients to pin.
    pub fn cert_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.cert_pem.as_slice())
    }

    /// The gRPC service itself, for driving the server in-process without a
    /// transport (the control fuzz target). Calls are served as over the
    /// network, minus TLS and HTTP/2.
    pub fn service(&self) -> Service {
        Service {
            core: self.core.clone(),
        }
    }

    /// A handle for inspecting the running server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            core: self.core.clone(),
        }
    }

    /// Serves on `listener` until `shutdown` completes, then drains (with a
    /// grace period) and stops every session's data plane.
    pub async fn serve<F>(
        self,
        listener: tokio::net::TcpListener,
        shutdown: F,
    ) -> Result<(), ControlError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let core = self.core;
        let svc = Service { core: core.clone() };
        let acceptor = match (&self.tls, &core.identity) {
            (Some(t), Some(identity)) => Some(crate::tls_accept::acceptor(
                Arc::clone(identity),
                t.client_ca_pem.as_deref(),
            )?),
            _ => None,
        };
        let mut builder = tonic::transport::Server::builder();
        let reaper = {
            let core = core.clone();
            tokio::spawn(async move {
                let max_age = core.cfg.ready_timeout();
                let mut tick = tokio::time::interval(Duration::from_secs(1).min(max_age));
                loop {
                    tick.tick().await;
                    for s in core.registry.expire_ready(max_age) {
                        let uid = s.uid().clone();
                        drop(s);
                        tracing::warn!(%uid, ?max_age, "session READY without update for too long; released");
                        let _ = core.registry.sync_persist(&uid).await;
                    }
                }
            })
        };
        let restorer = {
            let core = core.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RESTORE_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    core.retry_restores().await;
                }
            })
        };
        let mut stop_rx = core.shutdown.subscribe();
        // tonic's own cap stays well above ours, so an oversize message
        // gets our error naming the setting.
        let decode_cap = (4 * core.cfg.max_message_bytes).max(4 << 20);
        let router = builder
            .add_service(
                proto::control_server::ControlServer::new(svc.clone())
                    .max_decoding_message_size(decode_cap),
            )
            .add_service(
                proto::control_ext_server::ControlExtServer::new(svc)
                    .max_decoding_message_size(decode_cap),
            );
        let stop = async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        };
        let serve_fut: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match acceptor {
            Some(acceptor) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls_accept::incoming(listener, acceptor),
                stop,
            )),
            None => Box::pin(
                router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop),
            ),
        };
        let trigger = {
            let core = core.clone();
            async move {
                shutdown.await;
                tracing::info!("control server shutting down");
                core.shutdown.send_replace(true);
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            }
        };
        let result = tokio::select! {
            r = serve_fut => r.map_err(ControlError::from),
            _ = trigger => {
                tracing::warn!(?SHUTDOWN_GRACE, "in-flight calls did not finish within the grace period");
                Ok(())
            }
        };
        reaper.abort();
        restorer.abort();
        // A restore attempt in flight may still start a session: wait for
        // the task to be gone before stopping them all.
        let _ = restorer.await;
        core.stop_all().await;
        result
    }
}

/// Convenience: [`ControlServer::new`] then [`ControlServer::serve`].
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    data_plane: Arc<dyn DataPlane>,
    shutdown: F,
) -> Result<(), ControlError>
where
    F: Future<Output = ()> + Send + 'static,
{
    ControlServer::new(config, data_plane)
        .await?
        .serve(listener, shutdown)
        .await
}
