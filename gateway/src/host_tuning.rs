//! Host tuning for 100 Gbit/s streams, as `s2cs check` reports it: each
//! setting the gateway's throughput depends on (socket buffer limits,
//! congestion control and fq pacing, MTU, CPU frequency, IRQ placement),
//! what this host has, what a 100 Gbit/s data transfer node wants, and the
//! command that fixes it. Read-only: nothing is changed.
//!
//! The values follow ESnet's host tuning for 100G data transfer nodes
//! (fasterdata.es.net): large buffer limits so one stream's window can
//! cover a long, fast path (100 Gbit/s x 100 ms = 1.25 GB), BBR (or H-TCP)
//! with the fq qdisc for pacing, MTU 9000 end to end, the performance CPU
//! governor, and the NIC's interrupts pinned rather than moved around by
//! irqbalance. docs/OPERATIONS.md explains each and how to make it last.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One setting of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tuning {
    /// What it is, e.g. `net.core.rmem_max` or `mtu of eth1`.
    pub setting: String,
    /// What this host has ("unknown" when it cannot be read).
    pub current: String,
    /// What a 100 Gbit/s node wants.
    pub wanted: String,
    /// Whether the current value is good enough.
    pub ok: bool,
    /// The command that fixes it (empty when ok).
    pub fix: String,
}

/// Largest socket buffer limit wanted (bytes): ESnet's value for 100G.
const BUFFER_MAX: u64 = 2_147_483_647;
/// Smallest limit accepted as tuned: enough for 100 Gbit/s x 40 ms.
const BUFFER_ENOUGH: u64 = 512 << 20;
/// The MTU wanted on data interfaces.
const JUMBO_MTU: u64 = 9000;

/// Where the host's settings are read from (`/` on a real host; a fake
/// tree in tests).
#[derive(Clone, Debug)]
pub struct HostRoot(PathBuf);

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot(PathBuf::from("/"))
    }
}

