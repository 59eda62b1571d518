//! `cargo xtask test`: the one command that proves the project on a machine:
//! setup, formatting, one build of every target that is also the lint pass
//! (clippy runs as the workspace's rustc wrapper, so lints, binaries and
//! tests come out of a single compilation), every cargo test (unit, the fuzz
//! targets' committed corpus replayed, loopback, and the end-to-end suites in
//! network namespaces, which need root), the package's install test, then
//! the kernel TLS tests in VMs from the same build. It ends with one line
//! counting every test it ran and the time of each stage.
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::{cmd, setup, vm};

/// Passed and failed counts, summed over stages.
#[derive(Default, Clone, Copy)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

/// The names of what failed, printed again at the very end of the run:
/// CI keeps only the tail of a long log, and that tail must say which
/// test to look at.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, name: impl Into<String>) {
        self.0.push(name.into());
    }

    fn print(&self) {
        for name in &self.0 {
            println!("failed: {name}");
        }
    }
}

pub fn run(root: &Path, with_vm: bool, cargo_args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut laps = Laps::default();
    setup::run(&[setup::Purpose::Test])?;
    laps.mark("setup");
    if !cmd::is_root() {
        bail!(
            "the end-to-end tests build network namespaces and load eBPF programs: run as root \
             (CI does), e.g. `sudo -E cargo xtask test`"
        );
    }
    stage("formatting", || {
        cmd::run(
            Command::new("cargo")
                .args(["fmt", "--all", "--check"])
                .current_dir(root),
        )
    })?;
    laps.mark("formatting");
    let lints = LintedBuild::new(root)?;
    stage("build and lints", || {
        // Every target the tests run, linted as it compiles: what `cargo
        // clippy --all-targets -- -D warnings` checks, without a second
        // (check-mode) compilation of the workspace and its dependencies.
        cmd::run(
            lints
                .apply(&mut Command::new("cargo"))
                .args(["test", "--all-targets", "--no-run"])
                .current_dir(root),
        )
    })?;
    laps.mark("build and lints");
    let leaks = root.join("target/e2e-leaks");
    let _ = std::fs::remove_dir_all(&leaks);
    let mut failures = Failures::default();
    let mut tally = cargo_tests(root, &lints, cargo_args, &mut failures)?;
    laps.mark("cargo test");
    let found = secrets_in_logs(&leaks)?;
    if !found.is_empty() {
        failures.note("secrets in e2e logs (see `SECRETS IN LOGS` above)");
    }
    tally.passed += u64::from(found.is_empty());
    tally.failed += u64::from(!found.is_empty());
    if cargo_args.is_empty() {
        let installed = package_stage(root);
        if let Err(err) = &installed {
            eprintln!("xtask test: package install test FAILED: {err:#}");
            failures.note(format!("package install: {err:#}"));
        }
        tally.passed += u64::from(installed.is_ok());
        tally.failed += u64::from(installed.is_err());
        laps.mark("package install");
    }
    if with_vm {
        let vm = vm_stage(root, &[], &lints)?;
        if vm.failed > 0 {
            failures.note("kernel-TLS VMs (see `test vm::... FAILED` above)");
        }
        tally.passed += vm.passed;
        tally.failed += vm.failed;
        laps.mark("kernel-TLS VMs");
    }
    println!(
        "xtask test: finished in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        laps.summary()
    );
    failures.print();
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    Ok(())
}

