//! Boot Debian's kernels under qemu (software emulation) to test what this machine's kernel lacks,
//! above all kernel TLS.
//!
//! The host kernel has no `CONFIG_TLS`, Debian's distribution kernels do. This module downloads a
//! Debian kernel package through a private apt configuration (the machine's own apt state is never
//! touched), extracts `vmlinuz` and the few modules kernel TLS needs, and boots it with a tiny
//! busybox initramfs that runs one shell command and reports its exit code.
//!
//! ```text
//! let cache = vm::default_cache_dir(workspace_root);
//! let kernel = vm::prepare_kernel(&vm::KERNELS[0], &cache)?;          // cached after the first call
//! let selftest = vm::build_ktls_selftest(workspace_root, |_| {})?;    // gateway's ktls_selftest example
//! let out = vm::run_in_vm(&kernel, &selftest.vm_files(),
//!                         "ktls_selftest probe", Duration::from_secs(60))?;
//! out.ensure_success()?;
//! ```
//!
//! Layout of the cache directory (everything is rebuilt on demand, delete any part to refresh it):
//! - `apt/<suite>/`: the private apt configuration, package lists and downloaded `.deb`s (the
//!   `.deb`s and the extraction staging area are removed once a kernel is prepared);
//! - `kernels/<name>/`: `vmlinuz`, `modules/*.ko` (decompressed), `base.cpio` (busybox + modules)
//!   and `kernel.txt`, the manifest whose presence marks the kernel as prepared;
//! - `runs/`: one short-lived directory per VM run (initramfs, console log), removed afterwards
//!   unless the run failed to produce its sentinel line.
//!
//! Host tools used (installed with apt-get when missing and running as root): apt-get, apt-cache,
//! dpkg-deb (dpkg), modinfo (kmod), xz (xz-utils), zstd, busybox (busybox-static),
//! qemu-system-x86_64 (qemu-system-x86). The initramfs is written by this module itself (newc
//! format), so `cpio` is not needed.

mod apt;
mod host;
mod initramfs;
mod kernel;
mod ktls_suite;
mod probe;
mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use kernel::prepare_kernel;
pub use ktls_suite::{SELFTEST_MIB, build_ktls_selftest, run_ktls_selftest};
pub use probe::run_ktls_probe;
pub use qemu::run_in_vm;

/// One Debian kernel the VM tests can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// Short name used on the command line and as the cache directory name ("6.1", "6.12", "7.x").
    pub name: &'static str,
    /// Debian suite the kernel comes from ("bookworm", "trixie", "sid").
    pub suite: &'static str,
    /// The meta package whose dependency is the versioned kernel image package.
    pub meta_package: &'static str,
    /// The kernel release must start with this (e.g. "6.1."), so a suite that moved on to another
    /// kernel series is noticed instead of silently tested.
    pub release_prefix: &'static str,
    /// Modules to load, in this order (each one's own `modinfo` dependencies are loaded before it).
    /// Every name must exist either as a loadable module or in `modules.builtin`; builtin ones are
    /// skipped. The crypto ones are what `gcm(aes)` needs at runtime; nothing autoloads them in a
    /// bare initramfs (setting TLS keys then fails with ENOENT).
    pub modules: &'static [&'static str],
    /// Whether its kernel TLS can take a new key after a KeyUpdate (Linux
    /// 6.14 on); the probe stage checks that the gateway's probe says so.
    pub ktls_rekey: bool,
}

/// Debian 12 (bookworm): 6.1 LTS, the kernel most production DTNs run.
pub const KERNEL_6_1: KernelSpec = KernelSpec {
    name: "6.1",
    suite: "bookworm",
    meta_package: "linux-image-amd64",
    release_prefix: "6.1.",
    // crypto_null is builtin on 6.1.
    modules: &[
        "gf128mul",
        "ghash-generic",
        "crypto_null",
        "ctr",
        "gcm",
        // ChaCha20-Poly1305 for kernel TLS: the template finds chacha20 and
        // poly1305 by name at run time, so their providers are named here.
        "chacha_generic",
        "poly1305_generic",
        "chacha20poly1305",
        "tls",
        "veth",
    ],
    ktls_rekey: false,
};

/// Debian 13 (trixie): 6.12 LTS.
pub const KERNEL_6_12: KernelSpec = KernelSpec {
    name: "6.12",
    suite: "trixie",
    meta_package: "linux-image-amd64",
    release_prefix: "6.12.",
    // ctr is builtin on 6.12; gcm depends on crypto_null.
    modules: &[
        "gf128mul",
        "ghash-generic",
        "crypto_null",
        "ctr",
        "gcm",
        // ChaCha20-Poly1305 for kernel TLS: the template finds chacha20 and
        // poly1305 by name at run time, so their providers are named here.
        "chacha_generic",
        "poly1305_generic",
        "chacha20poly1305",
        "tls",
        "veth",
    ],
    ktls_rekey: false,
};

