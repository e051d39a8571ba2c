use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = xbench::cli::Cli::parse();
    xbench::cli::init_logging(cli.verbose);
    match xbench::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
