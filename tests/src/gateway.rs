//! `s2cs serve` in a namespace as the end-to-end suites run it, and the
//! `s2uc` commands they drive it with.
//!
//! A [`Gateway`] is one `s2cs serve` [`Daemon`]: control server and session
//! listeners on the addresses of its [`GatewaySpec`] (IPv4 or IPv6),
//! `--no-auth`, one target allow rule, a state directory holding the
//! self-signed control certificate that `s2uc` pins, and any extra flags.
//! [`Gateway::start`] returns once the daemon has printed its certificate
//! fingerprint (and the lines its extra flags promise: `--xdp-iface`,
//! `--metrics-listen`). Extra `--port-range` or `--state-dir` flags replace
//! the defaults. [`Gateway::kill`] (SIGKILL) and [`Gateway::restart`] (the
//! same command on the same state directory) are for fault tests. Like
//! every [`Daemon`], it prints its output when the test fails.
//!
//! [`S2uc::connect`], [`S2uc::status`] and [`S2uc::release`] run those
//! commands against gateways and parse what they print.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::daemon::{Bin, Daemon, S2uc};
use crate::netns::{Node, Topology};
use crate::wait::Deadline;

/// Control port of the gateways.
pub const CONTROL_PORT: u16 = 5000;
/// Session listener ports of the gateways.
pub const PORT_RANGE: &str = "5100-5199";
/// How long a gateway may take to start or stop, and an `s2uc` run.
pub const GATEWAY_DEADLINE: Duration = Duration::from_secs(30);

/// What differs between gateways.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    /// Where it runs.
    pub node: Node,
    /// Control server address.
    pub control: SocketAddr,
    /// Where session listeners bind (and what is advertised).
    pub listener_ip: IpAddr,
    /// The one `--allow` rule.
    pub allow: String,
    /// More flags (e.g. `--data-path splice`, `--metrics-listen ADDR`).
    pub extra: Vec<String>,
    /// `RUST_LOG` of the daemon (None: `info`).
    pub log: Option<String>,
}

/// One `s2cs serve` process; see the [module docs](self).
#[derive(Debug)]
pub struct Gateway {
    /// Where it runs.
    pub node: Node,
    /// Its control server address.
    pub control: SocketAddr,
    /// Its control certificate (for `s2uc --server-cert`).
    pub cert: PathBuf,
    /// Its `--state-dir`.
    pub state: PathBuf,
    daemon: Daemon,
    /// Lines the daemon prints once it serves (see [`Gateway::start`]).
    ready_lines: Vec<String>,
}

/// The line `s2cs serve` prints once per start when it serves.
const SERVING: &str = "s2cs: control server on";

