//! `tally`: reads `.env` and the environment, sets up logging, and hands
//! the command line to the library.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the attributor's many short-lived
/// strings made glibc's free-chunk consolidation a visible share of a
/// replay (Cargo.toml says more).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = dotenvy::dotenv();
    let cli = tally::cli::Cli::parse();
    let settings = match tally::config::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tally: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tally::telemetry::init(&settings);
    match tally::cli::run(cli, settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
