//! Which libraries a program will load, found the way its dynamic loader finds them, by reading
//! ELF files and the loader's cache only.
//!
//! tracer runs as root beside other people's processes: it never runs a program a target names
//! (not even its `PT_INTERP` as `ld.so --list`, which a user can point at a program of theirs).
//! This module follows glibc's rules (`ld.so(8)`): the executable, then `LD_PRELOAD` and
//! `/etc/ld.so.preload`, then `DT_NEEDED` breadth first; a name without a slash is looked up in
//! `DT_RPATH` (of the requesting object and the objects that loaded it, when it has no
//! `DT_RUNPATH`), `LD_LIBRARY_PATH`, `DT_RUNPATH`, `/etc/ld.so.cache`, then the default
//! directories; `$ORIGIN`, `$LIB` and `$PLATFORM` are expanded. A musl loader reads
//! `/etc/ld-musl-ARCH.path` instead of the cache. Files of another class or machine are
//! skipped, as the loader skips them. glibc-hwcaps subdirectories are not searched: the
//! baseline library is named (a running process's map says which one it really loaded).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use object::{
    elf,
    read::elf::{Dyn, FileHeader, ProgramHeader},
    Endianness, FileKind, ReadRef,
};

/// What a loader reads from the process's environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderEnv {
    pub preload: Option<String>,
    pub library_path: Option<String>,
}

impl LoaderEnv {
    /// From `KEY=VALUE` pairs separated by NULs (`/proc/PID/environ`).
    pub fn from_environ(environ: &[u8]) -> LoaderEnv {
        let mut env = LoaderEnv::default();
        for kv in environ.split(|&b| b == 0) {
            let Ok(kv) = std::str::from_utf8(kv) else {
                continue;
            };
            match kv.split_once('=') {
                Some(("LD_PRELOAD", v)) => env.preload = Some(v.to_string()),
                Some(("LD_LIBRARY_PATH", v)) => env.library_path = Some(v.to_string()),
                _ => {}
            }
        }
        env
    }

    /// tracer's own (a launched command inherits it).
    pub fn of_this_process() -> LoaderEnv {
        let get = |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        LoaderEnv {
            preload: get("LD_PRELOAD"),
            library_path: get("LD_LIBRARY_PATH"),
        }
    }
}

/// The parts of an ELF file's dynamic section the loader acts on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dynamic {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub rpath: Option<String>,
    pub runpath: Option<String>,
    /// (64-bit, e_machine): a library of another class or machine cannot be loaded.
    pub arch: (bool, u16),
}

/// Reads `PT_INTERP` and the dynamic section of an ELF file's bytes.
pub fn dynamic<'d, R: ReadRef<'d>>(data: R) -> Result<Dynamic> {
    match FileKind::parse(data).context("not an ELF file")? {
        FileKind::Elf64 => dynamic_of::<elf::FileHeader64<Endianness>, R>(data),
        FileKind::Elf32 => dynamic_of::<elf::FileHeader32<Endianness>, R>(data),
        _ => anyhow::bail!("not an ELF file"),
    }
}

