//! The package's install test, as an operator would meet it: a fresh Debian
//! root (debootstrap from Debian's archive, the suite this host runs, with
//! systemd and man-db), `dpkg -i` of the .deb inside it, then, in that root:
//!
//! - the system user, the files and their modes, the man pages (through
//!   `man -w`), the completions;
//! - `systemd-analyze verify` of the unit and its exposure score
//!   (`systemd-analyze security --offline`); no systemd runs here (this is a
//!   chroot in a container), so the unit's sandbox directives are checked,
//!   not executed;
//! - the shipped configuration refused by the unit's `ExecStartPre` check
//!   until tokens exist, with the reason named;
//! - `s2cs check` as the `scistream` user with exactly the unit's
//!   capabilities (read from its `AmbientCapabilities=` line, applied with
//!   setpriv, no new privileges): the eBPF paths load; with none, the
//!   missing capabilities are named, and `serve` names them too;
//! - a session: both gateways run from the installed package as the service
//!   user with the unit's capabilities, in the demo's four namespaces, with
//!   the sockmap relay, the plaintext-after-auth channel and the XDP guard
//!   (the three capabilities each used), set up by the installed `s2uc`; a
//!   producer's frames reach the consumer verified; SIGTERM drains both.
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::cmd;
use crate::demo::netns::{Topology, cleanup_with};

const PREFIX: &str = "s2pkg-";
const UNIT: &str = "/lib/systemd/system/s2cs.service";
const PRODUCER: &str = "10.1.0.2:7000";
const FRAMES: u64 = 96;
const FRAME_SIZE: usize = 1 << 20;

/// Runs the whole test against `deb`.
pub fn run(root: &Path, deb: &Path) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the install test builds a Debian root and namespaces: run it as root");
    }
    let started = Instant::now();
    let chroot = DebianRoot::create(&root.join("target/package/debian-root"))?;
    chroot.install(deb)?;
    check_files(&chroot)?;
    check_unit(&chroot)?;
    let caps = unit_capabilities(&chroot)?;
    check_capabilities(&chroot, &caps)?;
    run_session(&chroot, &caps)?;
    println!(
        "install test: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A Debian root with /proc, /sys and /dev mounted; unmounted and removed
/// on drop.
struct DebianRoot {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl DebianRoot {
    fn create(dir: &Path) -> anyhow::Result<DebianRoot> {
        if dir.exists() {
            unmount_under(dir);
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let suite = host_suite()?;
        let mirror = std::env::var("DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        println!(
            "install test: debootstrap {suite} from {mirror} into {} ...",
            dir.display()
        );
        let t = Instant::now();
        cmd::run(
            Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    "--include=adduser,systemd,man-db,util-linux,libcap2-bin,procps",
                ])
                .arg(&suite)
                .arg(dir)
                .arg(&mirror)
                .stdout(Stdio::null()),
        )
        .context("debootstrap failed (is Debian's archive reachable? set DEBIAN_MIRROR)")?;
        println!(
            "install test:   a {suite} root in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        let mut me = DebianRoot {
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
        };
        for (what, fstype, at) in [
            ("proc", Some("proc"), "proc"),
            ("sysfs", Some("sysfs"), "sys"),
            ("/dev", None, "dev"),
        ] {
            let target = dir.join(at);
            let mut mount = Command::new("mount");
            match fstype {
                Some(t) => mount.args(["-t", t, what]),
                None => mount.args(["--bind", what]),
            };
            cmd::run(mount.arg(&target))?;
            me.mounted.push(target);
        }
        Ok(me)
    }

    /// `chroot ROOT PROGRAM`.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.dir).arg(program);
        c
    }

    /// `chroot ROOT setpriv ... PROGRAM` as the scistream user with exactly
    /// `caps` (lower-case names without CAP_), no new privileges.
    fn as_service(&self, caps: &[String], program: &str) -> Command {
        let set = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = self.command("setpriv");
        c.args([
            "--reuid=scistream",
            "--regid=scistream",
            "--init-groups",
            "--no-new-privs",
        ])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(program);
        c
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.join(inside.trim_start_matches('/'))
    }

    fn install(&self, deb: &Path) -> anyhow::Result<()> {
        let name = deb.file_name().context("package file name")?;
        std::fs::copy(deb, self.path("/tmp").join(name))?;
        let out = cmd::output(
            self.command("dpkg")
                .arg("-i")
                .arg(Path::new("/tmp").join(name)),
        )
        .context("dpkg -i of the package in the fresh root")?;
        ensure!(
            out.contains("systemctl enable --now s2cs"),
            "the first install did not tell the operator what to do next:\n{out}"
        );
        println!("install test: dpkg -i {} ok", name.to_string_lossy());
        Ok(())
    }
}

