//! The fuzz targets' corpus replayed as ordinary tests: every committed
//! seed (`fuzz/seeds/T`) and crash regression (`fuzz/regressions/T`) of
//! each target in `fuzz/` goes through the very check the target runs
//! (`fuzz/checks/T.rs`, included here), in this crate's normal test build.
//!
//! So `cargo test` proves, without a second (nightly, sanitizer) build, that
//! no input that was ever interesting or ever crashed fails again. What it
//! does not do is search: coverage-guided fuzzing with AddressSanitizer is
//! `cargo xtask fuzz`. The checks name the crates as the fuzz crate does
//! (`gateway::...`), which `extern crate self as gateway` in `lib.rs` makes
//! work inside this crate.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks/channel_proof.rs"]
mod channel_proof;
#[path = "../../fuzz/checks/client_inputs.rs"]
mod client_inputs;
#[path = "../../fuzz/checks/control_calls.rs"]
mod control_calls;
#[path = "../../fuzz/checks/operator_inputs.rs"]
mod operator_inputs;
#[path = "../../fuzz/checks/server_config.rs"]
mod server_config;
#[path = "../../fuzz/checks/tls_records.rs"]
mod tls_records;
#[path = "../../fuzz/checks/xdp_packet.rs"]
mod xdp_packet;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The inputs of `target`: its seeds and regressions, in name order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        files.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target`; fails naming each input whose
/// check panicked, and how to replay it under the fuzzer.
fn replay(target: &str, check: fn(&[u8]) -> bool) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "fuzz target {target} has no committed seed in {}",
        fuzz_dir().join("seeds").join(target).display()
    );
    let mut failed = Vec::new();
    let mut decoded = 0usize;
    for file in &files {
        let data =
            std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        match std::panic::catch_unwind(|| check(&data)) {
            Ok(true) => decoded += 1,
            Ok(false) => {}
            Err(_) => failed.push(file.display().to_string()),
        }
    }
    println!(
        "fuzz replay {target}: {} inputs, {decoded} decoded, {} failed",
        files.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "fuzz target {target} fails on {} of its {} committed inputs (replay one with \
         `cd fuzz && cargo +nightly fuzz run {target} FILE`):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    assert!(
        decoded > 0,
        "no input of {target} decodes: the seeds are stale"
    );
}

/// One test per target, named after it, and the list of replayed targets.
macro_rules! replayed {
    ($($target:ident),* $(,)?) => {
        const REPLAYED: &[&str] = &[$(stringify!($target)),*];
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), $target::check_input);
            }
        )*
    };
}

replayed!(
    channel_proof,
    client_inputs,
    control_calls,
    operator_inputs,
    server_config,
    tls_records,
    xdp_packet,
);

/// Every target of `fuzz/Cargo.toml` is replayed here (a new target without
/// a test above fails this), and runs the very check replayed here (its
/// source includes `fuzz/checks/T.rs`): `cargo xtask test` does not build
/// the fuzz crate itself.
#[test]
fn every_target_is_replayed() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("reading fuzz/Cargo.toml: {e}"));
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|name| *name != "s2cs-fuzz")
        .collect();
    assert!(!targets.is_empty(), "no [[bin]] in fuzz/Cargo.toml");
    for target in &targets {
        assert!(
            REPLAYED.contains(target),
            "fuzz target {target} is not replayed by gateway/src/fuzz_replay.rs"
        );
        let source = fuzz_dir().join(format!("fuzz_targets/{target}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        assert!(
            text.contains(&format!("#[path = \"../checks/{target}.rs\"]"))
                && text.contains("include!(\"../checks/entry.rs\")"),
            "{} does not run fuzz/checks/{target}.rs",
            source.display()
        );
    }
    assert_eq!(
        targets.len(),
        REPLAYED.len(),
        "a replayed target left fuzz/Cargo.toml"
    );
}
