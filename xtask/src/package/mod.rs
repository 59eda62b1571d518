//! `cargo xtask package`: the Debian package `scistream_VERSION_ARCH.deb`,
//! built with `dpkg-deb` from the workspace's binaries and `packaging/`:
//! `s2cs`, `s2uc` and `appctrl` (stripped), their man pages and bash, zsh
//! and fish completions (made by the binaries themselves from their clap
//! definitions: `generate-docs`), the example `/etc/scistream/s2cs.toml`
//! (a conffile), the hardened systemd unit, `tls` in modules-load.d (kernel
//! TLS behind the unit's ProtectKernelModules), the operators' documents
//! and the Grafana dashboard and Prometheus alert rules. The maintainer
//! scripts make the `scistream` system user and its files.
//!
//! [`install_test`] installs the package into a fresh Debian root and runs
//! it there as that user with exactly the unit's capabilities.
pub mod install_test;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// The package's name.
pub const NAME: &str = "scistream";

/// Where files from `packaging/` and the build go in the package.
const BINARIES: [&str; 3] = ["s2cs", "s2uc", "appctrl"];

/// Options of `cargo xtask package`.
#[derive(clap::Args, Clone, Debug)]
pub struct PackageOpts {
    /// Cargo profile of the binaries (release for users; the tests package
    /// the dev build they already made, which is optimised too).
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Folder the .deb is written to (default target/package).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not build: package the binaries already in target/PROFILE.
    #[arg(long)]
    pub no_build: bool,
    /// Then install it into a fresh Debian root and run it there (root).
    #[arg(long)]
    pub install_test: bool,
}

