//! The Linux capabilities the gateway uses, what each one enables, and which
//! of them this process holds (its effective set, read from
//! `/proc/self/status`), so that `s2cs check` and `serve` name the missing
//! capability and what it would enable instead of asking for root. The
//! systemd unit grants exactly [`SERVICE_CAPABILITIES`].
use std::fmt;

use serde::Serialize;

/// A capability the gateway may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Cap {
    /// Load eBPF programs and create their maps.
    Bpf,
    /// Networking eBPF program types (sk_skb, XDP) and attaching XDP.
    NetAdmin,
    /// Variable-offset packet reads in the XDP guard (the verifier's
    /// Spectre v1 hardening refuses them without it).
    Perfmon,
    /// Bind control or session ports below 1024.
    NetBindService,
    /// Everything else at once (root's capability; implies CAP_BPF on
    /// kernels before 5.8).
    SysAdmin,
}

impl Cap {
    /// Every capability the gateway knows about.
    pub const ALL: [Cap; 5] = [
        Cap::Bpf,
        Cap::NetAdmin,
        Cap::Perfmon,
        Cap::NetBindService,
        Cap::SysAdmin,
    ];

    /// The capability's number in the kernel's sets.
    pub const fn number(self) -> u32 {
        match self {
            Cap::NetBindService => 10,
            Cap::NetAdmin => 12,
            Cap::SysAdmin => 21,
            Cap::Perfmon => 38,
            Cap::Bpf => 39,
        }
    }

    /// Its name, as `capsh` and systemd spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Cap::Bpf => "CAP_BPF",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::NetBindService => "CAP_NET_BIND_SERVICE",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
        }
    }

    /// What the gateway does with it.
    pub const fn enables(self) -> &'static str {
        match self {
            Cap::Bpf => "loading the eBPF programs and maps (sockmap relay, XDP guard)",
            Cap::NetAdmin => {
                "loading networking eBPF programs (sk_skb verdict, XDP) and attaching XDP to an interface"
            }
            Cap::Perfmon => {
                "loading the XDP guard, whose reads at variable packet offsets (after VLAN tags) the \
                 verifier's Spectre v1 hardening refuses without it"
            }
            Cap::NetBindService => "binding control or session ports below 1024",
            Cap::SysAdmin => {
                "probing XDP in a private network namespace (s2cs check only; never needed by serve)"
            }
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the service unit grants: the sockmap relay and the XDP guard,
/// nothing else (ports are above 1024 by default).
pub const SERVICE_CAPABILITIES: [Cap; 3] = [Cap::Bpf, Cap::NetAdmin, Cap::Perfmon];

/// What loading the sockmap relay (sk_skb verdict and its maps) needs.
pub const SOCKMAP: [Cap; 2] = [Cap::Bpf, Cap::NetAdmin];

/// What loading and attaching the XDP guard needs.
pub const XDP: [Cap; 3] = [Cap::Bpf, Cap::NetAdmin, Cap::Perfmon];

/// This process's effective capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privileges {
    effective: u64,
}

impl Privileges {
    /// Reads the effective set of this process. If it cannot be read, the
    /// process is assumed to hold nothing (the probes then say why).
    pub fn current() -> Privileges {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Privileges::from_status(&status).unwrap_or(Privileges { effective: 0 })
    }

    /// Parses the `CapEff:` line of a `/proc/PID/status` text.
    pub fn from_status(status: &str) -> Option<Privileges> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16)
            .ok()
            .map(|effective| Privileges { effective })
    }

    /// A set holding exactly `caps` (for tests and explanations).
    pub fn of(caps: &[Cap]) -> Privileges {
        Privileges {
            effective: caps.iter().fold(0, |set, c| set | 1 << c.number()),
        }
    }

    /// Whether the effective set holds `cap`.
    pub fn has(self, cap: Cap) -> bool {
        self.effective & (1 << cap.number()) != 0
    }

    /// Whether the effective set lets the process do what `cap` guards:
    /// CAP_SYS_ADMIN also does what CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON
    /// allow in the kernel's eBPF checks (`bpf_capable`, `bpf_net_capable`,
    /// `perfmon_capable`).
    pub fn allows(self, cap: Cap) -> bool {
        self.has(cap)
            || (matches!(cap, Cap::Bpf | Cap::NetAdmin | Cap::Perfmon) && self.has(Cap::SysAdmin))
    }

    /// Those of `needed` this process lacks.
    pub fn missing(self, needed: &[Cap]) -> Vec<Cap> {
        needed
            .iter()
            .copied()
            .filter(|c| !self.allows(*c))
            .collect()
    }

    /// The gateway's capabilities this process holds, by name.
    pub fn held(self) -> Vec<&'static str> {
        Cap::ALL
            .iter()
            .filter(|c| self.has(**c))
            .map(|c| c.name())
            .collect()
    }

    /// "" when nothing of `needed` is missing, else a sentence naming each
    /// missing capability and what it enables, e.g. for an error message:
    /// `this process lacks CAP_BPF (loading ...)`.
    pub fn explain_missing(self, needed: &[Cap]) -> String {
        let missing = self.missing(needed);
        if missing.is_empty() {
            return String::new();
        }
        let list: Vec<String> = missing
            .iter()
            .map(|c| format!("{} ({})", c.name(), c.enables()))
            .collect();
        format!(
            "this process lacks {}: run as root, or grant it (AmbientCapabilities= in the service unit, \
             or `setpriv --ambient-caps`)",
            list.join(" and ")
        )
    }
}

