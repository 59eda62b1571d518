//! Fuzz target `client_inputs`: libFuzzer feeds [`check::check_input`] (fuzz/checks/client_inputs.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/client_inputs.rs"]
mod check;

include!("../checks/entry.rs");
