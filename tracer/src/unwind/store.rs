//! The kernel's unwind tables: built on demand, one per file, shared by every process.
//!
//! A stack that meets a file with no table marks it pending and sends a [`Miss`]; the
//! [`Store`] builds the table from the very file mapped (`/proc/PID/map_files/…`, checked
//! against the device and inode the kernel saw), writes its rows into the shared rows array
//! (mapped into this process's memory) and only then publishes the file's entry, so the
//! kernel side never reads a half-written table.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use tracer_common::{table_state, unwind_mode, FileKey, FileTable, UnwindRow};

use super::{cache::Cache, table};

/// A stack met a file with no table (see `tracer_common::UnwindMissRecord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Miss {
    pub pid: u32,
    pub key: FileKey,
    pub vm_start: u64,
    pub vm_end: u64,
}

/// What the tables cost and did, for the reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Files with rows loaded, and the rows.
    pub files: AtomicU64,
    pub rows: AtomicU64,
    /// Files walked by frame pointers instead (they keep them).
    pub frame_pointer_files: AtomicU64,
    /// Files no table could be built for.
    pub failed: AtomicU64,
    /// Time spent building and loading tables.
    pub build_micros: AtomicU64,
    /// Files left without a table because the rows array was full.
    pub full: AtomicU64,
    /// Tables read from the disk cache instead of built.
    pub cached: AtomicU64,
}

impl Stats {
    /// The figures as the reports give them.
    pub fn summary(&self) -> crate::report::UnwindSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::report::UnwindSummary {
            files: get(&self.files),
            rows: get(&self.rows),
            table_bytes: get(&self.rows) * std::mem::size_of::<UnwindRow>() as u64,
            frame_pointer_files: get(&self.frame_pointer_files),
            failed: get(&self.failed),
            full: get(&self.full),
            cached: get(&self.cached),
            build_ms: get(&self.build_micros) as f64 / 1000.0,
        }
    }
}

/// Free row ranges of the shared array, first fit, coalesced on return.
#[derive(Debug)]
pub struct Ranges {
    /// start → length.
    free: BTreeMap<u32, u32>,
}

impl Ranges {
    pub fn new(capacity: u32) -> Ranges {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Ranges { free }
    }

    /// A range of `n` rows: its start.
    pub fn take(&mut self, n: u32) -> Option<u32> {
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= n)?;
        self.free.remove(&start);
        if len > n {
            self.free.insert(start + n, len - n);
        }
        Some(start)
    }

    /// Gives `[start, start + n)` back.
    pub fn give(&mut self, start: u32, n: u32) {
        let (mut start, mut n) = (start, n);
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                start = s;
                n += l;
            }
        }
        if let Some(&l) = self.free.get(&(start + n)) {
            self.free.remove(&(start + n));
            n += l;
        }
        self.free.insert(start, n);
    }
}

/// The rows array's memory, mapped into this process.
struct RowsMemory {
    ptr: *mut UnwindRow,
    capacity: u32,
    bytes: usize,
    /// Keeps the map (and its descriptor) alive.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and written by one thread at a time (`&mut`).
unsafe impl Send for RowsMemory {}

impl RowsMemory {
    fn new(map: MapData, capacity: u32) -> Result<RowsMemory> {
        let page = 4096usize;
        let bytes = (capacity as usize * std::mem::size_of::<UnwindRow>()).div_ceil(page) * page;
        // SAFETY: maps the array's own memory (created BPF_F_MMAPABLE) shared, at a place the
        // kernel chooses; nothing else aliases it in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "cannot map the unwind rows into memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(RowsMemory {
            ptr: ptr.cast(),
            capacity,
            bytes,
            _map: map,
        })
    }

    fn write(&mut self, start: u32, rows: &[UnwindRow]) {
        let end = start as usize + rows.len();
        assert!(end <= self.capacity as usize, "rows beyond the array");
        // SAFETY: in bounds (checked above) of a mapping this value owns.
        unsafe {
            std::ptr::copy_nonoverlapping(rows.as_ptr(), self.ptr.add(start as usize), rows.len())
        };
    }
}

impl Drop for RowsMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

