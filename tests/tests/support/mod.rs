//! Shared by the XDP and metrics suites: two `s2cs serve` processes (PROD in
//! gwa, CONS in gwb) with extra flags, `s2uc connect` / `release` from gwb, a
//! producer in prod, a consumer in cons, and a tiny Prometheus scraper.
//!
//! The gateways and `s2uc` come from the harness (`e2e::gateway`,
//! `e2e::daemon`): the binaries are `target/<profile>/{s2cs,s2uc}` next to
//! the test executable (or `$S2CS_BIN`, `$S2UC_BIN`), built first with
//! `cargo build -p gateway -p control`; each gateway's output is printed
//! when a test fails. Every wait is bounded.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use e2e::gateway::{CONTROL_PORT, PORT_RANGE};
use e2e::stream::{self, StreamSpec};
use e2e::{Connected, Deadline, Gateway, GatewaySpec, Link, Node, S2uc, Topology, eventually};

/// First port ProdApp listens on.
pub const PRODUCER_PORT: u16 = 7000;
/// Where a gateway serves metrics inside its namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9100";

pub const SECS_30: Duration = Duration::from_secs(30);

/// Where gateways and s2uc keep their files.
fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// A topology with a PROD gateway in gwa (listeners on the WAN) and a CONS
/// gateway in gwb (listeners on LAN B). Fields drop in order.
pub struct Setup {
    pub gwa: Gateway,
    pub gwb: Gateway,
    s2uc: S2uc,
    pub topo: Topology,
}

impl Setup {
    pub fn new(attacker: bool, gwa_extra: &[&str], gwb_extra: &[&str]) -> Setup {
        let topo = Topology::builder()
            .attacker(attacker)
            .build()
            .unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"));
        let extra = |flags: &[&str]| flags.iter().map(|f| (*f).to_owned()).collect();
        Setup::start(topo, extra(gwa_extra), extra(gwb_extra))
    }

    /// Starts the two gateways in `topo` with the extra flags.
    pub fn start(topo: Topology, gwa_extra: Vec<String>, gwb_extra: Vec<String>) -> Setup {
        Setup::start_with_ports(topo, PORT_RANGE, gwa_extra, gwb_extra)
    }

    /// Like [`Setup::start`], both gateways leasing listener ports from
    /// `ports` (the CONS gateway may dial the PROD gateway's in that range).
    pub fn start_with_ports(
        topo: Topology,
        ports: &str,
        gwa_extra: Vec<String>,
        gwb_extra: Vec<String>,
    ) -> Setup {
        Setup::start_inner(topo, ports, None, gwa_extra, gwb_extra)
    }

    /// Like [`Setup::start`], both gateways logging at `log` (`RUST_LOG`).
    pub fn start_logging(
        topo: Topology,
        log: &str,
        gwa_extra: Vec<String>,
        gwb_extra: Vec<String>,
    ) -> Setup {
        Setup::start_inner(topo, PORT_RANGE, Some(log), gwa_extra, gwb_extra)
    }

    fn start_inner(
        topo: Topology,
        ports: &str,
        log: Option<&str>,
        mut gwa_extra: Vec<String>,
        mut gwb_extra: Vec<String>,
    ) -> Setup {
        if ports != PORT_RANGE {
            for extra in [&mut gwa_extra, &mut gwb_extra] {
                extra.extend(["--port-range".to_owned(), ports.to_owned()]);
            }
        }
        let wan_ip = topo.addr(Node::Gwa, Link::Wan);
        let gwa = Gateway::start(
            &topo,
            GatewaySpec {
                node: Node::Gwa,
                control: SocketAddr::new(wan_ip, CONTROL_PORT),
                listener_ip: wan_ip,
                allow: format!("{}/24", Link::LanA.subnet_v4()),
                extra: gwa_extra,
                log: log.map(str::to_owned),
            },
            tmp(),
        )
        .unwrap_or_else(|e| panic!("starting the PROD gateway: {e:#}"));
        let lanb_ip = topo.addr(Node::Gwb, Link::LanB);
        let gwb = Gateway::start(
            &topo,
            GatewaySpec {
                node: Node::Gwb,
                control: SocketAddr::new(lanb_ip, CONTROL_PORT),
                listener_ip: lanb_ip,
                allow: format!("{}/24:{ports}", Link::Wan.subnet_v4()),
                extra: gwb_extra,
                log: log.map(str::to_owned),
            },
            tmp(),
        )
        .unwrap_or_else(|e| panic!("starting the CONS gateway: {e:#}"));
        let s2uc = S2uc::new(tmp(), &format!("{}-home", topo.id()))
            .unwrap_or_else(|e| panic!("a HOME for s2uc: {e:#}"));
        Setup {
            gwa,
            gwb,
            s2uc,
            topo,
        }
    }

