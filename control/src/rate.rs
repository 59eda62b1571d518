//! The rate cap of a session: what the client asked, what the operator
//! allows, and which of them is in force ([`RateLimits::decide`]).
//!
//! SciStream's client always sends `rate = 10000` (its default, Mbit/s) and
//! SciStream ignores the field, so an old client's rate is no request at
//! all: it is ignored unless the operator says otherwise
//! (`legacy_client_rate = "honor"`). Our own client asks for a cap only
//! when the user passes `--rate`. Old and new clients are told apart by the
//! data-channel secret: only new clients ask for one. The operator can set a
//! maximum for every session and, per identity, a maximum for each of that
//! identity's sessions; the smallest of what applies is in force, and
//! `s2uc status` shows it with its source.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Identity;

/// What the rate of a client that sends no data-channel secret (SciStream's
/// own, which always sends its default of 10000 Mbit/s) means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LegacyClientRate {
    /// Not a request: SciStream itself ignores the field.
    #[default]
    Ignore,
    /// Enforced as the session's cap, as a new client's `--rate` is.
    Honor,
}

impl LegacyClientRate {
    pub fn as_str(self) -> &'static str {
        match self {
            LegacyClientRate::Ignore => "ignore",
            LegacyClientRate::Honor => "honor",
        }
    }
}

/// The operator's rate settings (`[rates]` in the TOML file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// The most any session may get, in Mbit/s; 0 = no operator maximum.
    pub max_session_mbps: u32,
    /// The most each session of an identity may get, in Mbit/s (overrides
    /// `max_session_mbps` for that identity, upwards or downwards).
    pub identities: BTreeMap<String, u32>,
    /// What an old client's rate means.
    pub legacy_client_rate: LegacyClientRate,
}

/// Where the cap in force came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RateSource {
    /// No cap: the client asked for none and the operator sets none.
    Unlimited,
    /// No cap: an old client's rate was ignored.
    LegacyIgnored { requested_mbps: i32 },
    /// The client's request.
    Client,
    /// The operator's maximum for every session.
    OperatorSession,
    /// The operator's maximum for this identity's sessions.
    OperatorIdentity { identity: String },
}

impl fmt::Display for RateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSource::Unlimited => f.write_str("no cap: none asked, no operator maximum"),
            RateSource::LegacyIgnored { requested_mbps } => write!(
                f,
                "no cap: an old client's rate of {requested_mbps} Mbit/s (SciStream's default) is \
                 ignored (rates.legacy_client_rate = \"ignore\")"
            ),
            RateSource::Client => f.write_str("the client's request (--rate)"),
            RateSource::OperatorSession => {
                f.write_str("the operator's maximum per session (rates.max_session_mbps)")
            }
            RateSource::OperatorIdentity { identity } => write!(
                f,
                "the operator's maximum for {identity}'s sessions (rates.identities)"
            ),
        }
    }
}

/// The cap in force for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Mbit/s; 0 = no cap.
    pub mbps: i32,
    pub source: RateSource,
}

impl RateLimits {
    /// The cap of a session `owner` asks for with `requested` Mbit/s (0 or
    /// less: none); `new_client` if it asked for a data-channel secret.
    pub fn decide(&self, requested: i32, new_client: bool, owner: &Identity) -> RateDecision {
        let honored = new_client || self.legacy_client_rate == LegacyClientRate::Honor;
        let asked = (requested > 0 && honored).then_some(requested);
        let operator = match self.identities.get(owner.0.as_str()) {
            Some(&0) => None,
            Some(&max) => Some((
                max,
                RateSource::OperatorIdentity {
                    identity: owner.0.as_str().to_owned(),
                },
            )),
            None if self.max_session_mbps > 0 => {
                Some((self.max_session_mbps, RateSource::OperatorSession))
            }
            None => None,
        };
        let clamp = |mbps: u32| i32::try_from(mbps).unwrap_or(i32::MAX);
        match (asked, operator) {
            (Some(asked), Some((max, source))) if clamp(max) < asked => RateDecision {
                mbps: clamp(max),
                source,
            },
            (Some(asked), _) => RateDecision {
                mbps: asked,
                source: RateSource::Client,
            },
            (None, Some((max, source))) => RateDecision {
                mbps: clamp(max),
                source,
            },
            (None, None) if requested > 0 && !honored => RateDecision {
                mbps: 0,
                source: RateSource::LegacyIgnored {
                    requested_mbps: requested,
                },
            },
            (None, None) => RateDecision {
                mbps: 0,
                source: RateSource::Unlimited,
            },
        }
    }
}