/// Which files have an entry in the kernel and where their rows are: the bookkeeping of the
/// tables, apart from the kernel's maps.
#[derive(Debug)]
pub struct Placement {
    ranges: Ranges,
    /// Every file with an entry; its rows' `(first, count)` when it has rows.
    files: HashMap<FileKey, Option<(u32, u32)>>,
    /// Rows of files forgotten at the last sweep: a walk that read the file's entry just
    /// before it went may still read them, so they are reused only after the next sweep.
    retired: Vec<(u32, u32)>,
}

impl Placement {
    pub fn new(capacity: u32) -> Placement {
        Placement {
            ranges: Ranges::new(capacity),
            files: HashMap::new(),
            retired: Vec::new(),
        }
    }

    pub fn has(&self, key: &FileKey) -> bool {
        self.files.contains_key(key)
    }

    /// Room for `n` rows of `key`'s table (its old rows, if any, retired): the first row.
    pub fn place(&mut self, key: FileKey, n: u32) -> Option<u32> {
        if let Some(Some(old)) = self.files.remove(&key) {
            self.retired.push(old);
        }
        let first = self.ranges.take(n)?;
        self.files.insert(key, Some((first, n)));
        Some(first)
    }

    /// `key` has an entry without rows (walked by frame pointers).
    pub fn note(&mut self, key: FileKey) {
        if let Some(Some(old)) = self.files.insert(key, None) {
            self.retired.push(old);
        }
    }

    /// Forgets the files not in `mapped` (no process maps them any more): the keys whose
    /// entries go. Rows retired at the previous sweep are reusable from now on.
    pub fn sweep(&mut self, mapped: &std::collections::HashSet<FileKey>) -> Vec<FileKey> {
        for (first, n) in std::mem::take(&mut self.retired) {
            self.ranges.give(first, n);
        }
        let gone: Vec<FileKey> = self
            .files
            .keys()
            .filter(|k| !mapped.contains(k))
            .copied()
            .collect();
        for k in &gone {
            if let Some(Some(r)) = self.files.remove(k) {
                self.retired.push(r);
            }
        }
        gone
    }

    /// Files with rows, and their rows.
    pub fn loaded(&self) -> (u64, u64) {
        self.files
            .values()
            .flatten()
            .fold((0, 0), |(f, r), &(_, n)| (f + 1, r + n as u64))
    }
}

/// A table built, and the id the disk cache keeps it under.
type Kept = (Vec<u8>, table::Table);

pub struct Store {
    files: AyaHashMap<MapData, FileKey, FileTable>,
    memory: RowsMemory,
    placement: Placement,
    mode: u32,
    stats: Arc<Stats>,
    /// Tables kept on disk by build id, and whether a failure to write one was told.
    disk: Option<Cache>,
    disk_failure_told: bool,
}

impl Store {
    /// The store over the collector's maps (`files`, `rows` of `capacity` rows).
    pub fn new(files: Map, rows: Map, capacity: u32, mode: u32) -> Result<Store> {
        let files = AyaHashMap::try_from(files).context("the unwind files map")?;
        let Map::Array(rows) = rows else {
            bail!("the unwind rows map is not an array");
        };
        Ok(Store {
            files,
            memory: RowsMemory::new(rows, capacity)?,
            placement: Placement::new(capacity),
            mode,
            stats: Arc::new(Stats::default()),
            disk: None,
            disk_failure_told: false,
        })
    }

    /// Tables are read from and written to `cache` (files with a build id).
    pub fn use_cache(&mut self, cache: Cache) {
        self.disk = Some(cache);
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Builds the table a [`Miss`] asks for. A process gone meanwhile leaves the file to the
    /// next stack that meets it.
    pub fn miss(&mut self, m: &Miss) {
        // Built already, from its mapping (`mapped`), after the walk marked it pending.
        if self.placement.has(&m.key) {
            return;
        }
        let path = format!("/proc/{}/map_files/{:x}-{:x}", m.pid, m.vm_start, m.vm_end);
        let file = match File::open(&path) {
            Ok(f) if key_of(&f).is_some_and(|k| k == m.key) => f,
            _ => {
                let _ = self.files.remove(&m.key);
                return;
            }
        };
        self.install(m.key, file);
    }

    /// `pid` mapped code at `addr`: the table of the file mapped there, unless it has one.
    pub fn mapped(&mut self, pid: u32, addr: u64) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let Some(range) = maps.lines().find_map(|l| {
            let (range, key) = (l.split_whitespace().next()?, code_file_of(l)?);
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            ((a..b).contains(&addr) && !self.placement.has(&key)).then(|| range.to_string())
        }) else {
            return;
        };
        let Ok(file) = File::open(format!("/proc/{pid}/map_files/{range}")) else {
            return;
        };
        let Some(key) = key_of(&file) else { return };
        if !self.placement.has(&key) {
            self.install(key, file);
        }
    }

