//! One named network namespace (`/run/netns/NAME`, as iproute2 keeps them):
//! add it, list the processes inside, kill them all, destroy it.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ip::ip;

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// How long [`kill_all`] waits for killed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How often [`kill_all`] looks again.
const KILL_POLL: Duration = Duration::from_millis(20);

/// Path of namespace `name`'s file, for setns(2) or `nsenter --net=`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates namespace `name` (`ip netns add`); fails if it exists.
pub fn add(name: &str) -> anyhow::Result<()> {
    // The first `ip netns add` on a machine sets up the /run/netns mount; two
    // racing ones can stack it twice. Serialize them within this process.
    static ADD: Mutex<()> = Mutex::new(());
    let _guard = ADD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    ip(&["netns", "add", name]).map(drop)
}

/// The pids of the processes in namespace `name` (what `ip netns pids`
/// prints): those whose `/proc/PID/ns/net` is the namespace's file.
pub fn pids(name: &str) -> anyhow::Result<Vec<u32>> {
    let ns = path(name);
    let meta = fs::metadata(&ns).with_context(|| format!("reading {}", ns.display()))?;
    let id = (meta.dev(), meta.ino());
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry.context("listing /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Gone meanwhile, a zombie (no namespaces left) or a kernel thread:
        // not in any namespace we could delete.
        let Ok(task) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if (task.dev(), task.ino()) == id {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Kills (SIGKILL) every process in namespace `name` except this one, and
/// waits until none is left; fails if some survive for 2 s. Nothing to do if
/// the namespace does not exist.
pub fn kill_all(name: &str) -> anyhow::Result<()> {
    let me = std::process::id();
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        if !exists(name) {
            return Ok(());
        }
        let left: Vec<u32> = pids(name)?.into_iter().filter(|&p| p != me).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let list: Vec<String> = left.iter().map(u32::to_string).collect();
            bail!("processes {} in {name} survive SIGKILL", list.join(" "));
        }
        for pid in left {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            // ESRCH: it exited meanwhile.
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
        std::thread::sleep(KILL_POLL);
    }
}

/// Kills what still runs in namespace `name` ([`kill_all`]) and deletes it
/// (what `ip netns del` does: detach the bind mount, remove the file).
/// Deleting the last reference to a namespace deletes its interfaces (a
/// veth's peer goes with it). Nothing to do if it does not exist; the
/// namespace is deleted even if some process survives (that is reported).
pub fn destroy(name: &str) -> anyhow::Result<()> {
    let file = path(name);
    if !file.exists() {
        return Ok(());
    }
    let killed = kill_all(name);
    match umount2(&file, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", file.display())),
    }
    match fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
    }
    killed.with_context(|| format!("namespace {name} deleted, but"))
}
