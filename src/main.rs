//! `risksense`: the command-line entry point. It parses arguments, sets up logging and
//! hands each subcommand to its module in `cmd/`; the work itself lives in the library
//! crates (see ARCHITECTURE.md).

mod cmd;

use clap::Parser;

/// mimalloc instead of glibc malloc: the stream allocates and frees many small buffers per
/// micro-batch (Arrow arrays, Redis commands, per-row strings); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_logging(cli.verbose);
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