    /// Builds the table of the file at `path` before any stack needs it (a launched
    /// command's program and libraries).
    pub fn preload(&mut self, path: &Path) {
        let Ok(file) = File::open(path) else { return };
        let Some(key) = key_of(&file) else { return };
        if self.placement.has(&key) {
            return;
        }
        self.install(key, file);
    }

    /// The rows the tables hold.
    pub fn rows(&self) -> u64 {
        self.placement.loaded().1
    }

    /// Drops the tables of files no process maps any more (read from every process's map).
    pub fn sweep(&mut self) {
        for key in self.placement.sweep(&mapped_code_everywhere()) {
            let _ = self.files.remove(&key);
        }
        self.count();
    }

    /// The loaded files and rows, into the stats.
    fn count(&self) {
        let (files, rows) = self.placement.loaded();
        self.stats.files.store(files, Ordering::Relaxed);
        self.stats.rows.store(rows, Ordering::Relaxed);
    }

    fn install(&mut self, key: FileKey, file: File) {
        let started = Instant::now();
        let (entry, keep) = match self.build(key, file) {
            Ok(built) => built,
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.placement.note(key);
                let none = FileTable {
                    state: table_state::NONE,
                    ..FileTable::default()
                };
                (none, None)
            }
        };
        self.count();
        // Published last: the rows are in place before the kernel can use them.
        let _ = self.files.insert(key, entry, 0);
        self.stats
            .build_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        // Kept on disk only now: the walks waiting for this table do not wait for the disk.
        if let (Some(disk), Some((id, t))) = (&self.disk, keep) {
            if let Err(e) = disk.save(&id, &t) {
                if !self.disk_failure_told {
                    self.disk_failure_told = true;
                    eprintln!("tracer: note: cannot keep unwind tables on disk: {e:#}");
                }
            }
        }
    }

    /// The kernel's entry for the file, its rows written; and the table to keep on disk once
    /// the entry is published (with the id to keep it under), when it was built here.
    fn build(&mut self, key: FileKey, file: File) -> Result<(FileTable, Option<Kept>)> {
        let identity = file_identity(&file);
        let cache = object::ReadCache::new(file);
        let (t, save) = self.table_of(&cache, identity)?;
        if t.frame_pointers && self.mode == unwind_mode::AUTO {
            self.stats
                .frame_pointer_files
                .fetch_add(1, Ordering::Relaxed);
            self.placement.note(key);
            let entry = FileTable {
                state: table_state::FRAME_POINTERS,
                ..FileTable::default()
            };
            // Nothing goes into the kernel, but the next run still skips the building.
            return Ok((entry, save.map(|id| (id, t))));
        }
        let n = u32::try_from(t.rows.len()).map_err(|_| anyhow!("too many rows"))?;
        let Some(first_row) = self.placement.place(key, n) else {
            self.stats.full.fetch_add(1, Ordering::Relaxed);
            bail!("the unwind rows array is full");
        };
        self.memory.write(first_row, &t.rows);
        let entry = FileTable {
            state: table_state::ROWS,
            first_row,
            rows: n,
            _pad: 0,
            vaddr_minus_offset: t.vaddr_minus_offset,
        };
        Ok((entry, save.map(|id| (id, t))))
    }
}

impl Store {
    /// The table of the file read through `file`: from the disk cache when it holds the file's
    /// build id (or, for a file without one, its `identity` on this machine), else built; and
    /// the id to keep it under when it was built.
    fn table_of(
        &mut self,
        file: &object::ReadCache<File>,
        identity: Option<Vec<u8>>,
    ) -> Result<(table::Table, Option<Vec<u8>>)> {
        let Some((disk, id)) = self
            .disk
            .as_ref()
            .and_then(|d| Some((d, table::build_id(file).or(identity)?)))
        else {
            return Ok((table::build(file)?, None));
        };
        if let Some(t) = disk.load(&id) {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return Ok((t, None));
        }
        Ok((table::build(file)?, Some(id)))
    }
}

