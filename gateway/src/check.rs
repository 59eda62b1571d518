//! `s2cs check`: probes, on this kernel and with these privileges, every
//! capability the gateway can use, by really doing each thing once (load the
//! programs, relay a byte in the kernel, attach XDP in a private namespace,
//! splice, set the TLS upper-layer protocol) and reports which data paths the
//! gateway would pick. It also times the userspace record layer per suite
//! ([`crate::channel::record_speed`]), the channel's cost without kernel TLS.
//!
//! With [`CheckOptions::xdp_ifaces`] (or `xdp_all_ifaces`), the XDP guard is
//! also attached for an instant to each named interface (native mode first,
//! then generic; its port range unset, so it passes every packet) and the
//! report says which mode that interface offers. Without them no real
//! interface is touched: XDP is only tried in a private namespace.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::channel::record_speed::{self, RecordSpeed};
use crate::ebpf::KernelRelay;
use crate::error_chain::error_chain;
use crate::host_tuning::{self, HostRoot, Tuning};
use crate::privileges::{self, Cap, Privileges};
use crate::relay::DataPath;
use crate::sys::{self, Pipe};
use crate::xdp::{self, AttachMode};

/// What `s2cs check` probes beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Interfaces to try attaching XDP to (native, then generic).
    pub xdp_ifaces: Vec<String>,
    /// Try every interface except `lo`.
    pub xdp_all_ifaces: bool,
}

/// XDP on one interface.
#[derive(Clone, Debug, Serialize)]
pub struct XdpInterface {
    pub iface: String,
    /// The mode that attached (None: neither did).
    pub mode: Option<AttachMode>,
    pub detail: String,
}

/// One probed capability.
#[derive(Clone, Debug, Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub available: bool,
    /// What was observed: how it works, or why it does not.
    pub detail: String,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub root: bool,
    /// The capabilities the gateway uses that this process holds
    /// (effective set), e.g. `["CAP_BPF", "CAP_NET_ADMIN"]`.
    pub privileges: Vec<&'static str>,
    pub capabilities: Vec<Capability>,
    /// XDP per interface (only the interfaces asked for).
    pub xdp_interfaces: Vec<XdpInterface>,
    /// Path for plaintext-to-plaintext relays (LAN legs, plaintext channel).
    pub plaintext_path: DataPath,
    /// How the encrypted gateway-to-gateway channel would be carried.
    pub channel_path: &'static str,
    /// How UDP flows cross between gateways in each secure mode.
    pub udp_path: &'static str,
    /// False when not even the userspace relay works: the gateway cannot run.
    pub can_run: bool,
    /// Host settings for 100 Gbit/s, with fixes (advice: never fails the check).
    pub host_tuning: Vec<Tuning>,
    /// How fast one core seals and opens channel records in userspace, per
    /// suite (what the channel costs where the kernel has no TLS).
    pub record_speed: Vec<RecordSpeed>,
    /// Why a suite's speed could not be measured.
    pub record_speed_errors: Vec<String>,
}

impl Report {
    pub fn capability(&self, name: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.name == name)
    }
}

pub const BPF_LOAD: &str = "BPF program load";
pub const SOCKMAP: &str = "SockHash + sk_skb verdict";
pub const XDP: &str = "XDP attach";
pub const SPLICE: &str = "splice";
pub const KTLS: &str = "kernel TLS";
pub const TCP: &str = "TCP sockets";
pub const UDP_FAST: &str = "UDP kernel path (tc)";

/// Runs every default probe (no real interface is touched).
pub fn run() -> Report {
    run_with(&CheckOptions::default())
}

