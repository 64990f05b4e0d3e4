//! The catalog's instances, sorted by (name, id), and the change index.

use super::entry::Entry;
use std::collections::BTreeMap;

/// The instances of one service, sorted by id. A `Vec` rather than an inner map:
/// most services have one to a few instances, and a B-tree allocates a whole node
/// (11 slots) for one (3.5 KB per service with `Entry` inline).
pub(super) type Instances = Vec<Entry>;

#[derive(Default)]
pub(super) struct State {
    pub(super) services: BTreeMap<String, Instances>,
    pub(super) index: u64,
    pub(super) count: usize,
}

impl State {
    pub(super) fn position(m: &Instances, id: &str) -> Result<usize, usize> {
        m.binary_search_by(|e| (*e.id).cmp(id))
    }

    pub(super) fn entry(&self, name: &str, id: &str) -> Option<&Entry> {
        let m = self.services.get(name)?;
        Some(&m[Self::position(m, id).ok()?])
    }

    pub(super) fn entry_mut(&mut self, name: &str, id: &str) -> Option<&mut Entry> {
        let m = self.services.get_mut(name)?;
        let i = Self::position(m, id).ok()?;
        Some(&mut m[i])
    }

    /// Inserts or replaces; true when the instance is new.
    pub(super) fn insert(&mut self, name: &str, e: Entry) -> bool {
        let m = match self.services.get_mut(name) {
            Some(m) => m,
            None => self.services.entry(name.to_owned()).or_default(),
        };
        match Self::position(m, &e.id) {
            Ok(i) => {
                m[i] = e;
                false
            }
            Err(i) => {
                if m.len() < 4 {
                    // Exact sizes for small services: Vec would otherwise jump to 4.
                    m.reserve_exact(1);
                }
                m.insert(i, e);
                self.count += 1;
                true
            }
        }
    }

    /// Removes an instance, and its service when it was the last one.
    pub(super) fn remove(&mut self, name: &str, id: &str) -> Option<Entry> {
        let m = self.services.get_mut(name)?;
        let e = m.remove(Self::position(m, id).ok()?);
        if m.is_empty() {
            self.services.remove(name);
        } else if m.len() < m.capacity() / 4 {
            m.shrink_to_fit();
        }
        self.count -= 1;
        Some(e)
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.services.values().flatten()
    }

    pub(super) fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.services.values_mut().flatten()
    }
}
