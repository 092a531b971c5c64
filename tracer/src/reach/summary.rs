//! A scan told per call site: bytes and objects by reachability, who holds the reachable ones
//! (the root their shortest chain starts at), and the classes of the C++ objects.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    classes::Names,
    proc::{RootKind, Roots},
    Holder, Outcome, Reach, UNKNOWN_ROOT,
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
    /// Who holds one of its blocks, from the root down (`g_list in server`, then the sites
    /// whose blocks point one to the next: `session_new (server.c:40)`, `buf_alloc
    /// (server.c:52) × 3`); for lost blocks, from the lost block that leads them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// The chain as the scan found it, until the report names its sites.
    #[serde(skip)]
    pub links: Vec<Link>,
}

/// The reachability classes, in valgrind's order, as the reports name them.
pub const REACH_NAMES: [&str; 4] = [
    "unreachable",
    "indirectly lost",
    "possibly reachable",
    "reachable",
];

impl SiteReach {
    /// Objects and bytes of `class`.
    pub fn class_mut(&mut self, class: Reach) -> (&mut u64, &mut u64) {
        match class {
            Reach::Unreachable => (&mut self.unreachable_objects, &mut self.unreachable_bytes),
            Reach::Indirect => (&mut self.indirect_objects, &mut self.indirect_bytes),
            Reach::Possible => (&mut self.possible_objects, &mut self.possible_bytes),
            Reach::Reachable => (&mut self.reachable_objects, &mut self.reachable_bytes),
        }
    }

    /// Per class (`REACH_NAMES` order): objects and bytes.
    pub fn counts(&self) -> [(u64, u64); 4] {
        [
            (self.unreachable_objects, self.unreachable_bytes),
            (self.indirect_objects, self.indirect_bytes),
            (self.possible_objects, self.possible_bytes),
            (self.reachable_objects, self.reachable_bytes),
        ]
    }

    /// Sets the counts from [`SiteReach::counts`]'s form.
    pub fn set_counts(&mut self, c: [(u64, u64); 4]) {
        for (class, (objects, bytes)) in Reach::ALL.into_iter().zip(c) {
            let (o, b) = self.class_mut(class);
            (*o, *b) = (objects, bytes);
        }
    }

    /// What a `leak` verdict adds for a site scanned so: `unreachable` when most of its bytes
    /// are lost (definitely or indirectly), else `held by` the root holding most of them.
    pub fn leak_detail(&self) -> Option<String> {
        let lost = self.unreachable_bytes + self.indirect_bytes;
        let held = self.possible_bytes + self.reachable_bytes;
        if lost + held == 0 {
            return None;
        }
        if lost > held {
            return Some("unreachable".into());
        }
        Some(match self.held_by.first() {
            Some(h) => format!("held by {}", h.root),
            None => "reachable".into(),
        })
    }

    /// Adds another scan's counts and holders (the holders still to be ranked).
    pub fn add_counts(&mut self, other: &SiteReach) {
        for (class, (objects, bytes)) in Reach::ALL.into_iter().zip(other.counts()) {
            let (o, b) = self.class_mut(class);
            *o += objects;
            *b += bytes;
        }
    }
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

/// Objects and bytes by name (a root, a class).
pub type Tally = HashMap<String, (u64, u64)>;

/// Adds `objects` and `bytes` under `name`.
pub fn add(t: &mut Tally, name: &str, objects: u64, bytes: u64) {
    let e = t.entry(name.to_string()).or_default();
    e.0 += objects;
    e.1 += bytes;
}

/// The top `TOP` of a tally, by `key` (descending), then by name.
fn top<T>(t: Tally, key: fn(&(u64, u64)) -> u64, make: fn(String, u64, u64) -> T) -> Vec<T> {
    let mut v: Vec<(String, (u64, u64))> = t.into_iter().collect();
    v.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP);
    v.into_iter().map(|(n, (o, b))| make(n, o, b)).collect()
}

/// The roots holding most bytes.
pub fn holders(t: Tally) -> Vec<Held> {
    top(
        t,
        |c| c.1,
        |root, objects, bytes| Held {
            root,
            objects,
            bytes,
        },
    )
}

