//! Starting each gateway pair of `bench tls` in gwB (consumer side) and gwA
//! (producer side): the s2cs pair with its `s2uc connect` sessions, stunnel,
//! HAProxy and an ssh -L tunnel, and stopping everything again.
use std::fs::File;
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::super::topo::{
    self, PAIR_GWA_LAN, PAIR_GWA_WAN, PAIR_GWB_LAN, PAIR_GWB_WAN, PAIR_SERVER_ADDR, PairNet,
};
use super::super::{interrupted, peers};
use super::{CONTROL_PORT, PLAIN_PORT, PORT_RANGE, SUITE, TLS_PORT};

/// The non-zero kernel TLS counters of namespace `ns` (`/proc/net/tls_stat`),
/// or why there are none, and whether any connection there used kernel TLS.
pub(super) fn ktls_stat(ns: &str) -> (String, bool) {
    let out = topo::ns_command(ns, "cat")
        .arg("/proc/net/tls_stat")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let counters: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_once(char::is_whitespace))
                .map(|(k, v)| (k, v.trim()))
                .filter(|(k, v)| !k.starts_with("TlsCurr") && *v != "0")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if counters.is_empty() {
                ("kernel TLS available, not used".into(), false)
            } else {
                (format!("kernel TLS {}", counters.join(" ")), true)
            }
        }
        _ => (
            "no kernel TLS (no /proc/net/tls_stat: tls module not loaded), userspace TLS".into(),
            false,
        ),
    }
}

/// A pair running in gwB and gwA; dropping it kills everything in both.
pub(in crate::bench) struct RunningPair<'a> {
    net: &'a PairNet,
    children: Vec<Child>,
    /// Where the consumer connects (gwB's LAN side).
    pub(in crate::bench) addr: SocketAddrV4,
    /// Log files, for error messages.
    pub(super) logs: Vec<String>,
    /// `s2uc connect` setup times, seconds (s2cs only).
    pub(super) setup_times: Vec<f64>,
}

impl RunningPair<'_> {
    fn new(net: &PairNet) -> RunningPair<'_> {
        RunningPair {
            net,
            children: Vec::new(),
            addr: SocketAddrV4::new(PAIR_GWB_LAN, PLAIN_PORT),
            logs: Vec::new(),
            setup_times: Vec::new(),
        }
    }

    /// Spawns `cmd` with its output in `log` and keeps it.
    fn spawn(&mut self, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        self.children.push(child);
        self.logs.push(log.display().to_string());
        Ok(())
    }

    /// Waits until the last child spawned listens on `port` (10 s at most).
    fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let log = self.logs.last().cloned().unwrap_or_default();
        let child = self.children.last_mut().context("nothing started")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().context("checking the relay")? {
                bail!("exited at start ({status}); output:\n{}", tail(&log));
            }
            if peers::listening(child.id(), port) {
                return Ok(());
            }
            if Instant::now() > deadline || interrupted() {
                bail!(
                    "not listening on port {port} after 10 s; output:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningPair<'_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.net.gwb, &self.net.gwa] {
            if let Err(e) = self.net.kill_all(ns) {
                eprintln!("bench: stopping the pair in {ns}: {e:#}");
            }
        }
    }
}

