//! Fuzz target `control_calls`: libFuzzer feeds [`check::check_input`] (fuzz/checks/control_calls.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/control_calls.rs"]
mod check;

include!("../checks/entry.rs");
