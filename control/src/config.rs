//! Server configuration: a serde TOML file ([`ServerConfig`]) plus the clap
//! flags ([`ServerArgs`]) that override it. The whole configuration is
//! parsed and validated before anything binds.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::allowlist::{AllowList, AllowRule};
use crate::auth::{AuthConfig, IntrospectionConfig};
use crate::errors::ControlError;
use crate::ports::PortRange;
use crate::rate::{LegacyClientRate, RateLimits, parse_identity_rate};

/// Control-channel TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Operator certificate (PEM). With `key`.
    pub cert: Option<PathBuf>,
    /// Operator private key (PEM, mode 0600).
    pub key: Option<PathBuf>,
    /// Where a self-signed certificate is kept (generated on first start)
    /// when no operator certificate is given. Default: `<state_dir>/tls`.
    pub self_signed_dir: Option<PathBuf>,
    /// Extra names/IPs for the self-signed certificate (localhost,
    /// 127.0.0.1 and ::1 are always included).
    pub names: Vec<String>,
    /// If set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// Plaintext control channel. Dangerous: tokens travel in the clear.
    pub dangerous_disable: bool,
}

/// The whole server configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listener ports handed to sessions, e.g. "5100-5199".
    pub port_range: PortRange,
    /// IP the session listeners bind to.
    pub listener_ip: IpAddr,
    /// IP advertised to peers in `listeners` (must be reachable by them).
    /// Default: `listener_ip`, or 127.0.0.1 when that is unspecified.
    pub advertise_ip: Option<IpAddr>,
    /// How long a `req` waits for its `hello` (seconds).
    pub hello_timeout_secs: f64,
    /// How long a session may stay READY without `update` (seconds).
    pub ready_timeout_secs: f64,
    /// Maximum number of live sessions.
    pub max_sessions: usize,
    /// Maximum `num_conn` of one session.
    pub max_num_conn: u32,
    /// Authentication; must be chosen explicitly.
    pub auth: Option<AuthConfig>,
    /// Identities that may act on every session.
    pub admins: Vec<String>,
    /// Allowed update targets (deny by default).
    pub allow: AllowList,
    /// Accept old clients that send no data-channel secret (the secret is
    /// then derived from the uid, which is weak; a warning is logged).
    pub allow_legacy_secret: bool,
    /// Where sessions are persisted; none = no restart safety.
    pub state_dir: Option<PathBuf>,
    /// Control-channel TLS.
    pub tls: TlsConfig,
    /// gRPC calls served at once; more are refused (RESOURCE_EXHAUSTED).
    pub max_concurrent_calls: usize,
    /// Open `watch` streams of one identity.
    pub max_watch_per_identity: usize,
    /// Open `watch` streams in all.
    pub max_watch_total: usize,
    /// Largest request message (bytes, as encoded).
    pub max_message_bytes: usize,
    /// How long a caller waits for a call to be served (seconds): the
    /// caller then gets RESOURCE_EXHAUSTED, while a `hello`, `update` or
    /// `release` still runs to its end, so nothing is left half done. A
    /// `req` waiting for its hello is bounded by `hello_timeout_secs`.
    pub request_timeout_secs: f64,
    /// Rate caps: the operator's maxima and what an old client's rate means.
    pub rates: RateLimits,
    /// The gateway daemon's own settings (`[gateway]`: data path, channel,
    /// XDP, metrics, admission limits), read and checked by `s2cs`; opaque
    /// to the control server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<toml::Table>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port_range: PortRange {
                first: 5100,
                last: 5199,
            },
            listener_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise_ip: None,
            hello_timeout_secs: 30.0,
            ready_timeout_secs: 600.0,
            max_sessions: 4096,
            max_num_conn: 64,
            auth: None,
            admins: Vec::new(),
            allow: AllowList::default(),
            allow_legacy_secret: true,
            state_dir: None,
            tls: TlsConfig::default(),
            max_concurrent_calls: 256,
            max_watch_per_identity: 8,
            max_watch_total: 256,
            max_message_bytes: 64 * 1024,
            request_timeout_secs: 60.0,
            rates: RateLimits::default(),
            gateway: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self, ControlError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ControlError::io(format!("reading config {}", path.display()), e))?;
        Self::from_toml_str(&text).map_err(|e| ControlError::Config {
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ControlError> {
        toml::from_str(text).map_err(|e| ControlError::Config {
            reason: e.to_string(),
        })
    }

    /// The IP put in advertised listener addresses.
    pub fn effective_advertise_ip(&self) -> IpAddr {
        match self.advertise_ip {
            Some(ip) => ip,
            None if self.listener_ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => self.listener_ip,
        }
    }

    /// The hello timeout as a Duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.hello_timeout_secs.max(0.0))
    }

    /// The request timeout as a Duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs.max(0.0))
    }

    /// The ready timeout as a Duration.
    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.ready_timeout_secs.max(0.0))
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<(), ControlError> {
        let bad = |reason: String| Err(ControlError::Config { reason });
        if self.auth.is_none() {
            return bad("no authentication mode chosen: set [auth] (kind = \"token_file\", \"introspection\" or \"none\"), or pass --token-file, --introspect-url or --no-auth".into());
        }
        if !(self.hello_timeout_secs.is_finite() && self.hello_timeout_secs > 0.0) {
            return bad(format!(
                "hello_timeout_secs must be > 0, got {}",
                self.hello_timeout_secs
            ));
        }
        if !(self.ready_timeout_secs.is_finite() && self.ready_timeout_secs > 0.0) {
            return bad(format!(
                "ready_timeout_secs must be > 0, got {}",
                self.ready_timeout_secs
            ));
        }
        if !(self.request_timeout_secs.is_finite()
            && self.request_timeout_secs > 0.0
            && self.request_timeout_secs <= 86_400.0)
        {
            return bad(format!(
                "request_timeout_secs must be > 0 and at most 86400, got {}",
                self.request_timeout_secs
            ));
        }
        if self.max_num_conn == 0 || self.max_sessions == 0 {
            return bad("max_num_conn and max_sessions must be at least 1".into());
        }
        if self.max_concurrent_calls == 0
            || self.max_watch_per_identity == 0
            || self.max_watch_total == 0
        {
            return bad(
                "max_concurrent_calls, max_watch_per_identity and max_watch_total must be at least 1"
                    .into(),
            );
        }
        if self.max_message_bytes < 1024 {
            return bad(format!(
                "max_message_bytes must be at least 1024, got {}",
                self.max_message_bytes
            ));
        }
        if self.rates.identities.keys().any(|k| k.trim().is_empty()) {
            return bad("rates.identities has an empty identity".into());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key must be given together".into());
        }
        if self.advertise_ip.is_none() && self.listener_ip.is_unspecified() {
            tracing::warn!(
                "advertise_ip is not set and listener_ip is unspecified: advertising 127.0.0.1, which remote peers cannot reach; set advertise_ip"
            );
        }
        if self.allow.0.is_empty() {
            tracing::warn!(
                "the target allow-list is empty: every update will be refused (deny by default); add allow rules"
            );
        }
        Ok(())
    }
}