fn dynamic_of<'d, H: FileHeader<Endian = Endianness>, R: ReadRef<'d>>(data: R) -> Result<Dynamic> {
    let header = H::parse(data).context("a malformed ELF header")?;
    let endian = header.endian().context("a malformed ELF header")?;
    let phdrs = header
        .program_headers(endian, data)
        .context("malformed ELF program headers")?;
    let mut out = Dynamic {
        arch: (header.is_type_64(), header.e_machine(endian)),
        ..Dynamic::default()
    };
    // Where a virtual address is in the file (the dynamic section names its string table by
    // address).
    let file_offset = |vaddr: u64| {
        phdrs.iter().find_map(|ph| {
            let (va, size) = (ph.p_vaddr(endian).into(), ph.p_filesz(endian).into());
            (ph.p_type(endian) == elf::PT_LOAD && vaddr >= va && vaddr - va < size)
                .then(|| ph.p_offset(endian).into() + (vaddr - va))
        })
    };
    let mut entries = None;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_INTERP => {
                let bytes = ph.data(endian, data).ok().unwrap_or_default();
                let s = bytes.split(|&b| b == 0).next().unwrap_or_default();
                out.interp = Some(String::from_utf8_lossy(s).into_owned());
            }
            elf::PT_DYNAMIC => entries = ph.dynamic(endian, data).ok().flatten(),
            _ => {}
        }
    }
    let Some(entries) = entries else {
        return Ok(out);
    };
    let tag_val = |d: &H::Dyn| (d.d_tag(endian).into(), d.d_val(endian).into());
    let find = |tag: u32| {
        entries
            .iter()
            .map(tag_val)
            .find(|&(t, _)| t == u64::from(tag))
            .map(|(_, v)| v)
    };
    let (Some(strtab), Some(strsz)) = (find(elf::DT_STRTAB), find(elf::DT_STRSZ)) else {
        return Ok(out);
    };
    let Some(start) = file_offset(strtab) else {
        return Ok(out);
    };
    let strings = data
        .read_bytes_at(start, strsz)
        .ok()
        .context("the dynamic string table is outside the file")?;
    let string = |off: u64| -> Option<String> {
        let rest = strings.get(usize::try_from(off).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    for (tag, val) in entries.iter().map(tag_val) {
        match u32::try_from(tag) {
            Ok(elf::DT_NULL) => break,
            Ok(elf::DT_NEEDED) => out.needed.extend(string(val)),
            Ok(elf::DT_RPATH) => out.rpath = string(val),
            Ok(elf::DT_RUNPATH) => out.runpath = string(val),
            _ => {}
        }
    }
    Ok(out)
}

/// The dynamic information of the ELF file at `path`. Only the ranges it needs are read (the
/// headers, the dynamic section, its strings), into memory: not the whole library, and not
/// mapped (a mapping of a file its owner truncates meanwhile would fault).
pub fn read_dynamic(path: &Path) -> Result<Dynamic> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cache = object::ReadCache::new(f);
    dynamic(&cache).with_context(|| format!("{}", path.display()))
}

/// `/etc/ld.so.cache`: library name → paths, in the cache's order, with the flags that say
/// which class and machine each is for.
#[derive(Debug, Default)]
pub struct LdCache {
    entries: HashMap<String, Vec<(u32, PathBuf)>>,
}

/// The cache's entry flags (glibc's `ldconfig.h`): the kind of library and its architecture.
const FLAG_ELF_LIBC6: u32 = 0x0003;
const FLAG_TYPE_MASK: u32 = 0x00ff;
const FLAG_ARCH_MASK: u32 = 0xff00;
const FLAG_X8664_LIB64: u32 = 0x0300;
const FLAG_AARCH64_LIB64: u32 = 0x0a00;
/// An entry for a glibc-hwcaps subdirectory (not searched: see the module's doc).
const HWCAP_EXTENSION: u64 = 1 << 62;

impl LdCache {
    /// Parses the cache's "glibc-ld.so.cache1.1" format (alone, or after the old format's
    /// entries). Anything malformed ends the parse with what was read so far.
    pub fn parse(data: &[u8]) -> LdCache {
        const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
        let mut cache = LdCache::default();
        let Some(base) = data.windows(MAGIC.len()).position(|w| w == MAGIC) else {
            return cache;
        };
        let u32_at = |off: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(data.get(off..off + 4)?.try_into().ok()?))
        };
        let u64_at = |off: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(data.get(off..off + 8)?.try_into().ok()?))
        };
        let string = |off: u32| -> Option<&[u8]> {
            let rest = data.get(base.checked_add(off as usize)?..)?;
            Some(&rest[..rest.iter().position(|&b| b == 0)?])
        };
        let Some(nlibs) = u32_at(base + 20) else {
            return cache;
        };
        const HEADER: usize = 48;
        const ENTRY: usize = 24;
        for i in 0..nlibs as usize {
            let at = base + HEADER + i * ENTRY;
            let (Some(flags), Some(key), Some(value), Some(hwcap)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8), u64_at(at + 16))
            else {
                break;
            };
            if hwcap & HWCAP_EXTENSION != 0 {
                continue;
            }
            let (Some(name), Some(path)) = (string(key), string(value)) else {
                continue;
            };
            cache
                .entries
                .entry(String::from_utf8_lossy(name).into_owned())
                .or_default()
                .push((
                    flags,
                    PathBuf::from(String::from_utf8_lossy(path).into_owned()),
                ));
        }
        cache
    }

    /// The cache's paths for `name` that can be for a program of this class and machine.
    fn lookup(&self, name: &str, arch: (bool, u16)) -> impl Iterator<Item = &Path> {
        let want = match arch {
            (true, elf::EM_X86_64) => Some(FLAG_X8664_LIB64),
            (true, elf::EM_AARCH64) => Some(FLAG_AARCH64_LIB64),
            (false, _) => Some(0),
            _ => None,
        };
        self.entries
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(flags, _)| {
                flags & FLAG_TYPE_MASK == FLAG_ELF_LIBC6
                    && want.is_none_or(|w| flags & FLAG_ARCH_MASK == w)
            })
            .map(|(_, p)| p.as_path())
    }
}

