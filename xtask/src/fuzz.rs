//! `cargo xtask fuzz [--secs N] [TARGET...]`: builds the coverage-guided
//! fuzz targets in `fuzz/` (cargo fuzz: libFuzzer with AddressSanitizer and
//! overflow checks, on nightly) and runs each for N seconds over its
//! committed seeds (`fuzz/seeds/T`), its crash regressions
//! (`fuzz/regressions/T`, every input that ever crashed it) and its working
//! corpus (`fuzz/corpus/T`, not committed). A crash fails the command and
//! names the saved input and how to replay it. `cargo xtask test` does not
//! build these: it replays every target's seeds and regressions through the
//! same checks (`fuzz/checks/T.rs`) in the ordinary test build
//! (gateway/src/fuzz_replay.rs); searching is this command's.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::cmd;

/// Every fuzz target (a `[[bin]]` of `fuzz/Cargo.toml`).
pub const TARGETS: &[&str] = &[
    "tls_records",
    "channel_proof",
    "control_calls",
    "operator_inputs",
    "server_config",
    "xdp_packet",
    "client_inputs",
];

/// cargo-fuzz, pinned to a version that builds with this machine's toolchains.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run did, from libFuzzer's final statistics.
#[derive(Debug, Default)]
pub struct RunStats {
    pub secs: u64,
    pub execs: u64,
    pub execs_per_sec: u64,
    pub new_units: u64,
    pub peak_rss_mb: u64,
}

/// Installs cargo-fuzz if it is missing (a setup step).
pub fn ensure_cargo_fuzz() -> anyhow::Result<String> {
    let current =
        cmd::output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if current.contains(CARGO_FUZZ_VERSION) {
        return Ok(format!("cargo-fuzz {CARGO_FUZZ_VERSION} already installed"));
    }
    cmd::run(cmd::quick_install(&mut Command::new("cargo")).args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))?;
    Ok(format!("installed cargo-fuzz {CARGO_FUZZ_VERSION}"))
}

/// The command: runs the chosen targets (all without names) for `secs`
/// each and fails if any crashed.
pub fn run(root: &Path, secs: u64, targets: &[String]) -> anyhow::Result<()> {
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "unknown fuzz target {t:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let results = run_each(root, secs, &chosen)?;
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(t, _)| t.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds once, then runs each target for `secs`, printing each outcome and
/// a table of execution rates; the build failing is an error, a target
/// failing is its result.
pub fn run_each(
    root: &Path,
    secs: u64,
    targets: &[&str],
) -> anyhow::Result<Vec<(String, anyhow::Result<RunStats>)>> {
    ensure_cargo_fuzz()?;
    build(root)?;
    let mut results = Vec::new();
    for target in targets {
        let result = run_one(root, target, secs);
        match &result {
            Ok(s) => println!(
                "fuzz: {target}: ok, {} runs in {} s ({} execs/s), {} new corpus inputs, peak RSS {} MB",
                s.execs, s.secs, s.execs_per_sec, s.new_units, s.peak_rss_mb
            ),
            Err(err) => println!("fuzz: {target}: FAILED: {err:#}"),
        }
        results.push((target.to_string(), result));
    }
    println!(
        "fuzz: {:<16} {:>12} {:>10} {:>8}",
        "target", "runs", "execs/s", "new"
    );
    for (target, result) in &results {
        match result {
            Ok(s) => println!(
                "fuzz: {:<16} {:>12} {:>10} {:>8}",
                target, s.execs, s.execs_per_sec, s.new_units
            ),
            Err(_) => println!("fuzz: {target:<16} {:>12}", "CRASHED"),
        }
    }
    Ok(results)
}

fn fuzz_dir(root: &Path) -> PathBuf {
    root.join("fuzz")
}

/// One build of every target: release with line tables for crash reports,
/// debug assertions and overflow checks on, AddressSanitizer (cargo fuzz's
/// default).
fn build(root: &Path) -> anyhow::Result<()> {
    println!("fuzz: building the targets (nightly, libFuzzer, ASan, debug assertions) ...");
    cmd::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "build",
                "--release",
                "--debug-assertions",
            ])
            .current_dir(fuzz_dir(root)),
    )
}

fn run_one(root: &Path, target: &str, secs: u64) -> anyhow::Result<RunStats> {
    let dir = fuzz_dir(root);
    let binary = dir
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // New inputs go to the first directory; seeds and regressions are only read.
    let mut inputs = vec![corpus];
    for extra in ["seeds", "regressions"] {
        let d = dir.join(extra).join(target);
        if d.is_dir() {
            inputs.push(d);
        }
    }
    println!("fuzz: {target} for {secs} s ...");
    let started = Instant::now();
    let mut command = Command::new(&binary);
    command
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=20")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(&inputs)
        .env("ASAN_OPTIONS", "detect_odr_violation=0");
    let out = command
        .output()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let saved = stderr
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
            .unwrap_or("(no input saved)");
        bail!(
            "fuzz target {target} failed ({}):\n{}\n\nthe input is {saved}; replay it with \
             `cd fuzz && cargo +nightly fuzz run {target} {saved}`, then move it to \
             fuzz/regressions/{target}/ once fixed",
            out.status,
            tail.join("\n")
        );
    }
    let stat = |name: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(RunStats {
        secs: started.elapsed().as_secs(),
        execs: stat("number_of_executed_units"),
        execs_per_sec: stat("average_exec_per_sec"),
        new_units: stat("new_units_added"),
        peak_rss_mb: stat("peak_rss_mb"),
    })
}
