//! SciStream-compatible control plane: the gRPC protocol, sessions, auth,
//! and the `s2uc` / `appctrl` clients; it builds without any eBPF toolchain.
//!
//! Its modules, each owning one thing, are listed in dependency order in
//! docs/ARCHITECTURE.md, the one module map (xtask's layering test checks
//! the code against it).
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
pub mod logging;
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