impl Drop for DebianRoot {
    fn drop(&mut self) {
        for target in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
        if std::env::var_os("KEEP_DEBIAN_ROOT").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Lazily unmounts whatever an earlier run left mounted under `dir`.
fn unmount_under(dir: &Path) {
    for at in ["dev", "sys", "proc"] {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(dir.join(at))
            .stderr(Stdio::null())
            .status();
    }
}

/// This host's Debian suite (bookworm, ...), so the root's C library is the
/// one the binaries were built against.
fn host_suite() -> anyhow::Result<String> {
    let release = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .context("/etc/os-release names no VERSION_CODENAME")
}

fn mode_and_owner(chroot: &DebianRoot, path: &str) -> anyhow::Result<String> {
    Ok(
        cmd::output(chroot.command("stat").args(["-c", "%a %U:%G", path]))?
            .trim()
            .to_owned(),
    )
}

fn check_files(chroot: &DebianRoot) -> anyhow::Result<()> {
    let user = cmd::output(chroot.command("getent").args(["passwd", "scistream"]))?;
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields.get(2).and_then(|u| u.parse().ok()).context("uid")?;
    ensure!(uid < 1000, "scistream is not a system user: {user}");
    ensure!(
        fields
            .get(6)
            .is_some_and(|s| s.ends_with("nologin") || s.ends_with("false")),
        "scistream can log in: {user}"
    );
    for (path, want) in [
        ("/etc/scistream", "750 root:scistream"),
        ("/etc/scistream/s2cs.toml", "640 root:scistream"),
        ("/etc/scistream/tokens", "600 scistream:scistream"),
        ("/var/lib/scistream", "700 scistream:scistream"),
        ("/usr/bin/s2cs", "755 root:root"),
        ("/usr/bin/s2uc", "755 root:root"),
        ("/usr/bin/appctrl", "755 root:root"),
    ] {
        let got = mode_and_owner(chroot, path)?;
        ensure!(got == want, "{path}: {got}, want {want}");
    }
    for page in [
        "s2cs",
        "s2cs-serve",
        "s2cs-check",
        "s2uc",
        "s2uc-connect",
        "appctrl",
    ] {
        let found = cmd::output(chroot.command("man").args(["-w", page]))
            .with_context(|| format!("man -w {page}"))?;
        ensure!(
            found.contains(&format!("{page}.1")),
            "man -w {page}: {found}"
        );
    }
    let page = cmd::output(
        chroot
            .command("sh")
            .args(["-c", "zcat /usr/share/man/man1/s2uc.1.gz"]),
    )?;
    ensure!(
        page.contains("EXIT STATUS"),
        "s2uc(1) has no EXIT STATUS section"
    );
    for file in [
        "/usr/share/bash-completion/completions/s2uc",
        "/usr/share/zsh/vendor-completions/_s2cs",
        "/usr/share/fish/vendor_completions.d/appctrl.fish",
        "/usr/lib/modules-load.d/scistream.conf",
        "/usr/share/scistream/monitoring/grafana-dashboard.json",
        "/usr/share/scistream/monitoring/s2cs-alerts.yml",
        "/usr/share/doc/scistream/OPERATIONS.md",
    ] {
        ensure!(chroot.path(file).is_file(), "{file} is not installed");
    }
    let version = cmd::output(chroot.command("s2cs").arg("--version"))?;
    ensure!(version.starts_with("s2cs "), "s2cs --version: {version}");
    println!("install test: user, files, modes, man pages and completions ok");
    Ok(())
}

fn check_unit(chroot: &DebianRoot) -> anyhow::Result<()> {
    let verify = chroot
        .command("systemd-analyze")
        .args(["verify", UNIT])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    ensure!(
        verify.status.success() && !text.contains("s2cs.service"),
        "systemd-analyze verify {UNIT}:\n{text}"
    );
    let security = cmd::output(chroot.command("systemd-analyze").args([
        "security",
        "--offline=true",
        "--no-pager",
        UNIT,
    ]))?;
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("s2cs.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no exposure level in:\n{security}"))?;
    ensure!(
        exposure <= 2.5,
        "the unit's exposure level is {exposure} (want <= 2.5):\n{security}"
    );
    // The shipped configuration: the unit's ExecStartPre refuses it, naming
    // why, until the operator adds tokens.
    let refused = chroot
        .as_service(&[], "/usr/bin/s2cs")
        .args(["config", "check", "/etc/scistream/s2cs.toml"])
        .output()?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && err.contains("/etc/scistream/tokens holds no tokens"),
        "s2cs config check of the shipped file: {err}"
    );
    println!(
        "install test: systemd-analyze verify ok, exposure {exposure}; the shipped configuration waits for tokens"
    );
    Ok(())
}