impl HostRoot {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        HostRoot(root.into())
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(path.trim_start_matches('/')))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn sysctl(&self, name: &str) -> Option<String> {
        self.read(&format!("proc/sys/{}", name.replace('.', "/")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    fn path(&self, path: &str) -> PathBuf {
        self.0.join(path.trim_start_matches('/'))
    }
}

fn unknown() -> String {
    "unknown".to_owned()
}

fn sysctl_fix(name: &str, value: &str) -> String {
    if value.contains(' ') {
        format!("sysctl -w {name}=\"{value}\"")
    } else {
        format!("sysctl -w {name}={value}")
    }
}

fn entry(setting: &str, current: Option<String>, wanted: &str, ok: bool, fix: String) -> Tuning {
    Tuning {
        setting: setting.to_owned(),
        current: current.unwrap_or_else(unknown),
        wanted: wanted.to_owned(),
        ok,
        fix: if ok { String::new() } else { fix },
    }
}

/// A single-number limit that wants at least [`BUFFER_ENOUGH`].
fn buffer_limit(host: &HostRoot, name: &str) -> Tuning {
    let current = host.sysctl(name);
    let value = current.as_deref().and_then(|v| v.parse::<u64>().ok());
    entry(
        name,
        current,
        &format!(">= {BUFFER_ENOUGH} (ESnet: {BUFFER_MAX})"),
        value.is_some_and(|v| v >= BUFFER_ENOUGH),
        sysctl_fix(name, &BUFFER_MAX.to_string()),
    )
}

/// `tcp_rmem`/`tcp_wmem`: "min default max"; the max is what matters.
fn tcp_buffers(host: &HostRoot, name: &str, default: u64) -> Tuning {
    let current = host.sysctl(name);
    let max = current
        .as_deref()
        .and_then(|v| v.split_whitespace().nth(2))
        .and_then(|v| v.parse::<u64>().ok());
    entry(
        name,
        current,
        &format!("max >= {BUFFER_ENOUGH}"),
        max.is_some_and(|v| v >= BUFFER_ENOUGH),
        sysctl_fix(name, &format!("4096 {default} {BUFFER_MAX}")),
    )
}

fn congestion_control(host: &HostRoot) -> Tuning {
    let name = "net.ipv4.tcp_congestion_control";
    let current = host.sysctl(name);
    let ok = matches!(current.as_deref(), Some("bbr" | "htcp"));
    let fix = format!("modprobe tcp_bbr && {}", sysctl_fix(name, "bbr"));
    entry(name, current, "bbr (or htcp)", ok, fix)
}

fn default_qdisc(host: &HostRoot) -> Tuning {
    let name = "net.core.default_qdisc";
    let current = host.sysctl(name);
    let ok = current.as_deref() == Some("fq");
    entry(
        name,
        current,
        "fq (pacing, and the per-session rate caps)",
        ok,
        format!(
            "{} (new interfaces; `tc qdisc replace dev IFACE root fq` for existing ones)",
            sysctl_fix(name, "fq")
        ),
    )
}

fn mtu_probing(host: &HostRoot) -> Tuning {
    let name = "net.ipv4.tcp_mtu_probing";
    let current = host.sysctl(name);
    let ok = matches!(current.as_deref(), Some("1" | "2"));
    entry(
        name,
        current,
        "1 (find the path MTU with jumbo frames)",
        ok,
        sysctl_fix(name, "1"),
    )
}

fn netdev_backlog(host: &HostRoot) -> Tuning {
    let name = "net.core.netdev_max_backlog";
    let current = host.sysctl(name);
    let ok = current
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|v| v >= 250_000);
    entry(name, current, ">= 250000", ok, sysctl_fix(name, "250000"))
}

/// MTU of each interface that is up, except loopback (all are reported:
/// the operator knows which of them carry data).
fn mtus(host: &HostRoot) -> Vec<Tuning> {
    let mut names: Vec<String> = std::fs::read_dir(host.path("sys/class/net"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|n| {
            host.read(&format!("sys/class/net/{n}/operstate"))
                .as_deref()
                == Some("up")
        })
        .map(|n| {
            let current = host.read(&format!("sys/class/net/{n}/mtu"));
            let ok = current
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v >= JUMBO_MTU);
            entry(
                &format!("mtu of {n}"),
                current,
                "9000 on data interfaces (and on every hop of the path)",
                ok,
                format!("ip link set dev {n} mtu {JUMBO_MTU}"),
            )
        })
        .collect()
}

fn cpu_governor(host: &HostRoot) -> Option<Tuning> {
    // Virtual machines and some kernels expose no cpufreq: nothing to tune.
    let current = host.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")?;
    let ok = current == "performance";
    Some(entry(
        "CPU frequency governor",
        Some(current),
        "performance",
        ok,
        "cpupower frequency-set -g performance".to_owned(),
    ))
}

/// irqbalance moves the NIC's interrupts between CPUs; for 100 Gbit/s they
/// are pinned to the cores of the NIC's NUMA node instead.
fn irq_placement(host: &HostRoot) -> Tuning {
    let running = irqbalance_running(&host.path("proc"));
    entry(
        "NIC interrupt placement",
        Some(if running {
            "irqbalance running".to_owned()
        } else {
            "irqbalance not running".to_owned()
        }),
        "interrupts pinned to the NIC's NUMA node",
        !running,
        "systemctl disable --now irqbalance; then pin the NIC's IRQs to its NUMA node's cores \
         (e.g. the NIC vendor's set_irq_affinity script)"
            .to_owned(),
    )
}

fn irqbalance_running(proc: &Path) -> bool {
    std::fs::read_dir(proc)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .any(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "irqbalance")
                })
        })
        .unwrap_or(false)
}

