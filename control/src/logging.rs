//! The one logging setup of the three binaries (`s2cs`, `s2uc`, `appctrl`):
//! tracing to stderr, filtered by `RUST_LOG` (or the binary's default when
//! it is unset or invalid), with colours only for a person at a terminal
//! (log files and pipes get plain text; `NO_COLOR` turns them off).
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default` is the filter without
/// `RUST_LOG` (`"info"` for the daemon, `"error"` for the clients).
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}
