//! The `--json` forms of `s2uc connect`, `status`, `list` and `check-auth`:
//! one JSON document on stdout, with field names that stay stable for
//! scripts and workflow tools (errors still go to stderr as one line, with
//! a non-zero exit status).
//!
//! Shapes:
//! - session (`status`; `list` prints `{"sessions": [session, ...]}`):
//!   `uid`, `role`, `state`, `owner`, `num_conn`, `listeners`,
//!   `prod_listeners`, `targets`, `created_unix`, `legacy_secret`,
//!   `rate_cap_mbps` (null: no cap), `rate_source`, `counters`
//!   (`bytes_to_target`, `bytes_from_target`, `connections_total`,
//!   `connections_active`), `restore_error` and `pinned_peer` (null when
//!   empty);
//! - `connect`: `uid`, `prod_listeners`, `consumer_listeners`,
//!   `setup_seconds`;
//! - `check-auth`: `token` (`{"present": bool, "source": text|null}`) and,
//!   with `--s2cs`, `server` (`{"address", "version", "identity"}`).

use std::io::Write as _;

use serde_json::{Value, json};

use crate::client::{ClientError, Connected};
use crate::proto::SessionStatus;

fn non_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_owned())
    }
}

/// One session as `status` reports it.
pub fn session(s: &SessionStatus) -> Value {
    let c = s.counters.unwrap_or_default();
    json!({
        "uid": s.uid,
        "role": s.role,
        "state": s.state,
        "owner": s.owner,
        "num_conn": s.num_conn,
        "listeners": s.listeners,
        "prod_listeners": s.prod_listeners,
        "targets": s.targets,
        "created_unix": s.created_unix,
        "legacy_secret": s.legacy_secret,
        "rate_cap_mbps": (s.rate > 0).then_some(s.rate),
        "rate_source": non_empty(&s.rate_source),
        "counters": {
            "bytes_to_target": c.bytes_to_target,
            "bytes_from_target": c.bytes_from_target,
            "connections_total": c.connections_total,
            "connections_active": c.connections_active,
            "udp": {
                "datagrams_to_target": c.udp_datagrams_to_target,
                "bytes_to_target": c.udp_bytes_to_target,
                "datagrams_from_target": c.udp_datagrams_from_target,
                "bytes_from_target": c.udp_bytes_from_target,
                "flows_total": c.udp_flows_total,
                "flows_active": c.udp_flows_active,
                "flows_refused": c.udp_flows_refused,
                "dropped_oversize": c.udp_dropped_oversize,
                "dropped_rate": c.udp_dropped_rate,
                "dropped_backlog": c.udp_dropped_backlog,
                "max_payload": c.udp_max_payload,
            },
        },
        "restore_error": non_empty(&s.restore_error),
        "pinned_peer": non_empty(&s.pinned_peer),
    })
}

/// `list`.
pub fn sessions(list: &[SessionStatus]) -> Value {
    json!({ "sessions": list.iter().map(session).collect::<Vec<_>>() })
}

/// `connect`.
pub fn connected(r: &Connected, setup_seconds: f64) -> Value {
    json!({
        "uid": r.uid.as_str(),
        "prod_listeners": r.prod_listeners,
        "consumer_listeners": r.cons_listeners,
        "setup_seconds": setup_seconds,
    })
}

/// What `check-auth` found: where the token comes from (None: no token)
/// and, when a server was asked, its answer.
pub struct AuthCheck {
    pub token_source: Option<String>,
    /// The login whose access token is sent, if it is one.
    pub login: Option<crate::client::login::Login>,
    pub server: Option<ServerAnswer>,
}

/// A server's answer to `check-auth --s2cs`.
pub struct ServerAnswer {
    pub address: String,
    pub version: String,
    pub identity: String,
}

/// `check-auth`.
pub fn auth_check(check: &AuthCheck) -> Value {
    let mut v = json!({
        "token": {
            "present": check.token_source.is_some(),
            "source": check.token_source,
        },
    });
    if let Some(login) = &check.login {
        v["login"] = json!({
            "scope": login.settings.scope,
            "auth_server": login.settings.auth_server,
            "expires_unix": login.expires_at,
            "refreshable": login.refresh_token.is_some(),
        });
    }
    if let Some(server) = &check.server {
        v["server"] = json!({
            "address": server.address,
            "version": server.version,
            "identity": server.identity,
        });
    }
    v
}

/// Prints `value` as one line of JSON on stdout.
pub fn print(value: &Value) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .map_err(|source| ClientError::Io {
            context: "writing to stdout".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Counters;

    #[test]
    fn a_session_has_every_field_with_nulls_for_what_is_absent() {
        let s = SessionStatus {
            uid: "u1".into(),
            role: "PROD".into(),
            state: "ACTIVE".into(),
            owner: "alice".into(),
            num_conn: 2,
            rate: 0,
            rate_source: "no cap".into(),
            listeners: vec!["10.0.0.1:5100".into()],
            counters: Some(Counters {
                bytes_to_target: 7,
                ..Counters::default()
            }),
            ..SessionStatus::default()
        };
        let v = session(&s);
        assert_eq!(v["uid"], "u1");
        assert_eq!(v["rate_cap_mbps"], Value::Null);
        assert_eq!(v["rate_source"], "no cap");
        assert_eq!(v["counters"]["bytes_to_target"], 7);
        assert_eq!(v["counters"]["udp"]["datagrams_to_target"], 0);
        assert_eq!(v["restore_error"], Value::Null);
        assert_eq!(v["listeners"][0], "10.0.0.1:5100");
        let capped = SessionStatus {
            rate: 5000,
            ..s.clone()
        };
        assert_eq!(session(&capped)["rate_cap_mbps"], 5000);
        assert_eq!(sessions(&[s, capped])["sessions"][1]["rate_cap_mbps"], 5000);
    }

    #[test]
    fn check_auth_says_whether_a_token_exists_and_what_the_server_said() {
        let v = auth_check(&AuthCheck {
            token_source: None,
            login: None,
            server: None,
        });
        assert_eq!(v["token"]["present"], false);
        assert!(v.get("server").is_none());
        let v = auth_check(&AuthCheck {
            token_source: Some("the token file".into()),
            login: None,
            server: Some(ServerAnswer {
                address: "gw:5000".into(),
                version: "1".into(),
                identity: "alice".into(),
            }),
        });
        assert_eq!(v["token"]["present"], true);
        assert_eq!(v["server"]["identity"], "alice");
    }
}
