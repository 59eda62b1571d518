//! The kernel-TLS channel suite: builds the gateway's `ktls_selftest` example
//! (gateway/examples/ktls_selftest.rs: two in-process gateways with kernel TLS
//! on both sides, hash-verified streams both ways, half-close, a TLS alert
//! mid-stream, a wrong secret, userspace <-> kernel interop, key updates,
//! back-pressure) and runs it in the VM on each kernel.
//!
//! The example is built like every other workspace target (same target
//! directory and profile), so after the test build only the example itself
//! compiles; it is dynamically linked, and the libraries `ldd` lists (glibc,
//! libgcc_s, the loader) go into the VM at their host paths. The gateway's
//! build script embeds the eBPF object, so the nightly toolchain and
//! bpf-linker that `cargo xtask setup` installs are needed as for any
//! gateway build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{PreparedKernel, VmOutput, host, run_in_vm};

/// MiB sent each way by the selftest's stream case (emulation is slow).
pub const SELFTEST_MIB: usize = 2;
/// Hard limit for one VM run (boot, module loading, the selftest).
pub const SELFTEST_TIMEOUT: Duration = Duration::from_secs(420);

/// The selftest binary and the shared libraries it loads (copied into the
/// VM at the same paths).
pub struct Selftest {
    pub binary: PathBuf,
    pub libs: Vec<PathBuf>,
}

impl Selftest {
    /// What the VM gets: the binary as /bin/ktls_selftest, each library at
    /// its host path.
    pub fn vm_files(&self) -> Vec<(&Path, &str)> {
        let mut files = vec![(self.binary.as_path(), "ktls_selftest")];
        for lib in &self.libs {
            if let Some(path) = lib.to_str() {
                files.push((lib.as_path(), path));
            }
        }
        files
    }
}

/// Builds `ktls_selftest` in the workspace's own target directory and
/// profile, with the environment `environment` sets (the test run's lint
/// wrapper, so nothing compiles again after its build stage), and lists the
/// libraries it links (`ldd`).
pub fn build_ktls_selftest(
    workspace: &Path,
    environment: impl FnOnce(&mut Command),
) -> Result<Selftest> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    environment(&mut cmd);
    cmd.current_dir(workspace)
        .args(["build", "-p", "gateway", "--example", "ktls_selftest"]);
    host::run(&mut cmd).context(
        "building gateway/examples/ktls_selftest (needs the eBPF toolchain from `cargo xtask setup`)",
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target_dir
        .join("debug")
        .join("examples")
        .join("ktls_selftest");
    // Without its debug info the binary is a fraction of the size, which the
    // initramfs (and the emulated boot unpacking it) notices.
    let stripped = binary.with_file_name("ktls_selftest.stripped");
    let binary = match host::which("strip") {
        Some(strip) => {
            host::run(Command::new(strip).arg("-o").arg(&stripped).arg(&binary))
                .context("stripping the kTLS selftest")?;
            stripped
        }
        None => binary,
    };
    let libs = if host::elf_is_static(&binary)
        .with_context(|| format!("inspecting {}", binary.display()))?
    {
        Vec::new()
    } else {
        let listing = host::run_stdout(Command::new(host::tool("ldd")?).arg(&binary))
            .context("listing the selftest's libraries")?;
        shared_libraries(&listing)
    };
    Ok(Selftest { binary, libs })
}

/// The library paths in `ldd` output ("libc.so.6 => /lib/.../libc.so.6 (0x..)"
/// and the loader's "/lib64/ld-linux-x86-64.so.2 (0x..)"); the vDSO has none.
fn shared_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Runs the selftest binary on one prepared kernel.
pub fn run_ktls_selftest(
    kernel: &PreparedKernel,
    selftest: &Selftest,
    mib: usize,
) -> Result<VmOutput> {
    run_in_vm(
        kernel,
        &selftest.vm_files(),
        &format!("RUST_BACKTRACE=1 ktls_selftest {mib}"),
        SELFTEST_TIMEOUT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            shared_libraries(ldd),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
