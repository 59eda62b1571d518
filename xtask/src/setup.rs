//! `cargo xtask setup [PURPOSE...]`: installs, idempotently, what one
//! purpose needs on a fresh Debian machine with rustup's stable and nightly
//! toolchains, and nothing more: the demo needs the eBPF toolchain (nightly's
//! rust-src for -Z build-std=core, bpf-linker built against nightly's own
//! LLVM, since no prebuilt binary can be downloaded here) and iproute2; the
//! tests add the Debian packages and Python's grpcio they drive; fuzzing
//! cargo-fuzz; the VM tests qemu and busybox; the package its install
//! test's debootstrap. The benchmarks' peers (HAProxy, nginx, stunnel, ...)
//! are installed by each bench suite from its own list.
//! Every command of `cargo xtask` asks for its own purpose; `setup` without
//! one prepares for all of them.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::cmd;

/// What a machine is being prepared for: each `cargo xtask` command asks
/// for its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    /// `cargo xtask demo`: build the gateway, run namespaces.
    Demo,
    /// `cargo xtask test`: every test stage, the package and VM stages included.
    Test,
    /// `cargo xtask bench`: namespaces (each suite installs its peers).
    Bench,
    /// `cargo xtask fuzz`: cargo-fuzz on nightly.
    Fuzz,
    /// `cargo xtask vm-test`: Debian kernels under qemu.
    Vm,
    /// `cargo xtask package`: the .deb and its install test.
    Package,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Purpose::Demo,
        Purpose::Test,
        Purpose::Bench,
        Purpose::Fuzz,
        Purpose::Vm,
        Purpose::Package,
    ];

    /// The Debian packages this purpose runs (each line says what for).
    pub fn debian_packages(self) -> &'static [&'static str] {
        match self {
            // Network namespaces and veth pairs; the C library to link with.
            Purpose::Demo => &["iproute2", "libc6-dev"],
            Purpose::Test => &[
                "iproute2",
                "libc6-dev",
                // UDP tests: iperf3 -u through a gateway pair; a lossy,
                // reordering WAN with nftables (no netem in this kernel).
                "iperf3",
                "nftables",
                // promtool checks the operators' alert rules and dashboard queries.
                "prometheus",
                // The Vagrantfile's syntax check.
                "ruby",
                // pip for grpcio: SciStream's own client, unchanged.
                "python3-pip",
                // The package and VM stages of the test run.
                "debootstrap",
                "qemu-system-x86",
                "busybox-static",
                "kmod",
                "xz-utils",
                "zstd",
            ],
            // Each bench suite installs the peers it measures itself (its
            // own list, `--no-install` to refuse): HAProxy, nginx, socat,
            // stunnel, ssh, iperf3.
            Purpose::Bench => &["iproute2", "libc6-dev"],
            Purpose::Fuzz => &["libc6-dev"],
            Purpose::Vm => &[
                "libc6-dev",
                "qemu-system-x86",
                "busybox-static",
                "kmod",
                "xz-utils",
                "zstd",
            ],
            Purpose::Package => &["libc6-dev", "debootstrap"],
        }
    }
}

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Prepares the machine for every purpose in `purposes` (all of them when
/// empty), printing each step with what it is for and how long it took.
pub fn run(purposes: &[Purpose]) -> anyhow::Result<()> {
    let purposes: Vec<Purpose> = if purposes.is_empty() {
        Purpose::ALL.to_vec()
    } else {
        purposes.to_vec()
    };
    let started = Instant::now();
    // Every purpose builds the gateway (the fuzz targets link it too), whose
    // build script compiles the eBPF programs on nightly with bpf-linker.
    step(
        "nightly toolchain with rust-src (builds the eBPF programs)",
        nightly_rust_src,
    )?;
    step("bpf-linker linked against nightly's LLVM", bpf_linker)?;
    if purposes.contains(&Purpose::Fuzz) {
        step(
            "cargo-fuzz (coverage-guided fuzzing)",
            crate::fuzz::ensure_cargo_fuzz,
        )?;
    }
    let mut packages: Vec<&str> = Vec::new();
    for purpose in &purposes {
        for pkg in purpose.debian_packages() {
            if !packages.contains(pkg) {
                packages.push(pkg);
            }
        }
    }
    step("Debian packages", || debian_packages(&packages))?;
    if purposes.contains(&Purpose::Test) {
        step(
            "Python grpcio (independent wire-compatibility client)",
            python_grpcio,
        )?;
    }
    println!(
        "setup: ready for {} in {:.0} s",
        purposes
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    println!("setup: {what} ...");
    let started = Instant::now();
    let done = f().with_context(|| format!("setup step failed: {what}"))?;
    println!("setup:   {done} ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<String> {
    if !cmd::succeeds(Command::new("rustup").arg("--version")) {
        bail!(
            "rustup is missing: install it (https://rustup.rs) with the stable and nightly toolchains"
        );
    }
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("no nightly toolchain and it could not be installed; the eBPF build needs one")?;
    }
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        return Ok("already installed".into());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    Ok("installed rust-src for nightly".into())
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn bpf_linker() -> anyhow::Result<String> {
    let current = cmd::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(format!("bpf-linker {BPF_LINKER_VERSION} already installed"));
    }
    // bpf-linker needs an LLVM matching rustc's: nightly ships one as a shared
    // library. Point LLVM_PREFIX at a directory whose lib/ has it under both
    // its soname and libLLVM.so; the installed binary keeps that directory as
    // its runpath, so it must stay put (~/.cache/s2-llvm).
    let sysroot = cmd::output(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.*-rust-* in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    let soname = llvm
        .file_name()
        .context("LLVM library has no name")?
        .to_owned();
    let major = soname
        .to_string_lossy()
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let prefix = home()?.join(".cache/s2-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in [std::ffi::OsString::from("libLLVM.so"), soname] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "setup:   building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about half a minute)"
    );
    cmd::run(
        cmd::quick_install(&mut Command::new("cargo"))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .or_else(|_| {
        // --locked can fail when the lock file pins something this toolchain
        // cannot build; retry with fresh resolution.
        cmd::run(
            cmd::quick_install(&mut Command::new("cargo"))
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args([
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{major}"),
                ])
                .env("LLVM_PREFIX", &prefix),
        )
    })?;
    Ok(format!("installed bpf-linker {BPF_LINKER_VERSION}"))
}

fn debian_packages(wanted: &[&str]) -> anyhow::Result<String> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|pkg| {
            cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok("all installed".into());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages {}: run `sudo cargo xtask setup` or `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup:   installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // The packaged daemons are not wanted as system services here: the tests
    // and benchmarks start their own instances in namespaces.
    for service in ["haproxy", "nginx", "ssh", "prometheus"] {
        let _ = Command::new("service").args([service, "stop"]).output();
    }
    Ok(format!("installed {}", missing.join(" ")))
}

fn python_grpcio() -> anyhow::Result<String> {
    if cmd::succeeds(Command::new("python3").args(["-c", "import grpc, grpc_tools"])) {
        return Ok("already installed".into());
    }
    let pip = |extra: &[&str]| {
        cmd::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "grpcio", "grpcio-tools"])
                .args(extra),
        )
    };
    // Debian's own Python refuses user-wide installs unless told otherwise.
    pip(&[])
        .or_else(|_| pip(&["--break-system-packages"]))
        .context("pip could not install grpcio and grpcio-tools")?;
    Ok("installed grpcio and grpcio-tools".into())
}

#[cfg(test)]
mod tests {
    use super::Purpose;

    #[test]
    fn the_test_run_has_what_its_package_and_vm_stages_need() {
        let test = Purpose::Test.debian_packages();
        for purpose in [Purpose::Vm, Purpose::Package] {
            for pkg in purpose.debian_packages() {
                assert!(
                    test.contains(pkg),
                    "`cargo xtask test` runs the {purpose:?} stage but does not install {pkg}"
                );
            }
        }
    }
}
