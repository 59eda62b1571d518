//! [`ClientError`]: what can go wrong on the client side, each with what
//! the user should do.
#![forbid(unsafe_code)]

/// Client-side errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Network/TLS: could not reach the server. The message carries the
    /// causes (tonic's own text is only "transport error").
    #[error("cannot connect to {endpoint}: {}", with_causes(.source))]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Server: a call failed.
    #[error("{call} failed: {code:?}: {message}")]
    Rpc {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// User: bad input.
    #[error("{0}")]
    Invalid(String),
    /// Server: the token was refused (UNAUTHENTICATED).
    #[error("the server {server} refused the token (UNAUTHENTICATED): {message}")]
    TokenRefused { server: String, message: String },
    /// Server: a token is required and none was sent (UNAUTHENTICATED).
    #[error(
        "the server {server} requires a token (UNAUTHENTICATED): {message}; pass --token, set $S2UC_TOKEN or run s2uc login"
    )]
    TokenMissing { server: String, message: String },
}

impl ClientError {
    /// A failed call. A call that failed below gRPC (the connection broke)
    /// carries the cause in the status's source chain: it is appended.
    pub fn rpc(call: &'static str, s: tonic::Status) -> Self {
        let mut message = s.message().to_owned();
        let chain = source_chain(&s);
        if chain.starts_with(&message) {
            message = chain;
        } else if !chain.is_empty() && !message.contains(&chain) {
            message = format!("{message}: {chain}");
        }
        ClientError::Rpc {
            call,
            code: s.code(),
            message,
        }
    }

    /// The gRPC code, for RPC failures.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// `e` and its causes, joined with ": ".
fn with_causes(e: &dyn std::error::Error) -> String {
    let chain = source_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

/// The `source()` chain of `e` (not `e` itself), joined with ": ".
pub(super) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}