/// Finds programs' libraries as their loader would, under a root directory (`/`, or a
/// process's `/proc/PID/root`).
pub struct Resolver {
    root: PathBuf,
    cache: LdCache,
    /// `/etc/ld.so.preload`'s names.
    system_preload: Vec<String>,
    /// musl's library path file, when there is one (`/etc/ld-musl-ARCH.path`).
    musl_path: Option<Vec<String>>,
}

/// One object the loader will map: where it is (as the process sees it) and what it needs.
struct Loaded {
    path: PathBuf,
    dynamic: Dynamic,
    /// Its loader chain's DT_RPATH lists (its own first), searched before LD_LIBRARY_PATH.
    rpaths: Vec<(String, PathBuf)>,
}

impl Resolver {
    /// Reads the loader's configuration under `root`.
    pub fn new(root: &Path) -> Resolver {
        let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_default();
        let words = |data: Vec<u8>| -> Vec<String> {
            String::from_utf8_lossy(&data)
                .lines()
                .map(|l| l.split('#').next().unwrap_or_default())
                .flat_map(|l| l.split([' ', '\t', ':']))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        let musl_path = ["etc/ld-musl-x86_64.path", "etc/ld-musl-aarch64.path"]
            .into_iter()
            .find(|p| root.join(p).is_file())
            .map(|p| words(read(p)));
        Resolver {
            root: root.to_path_buf(),
            cache: LdCache::parse(&read("etc/ld.so.cache")),
            system_preload: words(read("etc/ld.so.preload")),
            musl_path,
        }
    }

    /// Where this process opens `path` (a path as the target sees it).
    pub fn open_path(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The program's libraries in the loader's order (not the program itself, not the loader),
    /// each as the target sees its path. `cwd` is the directory relative names are taken from.
    /// Names found nowhere are left out, as `ldd` says "not found" for them.
    pub fn libraries(&self, program: &Path, env: &LoaderEnv, cwd: &Path) -> Result<Vec<PathBuf>> {
        let exe = read_dynamic(&self.open_path(program))?;
        let Some(interp) = exe.interp.clone() else {
            return Ok(Vec::new()); // static: the loader loads nothing
        };
        let musl = interp.contains("ld-musl");
        // One file reached by two paths (/lib and /usr/lib) is loaded once.
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut names_seen: HashSet<String> = HashSet::new();
        let mut order = Vec::new();
        let mut queue = VecDeque::new();
        let exe_rpaths = match (&exe.rpath, &exe.runpath) {
            (Some(r), None) => vec![(r.clone(), program.to_path_buf())],
            _ => Vec::new(),
        };
        let arch = exe.arch;
        queue.push_back(Loaded {
            path: program.to_path_buf(),
            dynamic: exe,
            rpaths: exe_rpaths.clone(),
        });
        // Preloads come right after the executable, before anything it needs.
        let preloads: Vec<String> = env
            .preload
            .iter()
            .flat_map(|p| p.split([' ', ':']))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .chain(self.system_preload.iter().cloned())
            .collect();
        let load = |name: &str,
                    rpaths: &[(String, PathBuf)],
                    runpath: Option<&str>,
                    requester: &Path,
                    seen: &mut HashSet<(u64, u64)>,
                    names_seen: &mut HashSet<String>|
         -> Option<Loaded> {
            // A name already loaded (by its soname or the name asked) is not loaded again.
            if !name.contains('/') && names_seen.contains(name) {
                return None;
            }
            let (path, dynamic) =
                self.find(name, rpaths, runpath, requester, env, arch, musl, cwd)?;
            names_seen.insert(name.to_string());
            let id = file_id(&self.open_path(&path))?;
            if !seen.insert(id) {
                return None;
            }
            let rpaths = match (&dynamic.rpath, &dynamic.runpath) {
                // RUNPATH ends the inheritance of RPATH for what this object needs.
                (_, Some(_)) => Vec::new(),
                (Some(r), None) => std::iter::once((r.clone(), path.clone()))
                    .chain(rpaths.iter().cloned())
                    .collect(),
                (None, None) => rpaths.to_vec(),
            };
            Some(Loaded {
                path,
                dynamic,
                rpaths,
            })
        };
        for name in preloads {
            if let Some(l) = load(
                &name,
                &exe_rpaths,
                None,
                program,
                &mut seen,
                &mut names_seen,
            ) {
                order.push(l.path.clone());
                queue.push_back(l);
            }
        }
        while let Some(obj) = queue.pop_front() {
            for name in &obj.dynamic.needed {
                if let Some(l) = load(
                    name,
                    &obj.rpaths,
                    obj.dynamic.runpath.as_deref(),
                    &obj.path,
                    &mut seen,
                    &mut names_seen,
                ) {
                    order.push(l.path.clone());
                    queue.push_back(l);
                }
            }
        }
        // The loader itself is no library the program calls for malloc.
        let loader = file_id(&self.open_path(Path::new(&interp)));
        order.retain(|p| p != Path::new(&interp) && file_id(&self.open_path(p)) != loader);
        Ok(order)
    }

    /// Where the loader finds `name` for `requester`, with its dynamic information.
    #[allow(clippy::too_many_arguments)]
    fn find(
        &self,
        name: &str,
        rpaths: &[(String, PathBuf)],
        runpath: Option<&str>,
        requester: &Path,
        env: &LoaderEnv,
        arch: (bool, u16),
        musl: bool,
        cwd: &Path,
    ) -> Option<(PathBuf, Dynamic)> {
        let fits = |path: PathBuf| -> Option<(PathBuf, Dynamic)> {
            let d = read_dynamic(&self.open_path(&path)).ok()?;
            (d.arch == arch).then_some((path, d))
        };
        if name.contains('/') {
            let p = Path::new(name);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            return fits(p);
        }
        let in_dirs = |list: &str, origin: &Path| {
            split_dirs(list)
                .map(|d| expand(d, origin, arch))
                .find_map(|d| fits(d.join(name)))
        };
        if musl {
            // musl: LD_LIBRARY_PATH, then the object's RPATH/RUNPATH, then the path file.
            return env
                .library_path
                .as_deref()
                .and_then(|l| in_dirs(l, requester))
                .or_else(|| runpath.and_then(|r| in_dirs(r, requester)))
                .or_else(|| rpaths.iter().find_map(|(r, o)| in_dirs(r, o)))
                .or_else(|| {
                    let defaults = ["/lib", "/usr/local/lib", "/usr/lib"].map(String::from);
                    let dirs = self.musl_path.clone().unwrap_or_else(|| defaults.to_vec());
                    dirs.iter().find_map(|d| fits(Path::new(d).join(name)))
                });
        }
        if runpath.is_none() {
            if let Some(found) = rpaths.iter().find_map(|(r, o)| in_dirs(r, o)) {
                return Some(found);
            }
        }
        if let Some(found) = env
            .library_path
            .as_deref()
            .and_then(|l| in_dirs(l, requester))
        {
            return Some(found);
        }
        if let Some(found) = runpath.and_then(|r| in_dirs(r, requester)) {
            return Some(found);
        }
        if let Some(found) = self
            .cache
            .lookup(name, arch)
            .find_map(|p| fits(p.to_path_buf()))
        {
            return Some(found);
        }
        default_dirs(arch)
            .iter()
            .find_map(|d| fits(Path::new(d).join(name)))
    }
}

/// A search list's directories (`:` or `;` separated; an empty entry is the current directory
/// for the loader, which tracer does not guess at).
fn split_dirs(list: &str) -> impl Iterator<Item = &str> {
    list.split([':', ';']).filter(|d| !d.is_empty())
}

/// `$ORIGIN` (the directory of the object that asks), `$LIB` and `$PLATFORM` in a search path.
fn expand(dir: &str, origin_of: &Path, arch: (bool, u16)) -> PathBuf {
    let origin = origin_of
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (lib, platform) = match arch {
        (true, elf::EM_X86_64) => ("lib/x86_64-linux-gnu", "x86_64"),
        (true, elf::EM_AARCH64) => ("lib/aarch64-linux-gnu", "aarch64"),
        _ => ("lib", ""),
    };
    let mut s = dir.to_string();
    for (var, val) in [
        ("ORIGIN", origin.as_str()),
        ("LIB", lib),
        ("PLATFORM", platform),
    ] {
        s = s
            .replace(&format!("${{{var}}}"), val)
            .replace(&format!("${var}"), val);
    }
    PathBuf::from(s)
}

/// The loader's built-in directories, after the cache.
fn default_dirs(arch: (bool, u16)) -> &'static [&'static str] {
    match arch {
        (true, elf::EM_X86_64) => &[
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ],
        (true, elf::EM_AARCH64) => &[
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ],
        _ => &["/lib", "/usr/lib"],
    }
}

/// A file's identity (device, inode): one library reached by several paths is one file.
pub fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the system's loader lists for `program` (tests only: tracer itself never runs it).
    fn ldd(program: &Path, env: &[(&str, &str)]) -> Vec<PathBuf> {
        let out = std::process::Command::new("ldd")
            .arg(program)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        super::super::target::parse_loader_list(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("ld-linux"))
            .collect()
    }

