use std::process::ExitCode;

use bookedbarber_exporter::{app, cli::Cli, logging};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it flushes the lines still queued.
    let _log_guard = logging::init(cli.log_level, cli.log_format);
    // One TLS implementation for the server, PostgreSQL and Redis clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bookedbarber-exporter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bookedbarber-exporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