/// Debian unstable (sid): 7.x at the time of writing. A moving target: its cache is kept until
/// deleted, so delete `kernels/7.x` (or the whole cache) to pick up a newer upload.
pub const KERNEL_SID: KernelSpec = KernelSpec {
    name: "7.x",
    suite: "sid",
    meta_package: "linux-image-amd64",
    release_prefix: "7.",
    // ghash-generic is gone (GHASH is in the builtin libgf128hash); the package is split into
    // linux-image-* (meta), linux-binary-* (vmlinuz), linux-modules-* and linux-base-* (modules.builtin).
    // ChaCha20-Poly1305: `chacha` provides chacha20 (poly1305 comes from
    // libpoly1305 by symbol).
    modules: &[
        "gf128mul",
        "crypto_null",
        "ctr",
        "gcm",
        "chacha",
        "chacha20poly1305",
        "tls",
        "veth",
    ],
    ktls_rekey: true,
};

/// Every kernel known here, all in the default test matrix.
pub const KERNELS: &[KernelSpec] = &[KERNEL_6_1, KERNEL_6_12, KERNEL_SID];

/// The default matrix: Debian 12's 6.1 and Debian 13's 6.12 (stable suites, so reproducible;
/// their kernel TLS cannot take new keys) and unstable's 7.x (a moving target, the one that
/// can: kernel TLS key updates are tested there).
pub const DEFAULT_KERNELS: &[KernelSpec] = &[KERNEL_6_1, KERNEL_6_12, KERNEL_SID];

/// Look a kernel up by its `name` ("6.1", "6.12", "7.x") or its suite ("bookworm", ...).
pub fn kernel_by_name(name: &str) -> Option<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.name == name || k.suite == name)
}

/// `<workspace>/target/vm-cache`, honouring `CARGO_TARGET_DIR` when it is set.
pub fn default_cache_dir(workspace_root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t.join("vm-cache")
            } else {
                workspace_root.join(t).join("vm-cache")
            }
        }
        _ => workspace_root.join("target").join("vm-cache"),
    }
}

/// A kernel ready to boot: everything lives under `dir` in the cache.
#[derive(Debug, Clone)]
pub struct PreparedKernel {
    pub spec: KernelSpec,
    /// `<cache>/kernels/<name>`.
    pub dir: PathBuf,
    /// The kernel image (bzImage).
    pub vmlinuz: PathBuf,
    /// `uname -r` of the kernel, e.g. "6.1.0-50-amd64".
    pub release: String,
    /// The Debian packages it came from, as "name=version".
    pub packages: Vec<String>,
    /// Decompressed module files, in load order (dependencies first).
    pub modules: Vec<PathBuf>,
    /// Requested modules that are built into this kernel (nothing to load).
    pub builtin: Vec<String>,
    /// The cached base initramfs (busybox + modules), to which each run appends its own archive.
    pub base_initramfs: PathBuf,
}

/// What one VM run produced.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// Everything the guest printed on its serial console (kernel, init script, command), with
    /// carriage returns removed.
    pub console: String,
    /// qemu's own stderr (empty unless qemu complained).
    pub qemu_stderr: String,
    /// The command's exit status, parsed from the sentinel line; `None` if the sentinel never
    /// appeared (timeout, kernel panic, the command hung or killed the VM).
    pub exit_code: Option<i32>,
    /// Content of /proc/sys/net/ipv4/tcp_available_ulp after loading the modules.
    pub tcp_available_ulp: Option<String>,
    /// Modules whose insmod failed (by file stem).
    pub insmod_failures: Vec<String>,
    /// The hard timeout hit and qemu was killed.
    pub timed_out: bool,
    /// Wall-clock time from starting qemu to its exit.
    pub elapsed: Duration,
    /// Guest uptime (seconds) when the init script started, i.e. kernel boot time under emulation.
    pub guest_boot_secs: Option<f64>,
    /// Only the command's own output: the console lines between the begin marker and the sentinel.
    pub command_output: String,
}

impl VmOutput {
    /// True when the sentinel appeared with exit status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// `Ok` when the command exited 0; otherwise an error naming why, with the console's tail.
    pub fn ensure_success(&self) -> anyhow::Result<()> {
        if self.success() {
            return Ok(());
        }
        let why = match (self.exit_code, self.timed_out) {
            (Some(c), _) => format!("command exited with status {c}"),
            (None, true) => format!("VM timed out after {:.1} s", self.elapsed.as_secs_f64()),
            (None, false) => "VM stopped without reporting the command's exit status".to_string(),
        };
        let tail: Vec<&str> = self.console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "{why}\n--- last console lines ---\n{}\n--- qemu stderr ---\n{}",
            tail.join("\n"),
            self.qemu_stderr.trim_end()
        )
    }
}
