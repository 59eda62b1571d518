//! Running code inside a topology's namespaces.
//!
//! - Processes: [`Topology::spawn`] starts a [`Command`] whose child enters the
//!   namespace (setns before exec) and returns an [`NsChild`] that kills it on
//!   drop; [`Topology::output`] runs one to completion within a deadline;
//!   [`Topology::command`] builds an `ip netns exec` command instead, for
//!   programs that read `/sys/class/net` (which only `ip netns exec` remounts).
//! - Closures: [`Topology::run_in`] runs a closure on a fresh OS thread that
//!   entered the namespace with setns(2) and returns its result;
//!   [`Topology::spawn_thread_in`] does the same in the background.
//! - Async: [`Topology::block_on_in`] and [`Topology::spawn_tokio_in`] run a
//!   tokio current-thread runtime on such a thread.
//!
//! A socket belongs to the namespace it was created in, whatever thread uses it
//! later: [`Topology::tcp_listen`] and [`Topology::tcp_connect`] create sockets
//! inside a namespace and hand them back to the calling thread (convert them
//! with `tokio::net::TcpStream::from_std` after `set_nonblocking(true)`).
//!
//! The free functions take a namespace file path, for namespaces made elsewhere.

use std::future::Future;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use netlab::exec::{enter_netns as enter, open_netns, thread_name};
/// Runs `f` on a new thread inside the network namespace at `path` and
/// returns its result (a panic in `f` is resumed in the caller).
pub use netlab::run_in_netns;

use crate::netns::{Node, Topology};
use crate::wait::Deadline;

/// How often deadline-bounded waits on processes and threads poll.
const POLL: Duration = Duration::from_millis(5);

/// Starts `f` on a new thread inside the network namespace at `path`.
pub fn spawn_thread_in_netns<R, F>(path: &Path, f: F) -> anyhow::Result<NsThread<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ns = open_netns(path)?;
    let owned: PathBuf = path.to_owned();
    let handle = std::thread::Builder::new()
        .name(thread_name(path))
        .spawn(move || -> anyhow::Result<R> {
            enter(&ns, &owned)?;
            drop(ns);
            Ok(f())
        })
        .context("spawning a thread")?;
    Ok(NsThread {
        handle,
        label: path.display().to_string(),
    })
}

fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio current-thread runtime")
}

/// Runs the future made by `f` to completion on a tokio current-thread runtime,
/// on a new thread inside the network namespace at `path`.
pub fn block_on_in_netns<F, Fut, R>(path: &Path, f: F) -> anyhow::Result<R>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = R>,
    R: Send,
{
    run_in_netns(path, move || Ok(current_thread_runtime()?.block_on(f()))).and_then(|r| r)
}

/// Like [`block_on_in_netns`], in the background.
pub fn spawn_tokio_in_netns<F, Fut, R>(path: &Path, f: F) -> anyhow::Result<NsThread<R>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    let ns = open_netns(path)?;
    let owned: PathBuf = path.to_owned();
    let handle = std::thread::Builder::new()
        .name(thread_name(path))
        .spawn(move || -> anyhow::Result<R> {
            enter(&ns, &owned)?;
            drop(ns);
            Ok(current_thread_runtime()?.block_on(f()))
        })
        .context("spawning a thread")?;
    Ok(NsThread {
        handle,
        label: path.display().to_string(),
    })
}

/// Starts `cmd` with its child inside the network namespace at `path`.
pub fn spawn_in_netns(path: &Path, mut cmd: Command) -> anyhow::Result<NsChild> {
    let ns = open_netns(path)?;
    let label = format!("{:?} in {}", cmd.get_program(), path.display());
    crate::sys::enter_netns_before_exec(&mut cmd, ns);
    let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
    Ok(NsChild { child, label })
}

/// A thread running inside a namespace. Threads cannot be killed: give the
/// closure a bounded amount of work (deadlines), then [`NsThread::join`] it.
#[derive(Debug)]
#[must_use = "join the thread to see its result or panic"]
pub struct NsThread<R> {
    handle: JoinHandle<anyhow::Result<R>>,
    label: String,
}

impl<R> NsThread<R> {
    /// Waits for the closure's result; a panic in it is resumed here.
    pub fn join(self) -> anyhow::Result<R> {
        match self.handle.join() {
            Ok(result) => result.with_context(|| format!("thread in {}", self.label)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Like [`NsThread::join`], but fails if the thread is still running at
    /// the deadline (it is then left running, detached).
    pub fn join_deadline(self, deadline: impl Into<Deadline>) -> anyhow::Result<R> {
        let deadline = deadline.into();
        while !self.handle.is_finished() {
            if deadline.expired() {
                bail!("thread in {} still running at its deadline", self.label);
            }
            std::thread::sleep(POLL.min(deadline.remaining()));
        }
        self.join()
    }

    /// Whether the closure has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// A child process inside a namespace, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    label: String,
}

impl NsChild {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying [`Child`], e.g. to take its piped stdin/stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.label))
    }

