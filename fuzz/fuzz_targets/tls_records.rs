//! Fuzz target `tls_records`: libFuzzer feeds [`check::check_input`] (fuzz/checks/tls_records.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/tls_records.rs"]
mod check;

include!("../checks/entry.rs");
