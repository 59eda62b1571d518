//! The workspace's own programs in end-to-end tests.
//!
//! - [`Bin`]: where `s2cs` and `s2uc` are: `$S2CS_BIN` / `$S2UC_BIN`, else
//!   `target/<profile>/NAME` next to the running test executable. Cargo does
//!   not build other packages' binaries for this crate's tests, so a missing
//!   one fails with the command that builds it, and one older than its
//!   sources prints a warning.
//! - [`Daemon`]: a long-running program started inside a namespace with its
//!   standard output and error in files of its own work directory. When the
//!   test fails (the daemon is dropped while the thread panics) it prints
//!   its command line, its output and the end of its log, and keeps the
//!   directory for a closer look; otherwise the directory is removed.
//! - [`S2uc`]: runs the `s2uc` client to completion in a namespace with a
//!   private `$HOME` (no token file or token variable of the machine leaks
//!   in).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::exec::NsChild;
use crate::netns::{Node, Topology};
use crate::wait::Deadline;

/// Lines of a failed daemon's log printed (the whole file is kept).
const LOG_TAIL: usize = 200;

/// A binary of this workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bin {
    /// The gateway daemon (`gateway` package).
    S2cs,
    /// The user client (`control` package).
    S2uc,
}

impl Bin {
    /// File name in the target directory.
    pub const fn name(self) -> &'static str {
        match self {
            Bin::S2cs => "s2cs",
            Bin::S2uc => "s2uc",
        }
    }

    /// The environment variable that overrides the path.
    pub const fn env(self) -> &'static str {
        match self {
            Bin::S2cs => "S2CS_BIN",
            Bin::S2uc => "S2UC_BIN",
        }
    }

    /// Packages whose `src` the binary is built from.
    const fn sources(self) -> &'static [&'static str] {
        match self {
            Bin::S2cs => &["gateway", "control"],
            Bin::S2uc => &["control"],
        }
    }

    /// The path of the binary: `$ENV`, else the target directory of the
    /// running test executable (`target/debug/deps/x-HASH` ->
    /// `target/debug/NAME`). Warns on stderr if it is older than its sources.
    pub fn path(self) -> anyhow::Result<PathBuf> {
        if let Some(bin) = std::env::var_os(self.env()) {
            return Ok(PathBuf::from(bin));
        }
        let exe = std::env::current_exe().context("path of the test executable")?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .with_context(|| format!("{} has no target/<profile> directory", exe.display()))?;
        let bin = profile_dir.join(self.name());
        if !bin.is_file() {
            bail!(
                "{} is missing: build it first with `cargo build -p gateway -p control` (cargo does \
                 not build other packages' binaries for these tests), or point {} at one",
                bin.display(),
                self.env()
            );
        }
        self.warn_if_stale(&bin);
        Ok(bin)
    }

    fn warn_if_stale(self, bin: &Path) {
        fn newest(dir: &Path) -> Option<SystemTime> {
            std::fs::read_dir(dir)
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let meta = entry.metadata().ok()?;
                    if meta.is_dir() {
                        newest(&entry.path())
                    } else {
                        meta.modified().ok()
                    }
                })
                .max()
        }
        let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
            return;
        };
        let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
        for package in self.sources() {
            let sources = workspace.join(package).join("src");
            if let (Some(built), Some(source)) = (built, newest(&sources))
                && source > built
            {
                eprintln!(
                    "warning: {} is older than {}: rebuild it (`cargo build -p gateway -p control`)",
                    bin.display(),
                    sources.display()
                );
            }
        }
    }
}

/// A long-running program in a namespace whose output goes to files; see
/// the [module docs](self).
#[derive(Debug)]
pub struct Daemon {
    child: NsChild,
    node: Node,
    bin: Bin,
    args: Vec<String>,
    env: Vec<(String, String)>,
    command_line: String,
    /// `None` once kept or removed (on drop).
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// A fresh work directory for a daemon, `PARENT/PREFIX-XXXX`, for files
    /// it needs before it starts (state, configuration); the daemon's output
    /// goes there too. Pass it to [`Daemon::start`].
    pub fn workdir(parent: &Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(parent)
            .with_context(|| format!("creating a work directory in {}", parent.display()))
    }

    /// Starts `bin ARGS` in `node` with `env` added (plus `NO_COLOR=1`),
    /// stdin closed, stdout and stderr in `dir`'s `stdout` and `stderr`.
    pub fn start(
        topo: &Topology,
        node: Node,
        bin: Bin,
        args: &[String],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Daemon> {
        let args: Vec<String> = args.to_vec();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let command_line = format!("{} {}", bin.name(), args.join(" "));
        let child = spawn(topo, node, bin, &args, &env, dir.path(), &command_line)?;
        Ok(Daemon {
            child,
            node,
            bin,
            args,
            env,
            command_line,
            dir: Some(dir),
        })
    }

    /// Starts the program again, the same way, after it exited (or was
    /// killed): its output is appended to the same files.
    pub fn restart(&mut self, topo: &Topology) -> anyhow::Result<()> {
        if self.try_wait()?.is_none() {
            bail!(
                "`{}` in {} still runs: stop it before restarting",
                self.command_line,
                self.node
            );
        }
        let dir = self.dir().to_path_buf();
        self.child = spawn(
            topo,
            self.node,
            self.bin,
            &self.args,
            &self.env,
            &dir,
            &self.command_line,
        )?;
        Ok(())
    }

    /// SIGKILL, then waits for it to be gone.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child
            .kill()
            .with_context(|| format!("killing `{}`", self.command_line))
    }

