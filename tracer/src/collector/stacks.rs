//! The stacks the collector hands on: ids of its own, each naming one stack (its frames and
//! whether it is a mapping's), whatever way the stack came from the kernel.
//!
//! The kernel sends a stack either inline (a record that carries its frames) or as an id of one
//! of its two stack maps. Those maps take turns by epoch (see `names::STACK_EPOCH`): stacks go
//! to the current epoch's map until it is a quarter full; then the next epoch begins in the
//! other (empty) map, and once every record of the old epoch has been drained the old map is
//! emptied, ready for the epoch after next. Tracing every process, a map would otherwise fill
//! with the stacks of processes long gone, and every new stack would come inline, ten times
//! the bytes of a record.
//!
//! An id of a map is resolved here, once per epoch, by reading the map: the ids handed on are
//! never reused, so a stack id can never come to name other frames than it did.
use std::{collections::HashMap, sync::Arc, time::Duration};

use tracer_common::{stack_ref_parts, STACK_EPOCH_MASK};

/// Ids handed on start here, above every id a stack map can give (kernel ids are below 2^30).
pub const ID_BASE: i32 = 1 << 30;
/// A stack id whose map was emptied before its record was read (the record came that late).
pub const EXPIRED: i32 = -116;
/// The id space is used up (see [`Stacks::intern`]): the stack is not available.
pub const EXHAUSTED: i32 = -75;

/// A new epoch begins when this share of the current map's slots (1 / N) holds stacks: a new
/// stack collides with an old one in about that share of cases.
const FILL_DIVISOR: u32 = 4;
/// An old epoch's map is emptied this long after the next epoch began (and after a drain):
/// records taken in it were sent by then. An entry-only call (`operator new`) open for longer
/// loses its stack, counted as a failed one.
const GRACE: Duration = Duration::from_millis(100);

/// What the collector must do to the kernel's maps before its next drain.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Write the new current epoch to `STACK_EPOCH[0]`.
    Begin {
        epoch: u32,
    },
    /// Write `kept_from` to `STACK_EPOCH[1]`, then empty stack map `map` (0 or 1), then call
    /// [`Stacks::emptied`].
    Empty {
        map: usize,
        kept_from: u32,
    },
}

pub struct Stacks {
    ids: HashMap<(bool, Arc<[u64]>), i32>,
    frames: HashMap<i32, Arc<[u64]>>,
    /// (stack id, caller) of entry-only calls → the id of the stack with the caller first.
    leads: HashMap<(i32, u64), i32>,
    /// Ids asked for by content since the last trim (those resolved from a map are in the
    /// epoch tables): a trim keeps them.
    touched: std::collections::HashSet<i32>,
    next: i32,
    /// Stacks held before [`Stacks::trim`] forgets them.
    keep: usize,
    /// The number of slots of each stack map.
    slots: u32,
    epoch: u32,
    /// (map id, mapping) → stack id, of the current epoch's map and of the previous one's
    /// until it is emptied.
    current: HashMap<(u32, bool), i32>,
    previous: Option<Previous>,
    /// Records whose map was emptied before they were read, and stacks refused for want of ids.
    pub expired: u64,
    pub exhausted: u64,
}

struct Previous {
    ids: HashMap<(u32, bool), i32>,
    age: Duration,
    drains: u32,
}

impl Stacks {
    pub fn new(slots: u32, keep: usize) -> Stacks {
        Stacks {
            ids: HashMap::new(),
            frames: HashMap::new(),
            leads: HashMap::new(),
            touched: std::collections::HashSet::new(),
            next: ID_BASE,
            keep,
            slots,
            epoch: 0,
            current: HashMap::new(),
            previous: None,
            expired: 0,
            exhausted: 0,
        }
    }

    /// The id of a stack (innermost frame first); `mapping`: a memory mapping's stack, a site
    /// apart from a heap block's with the same frames. Ids are never reused: when they run out
    /// (2^30 distinct stacks, or more with trims between), a new stack gets [`EXHAUSTED`].
    pub fn intern(&mut self, mapping: bool, ips: Vec<u64>) -> i32 {
        let ips: Arc<[u64]> = ips.into();
        if let Some(&id) = self.ids.get(&(mapping, ips.clone())) {
            self.touched.insert(id);
            return id;
        }
        if self.next == i32::MAX {
            self.exhausted += 1;
            return EXHAUSTED;
        }
        let id = self.next;
        self.next += 1;
        self.touched.insert(id);
        self.frames.insert(id, ips.clone());
        self.ids.insert((mapping, ips), id);
        id
    }