/// The files holding code that some process on the host maps (every `/proc/PID/maps`).
fn mapped_code_everywhere() -> std::collections::HashSet<FileKey> {
    let mut out = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(e.path().join("maps")) else {
            continue;
        };
        out.extend(maps.lines().filter_map(code_file_of));
    }
    out
}

/// The file identity of a `/proc/PID/maps` line of executable file memory.
pub(crate) fn code_file_of(line: &str) -> Option<FileKey> {
    let mut w = line.split_whitespace();
    let (_, perms, _, dev, ino) = (w.next()?, w.next()?, w.next()?, w.next()?, w.next()?);
    if !perms.contains('x') {
        return None;
    }
    let ino: u64 = ino.parse().ok().filter(|&i| i != 0)?;
    let (major, minor) = dev.split_once(':')?;
    let major = u64::from_str_radix(major, 16).ok()?;
    let minor = u64::from_str_radix(minor, 16).ok()?;
    Some(FileKey {
        dev: major << 20 | minor,
        ino,
    })
}

/// A file without a build id, as this machine knows it: device, inode, size and modification
/// time (a file replaced or rewritten has another), tagged apart from build ids.
fn file_identity(f: &File) -> Option<Vec<u8>> {
    let m = f.metadata().ok()?;
    let mut id = b"file".to_vec();
    for v in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ] {
        id.extend_from_slice(&v.to_le_bytes());
    }
    Some(id)
}

/// A file's identity as the kernel encodes it (`major << 20 | minor`, inode).
fn key_of(f: &File) -> Option<FileKey> {
    let m = f.metadata().ok()?;
    let dev = m.dev();
    Some(FileKey {
        dev: (libc::major(dev) as u64) << 20 | libc::minor(dev) as u64,
        ino: m.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 1, ino }
    }

    #[test]
    fn files_no_process_maps_are_forgotten_and_their_rows_reused_a_sweep_later() {
        let mut p = Placement::new(100);
        assert_eq!(p.place(key(1), 60), Some(0));
        p.note(key(2));
        assert_eq!(p.place(key(3), 40), Some(60));
        assert_eq!(p.loaded(), (2, 100));
        let mapped = std::collections::HashSet::from([key(3)]);
        let mut gone = p.sweep(&mapped);
        gone.sort();
        assert_eq!(gone, [key(1), key(2)]);
        assert_eq!(p.loaded(), (1, 40));
        // Not yet reusable: a walk may still be reading them.
        assert_eq!(p.place(key(4), 30), None);
        assert!(p.sweep(&mapped).is_empty());
        assert_eq!(p.place(key(4), 30), Some(0));
    }

    #[test]
    fn a_rebuilt_table_retires_its_old_rows() {
        let mut p = Placement::new(100);
        assert_eq!(p.place(key(1), 50), Some(0));
        assert_eq!(p.place(key(1), 50), Some(50));
        assert_eq!(p.loaded(), (1, 50));
        p.sweep(&std::collections::HashSet::from([key(1)]));
        assert_eq!(p.place(key(2), 50), Some(0));
    }

    #[test]
    fn maps_lines_of_code_give_the_kernels_file_identity() {
        let line = "7f1c2a628000-7f1c2a7bd000 r-xp 00028000 fe:01 1835051    /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            code_file_of(line),
            Some(FileKey {
                dev: 0xfe << 20 | 1,
                ino: 1835051
            })
        );
        assert_eq!(
            code_file_of("7f1c2a600000-7f1c2a628000 r--p 00000000 fe:01 1835051 /x"),
            None
        );
        assert_eq!(
            code_file_of("7ffd1c9e5000-7ffd1c9e7000 r-xp 00000000 00:00 0 [vdso]"),
            None
        );
    }

    #[test]
    fn ranges_are_taken_first_fit_and_coalesce_when_given_back() {
        let mut r = Ranges::new(100);
        assert_eq!(r.take(30), Some(0));
        assert_eq!(r.take(30), Some(30));
        assert_eq!(r.take(50), None);
        r.give(0, 30);
        assert_eq!(r.take(40), Some(60));
        assert_eq!(r.take(31), None);
        r.give(30, 30);
        // 0..60 is one free range again.
        assert_eq!(r.take(60), Some(0));
        assert_eq!(r.take(1), None);
    }
}
