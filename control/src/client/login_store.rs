//! The logins of `s2uc login`: one [`Login`] per scope in a JSON file of
//! mode 0600 (`$HOME/.scistream/s2uc-logins.json` by default), written
//! atomically; read only when it is private to its owner.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientError;
use super::login::Login;
use super::token::write_private_file;

/// Default store: `$HOME/.scistream/s2uc-logins.json`.
pub fn default_login_store() -> PathBuf {
    super::token::default_token_file().with_file_name("s2uc-logins.json")
}

/// The logins on file, by scope.
#[derive(Default, Serialize, Deserialize)]
pub struct LoginStore {
    /// Scope -> login.
    pub logins: BTreeMap<String, Login>,
}

impl LoginStore {
    /// Reads the store; an absent file is an empty store.
    pub fn load(path: &Path) -> Result<LoginStore, ClientError> {
        if !path.exists() {
            return Ok(LoginStore::default());
        }
        crate::auth::check_private_file(path, "login store")
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Io {
            context: format!("reading the login store {}", path.display()),
            source: e,
        })?;
        LoginStore::from_json(&text).map_err(|e| {
            ClientError::Invalid(format!(
                "the login store {} does not parse ({e}): remove it and run s2uc login",
                path.display()
            ))
        })
    }

    /// The store in `text` (the file's contents).
    pub fn from_json(text: &str) -> Result<LoginStore, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The store as the file holds it.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Writes the store (mode 0600); an empty store removes the file.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        if self.logins.is_empty() {
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ClientError::Io {
                    context: format!("removing {}", path.display()),
                    source: e,
                }),
            };
        }
        let text = self
            .to_json()
            .map_err(|e| ClientError::Invalid(format!("cannot encode the login store: {e}")))?;
        write_private_file(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::client::login::OAuthSettings;

    #[test]
    fn round_trip_private_and_removed_when_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/s2uc-logins.json");
        let mut store = LoginStore::load(&path).expect("absent is empty");
        assert!(store.logins.is_empty());
        let login = Login {
            settings: OAuthSettings::default(),
            access_token: "at".into(),
            refresh_token: Some("rt".into()),
            expires_at: Some(42),
        };
        store
            .logins
            .insert(login.settings.scope.clone(), login.clone());
        store.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = LoginStore::load(&path).expect("load");
        assert_eq!(again.logins.get(&login.settings.scope), Some(&login));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = LoginStore::load(&path)
            .err()
            .expect("a readable store is refused");
        assert!(e.to_string().contains("login store"), "{e}");

        LoginStore::default().save(&path).expect("empty");
        assert!(!path.exists());
    }
}