/// Command-line flags for a control server; `s2cs` flattens these into its
/// own clap parser. Flags override the TOML file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listener port range, e.g. 5100-5199.
    #[arg(long)]
    pub port_range: Option<PortRange>,
    /// IP the session listeners bind to.
    #[arg(long, alias = "listener_ip")]
    pub listener_ip: Option<IpAddr>,
    /// IP advertised to peers in listener addresses.
    #[arg(long)]
    pub advertise_ip: Option<IpAddr>,
    /// Seconds a req waits for its hello.
    #[arg(long)]
    pub hello_timeout: Option<f64>,
    /// Seconds a session may stay READY without update.
    #[arg(long)]
    pub ready_timeout: Option<f64>,
    /// Disable authentication (local tests only).
    #[arg(long, conflicts_with_all = ["token_file", "introspect_url"])]
    pub no_auth: bool,
    /// Token file ("IDENTITY TOKEN" per line, mode 0600).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// OAuth2 introspection endpoint (RFC 7662).
    #[arg(long, requires = "client_id")]
    pub introspect_url: Option<String>,
    /// Client id for introspection.
    #[arg(long)]
    pub client_id: Option<String>,
    /// File holding the client secret for introspection (mode 0600).
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
    /// Scope the tokens must carry.
    #[arg(long)]
    pub required_scope: Option<String>,
    /// Audience the tokens must be issued for (the introspection answer's
    /// `aud`), e.g. this resource server's name.
    #[arg(long, requires = "introspect_url")]
    pub required_audience: Option<String>,
    /// CA certificates (PEM) to trust for the introspection endpoint
    /// besides the web PKI.
    #[arg(long, requires = "introspect_url", value_name = "FILE")]
    pub introspect_ca: Option<PathBuf>,
    /// Admin identity (repeatable).
    #[arg(long = "admin")]
    pub admins: Vec<String>,
    /// Allowed target "NET/PREFIX[:PORTS]" (repeatable).
    #[arg(long = "allow")]
    pub allow: Vec<AllowRule>,
    /// Refuse old clients that send no data-channel secret.
    #[arg(long)]
    pub forbid_legacy_secret: bool,
    /// Directory for persisted sessions and the self-signed certificate.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Control-channel certificate (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Control-channel private key (PEM, mode 0600).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra name or IP for the self-signed certificate (repeatable).
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// gRPC calls served at once (default 256); more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N")]
    pub max_concurrent_calls: Option<usize>,
    /// Open `watch` streams of one identity (default 8).
    #[arg(long, value_name = "N")]
    pub max_watch_per_identity: Option<usize>,
    /// Open `watch` streams in all (default 256).
    #[arg(long, value_name = "N")]
    pub max_watch: Option<usize>,
    /// Largest request message in bytes (default 65536).
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Seconds a caller waits for a call before RESOURCE_EXHAUSTED (default
    /// 60); a started hello, update or release still completes.
    #[arg(long, value_name = "SECS")]
    pub request_timeout: Option<f64>,
    /// The most any session may get, in Mbit/s (default 0: no maximum).
    #[arg(long, value_name = "MBPS")]
    pub max_session_rate: Option<u32>,
    /// The most each session of IDENTITY may get, in Mbit/s (repeatable;
    /// overrides --max-session-rate for that identity; 0: no maximum).
    #[arg(long = "identity-max-rate", value_name = "IDENTITY=MBPS", value_parser = parse_identity_rate)]
    pub identity_max_rates: Vec<(String, u32)>,
    /// What the rate of an old client (one that sends no data-channel
    /// secret, e.g. SciStream's, which always sends 10000) means (default
    /// ignore, as SciStream does).
    #[arg(long, value_name = "MEANING")]
    pub legacy_client_rate: Option<LegacyClientRate>,
}

