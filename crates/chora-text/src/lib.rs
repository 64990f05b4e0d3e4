//! Text every part of chora shows the same way, in one home each: where a YAML
//! document went wrong ([`yaml`]) and durations as a person reads them
//! ([`duration`]). A leaf: it depends on no chora crate, so the crates that
//! must stand alone (`chora-prepare`, `chora-infra`) can use it.

pub mod duration;
pub mod yaml;

pub use yaml::YamlError;
