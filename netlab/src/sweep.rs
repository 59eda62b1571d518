//! Leftovers of dead runs: namespaces named `PREFIX PID-...` (see
//! [`crate::name`]) whose owning process is gone (crashed, killed, aborted).

use std::fs;
use std::io;
use std::path::Path;

use anyhow::Context;

use crate::name::owner_pid;
use crate::netns::{self, NETNS_DIR};

/// Removes the namespaces of `prefix` whose owning process is dead, after
/// killing the processes still inside them. Namespaces of live processes
/// (other tests or runs going on now) are left alone, and so are names
/// without a pid (fixed names). Returns the names removed.
/// [`crate::LabBuilder::build`] calls this first for unique names.
pub fn sweep_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = owner_pid(prefix, &name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match netns::destroy(&name) {
            Ok(()) => removed.push(name),
            // Another process may be sweeping the same leftovers right now.
            Err(_) if !netns::exists(&name) => {}
            Err(e) => return Err(e).with_context(|| format!("sweeping {name}")),
        }
    }
    Ok(removed)
}
