//! `s2uc`: the SciStream user client (see `control::cli`).
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control::logging::init("error");
    let cli = control::cli::S2uc::parse();
    match control::cli::run_s2uc(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", control::cli::error_line("s2uc", &err));
            std::process::ExitCode::FAILURE
        }
    }
}
