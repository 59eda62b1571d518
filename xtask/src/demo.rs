//! `cargo xtask demo`: shows the gateway on this machine. For now it sets up,
//! builds `s2cs` and prints `s2cs check` (what the kernel offers and which
//! data paths the gateway picks); the full two-gateway demo comes with the
//! end-to-end issue.
use std::path::Path;
use std::process::Command;

use crate::{cmd, setup};

pub fn run(root: &Path) -> anyhow::Result<()> {
    setup::run(root)?;
    cmd::run(
        Command::new("cargo")
            .args(["build", "--release", "-p", "gateway"])
            .current_dir(root),
    )?;
    cmd::run(&mut Command::new(root.join("target/release/s2cs")).arg("check"))
}