/// Every class of a tally, most objects first (a scan keeps them all: `--by class` adds
/// them up over the sites).
pub fn all_classes(t: Tally) -> Vec<TypeCount> {
    let mut v: Vec<TypeCount> = t
        .into_iter()
        .map(|(name, (objects, bytes))| TypeCount {
            name,
            objects,
            bytes,
        })
        .collect();
    v.sort_by(|a, b| b.objects.cmp(&a.objects).then_with(|| a.name.cmp(&b.name)));
    v
}

/// The classes with most objects.
pub fn classes(t: Tally) -> Vec<TypeCount> {
    top(
        t,
        |c| c.0,
        |name, objects, bytes| TypeCount {
            name,
            objects,
            bytes,
        },
    )
}

/// What a scan says of one site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteScan {
    pub reach: SiteReach,
    pub types: Vec<TypeCount>,
    /// Who holds one of its blocks (the one nearest a root; for a site whose blocks are all
    /// lost, one reached from other lost blocks), from the start of the chain down.
    pub chain: Vec<Link>,
}

/// A step of a chain of holders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Where it starts: a root, by name.
    Root(String),
    /// `blocks` blocks of one site in a row, each pointing to the next.
    Site { site: usize, blocks: u64 },
}

/// How a process stood while it was scanned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanHow {
    /// It ran on meanwhile: the figures are approximate.
    #[default]
    Running,
    /// Held still for the scan (--stop-for-scan).
    Stopped,
    /// Held at its exit (a launched command's final report).
    AtExit,
}

/// What one scan of a process cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    pub how: ScanHow,
    /// Bytes of its memory read.
    pub bytes: u64,
    /// How long the scan took.
    pub micros: u64,
    /// How long the process was held still for it (--stop-for-scan), the wait for the
    /// events from before the stop included.
    pub pause_micros: u64,
    /// Blocks that could not be read (freed and unmapped meanwhile): their pointers were not
    /// followed.
    pub unreadable_blocks: u64,
    /// Root bytes that could not be read (skipped).
    pub unreadable_root_bytes: u64,
}

/// What a scan of one process found: per site, and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessScan {
    pub sites: Vec<(usize, SiteScan)>,
    pub stats: ScanStats,
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
    let mut held: HashMap<usize, Tally> = HashMap::new();
    let mut types: HashMap<usize, Tally> = HashMap::new();
    let mut root_names: HashMap<(usize, u64), String> = HashMap::new();
    let mut out: BTreeMap<usize, SiteScan> = BTreeMap::new();
    for (i, b) in owned.iter().enumerate() {
        let s = out.entry(b.site).or_default();
        let bytes = b.size * b.weight;
        let (objs, total) = s.reach.class_mut(o.reach[i]);
        *objs += b.weight;
        *total += bytes;
        if let Some((region, at)) = o.root[i] {
            let name = root_names
                .entry((region, at))
                .or_insert_with(|| match roots.kinds.get(region) {
                    None if region == UNKNOWN_ROOT => "heap allocated before tracing began".into(),
                    None => format!("root {region}"),
                    Some(kind) => match kind {
                        RootKind::File => names
                            .global(at)
                            .unwrap_or_else(|| format!("data at {at:#x}")),
                        RootKind::Stack => format!("a thread's stack in pid {pid}"),
                        RootKind::Anonymous => "anonymous memory (no known block)".into(),
                        RootKind::Registers => format!("a thread's registers in pid {pid}"),
                    },
                })
                .clone();
            add(held.entry(b.site).or_default(), &name, b.weight, bytes);
        }
        if let Some(class) = o.first_word[i].and_then(|w| names.class(w)) {
            add(types.entry(b.site).or_default(), &class, b.weight, bytes);
        }
    }
    for (site, s) in out.iter_mut() {
        s.reach.held_by = holders(held.remove(site).unwrap_or_default());
        s.types = all_classes(types.remove(site).unwrap_or_default());
    }
    // One chain per site: from the block nearest its holder (fewest links).
    let depth = depths(&o.holder);
    let mut sample: HashMap<usize, usize> = HashMap::new();
    for (i, b) in owned.iter().enumerate() {
        let better = |j: usize| {
            let held = |k: usize| o.root[k].is_some();
            (held(i), std::cmp::Reverse(depth[i])) > (held(j), std::cmp::Reverse(depth[j]))
        };
        match sample.get(&b.site) {
            Some(&j) if !better(j) => {}
            _ => {
                sample.insert(b.site, i);
            }
        }
    }
    for (site, i) in sample {
        let mut chain = Vec::new();
        let mut k = i;
        let mut steps = 0;
        loop {
            let step = owned[k].site;
            match chain.last_mut() {
                Some(Link::Site { site, blocks }) if *site == step => *blocks += 1,
                _ => chain.push(Link::Site {
                    site: step,
                    blocks: 1,
                }),
            }
            steps += 1;
            match o.holder[k] {
                Holder::Block(p) if steps <= owned.len() => k = p,
                _ => break,
            }
        }
        if let Some((region, at)) = o.root[i] {
            if let Some(name) = root_names.get(&(region, at)) {
                chain.push(Link::Root(name.clone()));
            }
        }
        chain.reverse();
        if let Some(s) = out.get_mut(&site) {
            s.chain = chain;
        }
    }
    out
}