/// The last 20 lines of a log file.
fn tail(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Two `s2cs serve` (PROD in gwA, CONS in gwB) and `sessions` x `s2uc
/// connect` in gwB.
pub(in crate::bench) fn start_s2cs<'a>(
    net: &'a PairNet,
    work: &Path,
    s2cs: &Path,
    s2uc: &Path,
    channel: &str,
    sessions: u32,
) -> anyhow::Result<RunningPair<'a>> {
    let dir = work.join(format!("s2cs-{channel}"));
    let home = dir.join("home");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let mut pair = RunningPair::new(net);
    // (namespace, name, control/listener address, allow rule)
    let gateways = [
        (&net.gwa, "gwa", PAIR_GWA_WAN, format!("{PAIR_GWA_LAN}/24")),
        (
            &net.gwb,
            "gwb",
            PAIR_GWB_LAN,
            format!("{PAIR_GWB_WAN}/24:{PORT_RANGE}"),
        ),
    ];
    for (ns, name, ip, allow) in &gateways {
        let state = dir.join(name);
        let mut cmd = topo::ns_command(ns, &s2cs.to_string_lossy());
        cmd.args(["serve", "--control-listen"])
            .arg(SocketAddrV4::new(*ip, CONTROL_PORT).to_string())
            .args(["--port-range", PORT_RANGE])
            .args(["--listener-ip", &ip.to_string()])
            .args(["--advertise-ip", &ip.to_string()])
            .args(["--channel", channel])
            .args(["--no-auth", "--allow", allow, "--state-dir"])
            .arg(&state)
            .env(
                "RUST_LOG",
                std::env::var("S2CS_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .env("NO_COLOR", "1");
        let log = dir.join(format!("{name}.log"));
        pair.spawn(cmd, &log)?;
        // The fingerprint line comes once the control listener is bound.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = pair.children.last_mut().context("no s2cs")?;
            if let Some(status) = child.try_wait().context("checking s2cs")? {
                bail!(
                    "s2cs in {name} exited at start ({status}); output:\n{}",
                    tail(&log.display().to_string())
                );
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("SHA-256 fingerprint")
            {
                break;
            }
            if Instant::now() > deadline || interrupted() {
                bail!("s2cs in {name} not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let cert = |name: &str| dir.join(name).join("tls/control-cert.pem");
    let producer = SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT).to_string();
    for i in 0..sessions {
        let mut cmd = topo::ns_command(&net.gwb, "timeout");
        cmd.arg("30")
            .arg(s2uc)
            .arg("connect")
            .arg("--prod-s2cs")
            .arg(SocketAddrV4::new(PAIR_GWA_WAN, CONTROL_PORT).to_string())
            .arg("--cons-s2cs")
            .arg(SocketAddrV4::new(PAIR_GWB_LAN, CONTROL_PORT).to_string())
            .arg("--prod-cert")
            .arg(cert("gwa"))
            .arg("--cons-cert")
            .arg(cert("gwb"))
            .args(["--producer", &producer, "--num-conn", "1"])
            .env("HOME", &home)
            .env_remove("S2UC_TOKEN")
            .stdin(Stdio::null());
        let out = cmd.output().context("running s2uc connect")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "s2uc connect (session {}) failed ({}):\n{stdout}{}",
                i + 1,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (setup, addr) = parse_connect(&stdout)?;
        pair.setup_times.push(setup);
        pair.addr = addr;
    }
    Ok(pair)
}

/// The setup time (seconds) and the first consumer listener from `s2uc
/// connect`'s output.
fn parse_connect(out: &str) -> anyhow::Result<(f64, SocketAddrV4)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("s2uc connect printed no {name:?} line:\n{out}"))
    };
    let setup = field("setup time:")?;
    let secs: f64 = setup
        .strip_suffix('s')
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("setup time {setup:?} is not \"N s\""))?;
    let listeners = field("consumer connects to:")?;
    let first = listeners.split(',').next().unwrap_or_default().trim();
    let addr = first
        .parse()
        .with_context(|| format!("consumer listener {first:?} is not IPv4:PORT"))?;
    Ok((secs, addr))
}

/// A self-signed P-256 certificate for the peers' TLS servers:
/// `cert.pem`, `key.pem` and `combined.pem` (HAProxy's `crt`) in `work`.
pub(super) fn make_cert(work: &Path) -> anyhow::Result<()> {
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "2", "-subj", "/CN=s2bench-gwa", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .context("running openssl req")?;
    if !out.status.success() {
        bail!(
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let combined = read(&cert)? + &read(&key)?;
    write(&work.join("combined.pem"), &combined)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// stunnel's server side in gwA, then its client side in gwB.
pub(super) fn start_stunnel<'a>(net: &'a PairNet, work: &Path) -> anyhow::Result<RunningPair<'a>> {
    let mut pair = RunningPair::new(net);
    let wan = SocketAddrV4::new(PAIR_GWA_WAN, TLS_PORT);
    let common = format!(
        "foreground = yes\npid =\ndebug = warning\nsslVersionMin = TLSv1.3\nciphersuites = {SUITE}\n"
    );
    let server = format!(
        "{common}\n[gwa]\naccept = {wan}\nconnect = {}\ncert = {}\nkey = {}\n",
        SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT),
        work.join("cert.pem").display(),
        work.join("key.pem").display()
    );
    let client = format!(
        "{common}\n[gwb]\nclient = yes\naccept = {}\nconnect = {wan}\n",
        SocketAddrV4::new(PAIR_GWB_LAN, PLAIN_PORT)
    );
    for (ns, name, config, port) in [
        (&net.gwa, "gwa", server, TLS_PORT),
        (&net.gwb, "gwb", client, PLAIN_PORT),
    ] {
        let path = work.join(format!("stunnel-{name}.conf"));
        write(&path, &config)?;
        let mut cmd = topo::ns_command(ns, "stunnel4");
        cmd.arg(&path);
        pair.spawn(cmd, &work.join(format!("stunnel-{name}.log")))?;
        pair.wait_listening(port)
            .with_context(|| format!("stunnel in {name}"))?;
    }
    Ok(pair)
}

