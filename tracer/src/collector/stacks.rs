//! The stacks the collector hands on: ids of its own, each naming one stack (its frames and
//! whether it is a mapping's).
//!
//! Every allocation record brings its stack inline (the probes walk it themselves, see
//! `send_with_walked_stack` in the eBPF programs); the same frames get the same id here, and
//! ids are never reused, so a stack id can never come to name other frames than it did.
use std::{collections::HashMap, sync::Arc};

/// Ids handed on start here (an id from before this collector, in an old recording, was below).
pub const ID_BASE: i32 = 1 << 30;
/// The id space is used up (see [`Stacks::intern`]): the stack is not available.
pub const EXHAUSTED: i32 = -75;

pub struct Stacks {
    ids: HashMap<(bool, Arc<[u64]>), i32>,
    frames: HashMap<i32, Arc<[u64]>>,
    /// (stack id, caller) of entry-only calls → the id of the stack with the caller first.
    leads: HashMap<(i32, u64), i32>,
    /// Ids asked for since the last trim: a trim keeps them.
    touched: std::collections::HashSet<i32>,
    next: i32,
    /// Stacks held before [`Stacks::trim`] forgets them.
    keep: usize,
    /// Stacks refused for want of ids.
    pub exhausted: u64,
}

impl Stacks {
    pub fn new(keep: usize) -> Stacks {
        Stacks {
            ids: HashMap::new(),
            frames: HashMap::new(),
            leads: HashMap::new(),
            touched: std::collections::HashSet::new(),
            next: ID_BASE,
            keep,
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
        let used = std::mem::take(&mut self.touched);
        self.frames.retain(|id, _| used.contains(id));
        self.ids.retain(|_, id| used.contains(id));
        self.leads
            .retain(|(id, _), l| used.contains(id) && used.contains(l));
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
    #[test]
    fn ids_name_frames_and_a_mappings_stack_is_its_own() {
        let mut s = Stacks::new(1000);
        let a = s.intern(false, vec![1, 2]);
        assert!(a >= ID_BASE);
        assert_eq!(s.intern(false, vec![1, 2]), a);
        assert_eq!(s.frames(a), vec![1, 2]);
        assert_ne!(s.intern(true, vec![1, 2]), a);
    }

    #[test]
    fn trimming_forgets_the_stacks_not_used_since_the_last_trim() {
        let mut s = Stacks::new(2);
        let a = s.intern(false, vec![1]);
        let b = s.intern(false, vec![2]);
        s.intern(false, vec![3]);
        s.trim();
        // Everything was used since the (first) trim.
        assert_eq!(s.len(), 3);
        assert_eq!(s.intern(false, vec![1]), a);
        let m = s.intern(false, vec![4]);
        s.trim();
        // [1] was asked for again and [4] is new: they stay.
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
        let mut s = Stacks::new(100);
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
        let mut s = Stacks::new(100);
        s.next = i32::MAX - 1;
        let a = s.intern(false, vec![1]);
        assert_eq!(a, i32::MAX - 1);
        assert_eq!(s.intern(false, vec![2]), EXHAUSTED);
        assert_eq!(s.intern(false, vec![1]), a);
        assert_eq!(s.exhausted, 1);
    }
}
