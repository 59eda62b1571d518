//! `cargo xtask`: the project's own commands for setup, tests, VM tests,
//! benchmarks and the demo. Each subcommand lives in a module of its own.
mod cmd;
mod demo;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Setup, tests, VM tests, benchmarks and the demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need: nightly rust-src, bpf-linker,
    /// Debian packages, Python grpcio (idempotent).
    Setup,
    /// Run setup, lints and every test: unit, end-to-end in network
    /// namespaces, and the kernel-TLS tests in VMs.
    Test {
        /// Skip the VM (kernel TLS) stage.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Boot Debian kernels under qemu and run the kernel-TLS tests inside.
    VmTest {
        /// Kernels to boot (6.1, 6.12, 7.x); default 6.1 and 6.12.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
    },
    /// Show the gateway working end to end.
    Demo,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Command::Setup => setup::run(&root),
        Command::Test { no_vm, cargo_args } => test::run(&root, !no_vm, &cargo_args),
        Command::VmTest { kernels } => test::vm_stage(&root, &kernels).map(drop),
        Command::Demo => demo::run(&root),
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("run this through `cargo xtask`")?;
    PathBuf::from(manifest)
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}
