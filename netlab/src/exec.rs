//! Running things inside a namespace: a program under `ip netns exec`
//! ([`command`]), or a closure on a fresh thread that entered the namespace
//! with setns(2) ([`run_in_netns`]).

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use nix::sched::{CloneFlags, setns};

/// `ip netns exec NS PROGRAM`: `ip` execs the program in place (so the
/// child's pid is the program's) after remounting `/sys` for the namespace,
/// so programs that read `/sys/class/net` see its interfaces.
pub fn command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Opens the namespace file at `path` (e.g. [`crate::netns::path`]).
pub fn open_netns(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("opening network namespace {}", path.display()))
}

/// Moves the calling thread into the namespace `ns` (opened from `path`).
/// Only for threads made for it: the thread stays there.
pub fn enter_netns(ns: &File, path: &Path) -> anyhow::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns(CLONE_NEWNET) into {}", path.display()))
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns
/// its result. `f` may borrow from the caller; a panic in `f` is resumed here.
/// Sockets `f` creates belong to the namespace, whichever thread uses them.
pub fn run_in_netns<R, F>(path: &Path, f: F) -> anyhow::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let ns = open_netns(path)?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(thread_name(path))
            .spawn_scoped(scope, move || -> anyhow::Result<R> {
                enter_netns(&ns, path)?;
                drop(ns);
                Ok(f())
            })
            .context("spawning a thread")?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `ns:NAME`, the name of a thread inside namespace file `path`.
pub fn thread_name(path: &Path) -> String {
    match path.file_name() {
        Some(name) => format!("ns:{}", name.to_string_lossy()),
        None => "ns".to_owned(),
    }
}
