//! What every command opens first: the config (written from the built-in
//! template only by a run that may change things), the state file, the
//! shared [`Ctx`], and the home's lock. Each failure here is a [`Failure`]
//! with its documented exit code: 7 for the config, 8 for the state.

use crate::config::{Config, Environment};
use crate::ctx::Ctx;
use crate::exit;
use crate::failure::{EXIT_CONFIG, Failure};
use crate::home::Home;
use chora_api::bootstrap_state::State;
use std::path::{Path, PathBuf};

/// Loads the config, writing it from the built-in template when it is missing
/// (unless `dry_run`, which changes nothing).
pub fn load_config(
    home: &Home,
    path: Option<&std::path::Path>,
    env: Option<Environment>,
    write: bool,
) -> Result<(Config, PathBuf), Failure> {
    let path = path
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| home.config());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let env = env.unwrap_or(Environment::Dev);
            let Some(t) = crate::template::template(env) else {
                return Err(Failure::new(
                    EXIT_CONFIG,
                    "CONFIG_ERROR",
                    format!(
                        "{} does not exist and there is no built-in `{}` template yet",
                        path.display(),
                        env.as_str()
                    ),
                )
                .action(format!(
                    "Write {} (start from `chora bootstrap config show` of the dev template)",
                    path.display()
                )));
            };
            if write {
                chora_api::files::write_atomic(&path, t.as_bytes(), 0o644).map_err(|e| {
                    Failure::new(
                        EXIT_CONFIG,
                        "CONFIG_ERROR",
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?;
            }
            t
        }
        Err(e) => {
            return Err(Failure::new(
                EXIT_CONFIG,
                "CONFIG_ERROR",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let config = Config::parse(&text, &path).map_err(config_failure)?;
    if let Some(want) = env
        && want != config.environment
    {
        return Err(Failure::new(
            EXIT_CONFIG,
            "CONFIG_ERROR",
            format!(
                "{} is for environment `{}`, not `{}`",
                path.display(),
                config.environment.as_str(),
                want.as_str()
            ),
        )
        .cause("this home was set up for another environment")
        .action(format!(
            "Switch this home to `{w}` (the old config is kept as bootstrap-config.yml.bak): chora bootstrap config init --environment {w} --force",
            w = want.as_str()
        ))
        .action("Stop what runs first if anything does: chora bootstrap reset --force --keep-credentials")
        .action("Or pass --config with a file for that environment, or drop --environment"));
    }
    Ok((config, path))
}

/// Records `inventory` (`--inventory`) in the config at `path` as its
/// `inventory:` line (DESIGN.md §13: the config then records it), unless it
/// says so already; a config that names another inventory is refused (exit
/// 7). Returns the config as now written.
pub fn record_inventory(
    config: Config,
    path: &Path,
    inventory: &Path,
    write: bool,
) -> Result<Config, Failure> {
    let want = inventory.display().to_string();
    match config.inventory.as_deref() {
        Some(have) if have == want => return Ok(config),
        Some(have) => {
            return Err(Failure::new(
                EXIT_CONFIG,
                "CONFIG_ERROR",
                format!(
                    "{} records the inventory `{have}`, not `{want}`",
                    path.display()
                ),
            )
            .action(format!(
                "Edit `inventory:` in {} or drop --inventory",
                path.display()
            )));
        }
        None => {}
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = serde_json::to_string(&want).expect("a string serializes");
    let text = format!(
        "{}\n# The hosts this system runs on (a fleet on Docker Swarm, DESIGN §13):\n# chora infra's inventory.\ninventory: {line}\n",
        text.trim_end()
    );
    let config = Config::parse(&text, path).map_err(config_failure)?;
    if write {
        chora_api::files::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| {
            Failure::new(
                EXIT_CONFIG,
                "CONFIG_ERROR",
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    Ok(config)
}

pub fn config_failure(e: crate::config::ConfigError) -> Failure {
    let mut f = Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string());
    if !e.snippet.is_empty() {
        f = f.cause(format!("\n{}", e.snippet));
    }
    f.action(format!(
        "Fix {} and check it with `chora bootstrap config validate`",
        e.file.display()
    ))
}

pub fn load_state(home: &Home) -> Result<Option<State>, Failure> {
    State::load(&home.state()).map_err(|e| {
        Failure::new(
            exit::bootstrap::STATE_CORRUPTED,
            "STATE_CORRUPTED",
            e.to_string(),
        )
        .action(format!(
            "Move {} aside and run `chora bootstrap` again",
            home.state().display()
        ))
        .action("Or start over: chora bootstrap reset --force")
    })
}

pub fn save_state(state: &mut State, home: &Home) -> Result<(), Failure> {
    state.save(&home.state()).map_err(|e| {
        Failure::new(
            exit::bootstrap::STATE_CORRUPTED,
            "STATE_CORRUPTED",
            e.to_string(),
        )
    })
}

/// Builds the shared context of a command on `config`.
pub fn context(home: Home, config: Config, config_path: PathBuf) -> Result<Ctx, Failure> {
    let credentials = if home.credentials().exists() {
        Some(
            chora_api::auth::Credentials::load(&home.credentials()).map_err(|e| {
                Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string())
                    .action("Regenerate them: chora bootstrap config rotate-credentials")
            })?,
        )
    } else {
        None
    };
    Ok(Ctx {
        home,
        config,
        config_path,
        credentials,
        http: crate::health::client(),
        self_exe: std::env::current_exe().map_err(|e| {
            Failure::new(
                exit::FAILURE,
                "RUNTIME",
                format!("cannot find this executable: {e}"),
            )
        })?,
        cwd: std::env::current_dir()
            .map_err(|e| Failure::new(exit::FAILURE, "RUNTIME", e.to_string()))?,
        fencing: None,
        docker: Default::default(),
        etcd_image: Default::default(),
        prometheus_image: Default::default(),
        fleet: Default::default(),
    })
}

/// The context of a command that reads a system: this home's config (or
/// `config`), never written from a template.
pub fn open(config: Option<&Path>) -> Result<Ctx, Failure> {
    let home = Home::from_env();
    let (config, path) = load_config(&home, config, None, false)?;
    context(home, config, path)
}

/// How this process reaches the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Directly: the config's URLs answer on this machine.
    Here,
    /// Through the door of a fleet, over SSH: the config's `127.0.0.1` URLs
    /// answer only while this process runs.
    Door,
}

/// Opens the way to the system before a command asks it anything: in a
/// fleet (DESIGN.md §13), the manager's Docker over SSH and the door, so the
/// config's `127.0.0.1` URLs answer from here; on one machine, nothing.
pub async fn reach(ctx: &Ctx) -> Result<Way, Failure> {
    if ctx.config.inventory.is_none() {
        return Ok(Way::Here);
    }
    ctx.fleet().await.map(|_| Way::Door).map_err(|e| {
        let mut f = Failure::new(exit::FAILURE, "FLEET_UNREACHABLE", e.message);
        for c in e.causes {
            f = f.cause(c);
        }
        for a in e.actions {
            f = f.action(a);
        }
        f
    })
}

/// Takes this home's lock for `what` (one bootstrap, rollback or reset at a
/// time), or fails naming who holds it.
pub fn lock(home: &Home, what: &str) -> Result<crate::lock::Lock, Failure> {
    crate::lock::acquire(&home.lock(), what).map_err(|m| {
        Failure::new(exit::FAILURE, "LOCKED", m)
            .action("Wait for the other run to finish, then try again")
    })
}

/// The Manifest's URLs, comma-separated, as this home's system records them:
/// its state file (what runs), else its config; `None` for a home with
/// neither. What `chora manifest list` and friends use unless `--url` or
/// `MANIFEST_URL` say otherwise.
pub fn system_manifest_url(home: &Home) -> Option<String> {
    if let Ok(Some(state)) = State::load(&home.state()) {
        let urls: Vec<String> = state
            .services
            .iter()
            .filter(|(n, r)| *n == "manifest" || r.service.as_deref() == Some("manifest"))
            .filter_map(|(_, r)| r.url.clone())
            .collect();
        if !urls.is_empty() {
            return Some(urls.join(","));
        }
    }
    let config = Config::load(&home.config()).ok()?;
    let urls: Vec<String> = config
        .units_of("manifest")
        .iter()
        .filter_map(|u| config.service(u).and_then(crate::config::ServiceSpec::url))
        .collect();
    (!urls.is_empty()).then(|| urls.join(","))
}
