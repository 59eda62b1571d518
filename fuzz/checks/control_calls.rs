//! The control server's core fed arbitrary sequences of decoded calls
//! (`req`, `hello`, `update`, `release`, `status`, `list`) from several
//! callers, in any order, with any field values (a text script, one call a
//! line, so the seeds are readable), through the real gRPC
//! service in-process (no transport), a real token-file authenticator and
//! the real port allocator and userspace data plane on loopback.
//!
//! Checked on every input: nothing panics or hangs; a caller never sees or
//! changes another caller's session (only the admin may); the table never
//! exceeds its limit; and once every session is released, nothing is left:
//! no session, no leased port, no pending `req`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use control::auth::AuthConfig;
use control::proto::control_ext_server::ControlExt as _;
use control::proto::control_server::Control as _;
use control::server::{ServerHandle, Service};
use control::{ControlServer, PlainCopyDataPlane, ServerConfig, proto};
use tonic::Request;

const UIDS: [&str; 3] = ["4f6c1d8e-0b7a-11ef-9c2d-0242ac120002", "session-b", "s.c_3"];
const CALLERS: [(&str, &str); 3] = [
    ("alice", "token-alice-0123456789"),
    ("bob", "token-bob-0123456789"),
    ("root", "token-root-0123456789"),
];
const MAX_SESSIONS: usize = 2;
const FIRST_PORT: u16 = 47100;

#[derive(Debug, Clone, Copy)]
enum Caller {
    Alice,
    Bob,
    /// The admin.
    Root,
    /// No token at all.
    Anonymous,
    /// A token no one has.
    Stranger,
}

/// One call, from a line of the script: `WHO CALL ARGS...`, e.g.
/// `alice req u0 PROD 2 0 1` (uid, role, num_conn, rate, want_secret),
/// `alice hello u0 PROD 127.0.0.1:47100`, `root update u0 PROD
/// 127.0.0.1:47101,127.0.0.1:47102 00ff`, `bob release u0`, `bob status u0`,
/// `alice list`. `u0`..`u2` name the three known uids; any other word is
/// sent as it is. Missing arguments are empty, unknown calls are skipped.
#[derive(Debug)]
enum Call {
    Req {
        who: Caller,
        uid: String,
        role: String,
        num_conn: i32,
        rate: i32,
        want_secret: bool,
    },
    Hello {
        who: Caller,
        uid: String,
        role: String,
        listeners: Vec<String>,
    },
    Update {
        who: Caller,
        uid: String,
        role: String,
        listeners: Vec<String>,
        secret: Vec<u8>,
    },
    Release {
        who: Caller,
        uid: String,
    },
    Status {
        who: Caller,
        uid: String,
    },
    List {
        who: Caller,
    },
}

fn parse_script(text: &str) -> Vec<Call> {
    text.lines().filter_map(parse_line).take(32).collect()
}

fn parse_line(line: &str) -> Option<Call> {
    let mut words = line.split_whitespace();
    let who = match words.next()? {
        "alice" => Caller::Alice,
        "bob" => Caller::Bob,
        "root" => Caller::Root,
        "anon" => Caller::Anonymous,
        _ => Caller::Stranger,
    };
    let call = words.next()?;
    let mut arg = || words.next().unwrap_or("");
    let uid = |w: &str| match w {
        "u0" => UIDS[0].to_owned(),
        "u1" => UIDS[1].to_owned(),
        "u2" => UIDS[2].to_owned(),
        other => other.to_owned(),
    };
    let list = |w: &str| -> Vec<String> {
        w.split(',')
            .filter(|a| !a.is_empty())
            .take(8)
            .map(str::to_owned)
            .collect()
    };
    Some(match call {
        "req" => Call::Req {
            who,
            uid: uid(arg()),
            role: arg().to_owned(),
            num_conn: arg().parse().unwrap_or(0),
            rate: arg().parse().unwrap_or(0),
            want_secret: arg() == "1",
        },
        "hello" => Call::Hello {
            who,
            uid: uid(arg()),
            role: arg().to_owned(),
            listeners: list(arg()),
        },
        "update" => Call::Update {
            who,
            uid: uid(arg()),
            role: arg().to_owned(),
            listeners: list(arg()),
            secret: arg().bytes().collect(),
        },
        "release" => Call::Release {
            who,
            uid: uid(arg()),
        },
        "status" => Call::Status {
            who,
            uid: uid(arg()),
        },
        "list" => Call::List { who },
        _ => return None,
    })
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: Service,
    handle: ServerHandle,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tokens)
            .expect("token file");
        for (who, token) in CALLERS {
            writeln!(file, "{who} {token}").expect("token file");
        }
        let config: ServerConfig = ServerConfig::from_toml_str(&format!(
            r#"
            port_range = "{FIRST_PORT}-{}"
            listener_ip = "127.0.0.1"
            max_sessions = {MAX_SESSIONS}
            max_num_conn = 4
            hello_timeout_secs = 3600.0
            admins = ["root"]
            allow = ["127.0.0.1/32"]
            [tls]
            dangerous_disable = true
            "#,
            FIRST_PORT + 7
        ))
        .map(|mut c| {
            c.auth = Some(AuthConfig::TokenFile { path: tokens });
            c
        })
        .expect("fixture config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(ControlServer::new(
                config,
                Arc::new(PlainCopyDataPlane::new()),
            ))
            .expect("control server");
        Fixture {
            service: server.service(),
            handle: server.handle(),
            runtime,
            _dir: dir,
        }
    })
}

