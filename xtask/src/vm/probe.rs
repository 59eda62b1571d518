//! The kernel-TLS smoke test: build `ktls_probe.rs` (a standalone program beside this file) as a
//! static binary with plain rustc, and run it in a VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{PreparedKernel, VmOutput, host, run_in_vm};

/// Path of the probe's source file.
pub fn ktls_probe_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("vm")
        .join("ktls_probe.rs")
}

/// Compile the probe into `<cache>/bin/ktls_probe` (static, glibc `crt-static`), unless the
/// binary is newer than its source.
pub fn build_ktls_probe(cache_dir: &Path) -> Result<PathBuf> {
    let src = ktls_probe_source();
    let bin_dir = cache_dir.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let out = bin_dir.join("ktls_probe");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(b), Some(s)) = (mtime(&out), mtime(&src))
        && b >= s
    {
        return Ok(out);
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let tmp = bin_dir.join(format!("ktls_probe.tmp-{}", std::process::id()));
    host::run(
        Command::new(rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
                "--crate-name",
                "ktls_probe",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&tmp),
    )
    .context(
        "building the kTLS probe (needs the glibc static libraries, Debian package libc6-dev)",
    )?;
    if !host::elf_is_static(&tmp)? {
        bail!("{} came out dynamically linked", tmp.display());
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Build the probe and run it on `kernel` (sending `bytes` through kernel TLS).
pub fn run_ktls_probe(
    kernel: &PreparedKernel,
    cache_dir: &Path,
    bytes: usize,
    timeout: Duration,
) -> Result<VmOutput> {
    let probe = build_ktls_probe(cache_dir)?;
    run_in_vm(
        kernel,
        &[(probe.as_path(), "ktls_probe")],
        &format!("ktls_probe {bytes}"),
        timeout,
    )
}
