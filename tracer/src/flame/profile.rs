//! The flame data of the books as they stand: a pure function of what a report is built from.
use super::{Profile, Stack, What};
use crate::{
    aggregate::{verdict::Verdict, Counts, SiteId, Snapshot},
    report::{
        build::{frame_matches, Builder},
        round3,
    },
};

/// The flame data of `what` at `t_ns` (see [`What`]). Growth covers the last two marks when
/// there were two, else the last mark (or the start) to now. `start_unix_ns`: the start on the
/// wall clock.
pub fn profile(b: &mut Builder, what: What, t_ns: u64, start_unix_ns: i64) -> Profile {
    let books = b.books;
    let ((base, base_ns), (now, now_ns)) = match what {
        What::Growth => books.growth(t_ns),
        _ => (
            (Snapshot::default(), 0),
            (books.ledger.snapshot(t_ns), t_ns),
        ),
    };
    let zero = Counts::default();
    let before = |id: SiteId| *base.sites.get(id).unwrap_or(&zero);
    let after = |id: SiteId| *now.sites.get(id).unwrap_or(&zero);
    let ids: Vec<SiteId> = (0..books.ledger.sites().len())
        .filter(|&id| {
            let c = after(id);
            match what {
                What::Leaks | What::Live => c.live_objects > 0,
                What::Allocs => c.allocs > 0,
                What::Growth => {
                    let b = before(id);
                    c.live_bytes != b.live_bytes || c.live_objects != b.live_objects
                }
            }
        })
        .collect();
    let mut groups = b.group(ids.into_iter());
    if let Some(re) = &b.opts.site {
        groups.retain(|g| g.frames.iter().any(|f| frame_matches(re, f)));
    }
    let procs = b.procs;
    let exited = |pid: u32| procs.exited(pid);
    let mut judge = books.judge(&exited);
    let mut stacks = Vec::new();
    for g in groups {
        if what == What::Leaks {
            let v = judge.of(&g.members).verdict;
            if !matches!(v, Verdict::Leak | Verdict::New | Verdict::Uncertain) {
                continue;
            }
        }
        let mut st = Stack::default();
        for &m in &g.members {
            let c = after(m);
            let b = before(m);
            st.after_bytes += c.live_bytes as i64;
            st.before_bytes += b.live_bytes as i64;
            st.alloc_objects += c.allocs as i64;
            st.alloc_bytes += c.alloc_bytes as i64;
            st.inuse_objects += c.live_objects as i64 - b.live_objects as i64;
            st.inuse_bytes += c.live_bytes as i64 - b.live_bytes as i64;
        }
        st.frames = g.frames;
        stacks.push(st);
    }
    let (pid, subject) = procs.subject();
    let maps = b
        .symbols
        .maps_of(pid)
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let mappings = maps
        .into_iter()
        .map(|m| {
            let id = b.symbols.build_id_of(&m);
            (m, id)
        })
        .collect();
    Profile {
        what: Some(what),
        pid,
        command: subject.command.clone(),
        start_s: round3(base_ns as f64 / 1e9),
        end_s: round3(now_ns as f64 / 1e9),
        start_unix_ns,
        stacks,
        mappings,
        tracer_version: env!("CARGO_PKG_VERSION").into(),
    }
}
