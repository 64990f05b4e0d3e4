//! `chora infra bootstrap | status`: fresh hosts over SSH get Docker and a mesh
//! network (DESIGN.md §11) and form a Docker Swarm on it (§13). The work is
//! `chora-infra`'s; this prints it.

use crate::failure::{EXIT_CONFIG, Failure, exit};
use chora_infra::{Event, Inventory, Report, Status};
use chora_text::duration::took;
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  chora infra bootstrap --inventory hosts.yml\n  chora infra status --inventory hosts.yml"
)]
pub struct InfraArgs {
    #[command(subcommand)]
    command: InfraCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TextOrJson {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TableOrJson {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum InfraCommand {
    /// Install Docker, join the mesh network and form the swarm on every host of the inventory
    #[command(
        after_help = "Example:\n  chora infra bootstrap --inventory hosts.yml\n  chora infra bootstrap --inventory hosts.yml --dry-run\n\nExit codes: 0 every host ready, 1 a host failed (the others are done), 7 invalid inventory."
    )]
    Bootstrap {
        /// The inventory (YAML): hosts, ssh, docker, network, swarm
        #[arg(long)]
        inventory: PathBuf,
        /// Hosts prepared at once
        #[arg(long, default_value_t = 10)]
        parallel: usize,
        /// Connect and read facts only; print what would be done
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
        format: TextOrJson,
    },
    /// Re-check every host (changing nothing) and print the table
    #[command(
        after_help = "Example:\n  chora infra status --inventory hosts.yml\n  chora infra status --inventory hosts.yml --format json\n\nExit codes: 0 every host ready, 1 a host is not, 7 invalid inventory."
    )]
    Status {
        #[arg(long)]
        inventory: PathBuf,
        #[arg(long, value_enum, default_value_t = TableOrJson::Table)]
        format: TableOrJson,
    },
}

fn load(path: &Path) -> Result<Inventory, Failure> {
    Inventory::load(path).map_err(|e| {
        Failure::new(EXIT_CONFIG, "INVENTORY_ERROR", e.to_string())
            .cause(format!(
                "{} line {}: {}",
                e.file.display(),
                e.line,
                e.message
            ))
            .action("Fix the inventory (see DESIGN.md §11 or `chora infra bootstrap --help`)")
    })
}

fn state_path() -> PathBuf {
    std::env::var_os("CHORA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".chora"))
        .join("infra-state.json")
}

fn color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(on: bool, code: &str, s: &str) -> String {
    if on {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

fn print_event(e: Event, color: bool) {
    let mut out = std::io::stdout().lock();
    let _ = match e {
        Event::Begin { host, step } => writeln!(out, "  ⏳ {host} {step}..."),
        Event::Step { host, report } => {
            let mark = match report.status {
                Status::Failed => paint(color, "31", "✗"),
                _ => paint(color, "32", "✓"),
            };
            let detail = report
                .detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  {mark} {host} {} {} ({}){detail}",
                report.step,
                report.status.as_str(),
                took(std::time::Duration::from_millis(report.duration_ms))
            )
        }
    };
    let _ = out.flush();
}

fn outcome(report: &Report, code: &'static str, what: &str) -> Result<(), Failure> {
    if report.all_ready() {
        return Ok(());
    }
    let failed: Vec<&str> = report
        .hosts
        .iter()
        .filter(|h| h.error.is_some())
        .map(|h| h.name.as_str())
        .collect();
    let mut f = Failure::new(
        exit::FAILURE,
        code,
        format!(
            "{} of {} hosts {what}: {}",
            failed.len(),
            report.hosts.len(),
            failed.join(", ")
        ),
    );
    for h in &report.hosts {
        if let Some(e) = &h.error {
            f = f.cause(format!("{}: {e}", h.name));
        }
    }
    Err(f.action(
        "Fix the cause and run `chora infra bootstrap` again: only what is not done is redone",
    ))
}

pub fn run(a: InfraArgs) -> Result<(), Failure> {
    let rt = crate::rt::runtime()?;
    match a.command {
        InfraCommand::Bootstrap {
            inventory,
            parallel,
            dry_run,
            format,
        } => {
            let inv = load(&inventory)?;
            let json = format == TextOrJson::Json;
            let color = color();
            if !json {
                let verb = if dry_run { "Planning" } else { "Bootstrapping" };
                let swarm = match inv.swarm {
                    Some(s) => format!("{} manager(s)", s.managers.min(inv.hosts.len())),
                    None => "off".into(),
                };
                println!(
                    "{verb} {} host(s) from {} (network: {}, docker: {}, swarm: {swarm})\n{}",
                    inv.hosts.len(),
                    inventory.display(),
                    inv.network.provider(),
                    inv.docker.as_str(),
                    "━".repeat(61)
                );
            }
            let opts = chora_infra::Options {
                parallel: parallel.max(1),
                dry_run,
            };
            let report = rt.block_on(chora_infra::bootstrap(&inv, &opts, move |e| {
                if !json {
                    print_event(e, color)
                }
            }));
            if !dry_run {
                let path = state_path();
                let mut state = chora_infra::state::InfraState::load(&path);
                state.record(&inventory, &report);
                if let Err(e) = state.save(&path) {
                    tracing::warn!("cannot write {}: {e}", path.display());
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialize")
                );
            } else {
                println!("\n{}", report.table());
                if dry_run {
                    println!("Dry run: nothing was changed; `changed` means \"would change\".");
                }
            }
            outcome(&report, "INFRA_FAILED", "failed")
        }
        InfraCommand::Status { inventory, format } => {
            let inv = load(&inventory)?;
            let report = rt.block_on(chora_infra::status(&inv, 10));
            match format {
                TableOrJson::Json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("reports serialize")
                    )
                }
                TableOrJson::Table => print!("{}", report.table()),
            }
            outcome(&report, "INFRA_NOT_READY", "not ready").map_err(|f| f.quiet())
        }
    }
}
