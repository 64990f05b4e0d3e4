//! The `chora` binary: parse the command line, run the command, map the outcome
//! to the documented exit code. Everything else lives in the library crates.

mod bootstrap;
mod cli;
mod failure;
mod gateway_tls;
mod image;
mod infra;
mod manifest;
mod ops;
mod prepare;
mod probe;
mod relay;
mod rt;
mod serve;
mod services;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    cli::init_logging(args.default_log_level());
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.print();
            ExitCode::from(failure.exit)
        }
    }
}
