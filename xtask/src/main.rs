//! `cargo xtask`: the project's own commands for setup, tests, VM tests,
//! benchmarks and the demo. Each subcommand lives in a module of its own.
#![forbid(unsafe_code)]
mod bench;
mod cmd;
mod demo;
mod fuzz;
#[cfg(test)]
mod layering;
mod package;
mod setup;
mod soak;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Setup, tests, VM tests, benchmarks and the demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a purpose needs (idempotent): the eBPF toolchain
    /// (nightly rust-src, bpf-linker) for all, and the Debian packages,
    /// Python grpcio or cargo-fuzz of each; no purpose prepares for all.
    /// Every other command sets up its own purpose by itself.
    Setup {
        /// What to prepare for.
        #[arg(value_enum)]
        purposes: Vec<setup::Purpose>,
    },
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
        /// Kernels to boot (6.1, 6.12, 7.x); default all three.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
    },
    /// Benchmarks against peers measured in the same run: without a
    /// subcommand both suites, with one JSON, Markdown and SVG chart.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchCommand>,
        #[command(flatten)]
        all: bench::AllOpts,
    },
    /// The long soak: two gateways under a seeded random mix of sessions,
    /// streams of every channel mode and data path, kills, restarts and
    /// partitions, every byte verified; writes target/soak/soak.json and a
    /// chart soak.svg. Not part of `test`.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Seed of the random mix (the same seed, the same run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Coverage-guided fuzzing (cargo fuzz, libFuzzer, ASan) of every parser
    /// fed from outside: each target for --secs over its seeds, crash
    /// regressions and working corpus. Not part of `test` beyond a smoke run.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Build the Debian package (target/package/scistream_VERSION_ARCH.deb):
    /// binaries, man pages, completions, example configuration, systemd
    /// unit, dashboards; --install-test installs it into a fresh Debian
    /// root and runs a session there as the service user.
    Package(package::PackageOpts),
    /// Show the gateway working end to end (namespaces, two gateways, a
    /// producer and a consumer of detector frames).
    Demo {
        /// Number of frames.
        #[arg(long, default_value_t = 1440)]
        frames: u64,
        /// Frame size in MiB.
        #[arg(long, default_value_t = 2)]
        frame_mib: usize,
    },
    /// The demo's producer, consumer and reachability probe (run by the demo
    /// inside its namespaces).
    #[command(hide = true)]
    DemoApp {
        #[arg(value_parser = ["produce", "consume", "probe"])]
        role: String,
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = 1440)]
        frames: u64,
        #[arg(long, default_value_t = 2 << 20)]
        frame_size: usize,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Relay throughput and CPU per GB: the s2cs paths vs direct, HAProxy,
    /// socat and nginx.
    Relay(bench::BenchOpts),
    /// Gateway pairs with TLS 1.3 between them: the s2cs pair vs a stunnel
    /// pair, a HAProxy TLS pair and an ssh tunnel (throughput, CPU per GB), plus the
    /// session setup time of `s2uc connect`.
    Tls(bench::TlsOpts),
    /// The PROD gateway under connection floods of each kind: the gateway's
    /// CPU per refused connection, and a legitimate stream's throughput
    /// under each flood as a ratio of its throughput without.
    Flood(bench::FloodOpts),
    /// UDP datagrams through a gateway pair (MTU 9000): the s2cs QUIC and
    /// kernel paths vs routed direct, an nginx stream UDP pair and socat.
    Udp(bench::UdpOpts),
}

impl Command {
    /// What the machine must be set up for before this command runs (`test`
    /// and `demo` set up by themselves, as timed steps of their own).
    fn setup_purpose(&self) -> Option<setup::Purpose> {
        match self {
            Command::Setup { .. }
            | Command::Test { .. }
            | Command::Demo { .. }
            | Command::DemoApp { .. } => None,
            Command::VmTest { .. } => Some(setup::Purpose::Vm),
            Command::Bench { .. } => Some(setup::Purpose::Bench),
            // The soak drives the end-to-end harness (namespaces, nftables).
            Command::Soak { .. } => Some(setup::Purpose::Test),
            Command::Fuzz { .. } => Some(setup::Purpose::Fuzz),
            Command::Package(_) => Some(setup::Purpose::Package),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(purpose) = cli.command.setup_purpose() {
        setup::run(&[purpose])?;
    }
    match cli.command {
        Command::Setup { purposes } => setup::run(&purposes),
        Command::Package(opts) => {
            let root = workspace_root()?;
            let deb = package::build(&root, &opts)?;
            if opts.install_test {
                package::install_test::run(&root, &deb)?;
            }
            Ok(())
        }
        Command::Test { no_vm, cargo_args } => test::run(&workspace_root()?, !no_vm, &cargo_args),
        Command::VmTest { kernels } => {
            let root = workspace_root()?;
            let lints = test::LintedBuild::new(&root)?;
            test::vm_stage(&root, &kernels, &lints).map(drop)
        }
        Command::Bench { what: None, all } => bench::run_all(&workspace_root()?, &all).map(drop),
        Command::Bench {
            what: Some(BenchCommand::Relay(opts)),
            ..
        } => bench::run_relay_bench(&workspace_root()?, &opts).map(drop),
        Command::Bench {
            what: Some(BenchCommand::Tls(opts)),
            ..
        } => bench::run_tls_bench(&workspace_root()?, &opts).map(drop),
        Command::Bench {
            what: Some(BenchCommand::Flood(opts)),
            ..
        } => bench::run_flood_bench(&workspace_root()?, &opts),
        Command::Bench {
            what: Some(BenchCommand::Udp(opts)),
            ..
        } => bench::run_udp_bench(&workspace_root()?, &opts),
        Command::Soak { minutes, seed } => soak::run(&workspace_root()?, minutes, seed),
        Command::Fuzz { secs, targets } => fuzz::run(&workspace_root()?, secs, &targets),
        Command::Demo { frames, frame_mib } => {
            demo::run(&workspace_root()?, &demo::DemoOpts { frames, frame_mib })
        }
        Command::DemoApp {
            role,
            addr,
            frames,
            frame_size,
        } => match role.as_str() {
            "produce" => demo::app::produce(addr, frames, frame_size),
            "consume" => demo::app::consume(addr, frames, frame_size),
            _ => {
                println!("{}", demo::app::probe(addr));
                Ok(())
            }
        },
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("run this through `cargo xtask`")?;
    PathBuf::from(manifest)
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}
