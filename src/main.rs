//! `risksense`: the command-line entry point. It parses arguments, sets up logging and
//! hands each subcommand to its module in `cmd/`; the work itself lives in the library
//! crates (see ARCHITECTURE.md).

mod cmd;

use clap::Parser;

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