impl Gateway {
    /// Starts the gateway, with its files in a new directory in `parent`,
    /// and waits until it serves.
    pub fn start(topo: &Topology, spec: GatewaySpec, parent: &Path) -> anyhow::Result<Gateway> {
        let dir = Daemon::workdir(parent, &format!("{}-{}", topo.id(), spec.node))?;
        let given = |flag: &str| {
            spec.extra
                .iter()
                .position(|f| f == flag)
                .and_then(|i| spec.extra.get(i + 1))
                .cloned()
        };
        let state = given("--state-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("state"));
        let cert = state.join("tls/control-cert.pem");
        let ip = spec.listener_ip.to_string();
        let mut args: Vec<String> = [
            "serve",
            "--control-listen",
            &spec.control.to_string(),
            "--listener-ip",
            &ip,
            "--advertise-ip",
            &ip,
            "--no-auth",
            "--allow",
            &spec.allow,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if given("--port-range").is_none() {
            args.extend(["--port-range".to_owned(), PORT_RANGE.to_owned()]);
        }
        if given("--state-dir").is_none() {
            args.extend(["--state-dir".to_owned(), state.display().to_string()]);
        }
        args.extend(spec.extra.iter().cloned());
        let mut ready_lines = vec![SERVING.to_owned()];
        ready_lines.extend(spec.extra.iter().filter_map(|flag| match flag.as_str() {
            "--xdp-iface" => Some("XDP guard on".to_owned()),
            "--metrics-listen" => Some("metrics on".to_owned()),
            _ => None,
        }));
        let mut daemon = Daemon::start(
            topo,
            spec.node,
            Bin::S2cs,
            &args,
            &[("RUST_LOG", spec.log.as_deref().unwrap_or("info"))],
            dir,
        )?;
        daemon.wait_until(GATEWAY_DEADLINE, "serving", |d| {
            let out = d.stdout();
            out.contains("SHA-256 fingerprint") && ready_lines.iter().all(|l| out.contains(l))
        })?;
        if !cert.is_file() {
            bail!(
                "s2cs in {} serves but its certificate {} is missing",
                spec.node,
                cert.display()
            );
        }
        Ok(Gateway {
            node: spec.node,
            control: spec.control,
            cert,
            state,
            daemon,
            ready_lines,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// SIGKILL: the gateway dies at once, as in a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.daemon.kill().map(drop)
    }

    /// Starts the same command again (same state directory, addresses and
    /// flags) after it stopped or was killed, and waits until it serves.
    pub fn restart(&mut self, topo: &Topology) -> anyhow::Result<()> {
        let starts = self.stdout().matches(SERVING).count();
        self.daemon.restart(topo)?;
        let ready = self.ready_lines.clone();
        self.daemon
            .wait_until(GATEWAY_DEADLINE, "serving again", |d| {
                let out = d.stdout();
                out.matches(SERVING).count() > starts
                    && ready
                        .iter()
                        .all(|l| out.matches(l.as_str()).count() > starts)
            })
    }

    /// Whether the process has exited (with its status).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.daemon.try_wait()
    }

    /// Sends `signal` to the gateway.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        self.daemon.signal(signal)
    }

    /// Its standard output so far.
    pub fn stdout(&self) -> String {
        self.daemon.stdout()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// "s2cs serve ...".
    pub fn command_line(&self) -> &str {
        self.daemon.command_line()
    }

    /// SIGTERM; fails unless it exits successfully after saying it stopped.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        let status = self.daemon.terminate(GATEWAY_DEADLINE)?;
        if !status.success() {
            bail!("s2cs in {} exited with {status}", self.node);
        }
        if !self.stdout().contains("s2cs: stopped") {
            bail!("s2cs in {} did not report a clean stop", self.node);
        }
        Ok(())
    }
}

/// What `s2uc connect` printed.
#[derive(Debug)]
pub struct Connected {
    /// The session id.
    pub uid: String,
    /// The PROD gateway's (WAN) listeners.
    pub prod_listeners: Vec<SocketAddr>,
    /// Where ConsApp connects (the CONS gateway's listeners).
    pub cons_listeners: Vec<SocketAddr>,
    /// req to update on both gateways, as s2uc measured it.
    pub setup: Duration,
    /// The whole s2uc run (process start, TLS connections, setup).
    pub wall: Duration,
}

impl Connected {
    /// Parses the output of `s2uc connect`.
    pub fn parse(out: &str, wall: Duration) -> anyhow::Result<Connected> {
        let field = |name: &str| -> anyhow::Result<&str> {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .with_context(|| format!("s2uc connect printed no {name:?} line:\n{out}"))
        };
        let addrs = |name: &str| -> anyhow::Result<Vec<SocketAddr>> {
            field(name)?
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse()
                        .with_context(|| format!("{name} {a:?} in s2uc output"))
                })
                .collect()
        };
        let setup = field("setup time:")?;
        let secs: f64 = setup
            .strip_suffix(" s")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("setup time {setup:?} is not \"N s\""))?;
        Ok(Connected {
            uid: field("uid:")?.to_owned(),
            prod_listeners: addrs("prod gateway listeners:")?,
            cons_listeners: addrs("consumer connects to:")?,
            setup: Duration::from_secs_f64(secs),
            wall,
        })
    }
}

