//! `s2cs`: the gateway daemon's command line. The logic lives in the library.
#![forbid(unsafe_code)]
use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use gateway::check;
use gateway::daemon::config_file;
use gateway::daemon::reload::Reloader;
use gateway::daemon::serve::{Gateway, ServeArgs, raise_descriptor_limit, shutdown_signals};
use gateway::proxy::{self, ProxyPlan, ProxyStats};
use gateway::relay::DataPath;
use gateway::session::{PathChoice, engine_for};

#[derive(Parser)]
#[command(
    name = "s2cs",
    version,
    about = "SciStream-compatible gateway: control server and kernel data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report which kernel capabilities and data paths this machine offers.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Exit non-zero unless this data path is available (sockmap, splice, copy).
        #[arg(long, value_name = "PATH")]
        require: Option<DataPath>,
        /// Also attach XDP for an instant to this interface and report
        /// native or generic mode (repeatable; the program passes every
        /// packet while attached).
        #[arg(long, value_name = "IFACE")]
        xdp_iface: Vec<String>,
        /// Like --xdp-iface for every interface except lo.
        #[arg(long)]
        xdp_all_ifaces: bool,
    },
    /// Relay every connection accepted on LISTEN to TARGET (a plain relay
    /// without the control plane, for tests and benchmarks).
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        target: SocketAddr,
        /// Data path: auto (splice; see `s2cs check`), sockmap, splice or
        /// copy (as `serve --data-path`).
        #[arg(long, default_value = "auto")]
        path: PathChoice,
        /// Pacing cap per socket, in bytes per second.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Run the gateway: the SciStream control server with the kernel data
    /// plane, until SIGINT or SIGTERM. Flags override the --config file;
    /// SIGHUP reads it again (token file, allow-list, rate limits change
    /// live; any other change is refused, naming the keys).
    Serve(Box<ServeArgs>),
    /// Check or show a configuration file (the control server's settings
    /// and the `[gateway]` table).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Write man pages and shell completions into OUT (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// The folder (man/ and completions/ are made in it).
        out: std::path::PathBuf,
    },
}

/// What `s2cs` exits with, for its man pages.
const EXIT_STATUS: &[control::cli_docs::ExitStatus] = &[
    (
        0,
        "the command did what it says; serve: drained and stopped after SIGTERM or SIGINT.",
    ),
    (
        1,
        "it failed, with one line on standard error naming the problem: serve could not start \
         (configuration, certificates, ports, a missing capability), check found the gateway \
         cannot run or lacks the --require'd data path, config check found the file invalid.",
    ),
    (
        2,
        "the command line is wrong (an unknown flag, a missing or bad argument).",
    ),
    (
        130,
        "serve got a second SIGTERM or SIGINT while draining and stopped at once (persisted \
         sessions come back on the next start).",
    ),
];

#[derive(Subcommand)]
enum ConfigAction {
    /// Check FILE as `s2cs serve --config FILE` would before binding,
    /// loading or attaching anything (no side effect); exit 1 with the
    /// problem named if it would not start.
    Check { file: std::path::PathBuf },
    /// Print the effective configuration of `s2cs serve --config FILE` (or
    /// of no file) as TOML, with every default and secrets redacted.
    Show { file: Option<std::path::PathBuf> },
}

/// `s2cs serve`'s flags alone, to read a configuration file the way
/// `serve` would with no flag given.
#[derive(Parser)]
#[command(name = "s2cs serve")]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

fn serve_args_of(file: Option<&std::path::Path>) -> anyhow::Result<ServeArgs> {
    let mut argv = vec!["s2cs serve".to_owned()];
    if let Some(file) = file {
        argv.push("--config".to_owned());
        argv.push(file.display().to_string());
    }
    let mut args = ServeOnly::try_parse_from(argv)?.args;
    config_file::load(&mut args, &|_| false)?;
    Ok(args)
}

/// Whether the flag with this id was given (on the command line or in its
/// environment variable) rather than left at its default.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

