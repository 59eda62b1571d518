//! Establishing a channel: the TLS handshake driven by hand over a tokio
//! socket, then the mutual proof ([`super::proof`]), then (opt-in) the
//! orderly exit from TLS for the plaintext mode, and finally taking the
//! traffic keys out of rustls.
//!
//! Until the proof is verified, the socket is read one TLS record at a
//! time (header, then exactly its body), never further. So when the
//! handshake is over, no byte after the peer's last handshake-phase record
//! has left the kernel: the kernel TLS path can take the socket as it is,
//! and in plaintext mode the first plain byte is still in the socket.
use std::io::{self, Read, Write};

use rustls::Connection;
use tokio::net::TcpStream;

use super::error::ChannelError;
use super::proof::{
    self, EXPORTER_LABEL, EXPORTER_LEN, FLAG_PLAINTEXT_AFTER_AUTH, PROOF_LEN, ProofError,
};
use super::record::{HEADER, Secrets};
use super::traffic::{SecretCapture, TrafficHash};
use control::Role;

/// What a successful handshake leaves.
pub(super) struct Handshaken {
    /// None in plaintext mode (TLS is over; the socket carries plain bytes).
    pub secrets: Option<Secrets>,
    pub protocol: &'static str,
    pub cipher: &'static str,
    pub peer_fingerprint: Option<super::Fingerprint>,
}

/// Runs the handshake and the proof on `tcp` (no deadline here: the caller
/// wraps this in one).
pub(super) async fn establish(
    tcp: &TcpStream,
    mut conn: Connection,
    capture: &SecretCapture,
    role: Role,
    secret: &[u8; 32],
    plaintext_after_auth: bool,
) -> Result<Handshaken, ChannelError> {
    let mut driver = Driver { tcp, records_in: 0 };
    // 1. The handshake.
    loop {
        driver.flush(&mut conn).await?;
        if !conn.is_handshaking() {
            break;
        }
        driver.read_record(&mut conn).await?;
    }
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| suite_name(s.suite()))
        .unwrap_or("unknown");
    let peer_fingerprint = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| super::Fingerprint::of_der(cert.as_ref()));

    // 2. The proofs. The connecting side (CONS) sends its proof at once,
    //    then reads the peer's; the accepting side (PROD), which anyone who
    //    completes TLS with a data port reaches, reads and verifies the
    //    peer's proof first and only then sends its own: before the proof
    //    it has sent no byte of application data, so a stranger gets no
    //    MAC over an exporter it knows to test guessed secrets against.
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter[..], EXPORTER_LABEL, None)
        .map_err(|source| ChannelError::Handshake { source })?;
    let flags = if plaintext_after_auth {
        FLAG_PLAINTEXT_AFTER_AUTH
    } else {
        0
    };
    let ours = proof::compute(secret, role, flags, &exporter);
    let proves_first = role == Role::Cons;
    if proves_first {
        send_proof(&mut driver, &mut conn, &ours).await?;
    }
    let mut theirs = [0u8; PROOF_LEN];
    match driver.read_plaintext(&mut conn, &mut theirs).await {
        // The PROD side answers a proof it refuses by closing, never with a
        // proof of its own: say so rather than "closed during the handshake".
        Err(ChannelError::PeerClosed) if proves_first => {
            return Err(ChannelError::BadProof {
                detail: "the PROD gateway closed the connection after our proof without sending \
                         its own: it refused ours (wrong session secret?) or its proof deadline \
                         passed",
            });
        }
        Err(ChannelError::Io { source })
            if proves_first && source.kind() == io::ErrorKind::ConnectionReset =>
        {
            return Err(ChannelError::BadProof {
                detail: "the PROD gateway reset the connection after our proof without sending \
                         its own: it refused ours (wrong session secret?) or its proof deadline \
                         passed",
            });
        }
        other => other?,
    }
    let their_flags = proof::verify(secret, role.peer(), &exporter, &theirs).map_err(|err| match err {
        ProofError::Malformed => ChannelError::BadProof { detail: "malformed proof message" },
        ProofError::Mismatch => ChannelError::BadProof {
            detail: "MAC mismatch (wrong session secret, or a proof replayed from another connection)",
        },
    })?;
    // Nothing may follow the proof inside its record.
    let mut extra = [0u8; 1];
    match conn.reader().read(&mut extra) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
        _ => {
            return Err(ChannelError::BadProof {
                detail: "bytes after the proof in its record",
            });
        }
    }
    if !proves_first {
        send_proof(&mut driver, &mut conn, &ours).await?;
    }
    if their_flags != flags {
        let mode = |f: u8| {
            if f & FLAG_PLAINTEXT_AFTER_AUTH != 0 {
                "wants plaintext after authentication"
            } else {
                "wants TLS"
            }
        };
        return Err(ChannelError::ModeMismatch {
            ours: mode(flags),
            theirs: mode(their_flags),
        });
    }

    // 3a. Plaintext mode: both send close_notify and read up to the peer's;
    //     the next byte in the socket is the first plain one.
    if plaintext_after_auth {
        conn.send_close_notify();
        driver.flush(&mut conn).await?;
        loop {
            match conn.reader().read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(ChannelError::BadProof {
                        detail: "data before close_notify in plaintext mode",
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    driver.read_record(&mut conn).await?
                }
                Err(source) => return Err(ChannelError::Io { source }),
            }
        }
        return Ok(Handshaken {
            secrets: None,
            protocol,
            cipher,
            peer_fingerprint,
        });
    }

    // 3b. TLS: the keys leave rustls for our record layer or the kernel.
    let secrets = take_keys(conn, capture, role)?;
    Ok(Handshaken {
        secrets: Some(secrets),
        protocol,
        cipher,
        peer_fingerprint,
    })
}

