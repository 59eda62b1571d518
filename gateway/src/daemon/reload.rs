//! `s2cs serve` on SIGHUP (`systemctl reload s2cs`): reads the
//! configuration file again, under the same command-line flags as at start
//! (they still win), and hands the result to the control server's reload
//! ([`control::live`]): the token file, the allow-list and the rate limits
//! change for what starts from now on, and running sessions and streams go
//! on untouched. The data channel's certificate and key files are read
//! again too: replaced in place, they are presented by every handshake
//! that starts afterwards (rotation; established connections keep theirs).
//! A file that changes anything else (ports, addresses,
//! certificates, the `[gateway]` table...) or does not parse is refused as
//! a whole, naming the keys, and the gateway keeps running as it was.
use std::collections::HashSet;
use std::sync::Arc;

use control::ServerHandle;

use super::config_file;
use super::serve::{ServeArgs, control_config};
use crate::channel::identity::ChannelIdentity;
use crate::error_chain::error_chain;

/// What a reload needs: the flags as given, before the file was applied.
#[derive(Clone, Debug)]
pub struct Reloader {
    flags: ServeArgs,
    given: HashSet<String>,
}

impl Reloader {
    /// `flags` are `serve`'s arguments before the configuration file was
    /// applied; `given` the ids of the flags given on the command line.
    pub fn new(flags: ServeArgs, given: HashSet<String>) -> Reloader {
        Reloader { flags, given }
    }

    /// Reads the file (and the data channel's certificate files, when
    /// `channel` is given) again and reloads `server`; returns what changed,
    /// or why nothing did. Everything is read and checked before anything
    /// is swapped in.
    pub fn reload(
        &self,
        server: &ServerHandle,
        channel: Option<&ChannelIdentity>,
    ) -> Result<String, String> {
        let Some(file) = self.flags.server.config.clone() else {
            return Err("no --config file to read again: nothing to reload".into());
        };
        let mut args = self.flags.clone();
        config_file::load(&mut args, &|id| self.given.contains(id)).map_err(|e| error_chain(&e))?;
        let cfg = control_config(&args).map_err(|e| error_chain(&e))?;
        let certificate = channel
            .map(ChannelIdentity::load)
            .transpose()
            .map_err(|e| format!("the data channel's certificate: {}", error_chain(&e)))?;
        let done = server.reload(&cfg).map_err(|e| error_chain(&e))?;
        let mut summary = if done.changed.is_empty() {
            format!(
                "{}: token file read again; allow-list and rate limits unchanged",
                file.display()
            )
        } else {
            format!(
                "{}: token file read again; changed: {}",
                file.display(),
                done.changed.join(", ")
            )
        };
        if let Some((before, after)) = &done.control_certificate {
            if before == after {
                summary.push_str(&format!("; control certificate unchanged ({after})"));
            } else {
                summary.push_str(&format!(
                    "; control certificate rotated: new connections get {after} (was {before})"
                ));
            }
        }
        if let (Some(identity), Some(certificate)) = (channel, certificate) {
            let (before, after) = identity.install(certificate);
            if before == after {
                summary.push_str(&format!("; data-channel certificate unchanged ({after})"));
            } else {
                summary.push_str(&format!(
                    "; data-channel certificate rotated: new connections present {after} (was {before})"
                ));
            }
        }
        Ok(summary)
    }

    /// Starts watching SIGHUP now, so that one arriving while the gateway
    /// starts is kept for later instead of ending the process (its default
    /// action). None if the handler cannot be installed (said in the log).
    pub fn watch_sighup() -> Option<tokio::signal::unix::Signal> {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGHUP: reloading the configuration needs a restart");
                None
            }
        }
    }

    /// Reloads on every SIGHUP from `hangups` until the process ends; each
    /// outcome is logged.
    pub async fn on_sighup(
        self,
        mut hangups: tokio::signal::unix::Signal,
        server: ServerHandle,
        channel: Option<Arc<ChannelIdentity>>,
    ) {
        while hangups.recv().await.is_some() {
            match self.reload(&server, channel.as_deref()) {
                Ok(summary) => tracing::info!("configuration reloaded: {summary}"),
                Err(why) => {
                    tracing::error!("configuration NOT reloaded, the gateway runs as before: {why}")
                }
            }
        }
    }
}