    /// The id of a stack-map reference `r` (`stack_ref`) of a record; `read(map, id)` reads
    /// the frames in stack map `map` (0 or 1) when the reference is new in its epoch.
    pub fn resolve(
        &mut self,
        r: i32,
        mapping: bool,
        read: impl FnOnce(usize, u32) -> Option<Vec<u64>>,
    ) -> i32 {
        if !(0..ID_BASE).contains(&r) {
            return r;
        }
        let (tag, id) = stack_ref_parts(r);
        let now = self.epoch & STACK_EPOCH_MASK;
        let (epoch, table) = if tag == now {
            (self.epoch, &mut self.current)
        } else if let Some(p) = self
            .previous
            .as_mut()
            .filter(|_| tag == self.epoch.wrapping_sub(1) & STACK_EPOCH_MASK)
        {
            (self.epoch.wrapping_sub(1), &mut p.ids)
        } else {
            self.expired += 1;
            return EXPIRED;
        };
        if let Some(&s) = table.get(&(id, mapping)) {
            return s;
        }
        let Some(ips) = read((epoch & 1) as usize, id) else {
            self.expired += 1;
            return EXPIRED;
        };
        let s = self.intern(mapping, ips);
        // (Re-borrowed: `intern` needed all of self.)
        let table = if epoch == self.epoch {
            &mut self.current
        } else {
            &mut self.previous.as_mut().expect("checked above").ids
        };
        table.insert((id, mapping), s);
        s
    }

    /// An entry-only call's stack with its caller's return address first (a kernel that
    /// already puts it there: not twice).
    pub fn with_lead(&mut self, id: i32, lead: u64) -> i32 {
        if id < 0 {
            return id;
        }
        if let Some(&l) = self.leads.get(&(id, lead)) {
            self.touched.insert(l);
            return l;
        }
        let mut ips = self.frames(id);
        if ips.first() != Some(&lead) {
            ips.insert(0, lead);
        }
        ips.truncate(tracer_common::MAX_STACK_DEPTH);
        let l = self.intern(false, ips);
        self.leads.insert((id, lead), l);
        l
    }

    /// The frames of a stack id (empty for an unknown one).
    pub fn frames(&self, id: i32) -> Vec<u64> {
        self.frames.get(&id).map(|f| f.to_vec()).unwrap_or_default()
    }