fn main() -> ExitCode {
    control::logging::init("info");
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    match run(cli, &matches) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("s2cs: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check {
            json,
            require,
            xdp_iface,
            xdp_all_ifaces,
        } => {
            let report = check::run_with(&check::CheckOptions {
                xdp_ifaces: xdp_iface,
                xdp_all_ifaces,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check::render(&report));
            }
            let required_ok = match require {
                None => true,
                Some(DataPath::Copy) => report.can_run,
                Some(DataPath::Splice) => report
                    .capability(check::SPLICE)
                    .is_some_and(|c| c.available),
                Some(DataPath::Sockmap) => report
                    .capability(check::SOCKMAP)
                    .is_some_and(|c| c.available),
            };
            Ok(if report.can_run && required_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Relay {
            listen,
            target,
            path,
            rate,
        } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(relay(listen, target, path, rate))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let args = serve_args_of(Some(&file))?;
            let summary = config_file::check(&args)
                .with_context(|| format!("{} would not start the gateway", file.display()))?;
            println!("{}: ok: {summary}", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Show { file },
        } => {
            let args = serve_args_of(file.as_deref())?;
            print!("{}", config_file::show(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::GenerateDocs { out } => {
            let files = control::cli_docs::write(Cli::command(), EXIT_STATUS, &out)?;
            println!("wrote {} files into {}", files.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(mut args) => {
            let given_ids: HashSet<String> = matches
                .subcommand_matches("serve")
                .map(|sub| {
                    sub.ids()
                        .map(|id| id.as_str().to_owned())
                        .filter(|id| given(sub, id))
                        .collect()
                })
                .unwrap_or_default();
            let reloader = Reloader::new((*args).clone(), given_ids.clone());
            config_file::load(&mut args, &|id| given_ids.contains(id))?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(serve(*args, reloader))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs, reloader: Reloader) -> anyhow::Result<()> {
    // Watched from the start, so a signal during start-up also drains (and
    // a SIGHUP waits for the gateway to serve).
    let shutdown = shutdown_signals();
    let hangups = Reloader::watch_sighup();
    match raise_descriptor_limit() {
        Ok((before, after)) if before < after => {
            tracing::info!(
                before,
                after,
                "open descriptor limit raised to the hard limit"
            )
        }
        Ok((_, limit)) => tracing::info!(limit, "open descriptor limit"),
        Err(err) => {
            tracing::warn!(error = %err, "could not read or raise the open descriptor limit")
        }
    }
    let gateway = Gateway::prepare(args).await?;
    println!(
        "s2cs: control server on {} (data path {}, gateway channel {})",
        gateway.control_addr(),
        gateway.data_path(),
        gateway.channel()
    );
    match (gateway.tls_fingerprint(), gateway.cert_path()) {
        (Some(fingerprint), Some(cert)) => {
            println!(
                "s2cs: control TLS certificate {} SHA-256 fingerprint {fingerprint}",
                cert.display()
            );
        }
        (Some(fingerprint), None) => {
            println!("s2cs: control TLS certificate SHA-256 fingerprint {fingerprint}")
        }
        (None, _) => println!("s2cs: control channel WITHOUT TLS"),
    }
    if let Some((cert, fingerprint)) = gateway.channel_cert() {
        println!(
            "s2cs: data channel certificate {} SHA-256 fingerprint {fingerprint}",
            cert.display()
        );
    }
    if let Some((iface, mode)) = gateway.xdp() {
        println!("s2cs: XDP guard on {iface} ({mode} mode)");
    }
    if let Some(addr) = gateway.metrics_addr() {
        println!("s2cs: metrics on http://{addr}/metrics");
    }
    let reloads = hangups.map(|h| {
        tokio::spawn(reloader.on_sighup(h, gateway.control_handle(), gateway.channel_identity()))
    });
    gateway.serve(shutdown).await?;
    if let Some(task) = reloads {
        task.abort();
    }
    println!("s2cs: stopped");
    Ok(())
}

async fn relay(
    listen: SocketAddr,
    target: SocketAddr,
    choice: PathChoice,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    let (engine, path) = engine_for(choice).context("--path")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, %target, %path, "relaying");
    let stats = Arc::new(ProxyStats::default());
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    proxy::run(
        listener,
        ProxyPlan { target, path, rate },
        engine,
        stats,
        shutdown,
    )
    .await;
    Ok(())
}