/// How long each stage of the run took, for the closing line: CI's time
/// budget is watched stage by stage.
struct Laps {
    since: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Default for Laps {
    fn default() -> Self {
        Laps {
            since: Instant::now(),
            done: Vec::new(),
        }
    }
}

impl Laps {
    fn mark(&mut self, stage: &'static str) {
        self.done.push((stage, self.since.elapsed().as_secs_f64()));
        self.since = Instant::now();
    }

    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(stage, secs)| format!("{stage} {secs:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The findings the e2e suites wrote to `dir` (see the e2e crate's
/// `leaks` module): every gateway log and client output was scanned for
/// secrets when it ended. Printed; empty when nothing leaked.
fn secrets_in_logs(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            found.push(text);
        }
    }
    if found.is_empty() {
        println!("xtask test: no secret in any e2e log or client output");
    } else {
        println!(
            "xtask test: SECRETS IN LOGS ({} logs):\n{}",
            found.len(),
            found.join("\n")
        );
    }
    Ok(found)
}

/// The environment under which `cargo` compiles the workspace's own crates
/// with clippy's driver in place of rustc (as `cargo clippy` does, but in a
/// full build): lints are reported, and with `-D warnings` fail the build,
/// while the output is the same binaries. Every cargo command of the run
/// uses it, so none recompiles what another built.
pub struct LintedBuild {
    driver: std::path::PathBuf,
}

impl LintedBuild {
    /// Finds the stable toolchain's `clippy-driver` (the `clippy` component
    /// of rust-toolchain.toml).
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let path = cmd::output(
            Command::new("rustup")
                .args(["which", "clippy-driver"])
                .current_dir(root),
        )
        .context("finding clippy-driver (rustup component add clippy)")?;
        Ok(LintedBuild {
            driver: path.trim().into(),
        })
    }

    /// Sets the wrapper and clippy's arguments (`-D warnings`) on `command`.
    pub fn apply<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command.env("RUSTC_WORKSPACE_WRAPPER", &self.driver).env(
            "CLIPPY_ARGS",
            "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
        )
    }
}

/// The .deb from the binaries the build stage made (the dev profile is
/// optimised too), installed into a fresh Debian root and run there as
/// the service user (see `package::install_test`).
fn package_stage(root: &Path) -> anyhow::Result<()> {
    println!("xtask test: package install ...");
    let deb = crate::package::build(
        root,
        &crate::package::PackageOpts {
            profile: "dev".into(),
            out: None,
            no_build: true,
            install_test: true,
        },
    )?;
    crate::package::install_test::run(root, &deb)
}

fn stage(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    println!("xtask test: {name} ...");
    f().with_context(|| format!("stage `{name}` failed"))
}

/// Runs `cargo test` over the default members, echoing its output and
/// summing its "test result" lines.
fn cargo_tests(
    root: &Path,
    lints: &LintedBuild,
    extra: &[String],
    failures: &mut Failures,
) -> anyhow::Result<Tally> {
    println!("xtask test: cargo test ...");
    let mut command = Command::new("cargo");
    lints.apply(&mut command);
    // Every test binary runs even when an earlier one failed, so the tally
    // and the report cover the whole suite.
    command
        .args(["test", "--no-fail-fast"])
        .args(extra)
        .current_dir(root)
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd::describe(&command)))?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(name) = failed_test_name(&line) {
            failures.note(name);
        }
        if let Some((passed, failed)) = parse_result_line(&line) {
            tally.passed += passed;
            tally.failed += failed;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && tally.failed == 0 {
        // A build failure or a crashed test binary: count it as a failure.
        tally.failed += 1;
        failures.note(format!(
            "cargo test exited with {status} (a build failure or a crashed test binary: see above)"
        ));
    }
    Ok(tally)
}

/// The test's name from a libtest line "test a::b ... FAILED".
fn failed_test_name(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("test ")?;
    let name = rest.strip_suffix(" ... FAILED")?;
    Some(format!("cargo test {name}"))
}

/// Parses "test result: ok. 19 passed; 0 failed; ..." lines.
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split([';', '.'])
            .map(str::trim)
            .find_map(|part| part.strip_suffix(word).and_then(|n| n.trim().parse().ok()))
    };
    Some((count(" passed")?, count(" failed")?))
}

