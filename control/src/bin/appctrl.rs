//! `appctrl`: the SciStream application controller (see `control::cli`).
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: log files and pipes get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cli = control::cli::AppCtrl::parse();
    match control::cli::run_appctrl(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", control::cli::error_line("appctrl", &err));
            std::process::ExitCode::FAILURE
        }
    }
}
