//! Start order: the services of a phase in dependency waves.

use super::Config;
use std::collections::BTreeSet;

impl Config {
    /// Names of the services of `phase`, in dependency order (dependencies first,
    /// then by name).
    pub fn phase_services(&self, phase: u8) -> Vec<String> {
        self.waves(phase).into_iter().flatten().collect()
    }

    /// The services of `phase` in waves: each wave depends only on earlier ones,
    /// so a wave can start all at once.
    pub fn waves(&self, phase: u8) -> Vec<Vec<String>> {
        let members: BTreeSet<&str> = self
            .services
            .iter()
            .filter(|(_, s)| s.value.phase == phase)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut waves = Vec::new();
        while done.len() < members.len() {
            let wave: Vec<&str> = members
                .iter()
                .filter(|n| !done.contains(*n))
                .filter(|n| {
                    self.services[**n]
                        .value
                        .deps()
                        .all(|d| !members.contains(d) || done.contains(d))
                })
                .copied()
                .collect();
            if wave.is_empty() {
                break; // a cycle: `check` refuses such a config
            }
            done.extend(wave.iter().copied());
            waves.push(wave.into_iter().map(str::to_owned).collect());
        }
        waves
    }

    /// All services, dependency order across phases.
    pub fn start_order(&self) -> Vec<String> {
        (1..=3).flat_map(|p| self.phase_services(p)).collect()
    }
}