fn request<T>(who: Caller, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let token = match who {
        Caller::Alice => CALLERS[0].1,
        Caller::Bob => CALLERS[1].1,
        Caller::Root => CALLERS[2].1,
        Caller::Stranger => "token-nobody-has",
        Caller::Anonymous => return request,
    };
    let value = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Owners of the known sessions, as the admin sees them.
async fn owners(service: &Service) -> Vec<(String, String)> {
    let list = service
        .list(request(Caller::Root, proto::ListRequest {}))
        .await
        .expect("the admin can always list")
        .into_inner();
    list.sessions
        .into_iter()
        .map(|s| (s.uid, s.owner))
        .collect()
}

fn name(who: Caller) -> Option<&'static str> {
    match who {
        Caller::Alice => Some("alice"),
        Caller::Bob => Some("bob"),
        Caller::Root => Some("root"),
        _ => None,
    }
}

async fn run(service: &Service, handle: &ServerHandle, calls: Vec<Call>) {
    let mut pending = Vec::new();
    for call in calls {
        let before = owners(service).await;
        match call {
            Call::Req {
                who,
                uid,
                role,
                num_conn,
                rate,
                want_secret,
            } => {
                let service = service.clone();
                let message = proto::Request {
                    uid,
                    role,
                    num_conn,
                    rate,
                    want_channel_secret: want_secret,
                };
                // A req waits for its hello: it runs beside the next calls.
                pending.push(tokio::spawn(async move {
                    let _ = service.req(request(who, message)).await;
                }));
            }
            Call::Hello {
                who,
                uid,
                role,
                listeners,
            } => {
                let _ = service
                    .hello(request(
                        who,
                        proto::Hello {
                            uid,
                            prod_listeners: listeners,
                            role,
                        },
                    ))
                    .await;
            }
            Call::Update {
                who,
                uid,
                role,
                listeners,
                secret,
            } => {
                let _ = service
                    .update(request(
                        who,
                        proto::UpdateTargets {
                            uid,
                            remote_listeners: listeners,
                            role,
                            channel_secret: secret,
                        },
                    ))
                    .await;
            }
            Call::Release { who, uid: u } => {
                let released = service
                    .release(request(who, proto::Release { uid: u.clone() }))
                    .await
                    .is_ok();
                if released {
                    let owner = before.iter().find(|(id, _)| *id == u).map(|(_, o)| o);
                    match (owner, name(who)) {
                        (Some(owner), Some(me)) => assert!(
                            me == "root" || owner == me,
                            "{me} released {owner}'s session"
                        ),
                        (Some(owner), None) => {
                            panic!("an unauthenticated caller released {owner}'s session")
                        }
                        (None, _) => {}
                    }
                }
            }
            Call::Status { who, uid: u } => {
                if let Ok(status) = service
                    .status(request(who, proto::StatusRequest { uid: u }))
                    .await
                {
                    let owner = status.into_inner().owner;
                    let me = name(who).expect("status without a valid token");
                    assert!(me == "root" || owner == me, "{me} saw {owner}'s session");
                }
            }
            Call::List { who } => {
                if let Ok(list) = service.list(request(who, proto::ListRequest {})).await {
                    let me = name(who).expect("list without a valid token");
                    for s in list.into_inner().sessions {
                        assert!(
                            me == "root" || s.owner == me,
                            "{me} saw {}'s session",
                            s.owner
                        );
                    }
                }
            }
        }
        // Let a spawned req register before the next call.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let after = owners(service).await;
        assert!(after.len() <= MAX_SESSIONS, "{} sessions", after.len());
        // Nobody's session changed hands.
        for (id, owner) in &after {
            if let Some((_, was)) = before.iter().find(|(b, _)| b == id) {
                assert_eq!(owner, was, "session {id} changed owner");
            }
        }
    }

    // Release everything until every req has answered (a req spawned last
    // may create its session only now).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        for (id, _) in owners(service).await {
            service
                .release(request(Caller::Root, proto::Release { uid: id.clone() }))
                .await
                .unwrap_or_else(|e| panic!("the admin could not release {id}: {e:?}"));
        }
        pending.retain(|req| !req.is_finished());
        if pending.is_empty() && owners(service).await.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a req still waits after its session was released"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(handle.sessions(), 0, "sessions left after releasing all");
    assert_eq!(
        handle.ports_in_use(),
        0,
        "ports left leased after releasing all"
    );
}

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Ok(script) =
        <&str as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return false;
    };
    let fixture = fixture();
    fixture
        .runtime
        .block_on(run(&fixture.service, &fixture.handle, parse_script(script)));
    true
}
