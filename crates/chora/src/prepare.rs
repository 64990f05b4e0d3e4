//! `chora prepare`: run the start-up handlers of every module under a root.

use crate::failure::{EXIT_CONFIG, Failure, exit};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  chora prepare --root ./app --dry-run\n  chora prepare --format json"
)]
pub struct PrepareArgs {
    /// The application root: modules are found in modules/*/module.{yml,yaml,json}
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// List what would be created or repaired, and change nothing
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Run every handler even after one fails
    #[arg(long)]
    keep_going: bool,
    /// Tries per failing handler (network and I/O errors)
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds the whole phase may take
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Show every check, not only changes
    #[arg(long)]
    verbose: bool,
}

pub fn run(a: PrepareArgs) -> Result<(), Failure> {
    let ctx = chora_prepare::Context::discover(&a.root).map_err(|e| {
        let mut f = Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string());
        if let Some(act) = &e.action {
            f = f.action(act.clone());
        }
        f.action("Check the module manifest against the schema in the README (`chora prepare`)")
    })?;
    let timeout = chora_api::duration::seconds(a.timeout)
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(300));
    let report = chora_prepare::Runner::new(ctx)
        .dry_run(a.dry_run)
        .fail_fast(!a.keep_going)
        .attempts(a.attempts.max(1))
        .timeout(timeout)
        .run();
    match a.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        Format::Text => print!("{}", report.render(a.verbose)),
    }
    if report.ok {
        return Ok(());
    }
    let e = report.first_failure();
    let mut f = Failure::new(
        exit::FAILURE,
        "PREPARE_FAILED",
        e.map(|e| e.to_string())
            .unwrap_or_else(|| "a handler failed".into()),
    );
    if let Some(e) = e {
        if let Some(m) = &e.module {
            f = f.cause(format!(
                "module `{m}`{}",
                e.handler
                    .as_deref()
                    .map(|h| format!(", handler {h}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(act) = &e.action {
            f = f.action(act.clone());
        }
    }
    Err(f.action("Fix it and run `chora prepare` again: what is already in place is kept"))
}
