//! The gateway's part of the TOML configuration file: the `[gateway]` table
//! (and its `admission`, `xdp` and `channel` tables) holds every `s2cs serve`
//! option that is not the control server's, so one file configures the
//! whole daemon. A flag given on the command line wins over the file, the
//! file over the built-in default ([`apply`]).
//!
//! ```toml
//! [gateway]
//! control_listen = "0.0.0.0:5000"
//! data_path = "auto"                 # auto, sockmap, splice, copy
//! metrics_listen = "10.0.0.5:9100"
//! release_grace_secs = 1.0
//! wan_keepalive_secs = 30
//! wan_user_timeout_secs = 60
//! max_relayed_connections = 65536
//! [gateway.admission]
//! max_unauthenticated = 4096
//! max_unauthenticated_per_source = 64
//! handshakes_per_source = 8
//! handshakes_per_source_per_sec = 64
//! [gateway.xdp]
//! iface = "eth1"
//! peers = ["198.51.100.20"]
//! [gateway.channel]
//! mode = "tls"                       # tls, plaintext-after-auth, plain
//! cert = "/etc/scistream/channel.pem"
//! key = "/etc/scistream/channel.key"
//! peer_fingerprints = ["AB:CD:..."]
//! ktls = true
//! ktls_without_rekey = "chacha20"
//! ```
//!
//! Values are parsed with the flags' own parsers, and an error names the
//! key (`[gateway.channel] mode: ...`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::serve::ServeArgs;
use crate::channel::args::KtlsWithoutRekey;

/// `[gateway]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayFile {
    pub control_listen: Option<String>,
    pub data_path: Option<String>,
    pub metrics_listen: Option<String>,
    pub release_grace_secs: Option<f64>,
    pub wan_keepalive_secs: Option<f64>,
    pub wan_user_timeout_secs: Option<f64>,
    pub max_relayed_connections: Option<usize>,
    pub admission: AdmissionFile,
    pub xdp: XdpFile,
    pub channel: ChannelFile,
}

/// `[gateway.admission]`: unauthenticated WAN connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionFile {
    pub max_unauthenticated: Option<usize>,
    pub max_unauthenticated_per_source: Option<usize>,
    pub handshakes_per_source: Option<usize>,
    pub handshakes_per_source_per_sec: Option<u32>,
}

/// `[gateway.xdp]`: the guard of the data ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdpFile {
    pub iface: Option<String>,
    pub peers: Vec<String>,
}

/// `[gateway.channel]`: the link between gateways.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelFile {
    pub mode: Option<String>,
    pub cert_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub peer_fingerprints: Vec<String>,
    pub tls12: Option<bool>,
    pub proof_timeout_secs: Option<f64>,
    /// false = `--no-ktls`.
    pub ktls: Option<bool>,
    pub ktls_without_rekey: Option<String>,
}

/// A bad value in the file, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("[{table}] {key}: {reason}")]
pub struct ConfigFileError {
    pub table: &'static str,
    pub key: &'static str,
    pub reason: String,
}

impl GatewayFile {
    /// The `[gateway]` table of a parsed configuration (none: all defaults).
    pub fn from_table(table: Option<&toml::Table>) -> Result<Self, ConfigFileError> {
        match table {
            None => Ok(GatewayFile::default()),
            Some(t) => t
                .clone()
                .try_into()
                .map_err(|err: toml::de::Error| ConfigFileError {
                    table: "gateway",
                    key: "(table)",
                    reason: err.message().to_owned(),
                }),
        }
    }

