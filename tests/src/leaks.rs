//! Secrets in logs: every [`crate::Daemon`] (gateways) and every `s2uc` run
//! has its output scanned when it ends, for the secrets its files hold (the
//! control and channel private keys, persisted session secrets, bearer
//! tokens, client secrets) in every encoding the code could print them
//! (hex either case, base64 standard or URL-safe, padded or not, a Rust
//! `Debug` byte list, the PEM text), and for anything shaped like a session
//! secret (a bare 64-hex-digit value, or a `Debug` list of 32 bytes). A
//! finding is written to [`leaks_dir`] (named after the log) and printed;
//! `cargo xtask test` fails when that directory is not empty after the
//! suites ran, so every e2e suite's logs are covered.
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// A secret and the label a finding names it by (never its value).
pub struct Secret {
    label: String,
    needles: Vec<String>,
}

impl Secret {
    /// Raw secret bytes (session secret, key material, token): every
    /// encoding of them, and of their first 24 bytes (a prefix is a leak too).
    pub fn bytes(label: &str, bytes: &[u8]) -> Secret {
        let mut needles = Vec::new();
        for part in [bytes, &bytes[..bytes.len().min(24)]] {
            let hex: String = part.iter().map(|b| format!("{b:02x}")).collect();
            needles.push(hex.to_uppercase());
            needles.push(hex);
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                // Drop the last few characters: they depend on what follows.
                let text = engine.encode(part);
                let keep = text.len().saturating_sub(4);
                needles.push(text[..keep].to_owned());
            }
            let debug = format!("{:?}", &part[..part.len().min(12)]);
            needles.push(debug.trim_end_matches(']').to_owned());
        }
        Secret::from_needles(label, needles)
    }

    /// A secret that is text (a token, a client secret): the text itself
    /// and its encodings as bytes.
    pub fn text(label: &str, text: &str) -> Secret {
        let mut s = Secret::bytes(label, text.as_bytes());
        s.needles.push(text.to_owned());
        s
    }

    /// A PEM private key: each line of its base64 body, and the DER's hex.
    pub fn pem(label: &str, pem: &str) -> Secret {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("");
        let mut needles: Vec<String> = pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
            .map(str::to_owned)
            .collect();
        if let Ok(der) = STANDARD.decode(body.trim()) {
            needles.extend(Secret::bytes(label, &der).needles);
        }
        Secret::from_needles(label, needles)
    }

    fn from_needles(label: &str, mut needles: Vec<String>) -> Secret {
        needles.retain(|n| n.len() >= 8);
        needles.sort();
        needles.dedup();
        Secret {
            label: label.to_owned(),
            needles,
        }
    }
}

/// Where findings are written: `target/e2e-leaks`.
pub fn leaks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("target/e2e-leaks"))
        .unwrap_or_else(|| PathBuf::from("target/e2e-leaks"))
}

/// What in `log` gives a secret away: known secrets, then shapes.
pub fn scan(log: &str, known: &[Secret]) -> Vec<String> {
    let mut findings = Vec::new();
    for secret in known {
        if let Some(n) = secret.needles.iter().find(|n| log.contains(n.as_str())) {
            let line = log
                .lines()
                .position(|l| l.contains(n.as_str()))
                .unwrap_or(0)
                + 1;
            findings.push(format!(
                "{} appears in the log (line {line}, {} characters of it)",
                secret.label,
                n.len()
            ));
        }
    }
    for (i, line) in log.lines().enumerate() {
        if let Some(what) = secret_shaped(line) {
            findings.push(format!("line {}: {what}", i + 1));
        }
    }
    findings
}

/// A bare run of exactly 64 hex digits (32 bytes printed as hex, not a
/// colon-separated fingerprint), or a `Debug` list of 32 numbers.
fn secret_shaped(line: &str) -> Option<&'static str> {
    let bytes = line.as_bytes();
    let mut run = 0;
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_hexdigit() {
            run += 1;
            continue;
        }
        if run == 64 && !bytes[..i - 64].ends_with(b":") && *b != b':' {
            return Some("a bare 64-hex-digit value (a session secret printed in hex?)");
        }
        run = 0;
    }
    if run == 64 {
        return Some("a bare 64-hex-digit value (a session secret printed in hex?)");
    }
    for list in line.split('[').skip(1) {
        let Some(inner) = list.split(']').next() else {
            continue;
        };
        let items: Vec<&str> = inner.split(", ").collect();
        if items.len() == 32 && items.iter().all(|n| n.parse::<u8>().is_ok()) {
            return Some("a list of 32 bytes (a session secret printed with Debug?)");
        }
    }
    None
}

