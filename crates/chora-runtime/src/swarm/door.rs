//! The door of a fleet: how the operator's machine reaches units that
//! answer only on the overlay (DESIGN.md §13: "reaching the system over SSH
//! (a forwarded port or socket; nothing else opened)").
//!
//! One container, `<project>-door`, on the manager this runtime talks to,
//! attached to the stack's (attachable) overlay, runs `chora relay
//! PORT=UNIT:PORT …` with each `PORT` published on that manager's 127.0.0.1
//! only. Whoever holds an SSH master to the manager forwards the same ports
//! from its own loopback, so the config's `http://127.0.0.1:<port>` URLs
//! mean the same as on one machine. The container is started through
//! [`DockerRuntime`], the one way chora starts a container; a door already
//! open with the same pairs is kept (another command may be using it).

use super::SwarmRuntime;
use crate::docker::DockerRuntime;
use crate::{Runtime, RuntimeError, UnitSpec};
use std::collections::BTreeMap;
use std::time::Duration;

/// The door's unit name (container `<project>-door`).
pub const DOOR: &str = "door";
/// Label: the door's pairs, so an open door with the same ones is kept.
const LABEL_PAIRS: &str = "io.chora.door";

impl SwarmRuntime {
    fn door_runtime(&self) -> DockerRuntime {
        let mut d = DockerRuntime::new(
            self.docker.clone(),
            self.home.clone(),
            self.project.clone(),
            std::env::temp_dir(),
        );
        d.chora_image = self.chora_image.clone();
        d
    }

    /// Opens the door for `pairs` (a port of the manager's loopback → a
    /// unit's `HOST:PORT` on the overlay); keeps one already open for the
    /// same pairs.
    pub async fn open_door(&self, pairs: &[(u16, String)]) -> Result<(), RuntimeError> {
        self.ensure_network().await?;
        let want: Vec<String> = pairs.iter().map(|(p, to)| format!("{p}={to}")).collect();
        let joined = want.join(" ");
        let docker = self.door_runtime();
        *self.door.lock().expect("not poisoned") = pairs.to_vec();
        if let Some(mut found) = docker.find(DOOR, None).await? {
            if found.labels.get(LABEL_PAIRS) == Some(&joined) {
                return Ok(());
            }
            found.unit.stop(Duration::from_secs(1)).await;
        }
        let (mut argv, image) = docker.chora(vec!["relay".into()]);
        argv.extend(want);
        let mut spec = UnitSpec {
            name: DOOR.into(),
            argv,
            image,
            labels: BTreeMap::from([(LABEL_PAIRS.to_owned(), joined)]),
            ..Default::default()
        };
        // Each port on the manager's 127.0.0.1 (DockerRuntime publishes
        // there only): the first as the unit's port, the rest beside it.
        let mut ports = pairs.iter().map(|(p, _)| *p);
        spec.port = ports.next();
        spec.more_ports = ports.collect();
        docker.start(&spec).await.map(drop)
    }

    /// `url` as this caller reaches it through the door: a unit's
    /// `HOST:PORT` the door relays becomes `127.0.0.1:<door port>`.
    pub(super) fn through_door(&self, url: &str) -> String {
        let pairs = self.door.lock().expect("not poisoned");
        for (port, to) in pairs.iter() {
            let from = format!("://{to}");
            if url.contains(&format!("{from}/")) || url.ends_with(&from) {
                return url.replacen(&from, &format!("://127.0.0.1:{port}"), 1);
            }
        }
        url.to_owned()
    }

    /// Closes the door (before the overlay can go).
    pub async fn close_door(&self) -> Result<(), RuntimeError> {
        if let Some(mut found) = self.door_runtime().find(DOOR, None).await? {
            found.unit.stop(Duration::from_secs(1)).await;
        }
        Ok(())
    }
}
