//! The `s2uc` and `appctrl` binaries against real servers.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::{TestServer, base_config, port_range};

async fn run(bin: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(bin)
        .args(args)
        .env_remove("S2UC_TOKEN")
        .env("HOME", std::env::temp_dir())
        .output()
        .await
        .expect("run binary")
}

fn ok(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "command failed: {}\nstdout:\n{s}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    s
}

/// A PROD and a CONS control server, their addresses and certificate
/// files, and an echo server as ProdApp.
struct Pair {
    prod: TestServer,
    cons: TestServer,
    pa: String,
    ca: String,
    pcs: String,
    ccs: String,
    producer: String,
    _echo: control::mock::EchoServers,
    _dirs: [tempfile::TempDir; 2],
}

impl Pair {
    async fn start() -> Pair {
        let echo = control::mock::start_echo_servers(1, "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let prod = TestServer::start(base_config(port_range(28000, 10), dirs[0].path())).await;
        let cons = TestServer::start(base_config(port_range(28000, 10), dirs[1].path())).await;
        let pc = dirs[0].path().join("prod.pem");
        let cc = dirs[1].path().join("cons.pem");
        std::fs::write(&pc, &prod.cert_pem).unwrap();
        std::fs::write(&cc, &cons.cert_pem).unwrap();
        Pair {
            pa: prod.addr.to_string(),
            ca: cons.addr.to_string(),
            pcs: pc.display().to_string(),
            ccs: cc.display().to_string(),
            producer: echo.addrs[0].to_string(),
            prod,
            cons,
            _echo: echo,
            _dirs: dirs,
        }
    }

    async fn stop(self) {
        self.prod.stop().await;
        self.cons.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_connect_status_list_release_and_appctrl_hello() {
    let s2uc = env!("CARGO_BIN_EXE_s2uc");
    let appctrl = env!("CARGO_BIN_EXE_appctrl");
    let pair = Pair::start().await;
    let prod = &pair.prod;
    let (pa, ca) = (pair.pa.clone(), pair.ca.clone());
    let (pcs, ccs) = (pair.pcs.clone(), pair.ccs.clone());
    let producer = pair.producer.clone();
    let out = ok(&run(
        s2uc,
        &[
            "connect",
            "--prod-s2cs",
            &pa,
            "--cons-s2cs",
            &ca,
            "--prod-cert",
            &pcs,
            "--cons-cert",
            &ccs,
            "--num_conn",
            "2",
            "--producer",
            &producer,
        ],
    )
    .await);
    let uid = out
        .lines()
        .find_map(|l| l.strip_prefix("uid: "))
        .expect("uid printed")
        .to_owned();
    let consumer = out
        .lines()
        .find_map(|l| l.strip_prefix("consumer connects to: "))
        .expect("consumer address printed");
    assert_eq!(consumer.split(',').count(), 2);
    let status = ok(&run(
        s2uc,
        &["status", "--s2cs", &ca, "--server_cert", &ccs, &uid],
    )
    .await);
    assert!(status.contains("state=ACTIVE"), "{status}");
    let list = ok(&run(s2uc, &["list", "--s2cs", &pa, "--server-cert", &pcs]).await);
    assert!(list.contains(&uid), "{list}");
    for (a, c) in [(&pa, &pcs), (&ca, &ccs)] {
        let r = ok(&run(s2uc, &["release", "--s2cs", a, "--server-cert", c, &uid]).await);
        assert!(r.contains("Release completed"), "{r}");
    }
    // A failing command exits non-zero with the server's message.
    let bad = run(
        s2uc,
        &["release", "--s2cs", &pa, "--server-cert", &pcs, &uid],
    )
    .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no session"));

    // appctrl hello answers a pending req.
    let c = prod.client(None).await;
    let c2 = c.clone();
    let app_1 = common::uid("app-1");
    let app_1_req = app_1.clone();
    let req = tokio::spawn(async move { c2.req(&app_1_req, control::Role::Prod, 1, 0).await });
    common::eventually("req registered", || prod.handle.sessions() == 1).await;
    let h = ok(&run(
        appctrl,
        &[
            "hello",
            "--s2cs",
            &pa,
            "--server-cert",
            &pcs,
            "app-1",
            "PROD",
            &producer,
        ],
    )
    .await);
    assert!(h.contains("hello received"), "{h}");
    let resp = req.await.unwrap().expect("req answered");
    assert_eq!(resp.prod_listeners, vec![producer.clone()]);
    c.release(&app_1).await.unwrap();
    pair.stop().await;
}

fn json(o: &Output) -> serde_json::Value {
    let text = ok(o);
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON document per command: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `--json` for connect, status, list and check-auth: one document each,
/// with the fields scripts read, through the real binary and servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_json_output_is_one_document_with_the_sessions_fields() {
    let s2uc = env!("CARGO_BIN_EXE_s2uc");
    let pair = Pair::start().await;
    let (pa, ca) = (pair.pa.clone(), pair.ca.clone());
    let (pcs, ccs) = (pair.pcs.clone(), pair.ccs.clone());
    let producer = pair.producer.clone();
    let connected = json(
        &run(
            s2uc,
            &[
                "connect",
                "--prod-s2cs",
                &pa,
                "--cons-s2cs",
                &ca,
                "--prod-cert",
                &pcs,
                "--cons-cert",
                &ccs,
                "--num-conn",
                "1",
                "--producer",
                &producer,
                "--json",
            ],
        )
        .await,
    );
    let uid = connected["uid"].as_str().expect("uid").to_owned();
    assert_eq!(
        connected["consumer_listeners"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(connected["setup_seconds"].as_f64().is_some(), "{connected}");

    let status = json(
        &run(
            s2uc,
            &[
                "status",
                "--s2cs",
                &ca,
                "--server-cert",
                &ccs,
                "--json",
                &uid,
            ],
        )
        .await,
    );
    assert_eq!(status["uid"], uid.as_str());
    assert_eq!(status["role"], "CONS");
    assert_eq!(status["state"], "ACTIVE");
    assert_eq!(
        status["rate_cap_mbps"],
        serde_json::Value::Null,
        "no cap by default: {status}"
    );
    assert!(
        status["rate_source"]
            .as_str()
            .is_some_and(|s| s.contains("no cap")),
        "{status}"
    );
    assert_eq!(status["counters"]["connections_active"], 0);
    assert_eq!(status["targets"].as_array().map(Vec::len), Some(1));

    let list = json(
        &run(
            s2uc,
            &["list", "--s2cs", &pa, "--server-cert", &pcs, "--json"],
        )
        .await,
    );
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["uid"], uid.as_str());
    assert_eq!(sessions[0]["role"], "PROD");

    let check = json(
        &run(
            s2uc,
            &["check-auth", "--s2cs", &pa, "--server-cert", &pcs, "--json"],
        )
        .await,
    );
    assert_eq!(check["token"]["present"], false);
    assert_eq!(check["server"]["address"], pa.as_str());
    assert_eq!(check["server"]["identity"], "anonymous");

    // An error is still one line on stderr and a failure status, nothing on stdout.
    let missing = run(
        s2uc,
        &[
            "status",
            "--s2cs",
            &pa,
            "--server-cert",
            &pcs,
            "--json",
            "no-such",
        ],
    )
    .await;
    assert!(!missing.status.success());
    assert!(missing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("s2uc: error: "));
    for (a, c) in [(&pa, &pcs), (&ca, &ccs)] {
        ok(&run(s2uc, &["release", "--s2cs", a, "--server-cert", c, &uid]).await);
    }
    pair.stop().await;
}