/// Scans `log` (named `origin`) and records what it finds; returns the
/// findings.
pub fn check(origin: &str, log: &str, known: &[Secret]) -> Vec<String> {
    let findings = scan(log, known);
    if !findings.is_empty() {
        let dir = leaks_dir();
        let name: String = origin
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join(format!("{name}-{}.txt", std::process::id())),
            format!("{origin}\n{}\n", findings.join("\n")),
        );
        eprintln!("---- SECRET IN LOG: {origin}:\n{}", findings.join("\n"));
    }
    findings
}

/// The secrets a gateway's or client's files hold: private keys (`*key*.pem`),
/// session files (`secret_hex`), token and client-secret files, anywhere
/// under `dir`.
pub fn secrets_in(dir: &Path) -> Vec<Secret> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let label = path.display().to_string();
            if name.ends_with(".pem") && text.contains("PRIVATE KEY") {
                found.push(Secret::pem(&format!("the private key {label}"), &text));
            } else if name.ends_with(".json") {
                for hex in json_strings_after(&text, "\"secret_hex\"") {
                    if let Some(bytes) = decode_hex(&hex) {
                        found.push(Secret::bytes(
                            &format!("the session secret in {label}"),
                            &bytes,
                        ));
                    }
                }
            } else if name.contains("token") {
                for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                    if let Some(token) = line.split_whitespace().nth(1) {
                        found.push(Secret::text(&format!("a bearer token of {label}"), token));
                    }
                }
            } else if name.contains("client-secret") || name.contains("client_secret") {
                found.push(Secret::text(
                    &format!("the client secret in {label}"),
                    text.trim(),
                ));
            }
        }
    }
    found
}

fn json_strings_after(text: &str, key: &str) -> Vec<String> {
    text.split(key)
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix(':')?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [
        0x9f, 0x13, 0x77, 0x02, 0xaa, 0x51, 0xc3, 0x08, 0x4e, 0x6d, 0x90, 0x21, 0xbe, 0x35, 0x17,
        0xf0, 0x44, 0x8a, 0x2c, 0x61, 0xd9, 0x0b, 0x73, 0xe5, 0x1f, 0xa8, 0x36, 0xcc, 0x59, 0x02,
        0x8d, 0x7e,
    ];

    #[test]
    fn a_secret_is_found_in_every_encoding() {
        let known = [Secret::bytes("the session secret", &SECRET)];
        let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        for log in [
            format!("INFO secret={hex}"),
            format!("INFO secret={}", hex.to_uppercase()),
            format!("INFO secret={}", STANDARD.encode(SECRET)),
            format!("INFO secret={}", URL_SAFE_NO_PAD.encode(SECRET)),
            format!("DEBUG secret: {:?}", SECRET),
            format!("INFO first half {}", &hex[..48]),
        ] {
            assert!(!scan(&log, &known).is_empty(), "not found in {log:?}");
        }
        let clean = "INFO uid=4f6c1d8e-0b7a-11ef-9c2d-0242ac120002 fingerprint=AB:CD:EF";
        assert!(scan(clean, &known).is_empty());
    }

    #[test]
    fn unknown_secret_shaped_values_are_found_but_fingerprints_are_not() {
        let hex: String = (0..32).map(|b| format!("{b:02x}")).collect();
        assert!(!scan(&format!("x {hex} y"), &[]).is_empty());
        let list: Vec<String> = (0..32).map(|b: u8| b.to_string()).collect();
        assert!(!scan(&format!("k: [{}]", list.join(", ")), &[]).is_empty());
        let fingerprint: Vec<String> = (0..32).map(|b| format!("{b:02X}")).collect();
        assert!(scan(&format!("fingerprint={}", fingerprint.join(":")), &[]).is_empty());
        assert!(scan("sha256=0123abcd", &[]).is_empty());
    }

    #[test]
    fn keys_and_tokens_are_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let der: Vec<u8> = (0..120u8).collect();
        let body = STANDARD.encode(&der);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n{}\n-----END PRIVATE KEY-----\n",
            &body[..64],
            &body[64..]
        );
        std::fs::write(dir.path().join("control-key.pem"), &pem).unwrap();
        std::fs::write(
            dir.path().join("tokens"),
            "alice tok-alice-secret-value-1\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sessions")).unwrap();
        let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            dir.path().join("sessions/u1.json"),
            format!("{{\"uid\": \"u1\", \"secret_hex\": \"{hex}\"}}"),
        )
        .unwrap();
        let known = secrets_in(dir.path());
        assert_eq!(known.len(), 3);
        assert!(!scan(&format!("key line {}", &body[..64]), &known).is_empty());
        assert!(!scan("auth with tok-alice-secret-value-1", &known).is_empty());
        assert!(!scan(&format!("s {}", &hex[..48]), &known).is_empty());
        assert!(scan("nothing to see", &known).is_empty());
    }
}
