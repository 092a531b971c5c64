//! Names from the files a process maps: the class of a C++ object (its first word points 16
//! bytes into a `_ZTV…` vtable symbol: past the offset-to-top and the typeinfo pointer) and
//! the global a root word lies in (`g_list`). Each file's symbols are read once.
//!
//! Nothing is guessed: a first word that is no vtable's address point names no class.
use std::{collections::HashMap, path::PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// Files bigger than this are not read for names.
const MAX_FILE: u64 = 1 << 30;

/// A file mapped by the process: where, and which file (opened through /proc, so it is the
/// file the process maps, whatever its mount namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMap {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// The path as the process sees it.
    pub path: String,
    /// Where to open it.
    pub open: PathBuf,
}

/// Symbols of one file, by virtual address.
#[derive(Default)]
struct FileSyms {
    /// Load segments: (file offset, file size, vaddr).
    segments: Vec<(u64, u64, u64)>,
    /// Vtable address points (symbol value + 16) → class.
    vtables: HashMap<u64, String>,
    /// Data objects (start, end, name), sorted.
    objects: Vec<(u64, u64, String)>,
}

impl FileSyms {
    fn read(open: &PathBuf) -> Option<FileSyms> {
        let meta = std::fs::metadata(open).ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return None;
        }
        let data = std::fs::read(open).ok()?;
        let elf = object::File::parse(&*data).ok()?;
        let mut s = FileSyms {
            segments: elf
                .segments()
                .map(|seg| {
                    let (off, size) = seg.file_range();
                    (off, size.max(seg.size()), seg.address())
                })
                .collect(),
            ..FileSyms::default()
        };
        for sym in elf.symbols().chain(elf.dynamic_symbols()) {
            let Ok(name) = sym.name() else { continue };
            if sym.kind() != SymbolKind::Data || name.is_empty() {
                continue;
            }
            if let Some(mangled) = name.strip_prefix("_ZTV") {
                if let Some(class) = class_name(mangled) {
                    s.vtables.insert(sym.address() + 16, class);
                }
            } else if sym.size() > 0 {
                s.objects
                    .push((sym.address(), sym.address() + sym.size(), name.to_string()));
            }
        }
        s.objects.sort();
        s.objects.dedup();
        Some(s)
    }

    /// The virtual address of file offset `off`.
    fn vaddr(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(o, size, _)| off >= o && off < o + size)
            .map(|&(o, _, v)| v + (off - o))
    }
}

/// `_ZTV` + a mangled type → the type's name (`6Circle` → `Circle`).
fn class_name(mangled_type: &str) -> Option<String> {
    let name = format!("_ZTV{mangled_type}");
    let sym = cpp_demangle::Symbol::new(name.as_bytes()).ok()?;
    // cpp_demangle writes a vtable's name as `{vtable(Circle)}`.
    let text = sym.demangle().ok()?;
    let class = text.strip_prefix("{vtable(")?.strip_suffix(")}")?;
    (!class.is_empty()).then(|| class.to_string())
}

/// What the process's files name, looked up by runtime address.
pub struct Names {
    maps: Vec<FileMap>,
    files: HashMap<PathBuf, Option<FileSyms>>,
}

impl Names {
    /// `maps` sorted by start.
    pub fn new(mut maps: Vec<FileMap>) -> Names {
        maps.sort_by_key(|m| m.start);
        Names {
            maps,
            files: HashMap::new(),
        }
    }

    /// The file holding `addr`, its symbols, and `addr` as a virtual address in it.
    fn at(&mut self, addr: u64) -> Option<(&FileMap, &FileSyms, u64)> {
        let i = self
            .maps
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.maps[i];
        if addr >= m.end {
            return None;
        }
        let syms = self
            .files
            .entry(m.open.clone())
            .or_insert_with(|| FileSyms::read(&m.open))
            .as_ref()?;
        let v = syms.vaddr(addr - m.start + m.offset)?;
        Some((m, syms, v))
    }

    /// The class of an object whose first word is `w`.
    pub fn class(&mut self, w: u64) -> Option<String> {
        let (_, syms, v) = self.at(w)?;
        syms.vtables.get(&v).cloned()
    }

    /// `g_list in holders` for an address inside a global (an array's element too: the array
    /// holds it); `holders+0x4010` when no symbol covers it.
    pub fn global(&mut self, addr: u64) -> Option<String> {
        let (m, syms, v) = self.at(addr)?;
        let module = m.path.rsplit('/').next().unwrap_or(&m.path).to_string();
        let i = syms.objects.partition_point(|o| o.0 <= v).checked_sub(1);
        match i.map(|i| &syms.objects[i]) {
            Some((_, e, name)) if v < *e => Some(format!("{name} in {module}")),
            _ => Some(format!("{module}+{:#x}", addr - m.start + m.offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtable_symbols_name_their_class() {
        assert_eq!(class_name("6Circle").as_deref(), Some("Circle"));
        assert_eq!(class_name("N2ns6WidgetE").as_deref(), Some("ns::Widget"));
        assert_eq!(class_name("not a type"), None);
    }

    #[test]
    fn a_global_of_the_c_library_is_named() {
        extern "C" {
            static environ: *const *const libc::c_char;
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        // Through the roots' view of the maps: `environ` is copied into the executable's
        // .bss (a copy relocation), which lies past its last file page.
        let files = crate::reach::proc::roots_from(
            std::process::id(),
            &crate::reach::proc::parse_maps(&maps),
            &[],
            &[],
        )
        .files;
        let mut names = Names::new(files);
        // Only the address of the C library's global is taken.
        let addr = &raw const environ as u64;
        let got = names.global(addr).unwrap();
        assert!(
            got.starts_with("environ") || got.starts_with("__environ"),
            "{got}"
        );
        assert_eq!(names.class(addr), None);
    }
}
