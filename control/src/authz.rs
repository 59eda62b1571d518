//! Authorization: a session belongs to the identity that created it; only
//! that identity or a configured admin may hello, update, release or query it.

use std::collections::HashSet;

use crate::errors::ControlError;
use crate::types::{Identity, SessionId};

/// The authorization policy.
#[derive(Clone, Debug, Default)]
pub struct Authz {
    admins: HashSet<String>,
}

impl Authz {
    /// A policy with these admin identities.
    pub fn new<I: IntoIterator<Item = String>>(admins: I) -> Self {
        Authz {
            admins: admins.into_iter().collect(),
        }
    }

    /// Whether `who` is an admin.
    pub fn is_admin(&self, who: &Identity) -> bool {
        self.admins.contains(&who.0)
    }

    /// Whether `who` may see this owner's sessions.
    pub fn may_access(&self, who: &Identity, owner: &Identity) -> bool {
        who == owner || self.is_admin(who)
    }

    /// Checks that `who` may perform `action` on the session `uid` owned by `owner`.
    pub fn check(
        &self,
        who: &Identity,
        owner: &Identity,
        uid: &SessionId,
        action: &str,
    ) -> Result<(), ControlError> {
        if self.may_access(who, owner) {
            Ok(())
        } else {
            Err(ControlError::PermissionDenied {
                reason: format!(
                    "{who} may not {action} session {uid}: it belongs to another identity"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_admin() {
        let a = Authz::new(["root".to_string()]);
        let uid = SessionId::parse("s").unwrap();
        let alice = Identity("alice".into());
        let bob = Identity("bob".into());
        let root = Identity("root".into());
        assert!(a.check(&alice, &alice, &uid, "release").is_ok());
        assert!(a.check(&root, &alice, &uid, "release").is_ok());
        let e = a.check(&bob, &alice, &uid, "release").unwrap_err();
        assert!(e.to_string().contains("belongs to another identity"));
    }
}
