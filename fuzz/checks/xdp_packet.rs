//! The XDP guard's packet parser (`gateway_common::packet::classify`, the
//! very function the eBPF program runs) on arbitrary frames.
//!
//! Checked on every input: nothing panics or reads out of bounds; a packet
//! sent for an allow-list lookup names a guarded port and a well-formed
//! source key (family 4 or 6, IPv4 addresses zero-padded, reserved byte 0)
//! taken from the frame's own bytes; and the verdict depends only on the
//! bytes the parser may read (at most `MAX_OFFSET` plus a header), so
//! appending bytes after the frame never turns a Check into a Pass.
//!
//! The UDP fast path's parser (`packet::udp4_flow`, run by `udp_fastpath`)
//! gets the same frame: a flow is found only in an IPv4 frame, its header
//! offsets lie inside the frame and its addresses and ports are the frame's
//! own bytes at those offsets; appending bytes never changes it.

use gateway_common::packet::{MAX_OFFSET, Verdict, classify, udp4_flow};
use gateway_common::{FAMILY_V4, FAMILY_V6};

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Some((ports, frame)) = data.split_first_chunk::<4>() else {
        return true;
    };
    let first = u16::from_be_bytes([ports[0], ports[1]]);
    let last = u16::from_be_bytes([ports[2], ports[3]]);
    let flow = udp4_flow(frame);
    if let Some(flow) = flow {
        assert_eq!(&frame[12..14], &[0x08, 0x00], "not IPv4");
        assert!(flow.l4 + 4 <= frame.len(), "UDP header beyond the frame");
        assert_eq!(&frame[flow.l3 + 12..flow.l3 + 16], &flow.key.saddr);
        assert_eq!(&frame[flow.l3 + 16..flow.l3 + 20], &flow.key.daddr);
        assert_eq!(&frame[flow.l4..flow.l4 + 2], &flow.key.sport);
        assert_eq!(&frame[flow.l4 + 2..flow.l4 + 4], &flow.key.dport);
        let mut longer = frame.to_vec();
        longer.resize(frame.len() + 64, 0xee);
        assert_eq!(
            udp4_flow(&longer[..]),
            Some(flow),
            "appending bytes changed the flow"
        );
    }
    let verdict = classify(frame, first, last);
    if let Verdict::Check(key) = verdict {
        let port = u16::from_be_bytes(key.port);
        assert!(first <= port && port <= last, "port {port} is not guarded");
        assert_eq!(key._reserved, 0);
        match key.family {
            FAMILY_V4 => {
                assert!(key.addr[4..].iter().all(|b| *b == 0));
                assert!(
                    frame.windows(4).any(|w| w == &key.addr[..4]),
                    "source not taken from the frame"
                );
            }
            FAMILY_V6 => assert!(
                frame.windows(16).any(|w| w == key.addr),
                "source not taken from the frame"
            ),
            other => panic!("family {other}"),
        }
    }
    // More bytes after the frame (the kernel's buffer is longer than the
    // headers) must not change a decision already made on complete headers.
    if frame.len() <= MAX_OFFSET + 64 {
        let mut longer = frame.to_vec();
        longer.resize(frame.len() + 64, 0xee);
        let again = classify(&longer[..], first, last);
        // A Pass on a frame too short for its VLAN tags may change; every
        // other Pass and every Check was decided on bytes that were there.
        let decided = match verdict {
            Verdict::Check(_) => true,
            Verdict::Pass => frame.len() >= 22,
            Verdict::Malformed => false,
        };
        if decided {
            assert_eq!(again, verdict, "appending bytes changed the verdict");
        }
    }
    true
}