    fn canonical(v: Vec<PathBuf>) -> Vec<PathBuf> {
        v.into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect()
    }

    #[test]
    fn the_systems_programs_resolve_as_the_loader_lists_them() {
        let r = Resolver::new(Path::new("/"));
        let mut checked = 0;
        let mut dirs: Vec<_> = std::fs::read_dir("/usr/bin")
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        dirs.sort();
        for p in dirs {
            let Ok(d) = read_dynamic(&p) else { continue };
            if d.interp.is_none() || d.needed.is_empty() {
                continue;
            }
            let ours = r
                .libraries(&p, &LoaderEnv::default(), Path::new("/"))
                .unwrap();
            assert_eq!(canonical(ours), canonical(ldd(&p, &[])), "{}", p.display());
            checked += 1;
            if checked == 60 {
                break;
            }
        }
        assert!(checked >= 10, "only {checked} dynamic programs in /usr/bin");
    }

    #[test]
    fn preloads_and_library_paths_come_first_as_for_the_loader() {
        let r = Resolver::new(Path::new("/"));
        let jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
        assert!(Path::new(jemalloc).exists(), "run scripts/setup");
        let env = LoaderEnv {
            preload: Some(jemalloc.into()),
            library_path: None,
        };
        let ours = r
            .libraries(Path::new("/bin/sh"), &env, Path::new("/"))
            .unwrap();
        assert_eq!(
            ours.first().map(PathBuf::as_path),
            Some(Path::new(jemalloc))
        );
        assert_eq!(
            canonical(ours),
            canonical(ldd(Path::new("/bin/sh"), &[("LD_PRELOAD", jemalloc)]))
        );
        // A directory of the user's first in LD_LIBRARY_PATH wins over the system's.
        let dir = tempfile::tempdir().unwrap();
        let libc = ldd(Path::new("/bin/sh"), &[])
            .into_iter()
            .find(|p| p.to_string_lossy().contains("libc.so"))
            .unwrap();
        std::fs::copy(&libc, dir.path().join("libc.so.6")).unwrap();
        let lp = dir.path().to_string_lossy().into_owned();
        let env = LoaderEnv {
            preload: None,
            library_path: Some(lp.clone()),
        };
        let ours = r
            .libraries(Path::new("/bin/sh"), &env, Path::new("/"))
            .unwrap();
        assert_eq!(ours, ldd(Path::new("/bin/sh"), &[("LD_LIBRARY_PATH", &lp)]));
        assert!(ours.contains(&dir.path().join("libc.so.6")));
    }