/// Parses "IDENTITY=MBPS" (the `--identity-max-rate` flag).
pub fn parse_identity_rate(text: &str) -> Result<(String, u32), String> {
    let (identity, mbps) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: expected IDENTITY=MBPS"))?;
    if identity.trim().is_empty() {
        return Err(format!("{text:?}: the identity is empty"));
    }
    let mbps = mbps
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {mbps:?} is not a rate in Mbit/s (0 = no maximum)"))?;
    Ok((identity.trim().to_owned(), mbps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity("alice@anl.gov".into())
    }

    #[test]
    fn an_old_clients_default_is_no_cap_unless_the_operator_honors_it() {
        let limits = RateLimits::default();
        let d = limits.decide(10_000, false, &alice());
        assert_eq!(d.mbps, 0);
        assert_eq!(
            d.source,
            RateSource::LegacyIgnored {
                requested_mbps: 10_000
            }
        );
        assert!(d.source.to_string().contains("10000 Mbit/s"));
        let honor = RateLimits {
            legacy_client_rate: LegacyClientRate::Honor,
            ..RateLimits::default()
        };
        let d = honor.decide(10_000, false, &alice());
        assert_eq!((d.mbps, d.source), (10_000, RateSource::Client));
    }

    #[test]
    fn a_new_client_gets_what_it_asks_and_nothing_when_it_asks_nothing() {
        let limits = RateLimits::default();
        let d = limits.decide(2_500, true, &alice());
        assert_eq!((d.mbps, d.source), (2_500, RateSource::Client));
        let d = limits.decide(0, true, &alice());
        assert_eq!((d.mbps, d.source), (0, RateSource::Unlimited));
        let d = limits.decide(-5, true, &alice());
        assert_eq!(d.mbps, 0);
    }

    #[test]
    fn the_smallest_of_request_and_operator_maximum_is_in_force() {
        let limits = RateLimits {
            max_session_mbps: 40_000,
            ..RateLimits::default()
        };
        let d = limits.decide(0, true, &alice());
        assert_eq!((d.mbps, d.source), (40_000, RateSource::OperatorSession));
        let d = limits.decide(50_000, true, &alice());
        assert_eq!((d.mbps, d.source), (40_000, RateSource::OperatorSession));
        let d = limits.decide(30_000, true, &alice());
        assert_eq!((d.mbps, d.source), (30_000, RateSource::Client));
        // An ignored old client's rate leaves the operator's maximum.
        let d = limits.decide(10_000, false, &alice());
        assert_eq!((d.mbps, d.source), (40_000, RateSource::OperatorSession));
    }

    #[test]
    fn an_identitys_maximum_overrides_the_session_maximum() {
        let mut limits = RateLimits {
            max_session_mbps: 40_000,
            ..RateLimits::default()
        };
        limits.identities.insert("alice@anl.gov".into(), 5_000);
        limits.identities.insert("bob@anl.gov".into(), 0);
        let d = limits.decide(0, true, &alice());
        assert_eq!(d.mbps, 5_000);
        assert!(d.source.to_string().contains("alice@anl.gov"));
        // 0 for an identity: no maximum for it.
        let d = limits.decide(0, true, &Identity("bob@anl.gov".into()));
        assert_eq!((d.mbps, d.source), (0, RateSource::Unlimited));
        // Others keep the session maximum.
        let d = limits.decide(0, true, &Identity("carol@anl.gov".into()));
        assert_eq!(d.mbps, 40_000);
    }

    #[test]
    fn identity_rates_parse_with_clear_errors() {
        assert_eq!(
            parse_identity_rate("alice@anl.gov=2000"),
            Ok(("alice@anl.gov".into(), 2000))
        );
        assert!(
            parse_identity_rate("alice")
                .unwrap_err()
                .contains("IDENTITY=MBPS")
        );
        assert!(parse_identity_rate("=5").unwrap_err().contains("empty"));
        assert!(
            parse_identity_rate("a=fast")
                .unwrap_err()
                .contains("not a rate")
        );
    }
}
