//! The XDP guard's packet parser, in plain `no_std` Rust.
//!
//! The eBPF program (`gateway-ebpf`) calls [`classify`] on the packet behind
//! its `XdpContext`; the fuzz target and the unit tests call the very same
//! function on a byte slice, so the code that runs in the kernel is the code
//! that is fuzzed. Everything here is `#[inline(always)]` and loops have
//! constant bounds, as the BPF verifier needs.
//!
//! The parser walks Ethernet (up to two VLAN tags), IPv4 or IPv6 (up to
//! [`MAX_IPV6_EXT`] extension headers) to the TCP or UDP destination port
//! (the same offset in both headers), and answers whether the packet is
//! none of the guard's business ([`Verdict::Pass`]), broken
//! ([`Verdict::Malformed`]), or a TCP segment or UDP datagram to a guarded
//! data port (sessions take both on their ports) whose source must be
//! looked up in the allow trie ([`Verdict::Check`]).

use crate::{AllowKey, FAMILY_V4, FAMILY_V6};

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers the guard walks to find the TCP header.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// At most this many IPv6 extension headers are walked; a longer chain in
/// front of TCP is malformed.
pub const MAX_IPV6_EXT: usize = 6;
/// No header the guard reads starts beyond this offset (a bound for the
/// verifier; real headers end far earlier).
pub const MAX_OFFSET: usize = 4096;

/// Bounds-checked reads from a packet.
pub trait Packet {
    /// The `N` bytes at `offset` from the start of the frame, or `None` when
    /// the frame is shorter (or `offset` exceeds [`MAX_OFFSET`]).
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET {
            return None;
        }
        let bytes = self.get(offset..offset.checked_add(N)?)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// What the guard does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a TCP segment or UDP datagram to a guarded port (other ports, other protocols,
    /// ARP, later fragments, a frame too short to carry an EtherType): pass.
    Pass,
    /// An IPv4/IPv6 TCP packet whose headers are truncated or inconsistent:
    /// drop and count.
    Malformed,
    /// A TCP segment or UDP datagram to a guarded data port: pass only if the allow trie
    /// covers this key (port, family and source address set, `_reserved` 0).
    Check(AllowKey),
}

/// Classifies one Ethernet frame for the guard of the ports
/// `first_port..=last_port`.
#[inline(always)]
pub fn classify<P: Packet + ?Sized>(pkt: &P, first_port: u16, last_port: u16) -> Verdict {
    // Ethernet, up to two VLAN tags. A truncated frame is not ours to judge.
    let Some(mut ethertype) = pkt.load::<2>(ETH_HLEN - 2).map(u16::from_be_bytes) else {
        return Verdict::Pass;
    };
    let mut l3 = ETH_HLEN;
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(inner) = pkt.load::<2>(l3 + 2).map(u16::from_be_bytes) else {
                return Verdict::Pass;
            };
            ethertype = inner;
            l3 += 4;
        }
    }

    let mut key = AllowKey::default();
    let l4 = match ethertype {
        ETH_P_IP => {
            let Some(head) = pkt.load::<20>(l3) else {
                return Verdict::Malformed;
            };
            let ihl = usize::from(head[0] & 0x0f) * 4;
            if head[0] >> 4 != 4 || ihl < 20 {
                return Verdict::Malformed;
            }
            if head[9] != IPPROTO_TCP && head[9] != IPPROTO_UDP {
                return Verdict::Pass;
            }
            // Fragment offset (13 bits) != 0: no TCP/UDP header in this
            // packet (the first fragment carries it and is checked; later
            // ones cannot be reassembled without it).
            if u16::from_be_bytes([head[6], head[7]]) & 0x1fff != 0 {
                return Verdict::Pass;
            }
            key.family = FAMILY_V4;
            key.addr[0] = head[12];
            key.addr[1] = head[13];
            key.addr[2] = head[14];
            key.addr[3] = head[15];
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let Some(head) = pkt.load::<8>(l3) else {
                return Verdict::Malformed;
            };
            let Some(src) = pkt.load::<16>(l3 + 8) else {
                return Verdict::Malformed;
            };
            if pkt.load::<16>(l3 + 24).is_none() {
                return Verdict::Malformed;
            }
            key.family = FAMILY_V6;
            key.addr = src;
            let mut next = head[6];
            let mut off = l3 + 40;
            for _ in 0..MAX_IPV6_EXT {
                match next {
                    IPPROTO_TCP | IPPROTO_UDP => break,
                    IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                        let Some(ext) = pkt.load::<2>(off) else {
                            return Verdict::Malformed;
                        };
                        next = ext[0];
                        off += (usize::from(ext[1]) + 1) * 8;
                    }
                    IPV6_AUTH => {
                        let Some(ext) = pkt.load::<2>(off) else {
                            return Verdict::Malformed;
                        };
                        next = ext[0];
                        off += (usize::from(ext[1]) + 2) * 4;
                    }
                    IPV6_FRAGMENT => {
                        let Some(ext) = pkt.load::<4>(off) else {
                            return Verdict::Malformed;
                        };
                        // Offset != 0: a later fragment, no TCP header here.
                        if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                            return Verdict::Pass;
                        }
                        next = ext[0];
                        off += 8;
                    }
                    // Neither TCP nor UDP (ICMPv6, no next header, ESP, ...).
                    _ => return Verdict::Pass,
                }
                if off > MAX_OFFSET {
                    return Verdict::Malformed;
                }
            }
            if next != IPPROTO_TCP && next != IPPROTO_UDP {
                return Verdict::Malformed;
            }
            off
        }
        // ARP and everything else.
        _ => return Verdict::Pass,
    };

    let Some(ports) = pkt.load::<4>(l4) else {
        return Verdict::Malformed;
    };
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    if dport < first_port || dport > last_port {
        return Verdict::Pass;
    }
    key.port = [ports[2], ports[3]];
    Verdict::Check(key)
}

