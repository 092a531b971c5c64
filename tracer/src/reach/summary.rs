//! A scan told per call site: bytes and objects by reachability, who holds the reachable ones
//! (the root their shortest chain starts at), and the classes of the C++ objects.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    classes::Names,
    proc::{RootKind, Roots},
    root_of, Outcome, Reach,
};

/// Holders and classes listed per site.
const TOP: usize = 5;

/// A site's blocks by reachability at the last scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteReach {
    pub unreachable_objects: u64,
    pub unreachable_bytes: u64,
    pub indirect_objects: u64,
    pub indirect_bytes: u64,
    pub possible_objects: u64,
    pub possible_bytes: u64,
    pub reachable_objects: u64,
    pub reachable_bytes: u64,
    /// Where the chains that reach its blocks start (reachable and possibly reachable), most
    /// bytes first.
    pub held_by: Vec<Held>,
}

/// A root and what of a site it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    /// `g_list in holders`, `stack of pid 42`, `anonymous memory`, `unknown heap`.
    pub root: String,
    pub objects: u64,
    pub bytes: u64,
}

/// Objects of a class at a site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    pub name: String,
    pub objects: u64,
    pub bytes: u64,
}

/// What a scan says of one site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteScan {
    pub reach: SiteReach,
    pub types: Vec<TypeCount>,
}

/// A scanned block: its site and weight (objects it stands for).
#[derive(Clone, Copy, Debug)]
pub struct Owned {
    pub site: usize,
    pub size: u64,
    pub weight: u64,
}

/// Per site, what the scan found.
pub fn by_site(
    pid: u32,
    owned: &[Owned],
    o: &Outcome,
    roots: &Roots,
    names: &mut Names,
) -> BTreeMap<usize, SiteScan> {
    let root = root_of(&o.holder);
    let mut held: HashMap<usize, HashMap<String, (u64, u64)>> = HashMap::new();
    let mut types: HashMap<usize, HashMap<String, (u64, u64)>> = HashMap::new();
    let mut root_names: HashMap<(usize, u64), String> = HashMap::new();
    let mut out: BTreeMap<usize, SiteScan> = BTreeMap::new();
    for (i, b) in owned.iter().enumerate() {
        let s = out.entry(b.site).or_default();
        let bytes = b.size * b.weight;
        let r = &mut s.reach;
        let (objs, total) = match o.reach[i] {
            Reach::Unreachable => (&mut r.unreachable_objects, &mut r.unreachable_bytes),
            Reach::Indirect => (&mut r.indirect_objects, &mut r.indirect_bytes),
            Reach::Possible => (&mut r.possible_objects, &mut r.possible_bytes),
            Reach::Reachable => (&mut r.reachable_objects, &mut r.reachable_bytes),
        };
        *objs += b.weight;
        *total += bytes;
        if let Some((region, at)) = root[i] {
            let name = root_names
                .entry((region, at))
                .or_insert_with(|| match roots.kinds[region] {
                    RootKind::File => names
                        .global(at)
                        .unwrap_or_else(|| format!("data at {at:#x}")),
                    RootKind::Stack => format!("a thread's stack in pid {pid}"),
                    RootKind::Anonymous => "anonymous memory (no known block)".into(),
                    RootKind::Unknown => "heap allocated before tracing began".into(),
                })
                .clone();
            let e = held.entry(b.site).or_default().entry(name).or_default();
            e.0 += b.weight;
            e.1 += bytes;
        }
        if let Some(class) = o.first_word[i].and_then(|w| names.class(w)) {
            let e = types.entry(b.site).or_default().entry(class).or_default();
            e.0 += b.weight;
            e.1 += bytes;
        }
    }
    for (site, s) in out.iter_mut() {
        let mut h: Vec<Held> = held
            .remove(site)
            .unwrap_or_default()
            .into_iter()
            .map(|(root, (objects, bytes))| Held {
                root,
                objects,
                bytes,
            })
            .collect();
        h.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.root.cmp(&b.root)));
        h.truncate(TOP);
        s.reach.held_by = h;
        let mut t: Vec<TypeCount> = types
            .remove(site)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, (objects, bytes))| TypeCount {
                name,
                objects,
                bytes,
            })
            .collect();
        t.sort_by(|a, b| b.objects.cmp(&a.objects).then_with(|| a.name.cmp(&b.name)));
        t.truncate(TOP);
        s.types = t;
    }
    out
}
