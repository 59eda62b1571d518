//! Namespace names.
//!
//! - Unique (the default): `PREFIX PID-TAG-NODE`, e.g. `e2ens-4242-3a1f0-prod`.
//!   `PREFIX PID-TAG` is the lab's id; `PID` is the owning process, so
//!   [`crate::sweep_stale`] can tell leftovers of dead runs from labs of live
//!   ones; `TAG` is a per-process counter and a random part, so labs of one
//!   process (or of a reused pid) never collide.
//! - Fixed: `PREFIX NODE`, e.g. `s2demo-prod`: names a person can type, at
//!   most one such lab per prefix at a time, never swept.
//!
//! The prefix is used as given; end it with `-` (`"e2ens-"`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};

/// How a lab names its namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `ID-NODE` where `ID` is `PREFIX PID-TAG` (see [`unique_id`]).
    Unique {
        /// The lab's id.
        id: String,
    },
    /// `PREFIX NODE`.
    Fixed {
        /// The prefix, used as given.
        prefix: String,
    },
}

impl Naming {
    /// A fresh unique naming for `prefix`.
    pub fn unique(prefix: &str) -> Naming {
        Naming::Unique {
            id: unique_id(prefix),
        }
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: &str) -> String {
        match self {
            Naming::Unique { id } => format!("{id}-{node}"),
            Naming::Fixed { prefix } => fixed_name(prefix, node),
        }
    }

    /// The lab's id: the common part of its names (without a trailing `-`).
    pub fn id(&self) -> &str {
        match self {
            Naming::Unique { id } => id,
            Naming::Fixed { prefix } => prefix.strip_suffix('-').unwrap_or(prefix),
        }
    }
}

/// `PREFIX PID-SEQRAND`: the pid for [`owner_pid`], a per-process counter and
/// a random part so ids are unique even across pid reuse.
pub fn unique_id(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(seq);
    let random = hasher.finish() & 0xffff;
    format!("{prefix}{}-{seq}{random:04x}", std::process::id())
}

/// The fixed name of `node` under `prefix`: `PREFIX NODE`.
pub fn fixed_name(prefix: &str, node: &str) -> String {
    format!("{prefix}{node}")
}

/// The owning pid in a unique name `PREFIX PID-...`, or `None` if `name` is
/// not one of `prefix`'s.
pub fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_parse_back_to_the_pid() {
        let naming = Naming::unique("t-");
        assert_eq!(
            owner_pid("t-", &naming.ns("prod")),
            Some(std::process::id())
        );
        assert_eq!(owner_pid("t-", "other-123-prod"), None);
        assert_eq!(owner_pid("t-", "t-x-prod"), None);
        assert_eq!(owner_pid("t-", "t-123"), None);
        assert_ne!(unique_id("t-"), unique_id("t-"));
        assert!(naming.ns("prod").starts_with(naming.id()));
    }

    #[test]
    fn fixed_names() {
        let naming = Naming::Fixed {
            prefix: "s2demo-".to_owned(),
        };
        assert_eq!(naming.ns("gwa"), "s2demo-gwa");
        assert_eq!(naming.id(), "s2demo");
        assert_eq!(owner_pid("s2demo-", "s2demo-gwa"), None);
    }
}
