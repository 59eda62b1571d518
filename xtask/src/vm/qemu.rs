//! Boot a prepared kernel under `qemu-system-x86_64 -accel tcg` (KVM hangs on this machine's kind),
//! run one command in it and collect the serial console, with a hard timeout.
//!
//! The VM has one CPU, 1 GiB, no network device (`-nic none`: loopback only) and no disk; it
//! powers itself off after the command, and `panic=-1` with `-no-reboot` makes any kernel panic
//! (or the init script dying) end qemu at once instead of hanging.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::{PreparedKernel, VmOutput, host, initramfs};

/// Boot `kernel`, copy `binaries` (host path, VM path or bare name placed in /bin) into the
/// initramfs, run `command` with /bin/sh in the VM (cwd /root, stdin /dev/null) and return the
/// console output and the command's exit status. qemu is killed after `timeout`.
///
/// Returns `Err` only when the VM could not be started; a command that failed, a timeout or a
/// panic are reported in the returned [`VmOutput`] (see [`VmOutput::ensure_success`]).
pub fn run_in_vm(
    kernel: &PreparedKernel,
    binaries: &[(&Path, &str)],
    command: &str,
    timeout: Duration,
) -> Result<VmOutput> {
    let qemu = host::tool("qemu-system-x86_64")?;

    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let marker = format!(
        "@@XTASK-VM-{:x}@@",
        nonce as u64 ^ std::process::id() as u64
    );
    let cache = kernel
        .dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&kernel.dir);
    let run_dir = cache.join("runs").join(format!(
        "{}-{}-{:x}",
        kernel.spec.name,
        std::process::id(),
        nonce
    ));
    std::fs::create_dir_all(&run_dir)?;

    let result = boot(kernel, &qemu, binaries, command, timeout, &marker, &run_dir);
    match &result {
        Ok(out) if out.exit_code.is_some() => {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        Ok(out) => {
            // Keep the evidence of a failed boot.
            let _ = std::fs::remove_file(run_dir.join("initrd.cpio"));
            let _ = std::fs::write(run_dir.join("console.log"), &out.console);
            eprintln!(
                "vm: no exit status from the VM; console saved in {}",
                run_dir.display()
            );
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    result
}

fn boot(
    kernel: &PreparedKernel,
    qemu: &Path,
    binaries: &[(&Path, &str)],
    command: &str,
    timeout: Duration,
    marker: &str,
    run_dir: &Path,
) -> Result<VmOutput> {
    // initrd = cached base archive + this run's overlay, concatenated.
    let initrd: PathBuf = run_dir.join("initrd.cpio");
    let mut data = std::fs::read(&kernel.base_initramfs)
        .with_context(|| format!("reading {}", kernel.base_initramfs.display()))?;
    let modules: Vec<String> = kernel
        .modules
        .iter()
        .map(|m| initramfs::vm_module_name(m))
        .collect();
    let init = initramfs::init_script(marker, &modules);
    data = initramfs::write_overlay(data, &init, command, binaries)?;
    std::fs::write(&initrd, &data)?;

    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", host::describe(&cmd)))?;
    let mut stdout = child
        .stdout
        .take()
        .context("qemu started without a stdout pipe")?;
    let mut stderr = child
        .stderr
        .take()
        .context("qemu started without a stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });

    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let console = strip_terminal_codes(&String::from_utf8_lossy(&out_t.join().unwrap_or_default()));
    let qemu_stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(parse_console(
        console,
        qemu_stderr,
        marker,
        timed_out,
        elapsed,
    ))
}

/// Drop carriage returns and the terminal control sequences SeaBIOS prints (ESC c, ESC [ ... X).
fn strip_terminal_codes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // parameters and intermediates, then one final byte in '@'..='~'
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Pull the init script's marker lines out of the console text.
fn parse_console(
    console: String,
    qemu_stderr: String,
    marker: &str,
    timed_out: bool,
    elapsed: Duration,
) -> VmOutput {
    let mut out = VmOutput {
        console: String::new(),
        qemu_stderr,
        exit_code: None,
        tcp_available_ulp: None,
        insmod_failures: Vec::new(),
        timed_out,
        elapsed,
        guest_boot_secs: None,
        command_output: String::new(),
    };
    let mut in_command = false;
    for line in console.lines() {
        // A kernel message may share the line with ours: look for the marker anywhere in it.
        let Some(pos) = line.find(marker) else {
            if in_command {
                out.command_output.push_str(line);
                out.command_output.push('\n');
            }
            continue;
        };
        let rest = line[pos + marker.len()..].trim();
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match key {
            "UPTIME" => out.guest_boot_secs = value.trim().parse().ok(),
            "INSMOD-FAILED" => out.insmod_failures.push(value.trim().to_string()),
            "ULP" => out.tcp_available_ulp = Some(value.trim().to_string()),
            "BEGIN" => in_command = true,
            "EXIT" => {
                in_command = false;
                out.exit_code = value.trim().parse().ok();
            }
            _ => {}
        }
    }
    out.console = console;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_marker_lines() {
        let m = "@@XTASK-VM-1@@";
        let console = format!(
            "boot noise\n{m} UPTIME 3.52\n{m} INSMOD-FAILED veth\n{m} ULP tls\n{m} BEGIN\nhello\nworld\n\
             [ 1.0] kernel: something {m} EXIT 3\n"
        );
        let o = parse_console(console, String::new(), m, false, Duration::from_secs(1));
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.tcp_available_ulp.as_deref(), Some("tls"));
        assert_eq!(o.insmod_failures, vec!["veth"]);
        assert_eq!(o.guest_boot_secs, Some(3.52));
        assert_eq!(o.command_output, "hello\nworld\n");
        assert!(!o.success());
    }

    #[test]
    fn strips_terminal_codes() {
        assert_eq!(strip_terminal_codes("\x1bc\x1b[?7l\x1b[2Jx\r\ny"), "x\ny");
    }
}
