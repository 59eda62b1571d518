//! Fuzz target `xdp_packet`: libFuzzer feeds [`check::check_input`] (fuzz/checks/xdp_packet.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

#[path = "../checks/xdp_packet.rs"]
mod check;

include!("../checks/entry.rs");
