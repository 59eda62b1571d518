//! Connections of a running session: the accept loop of each listener
//! (CONS: a session permit and a relay slot first; PROD: admission of the
//! unauthenticated WAN connection, the proof, the legacy pin, then a relay
//! slot and a permit), dialling the target and relaying the pair until it
//! ends or the session resets it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use control::Role;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::ConnError;
use super::options::ACCEPT_BACKOFF;
use super::shared::{ConnGuard, Phase, Shared, dup_socket, reset};
use super::wan::{Leg, WanLegError, WanSide};
use crate::channel::FailureReason;
use crate::drain::InFlight;
use crate::error_chain::error_chain;
use crate::relay_limit::RelaySlot;
use crate::wan_admission::{Refusal, Ticket};

/// Completes once the session's phase is `at` or later (or the data plane
/// is gone).
pub(super) async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|p| *p >= at).await;
}

/// Accepts on one listener of a session until the session stops.
///
/// CONS listeners face the LAN: a connection waits for one of the session's
/// permits before it is accepted. PROD listeners face the WAN: a connection
/// is admitted under the gateway's budget of unauthenticated connections
/// ([`Admission`]) or reset at once, and takes one of the session's permits
/// only after it proved the session secret.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    target: SocketAddr,
    in_flight: InFlight,
) {
    let mut phase = shared.phase.subscribe();
    let mut last_warning: Option<std::time::Instant> = None;
    let mut failures_since_warning = 0u64;
    loop {
        let permit = if shared.role == Role::Cons {
            tokio::select! {
                permit = Arc::clone(&shared.limit).acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
                () = reached(&mut phase, Phase::Stopping) => break,
            }
        } else {
            None
        };
        tokio::select! {
            () = reached(&mut phase, Phase::Stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    // A LAN connection takes its gateway-wide slot now; a
                    // WAN one once it proved the session secret.
                    let slot = if shared.role == Role::Cons {
                        match shared.relay_limit.try_take() {
                            Some(slot) => Some(slot),
                            None => {
                                reset(socket);
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let ticket = if shared.role == Role::Prod {
                        match shared.admission.admit(peer.ip()) {
                            Ok(ticket) => Some(ticket),
                            Err(refusal) => {
                                shared.refuse(socket, refusal);
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let (shared, in_flight) = (Arc::clone(&shared), in_flight.clone());
                    let span = tracing::debug_span!(parent: &shared.span, "conn", %peer);
                    tokio::spawn(
                        connection(shared, socket, peer, target, (permit, slot), ticket, in_flight)
                            .instrument(span),
                    );
                }
                Err(err) => {
                    // Out of descriptors or similar: back off instead of
                    // spinning, and say so at most once a second.
                    failures_since_warning += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(uid = %shared.uid, error = %err, failures = failures_since_warning, "accept failed; backing off");
                        last_warning = Some(std::time::Instant::now());
                        failures_since_warning = 0;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// A PROD gateway's WAN connection that proved the session secret, with
/// the descriptor of its socket (for the pacing cap and reset-on-close).
pub(super) struct Authenticated {
    pub(super) leg: Leg,
    pub(super) socket: OwnedFd,
}

/// Sets up the secure channel on a WAN connection accepted by a PROD
/// gateway: the peer gateway must prove the session secret before the
/// connection counts as one of the session's.
pub(super) async fn authenticate(
    shared: &Shared,
    accepted: TcpStream,
) -> Result<Authenticated, ConnError> {
    let socket = dup_socket(&accepted)?;
    let leg = shared.wan_leg(WanSide::Accepted, accepted).await?;
    Ok(Authenticated { leg, socket })
}

/// Relays one accepted connection until it ends or the session resets it
/// (through `in_flight`, which the session's drain waits for). A PROD
/// connection waits for its turn in the admission queue (`ticket`),
/// authenticates, and only then waits for a session permit.
pub(super) async fn connection(
    shared: Arc<Shared>,
    accepted: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    (permit, slot): (Option<tokio::sync::OwnedSemaphorePermit>, Option<RelaySlot>),
    ticket: Option<Ticket>,
    mut in_flight: InFlight,
) {
    let mut phase = shared.phase.subscribe();
    let (accepted, authenticated, _permit, _slot) = if shared.role == Role::Prod {
        let Some(ticket) = ticket else { return };
        let wait = shared.admission.limits().max_wait;
        let turn = tokio::select! {
            turn = tokio::time::timeout(wait, ticket.start()) => turn,
            () = reached(&mut phase, Phase::Stopping) => return,
        };
        let Ok(pending) = turn else {
            shared.admission.count(Refusal::QueueTimeout);
            shared.refuse(accepted, Refusal::QueueTimeout);
            return;
        };
        let outcome = tokio::select! {
            outcome = authenticate(&shared, accepted) => outcome,
            () = reached(&mut phase, Phase::Stopping) => return,
        };
        drop(pending);
        let authenticated = match outcome {
            Ok(authenticated) => authenticated,
            Err(err) => {
                // Counted by reason and summed up in the log once a second
                // (a flood must not become a log flood).
                tracing::debug!(uid = %shared.uid, %peer, error = %error_chain(&err), "WAN connection refused");
                return;
            }
        };
        if let Err(pinned) = shared.check_pin(peer.ip()) {
            crate::sockets::reset_on_close(&authenticated.socket);
            if let Some(secure) = &shared.secure {
                secure.config.failures().record_detail(
                    FailureReason::NotPinnedPeer,
                    format!("{peer} proved the legacy secret of a session pinned to {pinned}"),
                );
            }
            tracing::debug!(uid = %shared.label, %peer, %pinned, "WAN connection refused: legacy-secret session pinned to another peer");
            return;
        }
        let Some(slot) = shared.relay_limit.try_take() else {
            crate::sockets::reset_on_close(&authenticated.socket);
            return;
        };
        let permit = tokio::select! {
            permit = Arc::clone(&shared.limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = reached(&mut phase, Phase::Stopping) => return,
        };
        (None, Some(authenticated), Some(permit), Some(slot))
    } else {
        (Some(accepted), None, permit, slot)
    };
    let guard = ConnGuard::new(Arc::clone(&shared));
    if let Some(metrics) = &shared.metrics {
        metrics.connection_started(shared.role.as_str(), shared.path.as_str());
    }
    let work = relay_connection(&shared, &guard, accepted, authenticated, target);
    let finished: (&str, bool) = tokio::select! {
        outcome = work => match outcome {
            Ok(path) => {
                let (up, down) = guard.counters.snapshot();
                tracing::debug!(uid = %shared.uid, %peer, %target, %path, up, down, "connection closed");
                (path, true)
            }
            Err(err) => {
                // Whatever was open is reset when the sockets close.
                guard.reset_on_close();
                let (up, down) = guard.counters.snapshot();
                tracing::info!(uid = %shared.uid, %peer, %target, up, down, error = %error_chain(&err), "connection ended with an error");
                ("none", false)
            }
        },
        () = in_flight.reset_requested() => {
            guard.reset_on_close();
            tracing::debug!(uid = %shared.uid, %peer, %target, "connection reset: session stopped");
            ("none", false)
        }
    };
    if let Some(metrics) = &shared.metrics {
        metrics.connection_finished(finished.0, finished.1);
    }
    // `work` is gone (its sockets closed); dropping the guard closes the
    // duplicated descriptors, which really closes (or resets) the sockets.
}

pub(super) async fn relay_connection(
    shared: &Shared,
    guard: &ConnGuard,
    accepted: Option<TcpStream>,
    authenticated: Option<Authenticated>,
    target: SocketAddr,
) -> Result<&'static str, ConnError> {
    // PROD: the peer gateway connected to our WAN listener; it must complete
    // the channel (and prove the session secret) before ProdApp is dialled,
    // so a refused connection never reaches it. CONS: we dial the PROD
    // gateway's WAN listener and set up the channel on that connection. The
    // other side is a LAN application.
    let (client, server) = match (accepted, authenticated) {
        (_, Some(Authenticated { leg, socket })) => {
            guard.add_socket(&socket)?;
            let dialled = dial(shared, target).await?;
            guard.add_socket(&dialled)?;
            (leg, Leg::Plain(dialled))
        }
        (Some(accepted), None) => {
            guard.add_socket(&accepted)?;
            let dialled = dial(shared, target).await?;
            guard.add_socket(&dialled)?;
            let wan = shared.wan_leg(WanSide::Dialled, dialled).await?;
            (Leg::Plain(accepted), wan)
        }
        (None, None) => {
            return Err(ConnError::Channel(WanLegError::NotConfigured(
                shared.channel,
            )));
        }
    };
    match (client, server) {
        (Leg::Plain(client), Leg::Plain(server)) => {
            let summary = shared
                .engine
                .relay(shared.path, client, server, &guard.counters)
                .await?;
            Ok(summary.path.as_str())
        }
        (Leg::Secure(channel), Leg::Plain(lan)) | (Leg::Plain(lan), Leg::Secure(channel)) => {
            let secure = shared
                .secure
                .as_deref()
                .ok_or(WanLegError::NotConfigured(shared.channel))?;
            let path =
                crate::channel::relay_channel(*channel, lan, &guard.counters, &secure.caps).await?;
            Ok(path.as_str())
        }
        (Leg::Secure(_), Leg::Secure(_)) => Err(ConnError::Channel(WanLegError::NotConfigured(
            shared.channel,
        ))),
    }
}

/// Dials a session's target within its dial timeout.
pub(super) async fn dial(shared: &Shared, target: SocketAddr) -> Result<TcpStream, ConnError> {
    match tokio::time::timeout(shared.dial_timeout, TcpStream::connect(target)).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(source)) => Err(ConnError::Dial { target, source }),
        Err(_) => Err(ConnError::DialTimeout {
            target,
            timeout: shared.dial_timeout,
        }),
    }
}
