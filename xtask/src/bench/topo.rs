//! The benchmark's own network: three namespaces joined by two veth pairs
//! (MTU 1500), built with `ip` and removed again on every exit path.
//!
//! ```text
//!   client 10.201.1.2 --veth-- 10.201.1.1 relay 10.201.2.1 --veth-- 10.201.2.2 server
//! ```
//!
//! The client and the server route each other's subnet through the relay
//! namespace, whose forwarding is off except while the "direct" case runs
//! ([`Forwarding`]); every other case has a relay process listening in the
//! relay namespace. Names are `s2bench-PID-RAND-{cli,rly,srv}`, so runs never
//! collide; [`BenchNet`]'s `Drop` kills whatever still runs inside and deletes
//! the namespaces (which deletes the veths), also when the bench fails or is
//! interrupted with Ctrl-C (the handler in `mod.rs` makes the run stop at its
//! next check, so the guards run). A run killed outright (SIGKILL) leaves them
//! behind: the next run sweeps namespaces whose owning pid is dead
//! ([`sweep_stale`]).
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Prefix of every namespace the benchmark creates.
const NS_PREFIX: &str = "s2bench-";
/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The client's address.
pub(super) const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
/// The relay's address on the client side (where relays listen).
pub(super) const RELAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
/// The server's address (where iperf3 -s listens).
pub(super) const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
/// The iperf3 server's port.
pub(super) const SERVER_PORT: u16 = 5201;
/// MTU of both links.
pub(super) const MTU: u32 = 1500;

/// The iperf3 server, as the relays dial it.
pub(super) fn server_sockaddr() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)
}

/// The three namespaces; dropping it removes them.
#[derive(Debug)]
pub(super) struct BenchNet {
    pub(super) client: String,
    pub(super) relay: String,
    pub(super) server: String,
    /// Created so far, removed in reverse order on drop.
    created: Vec<String>,
}

impl BenchNet {
    /// Builds the topology (after sweeping leftovers of dead runs). On error,
    /// whatever was created is removed again.
    pub(super) fn create() -> anyhow::Result<BenchNet> {
        report_sweep();
        let id = run_id();
        let mut net = BenchNet {
            client: format!("{id}-cli"),
            relay: format!("{id}-rly"),
            server: format!("{id}-srv"),
            created: Vec::new(),
        };
        // `net` drops on error and removes what exists.
        net.build()
            .with_context(|| format!("building the bench topology {id}"))?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        for ns in [&self.client, &self.relay, &self.server] {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
        }
        let mtu = MTU.to_string();
        // Each pair is created inside the namespaces: nothing appears in the
        // host's namespace, and the short names cannot collide.
        for (end, peer) in [(&self.client, "cli"), (&self.server, "srv")] {
            ip(&[
                "-n",
                end,
                "link",
                "add",
                "eth0",
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "mtu",
                &mtu,
                "netns",
                &self.relay,
            ])?;
        }
        ip_batch(
            &self.client,
            &[
                "link set lo up".into(),
                format!("addr add {CLIENT_ADDR}/24 dev eth0"),
                "link set eth0 up".into(),
                format!("route add 10.201.2.0/24 via {RELAY_ADDR}"),
            ],
        )?;
        ip_batch(
            &self.server,
            &[
                "link set lo up".into(),
                format!("addr add {SERVER_ADDR}/24 dev eth0"),
                "link set eth0 up".into(),
                "route add 10.201.1.0/24 via 10.201.2.1".into(),
            ],
        )?;
        ip_batch(
            &self.relay,
            &[
                "link set lo up".into(),
                format!("addr add {RELAY_ADDR}/24 dev cli"),
                "addr add 10.201.2.1/24 dev srv".into(),
                "link set cli up".into(),
                "link set srv up".into(),
            ],
        )?;
        set_forwarding(&self.relay, false)
    }

