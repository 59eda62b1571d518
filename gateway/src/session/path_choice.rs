//! `--data-path` ([`PathChoice`]) and the relay engine it selects
//! ([`engine_for`]).
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::SessionError;
use crate::ebpf::KernelRelay;
use crate::relay::{AUTO_PATH, AUTO_REASON, DataPath, RelayEngine};

/// `--data-path`: the best one this gateway has, or a fixed one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathChoice {
    /// [`AUTO_PATH`] (splice), for [`AUTO_REASON`]; the kernel relay is
    /// not loaded.
    #[default]
    Auto,
    /// Exactly this path (sockmap fails to start without the kernel relay).
    Only(DataPath),
}

impl FromStr for PathChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(PathChoice::Auto),
            other => other.parse().map(PathChoice::Only).map_err(|_| {
                format!("unknown data path {other:?}: expected auto, sockmap, splice or copy")
            }),
        }
    }
}

impl fmt::Display for PathChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathChoice::Auto => f.write_str("auto"),
            PathChoice::Only(path) => path.fmt(f),
        }
    }
}

/// Builds the relay engine for `choice` and returns it with the path to use.
/// The kernel relay is loaded only for `Only(Sockmap)`, where failing to load
/// it is an error.
pub fn engine_for(choice: PathChoice) -> Result<(RelayEngine, DataPath), SessionError> {
    match choice {
        PathChoice::Only(path @ (DataPath::Splice | DataPath::Copy)) => {
            Ok((RelayEngine::userspace(), path))
        }
        PathChoice::Only(path @ DataPath::Sockmap) => match KernelRelay::load() {
            Ok(kernel) => Ok((RelayEngine::with_kernel(Arc::new(kernel)), path)),
            Err(source) => Err(SessionError::KernelUnavailable { path, source }),
        },
        PathChoice::Auto => {
            tracing::info!(path = %AUTO_PATH, reason = AUTO_REASON, "data path auto");
            Ok((RelayEngine::userspace(), AUTO_PATH))
        }
    }
}