    /// The frames of a stack id, shared (empty for an unknown one).
    pub fn shared(&self, id: i32) -> Arc<[u64]> {
        self.frames
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    /// Once more than `keep` stacks are held, forgets those not used since the last trim (the
    /// batches carry the frames of the stacks they name). A stack in use keeps its id; one
    /// seen again after it was forgotten gets a new id.
    pub fn trim(&mut self) {
        if self.frames.len() <= self.keep {
            return;
        }
        let mut used = std::mem::take(&mut self.touched);
        used.extend(self.current.values());
        if let Some(p) = &self.previous {
            used.extend(p.ids.values());
        }
        self.frames.retain(|id, _| used.contains(id));
        self.ids.retain(|_, id| used.contains(id));
        self.leads
            .retain(|(id, _), l| used.contains(id) && used.contains(l));
    }

    /// What to do to the kernel's maps before the next drain, `elapsed` after the last call.
    pub fn step(&mut self, elapsed: Duration) -> Step {
        if let Some(p) = &mut self.previous {
            p.age += elapsed;
            if p.age >= GRACE && p.drains > 0 {
                return Step::Empty {
                    map: (self.epoch.wrapping_sub(1) & 1) as usize,
                    kept_from: self.epoch,
                };
            }
            return Step::Nothing;
        }
        if self.current.len() as u64 * FILL_DIVISOR as u64 >= self.slots as u64 {
            self.epoch = self.epoch.wrapping_add(1);
            self.previous = Some(Previous {
                ids: std::mem::take(&mut self.current),
                age: Duration::ZERO,
                drains: 0,
            });
            return Step::Begin { epoch: self.epoch };
        }
        Step::Nothing
    }

    /// A drain ended.
    pub fn drained(&mut self) {
        if let Some(p) = &mut self.previous {
            p.drains += 1;
        }
    }

    /// The previous epoch's map was emptied: records still naming it are expired.
    pub fn emptied(&mut self) {
        self.previous = None;
    }

    /// Stacks held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::stack_ref;

    fn map_of(frames: &[(u32, Vec<u64>)]) -> impl Fn(u32) -> Option<Vec<u64>> + '_ {
        move |id| {
            frames
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, f)| f.clone())
        }
    }

    #[test]
    fn a_map_id_is_read_once_per_epoch_and_ids_name_frames() {
        let mut s = Stacks::new(16, 1000);
        let mut reads = 0;
        let a = s.resolve(stack_ref(3, 0), false, |m, id| {
            reads += 1;
            assert_eq!((m, id), (0, 3));
            Some(vec![1, 2])
        });
        let b = s.resolve(stack_ref(3, 0), false, |_, _| {
            reads += 1;
            None
        });
        assert_eq!((a, b, reads), (a, a, 1));
        assert!(a >= ID_BASE);
        assert_eq!(s.frames(a), vec![1, 2]);
        // An inline stack with the same frames is the same stack; a mapping's is not.
        assert_eq!(s.intern(false, vec![1, 2]), a);
        assert_ne!(s.intern(true, vec![1, 2]), a);
        // Errors pass through.
        assert_eq!(s.resolve(-17, false, |_, _| None), -17);
    }

    #[test]
    fn epochs_turn_and_an_old_map_is_emptied_only_after_a_drain_and_the_grace() {
        let mut s = Stacks::new(8, 1000);
        let even = [(1, vec![10]), (2, vec![20])];
        let r1 = s.resolve(stack_ref(1, 0), false, |_, id| map_of(&even)(id));
        assert_eq!(s.step(Duration::ZERO), Step::Nothing);
        let r2 = s.resolve(stack_ref(2, 0), false, |_, id| map_of(&even)(id));
        // A quarter of 8 slots: the next epoch begins, in the odd map.
        assert_eq!(s.step(Duration::ZERO), Step::Begin { epoch: 1 });
        // The old epoch's records still resolve, without reading again.
        assert_eq!(s.resolve(stack_ref(1, 0), false, |_, _| None), r1);
        // The odd map's id 1 is another stack.
        let odd = [(1, vec![30])];
        let r3 = s.resolve(stack_ref(1, 1), false, |m, id| {
            assert_eq!(m, 1);
            map_of(&odd)(id)
        });
        assert_ne!(r3, r1);
        assert_eq!(s.frames(r3), vec![30]);
        // Not emptied before a drain ended, nor before the grace.
        assert_eq!(s.step(GRACE), Step::Nothing);
        s.drained();
        assert_eq!(
            s.step(Duration::from_millis(1)),
            Step::Empty {
                map: 0,
                kept_from: 1
            }
        );
        s.emptied();
        // A late record of epoch 0 names nothing now: expired, never another stack.
        assert_eq!(
            s.resolve(stack_ref(2, 0), false, |_, _| Some(vec![99])),
            EXPIRED
        );
        assert_eq!(s.expired, 1);
        assert_eq!(s.frames(r2), vec![20]);
        // Epoch 2 reuses the even map: its ids are read afresh.
        s.resolve(stack_ref(5, 1), false, |_, _| Some(vec![50]));
        assert_eq!(s.step(Duration::ZERO), Step::Begin { epoch: 2 });
        let r4 = s.resolve(stack_ref(1, 2), false, |m, _| {
            assert_eq!(m, 0);
            Some(vec![40])
        });
        assert_eq!(s.frames(r4), vec![40]);
        assert_ne!(r4, r1);
    }

    #[test]
    fn trimming_forgets_the_stacks_not_used_since_the_last_trim() {
        let mut s = Stacks::new(1 << 20, 2);
        let a = s.intern(false, vec![1]);
        let b = s.intern(false, vec![2]);
        s.intern(false, vec![3]);
        s.trim();
        // Everything was used since the (first) trim.
        assert_eq!(s.len(), 3);
        assert_eq!(s.intern(false, vec![1]), a);
        let m = s.resolve(stack_ref(1, 0), false, |_, _| Some(vec![4]));
        s.trim();
        // [1] was asked for again and [4] is in the current epoch's table: they stay.
        assert_eq!(s.len(), 2);
        assert_eq!(s.frames(a), vec![1]);
        assert_eq!(s.frames(m), vec![4]);
        assert!(s.frames(b).is_empty());
        let b2 = s.intern(false, vec![2]);
        assert_ne!(b2, b, "ids are never reused");
        assert_eq!(s.frames(b2), vec![2]);
    }

    #[test]
    fn an_entry_only_call_gets_its_caller_first_once() {
        let mut s = Stacks::new(16, 100);
        let a = s.intern(false, vec![5, 6]);
        let l = s.with_lead(a, 4);
        assert_eq!(s.frames(l), vec![4, 5, 6]);
        assert_eq!(s.with_lead(a, 4), l);
        // A stack that already starts with the caller is not given it twice.
        let same = s.with_lead(a, 5);
        assert_eq!(s.frames(same), vec![5, 6]);
        assert_eq!(s.with_lead(-5, 4), -5);
    }

    #[test]
    fn the_id_space_ends_in_unavailable_stacks_never_shared_ids() {
        let mut s = Stacks::new(16, 100);
        s.next = i32::MAX - 1;
        let a = s.intern(false, vec![1]);
        assert_eq!(a, i32::MAX - 1);
        assert_eq!(s.intern(false, vec![2]), EXHAUSTED);
        assert_eq!(s.intern(false, vec![1]), a);
        assert_eq!(s.exhausted, 1);
    }
}
