//! `s2cs serve --config FILE` and SIGHUP, through the real binary and a real
//! gRPC client over TLS on loopback: a changed token file takes effect
//! without a restart (the old token is refused, the new one accepted, the
//! process and its sessions stay), the data channel's certificate replaced
//! in place is rotated, a file that changes what cannot change
//! live (the port range) is refused by name and changes nothing, a file
//! that no longer parses is refused too, and SIGTERM still drains.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::client::{Client, ClientError, ClientOptions};
use zeroize::Zeroizing;

/// A bound-then-released loopback port for the control server.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn write_tokens(dir: &Path, line: &str) {
    let path = dir.join("tokens");
    let mut file = std::fs::File::create(&path).expect("token file");
    file.write_all(line.as_bytes()).expect("write tokens");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn write_config(dir: &Path, control: u16, ports: &str) -> PathBuf {
    let path = dir.join("s2cs.toml");
    let text = format!(
        "port_range = \"{ports}\"\nlistener_ip = \"127.0.0.1\"\nstate_dir = \"{state}\"\n\
         allow = [\"127.0.0.1/32:7000\"]\n\
         [auth]\nkind = \"token_file\"\npath = \"{tokens}\"\n\
         [gateway]\ncontrol_listen = \"127.0.0.1:{control}\"\ndata_path = \"copy\"\n",
        state = dir.join("state").display(),
        tokens = dir.join("tokens").display(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// The gateway process; killed if the test ends early.
struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Gateway {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log holds `n` lines containing `what`.
    fn wait_for(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(what).count() < n {
            assert!(
                Instant::now() < deadline,
                "no {what:?} (x{n}) in the gateway's output:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal the gateway");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn list_with(dir: &Path, control: u16, token: &str) -> Result<usize, ClientError> {
    let client = Client::connect(&ClientOptions {
        s2cs: format!("127.0.0.1:{control}"),
        server_cert: Some(dir.join("state/tls/control-cert.pem")),
        token: Some(Zeroizing::new(token.to_owned())),
        ..ClientOptions::default()
    })
    .await?;
    Ok(client.list().await?.sessions.len())
}

/// The server said the token is not one of its tokens.
fn is_refused_token(err: &ClientError) -> bool {
    err.to_string()
        .contains("the token is not in this gateway's token file")
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_token_file_and_refuses_what_cannot_change_live() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = free_port();
    write_tokens(dir.path(), "alice token-of-alice-0123456789\n");
    let config = write_config(dir.path(), control, "27100-27109");
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_s2cs"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start s2cs");
    let gateway = Gateway { child, log };
    gateway.wait_for("s2cs: control server on", 1);

    let alice = "token-of-alice-0123456789";
    let bob = "token-of-bob-9876543210";
    assert_eq!(
        list_with(dir.path(), control, alice).await.expect("alice"),
        0
    );
    let refused = list_with(dir.path(), control, bob).await.unwrap_err();
    assert!(is_refused_token(&refused), "{refused}");

    // The operator replaces alice with bob and reloads.
    write_tokens(dir.path(), &format!("bob {bob}\n"));
    gateway.signal(nix::sys::signal::Signal::SIGHUP);
    gateway.wait_for("configuration reloaded", 1);
    assert_eq!(
        list_with(dir.path(), control, bob)
            .await
            .expect("bob after reload"),
        0
    );
    let refused = list_with(dir.path(), control, alice).await.unwrap_err();
    assert!(
        is_refused_token(&refused),
        "alice's token still works after the reload: {refused}"
    );

    assert!(
        gateway.log().contains("control certificate unchanged")
            && gateway.log().contains("data-channel certificate unchanged"),
        "{}",
        gateway.log()
    );

    // The data channel's certificate replaced in place: rotated on reload.
    let channel = dir.path().join("state/channel");
    let fresh = rcgen::generate_simple_self_signed(vec!["s2cs-gateway".to_owned()])
        .expect("a new certificate");
    std::fs::write(channel.join("channel-cert.pem"), fresh.cert.pem()).expect("cert");
    std::fs::write(
        channel.join("channel-key.pem"),
        fresh.signing_key.serialize_pem(),
    )
    .expect("key");
    std::fs::set_permissions(
        channel.join("channel-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    gateway.signal(nix::sys::signal::Signal::SIGHUP);
    gateway.wait_for("configuration reloaded", 2);
    assert!(
        gateway.log().contains("data-channel certificate rotated"),
        "{}",
        gateway.log()
    );

    // A change that needs a restart: refused by name, nothing changes,
    // not even the token file edited alongside it.
    write_tokens(
        dir.path(),
        &format!("carol token-of-carol-000000\nbob {bob}\n"),
    );
    write_config(dir.path(), control, "27200-27209");
    gateway.signal(nix::sys::signal::Signal::SIGHUP);
    gateway.wait_for("configuration NOT reloaded", 1);
    let text = gateway.log();
    assert!(
        text.contains("port_range cannot change while the gateway serves"),
        "{text}"
    );
    assert_eq!(list_with(dir.path(), control, bob).await.expect("bob"), 0);
    let carol = list_with(dir.path(), control, "token-of-carol-000000").await;
    assert!(
        carol.as_ref().is_err_and(is_refused_token),
        "a refused reload applied the token file anyway: {carol:?}"
    );

    // A file that does not parse: refused, the gateway serves on.
    std::fs::write(&config, "port_range = [not toml\n").expect("break the config");
    gateway.signal(nix::sys::signal::Signal::SIGHUP);
    gateway.wait_for("configuration NOT reloaded", 2);
    assert_eq!(list_with(dir.path(), control, bob).await.expect("bob"), 0);
    assert!(
        !text.contains("token-of-"),
        "a token reached the log:\n{text}"
    );

    let mut gateway = gateway;
    gateway.signal(nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = gateway.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "s2cs did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", gateway.log());
}