    /// What `args` amount to, every value filled (for `s2cs config show`).
    pub fn effective(args: &ServeArgs) -> Self {
        let c = &args.channel;
        GatewayFile {
            control_listen: Some(args.control_listen.to_string()),
            data_path: Some(args.data_path.to_string()),
            metrics_listen: args.metrics_listen.map(|a| a.to_string()),
            release_grace_secs: Some(args.release_grace),
            wan_keepalive_secs: Some(args.wan_keepalive),
            wan_user_timeout_secs: Some(args.wan_user_timeout),
            max_relayed_connections: Some(args.max_relayed_connections),
            admission: AdmissionFile {
                max_unauthenticated: Some(args.max_unauthenticated),
                max_unauthenticated_per_source: Some(args.max_unauthenticated_per_source),
                handshakes_per_source: Some(args.handshakes_per_source),
                handshakes_per_source_per_sec: Some(args.handshakes_per_source_per_sec),
            },
            xdp: XdpFile {
                iface: args.xdp_iface.clone(),
                peers: args.xdp_peer.iter().map(ToString::to_string).collect(),
            },
            channel: ChannelFile {
                mode: Some(c.mode.to_string()),
                cert_dir: c.channel_cert_dir.clone(),
                cert: c.channel_cert.clone(),
                key: c.channel_key.clone(),
                peer_ca: c.channel_peer_ca.clone(),
                peer_fingerprints: c
                    .channel_peer_fingerprint
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                tls12: Some(c.channel_tls12),
                proof_timeout_secs: c.channel_proof_timeout,
                ktls: Some(!c.no_ktls),
                ktls_without_rekey: clap::ValueEnum::to_possible_value(&c.ktls_without_rekey)
                    .map(|v| v.get_name().to_owned()),
            },
        }
    }
}

fn parse<T: FromStr>(
    table: &'static str,
    key: &'static str,
    text: &str,
) -> Result<T, ConfigFileError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|err: T::Err| ConfigFileError {
        table,
        key,
        reason: format!("{text:?}: {err}"),
    })
}

