//! Unwind tables kept on disk by the file's build id, so the next run starts warm.
//!
//! The directory is root's: tracer loads what it reads there into the kernel, so a directory
//! anyone else could write to (or any of its parents) is refused, never used. Each table is one
//! file, `<build id in hex>.rows`, written to an unpredictable temporary in the directory and
//! renamed into place; read without following links, and only when it is a regular file of
//! ours, of the right length, whose checksum matches. Anything else is as if absent: the table
//! is built from the file again and written over it.
use std::{
    fs::DirBuilder,
    io::{Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use tracer_common::UnwindRow;

use super::table::Table;

const MAGIC: &[u8; 8] = b"TRACERUW";
/// Bumped whenever the rows a file gives change (the builder's rules): older files are rebuilt.
const VERSION: u32 = 1;
const HEADER: usize = 32;
const ROW: usize = std::mem::size_of::<UnwindRow>();

/// The cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache at `dir`, created (mode 0700) when missing. An error when it is not safe: not
    /// a directory, or it or one of its parents may be written by someone else.
    pub fn open(dir: &Path) -> Result<Cache> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        for d in dir.ancestors() {
            only_ours(d)?;
        }
        Ok(Cache { dir })
    }

    /// The cache at `dir`, its parents unchecked (tests, whose directories live under /tmp).
    #[cfg(test)]
    fn at(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, build_id: &[u8]) -> PathBuf {
        let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.rows"))
    }

    /// The table of the file with `build_id`, when the cache has a sound one.
    pub fn load(&self, build_id: &[u8]) -> Option<Table> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(build_id))
            .ok()?;
        let m = f.metadata().ok()?;
        if !m.is_file() || m.uid() != unsafe { libc::geteuid() } || m.mode() & 0o022 != 0 {
            return None;
        }
        let len = usize::try_from(m.len()).ok()?;
        if len < HEADER || !(len - HEADER).is_multiple_of(ROW) {
            return None;
        }
        let mut bytes = Vec::with_capacity(len);
        f.read_to_end(&mut bytes).ok()?;
        decode(&bytes)
    }

    /// Keeps `table` for the file with `build_id`.
    pub fn save(&self, build_id: &[u8], table: &Table) -> Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".rows-")
            .tempfile_in(&self.dir)
            .with_context(|| format!("cannot create a file in {}", self.dir.display()))?;
        // Not synced: a file a crash leaves short or empty fails the checks and is rebuilt.
        tmp.write_all(&encode(table))?;
        tmp.persist(self.path(build_id))
            .map_err(|e| e.error)
            .context("cannot rename the cached table into place")?;
        Ok(())
    }
}

/// `dir` is a directory only root or this user may write to (the sticky bit does not help: a
/// shared directory would let another user take the cache's name first).
fn only_ours(dir: &Path) -> Result<()> {
    let m =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if m.uid() != 0 && m.uid() != me {
        bail!("{} belongs to uid {}", dir.display(), m.uid());
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{} may be written by others (mode {:o})",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

fn encode(t: &Table) -> Vec<u8> {
    let mut rows = Vec::with_capacity(t.rows.len() * ROW);
    for r in &t.rows {
        rows.extend_from_slice(&r.pc.to_le_bytes());
        rows.extend_from_slice(&r.cfa_offset.to_le_bytes());
        rows.push(r.rule);
        rows.push(r.rbp as u8);
    }
    let mut b = Vec::with_capacity(HEADER + rows.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(t.frame_pointers as u32).to_le_bytes());
    b.extend_from_slice(&t.vaddr_minus_offset.to_le_bytes());
    let crc = checksum(&b, t.rows.len() as u32, &rows);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&(t.rows.len() as u32).to_le_bytes());
    b.extend_from_slice(&rows);
    b
}

/// The checksum of a cached table: over the header before it, the row count and the rows.
fn checksum(head: &[u8], n: u32, rows: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(&n.to_le_bytes());
    h.update(rows);
    h.finalize()
}

fn decode(b: &[u8]) -> Option<Table> {
    let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    if b.get(..8)? != MAGIC || u32_at(8)? != VERSION {
        return None;
    }
    let flags = u32_at(12)?;
    let vaddr_minus_offset = i64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
    let (crc, n) = (u32_at(24)?, u32_at(28)? as usize);
    let rows = b.get(HEADER..)?;
    if rows.len() != n * ROW || checksum(b.get(..24)?, n as u32, rows) != crc || flags > 1 {
        return None;
    }
    let rows: Vec<UnwindRow> = rows
        .chunks_exact(ROW)
        .map(|r| UnwindRow {
            pc: u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
            cfa_offset: u16::from_le_bytes([r[4], r[5]]),
            rule: r[6],
            rbp: r[7] as i8,
        })
        .collect();
    // The kernel's search needs them sorted.
    if rows.windows(2).any(|w| w[0].pc >= w[1].pc) {
        return None;
    }
    Some(Table {
        rows,
        vaddr_minus_offset,
        frame_pointers: flags == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_table() -> (Vec<u8>, Table) {
        use std::fs::File;
        let path = crate::unwind::table::tests::libc_path();
        let file = File::open(&path).unwrap();
        let cache = object::ReadCache::new(file);
        let id = super::super::table::build_id(&cache).expect("libc has a build id");
        (id, super::super::table::build(&cache).unwrap())
    }

    #[test]
    fn a_saved_table_loads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let (id, t) = libc_table();
        assert!(cache.load(&id).is_none());
        cache.save(&id, &t).unwrap();
        let back = cache.load(&id).expect("the saved table");
        assert_eq!(back.rows, t.rows);
        assert_eq!(back.vaddr_minus_offset, t.vaddr_minus_offset);
        assert_eq!(back.frame_pointers, t.frame_pointers);
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_or_planted_table_is_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let (id, t) = libc_table();
        cache.save(&id, &t).unwrap();
        let path = cache.path(&id);
        let good = std::fs::read(&path).unwrap();
        // Every byte flipped in turn (a sample of them): the checksum or the header says no.
        for i in (0..good.len()).step_by(997).chain(0..HEADER) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(cache.load(&id).is_none(), "byte {i} flipped was loaded");
        }
        // Cut short.
        std::fs::write(&path, &good[..good.len() - ROW]).unwrap();
        assert!(cache.load(&id).is_none());
        // A link planted in its place is not followed.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &good).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(cache.load(&id).is_none());
        // Writable by others.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &good).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        assert!(cache.load(&id).is_none());
        // And saving again replaces the link or the bad file, not what it points to.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        std::fs::write(&elsewhere, b"precious").unwrap();
        cache.save(&id, &t).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"precious");
        assert!(cache.load(&id).is_some());
    }

    #[test]
    fn a_directory_others_may_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The temporary directory's parent (/tmp, or wherever TMPDIR is) is shared.
        let sub = dir.path().join("cache");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let err = only_ours(&sub).unwrap_err().to_string();
        assert!(err.contains("may be written by others"), "{err}");
        assert!(Cache::open(&sub).is_err());
        // A link where the directory should be is refused too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(only_ours(&link).is_err());
        // The root directory itself is root's.
        only_ours(Path::new("/")).unwrap();
    }
}
