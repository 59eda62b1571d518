//! Runs the independent Python grpcio client (tests/python/old_client.py)
//! against two real servers with TLS. Fails with instructions when grpcio
//! is not installed.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{TestServer, base_config, port_range};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_old_client_sequence() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import grpc/grpc_tools ({}); run `pip install grpcio grpcio-tools`",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "python3 not runnable ({e}); install python3, then `pip install grpcio grpcio-tools`"
        ),
    }
    let echo = control::mock::start_echo_servers(1, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let prod = TestServer::start(base_config(port_range(27000, 10), d1.path())).await;
    let cons = TestServer::start(base_config(port_range(27000, 10), d2.path())).await;
    let pc = d1.path().join("prod.pem");
    let cc = d2.path().join("cons.pem");
    std::fs::write(&pc, &prod.cert_pem).unwrap();
    std::fs::write(&cc, &cons.cert_pem).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/old_client.py");
    let args: Vec<String> = vec![
        script.into(),
        "--prod".into(),
        prod.addr.to_string(),
        "--prod-cert".into(),
        pc.display().to_string(),
        "--cons".into(),
        cons.addr.to_string(),
        "--cons-cert".into(),
        cc.display().to_string(),
        "--producer".into(),
        echo.addrs[0].to_string(),
    ];
    let out = tokio::process::Command::new("python3")
        .args(&args)
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OLD CLIENT OK"),
        "python client failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(prod.handle.sessions(), 0);
    assert_eq!(cons.handle.ports_in_use(), 0);
    prod.stop().await;
    cons.stop().await;
}