/// Builds the package; returns the .deb's path.
pub fn build(root: &Path, opts: &PackageOpts) -> anyhow::Result<PathBuf> {
    for tool in ["dpkg-deb", "strip"] {
        if !cmd::succeeds(Command::new("which").arg(tool)) {
            bail!("{tool} is missing: install Debian's dpkg and binutils (cargo xtask setup)");
        }
    }
    if !opts.no_build {
        println!(
            "package: building s2cs, s2uc and appctrl ({}) ...",
            opts.profile
        );
        cmd::run(
            Command::new("cargo")
                .args([
                    "build",
                    "--profile",
                    &opts.profile,
                    "-p",
                    "gateway",
                    "-p",
                    "control",
                ])
                .args(["--bin", "s2cs", "--bin", "s2uc", "--bin", "appctrl"])
                .current_dir(root),
        )?;
    }
    let profile_dir = if opts.profile == "dev" {
        "debug"
    } else {
        &opts.profile
    };
    let bin = root.join("target").join(profile_dir);
    let version = workspace_version(root)?;
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/package"));
    let staging = out.join(format!("{NAME}_{version}_{arch}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    stage(root, &bin, &staging)?;
    write_control(root, &staging, &version, &arch)?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&staging)
            .arg(&deb),
    )?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The workspace's version (`[workspace.package] version`, else the
/// gateway's).
fn workspace_version(root: &Path) -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(root.join("gateway/Cargo.toml"))
        .context("reading gateway/Cargo.toml")?;
    manifest
        .lines()
        .find_map(|l| {
            let value = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .context("gateway/Cargo.toml has no version line")
}

/// Copies `from` to `to` (made with its parents) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))?;
    Ok(())
}

/// The package's file tree in `staging`.
fn stage(root: &Path, bin: &Path, staging: &Path) -> anyhow::Result<()> {
    let packaging = root.join("packaging");
    for name in BINARIES {
        let to = staging.join("usr/bin").join(name);
        install(&bin.join(name), &to, 0o755)?;
        cmd::run(Command::new("strip").arg("--strip-debug").arg(&to))?;
    }
    let docs = staging.with_file_name("generated-docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs)?;
    }
    for name in BINARIES {
        cmd::run(Command::new(bin.join(name)).arg("generate-docs").arg(&docs))?;
    }
    let man = staging.join("usr/share/man/man1");
    std::fs::create_dir_all(&man)?;
    for page in read_dir(&docs.join("man"))? {
        let to = man.join(page.file_name().context("page name")?);
        install(&page, &to, 0o644)?;
        cmd::run(Command::new("gzip").args(["-9n"]).arg(&to))?;
    }
    for file in read_dir(&docs.join("completions"))? {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .context("completion file name")?
            .to_owned();
        let dir = if name.starts_with('_') {
            "usr/share/zsh/vendor-completions"
        } else if name.ends_with(".fish") {
            "usr/share/fish/vendor_completions.d"
        } else {
            "usr/share/bash-completion/completions"
        };
        install(&file, &staging.join(dir).join(&name), 0o644)?;
    }
    std::fs::remove_dir_all(&docs)?;
    let files: [(&str, &str, u32); 9] = [
        ("packaging/s2cs.toml", "etc/scistream/s2cs.toml", 0o640),
        (
            "packaging/systemd/s2cs.service",
            "lib/systemd/system/s2cs.service",
            0o644,
        ),
        (
            "packaging/modules-load.conf",
            "usr/lib/modules-load.d/scistream.conf",
            0o644,
        ),
        (
            "docs/OPERATIONS.md",
            "usr/share/doc/scistream/OPERATIONS.md",
            0o644,
        ),
        (
            "docs/SECURITY.md",
            "usr/share/doc/scistream/SECURITY.md",
            0o644,
        ),
        ("README.md", "usr/share/doc/scistream/README.md", 0o644),
        (
            "packaging/debian/copyright",
            "usr/share/doc/scistream/copyright",
            0o644,
        ),
        (
            "packaging/monitoring/grafana-dashboard.json",
            "usr/share/scistream/monitoring/grafana-dashboard.json",
            0o644,
        ),
        (
            "packaging/monitoring/s2cs-alerts.yml",
            "usr/share/scistream/monitoring/s2cs-alerts.yml",
            0o644,
        ),
    ];
    for (from, to, mode) in files {
        install(&root.join(from), &staging.join(to), mode)?;
    }
    let debian = staging.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &packaging.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    install(
        &packaging.join("debian/conffiles"),
        &debian.join("conffiles"),
        0o644,
    )?;
    Ok(())
}

/// The files of `dir`, sorted.
fn read_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    files.sort();
    Ok(files)
}

/// DEBIAN/control (from packaging/debian/control.in) and DEBIAN/md5sums.
fn write_control(root: &Path, staging: &Path, version: &str, arch: &str) -> anyhow::Result<()> {
    let template = std::fs::read_to_string(root.join("packaging/debian/control.in"))
        .context("reading packaging/debian/control.in")?;
    let size_kib = tree_size(staging)?.div_ceil(1024);
    let control = template
        .replace("@VERSION@", version)
        .replace("@ARCH@", arch)
        .replace("@INSTALLED_SIZE@", &size_kib.to_string());
    std::fs::write(staging.join("DEBIAN/control"), control)?;
    let mut sums = String::new();
    for file in files_under(staging)? {
        let rel = file.strip_prefix(staging)?;
        if rel.starts_with("DEBIAN") {
            continue;
        }
        let sum = cmd::output(Command::new("md5sum").arg(&file))?;
        let digest = sum.split_whitespace().next().context("md5sum output")?;
        sums.push_str(&format!("{digest}  {}\n", rel.display()));
    }
    std::fs::write(staging.join("DEBIAN/md5sums"), sums)?;
    Ok(())
}

/// Every regular file under `dir`, sorted.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in read_dir(dir)? {
        if entry.is_dir() {
            out.extend(files_under(&entry)?);
        } else {
            out.push(entry);
        }
    }
    Ok(out)
}

fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    files_under(dir)?
        .iter()
        .map(|f| Ok(std::fs::metadata(f)?.len()))
        .sum()
}
