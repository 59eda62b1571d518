//! Listener port allocation from the operator's port range.
//!
//! A port is handed out only after a real `bind` on it succeeded, so ports
//! used by other programs are skipped. Each allocated port is represented by
//! a [`PortLease`]; dropping the lease returns the port to the pool, so a
//! port cannot leak however a session ends (release, hello timeout, failed
//! start, shutdown).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::errors::ControlError;

/// An inclusive port range, written "5100-5199" (or a single port "5100").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port (inclusive, not 0).
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Always false (a range has at least one port); for clippy.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = ControlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ControlError::InvalidArgument {
            field: "port range",
            reason: format!("{s:?}: {reason} (expected FIRST-LAST, e.g. 5100-5199)"),
        };
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u16 = a.parse().map_err(|_| bad("bad first port"))?;
        let last: u16 = b.parse().map_err(|_| bad("bad last port"))?;
        if first == 0 {
            return Err(bad("port 0 is not allowed"));
        }
        if last < first {
            return Err(bad("last port is below first port"));
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = ControlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug)]
struct Inner {
    range: PortRange,
    bind_ip: IpAddr,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    in_use: BTreeSet<u16>,
    /// Where the next search starts (round robin, so a just-freed port in
    /// TIME_WAIT is not immediately reused).
    cursor: u16,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock cannot leave the set inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool of listener ports; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct PortAllocator {
    inner: Arc<Inner>,
}

/// One allocated port; dropping it frees the port in the pool.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    inner: Arc<Inner>,
}

impl PortLease {
    /// The leased port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.inner.lock().in_use.remove(&self.port);
    }
}

impl PortAllocator {
    /// A pool over `range`; listeners are bound on `bind_ip`.
    pub fn new(range: PortRange, bind_ip: IpAddr) -> Self {
        PortAllocator {
            inner: Arc::new(Inner {
                range,
                bind_ip,
                state: Mutex::new(PoolState {
                    in_use: BTreeSet::new(),
                    cursor: range.first,
                }),
            }),
        }
    }

    /// The range this pool hands out.
    pub fn range(&self) -> PortRange {
        self.inner.range
    }

    /// The IP listeners are bound on.
    pub fn bind_ip(&self) -> IpAddr {
        self.inner.bind_ip
    }

    /// Number of ports currently leased.
    pub fn in_use(&self) -> usize {
        self.inner.lock().in_use.len()
    }

    /// Allocates `n` ports, each with a bound (non-blocking) listener. All or
    /// nothing: on failure every port taken so far is freed.
    pub fn allocate(&self, n: usize) -> Result<Vec<(PortLease, TcpListener)>, ControlError> {
        let range = self.inner.range;
        let mut out: Vec<(PortLease, TcpListener)> = Vec::with_capacity(n);
        let mut st = self.inner.lock();
        let mut port = st.cursor;
        for _ in 0..range.len() {
            if out.len() == n {
                break;
            }
            let candidate = port;
            port = if port >= range.last {
                range.first
            } else {
                port + 1
            };
            if st.in_use.contains(&candidate) {
                continue;
            }
            if let Ok(l) = bind_listener(SocketAddr::new(self.inner.bind_ip, candidate)) {
                st.in_use.insert(candidate);
                out.push((
                    PortLease {
                        port: candidate,
                        inner: self.inner.clone(),
                    },
                    l,
                ));
            }
        }
        st.cursor = port;
        let free = range.len() - st.in_use.len();
        drop(st);
        if out.len() < n {
            let wanted = n;
            drop(out); // frees the partial allocation
            return Err(ControlError::NoFreePort {
                wanted,
                range: range.to_string(),
                free,
            });
        }
        Ok(out)
    }

    /// Leases one specific port without binding it (a persisted session
    /// being restored holds its ports this way, so no new session gets them
    /// while it waits for a port another program holds).
    pub fn reserve(&self, port: u16) -> Result<PortLease, ControlError> {
        let range = self.inner.range;
        if !range.contains(port) {
            return Err(ControlError::Config {
                reason: format!("port {port} is outside the port range {range}"),
            });
        }
        let mut st = self.inner.lock();
        if !st.in_use.insert(port) {
            return Err(ControlError::Config {
                reason: format!("port {port} is already leased by another session"),
            });
        }
        Ok(PortLease {
            port,
            inner: self.inner.clone(),
        })
    }

    /// Binds the listener of a leased port.
    pub fn listen(&self, lease: &PortLease) -> Result<TcpListener, ControlError> {
        bind_listener(SocketAddr::new(self.inner.bind_ip, lease.port))
            .map_err(|e| ControlError::io(format!("binding listener port {}", lease.port), e))
    }

    /// Leases and binds one specific port.
    pub fn claim(&self, port: u16) -> Result<(PortLease, TcpListener), ControlError> {
        let lease = self.reserve(port)?;
        let listener = self.listen(&lease)?;
        Ok((lease, listener))
    }
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // std sets SO_REUSEADDR on Unix, so a port in TIME_WAIT can be re-bound.
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parse_ranges() {
        assert_eq!(
            "5100-5102".parse::<PortRange>().unwrap(),
            PortRange {
                first: 5100,
                last: 5102
            }
        );
        assert_eq!("5100".parse::<PortRange>().unwrap().len(), 1);
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("10-5".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    #[test]
    fn allocate_all_then_exhausted_then_free() {
        // Find a free block by binding port 0 and using the neighbourhood.
        let base = 41000 + (std::process::id() % 2000) as u16 * 10;
        let range = PortRange {
            first: base,
            last: base + 4,
        };
        let pool = PortAllocator::new(range, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let got = pool.allocate(3).expect("3 ports");
        let err = pool.allocate(3).expect_err("only 2 left (or fewer)");
        assert!(matches!(err, ControlError::NoFreePort { .. }), "{err}");
        // The failed all-or-nothing allocation did not keep anything.
        assert_eq!(pool.in_use(), 3);
        drop(got);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_reserved_port_is_not_handed_out_and_binds_later() {
        let base = 43000 + (std::process::id() % 2000) as u16 * 10;
        let range = PortRange {
            first: base,
            last: base + 1,
        };
        let pool = PortAllocator::new(range, IpAddr::V4(Ipv4Addr::LOCALHOST));
        // Another program holds the first port: the reservation still holds it.
        let other = TcpListener::bind((Ipv4Addr::LOCALHOST, base)).expect("a free test port");
        let lease = pool.reserve(base).expect("reserved");
        let err = pool
            .listen(&lease)
            .expect_err("port taken by another program");
        assert!(err.to_string().contains(&format!("port {base}")), "{err}");
        assert!(pool.reserve(base).is_err(), "leased once only");
        let got = pool.allocate(1).expect("the other port");
        assert_eq!(got[0].0.port(), base + 1, "the reserved port is skipped");
        drop(other);
        let listener = pool.listen(&lease).expect("binds once freed");
        assert_eq!(listener.local_addr().expect("addr").port(), base);
    }
}
