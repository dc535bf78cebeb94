//! The `ausa` binary: parses arguments, dispatches to one function per command, and
//! turns errors into a message, hints and an exit code (0 ok, 1 failure, 2 usage).
//! The work lives in the library crates.

mod args;
#[cfg(feature = "train")]
mod bench;
mod commands;
mod diagnostics;
mod output;
mod remote;
mod report;
#[cfg(feature = "train")]
mod sweep;
#[cfg(feature = "train")]
mod train;

use clap::Parser;

fn main() {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let out = output::Output::new(cli.json, cli.quiet);
    let code = match commands::run(&cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            e.exit_code()
        }
    };
    std::process::exit(code);
}
