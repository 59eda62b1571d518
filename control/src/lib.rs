//! SciStream-compatible control plane.
//!
//! Layout (each module owns one thing):
//! - [`proto`]: code generated from `proto/scistream.proto` (wire format).
//! - [`types`]: validated newtypes (session id, role, identity) and the
//!   address parser.
//! - [`errors`]: the one error enum and its single mapping to gRPC status.
//! - [`session`]: the per-session state machine.
//! - [`registry`]: the concurrent session table (hello signalling, expiry,
//!   persistence hooks).
//! - [`ports`]: the operator port range; allocation by binding.
//! - [`auth`] / [`authz`]: who is calling, and what they may touch.
//! - [`allowlist`]: which update targets are allowed.
//! - [`secret`]: data-channel session secrets.
//! - [`persist`]: atomic JSON session files.
//! - [`state_lock`]: one running gateway per state directory.
//! - [`tls`]: control-channel certificate (operator or self-signed).
//! - [`config`]: TOML configuration and the server's clap flags.
//! - [`dataplane`]: the trait the gateway's data plane implements, and a
//!   plain userspace relay for tests.
//! - [`live`]: what a reload (SIGHUP) changes while serving: authentication,
//!   allow-list, rate limits; every other change is refused by name.
//! - [`server`]: the gRPC services and `serve()`.
//! - [`observe`]: hooks for metrics (call latency, auth failures).
//! - [`cli`]: clap definitions and commands of `s2uc` and `appctrl`.
//! - [`cli_docs`]: man pages and shell completions made from the clap definitions.
//! - [`cli_login`]: `s2uc login` (OAuth2 with PKCE) and `logout`, and which token a command sends.
//! - [`client`]: client connection and the s2uc/appctrl operations.
//! - [`tls_accept`]: the control server's TLS acceptor (handshakes with a
//!   deadline, ALPN h2) and its certificate, rotated by a reload.
//! - `tls_probe` (private): why a server closed a client's connection (a
//!   refused TLS handshake: client certificate missing or not accepted).
//! - [`watch_view`]: how `s2uc watch` renders live counters (terminal or
//!   plain lines).
//! - [`mock`]: a mock producer application for `appctrl mock` and tests.
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod cli_docs;
pub mod cli_json;
pub mod cli_login;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod errors;
pub mod live;
pub mod mock;
pub mod observe;
pub mod persist;
pub mod ports;
pub mod rate;
pub mod registry;
pub mod secret;
pub mod server;
pub mod session;
pub mod state_lock;
pub mod status_text;
pub mod tls;
pub mod tls_accept;
mod tls_probe;
pub mod types;
pub mod watch_view;

/// Code generated from `proto/scistream.proto` (package `scistream`).
#[allow(non_camel_case_types, clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("scistream");
}

pub use config::{ServerArgs, ServerConfig, TlsConfig};
pub use dataplane::{
    BoxFuture, DataPlane, DataPlaneError, Link, PlainCopyDataPlane, SessionCounters, SessionPlan,
    UdpCounters,
};
pub use errors::ControlError;
pub use observe::{AuthFailure, CallCode, NoObserver, Observer};
pub use secret::SessionSecret;
pub use server::{ControlServer, ServerHandle, serve};
pub use state_lock::StateLock;
pub use types::{Identity, Role, SessionId};
