//! What is measured: the cases (routed direct, the three s2cs data paths and
//! the peer relays), installing the peers from Debian packages when missing,
//! and starting each relay in the relay namespace with its configuration.
use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::topo::{self, BenchNet, RELAY_ADDR};

/// Debian packages providing the peers, with a file that shows each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "/usr/bin/iperf3"),
    ("haproxy", "/usr/sbin/haproxy"),
    ("socat", "/usr/bin/socat"),
    ("nginx-light", "/usr/sbin/nginx"),
    ("libnginx-mod-stream", NGINX_STREAM_MODULE),
];

/// The dynamic stream module of Debian's nginx.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// How a case moves the bytes between the client and server namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// No relay: the relay namespace routes (forwarding on for this case).
    Direct,
    /// `s2cs relay --path PATH`.
    S2cs(&'static str),
    /// HAProxy in tcp mode, optionally with `option splice-auto`.
    Haproxy { splice: bool },
    /// socat with its default buffer (8 KiB) or `-b SIZE`.
    Socat { buffer: Option<u32> },
    /// nginx's stream proxy.
    Nginx,
}

/// One row group of the results.
#[derive(Clone, Copy, Debug)]
pub(super) struct Case {
    /// Short name (JSON, `--cases`).
    pub(super) name: &'static str,
    /// What the table shows.
    pub(super) label: &'static str,
    pub(super) kind: Kind,
}

/// Every case, in the order they run.
pub(super) const CASES: &[Case] = &[
    Case {
        name: "direct",
        label: "direct (routed, no relay)",
        kind: Kind::Direct,
    },
    Case {
        name: "s2cs-sockmap",
        label: "s2cs sockmap",
        kind: Kind::S2cs("sockmap"),
    },
    Case {
        name: "s2cs-splice",
        label: "s2cs splice",
        kind: Kind::S2cs("splice"),
    },
    Case {
        name: "s2cs-copy",
        label: "s2cs copy",
        kind: Kind::S2cs("copy"),
    },
    Case {
        name: "haproxy",
        label: "HAProxy tcp mode",
        kind: Kind::Haproxy { splice: false },
    },
    Case {
        name: "haproxy-splice",
        label: "HAProxy tcp + splice",
        kind: Kind::Haproxy { splice: true },
    },
    Case {
        name: "socat",
        label: "socat (8 KiB buffer)",
        kind: Kind::Socat { buffer: None },
    },
    Case {
        name: "socat-128k",
        label: "socat -b 131072",
        kind: Kind::Socat {
            buffer: Some(131_072),
        },
    },
    Case {
        name: "nginx",
        label: "nginx stream",
        kind: Kind::Nginx,
    },
];

/// The case HAProxy ratios are taken against.
pub(super) const BASELINE: &str = "haproxy";
/// The routed case.
pub(super) const DIRECT: &str = "direct";

/// Installs the missing peers with apt-get (`apt-get update` first only if
/// the install fails), unless `no_install`.
pub(super) fn ensure_installed(no_install: bool) -> anyhow::Result<()> {
    ensure_packages(PACKAGES, no_install)
}