/// Where an IPv4 UDP datagram's headers are, and its flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp4 {
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// Offset of the UDP header.
    pub l4: usize,
    /// Addresses and ports as they arrive.
    pub key: crate::UdpFlowKey,
}

/// The flow of an Ethernet frame carrying an unfragmented IPv4 UDP datagram
/// (no VLAN tag: the fast path forwards between plain interfaces); `None`
/// for anything else, which the fast path leaves to the kernel's stack.
#[inline(always)]
pub fn udp4_flow<P: Packet + ?Sized>(pkt: &P) -> Option<Udp4> {
    let ethertype = u16::from_be_bytes(pkt.load::<2>(ETH_HLEN - 2)?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let l3 = ETH_HLEN;
    let head = pkt.load::<20>(l3)?;
    let ihl = usize::from(head[0] & 0x0f) * 4;
    if head[0] >> 4 != 4 || ihl < 20 || head[9] != IPPROTO_UDP {
        return None;
    }
    // More fragments, or a fragment offset: not one whole datagram.
    if u16::from_be_bytes([head[6], head[7]]) & 0x3fff != 0 {
        return None;
    }
    let l4 = l3 + ihl;
    let udp = pkt.load::<4>(l4)?;
    Some(Udp4 {
        l3,
        l4,
        key: crate::UdpFlowKey {
            saddr: [head[12], head[13], head[14], head[15]],
            daddr: [head[16], head[17], head[18], head[19]],
            sport: [udp[0], udp[1]],
            dport: [udp[2], udp[3]],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: (u16, u16) = (5000, 5100);

    fn eth(ethertype: u16) -> [u8; 14] {
        let mut h = [0u8; 14];
        h[12..14].copy_from_slice(&ethertype.to_be_bytes());
        h
    }

    fn ipv4_tcp(src: [u8; 4], dport: u16) -> ([u8; 54], usize) {
        let mut p = [0u8; 54];
        p[..14].copy_from_slice(&eth(ETH_P_IP));
        p[14] = 0x45;
        p[23] = IPPROTO_TCP;
        p[26..30].copy_from_slice(&src);
        p[36..38].copy_from_slice(&dport.to_be_bytes());
        (p, 54)
    }

    fn classify_slice(p: &[u8]) -> Verdict {
        classify(p, PORTS.0, PORTS.1)
    }

    #[test]
    fn tcp_to_a_guarded_port_is_checked_with_its_source() {
        let (p, _) = ipv4_tcp([10, 0, 0, 7], 5050);
        let Verdict::Check(key) = classify_slice(&p) else {
            panic!("not checked: {:?}", classify_slice(&p));
        };
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(key.port, 5050u16.to_be_bytes());
        assert_eq!(&key.addr[..4], &[10, 0, 0, 7]);
        assert!(key.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(key._reserved, 0);
    }

    #[test]
    fn the_fast_path_takes_whole_ipv4_udp_datagrams_only() {
        let (mut p, _) = ipv4_tcp([10, 0, 0, 9], 5050);
        assert_eq!(udp4_flow(&p[..]), None, "TCP");
        p[23] = IPPROTO_UDP;
        p[30..34].copy_from_slice(&[10, 0, 0, 1]);
        p[34..36].copy_from_slice(&4242u16.to_be_bytes());
        let flow = udp4_flow(&p[..]).expect("a UDP datagram");
        assert_eq!((flow.l3, flow.l4), (14, 34));
        assert_eq!(flow.key.saddr, [10, 0, 0, 9]);
        assert_eq!(flow.key.daddr, [10, 0, 0, 1]);
        assert_eq!(flow.key.sport, 4242u16.to_be_bytes());
        assert_eq!(flow.key.dport, 5050u16.to_be_bytes());
        // IP options move the UDP header.
        let mut q = [0u8; 58];
        q[..14].copy_from_slice(&p[..14]);
        q[14..34].copy_from_slice(&p[14..34]);
        q[14] = 0x46;
        q[38..42].copy_from_slice(&p[34..38]);
        assert_eq!(udp4_flow(&q[..]).map(|f| f.l4), Some(38));
        // A first fragment (more fragments set) is not a whole datagram.
        let mut frag = p;
        frag[20] = 0x20;
        assert_eq!(udp4_flow(&frag[..]), None);
        // Truncated before the ports; not IPv4.
        assert_eq!(udp4_flow(&p[..36]), None);
        let mut v6 = p;
        v6[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        assert_eq!(udp4_flow(&v6[..]), None);
    }

    #[test]
    fn udp_to_a_guarded_port_is_checked_like_tcp() {
        // UDP's destination port sits where TCP's does.
        let (mut p, _) = ipv4_tcp([10, 0, 0, 9], 5050);
        p[23] = IPPROTO_UDP;
        let Verdict::Check(key) = classify_slice(&p) else {
            panic!("UDP to a guarded port must be checked");
        };
        assert_eq!(key.port, 5050u16.to_be_bytes());
        assert_eq!(&key.addr[..4], &[10, 0, 0, 9]);
        // A later fragment carries no UDP header: passed (it cannot be
        // reassembled without the checked first one).
        p[20] = 0x00;
        p[21] = 0x10;
        assert_eq!(classify_slice(&p), Verdict::Pass);
    }

    #[test]
    fn other_ports_and_protocols_pass() {
        let (p, _) = ipv4_tcp([10, 0, 0, 7], 22);
        assert_eq!(classify_slice(&p), Verdict::Pass);
        let (mut p, _) = ipv4_tcp([10, 0, 0, 7], 5050);
        p[23] = 1; // ICMP
        assert_eq!(classify_slice(&p), Verdict::Pass);
        let (mut p, _) = ipv4_tcp([10, 0, 0, 7], 22);
        p[23] = IPPROTO_UDP;
        assert_eq!(classify_slice(&p), Verdict::Pass);
        assert_eq!(classify_slice(&eth(0x0806)), Verdict::Pass); // ARP
        assert_eq!(classify_slice(&[0u8; 5]), Verdict::Pass); // runt frame
    }

    #[test]
    fn truncated_or_inconsistent_headers_are_malformed() {
        let (p, len) = ipv4_tcp([10, 0, 0, 7], 5050);
        // TCP header cut before the destination port.
        assert_eq!(classify_slice(&p[..len - 18]), Verdict::Malformed);
        // IPv4 header cut short.
        assert_eq!(classify_slice(&p[..30]), Verdict::Malformed);
        // IHL below 5 words.
        let mut bad = p;
        bad[14] = 0x44;
        assert_eq!(classify_slice(&bad), Verdict::Malformed);
        // Version 6 inside an IPv4 EtherType.
        let mut bad = p;
        bad[14] = 0x65;
        assert_eq!(classify_slice(&bad), Verdict::Malformed);
    }

    #[test]
    fn later_ipv4_fragments_pass() {
        let (mut p, _) = ipv4_tcp([10, 0, 0, 7], 5050);
        p[21] = 0x10; // fragment offset 16
        assert_eq!(classify_slice(&p), Verdict::Pass);
    }

    #[test]
    fn vlan_tags_are_walked() {
        let (p, _) = ipv4_tcp([10, 0, 0, 7], 5050);
        let mut tagged = [0u8; 62];
        tagged[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        tagged[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        tagged[20..22].copy_from_slice(&ETH_P_IP.to_be_bytes());
        tagged[22..].copy_from_slice(&p[14..]);
        assert!(matches!(classify_slice(&tagged), Verdict::Check(_)));
    }

    fn ipv6_tcp(exts: &[(u8, &[u8])], dport: u16) -> ([u8; 256], usize) {
        let mut p = [0u8; 256];
        p[..14].copy_from_slice(&eth(ETH_P_IPV6));
        p[14] = 0x60;
        p[20] = exts.first().map_or(IPPROTO_TCP, |e| e.0);
        p[22] = 0xfd; // source fd00::1
        p[37] = 1;
        let mut off = 54;
        for (i, (_, body)) in exts.iter().enumerate() {
            p[off] = exts.get(i + 1).map_or(IPPROTO_TCP, |e| e.0);
            p[off + 1..off + 1 + body.len()].copy_from_slice(body);
            off += 1 + body.len();
        }
        p[off + 2..off + 4].copy_from_slice(&dport.to_be_bytes());
        (p, off + 20)
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_tcp() {
        // Hop-by-hop (8 bytes: next, len 0, 6 bytes of options), then a first fragment.
        let (p, len) = ipv6_tcp(
            &[(IPV6_HOP_BY_HOP, &[0; 7]), (IPV6_FRAGMENT, &[0; 7])],
            5001,
        );
        let Verdict::Check(key) = classify_slice(&p[..len]) else {
            panic!("not checked");
        };
        assert_eq!(key.family, FAMILY_V6);
        assert_eq!(key.addr[0], 0xfd);
        assert_eq!(key.addr[15], 1);
        assert_eq!(key.port, 5001u16.to_be_bytes());
    }

    #[test]
    fn ipv6_chains_too_long_or_cut_are_malformed() {
        let seven: [(u8, &[u8]); 7] = [(IPV6_DEST_OPTS, &[0; 7]); 7];
        let (p, len) = ipv6_tcp(&seven, 5001);
        assert_eq!(classify_slice(&p[..len]), Verdict::Malformed);
        let (p, _) = ipv6_tcp(&[(IPV6_ROUTING, &[0; 7])], 5001);
        assert_eq!(classify_slice(&p[..58]), Verdict::Malformed);
        // An extension header whose length runs past the end of the packet.
        let (p, len) = ipv6_tcp(&[(IPV6_ROUTING, &[255, 0, 0, 0, 0, 0, 0])], 5001);
        assert_eq!(classify_slice(&p[..len]), Verdict::Malformed);
    }

    #[test]
    fn later_ipv6_fragments_pass() {
        let (p, len) = ipv6_tcp(&[(IPV6_FRAGMENT, &[0, 0, 8, 0, 0, 0, 0])], 5001);
        assert_eq!(classify_slice(&p[..len]), Verdict::Pass);
    }

    #[test]
    fn loads_past_the_offset_bound_fail() {
        let big = [0u8; MAX_OFFSET + 64];
        assert!(big[..].load::<4>(MAX_OFFSET + 1).is_none());
        assert!(big[..].load::<4>(MAX_OFFSET).is_some());
        assert!(big[..].load::<4>(usize::MAX).is_none());
    }
}