impl ServerArgs {
    /// The TOML file (if any) with the flags applied on top, validated.
    pub fn into_config(self) -> Result<ServerConfig, ControlError> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::from_toml_file(p)?,
            None => ServerConfig::default(),
        };
        if let Some(v) = self.port_range {
            c.port_range = v;
        }
        if let Some(v) = self.listener_ip {
            c.listener_ip = v;
        }
        if let Some(v) = self.advertise_ip {
            c.advertise_ip = Some(v);
        }
        if let Some(v) = self.hello_timeout {
            c.hello_timeout_secs = v;
        }
        if let Some(v) = self.ready_timeout {
            c.ready_timeout_secs = v;
        }
        if self.no_auth {
            c.auth = Some(AuthConfig::None);
        }
        if let Some(p) = self.token_file {
            c.auth = Some(AuthConfig::TokenFile { path: p });
        }
        if let Some(url) = self.introspect_url {
            c.auth = Some(AuthConfig::Introspection(IntrospectionConfig {
                url,
                client_id: self.client_id.unwrap_or_default(),
                client_secret: None,
                client_secret_file: self.client_secret_file,
                required_scope: self.required_scope,
                required_audience: self.required_audience,
                cache_max_secs: 300,
                ca_file: self.introspect_ca,
            }));
        }
        c.admins.extend(self.admins);
        c.allow.0.extend(self.allow);
        if self.forbid_legacy_secret {
            c.allow_legacy_secret = false;
        }
        if let Some(d) = self.state_dir {
            c.state_dir = Some(d);
        }
        if let Some(p) = self.tls_cert {
            c.tls.cert = Some(p);
        }
        if let Some(p) = self.tls_key {
            c.tls.key = Some(p);
        }
        c.tls.names.extend(self.tls_names);
        if let Some(p) = self.client_ca {
            c.tls.client_ca = Some(p);
        }
        if let Some(n) = self.max_concurrent_calls {
            c.max_concurrent_calls = n;
        }
        if let Some(n) = self.max_watch_per_identity {
            c.max_watch_per_identity = n;
        }
        if let Some(n) = self.max_watch {
            c.max_watch_total = n;
        }
        if let Some(n) = self.max_message_bytes {
            c.max_message_bytes = n;
        }
        if let Some(secs) = self.request_timeout {
            c.request_timeout_secs = secs;
        }
        if let Some(mbps) = self.max_session_rate {
            c.rates.max_session_mbps = mbps;
        }
        c.rates.identities.extend(self.identity_max_rates);
        if let Some(meaning) = self.legacy_client_rate {
            c.rates.legacy_client_rate = meaning;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_roundtrip() {
        let text = r#"
port_range = "6000-6010"
listener_ip = "127.0.0.1"
hello_timeout_secs = 5
allow = ["127.0.0.0/8:1-65535", "::1/128"]
admins = ["root"]
[auth]
kind = "token_file"
path = "/etc/scistream/tokens"
[tls]
names = ["gw.example.org"]
"#;
        let c = ServerConfig::from_toml_str(text).unwrap();
        assert_eq!(c.port_range.first, 6000);
        assert_eq!(c.allow.0.len(), 2);
        assert!(matches!(c.auth, Some(AuthConfig::TokenFile { .. })));
        c.validate().unwrap();
        let back = toml::to_string(&c).unwrap();
        assert_eq!(ServerConfig::from_toml_str(&back).unwrap(), c);
    }

    #[test]
    fn rates_come_from_the_file_and_flags_override_them() {
        let text = r#"
[auth]
kind = "none"
[rates]
max_session_mbps = 40000
legacy_client_rate = "honor"
[rates.identities]
"alice@anl.gov" = 5000
"#;
        let c = ServerConfig::from_toml_str(text).unwrap();
        assert_eq!(c.rates.max_session_mbps, 40_000);
        assert_eq!(c.rates.legacy_client_rate, LegacyClientRate::Honor);
        assert_eq!(c.rates.identities.get("alice@anl.gov"), Some(&5_000));
        assert_eq!(
            ServerConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap(),
            c
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s2cs.toml");
        std::fs::write(&file, text).unwrap();
        let args = ServerArgs {
            config: Some(file),
            max_session_rate: Some(0),
            identity_max_rates: vec![("alice@anl.gov".into(), 7_000)],
            legacy_client_rate: Some(LegacyClientRate::Ignore),
            ..ServerArgs::default()
        };
        let c = args.into_config().unwrap();
        assert_eq!(c.rates.max_session_mbps, 0);
        assert_eq!(c.rates.identities.get("alice@anl.gov"), Some(&7_000));
        assert_eq!(c.rates.legacy_client_rate, LegacyClientRate::Ignore);
        let err = ServerConfig::from_toml_str("[rates]\nlegacy_client_rate = \"maybe\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("legacy_client_rate") || err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn auth_must_be_explicit_and_unknown_keys_fail() {
        assert!(ServerConfig::default().validate().is_err());
        assert!(ServerConfig::from_toml_str("bogus = 1").is_err());
    }
}
