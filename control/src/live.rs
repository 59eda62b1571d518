//! What the control server changes while it serves, without dropping a
//! session (`s2cs` does it on SIGHUP): the authenticator (the token file is
//! read again; introspection settings), the target allow-list and the rate
//! limits. Everything else in a [`ServerConfig`] (ports, addresses, the
//! state directory, certificates, timeouts, limits on calls, the
//! `[gateway]` table) needs a restart: a reload that changes any of it is
//! refused as a whole, naming each such key, and nothing changes.
//!
//! A reload applies to what starts after it: calls authenticate with the
//! new tokens, `update` checks the new allow-list, `req` takes the new rate
//! limits; running sessions and their streams go on as they were.
use std::sync::{Arc, Mutex, RwLock};

use crate::allowlist::AllowList;
use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::errors::ControlError;
use crate::rate::RateLimits;

/// The top-level keys of the configuration that a reload may change.
pub const LIVE_KEYS: [&str; 3] = ["auth", "allow", "rates"];

/// The settings a reload replaces, as one unit.
pub(crate) struct LiveSettings {
    pub auth: Authenticator,
    pub allow: AllowList,
    pub rates: RateLimits,
}

impl LiveSettings {
    /// Builds them from `cfg` (reads the token file, checks files).
    pub fn from_config(cfg: &ServerConfig) -> Result<LiveSettings, ControlError> {
        let auth = cfg.auth.as_ref().ok_or_else(|| ControlError::Config {
            reason: "no authentication mode chosen".into(),
        })?;
        Ok(LiveSettings {
            auth: Authenticator::from_config(auth)?,
            allow: cfg.allow.clone(),
            rates: cfg.rates.clone(),
        })
    }
}

/// The current live settings, swapped whole by a reload, and the
/// configuration they came from (what the next reload is compared with).
pub(crate) struct Live {
    settings: RwLock<Arc<LiveSettings>>,
    running: Mutex<ServerConfig>,
}

impl Live {
    pub fn new(settings: LiveSettings, running: ServerConfig) -> Live {
        Live {
            settings: RwLock::new(Arc::new(settings)),
            running: Mutex::new(running),
        }
    }

    /// The settings now (a call keeps the ones it started with).
    pub fn current(&self) -> Arc<LiveSettings> {
        match self.settings.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, ServerConfig> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replace(&self, settings: LiveSettings) {
        let settings = Arc::new(settings);
        match self.settings.write() {
            Ok(mut guard) => *guard = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
    }
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The live keys whose value differs from the running one (the token
    /// file is read again even when its path is the same).
    pub changed: Vec<String>,
    /// The control certificate's fingerprints before and after (the same
    /// when the files did not change); None without TLS.
    pub control_certificate: Option<(String, String)>,
}

/// Every dotted key whose value differs between `running` and `new`
/// (as TOML: `port_range`, `tls.cert`, `gateway.xdp.iface`).
pub fn changed_keys(running: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let as_value = |cfg: &ServerConfig| toml::Value::try_from(cfg).ok();
    let mut out = Vec::new();
    match (as_value(running), as_value(new)) {
        (Some(a), Some(b)) => diff("", &a, &b, &mut out),
        _ => out.push("(the configuration cannot be compared)".to_owned()),
    }
    out
}

fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// Checks `new` against the running configuration and swaps the live
/// settings in; refused as a whole (nothing changed) if a key that needs a
/// restart differs or `new` is invalid.
pub(crate) fn reload(live: &Live, new: &ServerConfig) -> Result<Reloaded, ControlError> {
    new.validate()?;
    // One reload at a time: the comparison and the swap go together.
    let mut running = live.running();
    let changed = changed_keys(&running, new);
    let (live_changed, fixed): (Vec<String>, Vec<String>) = changed
        .into_iter()
        .partition(|key| LIVE_KEYS.contains(&key.split('.').next().unwrap_or(key)));
    if !fixed.is_empty() {
        return Err(ControlError::Config {
            reason: format!(
                "{} cannot change while the gateway serves; nothing was reloaded (restart the \
                 gateway to apply them, or undo them and reload; live: {})",
                fixed.join(", "),
                LIVE_KEYS.join(", ")
            ),
        });
    }
    let settings = LiveSettings::from_config(new)?;
    live.replace(settings);
    *running = new.clone();
    let mut changed: Vec<String> = live_changed
        .iter()
        .map(|k| k.split('.').next().unwrap_or(k).to_owned())
        .collect();
    changed.dedup();
    Ok(Reloaded {
        changed,
        control_certificate: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;

    fn config() -> ServerConfig {
        ServerConfig {
            auth: Some(AuthConfig::None),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn changed_keys_are_named_with_their_tables() {
        let a = config();
        let mut b = config();
        assert!(changed_keys(&a, &b).is_empty());
        b.max_sessions += 1;
        b.tls.names.push("gw.example.org".into());
        b.rates.max_session_mbps = 100;
        assert_eq!(
            changed_keys(&a, &b),
            vec!["max_sessions", "rates.max_session_mbps", "tls.names"]
        );
    }

    #[test]
    fn a_reload_changing_a_fixed_key_is_refused_whole() {
        let running = config();
        let live = Live::new(
            LiveSettings::from_config(&running).unwrap(),
            running.clone(),
        );
        let mut new = config();
        new.rates.max_session_mbps = 100;
        new.max_sessions = 1;
        let err = reload(&live, &new).unwrap_err().to_string();
        assert!(
            err.contains("max_sessions cannot change while the gateway serves"),
            "{err}"
        );
        assert!(err.contains("nothing was reloaded"), "{err}");
        assert_eq!(live.current().rates.max_session_mbps, 0, "nothing changed");
        new.max_sessions = running.max_sessions;
        let done = reload(&live, &new).unwrap();
        assert_eq!(done.changed, vec!["rates"]);
        assert_eq!(live.current().rates.max_session_mbps, 100);
        // Compared with what was reloaded, not with the start.
        assert!(reload(&live, &new).unwrap().changed.is_empty());
    }

    #[test]
    fn an_invalid_reload_changes_nothing() {
        let running = config();
        let live = Live::new(
            LiveSettings::from_config(&running).unwrap(),
            running.clone(),
        );
        let mut new = config();
        new.rates.max_session_mbps = 100;
        new.auth = Some(AuthConfig::TokenFile {
            path: "/nonexistent/tokens".into(),
        });
        let err = reload(&live, &new).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tokens"), "{err}");
        assert_eq!(live.current().rates.max_session_mbps, 0);
        assert_eq!(*live.running(), running);
    }
}