    /// Waits for the child to exit; fails (and leaves it to drop) if it is
    /// still running at the deadline.
    pub fn wait_deadline(&mut self, deadline: impl Into<Deadline>) -> anyhow::Result<ExitStatus> {
        let deadline = deadline.into();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if deadline.expired() {
                bail!("{} still running at its deadline", self.label);
            }
            std::thread::sleep(POLL.min(deadline.remaining()));
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if self.try_wait()?.is_none() {
            self.child
                .kill()
                .with_context(|| format!("killing {}", self.label))?;
        }
        self.child
            .wait()
            .with_context(|| format!("reaping {}", self.label))
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("e2e: {e:#}");
        }
    }
}

/// Reads a pipe to its end on a helper thread.
fn drain<P: Read + Send + 'static>(pipe: Option<P>) -> JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut buf)?;
        }
        Ok(buf)
    })
}

impl Topology {
    /// Starts `cmd` inside `node`'s namespace (the child calls setns before
    /// exec, so every setting of `cmd` is kept). The returned guard kills the
    /// process on drop; the topology also kills anything left in its
    /// namespaces when it is dropped.
    ///
    /// ```no_run
    /// # fn demo(topo: &e2e::Topology) -> anyhow::Result<()> {
    /// let mut cmd = std::process::Command::new("ip");
    /// cmd.args(["-o", "addr"]);
    /// let mut child = topo.spawn(e2e::Node::Gwa, cmd)?;
    /// child.wait_deadline(std::time::Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    pub fn spawn(&self, node: Node, cmd: Command) -> anyhow::Result<NsChild> {
        spawn_in_netns(&self.netns_path(node), cmd)
    }

    /// Runs `cmd` inside `node`'s namespace to completion and collects its
    /// output; kills it and fails if it still runs at the deadline. Does not
    /// check the exit status.
    pub fn output(
        &self,
        node: Node,
        mut cmd: Command,
        deadline: impl Into<Deadline>,
    ) -> anyhow::Result<Output> {
        let deadline = deadline.into();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.spawn(node, cmd)?;
        let stdout = drain(child.child_mut().stdout.take());
        let stderr = drain(child.child_mut().stderr.take());
        let status = child.wait_deadline(deadline)?;
        let label = child.label.clone();
        let join = |h: JoinHandle<io::Result<Vec<u8>>>| -> anyhow::Result<Vec<u8>> {
            // The pipes close when the process exits, unless it left children
            // holding them: bound that wait too.
            while !h.is_finished() {
                if deadline.expired() {
                    bail!("output of {label} still open at its deadline");
                }
                std::thread::sleep(POLL.min(deadline.remaining()));
            }
            match h.join() {
                Ok(read) => read.with_context(|| format!("reading output of {label}")),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        };
        Ok(Output {
            status,
            stdout: join(stdout)?,
            stderr: join(stderr)?,
        })
    }

    /// A command `ip netns exec <node's namespace> PROGRAM`, for programs that
    /// need `/sys` to show the namespace's interfaces (`ip netns exec`
    /// remounts it); start it with [`std::process::Command::spawn`] or with
    /// [`Topology::spawn`] (harmless double entry) to get a guard.
    pub fn command(&self, node: Node, program: &str) -> Command {
        netlab::command(&self.ns_name(node), program)
    }

    /// Runs `f` on a fresh OS thread inside `node`'s namespace and returns its
    /// result (a panic in `f` is resumed here). `f` may borrow from the caller.
    pub fn run_in<R, F>(&self, node: Node, f: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in_netns(&self.netns_path(node), f)
    }

    /// Starts `f` on a new thread inside `node`'s namespace (e.g. a server
    /// while the test drives a client from another namespace).
    pub fn spawn_thread_in<R, F>(&self, node: Node, f: F) -> anyhow::Result<NsThread<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_thread_in_netns(&self.netns_path(node), f)
    }

    /// Runs the future made by `f` on a tokio current-thread runtime on a
    /// fresh thread inside `node`'s namespace.
    pub fn block_on_in<F, Fut, R>(&self, node: Node, f: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        block_on_in_netns(&self.netns_path(node), f)
    }

    /// Like [`Topology::block_on_in`], in the background.
    pub fn spawn_tokio_in<F, Fut, R>(&self, node: Node, f: F) -> anyhow::Result<NsThread<R>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R>,
        R: Send + 'static,
    {
        spawn_tokio_in_netns(&self.netns_path(node), f)
    }

    /// A TCP listener bound to `addr` inside `node`'s namespace (port 0 picks
    /// a free port: see `local_addr`).
    pub fn tcp_listen(&self, node: Node, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        self.run_in(node, || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in {node}"))
    }

    /// A TCP connection from inside `node`'s namespace to `addr`.
    pub fn tcp_connect(
        &self,
        node: Node,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<TcpStream> {
        self.run_in(node, || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting from {node} to {addr}"))
    }

    /// Polls from inside `node`'s namespace until `addr` accepts connections.
    pub fn wait_for_port(
        &self,
        node: Node,
        addr: SocketAddr,
        deadline: impl Into<Deadline>,
    ) -> anyhow::Result<()> {
        let deadline = deadline.into();
        self.run_in(node, || crate::wait::wait_for_port(addr, deadline))?
            .with_context(|| format!("from {node}"))
    }
}
