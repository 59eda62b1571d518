//! The session state machine: `Requested -(hello)-> Ready -(update)-> Active`,
//! and `release` from any live state to `Released`. Calls out of order are
//! refused with a hint saying what the client should do instead.
//!
//! `Restoring` is a persisted READY or ACTIVE session that could not be
//! brought back after a restart (a port is taken, say): it keeps its file
//! and its ports, is retried until it comes back, and may only be released.
//! It is never written to disk (the file keeps the persisted state).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionState {
    /// `req` arrived; listeners are bound; waiting for `hello`.
    #[serde(rename = "REQUESTED")]
    Requested,
    /// `hello` arrived; waiting for `update`.
    #[serde(rename = "READY")]
    Ready,
    /// `update` arrived; the data plane relays.
    #[serde(rename = "ACTIVE")]
    Active,
    /// `release` arrived (terminal; released sessions leave the table).
    #[serde(rename = "RELEASED")]
    Released,
    /// Persisted, but not yet restored after a restart (retried).
    #[serde(rename = "RESTORING")]
    Restoring,
}

/// The calls that move a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `hello`
    Hello,
    /// `update`
    Update,
    /// `release`
    Release,
}

impl Call {
    /// The method name.
    pub fn name(self) -> &'static str {
        match self {
            Call::Hello => "hello",
            Call::Update => "update",
            Call::Release => "release",
        }
    }
}

impl SessionState {
    /// Upper-case name, as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Requested => "REQUESTED",
            SessionState::Ready => "READY",
            SessionState::Active => "ACTIVE",
            SessionState::Released => "RELEASED",
            SessionState::Restoring => "RESTORING",
        }
    }

    /// The state after `call`, or a hint why the call is out of order.
    pub fn next(self, call: Call) -> Result<SessionState, &'static str> {
        use SessionState::*;
        match (self, call) {
            (Requested, Call::Hello) => Ok(Ready),
            (Ready, Call::Update) => Ok(Active),
            (Requested | Ready | Active | Restoring, Call::Release) => Ok(Released),
            (Restoring, _) => Err(
                "the session is being restored after a gateway restart (`s2uc status` says why it is not back yet); wait for it or release it",
            ),
            (Ready | Active, Call::Hello) => Err("hello was already received for this session"),
            (Requested, Call::Update) => {
                Err("send hello first (req is still waiting for the application's hello)")
            }
            (Active, Call::Update) => Err(
                "the session is already active; release it and request a new one to change targets",
            ),
            (Released, _) => Err("the session was released"),
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionState::*;

    #[test]
    fn happy_path() {
        let s = Requested.next(Call::Hello).unwrap();
        assert_eq!(s, Ready);
        let s = s.next(Call::Update).unwrap();
        assert_eq!(s, Active);
        assert_eq!(s.next(Call::Release).unwrap(), Released);
    }

    #[test]
    fn out_of_order() {
        assert!(Requested.next(Call::Update).is_err());
        assert!(Ready.next(Call::Hello).is_err());
        assert!(Active.next(Call::Update).is_err());
        assert!(Active.next(Call::Hello).is_err());
        assert!(Released.next(Call::Release).is_err());
        assert!(Requested.next(Call::Release).is_ok());
        assert!(Restoring.next(Call::Hello).is_err());
        assert!(Restoring.next(Call::Update).is_err());
        assert_eq!(Restoring.next(Call::Release).unwrap(), Released);
    }
}
