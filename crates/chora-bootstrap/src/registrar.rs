//! Registration on behalf for phases 1-2 (`register: chora`, DESIGN.md §9):
//! the bootstrap exits, so a registrar unit (`chora keep-registered`) runs
//! beside the service, follows it by its unit id, keeps its registration
//! alive while its health check passes, and deregisters it when it dies.

use crate::config::ServiceSpec;
use crate::ctx::Ctx;
use crate::failure::StepError;
use chora_runtime::{Runtime, UnitId, UnitSpec};
use std::collections::BTreeMap;
use std::time::Duration;

impl Ctx {
    /// The unit that keeps a phase 1-2 `register: chora` service registered on
    /// its behalf (the bootstrap exits; this runs beside the service).
    fn registrar_name(name: &str) -> String {
        format!("{name}.registrar")
    }

    /// Starts the registrar of `name` (unless it runs), following `unit`.
    pub(crate) async fn ensure_registrar(
        &self,
        name: &str,
        spec: &ServiceSpec,
        runtime: &dyn Runtime,
        unit_spec: &UnitSpec,
        unit: &UnitId,
    ) -> Result<(), StepError> {
        if spec.registers() != crate::config::Register::Chora {
            return Ok(());
        }
        let procs = self.process_runtime();
        let reg = Self::registrar_name(name);
        if let Ok(Some(_)) = procs.find(&reg, None).await {
            return Ok(());
        }
        let follow = ["--unit".to_string(), unit.arg()];
        let mut argv = vec![
            self.self_exe.display().to_string(),
            "keep-registered".into(),
            "--name".into(),
            name.into(),
            "--id".into(),
            self.instance_id(name),
            "--version".into(),
            spec.version.clone().unwrap_or_else(|| "1.0.0".into()),
            "--rest".into(),
            runtime
                .advertise(unit_spec)
                .or_else(|| spec.url())
                .unwrap_or_default(),
            "--health".into(),
            spec.health_url().expect("checked by the config"),
            "--manifest-url".into(),
            self.manifest_url(),
        ];
        argv.extend(follow);
        if let Some(ca) = self.health_ca(spec) {
            argv.extend(["--ca".to_string(), ca]);
        }
        let mut env = BTreeMap::new();
        if let Some(key) = self.credentials.as_ref().and_then(|c| c.api_key(name)) {
            env.insert("CHORA_API_KEY".into(), key.to_owned());
        }
        let r = UnitSpec {
            name: reg,
            argv,
            env,
            ..Default::default()
        };
        procs
            .start(&r)
            .await
            .map(drop)
            .map_err(|e| StepError::new(format!("cannot register `{name}` on its behalf: {e}")))
    }

    /// Stops the registrar of `name`, which deregisters it.
    pub(crate) async fn stop_registrar(&self, name: &str) {
        let procs = self.process_runtime();
        let reg = Self::registrar_name(name);
        if let Ok(Some(mut f)) = procs.find(&reg, None).await {
            f.unit.stop(Duration::from_secs(5)).await;
        }
    }
}