    /// `ip netns exec NS PROGRAM`: `ip` execs the program in place, so the
    /// child's pid is the program's.
    pub(super) fn command(&self, ns: &str, program: &str) -> Command {
        ns_command(ns, program)
    }

    /// Kills every process in `ns` and waits (up to 2 s) until none is left.
    pub(super) fn kill_all(&self, ns: &str) -> anyhow::Result<()> {
        kill_all(ns)
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        // Never panic here: this also runs while an error propagates.
        for ns in self.created.iter().rev() {
            if let Err(e) = kill_all(ns) {
                eprintln!("bench: cleaning up {ns}: {e:#}");
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("bench: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

/// Sweeps leftovers of dead runs ([`sweep_stale`]) and says what it removed.
fn report_sweep() {
    match sweep_stale() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!(
                "bench: removed namespaces of dead runs: {}",
                removed.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("bench: could not sweep stale namespaces: {e:#}"),
    }
}

/// `s2bench-PID-RAND`: the prefix of this run's namespace names.
fn run_id() -> String {
    let mut random = RandomState::new().build_hasher();
    random.write_u32(std::process::id());
    format!(
        "{NS_PREFIX}{}-{:04x}",
        std::process::id(),
        random.finish() & 0xffff
    )
}

/// The consumer's address (iperf3 client, LAN B).
pub(super) const PAIR_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 202, 3, 2);
/// gwB's address on LAN B: where the consumer side's relays listen and gwB's
/// control server.
pub(super) const PAIR_GWB_LAN: Ipv4Addr = Ipv4Addr::new(10, 202, 3, 1);
/// gwB's WAN address.
pub(super) const PAIR_GWB_WAN: Ipv4Addr = Ipv4Addr::new(10, 202, 2, 2);
/// gwA's WAN address (TLS listeners, gwA's control server).
pub(super) const PAIR_GWA_WAN: Ipv4Addr = Ipv4Addr::new(10, 202, 2, 1);
/// gwA's address on LAN A.
pub(super) const PAIR_GWA_LAN: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 1);
/// The producer's address (iperf3 server, LAN A).
pub(super) const PAIR_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 2);

/// The gateway-pair benchmark's network: four namespaces joined by three
/// veth pairs (MTU 1500), no routing between them (forwarding off), so the
/// only way from the consumer to the producer is through both gateways:
///
/// ```text
///   client 10.202.3.2 -LAN B- 10.202.3.1 gwb 10.202.2.2 =WAN= 10.202.2.1 gwa 10.202.1.1 -LAN A- 10.202.1.2 server
///   (consumer, iperf3 -c -R)                                                                 (producer, iperf3 -s)
/// ```
///
/// Names are `s2bench-PID-RAND-{cli,gwb,gwa,srv}` (swept like [`BenchNet`]'s
/// when their run died); dropping it kills everything inside and deletes them.
#[derive(Debug)]
pub(super) struct PairNet {
    pub(super) client: String,
    pub(super) gwb: String,
    pub(super) gwa: String,
    pub(super) server: String,
    /// Created so far, removed in reverse order on drop.
    created: Vec<String>,
}

impl PairNet {
    /// Builds the topology; on error, whatever was created is removed again.
    pub(super) fn create() -> anyhow::Result<PairNet> {
        report_sweep();
        let id = run_id();
        let mut net = PairNet {
            client: format!("{id}-cli"),
            gwb: format!("{id}-gwb"),
            gwa: format!("{id}-gwa"),
            server: format!("{id}-srv"),
            created: Vec::new(),
        };
        net.build()
            .with_context(|| format!("building the gateway-pair topology {id}"))?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        for ns in [&self.client, &self.gwb, &self.gwa, &self.server] {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
        }
        let mtu = MTU.to_string();
        for (end, name, peer_ns, peer) in [
            (&self.client, "eth0", &self.gwb, "lan"),
            (&self.gwb, "wan", &self.gwa, "wan"),
            (&self.server, "eth0", &self.gwa, "lan"),
        ] {
            ip(&[
                "-n", end, "link", "add", name, "mtu", &mtu, "type", "veth", "peer", "name", peer,
                "mtu", &mtu, "netns", peer_ns,
            ])?;
        }
        let addrs: [(&String, &[(&str, Ipv4Addr)]); 4] = [
            (&self.client, &[("eth0", PAIR_CLIENT_ADDR)]),
            (&self.gwb, &[("lan", PAIR_GWB_LAN), ("wan", PAIR_GWB_WAN)]),
            (&self.gwa, &[("wan", PAIR_GWA_WAN), ("lan", PAIR_GWA_LAN)]),
            (&self.server, &[("eth0", PAIR_SERVER_ADDR)]),
        ];
        for (ns, ifaces) in addrs {
            let mut lines = vec!["link set lo up".to_owned()];
            for (dev, addr) in ifaces {
                lines.push(format!("addr add {addr}/24 dev {dev}"));
                lines.push(format!("link set {dev} up"));
            }
            ip_batch(ns, &lines)?;
            set_forwarding(ns, false)?;
        }
        Ok(())
    }

    /// Kills every process in `ns` and waits (up to 2 s) until none is left.
    pub(super) fn kill_all(&self, ns: &str) -> anyhow::Result<()> {
        kill_all(ns)
    }
}

impl Drop for PairNet {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = kill_all(ns) {
                eprintln!("bench: cleaning up {ns}: {e:#}");
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("bench: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

/// `ip netns exec NS PROGRAM` (the child's pid is the program's).
pub(super) fn ns_command(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Turns IPv4 forwarding in the relay namespace on for as long as it lives
/// (the "direct" case), and off again on drop.
pub(super) struct Forwarding<'a> {
    ns: &'a str,
}

impl<'a> Forwarding<'a> {
    pub(super) fn enable(net: &'a BenchNet) -> anyhow::Result<Forwarding<'a>> {
        set_forwarding(&net.relay, true)?;
        Ok(Forwarding { ns: &net.relay })
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_forwarding(self.ns, false) {
            eprintln!("bench: turning forwarding off in {}: {e:#}", self.ns);
        }
    }
}

fn set_forwarding(ns: &str, on: bool) -> anyhow::Result<()> {
    let value = if on { "1" } else { "0" };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!("net.ipv4.ip_forward={value}"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running sysctl in {ns} (is procps installed?)"))?;
    if !out.status.success() {
        bail!(
            "setting net.ipv4.ip_forward={value} in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The pids of the processes in namespace `ns`.
pub(super) fn ns_pids(ns: &str) -> anyhow::Result<Vec<u32>> {
    Ok(ip(&["netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn kill_all(ns: &str) -> anyhow::Result<()> {
    if !Path::new(NETNS_DIR).join(ns).exists() {
        return Ok(());
    }
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<String> = ns_pids(ns)?
            .into_iter()
            .filter(|&p| p != me)
            .map(|p| p.to_string())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {} in {ns} survive SIGKILL", pids.join(" "));
        }
        // Every process in these namespaces was started by the bench.
        // A pid may exit meanwhile: `kill` then fails, which is fine.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status()
            .context("running kill (procps)")?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes namespaces of earlier bench runs whose process is gone, after
/// killing what still runs in them. Returns their names.
fn sweep_stale() -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        kill_all(&name)?;
        ip(&["netns", "del", &name])?;
        removed.push(name);
    }
    Ok(removed)
}

/// Runs `ip ARGS...`, returning its standard output; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NS -batch -` with `lines`.
fn ip_batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    let what = || format!("`ip -n {ns} -batch -` with:\n{}", lines.join("\n"));
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (is iproute2 installed?)", what()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{}\n", lines.join("\n")).as_bytes())
            .with_context(what)?;
    }
    let out = child.wait_with_output().with_context(what)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
