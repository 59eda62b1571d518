//! The channel proof: the 34-byte message a peer gateway sends after the TLS
//! handshake, checked against the session secret and this connection's TLS
//! exporter.
//!
//! Checked on every input: a received message verifies only if it is exactly
//! the proof the holder of the secret computes for this role, flags and
//! exporter (no forgery, whatever the bytes); a genuine proof verifies and
//! returns its flags; it fails when reflected to its sender's own role, on
//! another connection (exporter) or under another secret, and when any one
//! byte is changed.

use arbitrary::Arbitrary;
use control::Role;
use gateway::channel::proof::{self, EXPORTER_LEN, PROOF_LEN};

#[derive(Arbitrary, Debug)]
struct Input {
    secret: [u8; 32],
    exporter: [u8; EXPORTER_LEN],
    acceptor: bool,
    flags: u8,
    received: [u8; PROOF_LEN],
    flip_at: u8,
    flip: std::num::NonZeroU8,
    other: [u8; 32],
}

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Ok(input) =
        <Input as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return false;
    };
    let role = if input.acceptor {
        Role::Prod
    } else {
        Role::Cons
    };
    // Arbitrary bytes from the wire.
    if let Ok(flags) = proof::verify(&input.secret, role, &input.exporter, &input.received) {
        assert_eq!(
            proof::compute(&input.secret, role, flags, &input.exporter),
            input.received,
            "a message that is not the proof verified"
        );
    }

    let flags = input.flags & proof::FLAG_PLAINTEXT_AFTER_AUTH;
    let genuine = proof::compute(&input.secret, role, flags, &input.exporter);
    assert_eq!(
        proof::verify(&input.secret, role, &input.exporter, &genuine),
        Ok(flags)
    );
    assert!(
        proof::verify(&input.secret, role.peer(), &input.exporter, &genuine).is_err(),
        "a reflected proof verified"
    );
    if input.other != input.exporter {
        assert!(
            proof::verify(&input.secret, role, &input.other, &genuine).is_err(),
            "a proof verified on another connection"
        );
    }
    if input.other != input.secret {
        assert!(
            proof::verify(&input.other, role, &input.exporter, &genuine).is_err(),
            "a proof verified under another secret"
        );
    }
    let mut changed = genuine;
    changed[usize::from(input.flip_at) % PROOF_LEN] ^= input.flip.get();
    assert!(
        proof::verify(&input.secret, role, &input.exporter, &changed).is_err(),
        "a changed proof verified"
    );
    true
}
