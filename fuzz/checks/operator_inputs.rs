//! Every text input the operator or a control client gives the gateway,
//! parsed from the same string: session uids, address lists (as `hello` and
//! `update` carry them), allow rules, port ranges, XDP peer nets, channel
//! certificate fingerprints, roles, data paths, channel modes and
//! per-identity rate maxima (`--identity-max-rate IDENTITY=MBPS`).
//!
//! Checked on every input: nothing panics; every value that parses prints
//! as text that parses back to the same value (so what `s2uc status`, the
//! logs and the persisted files show is what was configured); a uid that
//! parses is a safe file name.

use std::fmt::Display;
use std::str::FromStr;

use control::allowlist::AllowRule;
use control::ports::PortRange;
use control::rate::parse_identity_rate;
use control::types::{Role, SessionId, parse_addr_list};
use gateway::channel::Fingerprint;
use gateway::relay::DataPath;
use gateway::session::{ChannelMode, PathChoice};
use gateway::xdp::PeerNet;

/// `text` parses as `T` only if its printed form parses back to the same value.
fn round_trips<T>(text: &str)
where
    T: FromStr + Display + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = text.parse::<T>() {
        let printed = value.to_string();
        match printed.parse::<T>() {
            Ok(again) => assert_eq!(again, value, "{text:?} printed as {printed:?}"),
            Err(_) => panic!("{text:?} parsed, but its printed form {printed:?} does not"),
        }
    }
}

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Ok(text) =
        <&str as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return false;
    };
    if let Ok(uid) = SessionId::parse(text) {
        let s = uid.as_str();
        assert!(!s.is_empty() && !s.starts_with('.') && !s.contains('/'));
        assert_eq!(SessionId::parse(&uid.to_string()).ok(), Some(uid));
    }
    if let Ok(role) = Role::parse(text) {
        assert_eq!(Role::parse(role.as_str()).ok(), Some(role));
    }
    // As one element and as the elements of a list.
    let items: Vec<&str> = text.split('\n').collect();
    for list in [&[text][..], &items[..]] {
        if let Ok(addrs) = parse_addr_list(list) {
            let printed: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            assert_eq!(parse_addr_list(&printed).ok(), Some(addrs.clone()));
            assert!(addrs.iter().all(|a| a.port() != 0));
        }
    }
    round_trips::<AllowRule>(text);
    round_trips::<PortRange>(text);
    round_trips::<PeerNet>(text);
    if let Ok(fp) = Fingerprint::from_str(text) {
        assert!(Fingerprint::from_str(&fp.to_string()).ok() == Some(fp));
    }
    if let Ok((identity, mbps)) = parse_identity_rate(text) {
        assert!(!identity.is_empty() && identity == identity.trim());
        assert_eq!(
            parse_identity_rate(&format!("{identity}={mbps}")),
            Ok((identity, mbps))
        );
    }
    let _ = text.parse::<DataPath>();
    let _ = text.parse::<ChannelMode>();
    let _ = text.parse::<PathChoice>();
    true
}