/// Applies `file` to `args` wherever the flag was not given on the command
/// line (`given(id)` says whether it was; ids are the flags' field names).
pub fn apply(
    file: &GatewayFile,
    args: &mut ServeArgs,
    given: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigFileError> {
    const G: &str = "gateway";
    macro_rules! take {
        ($id:literal, $field:expr, $value:expr) => {
            if !given($id)
                && let Some(v) = $value
            {
                $field = v;
            }
        };
    }
    let f = file;
    take!(
        "control_listen",
        args.control_listen,
        f.control_listen
            .as_deref()
            .map(|t| parse::<SocketAddr>(G, "control_listen", t))
            .transpose()?
    );
    take!(
        "data_path",
        args.data_path,
        f.data_path
            .as_deref()
            .map(|t| parse(G, "data_path", t))
            .transpose()?
    );
    take!(
        "metrics_listen",
        args.metrics_listen,
        f.metrics_listen
            .as_deref()
            .map(|t| parse::<SocketAddr>(G, "metrics_listen", t).map(Some))
            .transpose()?
    );
    take!("release_grace", args.release_grace, f.release_grace_secs);
    take!("wan_keepalive", args.wan_keepalive, f.wan_keepalive_secs);
    take!(
        "wan_user_timeout",
        args.wan_user_timeout,
        f.wan_user_timeout_secs
    );
    take!(
        "max_relayed_connections",
        args.max_relayed_connections,
        f.max_relayed_connections
    );
    let a = &f.admission;
    take!(
        "max_unauthenticated",
        args.max_unauthenticated,
        a.max_unauthenticated
    );
    take!(
        "max_unauthenticated_per_source",
        args.max_unauthenticated_per_source,
        a.max_unauthenticated_per_source
    );
    take!(
        "handshakes_per_source",
        args.handshakes_per_source,
        a.handshakes_per_source
    );
    take!(
        "handshakes_per_source_per_sec",
        args.handshakes_per_source_per_sec,
        a.handshakes_per_source_per_sec
    );
    const X: &str = "gateway.xdp";
    take!("xdp_iface", args.xdp_iface, f.xdp.iface.clone().map(Some));
    if !given("xdp_peer") && !f.xdp.peers.is_empty() {
        args.xdp_peer = f
            .xdp
            .peers
            .iter()
            .map(|t| parse(X, "peers", t))
            .collect::<Result<_, _>>()?;
    }
    if !args.xdp_peer.is_empty() && args.xdp_iface.is_none() {
        return Err(ConfigFileError {
            table: X,
            key: "peers",
            reason: "XDP peers need an interface to guard: set iface (or --xdp-iface)".into(),
        });
    }
    const C: &str = "gateway.channel";
    let c = &f.channel;
    let ch = &mut args.channel;
    take!(
        "mode",
        ch.mode,
        c.mode.as_deref().map(|t| parse(C, "mode", t)).transpose()?
    );
    take!(
        "channel_cert_dir",
        ch.channel_cert_dir,
        c.cert_dir.clone().map(Some)
    );
    take!("channel_cert", ch.channel_cert, c.cert.clone().map(Some));
    take!("channel_key", ch.channel_key, c.key.clone().map(Some));
    take!(
        "channel_peer_ca",
        ch.channel_peer_ca,
        c.peer_ca.clone().map(Some)
    );
    if !given("channel_peer_fingerprint") && !c.peer_fingerprints.is_empty() {
        ch.channel_peer_fingerprint = c
            .peer_fingerprints
            .iter()
            .map(|t| parse(C, "peer_fingerprints", t))
            .collect::<Result<_, _>>()?;
    }
    take!("channel_tls12", ch.channel_tls12, c.tls12);
    take!(
        "channel_proof_timeout",
        ch.channel_proof_timeout,
        c.proof_timeout_secs.map(Some)
    );
    take!("no_ktls", ch.no_ktls, c.ktls.map(|on| !on));
    take!(
        "ktls_without_rekey",
        ch.ktls_without_rekey,
        c.ktls_without_rekey
            .as_deref()
            .map(|t| {
                <KtlsWithoutRekey as clap::ValueEnum>::from_str(t, false).map_err(|_| {
                    ConfigFileError {
                        table: C,
                        key: "ktls_without_rekey",
                        reason: format!("{t:?}: expected chacha20 or userspace"),
                    }
                })
            })
            .transpose()?
    );
    Ok(())
}

/// Why `s2cs config check` refused a file.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error(transparent)]
    Serve(Box<super::serve::ServeError>),
    #[error(transparent)]
    Control(Box<control::ControlError>),
    #[error("the XDP guard cannot be set up")]
    Xdp(#[from] crate::xdp::XdpError),
}

impl From<super::serve::ServeError> for CheckError {
    fn from(err: super::serve::ServeError) -> Self {
        CheckError::Serve(Box::new(err))
    }
}

impl From<control::ControlError> for CheckError {
    fn from(err: control::ControlError) -> Self {
        CheckError::Control(Box::new(err))
    }
}

/// Reads the `[gateway]` table of the file `args` names (if any) and applies
/// it under the flags.
pub fn load(args: &mut ServeArgs, given: &dyn Fn(&str) -> bool) -> Result<(), CheckError> {
    let Some(path) = args.server.config.clone() else {
        return Ok(());
    };
    let cfg = control::ServerConfig::from_toml_file(&path)?;
    let file = GatewayFile::from_table(cfg.gateway.as_ref())?;
    apply(&file, args, given)?;
    Ok(())
}

/// `s2cs config check`: everything `s2cs serve` checks before it binds,
/// loads or attaches anything, with no side effect (a self-signed
/// certificate that does not exist yet is not generated). Returns a summary.
pub fn check(args: &ServeArgs) -> Result<String, CheckError> {
    super::serve::check_flags(args)
        .map_err(|reason| super::serve::ServeError::Config { reason })?;
    let cfg = args.server.clone().into_config()?;
    if let Some(auth) = &cfg.auth {
        control::auth::Authenticator::from_config(auth)?;
    }
    if cfg.tls.cert.is_some() {
        control::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
    }
    let channel = args
        .channel
        .settings(cfg.state_dir.as_deref(), cfg.effective_advertise_ip())
        .map_err(super::serve::ServeError::from)?;
    if let Some(iface) = &args.xdp_iface {
        crate::xdp::XdpGuard::preflight(iface, cfg.port_range.first..=cfg.port_range.last)?;
    }
    Ok(format!(
        "control {} (auth {}), session ports {}, data path {}, channel {}{}, XDP {}, metrics {}",
        args.control_listen,
        cfg.auth
            .as_ref()
            .map_or("none", control::auth::AuthConfig::kind),
        cfg.port_range,
        args.data_path,
        args.channel.mode,
        if channel.is_some() {
            " (certificates readable)"
        } else {
            ""
        },
        args.xdp_iface.as_deref().unwrap_or("off"),
        args.metrics_listen
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
    ))
}

/// `s2cs config show`: the effective configuration as TOML, every default
/// filled in and secrets replaced by `<redacted>`.
pub fn show(args: &ServeArgs) -> Result<String, CheckError> {
    let mut cfg = args.server.clone().into_config()?;
    if let Some(control::auth::AuthConfig::Introspection(i)) = cfg.auth.as_mut()
        && i.client_secret.is_some()
    {
        i.client_secret = Some("<redacted>".into());
    }
    let gateway =
        toml::Table::try_from(GatewayFile::effective(args)).map_err(|err| ConfigFileError {
            table: "gateway",
            key: "(table)",
            reason: err.to_string(),
        })?;
    cfg.gateway = Some(gateway);
    toml::to_string(&cfg).map_err(|err| {
        CheckError::File(ConfigFileError {
            table: "(file)",
            key: "(all)",
            reason: err.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use clap::parser::ValueSource;
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

    use super::*;
    use crate::relay::DataPath;
    use crate::session::{ChannelMode, PathChoice};

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// `s2cs serve ARGV` with the file applied the way `s2cs` applies it
    /// (clap's own record of which flags were given: an id that is not a
    /// flag's panics here).
    fn serve(argv: &[&str]) -> Result<ServeArgs, CheckError> {
        let matches = TestCli::command()
            .try_get_matches_from(std::iter::once("s2cs").chain(argv.iter().copied()))
            .expect("flags parse");
        let mut args = TestCli::from_arg_matches(&matches).expect("flags").args;
        load(&mut args, &|id| {
            matches!(matches.value_source(id), Some(ValueSource::CommandLine))
        })?;
        Ok(args)
    }

    const FILE: &str = r#"
[auth]
kind = "none"
[gateway]
control_listen = "127.0.0.1:6000"
data_path = "copy"
metrics_listen = "127.0.0.1:9100"
release_grace_secs = 2.5
wan_keepalive_secs = 10
wan_user_timeout_secs = 20
max_relayed_connections = 77
[gateway.admission]
max_unauthenticated = 11
max_unauthenticated_per_source = 3
handshakes_per_source = 2
handshakes_per_source_per_sec = 5
[gateway.xdp]
iface = "lo"
peers = ["192.0.2.0/24"]
[gateway.channel]
mode = "plaintext-after-auth"
tls12 = true
proof_timeout_secs = 4
ktls = false
ktls_without_rekey = "userspace"
"#;

    fn file_with(dir: &std::path::Path, text: &str) -> String {
        let path = dir.join("s2cs.toml");
        std::fs::write(&path, text).expect("write the file");
        path.display().to_string()
    }

    #[test]
    fn every_gateway_setting_comes_from_the_file_unless_a_flag_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file_with(dir.path(), FILE);
        let args = serve(&["--config", &path]).expect("the file applies");
        assert_eq!(args.control_listen.to_string(), "127.0.0.1:6000");
        assert_eq!(args.data_path, PathChoice::Only(DataPath::Copy));
        assert_eq!(args.metrics_listen.map(|a| a.port()), Some(9100));
        assert_eq!(args.release_grace, 2.5);
        assert_eq!((args.wan_keepalive, args.wan_user_timeout), (10.0, 20.0));
        assert_eq!(args.max_relayed_connections, 77);
        assert_eq!(args.max_unauthenticated, 11);
        assert_eq!(args.max_unauthenticated_per_source, 3);
        assert_eq!(args.handshakes_per_source, 2);
        assert_eq!(args.handshakes_per_source_per_sec, 5);
        assert_eq!(args.xdp_iface.as_deref(), Some("lo"));
        assert_eq!(args.xdp_peer.len(), 1);
        assert_eq!(args.channel.mode, ChannelMode::PlaintextAfterAuth);
        assert!(args.channel.channel_tls12 && args.channel.no_ktls);
        assert_eq!(args.channel.channel_proof_timeout, Some(4.0));
        assert_eq!(args.channel.ktls_without_rekey, KtlsWithoutRekey::Userspace);
        // What show prints reads back as the same settings.
        let shown = GatewayFile::effective(&args);
        assert_eq!(shown.data_path.as_deref(), Some("copy"));
        assert_eq!(shown.channel.ktls, Some(false));

        let args = serve(&[
            "--config",
            &path,
            "--data-path",
            "splice",
            "--channel",
            "tls",
            "--release-grace",
            "0",
        ])
        .expect("flags and file");
        assert_eq!(args.data_path, PathChoice::Only(DataPath::Splice));
        assert_eq!(args.channel.mode, ChannelMode::Tls);
        assert_eq!(args.release_grace, 0.0);
        assert_eq!(args.max_relayed_connections, 77, "the rest from the file");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (
                "[auth]\nkind = \"none\"\n[gateway]\ndata_path = \"warp\"\n",
                "[gateway] data_path",
            ),
            (
                "[auth]\nkind = \"none\"\n[gateway.channel]\nmode = \"tls2\"\n",
                "[gateway.channel] mode",
            ),
            (
                "[auth]\nkind = \"none\"\n[gateway.channel]\nktls_without_rekey = \"maybe\"\n",
                "expected chacha20 or userspace",
            ),
            (
                "[auth]\nkind = \"none\"\n[gateway.xdp]\npeers = [\"10.0.0.0/99\"]\niface = \"lo\"\n",
                "[gateway.xdp] peers",
            ),
            (
                "[auth]\nkind = \"none\"\n[gateway.xdp]\npeers = [\"10.0.0.1\"]\n",
                "need an interface",
            ),
            (
                "[auth]\nkind = \"none\"\n[gateway]\ndata_paht = \"copy\"\n",
                "data_paht",
            ),
        ];
        for (text, named) in cases {
            let path = file_with(dir.path(), text);
            let err = serve(&["--config", &path]).expect_err(text).to_string();
            assert!(err.contains(named), "{text:?} -> {err}");
        }
    }

    #[test]
    fn check_refuses_what_serve_would_and_show_redacts_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file_with(
            dir.path(),
            "[auth]\nkind = \"none\"\n[gateway]\nwan_keepalive_secs = -1\n",
        );
        let args = serve(&["--config", &path]).expect("parses");
        let err = check(&args).expect_err("a negative keepalive");
        assert!(format!("{err:#}").contains("keepalive"), "{err:#}");

        let path = file_with(
            dir.path(),
            &format!(
                "state_dir = \"{}\"\n[auth]\nkind = \"introspection\"\nurl = \"https://idp/introspect\"\nclient_id = \"rs\"\nclient_secret = \"hunter2-very-secret\"\n",
                dir.path().display()
            ),
        );
        let args = serve(&["--config", &path]).expect("parses");
        let summary = check(&args).expect("a valid file");
        assert!(summary.contains("auth introspection"), "{summary}");
        let shown = show(&args).expect("show");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("[gateway.channel]"), "{shown}");
        assert!(shown.contains("data_path = \"auto\""), "{shown}");
        // Nothing was generated by the check.
        assert!(!dir.path().join("tls").exists());
        assert!(!dir.path().join("channel").exists());
    }
}
