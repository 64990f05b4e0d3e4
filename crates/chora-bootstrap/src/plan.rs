//! `chora bootstrap --dry-run`: the plan, phase by phase, in start order,
//! with each service's command and the names (never the values) of its
//! environment. It changes nothing, and writes no config.

use crate::ctx::Ctx;
use crate::output::Reporter;
use chora_api::bootstrap_state::PHASE_NAMES;

/// Prints what a run would do, changing nothing.
pub fn dry_run(ctx: &Ctx, out: &mut Reporter) {
    out.header(&format!(
        "Chora Bootstrap v{} — dry run (nothing is changed)",
        env!("CARGO_PKG_VERSION")
    ));
    out.line(&format!("Config: {}", ctx.config_path.display()));
    out.line(&format!("\nPhase 0: {}", PHASE_NAMES[0]));
    let ports: Vec<String> = ctx
        .config
        .services
        .values()
        .filter_map(|s| s.value.port)
        .map(|p| p.to_string())
        .collect();
    out.line(&format!("  - check ports {} are free", ports.join(", ")));
    out.line(&format!(
        "  - check {} GiB of disk under {}",
        ctx.config.prerequisites.min_disk_gb,
        ctx.home.root.display()
    ));
    out.line(&format!(
        "  - create {}/{{logs,data,run}} and credentials (0600) if missing",
        ctx.home.root.display()
    ));
    for phase in 1..=3u8 {
        out.line(&format!("\nPhase {phase}: {}", PHASE_NAMES[phase as usize]));
        for (i, wave) in ctx.config.waves(phase).iter().enumerate() {
            for name in wave {
                let spec = ctx.spec(name);
                let how = match (ctx.argv(spec), &spec.image) {
                    (Some(argv), _) => argv.join(" "),
                    (None, Some(img)) => format!("image {}", ctx.substitute(img)),
                    (None, None) => format!(
                        "{} capability serve --name {name} --listen 127.0.0.1:{}",
                        ctx.self_exe.display(),
                        spec.port.unwrap_or(0)
                    ),
                };
                let mut env: Vec<String> = ctx.env_for(name, spec).into_keys().collect();
                if !env.iter().any(|k| k == "CHORA_API_KEY") {
                    env.push("CHORA_API_KEY".into()); // from the credentials phase 0 writes
                    env.sort();
                }
                let verb = if phase == 3 {
                    "deploy via orchestrator"
                } else {
                    "start"
                };
                out.line(&format!("  {}. {verb} {name}: {how}", i + 1));
                out.line(&format!(
                    "       env: {} (values not shown)",
                    env.join(", ")
                ));
                if let Some(h) = spec.health_url() {
                    out.line(&format!("       wait healthy: {h}"));
                }
            }
        }
    }
    out.line(&format!("\nPhase 4: {}", PHASE_NAMES[4]));
    for t in &ctx.config.validation.tests {
        if t.value.enabled {
            out.line(&format!("  - {}", t.value.name));
        }
    }
}
