//! `cargo xtask setup`: installs, idempotently, everything the build and the
//! tests need on a fresh Debian machine with rustup's stable and nightly
//! toolchains: nightly's rust-src (for -Z build-std=core), bpf-linker built
//! against nightly's own LLVM (no prebuilt binary can be downloaded here),
//! the Debian packages the tests and benchmarks use, and Python's grpcio for
//! the independent wire-compatibility client.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// Debian packages the tests, VM tests, benchmarks and demo use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iperf3",
    // A lossy, reordering WAN for the UDP tests (no netem in some kernels).
    "nftables",
    "haproxy",
    "socat",
    "stunnel4",
    "nginx-light",
    "libnginx-mod-stream",
    "openssh-client",
    "openssh-server",
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "ruby",
    "libc6-dev",
    "python3-pip",
    // promtool, which checks the operators' alert rules and dashboard queries.
    "prometheus",
    // The package's install test: a fresh Debian root to install it into.
    "debootstrap",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(root: &Path) -> anyhow::Result<()> {
    step(
        "nightly toolchain with rust-src (builds the eBPF programs)",
        nightly_rust_src,
    )?;
    step("bpf-linker linked against nightly's LLVM", bpf_linker)?;
    step(
        "cargo-fuzz (coverage-guided fuzzing)",
        crate::fuzz::ensure_cargo_fuzz,
    )?;
    step(
        "Debian packages for tests, VM tests and benchmarks",
        debian_packages,
    )?;
    step(
        "Python grpcio (independent wire-compatibility client)",
        python_grpcio,
    )?;
    let _ = root;
    println!("setup: done");
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    println!("setup: {what} ...");
    let done = f().with_context(|| format!("setup step failed: {what}"))?;
    println!("setup:   {done}");
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
        "setup:   building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"
    );
    cmd::run(
        Command::new("cargo")
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
            Command::new("cargo")
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

fn debian_packages() -> anyhow::Result<String> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
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