/// Installs the missing ones of `packages` (package, a file it provides)
/// with apt-get, as [`ensure_installed`] does.
pub(super) fn ensure_packages(packages: &[(&str, &str)], no_install: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if no_install {
        bail!(
            "missing peers: {} (install them: apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("bench: installing {}", missing.join(" "));
    let install =
        || apt_get(&[&["install", "-y", "--no-install-recommends"], &missing[..]].concat());
    if let Err(first) = install() {
        eprintln!("bench: apt-get install failed ({first:#}); running apt-get update and retrying");
        apt_get(&["update"])?;
        install()?;
    }
    for (package, file) in packages {
        if !Path::new(file).exists() {
            bail!("{package} was installed but {file} is still missing");
        }
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running apt-get {} (needs root)", args.join(" ")))?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A relay running in the relay namespace (or, for the direct case, nothing).
/// Dropping it kills everything in the relay namespace.
pub(super) struct RunningRelay<'a> {
    net: &'a BenchNet,
    child: Option<Child>,
    /// Where the client connects.
    pub(super) addr: SocketAddrV4,
    log: PathBuf,
}

impl RunningRelay<'_> {
    /// The last lines of the relay's output, for error messages.
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RunningRelay<'_> {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        // nginx workers and socat children are not our children.
        if let Err(e) = self.net.kill_all(&self.net.relay) {
            eprintln!("bench: stopping the relay: {e:#}");
        }
    }
}

/// Starts `case`'s relay listening on `port` (files in `dir`, the s2cs binary
/// at `s2cs`) and waits until it listens.
pub(super) fn start<'a>(
    net: &'a BenchNet,
    case: &Case,
    port: u16,
    dir: &Path,
    s2cs: &Path,
) -> anyhow::Result<RunningRelay<'a>> {
    let target = topo::server_sockaddr();
    let listen = SocketAddrV4::new(RELAY_ADDR, port);
    let log = dir.join(format!("{}.log", case.name));
    let mut cmd = match case.kind {
        Kind::Direct => {
            return Ok(RunningRelay {
                net,
                child: None,
                addr: target,
                log,
            });
        }
        Kind::S2cs(path) => {
            let mut cmd = net.command(&net.relay, &s2cs.to_string_lossy());
            cmd.args(["relay", "--listen", &listen.to_string()])
                .args(["--target", &target.to_string(), "--path", path])
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1");
            cmd
        }
        Kind::Haproxy { splice } => {
            let config = dir.join(format!("{}.cfg", case.name));
            write(&config, &haproxy_config(listen, target, splice))?;
            let mut cmd = net.command(&net.relay, "haproxy");
            cmd.arg("-db").arg("-f").arg(&config);
            cmd
        }
        Kind::Socat { buffer } => {
            let mut cmd = net.command(&net.relay, "socat");
            if let Some(size) = buffer {
                cmd.args(["-b", &size.to_string()]);
            }
            cmd.arg(format!(
                "TCP4-LISTEN:{port},bind={RELAY_ADDR},reuseaddr,fork,backlog=128"
            ))
            .arg(format!("TCP4:{target}"));
            cmd
        }
        Kind::Nginx => {
            let prefix = dir.join("nginx");
            std::fs::create_dir_all(&prefix)
                .with_context(|| format!("creating {}", prefix.display()))?;
            let config = prefix.join("nginx.conf");
            write(&config, &nginx_config(listen, target, &prefix))?;
            let mut cmd = net.command(&net.relay, "nginx");
            cmd.arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(prefix.join("error.log"));
            cmd
        }
    };
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("duplicating {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} in {}", case.label, net.relay))?;
    let mut relay = RunningRelay {
        net,
        child: Some(child),
        addr: listen,
        log,
    };
    wait_listening(&mut relay, port).with_context(|| {
        format!(
            "{} did not start; its output:\n{}",
            case.label,
            relay.log_tail()
        )
    })?;
    Ok(relay)
}

/// Polls the relay namespace's TCP table (no probe connection: it would make
/// the relay dial the server) until something listens on `port`.
fn wait_listening(relay: &mut RunningRelay<'_>, port: u16) -> anyhow::Result<()> {
    let pid = relay.child.as_ref().map(Child::id).context("no process")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(child) = &mut relay.child
            && let Some(status) = child.try_wait().context("checking the relay")?
        {
            bail!("exited at start ({status})");
        }
        if listening(pid, port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not listening on port {port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the namespace of `pid` has a TCP socket listening on `port`.
pub(super) fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|file| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                local_port == Some(port) && fields.get(3) == Some(&"0A")
            })
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// HAProxy 2.6 in tcp mode with its defaults (one thread per CPU), as the
/// baselines measured it.
fn haproxy_config(listen: SocketAddrV4, target: SocketAddrV4, splice: bool) -> String {
    let splice = if splice {
        "    option splice-auto\n"
    } else {
        ""
    };
    format!(
        "global\n    maxconn 1024\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         frontend bench\n    bind {listen}\n    default_backend server\n\n\
         backend server\n{splice}    server iperf {target}\n"
    )
}

/// nginx's stream proxy, in the foreground, every path under `prefix`.
fn nginx_config(listen: SocketAddrV4, target: SocketAddrV4, prefix: &Path) -> String {
    let prefix = prefix.display();
    format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         daemon off;\nworker_processes auto;\npid {prefix}/nginx.pid;\n\
         error_log {prefix}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         stream {{\n    server {{\n        listen {listen};\n        proxy_pass {target};\n    }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_include_the_baselines() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        assert!(names.contains(&BASELINE) && names.contains(&DIRECT));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }

    #[test]
    fn configs_name_both_ends() {
        let listen = SocketAddrV4::new(RELAY_ADDR, 7000);
        let target = topo::server_sockaddr();
        let h = haproxy_config(listen, target, true);
        assert!(h.contains("bind 10.201.1.1:7000") && h.contains("server iperf 10.201.2.2:5201"));
        assert!(h.contains("splice-auto"));
        let n = nginx_config(listen, target, Path::new("/tmp/x"));
        assert!(n.contains("listen 10.201.1.1:7000;") && n.contains("proxy_pass 10.201.2.2:5201;"));
    }
}
