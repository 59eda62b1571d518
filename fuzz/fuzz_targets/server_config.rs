//! Fuzz target `server_config`: libFuzzer feeds [`check::check_input`] (fuzz/checks/server_config.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/server_config.rs"]
mod check;

include!("../checks/entry.rs");
