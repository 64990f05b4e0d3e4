//! The inventory file as serde reads it: `Raw*` shapes with unknown keys
//! refused and the values a mistake must point at kept `Spanned`. Nothing
//! here is checked; `Inventory::parse` (mod.rs) turns them into an
//! [`super::Inventory`] or an error naming line and field.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    pub(super) hosts: Vec<Spanned<RawHost>>,
    #[serde(default)]
    pub(super) ssh: RawSsh,
    #[serde(default)]
    pub(super) docker: RawDocker,
    #[serde(default)]
    pub(super) network: Option<Spanned<RawNetwork>>,
    #[serde(default)]
    pub(super) apt: RawApt,
    #[serde(default)]
    pub(super) swarm: Option<Spanned<RawSwarm>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) name: String,
    pub(super) address: String,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) user: Option<String>,
    #[serde(default)]
    pub(super) labels: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    #[serde(default)]
    pub(super) identity_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) known_hosts: Option<String>,
    #[serde(default)]
    pub(super) accept_new: bool,
    #[serde(default)]
    pub(super) connect_timeout: Option<u64>,
    #[serde(default)]
    pub(super) keepalive: Option<u64>,
    #[serde(default)]
    pub(super) retries: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    #[serde(default)]
    pub(super) install: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApt {
    #[serde(default)]
    pub(super) lock_timeout: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) provider: Spanned<String>,
    #[serde(default)]
    pub(super) cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) listen_port: Option<u16>,
    #[serde(default)]
    pub(super) tailscale: Option<RawTailscale>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTailscale {
    pub(super) auth_key_file: Spanned<String>,
    #[serde(default)]
    pub(super) tags: Vec<String>,
}

/// `swarm:` as written: `false` (no swarm), `true` or empty (the defaults), or
/// a map of its settings.
#[derive(Debug, Clone)]
pub(super) enum RawSwarm {
    Off,
    On(RawSwarmMap),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwarmMap {
    #[serde(default)]
    pub(super) managers: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawSwarm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawSwarm, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSwarm;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`false`, or a map such as {managers: 3}")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawSwarm, E> {
                Ok(if on {
                    RawSwarm::On(RawSwarmMap::default())
                } else {
                    RawSwarm::Off
                })
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RawSwarm, E> {
                Ok(RawSwarm::On(RawSwarmMap::default()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawSwarm, A::Error> {
                RawSwarmMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSwarm::On)
            }
        }
        d.deserialize_any(V)
    }
}
