//! `s2uc login` and `s2uc check-auth`, end to end with the real `s2uc`
//! binary against a real control server (TLS, static token file validator):
//! login stores the token in a 0600 file (0700 directory) and refuses bad
//! input; check-auth names the identity the server sees for a good token
//! from each source (the login-written file, `--token`, `$S2UC_TOKEN`) and
//! says the token was refused (UNAUTHENTICATED) for a bad one. No output of
//! any run contains a token.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{TestServer, base_config, port_range};
use control::auth::AuthConfig;

const BASE: u16 = 29500;
const ALICE: &str = "tok-alice-5f1e9c2a7b";
const BOB: &str = "tok-bob-0d4b8e61aa";
const WRONG: &str = "tok-wrong-93c7d2f0e1";

/// Output of one run, checked to contain no token at all.
struct Run {
    out: Output,
    stdout: String,
    stderr: String,
}

async fn s2uc(home: &Path, args: &[&str], env: &[(&str, &OsStr)], stdin: &str) -> Run {
    let out = common::s2uc(args, env, home, stdin.as_bytes()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for tok in [ALICE, BOB, WRONG] {
        assert!(
            !stdout.contains(tok) && !stderr.contains(tok),
            "s2uc {args:?} printed a token:\nstdout: {stdout}\nstderr: {stderr}"
        );
    }
    Run {
        out,
        stdout,
        stderr,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_private_token_file_and_refuses_bad_input() {
    let home = tempfile::tempdir().expect("HOME for s2uc");
    let h = home.path();
    let default_file = h.join(".scistream").join("s2uc-token");

    // From standard input, to the default file under $HOME.
    let r = s2uc(h, &["login", "--token-stdin"], &[], &format!("{ALICE}\n")).await;
    assert!(r.out.status.success(), "login failed: {}", r.stderr);
    assert!(
        r.stdout.contains(&default_file.display().to_string()) && r.stdout.contains("0600"),
        "login must say where the token went: {}",
        r.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&default_file).expect("the token file exists"),
        ALICE,
        "the file holds the token alone (no newline)"
    );
    assert_eq!(mode(&default_file), 0o600, "token file mode");
    assert_eq!(
        mode(default_file.parent().expect("a directory")),
        0o700,
        "token directory mode"
    );

    // From --token, replacing the stored token; still 0600.
    let r = s2uc(h, &["login", "--token", BOB], &[], "").await;
    assert!(r.out.status.success(), "login --token failed: {}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&default_file).expect("token file"),
        BOB
    );
    assert_eq!(
        mode(&default_file),
        0o600,
        "token file mode after a rewrite"
    );

    // Bad input: refused with a reason, nothing written, the token not echoed.
    let fresh = h.join("fresh").join("token");
    let fresh_s = fresh.display().to_string();
    // (what the error must say, the token, whether it comes from --token)
    let cases = [
        ("empty token", "\n".to_owned(), false),
        ("empty token", "   \n".to_owned(), false),
        ("space", format!("{WRONG} {WRONG}\n"), false),
        ("without that prefix", format!("Bearer {WRONG}\n"), false),
        ("non-ASCII", format!("{WRONG}\u{e9}"), true),
    ];
    for (reason, token, via_flag) in cases {
        let mut args = vec!["login", "--token-stdin", "--token-file", &fresh_s];
        let stdin = if via_flag {
            args.extend(["--token", &token]);
            ""
        } else {
            token.as_str()
        };
        let r = s2uc(h, &args, &[], stdin).await;
        assert!(!r.out.status.success(), "login must refuse {token:?}");
        assert!(
            r.stderr.contains(reason),
            "login of {token:?} must say {reason:?}: {}",
            r.stderr
        );
        assert!(!fresh.exists(), "a refused token must not be stored");
    }

    // An impossible location is named.
    let blocker = h.join("plain-file");
    std::fs::write(&blocker, "").expect("writing a plain file");
    let inside = blocker.join("token").display().to_string();
    let r = s2uc(
        h,
        &["login", "--token-stdin", "--token-file", &inside],
        &[],
        &format!("{ALICE}\n"),
    )
    .await;
    assert!(
        !r.out.status.success(),
        "login under a plain file must fail"
    );
    assert!(
        r.stderr.contains("creating") && r.stderr.contains("plain-file"),
        "login must name what it could not create: {}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_auth_names_the_identity_or_says_the_token_was_refused() {
    let dir = tempfile::tempdir().expect("state dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\nbob {BOB}\n")).expect("token file");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut cfg = base_config(port_range(BASE, 4), dir.path());
    cfg.auth = Some(AuthConfig::TokenFile { path: tokens });
    let srv = TestServer::start(cfg).await;
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, &srv.cert_pem).expect("server certificate");
    let (addr, cert) = (srv.addr.to_string(), cert.display().to_string());
    let check = ["check-auth", "--s2cs", &addr, "--server-cert", &cert];

    let home = tempfile::tempdir().expect("HOME for s2uc");
    let h = home.path();
    let identity_line = |who: &str| format!("accepts the token as identity \"{who}\"");

    // No token anywhere: check-auth says so, and that the server wants one.
    let r = s2uc(h, &check, &[], "").await;
    assert!(r.stdout.contains("token: none"), "{}", r.stdout);
    assert!(!r.out.status.success(), "no token must not pass");
    assert!(
        r.stderr.contains("requires a token (UNAUTHENTICATED)") && r.stderr.contains("s2uc login"),
        "check-auth without a token must say one is needed: {}",
        r.stderr
    );

    // The file written by login.
    let r = s2uc(h, &["login", "--token-stdin"], &[], &format!("{ALICE}\n")).await;
    assert!(r.out.status.success(), "login failed: {}", r.stderr);
    let r = s2uc(h, &check, &[], "").await;
    assert!(
        r.out.status.success(),
        "check-auth with the login file: {}",
        r.stderr
    );
    assert!(r.stdout.contains("(from token file "), "{}", r.stdout);
    assert!(r.stdout.contains(&identity_line("alice")), "{}", r.stdout);

    // --token wins over the file.
    let mut with_flag = check.to_vec();
    with_flag.extend(["--token", BOB]);
    let r = s2uc(h, &with_flag, &[], "").await;
    assert!(r.out.status.success(), "check-auth --token: {}", r.stderr);
    assert!(r.stdout.contains("(from --token)"), "{}", r.stdout);
    assert!(r.stdout.contains(&identity_line("bob")), "{}", r.stdout);

    // $S2UC_TOKEN wins over the file.
    let r = s2uc(h, &check, &[("S2UC_TOKEN", OsStr::new(BOB))], "").await;
    assert!(
        r.out.status.success(),
        "check-auth with $S2UC_TOKEN: {}",
        r.stderr
    );
    assert!(r.stdout.contains("(from $S2UC_TOKEN)"), "{}", r.stdout);
    assert!(r.stdout.contains(&identity_line("bob")), "{}", r.stdout);

    // A token the server does not know, from the flag and from the environment.
    let mut bad = check.to_vec();
    bad.extend(["--token", WRONG]);
    for (args, env) in [
        (bad.as_slice(), vec![]),
        (&check[..], vec![("S2UC_TOKEN", OsStr::new(WRONG))]),
    ] {
        let r = s2uc(h, args, &env, "").await;
        assert!(!r.out.status.success(), "a bad token must fail check-auth");
        assert!(
            r.stderr.contains("refused the token (UNAUTHENTICATED)")
                && r.stderr.contains("not in this gateway's token file"),
            "check-auth must say the token was refused: {}",
            r.stderr
        );
        assert!(!r.stdout.contains("accepts the token"), "{}", r.stdout);
    }

    // A token file others can read is not used.
    let file = h.join(".scistream").join("s2uc-token");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = s2uc(h, &check, &[], "").await;
    assert!(!r.out.status.success(), "a 0644 token file must be refused");
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
    srv.stop().await;
}
