//! Fuzz target `operator_inputs`: libFuzzer feeds [`check::check_input`] (fuzz/checks/operator_inputs.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/operator_inputs.rs"]
mod check;

include!("../checks/entry.rs");
