//! The call sites of the books: one per (process, stack) with its counts, found again by its
//! frames when the collector hands the same stack on under a new id; retired with their
//! process, and forgotten in a compaction once reported.
use std::collections::HashMap;

use super::{add, Counts, Site, SiteId, SiteKey, Snapshot};

#[derive(Default)]
pub struct SiteTable {
    sites: Vec<Site>,
    /// Per process: stack id → site (every site of a live process is here).
    index: HashMap<u32, HashMap<i32, SiteId>>,
    /// The live sites by (process, mapping, hash of the frames): a stack the collector hands
    /// on again under a new id (it forgot an unused one) is still its old site.
    by_frames: HashMap<u32, HashMap<(bool, u64), Vec<SiteId>>>,
    /// Sites of retired processes still held (see [`SiteTable::compact`]).
    retired: usize,
}

impl SiteTable {
    pub fn all(&self) -> &[Site] {
        &self.sites
    }

    pub fn get(&self, id: SiteId) -> &Site {
        &self.sites[id]
    }

    pub fn counts_mut(&mut self, id: SiteId) -> &mut Counts {
        &mut self.sites[id].counts
    }

    /// The site of `key`, if it was seen.
    pub fn id_of(&self, key: &SiteKey) -> Option<SiteId> {
        self.index.get(&key.pid)?.get(&key.stack_id).copied()
    }

    /// The site for `key`, created on first sight with the frames `frames_of` gives for it.
    /// `mapping`: the site's blocks are memory mappings.
    pub fn intern(
        &mut self,
        key: SiteKey,
        mapping: bool,
        frames_of: impl FnOnce(&SiteKey) -> Vec<u64>,
    ) -> SiteId {
        if let Some(id) = self.id_of(&key) {
            return id;
        }
        let frames = if key.stack_id < 0 {
            Vec::new()
        } else {
            frames_of(&key)
        };
        let by = (mapping, frames_hash(&frames));
        if !frames.is_empty() {
            let same = self
                .by_frames
                .get(&key.pid)
                .and_then(|m| m.get(&by))
                .and_then(|ids| {
                    ids.iter()
                        .copied()
                        .find(|&id| self.sites[id].frames == frames)
                });
            if let Some(id) = same {
                self.index
                    .entry(key.pid)
                    .or_default()
                    .insert(key.stack_id, id);
                return id;
            }
        }
        let id = self.sites.len();
        if !frames.is_empty() {
            self.by_frames
                .entry(key.pid)
                .or_default()
                .entry(by)
                .or_default()
                .push(id);
        }
        self.sites.push(Site {
            key: Some(key),
            frames,
            counts: Counts::default(),
            mapping,
            retired: false,
        });
        self.index
            .entry(key.pid)
            .or_default()
            .insert(key.stack_id, id);
        id
    }

    /// Retires a process's sites: live counts zero, cumulative counts kept.
    pub fn retire(&mut self, pid: u32) {
        self.by_frames.remove(&pid);
        for id in self.index.remove(&pid).unwrap_or_default().into_values() {
            let s = &mut self.sites[id];
            if !s.retired {
                self.retired += 1;
                s.retired = true;
                s.counts.live_objects = 0;
                s.counts.live_bytes = 0;
            }
        }
    }

    /// Sites of retired processes still held.
    pub fn retired(&self) -> usize {
        self.retired
    }

    /// Forgets the retired sites. Returns each old site id's new one (None: gone); the index
    /// follows, the caller remaps what else it keeps by site id. Kept sites keep their order.
    pub fn compact(&mut self) -> Vec<Option<SiteId>> {
        let mut map = Vec::with_capacity(self.sites.len());
        let mut kept = Vec::with_capacity(self.sites.len() - self.retired);
        for s in self.sites.drain(..) {
            if s.retired {
                map.push(None);
            } else {
                map.push(Some(kept.len()));
                kept.push(s);
            }
        }
        self.sites = kept;
        self.retired = 0;
        // Only live processes' sites are in `index` and `by_frames` (see `retire`).
        for ids in self.index.values_mut() {
            for id in ids.values_mut() {
                *id = map[*id].expect("a live process's site");
            }
        }
        for ids in self.by_frames.values_mut().flat_map(|m| m.values_mut()) {
            for id in ids.iter_mut() {
                *id = map[*id].expect("a live process's site");
            }
        }
        map
    }

    /// Totals over the sites `keep` selects.
    pub fn totals(&self, keep: impl Fn(&Site) -> bool) -> Counts {
        self.sites
            .iter()
            .filter(|s| keep(s))
            .fold(Counts::default(), |acc, s| add(acc, s.counts))
    }

    pub fn snapshot(&self, ts_ns: u64) -> Snapshot {
        Snapshot {
            ts_ns,
            sites: self.sites.iter().map(|s| s.counts).collect(),
        }
    }
}

fn frames_hash(frames: &[u64]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(frames)
}
