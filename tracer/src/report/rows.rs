//! Rows of a report: sites merged by what their stacks read as, and the live blocks of each.
use std::collections::{BTreeMap, HashMap};

use super::{LiveObjects, SizeCount};
use crate::{
    aggregate::{Ledger, SiteId},
    report::round3,
    symbolize::{Frame, Symbolizer},
};

/// Symbolizes sites and merges those whose stacks read the same (e.g. the copies of an
/// unrolled loop's call): one group per row, members in the order given. A site of no process
/// is `subject`'s.
pub fn group(
    ledger: &Ledger,
    symbols: &mut Symbolizer,
    subject: u32,
    sites: impl Iterator<Item = SiteId>,
) -> Vec<Group> {
    let sites: Vec<SiteId> = sites.collect();
    // Every frame of every site at once: one symbolizer call per file.
    let wanted: Vec<(u32, u64)> = sites
        .iter()
        .flat_map(|&id| {
            let site = ledger.site(id);
            let pid = site.key.map_or(subject, |k| k.pid);
            site.frames.iter().map(move |&a| (pid, a))
        })
        .collect();
    symbols.prepare(wanted);
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    for id in sites {
        let site = ledger.site(id);
        let pid = site.key.map_or(subject, |k| k.pid);
        let addrs = site.frames.clone();
        let frames = symbols.stack(pid, &addrs);
        let mut key: Vec<String> = frames.iter().map(source_key).collect();
        key.push(pid.to_string());
        key.push(site.mapping.to_string());
        let mapping = site.mapping;
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                pid,
                frames,
                mapping,
                ..Group::default()
            });
            groups.len() - 1
        });
        groups[g].members.push(id);
    }
    groups
}

/// One pass over the live blocks: sizes and ages per group (and, with a cutoff, the
/// blocks allocated at or before it).
pub fn describe_blocks(ledger: &Ledger, groups: &[Group], cutoff: Option<u64>) -> Vec<Blocks> {
    let mut of_site: HashMap<SiteId, usize> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        for &m in &g.members {
            of_site.insert(m, i);
        }
    }
    let mut out = vec![Blocks::default(); groups.len()];
    if of_site.is_empty() {
        return out;
    }
    for (_, _, b) in ledger.all_live_blocks() {
        let Some(&g) = of_site.get(&b.site) else {
            continue;
        };
        if cutoff.is_some_and(|c| b.ts_ns > c) {
            continue;
        }
        let o = &mut out[g];
        *o.sizes.entry(b.size).or_default() += b.weight;
        o.objects += b.weight;
        o.bytes += b.size * b.weight;
        o.oldest = Some(o.oldest.map_or(b.ts_ns, |t: u64| t.min(b.ts_ns)));
    }
    out
}

/// A reported row: sites whose stacks read the same.
#[derive(Default)]
pub struct Group {
    pub pid: u32,
    pub frames: Vec<Frame>,
    /// Memory mappings, not heap blocks.
    pub mapping: bool,
    pub members: Vec<SiteId>,
    pub live_objects: u64,
    pub live_bytes: u64,
    pub delta_objects: i64,
    pub delta_bytes: i64,
    pub allocs: u64,
    pub frees: u64,
}

/// The live blocks of one group.
#[derive(Clone, Default)]
pub struct Blocks {
    sizes: BTreeMap<u64, u64>,
    pub objects: u64,
    pub bytes: u64,
    oldest: Option<u64>,
}

impl Blocks {
    pub fn summary(&self, now_mono: u64) -> LiveObjects {
        let mut by_bytes: Vec<SizeCount> = self
            .sizes
            .iter()
            .map(|(&size, &objects)| SizeCount { size, objects })
            .collect();
        by_bytes.sort_by(|a, b| {
            (b.size * b.objects)
                .cmp(&(a.size * a.objects))
                .then(b.objects.cmp(&a.objects))
                .then(a.size.cmp(&b.size))
        });
        by_bytes.truncate(4);
        let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
        for (&size, &n) in &self.sizes {
            let class = if size == 0 {
                0
            } else {
                1u64 << (63 - size.leading_zeros())
            };
            *histogram.entry(class).or_default() += n;
        }
        LiveObjects {
            sizes: by_bytes,
            distinct_sizes: self.sizes.len(),
            size_min: self.sizes.keys().next().copied().unwrap_or(0),
            size_max: self.sizes.keys().next_back().copied().unwrap_or(0),
            size_histogram: histogram.into_iter().collect(),
            oldest_age_s: self
                .oldest
                .map(|t| round3(now_mono.saturating_sub(t) as f64 / 1e9)),
        }
    }
}

/// What a frame reads as in source terms: two stacks with equal keys are one site to a reader.
fn source_key(f: &Frame) -> String {
    match (&f.function, &f.file, f.line) {
        (Some(func), file, line) => format!(
            "{func}|{}|{}",
            file.as_deref().unwrap_or(""),
            line.unwrap_or(0)
        ),
        (None, _, _) => format!(
            "{}+{:#x}",
            f.module.as_deref().unwrap_or("?"),
            if f.module.is_some() { f.offset } else { f.addr }
        ),
    }
}
