//! Fuzz target `server_config`: libFuzzer feeds [`check::check_input`] (fuzz/checks/server_config.rs,
//! where what is checked is written); `cargo test` replays the same
//! function over the committed seeds and crash regressions.
#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};

#[path = "../checks/server_config.rs"]
mod check;

fuzz_target!(|data: &[u8]| -> Corpus {
    if check::check_input(data) {
        Corpus::Keep
    } else {
        Corpus::Reject
    }
});