/// Every setting, in the order docs/OPERATIONS.md explains them.
pub fn inspect(host: &HostRoot) -> Vec<Tuning> {
    let mut out = vec![
        buffer_limit(host, "net.core.rmem_max"),
        buffer_limit(host, "net.core.wmem_max"),
        tcp_buffers(host, "net.ipv4.tcp_rmem", 87380),
        tcp_buffers(host, "net.ipv4.tcp_wmem", 65536),
        congestion_control(host),
        default_qdisc(host),
        mtu_probing(host),
        netdev_backlog(host),
    ];
    out.extend(mtus(host));
    out.extend(cpu_governor(host));
    out.push(irq_placement(host));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    /// The sysctls `inspect` reads, in its order, set to `values`.
    fn sysctls(root: &Path, values: [&str; 8]) {
        let names = [
            "net/core/rmem_max",
            "net/core/wmem_max",
            "net/ipv4/tcp_rmem",
            "net/ipv4/tcp_wmem",
            "net/ipv4/tcp_congestion_control",
            "net/core/default_qdisc",
            "net/ipv4/tcp_mtu_probing",
            "net/core/netdev_max_backlog",
        ];
        for (name, value) in names.iter().zip(values) {
            write(root, &format!("proc/sys/{name}"), &format!("{value}\n"));
        }
    }

    /// A host as Debian installs it: every setting wants tuning, and each
    /// one says how.
    #[test]
    fn an_untuned_host_gets_a_fix_for_each_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        sysctls(
            root,
            [
                "212992",
                "212992",
                "4096\t131072\t6291456",
                "4096\t16384\t4194304",
                "cubic",
                "fq_codel",
                "0",
                "1000",
            ],
        );
        write(root, "sys/class/net/eth1/operstate", "up\n");
        write(root, "sys/class/net/eth1/mtu", "1500\n");
        write(root, "sys/class/net/eth2/operstate", "down\n");
        write(root, "sys/class/net/eth2/mtu", "1500\n");
        write(root, "sys/class/net/lo/operstate", "unknown\n");
        write(
            root,
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "powersave\n",
        );
        write(root, "proc/812/comm", "irqbalance\n");
        let report = inspect(&HostRoot::at(root));
        assert!(report.iter().all(|t| !t.ok), "{report:#?}");
        assert!(report.iter().all(|t| !t.fix.is_empty()), "{report:#?}");
        let find = |name: &str| {
            report
                .iter()
                .find(|t| t.setting == name)
                .unwrap_or_else(|| panic!("{name} missing: {report:#?}"))
        };
        assert_eq!(find("net.ipv4.tcp_rmem").current, "4096 131072 6291456");
        assert_eq!(
            find("net.ipv4.tcp_rmem").fix,
            "sysctl -w net.ipv4.tcp_rmem=\"4096 87380 2147483647\""
        );
        assert_eq!(
            find("net.core.rmem_max").fix,
            "sysctl -w net.core.rmem_max=2147483647"
        );
        assert!(
            find("net.ipv4.tcp_congestion_control")
                .fix
                .contains("tcp_bbr")
        );
        assert_eq!(find("mtu of eth1").fix, "ip link set dev eth1 mtu 9000");
        assert!(
            report
                .iter()
                .all(|t| t.setting != "mtu of eth2" && t.setting != "mtu of lo")
        );
        assert_eq!(
            find("NIC interrupt placement").current,
            "irqbalance running"
        );
    }

    #[test]
    fn a_tuned_host_passes_and_missing_files_read_as_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        sysctls(
            root,
            [
                "2147483647",
                "2147483647",
                "4096 87380 2147483647",
                "4096 65536 2147483647",
                "bbr",
                "fq",
                "1",
                "250000",
            ],
        );
        write(root, "sys/class/net/eth1/operstate", "up\n");
        write(root, "sys/class/net/eth1/mtu", "9000\n");
        let report = inspect(&HostRoot::at(root));
        assert!(
            report.iter().all(|t| t.ok && t.fix.is_empty()),
            "{report:#?}"
        );
        // No cpufreq (a VM): no governor line.
        assert!(report.iter().all(|t| t.setting != "CPU frequency governor"));
        let empty = tempfile::tempdir().expect("tempdir");
        let report = inspect(&HostRoot::at(empty.path()));
        let rmem = &report[0];
        assert_eq!((rmem.current.as_str(), rmem.ok), ("unknown", false));
    }

    /// This machine's own settings read without error (whatever they are).
    #[test]
    fn this_host_reads() {
        let report = inspect(&HostRoot::default());
        let rmem = &report[0];
        assert_eq!(rmem.setting, "net.core.rmem_max");
        assert!(rmem.current.parse::<u64>().is_ok(), "{rmem:?}");
    }
}
