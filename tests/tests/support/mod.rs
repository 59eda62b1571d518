//! Shared by the XDP and metrics suites: two `s2cs serve` processes (PROD in
//! gwa, CONS in gwb) with extra flags, `s2uc connect` / `release` from gwb, a
//! producer in prod, a consumer in cons, and a tiny Prometheus scraper.
//!
//! The binaries are `target/<profile>/{s2cs,s2uc}` next to the test
//! executable (or `$S2CS_BIN`, `$S2UC_BIN`): build them first with
//! `cargo build -p gateway -p control`. Each gateway's stdout and log are
//! printed when a test fails. Every wait is bounded.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use e2e::stream::{self, StreamSpec};
use e2e::{Deadline, Link, Node, NsChild, Topology, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Control port of both gateways.
pub const CONTROL_PORT: u16 = 5000;
/// Session listener ports of both gateways.
pub const PORT_RANGE: &str = "5100-5199";
/// First port ProdApp listens on.
pub const PRODUCER_PORT: u16 = 7000;
/// Where a gateway serves metrics inside its namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9100";

pub const SECS_30: Duration = Duration::from_secs(30);

fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no target/<profile> directory", exe.display()));
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p gateway -p control`, or point {env} at one",
        bin.display()
    );
    bin
}

/// One `s2cs serve` process. Prints its output if the test fails.
pub struct Gateway {
    pub node: Node,
    child: NsChild,
    dir: tempfile::TempDir,
    pub control: SocketAddr,
    pub cert: PathBuf,
    args: Vec<String>,
}

impl Gateway {
    /// Starts `s2cs serve` in `node` with the usual flags plus `extra`.
    pub fn start(
        topo: &Topology,
        node: Node,
        control: SocketAddr,
        listener_ip: IpAddr,
        allow: &str,
        extra: &[&str],
    ) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-{node}-", topo.id()))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating the gateway's state directory");
        let ip = listener_ip.to_string();
        let state = dir.path().join("state").display().to_string();
        let control_s = control.to_string();
        let mut args: Vec<String> = [
            "serve",
            "--control-listen",
            &control_s,
            "--port-range",
            PORT_RANGE,
            "--listener-ip",
            &ip,
            "--advertise-ip",
            &ip,
            "--no-auth",
            "--allow",
            allow,
            "--state-dir",
            &state,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let stdout = File::create(dir.path().join("stdout")).expect("creating the stdout file");
        let stderr = File::create(dir.path().join("stderr")).expect("creating the log file");
        let mut cmd = Command::new(binary("s2cs", "S2CS_BIN"));
        cmd.args(&args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = topo
            .spawn(node, cmd)
            .unwrap_or_else(|e| panic!("starting s2cs in {node}: {e:#}"));
        let mut gw = Gateway {
            node,
            child,
            cert: dir.path().join("state/tls/control-cert.pem"),
            dir,
            control,
            args,
        };
        let extra_lines: Vec<&str> = extra
            .iter()
            .filter_map(|flag| match *flag {
                "--xdp-iface" => Some("XDP guard on"),
                "--metrics-listen" => Some("metrics on"),
                _ => None,
            })
            .collect();
        let result = eventually(SECS_30, || {
            if let Some(status) = gw.child.try_wait().expect("polling s2cs") {
                panic!("s2cs in {node} exited early ({status})");
            }
            let out = gw.stdout();
            if out.contains("SHA-256 fingerprint") && extra_lines.iter().all(|l| out.contains(l)) {
                Ok(())
            } else {
                Err("not ready yet")
            }
        });
        if let Err(e) = result {
            panic!("s2cs in {node} did not get ready: {e:#}");
        }
        gw
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        kill(pid, Signal::SIGTERM).expect("sending SIGTERM to s2cs");
        let status = self
            .child
            .wait_deadline(SECS_30)
            .unwrap_or_else(|e| panic!("s2cs in {} after SIGTERM: {e:#}", self.node));
        assert!(
            status.success(),
            "s2cs in {} exited with {status}",
            self.node
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (s2cs {}) stdout ----\n{}---- {} log ----\n{}",
                self.node,
                self.args.join(" "),
                self.stdout(),
                self.node,
                self.log()
            );
        }
    }
}

/// A topology with a PROD gateway in gwa (listeners on the WAN) and a CONS
/// gateway in gwb (listeners on LAN B). Fields drop in order.
pub struct Setup {
    pub gwa: Gateway,
    pub gwb: Gateway,
    home: tempfile::TempDir,
    pub topo: Topology,
}

impl Setup {
    pub fn new(attacker: bool, gwa_extra: &[&str], gwb_extra: &[&str]) -> Setup {
        let topo = Topology::builder()
            .attacker(attacker)
            .build()
            .unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"));
        let wan_ip = topo.addr(Node::Gwa, Link::Wan);
        let gwa = Gateway::start(
            &topo,
            Node::Gwa,
            SocketAddr::new(wan_ip, CONTROL_PORT),
            wan_ip,
            &format!("{}/24", Link::LanA.subnet_v4()),
            gwa_extra,
        );
        let lanb_ip = topo.addr(Node::Gwb, Link::LanB);
        let gwb = Gateway::start(
            &topo,
            Node::Gwb,
            SocketAddr::new(lanb_ip, CONTROL_PORT),
            lanb_ip,
            &format!("{}/24:{PORT_RANGE}", Link::Wan.subnet_v4()),
            gwb_extra,
        );
        let home = tempfile::Builder::new()
            .prefix(&format!("{}-home-", topo.id()))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating a HOME for s2uc");
        Setup {
            gwa,
            gwb,
            home,
            topo,
        }
    }

    fn s2uc_ok(&self, node: Node, args: &[&str]) -> String {
        let mut cmd = Command::new(binary("s2uc", "S2UC_BIN"));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env_remove("S2UC_TOKEN");
        let out: Output = self
            .topo
            .output(node, cmd, SECS_30)
            .unwrap_or_else(|e| panic!("running s2uc {args:?} in {node}: {e:#}"));
        assert!(
            out.status.success(),
            "s2uc {} in {node} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `s2uc connect` from gwb for the producer listeners.
    pub fn connect(&self, producer: &[SocketAddr], rate_mbps: u32) -> Connected {
        let producer: Vec<String> = producer.iter().map(ToString::to_string).collect();
        let (prod_s2cs, cons_s2cs) = (self.gwa.control.to_string(), self.gwb.control.to_string());
        let (prod_cert, cons_cert) = (
            self.gwa.cert.display().to_string(),
            self.gwb.cert.display().to_string(),
        );
        let (num_conn, rate) = (producer.len().to_string(), rate_mbps.to_string());
        let producer = producer.join(",");
        let out = self.s2uc_ok(
            Node::Gwb,
            &[
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
            ],
        );
        Connected::parse(&out)
    }

    /// `s2uc release UID` against `gateway`, from gwb.
    pub fn release(&self, gateway: &Gateway, uid: &str) {
        let s2cs = gateway.control.to_string();
        let cert = gateway.cert.display().to_string();
        let out = self.s2uc_ok(
            Node::Gwb,
            &["release", "--s2cs", &s2cs, "--server-cert", &cert, uid],
        );
        assert!(out.contains("Release completed"), "release said: {out}");
    }

    /// The metrics text of the gateway in `node` (served on METRICS_ADDR
    /// inside its namespace).
    pub fn scrape(&self, node: Node) -> String {
        self.topo
            .run_in(node, scrape_local)
            .expect("entering the namespace")
            .unwrap_or_else(|e| panic!("scraping the metrics of {node}: {e}"))
    }
}

/// What `s2uc connect` printed.
#[derive(Debug)]
pub struct Connected {
    pub uid: String,
    pub prod_listeners: Vec<SocketAddr>,
    pub cons_listeners: Vec<SocketAddr>,
}

impl Connected {
    fn parse(out: &str) -> Connected {
        let field = |name: &str| -> &str {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("s2uc connect printed no {name:?} line:\n{out}"))
                .trim()
        };
        let addrs = |name: &str| -> Vec<SocketAddr> {
            field(name)
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("{name} {a:?} in s2uc output: {e}"))
                })
                .collect()
        };
        Connected {
            uid: field("uid:").to_owned(),
            prod_listeners: addrs("prod gateway listeners:"),
            cons_listeners: addrs("consumer connects to:"),
        }
    }
}

/// ProdApp: one listener in prod sending `spec` to the first connection.
pub fn start_producer(topo: &Topology, spec: StreamSpec) -> (SocketAddr, JoinHandle<()>) {
    let addr = topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let listener = topo
        .tcp_listen(Node::Prod, addr)
        .unwrap_or_else(|e| panic!("producer listener: {e:#}"));
    let thread = std::thread::spawn(move || {
        let conn = accept(&listener, Deadline::after(Duration::from_secs(60)));
        stream::send_tcp(&conn, spec, Deadline::after(Duration::from_secs(120)))
            .unwrap_or_else(|e| panic!("producer {addr} sending: {e}"));
    });
    (addr, thread)
}

fn accept(listener: &TcpListener, deadline: Deadline) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let conn = eventually(deadline, || listener.accept().map(|(c, _)| c))
        .unwrap_or_else(|e| panic!("nobody connected to the producer: {e:#}"));
    conn.set_nonblocking(false).expect("blocking connection");
    conn
}

/// ConsApp: connects from cons to `addr` and verifies `spec` on a thread.
pub fn start_consumer(topo: &Topology, addr: SocketAddr, spec: StreamSpec) -> JoinHandle<()> {
    let conn = topo
        .tcp_connect(Node::Cons, addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("consumer connecting to {addr}: {e:#}"));
    std::thread::spawn(move || {
        let report = stream::verify_tcp(&conn, spec, Deadline::after(Duration::from_secs(120)))
            .unwrap_or_else(|e| panic!("consumer stream from {addr}: {e}"));
        assert_eq!(
            report.sha256,
            spec.sha256(),
            "digest of the stream from {addr}"
        );
    })
}

pub fn join<T>(handle: JoinHandle<T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// GET /metrics from METRICS_ADDR in the calling thread's namespace.
fn scrape_local() -> Result<String, String> {
    let addr: SocketAddr = METRICS_ADDR.parse().map_err(|e| format!("{e}"))?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: s2cs\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| format!("reading the response: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {head}"));
    }
    Ok(body.to_owned())
}

/// The value of the sample `name{...}` whose labels include every pair of
/// `labels` (None if there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            if all { value.parse().ok() } else { None }
        })
}
