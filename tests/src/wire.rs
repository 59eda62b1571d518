//! An on-path observer and a spoofing sender, for attack tests: [`Capture`]
//! records the UDP datagrams one namespace sends to an address (a tap on
//! the WAN), and [`send_spoofed`] sends UDP datagrams from any source
//! address through a raw IPv4 socket (what an attacker on the WAN can do).
//!
//! The capture reads every IPv4 frame of its namespace through a packet
//! socket, outgoing ones included. QUIC hands the kernel several datagrams
//! in one frame (UDP GSO); the socket's `virtio_net_hdr` prefix gives the
//! segment size, and the frame is split into the datagrams the wire
//! carries. Needs root (CAP_NET_RAW).

use std::io;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset.
const VNET_HDR_LEN: usize = 10;
const ETH_P_IP: u16 = 0x0800;
/// Every protocol: only such a packet socket sees outgoing frames too.
const ETH_P_ALL: u16 = 0x0003;
/// Ethernet header: what a raw packet socket reads on a veth before IP.
const ETH_HEADER: usize = 14;
const IPPROTO_UDP: u8 = 17;
const UDP_HEADER: usize = 8;

/// One UDP datagram as the wire carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A running capture; [`Capture::stop`] returns what it saw.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Captured>>,
}

/// What a capture saw.
#[derive(Debug, Default)]
pub struct Captured {
    /// The datagrams of the flow, in the order sent.
    pub datagrams: Vec<Datagram>,
    /// Every frame read, of any flow or protocol (a capture that reads none
    /// is not looking at the right namespace).
    pub frames: u64,
}

impl Capture {
    /// Records, from a thread in the calling thread's namespace, every UDP
    /// datagram from `from` (any port) to `to`. Open the capture inside
    /// the namespace (e.g. in `Topology::run_in`): the socket stays there.
    pub fn start(from: Ipv4Addr, to: SocketAddrV4) -> io::Result<Capture> {
        let protocol = Protocol::from(i32::from(ETH_P_ALL.to_be()));
        // Raw (link-layer header kept): PACKET_VNET_HDR takes no other type.
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(protocol))?;
        crate::sys::packet_vnet_hdr(&socket)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        socket.set_recv_buffer_size(16 << 20)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Captured::default();
            let mut buf = vec![0u8; 1 << 17];
            while !flag.load(Ordering::Relaxed) {
                let n = match (&socket).read(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                seen.frames += 1;
                seen.datagrams.extend(
                    split_frame(&buf[..n])
                        .into_iter()
                        .filter(|d| *d.from.ip() == from && d.to == to),
                );
            }
            Ok(seen)
        });
        Ok(Capture { stop, thread })
    }

    /// Stops the capture and returns what it saw.
    pub fn stop(self) -> io::Result<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the capture thread panicked"))?
    }
}

/// The UDP datagrams of one Ethernet frame read with a `virtio_net_hdr`
/// prefix: one, or for a GSO frame one per `gso_size` bytes of its payload.
/// Anything else (not IPv4 UDP, truncated) gives none.
pub fn split_frame(frame: &[u8]) -> Vec<Datagram> {
    let Some((vnet, ethernet)) = frame.split_at_checked(VNET_HDR_LEN) else {
        return Vec::new();
    };
    let Some((link, ip)) = ethernet.split_at_checked(ETH_HEADER) else {
        return Vec::new();
    };
    if link[12..14] != ETH_P_IP.to_be_bytes() {
        return Vec::new();
    }
    let gso_type = vnet[1];
    let gso_size = usize::from(u16::from_le_bytes([vnet[4], vnet[5]]));
    let Some(&first) = ip.first() else {
        return Vec::new();
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || ip.len() < ihl + UDP_HEADER || ip[9] != IPPROTO_UDP {
        return Vec::new();
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let port = |at: usize| u16::from_be_bytes([ip[ihl + at], ip[ihl + at + 1]]);
    let from = SocketAddrV4::new(addr(12), port(0));
    let to = SocketAddrV4::new(addr(16), port(2));
    let Some(payload) = ip.get(ihl + UDP_HEADER..total) else {
        return Vec::new();
    };
    let segment = if gso_type != 0 && gso_size > 0 {
        gso_size
    } else {
        payload.len().max(1)
    };
    payload
        .chunks(segment)
        .map(|chunk| Datagram {
            from,
            to,
            payload: chunk.to_vec(),
        })
        .collect()
}

/// An IPv4 UDP packet from `from` to `to` (DF set; the kernel fills the
/// IP checksum and identification; UDP checksum 0, "none", as IPv4 allows).
pub fn ipv4_udp(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> io::Result<Vec<u8>> {
    let udp_len = u16::try_from(UDP_HEADER + payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"))?;
    let total = udp_len
        .checked_add(20)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"))?;
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    Ok(packet)
}

/// Sends each datagram from its own `from`, whatever this namespace's
/// addresses are (a raw IPv4 socket, IP_HDRINCL). Call inside the sending
/// namespace. Returns how many the kernel took.
pub fn send_spoofed(datagrams: &[Datagram]) -> io::Result<usize> {
    // IPPROTO_RAW: the socket sends whole IPv4 packets (IP_HDRINCL).
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(nix::libc::IPPROTO_RAW)),
    )?;
    let mut sent = 0;
    for d in datagrams {
        let packet = ipv4_udp(d.from, d.to, &d.payload)?;
        let to = SockAddr::from(SocketAddr::V4(d.to));
        if socket.send_to(&packet, &to).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(gso: Option<u16>, packet: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + ETH_HEADER];
        if let Some(size) = gso {
            f[1] = 5; // VIRTIO_NET_HDR_GSO_UDP_L4
            f[4..6].copy_from_slice(&size.to_le_bytes());
        }
        f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(packet);
        f
    }

    #[test]
    fn a_built_packet_parses_back_to_its_datagram() {
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, 2), 4433);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, 1), 5000);
        let packet = ipv4_udp(from, to, b"hello").unwrap();
        assert_eq!(packet.len(), 20 + 8 + 5);
        assert_eq!(
            split_frame(&frame(None, &packet)),
            vec![Datagram {
                from,
                to,
                payload: b"hello".to_vec()
            }]
        );
    }

    #[test]
    fn a_gso_frame_splits_into_its_segments_and_junk_gives_nothing() {
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, 2), 1);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, 1), 2);
        let payload: Vec<u8> = (0..250u8).collect();
        let packet = ipv4_udp(from, to, &payload).unwrap();
        let parts = split_frame(&frame(Some(100), &packet));
        let sizes: Vec<usize> = parts.iter().map(|d| d.payload.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert_eq!(parts.concat_payloads(), payload);
        assert!(split_frame(&frame(None, &packet[..20])).is_empty());
        assert!(split_frame(&[0u8; 4]).is_empty());
        let mut arp = frame(None, &packet);
        arp[VNET_HDR_LEN + 13] = 0x06;
        assert!(split_frame(&arp).is_empty());
        let mut tcp = packet.clone();
        tcp[9] = 6;
        assert!(split_frame(&frame(None, &tcp)).is_empty());
    }

    trait Concat {
        fn concat_payloads(&self) -> Vec<u8>;
    }
    impl Concat for Vec<Datagram> {
        fn concat_payloads(&self) -> Vec<u8> {
            self.iter().flat_map(|d| d.payload.clone()).collect()
        }
    }
}