/// Runs every probe, and the per-interface XDP probes `options` ask for.
pub fn run_with(options: &CheckOptions) -> Report {
    let root = nix::unistd::geteuid().is_root();
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_else(|err| format!("unknown ({err})"));
    let mut capabilities = Vec::new();
    let tcp = probe(TCP, probe_tcp);
    let can_run = tcp.available;
    capabilities.push(tcp);
    let privileges = Privileges::current();
    let ebpf_ok = privileges.missing(&privileges::SOCKMAP).is_empty();
    let xdp_ok = privileges.missing(&privileges::XDP).is_empty();
    let need = |what: &str, caps: &[Cap]| {
        format!(
            "not tried: {what} needs them, and {}",
            privileges.explain_missing(caps)
        )
    };
    let (load, sockmap) = if ebpf_ok {
        match KernelRelay::load() {
            Ok(relay) => (
                Capability {
                    name: BPF_LOAD,
                    available: true,
                    detail: "relay_verdict accepted by the verifier".into(),
                },
                probe(SOCKMAP, || probe_sockmap(Arc::new(relay))),
            ),
            Err(err) => {
                let why = error_chain(&err);
                (
                    Capability {
                        name: BPF_LOAD,
                        available: false,
                        detail: why.clone(),
                    },
                    Capability {
                        name: SOCKMAP,
                        available: false,
                        detail: format!("not tried: {why}"),
                    },
                )
            }
        }
    } else {
        (
            Capability {
                name: BPF_LOAD,
                available: false,
                detail: need("loading eBPF programs", &privileges::SOCKMAP),
            },
            Capability {
                name: SOCKMAP,
                available: false,
                detail: need("the kernel relay", &privileges::SOCKMAP),
            },
        )
    };
    capabilities.push(load);
    capabilities.push(sockmap);
    let xdp_probe_caps = [Cap::Bpf, Cap::NetAdmin, Cap::Perfmon, Cap::SysAdmin];
    capabilities.push(if privileges.missing(&xdp_probe_caps).is_empty() {
        probe(XDP, probe_xdp)
    } else if xdp_ok {
        Capability {
            name: XDP,
            available: false,
            detail: format!(
                "not tried: the probe in a private network namespace needs CAP_SYS_ADMIN, which the \
                 gateway itself never needs; `s2cs check --xdp-iface IFACE` tries the real interface \
                 with {}",
                privileges::XDP.map(Cap::name).join(", ")
            ),
        }
    } else {
        Capability {
            name: XDP,
            available: false,
            detail: need("attaching XDP", &privileges::XDP),
        }
    });
    let splice = probe(SPLICE, probe_splice);
    let splice_ok = splice.available;
    capabilities.push(splice);
    let ktls = probe(KTLS, probe_ktls);
    let ktls_ok = ktls.available;
    capabilities.push(ktls);
    let udp_fast = if xdp_ok {
        probe(UDP_FAST, probe_udp_fast)
    } else {
        Capability {
            name: UDP_FAST,
            available: false,
            detail: need("the kernel UDP path", &privileges::XDP),
        }
    };
    let udp_path = if udp_fast.available {
        "QUIC datagrams (tls); the kernel, after the proof (plaintext-after-auth)"
    } else {
        "QUIC datagrams in every secure mode (no kernel UDP path here)"
    };
    capabilities.push(udp_fast);
    let mut ifaces = options.xdp_ifaces.clone();
    if options.xdp_all_ifaces {
        match nix::net::if_::if_nameindex() {
            Ok(list) => {
                for entry in list.iter() {
                    let name = entry.name().to_string_lossy().into_owned();
                    if name != "lo" && !ifaces.contains(&name) {
                        ifaces.push(name);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "listing interfaces failed"),
        }
    }
    let xdp_interfaces = ifaces
        .into_iter()
        .map(|iface| {
            if xdp_ok {
                probe_xdp_iface(iface)
            } else {
                XdpInterface {
                    iface,
                    mode: None,
                    detail: need("attaching XDP", &privileges::XDP),
                }
            }
        })
        .collect();
    // sockmap is reported but opt-in (see relay::AUTO_REASON).
    let plaintext_path = if splice_ok {
        DataPath::Splice
    } else {
        DataPath::Copy
    };
    let channel_path = if ktls_ok && splice_ok {
        "kernel TLS fed by splice"
    } else {
        "userspace TLS (rustls)"
    };
    let (record_speed, record_speed_errors) = measure_record_speed();
    Report {
        kernel,
        root,
        privileges: privileges.held(),
        capabilities,
        xdp_interfaces,
        plaintext_path,
        channel_path,
        udp_path,
        can_run,
        host_tuning: host_tuning::inspect(&HostRoot::default()),
        record_speed,
        record_speed_errors,
    }
}

/// Plaintext sealed and opened per suite: enough for a stable figure, little
/// enough to keep `s2cs check` quick (tens of milliseconds per suite).
const RECORD_SPEED_BYTES: usize = 64 << 20;

fn measure_record_speed() -> (Vec<RecordSpeed>, Vec<String>) {
    let mut speeds = Vec::new();
    let mut errors = Vec::new();
    for cipher in record_speed::MEASURED {
        match record_speed::measure(cipher, RECORD_SPEED_BYTES) {
            Ok(speed) => speeds.push(speed),
            Err(err) => errors.push(format!("{}: {err}", record_speed::suite_name(cipher))),
        }
    }
    (speeds, errors)
}

/// One core's share per 10 Gbit/s (1.25 GB/s) at `gb_per_s`.
fn cores_per_10_gbit(gb_per_s: f64) -> f64 {
    1.25 / gb_per_s.max(1e-9)
}

/// Prints the report for a person.
pub fn render(report: &Report) -> String {
    let held = if report.privileges.is_empty() {
        "none".to_owned()
    } else {
        report.privileges.join(", ")
    };
    let mut out = format!(
        "s2cs check: kernel {}, {}, capabilities: {held}\n",
        report.kernel,
        if report.root { "root" } else { "not root" }
    );
    for cap in &report.capabilities {
        out.push_str(&format!(
            "  [{}] {:<26} {}\n",
            if cap.available { " ok " } else { "FAIL" },
            cap.name,
            cap.detail
        ));
    }
    for x in &report.xdp_interfaces {
        out.push_str(&format!(
            "  [{}] XDP on {:<19} {}\n",
            if x.mode.is_some() { " ok " } else { "FAIL" },
            x.iface,
            x.detail
        ));
    }
    out.push_str(&format!(
        "data path: plaintext relay = {}; gateway-to-gateway channel = {}\n",
        report.plaintext_path, report.channel_path
    ));
    out.push_str(&format!(
        "           UDP between gateways = {}\n",
        report.udp_path
    ));
    out.push_str(&format!(
        "           --data-path auto is {}: {}\n",
        crate::relay::AUTO_PATH,
        crate::relay::AUTO_REASON
    ));
    if report.capability(SOCKMAP).is_some_and(|c| c.available) {
        out.push_str("           the in-kernel sockmap relay works here (--data-path sockmap)\n");
    }
    out.push_str("userspace TLS record layer on one core (the channel's cost where the kernel has no TLS):\n");
    for speed in &report.record_speed {
        out.push_str(&format!(
            "  {:<32} seals {:.2} GB/s, opens {:.2} GB/s: 10 Gbit/s takes {:.2} of a core to seal \
             and {:.2} to open\n",
            speed.suite,
            speed.seal_gb_per_s,
            speed.open_gb_per_s,
            cores_per_10_gbit(speed.seal_gb_per_s),
            cores_per_10_gbit(speed.open_gb_per_s),
        ));
    }
    for err in &report.record_speed_errors {
        out.push_str(&format!("  not measured: {err}\n"));
    }
    let untuned = report.host_tuning.iter().filter(|t| !t.ok).count();
    out.push_str(&format!(
        "host tuning for 100 Gbit/s: {} of {} settings to change (docs/OPERATIONS.md)\n",
        untuned,
        report.host_tuning.len()
    ));
    for t in &report.host_tuning {
        if t.ok {
            out.push_str(&format!("  [ ok ] {:<32} {}\n", t.setting, t.current));
        } else {
            out.push_str(&format!(
                "  [TUNE] {:<32} {} (want {})\n         fix: {}\n",
                t.setting, t.current, t.wanted, t.fix
            ));
        }
    }
    if !report.can_run {
        out.push_str("the gateway cannot run here: not even a loopback TCP relay works\n");
    }
    out
}

fn probe(name: &'static str, f: impl FnOnce() -> Result<String, String>) -> Capability {
    match f() {
        Ok(detail) => Capability {
            name,
            available: true,
            detail,
        },
        Err(detail) => Capability {
            name,
            available: false,
            detail,
        },
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected loopback pair: (the connecting end, the accepted end).
fn loopback_pair() -> Result<(TcpStream, TcpStream), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let near = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let (far, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    for s in [&near, &far] {
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
    }
    Ok((near, far))
}

fn expect_byte(reader: &mut TcpStream, what: &str) -> Result<(), String> {
    let mut byte = [0u8; 1];
    reader
        .read_exact(&mut byte)
        .map_err(|e| format!("{what}: {e}"))?;
    if byte[0] == 0x5a {
        Ok(())
    } else {
        Err(format!("{what}: got byte {:#x}, expected 0x5a", byte[0]))
    }
}

fn probe_tcp() -> Result<String, String> {
    let (mut near, mut far) = loopback_pair()?;
    near.write_all(&[0x5a]).map_err(|e| e.to_string())?;
    expect_byte(&mut far, "loopback TCP")?;
    Ok("loopback TCP works (the userspace copy path is available)".into())
}

fn probe_sockmap(relay: Arc<KernelRelay>) -> Result<String, String> {
    // client -> (gateway end a) ==kernel==> (gateway end b) -> server
    let (mut client, a) = loopback_pair()?;
    let (b, mut server) = loopback_pair()?;
    let pair = relay
        .arm(a.as_fd(), b.as_fd())
        .map_err(|e| error_chain(&e))?;
    client.write_all(&[0x5a]).map_err(|e| e.to_string())?;
    expect_byte(&mut server, "byte relayed by the verdict program")?;
    let (entry_a, _) = pair.entries();
    if entry_a.redirected_bytes != 1 {
        return Err(format!(
            "the program counted {} redirected bytes, expected 1",
            entry_a.redirected_bytes
        ));
    }
    drop(pair);
    Ok("a byte crossed two loopback sockets inside the kernel".into())
}

fn probe_xdp() -> Result<String, String> {
    // Attach in a private network namespace on a thread of its own, so the
    // host's interfaces are never touched.
    std::thread::spawn(|| -> Result<String, String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let mut ebpf = xdp::load_guard_program().map_err(|e| error_chain(&e))?;
        let index = xdp::if_index("lo").map_err(|e| error_chain(&e))?;
        let (_, mode) =
            xdp::attach_native_or_generic(&mut ebpf, "lo", index).map_err(|e| error_chain(&e))?;
        Ok(format!(
            "xdp_guard accepted by the verifier; {mode} mode attaches on lo in a private namespace \
             (ask for the WAN interface with --xdp-iface)"
        ))
    })
    .join()
    .map_err(|_| "the XDP probe thread panicked".to_string())?
}

/// Loads the UDP fast path and attaches it at tc ingress of `lo` in a
/// private network namespace (so no real interface is touched).
fn probe_udp_fast() -> Result<String, String> {
    std::thread::spawn(|| -> Result<String, String> {
        let fast = crate::udp_fastpath::UdpFastPath::load().map_err(|e| error_chain(&e))?;
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return Ok(
                "udp_fastpath accepted by the verifier (attaching not tried: the private \
                       namespace needs CAP_SYS_ADMIN)"
                    .to_owned(),
            );
        }
        fast.attach("lo").map_err(|e| error_chain(&e))?;
        Ok(
            "udp_fastpath accepted by the verifier and attaches at tc ingress (lo, private \
            namespace): flows of plaintext-after-auth sessions are forwarded by the kernel (IPv4)"
                .to_owned(),
        )
    })
    .join()
    .map_err(|_| "the UDP fast path probe thread panicked".to_string())?
}

/// Attaches the (unconfigured, pass-all) guard to `iface` for an instant.
fn probe_xdp_iface(iface: String) -> XdpInterface {
    let attempt = || -> Result<(AttachMode, String), String> {
        let index = xdp::if_index(&iface).map_err(|e| error_chain(&e))?;
        let mut ebpf = xdp::load_guard_program().map_err(|e| error_chain(&e))?;
        let (_, mode) =
            xdp::attach_native_or_generic(&mut ebpf, &iface, index).map_err(|e| error_chain(&e))?;
        // Dropping the object detaches the program.
        drop(ebpf);
        let detail = match mode {
            AttachMode::Native => "native (driver) XDP: packets are judged before an skb exists".to_owned(),
            AttachMode::Generic => {
                "generic (skb) XDP only: the driver has no native XDP; the guard works, at a higher cost per packet"
                    .to_owned()
            }
        };
        Ok((mode, detail))
    };
    match attempt() {
        Ok((mode, detail)) => XdpInterface {
            iface,
            mode: Some(mode),
            detail,
        },
        Err(detail) => XdpInterface {
            iface,
            mode: None,
            detail,
        },
    }
}

fn probe_splice() -> Result<String, String> {
    let (mut near, far) = loopback_pair()?;
    let (out_near, mut out_far) = loopback_pair()?;
    let pipe = Pipe::new(64 * 1024).map_err(|e| format!("pipe: {e}"))?;
    near.write_all(&[0x5a]).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    loop {
        match sys::splice(far.as_fd(), pipe.write.as_fd(), 1) {
            Ok(1) => break,
            Ok(n) => return Err(format!("splice socket -> pipe moved {n} bytes, expected 1")),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("splice socket -> pipe: {e}")),
        }
    }
    sys::splice(pipe.read.as_fd(), out_near.as_fd(), 1)
        .map_err(|e| format!("splice pipe -> socket: {e}"))?;
    expect_byte(&mut out_far, "byte spliced socket -> pipe -> socket")?;
    Ok("socket -> pipe -> socket works".into())
}

/// The gateway's own kernel-TLS probe (`channel::probe_ktls`): keys set for
/// TX and RX on a loopback pair and a record through it.
fn probe_ktls() -> Result<String, String> {
    let support = crate::channel::probe_ktls();
    if support.available() {
        Ok(support.detail)
    } else {
        Err(support.detail)
    }
}
