//! The kernel-TLS channel suite: builds the gateway's `ktls_selftest` example
//! (gateway/examples/ktls_selftest.rs: two in-process gateways with kernel TLS
//! on both sides, hash-verified streams both ways, half-close, a TLS alert
//! mid-stream, a wrong secret, userspace <-> kernel interop) as a static
//! binary and runs it in the VM on each kernel.
//!
//! The binary is built with cargo, not plain rustc: it links the gateway
//! library (rustls, ring, tokio). `-C target-feature=+crt-static` goes in
//! through CARGO_ENCODED_RUSTFLAGS (which wins over any RUSTFLAGS an outer
//! cargo left behind) together with an explicit `--target`, so build scripts
//! and proc macros stay dynamic and only the example is static. A separate
//! target directory (`target/static`) keeps the main build's artifacts
//! untouched. The gateway's build script still builds the eBPF object (it is
//! embedded in the library), so the nightly toolchain and bpf-linker that
//! `cargo xtask setup` installs are needed here as for any gateway build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{PreparedKernel, VmOutput, host, run_in_vm};

/// The host target the static binary is built for.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// MiB sent each way by the selftest's stream case (emulation is slow).
pub const SELFTEST_MIB: usize = 2;
/// Hard limit for one VM run (boot, module loading, the selftest).
pub const SELFTEST_TIMEOUT: Duration = Duration::from_secs(420);

/// Builds `ktls_selftest` statically; returns the binary's path.
pub fn build_ktls_selftest(workspace: &Path) -> Result<PathBuf> {
    let target_dir = workspace.join("target").join("static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "-p",
            "gateway",
            "--example",
            "ktls_selftest",
            "--target",
            STATIC_TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    eprintln!("vm: building the static kTLS selftest (first build takes minutes)");
    host::run(&mut cmd).context(
        "building gateway/examples/ktls_selftest statically (needs the glibc static libraries from \
         libc6-dev, and the eBPF toolchain from `cargo xtask setup`)",
    )?;
    let binary = target_dir
        .join(STATIC_TARGET)
        .join("debug")
        .join("examples")
        .join("ktls_selftest");
    if !host::elf_is_static(&binary).with_context(|| format!("inspecting {}", binary.display()))? {
        bail!("{} came out dynamically linked", binary.display());
    }
    // Without its debug info the binary is a tenth of the size, which the
    // initramfs (and the emulated boot unpacking it) notices.
    let stripped = binary.with_file_name("ktls_selftest.stripped");
    match host::which("strip") {
        Some(strip) => {
            host::run(Command::new(strip).arg("-o").arg(&stripped).arg(&binary))
                .context("stripping the kTLS selftest")?;
            Ok(stripped)
        }
        None => Ok(binary),
    }
}

/// Runs the selftest binary on one prepared kernel.
pub fn run_ktls_selftest(kernel: &PreparedKernel, binary: &Path, mib: usize) -> Result<VmOutput> {
    run_in_vm(
        kernel,
        &[(binary, "ktls_selftest")],
        &format!("RUST_BACKTRACE=1 ktls_selftest {mib}"),
        SELFTEST_TIMEOUT,
    )
}