    /// `s2uc connect` from gwb for the producer listeners.
    pub fn connect(&self, producer: &[SocketAddr], rate_mbps: u32) -> Connected {
        self.s2uc
            .connect(
                &self.topo,
                Node::Gwb,
                (&self.gwa, &self.gwb),
                producer,
                rate_mbps,
            )
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `s2uc connect` from gwb as SciStream's own client does it: no
    /// data-channel secret (the gateways derive one from the uid).
    pub fn connect_as_old_client(&self, producer: &[SocketAddr]) -> Connected {
        self.s2uc
            .connect_with(
                &self.topo,
                Node::Gwb,
                (&self.gwa, &self.gwb),
                producer,
                0,
                &["--as-old-client"],
            )
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `s2uc connect` from gwb, returning its failure instead of panicking.
    pub fn try_connect(
        &self,
        producer: &[SocketAddr],
        rate_mbps: u32,
    ) -> anyhow::Result<Connected> {
        self.s2uc.connect(
            &self.topo,
            Node::Gwb,
            (&self.gwa, &self.gwb),
            producer,
            rate_mbps,
        )
    }

    /// What `s2uc ARGS --s2cs GATEWAY --server-cert CERT [UID]` prints (run
    /// from gwb, whatever its exit status): `command` is "status" or "list".
    pub fn ask(&self, node: Node, command: &str, uid: Option<&str>) -> String {
        let gateway = self.gateway(node);
        let (s2cs, cert) = (
            gateway.control.to_string(),
            gateway.cert.display().to_string(),
        );
        let mut args = vec![command, "--s2cs", &s2cs, "--server-cert", &cert];
        args.extend(uid);
        let out = self
            .s2uc
            .output(&self.topo, Node::Gwb, &args, SECS_30)
            .unwrap_or_else(|e| panic!("{e:#}"));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The gateway in `node`, to stop, kill or restart it.
    pub fn gateway_mut(&mut self, node: Node) -> &mut Gateway {
        if node == Node::Gwa {
            &mut self.gwa
        } else {
            &mut self.gwb
        }
    }

    /// Starts the stopped (or killed) gateway in `node` again on its state
    /// directory and waits until it serves.
    pub fn restart(&mut self, node: Node) {
        let gateway = if node == Node::Gwa {
            &mut self.gwa
        } else {
            &mut self.gwb
        };
        gateway
            .restart(&self.topo)
            .unwrap_or_else(|e| panic!("restarting the gateway in {node}: {e:#}"));
    }

    /// `s2uc release UID` against `gateway`, from gwb.
    pub fn release(&self, gateway: &Gateway, uid: &str) {
        self.s2uc
            .release(&self.topo, Node::Gwb, gateway, uid)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The gateway in `node` (gwa or gwb).
    pub fn gateway(&self, node: Node) -> &Gateway {
        if node == Node::Gwa {
            &self.gwa
        } else {
            &self.gwb
        }
    }

    /// The value of `name{labels}` in the metrics of the gateway in `node`.
    pub fn metric(&self, node: Node, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.scrape(node), name, labels)
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

/// Accepts one connection on `listener` (made non-blocking), polling so the
/// deadline holds; returns it blocking.
pub fn accept(listener: &TcpListener, deadline: Deadline) -> TcpStream {
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
pub fn scrape_local() -> Result<String, String> {
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
