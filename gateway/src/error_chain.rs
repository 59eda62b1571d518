//! One line for an error and all its sources, for logs and messages.
#![forbid(unsafe_code)]

/// An error and its sources on one line, separated by ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