    #[test]
    fn a_static_program_loads_nothing_and_a_non_elf_is_an_error() {
        let r = Resolver::new(Path::new("/"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(r
            .libraries(&f, &LoaderEnv::default(), Path::new("/"))
            .is_err());
        // Truncated and garbage ELF files are errors, never panics.
        let sh = std::fs::read("/bin/sh").unwrap();
        for len in [4, 16, 64, 200, 1000, 5000] {
            let _ = dynamic(&sh[..len.min(sh.len())]);
        }
        let mut bad = sh.clone();
        for b in bad.iter_mut().skip(64).step_by(7).take(500) {
            *b = b.wrapping_mul(31);
        }
        let _ = dynamic(&bad[..]);
    }

    #[test]
    fn origin_and_lib_expand() {
        let arch = (true, elf::EM_X86_64);
        assert_eq!(
            expand("$ORIGIN/../lib:x", Path::new("/opt/app/bin/prog"), arch),
            PathBuf::from("/opt/app/bin/../lib:x")
        );
        assert_eq!(
            expand("${ORIGIN}/$LIB", Path::new("/a/b"), arch),
            PathBuf::from("/a/lib/x86_64-linux-gnu")
        );
    }

    #[test]
    fn the_cache_names_the_systems_libc() {
        let cache = LdCache::parse(&std::fs::read("/etc/ld.so.cache").unwrap());
        let libc: Vec<_> = cache.lookup("libc.so.6", (true, elf::EM_X86_64)).collect();
        assert!(!libc.is_empty());
        assert!(libc[0].exists());
        // Garbage is an empty cache, not a panic.
        assert!(LdCache::parse(b"glibc-ld.so.cache1.1\xff\xff\xff\xff")
            .entries
            .is_empty());
    }
}
