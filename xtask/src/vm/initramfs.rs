//! The VM's initramfs, written directly in the kernel's `newc` cpio format (no cpio tool, no root
//! needed for the /dev/console device node, reproducible owners and times).
//!
//! It is two concatenated archives, which the kernel unpacks one after the other:
//! - the base, cached per kernel: busybox (static), `/bin/sh`, `/dev/console` and the modules as
//!   `/lib/modules/<name>.ko`;
//! - a per-run overlay: `/init`, the command script and the caller's binaries.
//!
//! Lines the init script prints for the host start with a per-run marker (see `qemu.rs`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A writer for one `newc` archive.
pub struct Cpio<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    /// `first_ino` keeps inode numbers of concatenated archives apart.
    pub fn new(out: W, first_ino: u32) -> Self {
        Self {
            out,
            next_ino: first_ino,
            written: 0,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len(),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            namesize,
            0 // check
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..n])
    }

    pub fn dir(&mut self, name: &str) -> Result<()> {
        self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    /// Every ancestor directory of `path` (not `path` itself), outermost first.
    pub fn parents(&mut self, path: &str) -> Result<()> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"))?;
        }
        Ok(())
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    pub fn file_from(&mut self, name: &str, mode: u32, src: &Path) -> Result<()> {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        self.file(name, mode, &data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(name, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        // Pad the archive to a 512-byte boundary, as cpio does.
        let n = ((512 - (self.written % 512)) % 512) as usize;
        self.write(&vec![0u8; n])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Module file name inside the VM for a prepared module path.
pub fn vm_module_name(module: &Path) -> String {
    module
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Write the cached base archive (busybox + modules).
pub fn write_base(dest: &Path, busybox: &Path, modules: &[std::path::PathBuf]) -> Result<()> {
    let tmp = dest.with_extension("cpio.tmp");
    let mut c = Cpio::new(BufWriter::new(File::create(&tmp)?), 1);
    for d in [
        "bin",
        "sbin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "root",
        "run",
        "sys",
        "tmp",
        "usr",
        "usr/bin",
        "usr/sbin",
        "var",
    ] {
        c.dir(d)?;
    }
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.char_dev("dev/null", 0o666, 1, 3)?;
    c.file_from("bin/busybox", 0o755, busybox)?;
    c.symlink("bin/sh", "busybox")?;
    for m in modules {
        c.file_from(&format!("lib/modules/{}", vm_module_name(m)), 0o644, m)?;
    }
    c.finish()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// Single-quote a string for the busybox shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The /init script: set the VM up, load the modules in order, run the command, report its exit
/// status on a sentinel line and power off.
pub fn init_script(marker: &str, modules: &[String]) -> String {
    let mods: Vec<String> = modules.iter().map(|m| shell_quote(m)).collect();
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "{m} UPTIME $(cut -d' ' -f1 /proc/uptime)"
echo "{m} KERNEL $(uname -r)"
for mod in {mods}; do
    insmod "/lib/modules/$mod" || echo "{m} INSMOD-FAILED ${{mod%.ko}}"
done
ip link set lo up
echo "{m} ULP $(cat /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null)"
echo "{m} BEGIN"
cd /root
sh /xtask-command.sh </dev/null
rc=$?
echo "{m} EXIT $rc"
sync
poweroff -f
sleep 10
"#,
        m = marker,
        mods = mods.join(" "),
    )
}

/// Write the per-run overlay archive: /init, the command and the binaries.
/// A binary's VM name is a path (absolute) or a bare name, placed in /bin.
pub fn write_overlay<W: Write>(
    out: W,
    init: &str,
    command: &str,
    binaries: &[(&Path, &str)],
) -> Result<W> {
    let mut c = Cpio::new(out, 1_000_000);
    c.file("init", 0o755, init.as_bytes())?;
    c.file("xtask-command.sh", 0o755, format!("{command}\n").as_bytes())?;
    for (src, name) in binaries {
        if name.is_empty() || name.contains("..") {
            bail!("bad VM path {name:?} for {}", src.display());
        }
        let dest = if name.contains('/') {
            name.trim_start_matches('/').to_string()
        } else {
            format!("bin/{name}")
        };
        c.parents(&dest)?;
        let mode = std::fs::metadata(src)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) | 0o755)
            .with_context(|| format!("binary {} not found", src.display()))?;
        c.file_from(&dest, mode, src)?;
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new(Vec::new(), 1);
        c.dir("bin").unwrap();
        c.file("bin/x", 0o755, b"hello").unwrap();
        c.symlink("bin/sh", "busybox").unwrap();
        let v = c.finish().unwrap();
        assert_eq!(&v[..6], b"070701");
        assert_eq!(v.len() % 512, 0);
        let text = String::from_utf8_lossy(&v);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // second entry starts 4-aligned
        let second = text.find("070701000000").unwrap();
        assert_eq!(second % 4, 0);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