impl S2uc {
    /// `s2uc connect` from `from` through `prod` and `cons` for the producer
    /// listeners `producer` (one connection each), at `rate_mbps` (0: no
    /// limit).
    pub fn connect(
        &self,
        topo: &Topology,
        from: Node,
        gateways: (&Gateway, &Gateway),
        producer: &[SocketAddr],
        rate_mbps: u32,
    ) -> anyhow::Result<Connected> {
        self.connect_with(topo, from, gateways, producer, rate_mbps, &[])
    }

    /// [`S2uc::connect`] with `extra` flags (e.g. `--as-old-client`).
    pub fn connect_with(
        &self,
        topo: &Topology,
        from: Node,
        (prod, cons): (&Gateway, &Gateway),
        producer: &[SocketAddr],
        rate_mbps: u32,
        extra: &[&str],
    ) -> anyhow::Result<Connected> {
        let producer: Vec<String> = producer.iter().map(ToString::to_string).collect();
        let (prod_s2cs, cons_s2cs) = (prod.control.to_string(), cons.control.to_string());
        let (prod_cert, cons_cert) = (
            prod.cert.display().to_string(),
            cons.cert.display().to_string(),
        );
        let (num_conn, rate) = (producer.len().to_string(), rate_mbps.to_string());
        let producer = producer.join(",");
        let mut args = vec![
            "connect",
            "--prod-s2cs",
            &prod_s2cs,
            "--cons-s2cs",
            &cons_s2cs,
            "--prod-cert",
            &prod_cert,
            "--cons-cert",
            &cons_cert,
            "--producer",
            &producer,
            "--num-conn",
            &num_conn,
            "--rate",
            &rate,
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let out = self.ok(topo, from, &args, GATEWAY_DEADLINE)?;
        Connected::parse(&out, started.elapsed())
    }

    /// `s2uc status UID` against `gateway`, from `from` (any exit status).
    pub fn status(
        &self,
        topo: &Topology,
        from: Node,
        gateway: &Gateway,
        uid: &str,
    ) -> anyhow::Result<Output> {
        let s2cs = gateway.control.to_string();
        let cert = gateway.cert.display().to_string();
        self.output(
            topo,
            from,
            &["status", "--s2cs", &s2cs, "--server-cert", &cert, uid],
            Deadline::after(GATEWAY_DEADLINE),
        )
    }

    /// `s2uc release UID` against `gateway`, from `from`; fails unless the
    /// release completed.
    pub fn release(
        &self,
        topo: &Topology,
        from: Node,
        gateway: &Gateway,
        uid: &str,
    ) -> anyhow::Result<()> {
        let s2cs = gateway.control.to_string();
        let cert = gateway.cert.display().to_string();
        let out = self.ok(
            topo,
            from,
            &["release", "--s2cs", &s2cs, "--server-cert", &cert, uid],
            GATEWAY_DEADLINE,
        )?;
        if !out.contains("Release completed") {
            bail!("s2uc release {uid} against {} said: {out}", gateway.node);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_output_with_ipv6_listeners() {
        let out = "uid: u-1\nprod gateway listeners: [fd00:e2e:2::1]:5100,10.2.0.1:5101\n\
                   consumer connects to: [fd00:e2e:3::1]:5100\nsetup time: 0.042 s\n";
        let c = Connected::parse(out, Duration::from_secs(1)).expect("parses");
        assert_eq!(c.uid, "u-1");
        assert_eq!(c.prod_listeners.len(), 2);
        assert!(c.cons_listeners[0].is_ipv6());
        assert_eq!(c.setup, Duration::from_millis(42));
        assert!(Connected::parse("uid: u-1\n", Duration::ZERO).is_err());
    }
}