    /// The node it runs in.
    pub fn node(&self) -> Node {
        self.node
    }

    /// The program's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it was started as ("s2cs serve --flag ...").
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Its work directory.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new(""),
        }
    }

    /// Its standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir().join("stdout")).unwrap_or_default()
    }

    /// Its standard error (the log) so far, without terminal colours.
    pub fn log(&self) -> String {
        let raw = std::fs::read(self.dir().join("stderr")).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Polls `ready` until it holds; fails at once if the program exits
    /// first, or at the deadline.
    pub fn wait_until(
        &mut self,
        deadline: impl Into<Deadline>,
        what: &str,
        mut ready: impl FnMut(&Daemon) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = deadline.into();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "`{}` in {} exited ({status}) before it was {what}",
                    self.command_line,
                    self.node
                );
            }
            if ready(self) {
                return Ok(());
            }
            if deadline.expired() {
                bail!(
                    "`{}` in {} not {what} within its deadline",
                    self.command_line,
                    self.node
                );
            }
            std::thread::sleep(pause.min(deadline.remaining()));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the program.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid does not fit i32")?;
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to `{}`", self.command_line))
    }

    /// SIGTERM, then waits for it to exit.
    pub fn terminate(&mut self, deadline: impl Into<Deadline>) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.child
            .wait_deadline(deadline)
            .with_context(|| format!("`{}` after SIGTERM", self.command_line))
    }

    /// What is printed when a test fails.
    fn report(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "---- {} (`{}`) stdout ----\n{}",
            self.node,
            self.command_line,
            self.stdout().trim_end()
        );
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let skipped = lines.len().saturating_sub(LOG_TAIL);
        let _ = writeln!(
            text,
            "---- {} log{} ----",
            self.node,
            if skipped > 0 {
                format!(" (last {LOG_TAIL} of {} lines)", lines.len())
            } else {
                String::new()
            }
        );
        for line in &lines[skipped..] {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        // Its output must not give away a secret its files hold.
        let known = crate::leaks::secrets_in(self.dir());
        let output = format!("{}{}", self.stdout(), self.log());
        crate::leaks::check(
            &format!("{} {}", self.node, self.command_line),
            &output,
            &known,
        );
        if !std::thread::panicking() {
            return;
        }
        eprint!("{}", self.report());
        if let Some(dir) = self.dir.take() {
            eprintln!("---- {} files kept in {}", self.node, dir.keep().display());
        }
    }
}

/// Spawns `bin ARGS` in `node` with `env` (plus `NO_COLOR=1`), stdin
/// closed, stdout and stderr appended to `dir`'s `stdout` and `stderr`.
fn spawn(
    topo: &Topology,
    node: Node,
    bin: Bin,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    command_line: &str,
) -> anyhow::Result<NsChild> {
    let program = bin.path()?;
    let open = |name: &str| {
        let p = dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    };
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(open("stdout")?)
        .stderr(open("stderr")?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    topo.spawn(node, cmd)
        .with_context(|| format!("starting `{command_line}` in {node}"))
}

/// Removes terminal colour sequences (ESC `[` ... final letter).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `s2uc` to completion with a private `$HOME` and no `$S2UC_*`
/// variables of the machine.
#[derive(Debug)]
pub struct S2uc {
    home: tempfile::TempDir,
}

impl S2uc {
    /// A client whose `$HOME` is a new directory in `parent`.
    pub fn new(parent: &Path, prefix: &str) -> anyhow::Result<S2uc> {
        Ok(S2uc {
            home: Daemon::workdir(parent, prefix)?,
        })
    }

    /// Its `$HOME`.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs `s2uc ARGS` in `node`; returns its output whatever its exit status.
    pub fn output(
        &self,
        topo: &Topology,
        node: Node,
        args: &[&str],
        deadline: impl Into<Deadline>,
    ) -> anyhow::Result<Output> {
        let mut cmd = Command::new(Bin::S2uc.path()?);
        cmd.args(args).env("HOME", self.home.path());
        for var in [
            "S2UC_TOKEN",
            "S2UC_CLIENT_CERT",
            "S2UC_CLIENT_KEY",
            "S2UC_CHANNEL_SECRET",
        ] {
            cmd.env_remove(var);
        }
        let out = topo
            .output(node, cmd, deadline)
            .with_context(|| format!("running s2uc {args:?} in {node}"))?;
        // Its output must not give away a secret (its files' or any
        // secret-shaped value).
        let known = crate::leaks::secrets_in(self.home.path());
        crate::leaks::check(
            &format!("s2uc {}", args.join(" ")),
            &format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            &known,
        );
        Ok(out)
    }

    /// Runs `s2uc ARGS` in `node`; fails unless it succeeds (with its
    /// output in the error); returns its stdout.
    pub fn ok(
        &self,
        topo: &Topology,
        node: Node,
        args: &[&str],
        deadline: impl Into<Deadline>,
    ) -> anyhow::Result<String> {
        let out = self.output(topo, node, args, deadline)?;
        if !out.status.success() {
            bail!(
                "s2uc {} in {node} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_terminal_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[3mpath\u{1b}[0m\u{1b}[2m=\u{1b}[0msockmap"),
            "path=sockmap"
        );
    }

    #[test]
    fn binaries_are_named_and_overridable() {
        assert_eq!((Bin::S2cs.name(), Bin::S2cs.env()), ("s2cs", "S2CS_BIN"));
        assert_eq!((Bin::S2uc.name(), Bin::S2uc.env()), ("s2uc", "S2UC_BIN"));
    }
}