/// What an error adds about capabilities: nothing, or ` (this process
/// lacks ...)`. One pointer wide, so errors that carry it stay small.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
// A boxed String, not a String or Box<str>: one pointer instead of three
// (or two) in every relay error that carries it, on a path taken once.
#[allow(clippy::box_collection)]
pub struct MissingCaps(Option<Box<String>>);

impl MissingCaps {
    /// Those of `needed` this process lacks, explained (nothing if none).
    pub fn of(needed: &[Cap]) -> MissingCaps {
        MissingCaps::explained(Privileges::current().explain_missing(needed))
    }

    /// Nothing to add: capabilities cannot be the cause.
    pub fn none() -> MissingCaps {
        MissingCaps(None)
    }

    fn explained(text: String) -> MissingCaps {
        MissingCaps((!text.is_empty()).then(|| Box::new(text)))
    }
}

impl fmt::Display for MissingCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(text) => write!(f, " ({text})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set_from_proc_status() {
        let status = "Name:\ts2cs\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n";
        let p = Privileges::from_status(status).unwrap();
        assert!(p.has(Cap::Bpf));
        assert!(p.has(Cap::NetAdmin));
        assert!(p.has(Cap::Perfmon));
        assert!(!p.has(Cap::SysAdmin));
        assert_eq!(p, Privileges::of(&SERVICE_CAPABILITIES));
        assert_eq!(p.held(), vec!["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(Privileges::from_status("Name:\tx\n"), None);
        assert_eq!(Privileges::from_status("CapEff:\tzz\n"), None);
    }

    #[test]
    fn the_explanation_names_each_missing_capability_and_what_it_enables() {
        let none = Privileges::of(&[]);
        let text = none.explain_missing(&SOCKMAP);
        assert!(
            text.contains("CAP_BPF (loading the eBPF programs"),
            "{text}"
        );
        assert!(text.contains("CAP_NET_ADMIN ("), "{text}");
        assert!(text.contains("AmbientCapabilities="), "{text}");
        let bpf_only = Privileges::of(&[Cap::Bpf]);
        assert_eq!(bpf_only.missing(&XDP), vec![Cap::NetAdmin, Cap::Perfmon]);
        assert!(!bpf_only.explain_missing(&SOCKMAP).contains("CAP_BPF ("));
        assert_eq!(Privileges::of(&SOCKMAP).explain_missing(&SOCKMAP), "");
        assert!(
            Privileges::of(&SOCKMAP)
                .explain_missing(&XDP)
                .contains("CAP_PERFMON")
        );
        assert_eq!(Privileges::of(&[Cap::SysAdmin]).missing(&XDP), vec![]);
        let clause = MissingCaps::explained(bpf_only.explain_missing(&SOCKMAP)).to_string();
        assert!(
            clause.starts_with(" (this process lacks CAP_NET_ADMIN"),
            "{clause}"
        );
        assert_eq!(MissingCaps::explained(String::new()).to_string(), "");
        assert_eq!(
            std::mem::size_of::<MissingCaps>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn this_process_has_a_readable_set() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(Privileges::from_status(&status).is_some());
        // Root in CI holds every capability; anyone else holds at least a readable set.
        if nix::unistd::geteuid().is_root() {
            assert!(
                Privileges::current().has(Cap::Bpf) || Privileges::current().has(Cap::SysAdmin)
            );
        }
    }
}
