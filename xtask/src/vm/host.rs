//! Host-side helpers: running commands with good error messages, making sure the Debian tools the
//! VM machinery shells out to are installed, and telling static ELF binaries from dynamic ones.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Tools used by this module and the Debian package that provides each.
pub const TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("modinfo", "kmod"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("gzip", "gzip"),
    ("qemu-system-x86_64", "qemu-system-x86"),
];

/// The busybox binary put into the initramfs; must be static (Debian package busybox-static).
pub const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Run a command, fail with its stderr when it exits non-zero, return its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{desc}`"))?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Run a command and return its stdout as a string.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    String::from_utf8(out.stdout).context("command printed non-UTF-8 output")
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Find an executable in PATH (plus the sbin directories, which a non-login root shell may lack).
pub fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Effective user id, read from /proc (std has no getuid and we avoid a libc dependency).
pub fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn is_root() -> bool {
    euid() == Some(0)
}

/// Resolve a tool to its path, installing its Debian package when missing and running as root.
pub fn tool(name: &str) -> Result<PathBuf> {
    if let Some(p) = which(name) {
        return Ok(p);
    }
    let pkg = TOOLS
        .iter()
        .find(|(t, _)| *t == name)
        .map(|(_, p)| *p)
        .unwrap_or(name);
    apt_install(&[pkg]).with_context(|| format!("`{name}` is missing"))?;
    which(name).with_context(|| format!("`{name}` still missing after installing {pkg}"))
}

/// The static busybox for the initramfs, installing busybox-static if needed.
pub fn static_busybox() -> Result<PathBuf> {
    let find = || {
        BUSYBOX_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p) && elf_is_static(p).unwrap_or(false))
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    apt_install(&["busybox-static"])
        .context("a static busybox is needed for the VM's initramfs")?;
    find().context("no static busybox found even after installing busybox-static")
}

/// `apt-get install -y` the given packages (machine-wide; this is the only place the machine's own
/// apt state is used).
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "not root: install the Debian packages {} yourself",
            pkgs.join(" ")
        );
    }
    eprintln!("vm: installing Debian packages: {}", pkgs.join(" "));
    let install = |update: bool| -> Result<()> {
        if update {
            run(Command::new("apt-get").args(["-q", "update"]))?;
        }
        run(Command::new("apt-get")
            .args(["-q", "-y", "--no-install-recommends", "install"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        Ok(())
    };
    // Try without an update first (fast when the lists are current), then with one.
    install(false).or_else(|_| install(true))
}

/// True when the ELF file has no program interpreter (PT_INTERP), i.e. it runs without ld.so and
/// shared libraries (static and static-pie binaries).
pub fn elf_is_static(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        bail!("{} is not an ELF file", path.display());
    }
    if data[4] != 2 || data[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    // Checked reads: a truncated or malformed file is an error, not a panic.
    let bytes_at = |o: usize, n: usize| {
        data.get(o..o + n)
            .with_context(|| format!("{} is truncated (offset {o})", path.display()))
    };
    let u16_at = |o: usize| -> Result<usize> {
        Ok(u16::from_le_bytes(bytes_at(o, 2)?.try_into()?) as usize)
    };
    let u32_at = |o: usize| -> Result<u32> { Ok(u32::from_le_bytes(bytes_at(o, 4)?.try_into()?)) };
    let u64_at = |o: usize| -> Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(
            bytes_at(o, 8)?.try_into()?,
        ))?)
    };
    let phoff = u64_at(0x20)?;
    let phentsize = u16_at(0x36)?;
    let phnum = u16_at(0x38)?;
    for i in 0..phnum {
        let off = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .with_context(|| format!("{}: program header offset overflows", path.display()))?;
        if u32_at(off)? == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Normalise a module name the way the kernel does ('-' and '_' are the same).
pub fn module_key(name: &str) -> String {
    name.replace('-', "_")
}
