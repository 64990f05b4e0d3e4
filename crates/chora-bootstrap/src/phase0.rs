//! Phase 0, Pre-Bootstrap Validation (DESIGN.md §2): the runtime (Docker
//! ≥ 20.10 only when a service runs in a container, and the images chora
//! builds itself), free ports (a port held by our own service from an
//! earlier run is fine), free disk, the home's directories and databases
//! (`chora prepare`'s runner), and credentials generated once (0600).

use crate::ctx::Ctx;
use crate::failure::StepError;
use crate::run::Run;
use std::sync::Arc;
use std::time::Instant;

impl Run {
    pub(crate) async fn phase0(&mut self) -> Result<(), StepError> {
        let ctx = self.ctx.clone();
        // Runtime.
        let t = Instant::now();
        if ctx.config.needs_docker() {
            let docker = ctx.docker_runtime().await;
            let v = match &docker {
                Ok(d) => chora_docker::engine_version(d.docker())
                    .await
                    .map_err(|e| StepError::new(e.to_string())),
                Err(e) => Err(e.clone()),
            }
            .map_err(|e| {
                self.out.fail("Docker", None, &e.message);
                let mut err =
                    StepError::new(format!("Docker is needed by this config but {}", e.message));
                err.causes = e.causes;
                err.action("Start Docker (systemctl start docker), or use `command:` services")
            })?;
            if !chora_docker::version_at_least(&v, (20, 10)) {
                self.out
                    .fail("Docker", None, &format!("{v} is older than 20.10"));
                return Err(
                    StepError::new(format!("Docker {v} is too old (need 20.10 or newer)"))
                        .action("Upgrade the Docker engine"),
                );
            }
            self.out
                .ok(&format!("Docker {v} detected"), Some(t.elapsed()));
            // chora's own image, built from this binary when missing (no registry).
            if ctx.needs_chora_image() {
                let t = Instant::now();
                let d = docker.expect("connected above");
                let tag = chora_docker::image::chora_tag();
                match chora_docker::image::ensure_chora_image(d.docker()).await {
                    Ok(None) => self.out.ok(&format!("Image {tag} present"), None),
                    Ok(Some(b)) => self.out.ok(
                        &format!(
                            "Built image {tag} ({} files, {:.1} MB, no registry)",
                            b.files.len(),
                            b.size as f64 / 1e6
                        ),
                        Some(t.elapsed()),
                    ),
                    Err(e) => {
                        self.out
                            .fail(&format!("Image {tag}"), Some(t.elapsed()), &e.to_string());
                        return Err(StepError::new(format!("cannot build the image {tag}: {e}"))
                            .action("Try it alone: chora image build"));
                    }
                }
            }
            // The etcd cluster's image: present, pulled, or built from a local etcd.
            if !ctx.config.etcd_members().is_empty() {
                let t = Instant::now();
                match ctx.ensure_etcd_image().await {
                    Ok((_, how)) => self.out.ok(&how, Some(t.elapsed())),
                    Err(e) => {
                        self.out.fail("etcd image", Some(t.elapsed()), &e.message);
                        return Err(e);
                    }
                }
            }
            // Prometheus' image, the same way.
            if ctx
                .prometheus()
                .is_some_and(|p| p.image.as_deref() == Some("${PROMETHEUS_IMAGE}"))
            {
                let t = Instant::now();
                match ctx.ensure_prometheus_image().await {
                    Ok((_, how)) => self.out.ok(&how, Some(t.elapsed())),
                    Err(e) => {
                        self.out
                            .fail("Prometheus image", Some(t.elapsed()), &e.message);
                        return Err(e);
                    }
                }
            }
        } else {
            self.out.ok(
                &format!(
                    "Runtime: local processes (chora {})",
                    env!("CARGO_PKG_VERSION")
                ),
                None,
            );
        }
        for note in &ctx.config.notes {
            self.out.warn("Monitoring", note);
        }
        if ctx.prometheus().is_some() {
            let path = ctx.write_prometheus_config()?;
            self.out.ok(
                &format!("Prometheus config written to {}", path.display()),
                None,
            );
        }
        // Nothing of another home is reused silently (DESIGN.md §14): a
        // container or volume of a name this home needs must be its own.
        let mut others = Vec::new();
        for name in ctx.config.start_order() {
            let spec = ctx.spec(&name);
            if let Ok(rt) = ctx.runtime_for(spec).await {
                others.extend(rt.conflicts(&ctx.unit_spec(&name, spec)).await);
            }
        }
        if !others.is_empty() {
            self.out
                .fail("Names free for this home", None, &others.join("; "));
            let mut e = StepError::new(format!(
                "{} of the names this home needs belong to another chora home",
                others.len()
            ));
            for o in &others {
                e = e.cause(o.clone());
            }
            return Err(e
                .action(format!(
                    "Give this home a project of its own: `project: <name>` in {} (containers, networks and volumes are named after it)",
                    ctx.config_path.display()
                ))
                .action("Or remove what the other home left, if it is not needed: docker rm -f NAME, docker volume rm NAME"));
        }
        // Ports. A fleet's are on its hosts; here they are the door's,
        // which this run holds (`fleet/`).
        let mut taken = Vec::new();
        let here = ctx.config.inventory.is_none();
        for (name, s) in ctx.config.services.iter().filter(|_| here) {
            let Some(port) = s.value.port else { continue };
            if s.value.phase < 3
                && ctx
                    .find_local(name, self.state.services.get(name))
                    .await
                    .is_some()
            {
                continue; // ours, from an earlier run
            }
            if !crate::proc::port_free(port) {
                let who = match crate::proc::port_holder(port) {
                    Some((pid, cmd)) => format!("port {port} ({name}) is held by pid {pid}: {cmd}"),
                    None => format!("port {port} ({name}) is in use"),
                };
                taken.push((port, who));
            }
        }
        if !taken.is_empty() {
            let detail: Vec<String> = taken.iter().map(|(_, w)| w.clone()).collect();
            self.out.fail("Ports available", None, &detail.join("; "));
            let mut e = StepError::new(format!(
                "{} of the configured ports are in use",
                taken.len()
            ));
            for (_, w) in &taken {
                e = e.cause(w.clone());
            }
            let (p, _) = taken[0];
            return Err(e
                .action(format!("See who holds a port: ss -ltnp 'sport = :{p}'"))
                .action("Stop that process, or change the service's `port` in the config"));
        }
        let ports: Vec<u16> = ctx
            .config
            .services
            .values()
            .filter_map(|s| s.value.port)
            .collect();
        let span = match (ports.iter().min(), ports.iter().max()) {
            (Some(a), Some(b)) => format!("Ports {a}-{b} available"),
            _ => "No ports to check".into(),
        };
        self.out.ok(&span, None);
        // Disk.
        std::fs::create_dir_all(&ctx.home.root).map_err(|e| {
            StepError::new(format!("cannot create {}: {e}", ctx.home.root.display()))
        })?;
        let free = free_gib(&ctx.home.root);
        let need = ctx.config.prerequisites.min_disk_gb;
        if free < need {
            self.out.fail(
                "Disk space",
                None,
                &format!("{free:.1} GiB free, need {need} GiB"),
            );
            return Err(StepError::new(format!(
                "only {free:.1} GiB free under {} (need {need} GiB)",
                ctx.home.root.display()
            ))
            .action("Free some disk space or lower `prerequisites.min_disk_gb`"));
        }
        self.out
            .ok(&format!("Disk space: {free:.1} GiB available"), None);
        // Directories and the services' databases: the same runner as
        // `chora prepare`, so the services carry no cold-boot code.
        let t = Instant::now();
        let home = ctx.home.root.clone();
        let report =
            tokio::task::spawn_blocking(move || chora_prepare::chora_services_prepare(&home).run())
                .await
                .map_err(|e| StepError::new(e.to_string()))?;
        if !report.ok {
            let why = report
                .first_failure()
                .map(|e| e.to_string())
                .unwrap_or_default();
            self.out
                .fail("Prepare directories and databases", Some(t.elapsed()), &why);
            return Err(StepError::new(format!(
                "preparing {} failed: {why}",
                ctx.home.root.display()
            ))
            .action("Check the permissions of the chora home directory"));
        }
        let made = report.changes().count();
        if made == 0 {
            self.out
                .ok("Directories and databases in place", Some(t.elapsed()));
        } else {
            self.out.ok(
                &format!("Prepared directories and databases ({made} created)"),
                Some(t.elapsed()),
            );
        }
        // Credentials: generated once.
        let path = ctx.home.credentials();
        if path.exists() {
            self.out.ok("Credentials present", None);
        } else {
            let names: Vec<&str> = ctx.config.services.keys().map(String::as_str).collect();
            let creds = chora_api::auth::Credentials::generate(names);
            chora_api::files::write_atomic(&path, creds.to_json().as_bytes(), 0o600)
                .map_err(|e| StepError::new(format!("cannot write {}: {e}", path.display())))?;
            self.state.credentials_generated = true;
            self.state.credential_files = vec![path.display().to_string()];
            self.out.ok(
                &format!(
                    "Generated credentials (stored in {}, mode 0600)",
                    path.display()
                ),
                None,
            );
            self.ctx = Arc::new(Ctx {
                credentials: Some(creds),
                ..Ctx::clone(&ctx)
            });
        }
        Ok(())
    }
}

fn free_gib(path: &std::path::Path) -> f64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return f64::INFINITY;
    }
    (s.f_bavail as f64) * (s.f_frsize as f64) / (1024.0 * 1024.0 * 1024.0)
}
