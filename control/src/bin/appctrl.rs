//! `appctrl`: the SciStream application controller (see `control::cli`).
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control::logging::init("error");
    let cli = control::cli::AppCtrl::parse();
    match control::cli::run_appctrl(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", control::cli::error_line("appctrl", &err));
            std::process::ExitCode::FAILURE
        }
    }
}