/// HAProxy terminating TLS in gwA (`ssl crt`), then HAProxy in gwB dialling
/// it with `ssl verify none`.
pub(super) fn start_haproxy<'a>(net: &'a PairNet, work: &Path) -> anyhow::Result<RunningPair<'a>> {
    let mut pair = RunningPair::new(net);
    let wan = SocketAddrV4::new(PAIR_GWA_WAN, TLS_PORT);
    let common = "global\n    maxconn 1024\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n";
    let tls = format!("ssl-min-ver TLSv1.3 ciphersuites {SUITE}");
    let server = format!(
        "{common}frontend wan\n    bind {wan} ssl crt {} {tls}\n    default_backend producer\n\n\
         backend producer\n    server iperf {}\n",
        work.join("combined.pem").display(),
        SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT)
    );
    let client = format!(
        "{common}frontend lan\n    bind {}\n    default_backend gwa\n\n\
         backend gwa\n    server gwa {wan} ssl verify none {tls}\n",
        SocketAddrV4::new(PAIR_GWB_LAN, PLAIN_PORT)
    );
    for (ns, name, config, port) in [
        (&net.gwa, "gwa", server, TLS_PORT),
        (&net.gwb, "gwb", client, PLAIN_PORT),
    ] {
        let path = work.join(format!("haproxy-{name}.cfg"));
        write(&path, &config)?;
        let mut cmd = topo::ns_command(ns, "haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        pair.spawn(cmd, &work.join(format!("haproxy-{name}.log")))?;
        pair.wait_listening(port)
            .with_context(|| format!("HAProxy in {name}"))?;
    }
    Ok(pair)
}

/// The cipher of the ssh tunnel (baselines.md measured ssh -L with it).
const SSH_CIPHER: &str = "aes128-gcm@openssh.com";

/// sshd in gwA (keys made for this run, only key login, forwarding only to
/// the producer), then `ssh -N -L` in gwB listening where the consumer
/// connects.
pub(super) fn start_ssh<'a>(net: &'a PairNet, work: &Path) -> anyhow::Result<RunningPair<'a>> {
    let dir = work.join("ssh");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (host_key, user_key) = (dir.join("host_ed25519"), dir.join("user_ed25519"));
    for key in [&host_key, &user_key] {
        ssh_keygen(key)?;
    }
    let public = std::fs::read_to_string(user_key.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", user_key.display()))?;
    let authorized = dir.join("authorized_keys");
    write(&authorized, &public)?;
    // Debian's sshd refuses to start without its privilege-separation dir,
    // which systemd normally creates.
    std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;

    let producer = SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT);
    let config = format!(
        "ListenAddress {wan}\nHostKey {host}\nPidFile none\nAuthorizedKeysFile {auth}\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
         AllowTcpForwarding local\nPermitOpen {producer}\nCiphers {SSH_CIPHER}\nCompression no\n",
        wan = SocketAddrV4::new(PAIR_GWA_WAN, TLS_PORT),
        host = host_key.display(),
        auth = authorized.display(),
    );
    let config_path = dir.join("sshd_config");
    write(&config_path, &config)?;
    let mut pair = RunningPair::new(net);
    let mut sshd = topo::ns_command(&net.gwa, "/usr/sbin/sshd");
    sshd.args(["-D", "-e", "-f"]).arg(&config_path);
    pair.spawn(sshd, &dir.join("sshd.log"))?;
    pair.wait_listening(TLS_PORT).context("sshd in gwa")?;

    let mut ssh = topo::ns_command(&net.gwb, "ssh");
    ssh.args(["-N", "-F", "/dev/null", "-i"])
        .arg(&user_key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
        ])
        .args([
            "-o",
            "GatewayPorts=yes",
            "-o",
            "Compression=no",
            "-c",
            SSH_CIPHER,
        ])
        .args(["-p", &TLS_PORT.to_string(), "-L"])
        .arg(format!("{}:{PLAIN_PORT}:{producer}", PAIR_GWB_LAN))
        .arg(format!("root@{PAIR_GWA_WAN}"));
    pair.spawn(ssh, &dir.join("ssh.log"))?;
    pair.wait_listening(PLAIN_PORT).context("ssh -L in gwb")?;
    Ok(pair)
}

/// A new ed25519 key pair at `path` (and `path.pub`), no passphrase.
fn ssh_keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "s2bench", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -f {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s2uc_connect_output() {
        let out = "uid: abc\nprod gateway listeners: 10.202.2.1:5100\n\
                   consumer connects to: 10.202.3.1:5101,10.202.3.1:5102\nsetup time: 0.042 s\n";
        let (setup, addr) = parse_connect(out).expect("parses");
        assert!((setup - 0.042).abs() < 1e-9);
        assert_eq!(addr, "10.202.3.1:5101".parse().expect("addr"));
        assert!(parse_connect("nothing").is_err());
    }
}