/// Each block's links to the start of its chain of holders (a root, or a lost block that
/// leads its group); blocks in a cycle count as far as the cycle.
fn depths(holder: &[Holder]) -> Vec<u32> {
    const UNSET: u32 = u32::MAX;
    const WALKING: u32 = u32::MAX - 1;
    let mut depth = vec![UNSET; holder.len()];
    let mut path = Vec::new();
    for i in 0..holder.len() {
        let mut k = i;
        let base = loop {
            match depth[k] {
                UNSET => {}
                // Back on this walk's own path: a cycle, which starts here.
                WALKING => break 0,
                d => break d,
            }
            match holder[k] {
                Holder::Block(p) => {
                    depth[k] = WALKING;
                    path.push(k);
                    k = p;
                }
                _ => {
                    depth[k] = 0;
                    break 0;
                }
            }
        };
        for (n, p) in path.drain(..).rev().enumerate() {
            depth[p] = base + 1 + n as u32;
        }
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(unreachable: u64, indirect: u64, possible: u64, reachable: u64) -> SiteReach {
        let mut r = SiteReach::default();
        r.set_counts([
            (1, unreachable),
            (1, indirect),
            (1, possible),
            (1, reachable),
        ]);
        r
    }

    #[test]
    fn a_leak_is_unreachable_or_held_by_its_main_holder() {
        assert_eq!(SiteReach::default().leak_detail(), None);
        assert_eq!(
            reach(60, 0, 0, 50).leak_detail().as_deref(),
            Some("unreachable")
        );
        // Indirectly lost blocks are lost too.
        assert_eq!(
            reach(10, 60, 0, 50).leak_detail().as_deref(),
            Some("unreachable")
        );
        let mut held = reach(10, 0, 20, 50);
        assert_eq!(held.leak_detail().as_deref(), Some("reachable"));
        held.held_by = holders(Tally::from([
            ("g_list in server".to_string(), (5, 50)),
            ("a thread's stack in pid 7".to_string(), (2, 20)),
        ]));
        assert_eq!(
            held.leak_detail().as_deref(),
            Some("held by g_list in server")
        );
    }

    #[test]
    fn counts_round_trip_and_add_up() {
        let mut r = reach(1, 2, 3, 4);
        assert_eq!(r.counts(), [(1, 1), (1, 2), (1, 3), (1, 4)]);
        r.add_counts(&reach(10, 20, 30, 40));
        assert_eq!(r.counts(), [(2, 11), (2, 22), (2, 33), (2, 44)]);
        let (o, b) = r.class_mut(Reach::Possible);
        *o += 1;
        *b += 1;
        assert_eq!((r.possible_objects, r.possible_bytes), (3, 34));
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn depths_count_links_to_the_start_of_each_chain_and_cycles_end() {
        let root = Holder::Root { region: 0, at: 8 };
        // 0 <- root; 1 <- 0; 2 <- 1; 3 and 4 hold each other (a lost cycle); 5 nobody.
        let holder = [
            root,
            Holder::Block(0),
            Holder::Block(1),
            Holder::Block(4),
            Holder::Block(3),
            Holder::Nobody,
        ];
        let d = depths(&holder);
        assert_eq!(&d[..3], &[0, 1, 2]);
        assert!(d[3] <= 2 && d[4] <= 2, "{d:?}");
        assert_eq!(d[5], 0);
        // A long list: linear, not quadratic.
        let n = 200_000;
        let mut long = vec![root];
        long.extend((0..n - 1).map(Holder::Block));
        let d = depths(&long);
        assert_eq!(d[n - 1], (n - 1) as u32);
    }
}
