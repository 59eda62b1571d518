//! Running iproute2's `ip`: one command, or many in one process
//! (`ip -n NS -batch -`). Failures carry the command line and `ip`'s stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs `ip ARGS...` and returns its standard output; fails with its standard
/// error if it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NS ARGS...` (inside namespace `ns`, by name).
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Runs `ip -n NS -batch -` with `lines`, one command each: one process for
/// many commands. Stops at the first failing line.
pub fn ip_batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    let what = || format!("`ip -n {ns} -batch -` with:\n{}", lines.join("\n"));
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (is iproute2 installed?)", what()))?;
    let mut input = lines.join("\n");
    input.push('\n');
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).with_context(what)?;
    }
    let out = child.wait_with_output().with_context(what)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
