//! Fuzz target `channel_proof`: libFuzzer feeds [`check::check_input`] (fuzz/checks/channel_proof.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/channel_proof.rs"]
mod check;

include!("../checks/entry.rs");
