use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the forward passes allocate large buffers whose sizes vary
/// with every batch's longest pair, and glibc keeps the fragments (its resting RSS climbed by a
/// third over 150 s of load; see the README's "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