/// Boots each kernel under qemu and runs the kernel-TLS tests inside.
pub fn vm_stage(root: &Path, names: &[String], lints: &LintedBuild) -> anyhow::Result<Tally> {
    let kernels: Vec<vm::KernelSpec> = if names.is_empty() {
        vm::DEFAULT_KERNELS.to_vec()
    } else {
        names
            .iter()
            .map(|name| {
                vm::kernel_by_name(name)
                    .copied()
                    .with_context(|| format!("unknown kernel {name:?}: use 6.1, 6.12 or 7.x"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let cache = vm::default_cache_dir(root);
    let mut tally = Tally::default();
    println!(
        "xtask vm-test: building the kernel-TLS selftest (two gateways in one binary; its libraries go into the VM) ..."
    );
    // The example comes out of the test build (same wrapper, so nothing
    // compiles again here after `cargo xtask test`'s build stage).
    let selftest = vm::build_ktls_selftest(root, |command| {
        lints.apply(command);
    })
    .context("building the kTLS selftest")?;
    for spec in &kernels {
        println!(
            "xtask vm-test: kernel {} (Debian {}) ...",
            spec.name, spec.suite
        );
        let kernel = vm::prepare_kernel(spec, &cache)
            .with_context(|| format!("preparing kernel {}", spec.name))?;
        let outcome = vm::run_ktls_probe(
            &kernel,
            &selftest,
            4 << 20,
            std::time::Duration::from_secs(120),
        )?;
        print!("{}", outcome.command_output);
        // The gateway's probe must also tell whether this kernel can rekey.
        let rekey = if spec.ktls_rekey { "yes" } else { "no" };
        // And ChaCha20-Poly1305, which the channel prefers where it cannot.
        let probe_outcome = outcome.ensure_success().and_then(|()| {
            for want in [format!("rekey: {rekey}"), "chacha20: yes".to_string()] {
                if !outcome.command_output.lines().any(|l| l.trim() == want) {
                    anyhow::bail!("the probe did not report `{want}` for kernel {}", spec.name);
                }
            }
            Ok(())
        });
        match probe_outcome {
            Ok(()) => {
                println!(
                    "test vm::{}::ktls_probe ... ok ({:.0} s)",
                    spec.name,
                    outcome.elapsed.as_secs_f64()
                );
                tally.passed += 1;
            }
            Err(err) => {
                println!("test vm::{}::ktls_probe ... FAILED: {err:#}", spec.name);
                tally.failed += 1;
            }
        }
        // Two gateways with kernel TLS on both sides: streams both ways
        // hash-verified, half-close, an alert mid-stream, a wrong secret.
        let outcome = vm::run_ktls_selftest(&kernel, &selftest, vm::SELFTEST_MIB)?;
        print!("{}", outcome.command_output);
        match outcome.ensure_success() {
            Ok(()) => {
                println!(
                    "test vm::{}::ktls_two_gateways ... ok ({:.0} s)",
                    spec.name,
                    outcome.elapsed.as_secs_f64()
                );
                tally.passed += 1;
            }
            Err(err) => {
                println!(
                    "test vm::{}::ktls_two_gateways ... FAILED: {err:#}",
                    spec.name
                );
                tally.failed += 1;
            }
        }
    }
    println!("vm-test: {} passed, {} failed", tally.passed, tally.failed);
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::{failed_test_name, parse_result_line};

    #[test]
    fn names_failed_tests() {
        assert_eq!(
            failed_test_name("test reload::sighup_keeps_sessions ... FAILED").as_deref(),
            Some("cargo test reload::sighup_keeps_sessions")
        );
        assert_eq!(failed_test_name("test reload::x ... ok"), None);
        assert_eq!(
            failed_test_name("test result: FAILED. 1 passed; 1 failed"),
            None
        );
    }

    #[test]
    fn reads_cargo_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 19 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.44s"
            ),
            Some((19, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 8 passed; 11 failed; 0 ignored"),
            Some((8, 11))
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
    }
}
