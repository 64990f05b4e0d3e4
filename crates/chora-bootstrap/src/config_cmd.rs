//! `chora bootstrap config show | edit | validate | rotate-credentials |
//! apply-credentials`. An edit is saved only when it is valid; new
//! credentials are written 0600 and reach running services only when
//! applied (every service restarted).

use crate::config::Environment;
use crate::exit;
use crate::failure::{EXIT_CONFIG, Failure};
use crate::home::Home;
use crate::output::Reporter;
use crate::session;
use crate::stop::stop_all;
use chora_api::files::write_atomic;
use std::path::Path;
use std::time::Duration;

/// What `chora bootstrap config` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A fresh config from the built-in template of an environment; `force`
    /// replaces an existing one (kept as `.bak`).
    Init {
        environment: Environment,
        force: bool,
    },
    Show,
    Edit,
    Validate,
    RotateCredentials,
    ApplyCredentials,
}

/// `chora bootstrap config show | validate | edit | rotate-credentials | apply-credentials`.
pub async fn config(action: Action, path: Option<&Path>) -> Result<(), Failure> {
    let home = Home::from_env();
    let file = path.map(Path::to_path_buf).unwrap_or_else(|| home.config());
    match action {
        Action::Init { environment, force } => init(&home, &file, environment, force).await,
        Action::Show => {
            match std::fs::read_to_string(&file) {
                Ok(t) => print!("{t}"),
                Err(_) => {
                    eprintln!(
                        "# {} does not exist yet; this is the built-in template `chora bootstrap` writes:",
                        file.display()
                    );
                    print!("{}", crate::template::DEV);
                }
            }
            Ok(())
        }
        Action::Validate => {
            let c = crate::config::Config::load(&file).map_err(session::config_failure)?;
            println!(
                "✓ {} is valid ({} services, environment {})",
                file.display(),
                c.services.len(),
                c.environment.as_str()
            );
            Ok(())
        }
        Action::Edit => {
            if !file.exists() {
                write_atomic(&file, crate::template::DEV.as_bytes(), 0o644)
                    .map_err(|e| Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string()))?;
            }
            let tmp = file.with_extension("yml.edit");
            std::fs::copy(&file, &tmp)
                .map_err(|e| Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string()))?;
            let editor = std::env::var("VISUAL")
                .or_else(|_| std::env::var("EDITOR"))
                .unwrap_or_else(|_| "vi".into());
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{editor} \"$1\""))
                .arg("sh")
                .arg(&tmp)
                .status()
                .map_err(|e| {
                    Failure::new(exit::FAILURE, "EDITOR", format!("cannot run {editor}: {e}"))
                })?;
            if !status.success() {
                let _ = std::fs::remove_file(&tmp);
                return Err(Failure::new(
                    exit::FAILURE,
                    "EDITOR",
                    format!("{editor} exited with {status}; nothing was changed"),
                ));
            }
            match crate::config::Config::load(&tmp) {
                Ok(_) => {
                    std::fs::rename(&tmp, &file)
                        .map_err(|e| Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string()))?;
                    println!("✓ {} saved and valid", file.display());
                    Ok(())
                }
                Err(e) => {
                    let mut f = session::config_failure(e);
                    f.message = format!(
                        "{}; {} was left unchanged, your edit is in {}",
                        f.message,
                        file.display(),
                        tmp.display()
                    );
                    Err(f)
                }
            }
        }
        Action::RotateCredentials => {
            let ctx = session::open(path)?;
            let names: Vec<&str> = ctx.config.services.keys().map(String::as_str).collect();
            let creds = chora_api::auth::Credentials::generate(names);
            write_atomic(&home.credentials(), creds.to_json().as_bytes(), 0o600)
                .map_err(|e| Failure::new(exit::FAILURE, "CREDENTIALS", e.to_string()))?;
            println!(
                "✓ New credentials written to {} (mode 0600)",
                home.credentials().display()
            );
            println!(
                "  Running services still use the old ones: run `chora bootstrap config apply-credentials`"
            );
            Ok(())
        }
        Action::ApplyCredentials => {
            let ctx = session::open(path)?;
            let _lock = session::lock(&home, "chora bootstrap config apply-credentials")?;
            let Some(state) = session::load_state(&home)? else {
                return Err(Failure::new(
                    exit::status::NOT_BOOTSTRAPPED,
                    "NOT_RUNNING",
                    "no bootstrap has run here: nothing to restart",
                ));
            };
            let mut out = Reporter::new(false);
            out.line("Restarting every service with the current credentials...");
            let still = stop_all(&ctx, &state, &mut out).await;
            if !still.is_empty() {
                return Err(Failure::new(
                    exit::FAILURE,
                    "RESTART_FAILED",
                    format!("still running: {}", still.join(", ")),
                ));
            }
            drop(_lock);
            out.line("Starting them again:");
            crate::bootstrap_cmd::bootstrap(crate::bootstrap_cmd::Options {
                environment: None,
                resume: true,
                skip_validation: true,
                dry_run: false,
                config: path.map(Path::to_path_buf),
                inventory: None,
                timeout: Duration::from_secs(600),
                parallel: false,
                json: false,
            })
            .await
        }
    }
}

/// `chora bootstrap config init --environment ENV [--force]`: refused while
/// anything of this home runs (its units would no longer match the config);
/// an existing file needs `--force` and is kept as `<file>.bak`.
async fn init(home: &Home, file: &Path, env: Environment, force: bool) -> Result<(), Failure> {
    let _lock = session::lock(home, "chora bootstrap config init")?;
    if file.exists() {
        if !force {
            return Err(Failure::new(
                exit::FAILURE,
                "CONFIG_EXISTS",
                format!("{} exists", file.display()),
            )
            .action(format!(
                "Replace it (the old one is kept as {}.bak): chora bootstrap config init --environment {} --force",
                file.display(),
                env.as_str()
            )));
        }
        if let Ok(ctx) = session::open(Some(file)) {
            let state = session::load_state(home).ok().flatten();
            let running: Vec<String> = crate::ps::rows(&ctx, state.as_ref())
                .await
                .into_iter()
                .filter(|r| r.state == "running" || r.state == "restarting")
                .map(|r| r.name)
                .collect();
            if !running.is_empty() {
                return Err(Failure::new(
                    exit::FAILURE,
                    "SYSTEM_RUNNING",
                    format!(
                        "this home's system runs ({}); its config stays as it is",
                        running.join(", ")
                    ),
                )
                .action("Stop it first (data and volumes are kept): chora bootstrap reset --force --keep-credentials")
                .action("Then run this command again"));
            }
        }
        let bak = file.with_extension("yml.bak");
        std::fs::copy(file, &bak).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                "CONFIG_ERROR",
                format!("cannot keep {} as {}: {e}", file.display(), bak.display()),
            )
        })?;
        println!("Kept the old config as {}", bak.display());
    }
    let text = crate::template::template(env).expect("every environment has a template");
    write_atomic(file, text.as_bytes(), 0o644)
        .map_err(|e| Failure::new(exit::CONFIG, "CONFIG_ERROR", e.to_string()))?;
    println!(
        "✓ Wrote {} from the built-in `{}` template; bring it up with: chora bootstrap",
        file.display(),
        env.as_str()
    );
    Ok(())
}