/// Sends our proof message and everything rustls has queued before it.
async fn send_proof(
    driver: &mut Driver<'_>,
    conn: &mut Connection,
    ours: &[u8],
) -> Result<(), ChannelError> {
    conn.writer()
        .write_all(ours)
        .map_err(|source| ChannelError::Io { source })?;
    driver.flush(conn).await
}

/// Takes the traffic keys out of rustls, and for TLS 1.3 the traffic
/// secrets `capture` kept (checked against the keys).
fn take_keys(
    conn: Connection,
    capture: &SecretCapture,
    role: Role,
) -> Result<Secrets, ChannelError> {
    let general = |reason: &str| ChannelError::Handshake {
        source: rustls::Error::General(reason.into()),
    };
    let version = conn.protocol_version().ok_or(ChannelError::PeerClosed)?;
    let traffic = match conn
        .negotiated_cipher_suite()
        .and_then(TrafficHash::of_suite)
    {
        Some(hash) => Some(
            capture
                .take(hash)
                .map_err(general)?
                .into_tx_rx(role == Role::Cons),
        ),
        None => None,
    };
    let extracted = conn
        .dangerous_extract_secrets()
        .map_err(|source| ChannelError::Handshake { source })?;
    Secrets::from_rustls(version, extracted, traffic).map_err(general)
}

/// The name logs, metrics and `s2cs check` give a negotiated suite.
pub(super) fn suite_name(suite: rustls::CipherSuite) -> &'static str {
    use rustls::CipherSuite as C;
    match suite {
        C::TLS13_AES_128_GCM_SHA256 => "TLS13_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS13_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS13_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => {
            "TLS12_ECDHE_AES_128_GCM_SHA256"
        }
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => {
            "TLS12_ECDHE_AES_256_GCM_SHA384"
        }
        _ => "TLS12_ECDHE_CHACHA20_POLY1305_SHA256",
    }
}

struct Driver<'a> {
    tcp: &'a TcpStream,
    /// Records fed to rustls so far (0: the peer has sent nothing TLS yet).
    records_in: u64,
}

/// `io::Write` over a non-blocking tokio socket (WouldBlock when full).
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Driver<'_> {
    /// Sends everything rustls has queued (handshake messages, the proof, an
    /// alert).
    async fn flush(&mut self, conn: &mut Connection) -> Result<(), ChannelError> {
        while conn.wants_write() {
            match conn.write_tls(&mut TryWrite(self.tcp)) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.tcp
                        .writable()
                        .await
                        .map_err(|source| ChannelError::Io { source })?;
                }
                Err(source) => return Err(ChannelError::Io { source }),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes from the socket.
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ChannelError> {
        let mut got = 0;
        while got < buf.len() {
            self.tcp
                .readable()
                .await
                .map_err(|source| ChannelError::Io { source })?;
            match self.tcp.try_read(&mut buf[got..]) {
                Ok(0) => return Err(ChannelError::PeerClosed),
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ChannelError::PeerClosed);
                }
                Err(source) => return Err(ChannelError::Io { source }),
            }
        }
        Ok(())
    }

    /// Feeds bytes to rustls and processes them; a rustls error is sent to
    /// the peer as an alert (best effort) and classified.
    async fn feed(&mut self, conn: &mut Connection, mut bytes: &[u8]) -> Result<(), ChannelError> {
        while !bytes.is_empty() {
            conn.read_tls(&mut bytes)
                .map_err(|source| ChannelError::Io { source })?;
            if let Err(err) = conn.process_new_packets() {
                // Tell the peer why (rustls queued an alert), without waiting.
                let _ = conn.write_tls(&mut TryWrite(self.tcp));
                return Err(self.classify(err));
            }
        }
        Ok(())
    }

    fn classify(&self, err: rustls::Error) -> ChannelError {
        match err {
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
            | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
            | rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                ChannelError::Certificate { source: err }
            }
            rustls::Error::InvalidMessage(_) if self.records_in == 0 => {
                ChannelError::NotTls { source: err }
            }
            _ => ChannelError::Handshake { source: err },
        }
    }

    /// Reads one whole TLS record from the socket (never more) into rustls.
    async fn read_record(&mut self, conn: &mut Connection) -> Result<(), ChannelError> {
        let mut header = [0u8; HEADER];
        self.read_exact(&mut header).await?;
        // rustls validates the header (type, version, length) first, so
        // garbage fails here without waiting for a "body".
        self.feed(conn, &header).await?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut body = vec![0u8; len];
        self.read_exact(&mut body).await?;
        self.feed(conn, &body).await?;
        self.records_in += 1;
        Ok(())
    }

    /// Reads exactly `buf.len()` plaintext bytes through rustls.
    async fn read_plaintext(
        &mut self,
        conn: &mut Connection,
        buf: &mut [u8],
    ) -> Result<(), ChannelError> {
        let mut got = 0;
        while got < buf.len() {
            match conn.reader().read(&mut buf[got..]) {
                Ok(0) => return Err(ChannelError::PeerClosed),
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.read_record(conn).await?
                }
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ChannelError::PeerClosed);
                }
                Err(source) => return Err(ChannelError::Io { source }),
            }
        }
        Ok(())
    }
}