/// The unit's `AmbientCapabilities=`, as setpriv names them (`bpf`, ...).
fn unit_capabilities(chroot: &DebianRoot) -> anyhow::Result<Vec<String>> {
    let unit = std::fs::read_to_string(chroot.path(UNIT))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .context("the unit has no AmbientCapabilities= line")?;
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet= line")?;
    ensure!(
        line == bounding,
        "AmbientCapabilities= and CapabilityBoundingSet= differ"
    );
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect())
}

fn check_capabilities(chroot: &DebianRoot, caps: &[String]) -> anyhow::Result<()> {
    let with = cmd::output(
        chroot
            .as_service(caps, "/usr/bin/s2cs")
            .args(["check", "--json"]),
    )
    .context("s2cs check as scistream with the unit's capabilities")?;
    let report: serde_json::Value = serde_json::from_str(&with)?;
    let held: Vec<String> = report["privileges"]
        .as_array()
        .context("privileges")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let want: Vec<String> = caps
        .iter()
        .map(|c| format!("CAP_{}", c.to_ascii_uppercase()))
        .collect();
    ensure!(
        held == want,
        "s2cs check holds {held:?}, the unit grants {want:?}"
    );
    ensure!(report["root"] == false, "s2cs check ran as root");
    for name in [
        "BPF program load",
        "SockHash + sk_skb verdict",
        "UDP kernel path (tc)",
    ] {
        let cap = report["capabilities"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .with_context(|| format!("no {name} in the report"))?;
        ensure!(
            cap["available"] == true,
            "{name} unavailable with the unit's capabilities: {}",
            cap["detail"]
        );
    }
    let without = chroot
        .as_service(&[], "/usr/bin/s2cs")
        .arg("check")
        .output()?;
    let text = String::from_utf8_lossy(&without.stdout);
    for cap in [
        "CAP_BPF (loading the eBPF programs",
        "CAP_NET_ADMIN (",
        "capabilities: none",
    ] {
        ensure!(
            text.contains(cap),
            "s2cs check without capabilities does not say {cap:?}:\n{text}"
        );
    }
    println!(
        "install test: s2cs check as scistream: eBPF paths load with {want:?}, and without them it names each"
    );
    Ok(())
}

/// A gateway run from the installed package in a namespace.
struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ns(node: &str) -> String {
    netlab::name::fixed_name(PREFIX, node)
}

fn write_gateway_config(
    chroot: &DebianRoot,
    node: &str,
    ip: &str,
    allow: &str,
    xdp_peer: Option<&str>,
) -> anyhow::Result<String> {
    let xdp = xdp_peer
        .map(|peer| format!("[gateway.xdp]\niface = \"wan\"\npeers = [\"{peer}\"]\n"))
        .unwrap_or_default();
    let config = format!(
        "port_range = \"5100-5199\"\nlistener_ip = \"{ip}\"\nadvertise_ip = \"{ip}\"\n\
         state_dir = \"/var/lib/scistream/{node}\"\nallow = [\"{allow}\"]\n\
         [auth]\nkind = \"token_file\"\npath = \"/etc/scistream/tokens\"\n\
         [gateway]\ncontrol_listen = \"{ip}:5000\"\ndata_path = \"sockmap\"\n\
         [gateway.channel]\nmode = \"plaintext-after-auth\"\n{xdp}"
    );
    let path = format!("/etc/scistream/{node}.toml");
    std::fs::write(chroot.path(&path), config)?;
    cmd::run(chroot.command("chgrp").args(["scistream", &path]))?;
    cmd::run(chroot.command("chmod").args(["0640", &path]))?;
    cmd::run(chroot.command("install").args([
        "-d",
        "-m",
        "0700",
        "-o",
        "scistream",
        "-g",
        "scistream",
        &format!("/var/lib/scistream/{node}"),
    ]))?;
    Ok(path)
}

fn start_gateway(
    chroot: &DebianRoot,
    caps: &[String],
    node: &str,
    config: &str,
    ready: &[&str],
) -> anyhow::Result<Gateway> {
    let log = chroot.path(&format!("/tmp/{node}.log"));
    let file = std::fs::File::create(&log)?;
    let mut inner = chroot.as_service(caps, "/usr/bin/s2cs");
    inner.args(["serve", "--config", config]);
    let mut command = netlab::command(&ns(node), inner.get_program());
    command
        .args(inner.get_args())
        .env("RUST_LOG", "info,gateway=debug")
        .env("NO_COLOR", "1")
        .stdout(file.try_clone()?)
        .stderr(file);
    let child = command
        .spawn()
        .with_context(|| format!("starting s2cs on {node}"))?;
    let gateway = Gateway { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&gateway.log).unwrap_or_default();
        if ready.iter().all(|r| text.contains(r)) {
            return Ok(gateway);
        }
        if Instant::now() > deadline {
            bail!("s2cs on {node} did not start within 30 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_session(chroot: &DebianRoot, caps: &[String]) -> anyhow::Result<()> {
    let token: String = {
        // The kernel's CSPRNG.
        let mut bytes = [0u8; 24];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    std::fs::write(
        chroot.path("/etc/scistream/tokens"),
        format!("scientist@lab {token}\n"),
    )?;
    cleanup_with(PREFIX);
    let _topology = Topology::create_with(PREFIX)?;
    let gwa_config =
        write_gateway_config(chroot, "gwa", "10.2.0.1", "10.1.0.0/24", Some("10.2.0.2"))?;
    let gwb_config =
        write_gateway_config(chroot, "gwb", "10.3.0.1", "10.2.0.0/24:5100-5199", None)?;
    refused_without(
        chroot,
        &[],
        &gwa_config,
        "lacks CAP_BPF (loading the eBPF programs",
    )?;
    let no_perfmon: Vec<String> = caps.iter().filter(|c| *c != "perfmon").cloned().collect();
    refused_without(
        chroot,
        &no_perfmon,
        &gwa_config,
        "lacks CAP_PERFMON (loading the XDP guard",
    )?;
    let gwa = start_gateway(
        chroot,
        caps,
        "gwa",
        &gwa_config,
        &["s2cs: control server on", "XDP guard on wan"],
    )?;
    let gwb = start_gateway(
        chroot,
        caps,
        "gwb",
        &gwb_config,
        &["s2cs: control server on"],
    )?;

    let me = cmd::own_exe();
    let mut producer = netlab::command(&ns("prod"), &me)
        .args(["demo-app", "produce", "--addr", PRODUCER])
        .args([
            "--frames",
            &FRAMES.to_string(),
            "--frame-size",
            &FRAME_SIZE.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let connect = connect(chroot, &token)?;
    let mut consumer = netlab::command(&ns("cons"), &me)
        .args(["demo-app", "consume", "--addr", &connect.1])
        .args([
            "--frames",
            &FRAMES.to_string(),
            "--frame-size",
            &FRAME_SIZE.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut summary = None;
    if let Some(out) = consumer.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            if line.starts_with("consumer: summary") {
                summary = Some(line);
            }
        }
    }
    let consumer_ok = consumer.wait()?.success();
    let _ = producer.wait();
    let gwa_log = std::fs::read_to_string(&gwa.log).unwrap_or_default();
    let gwb_log = std::fs::read_to_string(&gwb.log).unwrap_or_default();
    ensure!(
        consumer_ok && summary.is_some(),
        "the consumer did not verify every frame through the installed gateways\n\
         ---- gwa\n{gwa_log}\n---- gwb\n{gwb_log}"
    );
    let paths = [
        crate::demo::data_paths(&gwa.log),
        crate::demo::data_paths(&gwb.log),
    ];
    ensure!(
        paths.iter().all(|p| p.contains("sockmap")),
        "the kernel relay was not used: gwa {}, gwb {}",
        paths[0],
        paths[1]
    );
    for mut gateway in [gwa, gwb] {
        // setpriv and chroot exec s2cs: the child's pid is the gateway's.
        cmd::run(Command::new("kill").args(["-TERM", &gateway.child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = gateway.child.try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "s2cs did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(status.success(), "s2cs exited with {status} after SIGTERM");
    }
    println!(
        "install test: session {} through the installed gateways as scistream: {} ({} / {})",
        connect.0,
        summary
            .unwrap_or_default()
            .trim_start_matches("consumer: summary "),
        paths[0],
        paths[1]
    );
    Ok(())
}

/// `s2cs serve` of `config` (sockmap relay and XDP guard) as scistream with
/// only `caps` must stop at once, naming what is missing (`want`).
fn refused_without(
    chroot: &DebianRoot,
    caps: &[String],
    config: &str,
    want: &str,
) -> anyhow::Result<()> {
    let mut inner = chroot.as_service(caps, "/usr/bin/s2cs");
    inner.args(["serve", "--config", config]);
    let out = netlab::command(&ns("gwa"), inner.get_program())
        .args(inner.get_args())
        .env("NO_COLOR", "1")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains(want),
        "s2cs serve with capabilities {caps:?} did not stop naming {want:?}: {}\n{err}",
        out.status
    );
    println!("install test: serve with capabilities {caps:?} refuses to start: ...{want}...");
    Ok(())
}

/// `s2uc connect` from the installed package (in gwb's namespace, as a
/// user with the token); returns (uid, the consumer's listener).
fn connect(chroot: &DebianRoot, token: &str) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut inner = chroot.command("/usr/bin/s2uc");
        inner
            .args([
                "connect",
                "--prod-s2cs",
                "10.2.0.1:5000",
                "--cons-s2cs",
                "10.3.0.1:5000",
            ])
            .args(["--prod-cert", "/var/lib/scistream/gwa/tls/control-cert.pem"])
            .args(["--cons-cert", "/var/lib/scistream/gwb/tls/control-cert.pem"])
            .args(["--producer", PRODUCER, "--num-conn", "1", "--json"]);
        let mut command = netlab::command(&ns("gwb"), inner.get_program());
        command.args(inner.get_args()).env("S2UC_TOKEN", token);
        match cmd::output(&mut command) {
            Ok(out) => {
                let doc: serde_json::Value = serde_json::from_str(&out)
                    .with_context(|| format!("s2uc connect --json printed {out}"))?;
                let uid = doc["uid"].as_str().context("uid")?.to_owned();
                let listener = doc["consumer_listeners"]
                    .as_array()
                    .and_then(|l| l.first())
                    .and_then(|l| l.as_str())
                    .context("consumer_listeners")?
                    .to_owned();
                return Ok((uid, listener));
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            Err(err) => return Err(err.context("s2uc connect through the installed gateways")),
        }
    }
}
