//! The per-session mutual proof, bound to one TLS connection.
//!
//! After the TLS handshake each gateway sends, as its first application
//! bytes, a fixed 34-byte message: version (1), flags (1) and
//! `HMAC-SHA256(secret, LABEL || role || flags || exporter)`, where
//! `exporter` is 32 bytes of TLS keying material exported from this
//! connection (RFC 5705 / RFC 8446 section 7.5) under [`EXPORTER_LABEL`].
//! The exporter differs on every connection, so a proof cannot be replayed
//! on another one; a man in the middle terminates two TLS connections with
//! two exporters and cannot compute the second proof without the secret.
//! The role byte stops a proof from being reflected back at its sender. The
//! flags (plaintext after authentication) are covered by the MAC, and
//! verification is constant-time (`ring::hmac::verify`).
use control::Role;
use ring::hmac;

/// The label of the TLS exporter the proof is bound to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-s2cs-channel-proof-v1";
/// Length of the exported keying material.
pub const EXPORTER_LEN: usize = 32;
/// Length of a proof message on the wire.
pub const PROOF_LEN: usize = 34;
/// Wire version of the proof message.
pub const VERSION: u8 = 1;
/// Flag: the sender wants plain TCP after the proof.
pub const FLAG_PLAINTEXT_AFTER_AUTH: u8 = 0x01;

const MAC_LABEL: &[u8] = b"s2cs channel proof v1";

/// The byte that says, inside the MAC input, which end a proof speaks for:
/// the PROD gateway accepts the channel (TLS server), the CONS gateway dials
/// it (TLS client).
fn role_byte(role: Role) -> u8 {
    match role {
        Role::Prod => b'A',
        Role::Cons => b'C',
    }
}

/// Why a received proof was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// Unknown version byte or unknown flags.
    Malformed,
    /// The MAC does not verify.
    Mismatch,
}

fn mac_input(
    role: Role,
    flags: u8,
    exporter: &[u8; EXPORTER_LEN],
) -> [u8; MAC_LABEL.len() + 2 + EXPORTER_LEN] {
    let mut input = [0u8; MAC_LABEL.len() + 2 + EXPORTER_LEN];
    input[..MAC_LABEL.len()].copy_from_slice(MAC_LABEL);
    input[MAC_LABEL.len()] = role_byte(role);
    input[MAC_LABEL.len() + 1] = flags;
    input[MAC_LABEL.len() + 2..].copy_from_slice(exporter);
    input
}

/// The proof message `role` sends on a connection with `exporter`.
pub fn compute(
    secret: &[u8; 32],
    role: Role,
    flags: u8,
    exporter: &[u8; EXPORTER_LEN],
) -> [u8; PROOF_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &mac_input(role, flags, exporter));
    let mut message = [0u8; PROOF_LEN];
    message[0] = VERSION;
    message[1] = flags;
    message[2..].copy_from_slice(tag.as_ref());
    message
}

/// Verifies a proof message from `role`; returns its flags.
pub fn verify(
    secret: &[u8; 32],
    role: Role,
    exporter: &[u8; EXPORTER_LEN],
    message: &[u8; PROOF_LEN],
) -> Result<u8, ProofError> {
    let flags = message[1];
    if message[0] != VERSION || flags & !FLAG_PLAINTEXT_AFTER_AUTH != 0 {
        return Err(ProofError::Malformed);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &mac_input(role, flags, exporter), &message[2..])
        .map_err(|_| ProofError::Mismatch)?;
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_flags_and_connection() {
        let secret = [7u8; 32];
        let exporter = [1u8; 32];
        let proof = compute(&secret, Role::Cons, 0, &exporter);
        assert_eq!(verify(&secret, Role::Cons, &exporter, &proof), Ok(0));
        assert_eq!(
            verify(&[8u8; 32], Role::Cons, &exporter, &proof),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            verify(&secret, Role::Prod, &exporter, &proof),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            verify(&secret, Role::Cons, &[2u8; 32], &proof),
            Err(ProofError::Mismatch)
        );
        let mut flipped = proof;
        flipped[1] = FLAG_PLAINTEXT_AFTER_AUTH;
        assert_eq!(
            verify(&secret, Role::Cons, &exporter, &flipped),
            Err(ProofError::Mismatch)
        );
        flipped[1] = 0x80;
        assert_eq!(
            verify(&secret, Role::Cons, &exporter, &flipped),
            Err(ProofError::Malformed)
        );
    }
}
