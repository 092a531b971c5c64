//! A live process for the scan: its memory read with `process_vm_readv` (nothing is written,
//! nothing stops it), its roots from `/proc/PID/maps` and its threads' stack pointers.
//!
//! Roots: the writable mappings of files (`.data`, `.bss`) and the read-only one just before
//! each (relro); each thread's stack from its stack pointer up (`/proc/PID/task/TID/syscall`
//! gives it for a thread blocked in a system call; the whole stack otherwise); anonymous
//! memory that holds no known block (other threads' stacks, the program's own mappings).
//! Registers are not read (that needs ptrace): a pointer held only in a register counts as
//! lost. Memory holding known blocks is heap; the parts of it no known block covers are told
//! apart (`Roots::unknown`: they may hold blocks tracer has not seen, see `reach::scan`).
use std::path::PathBuf;

use super::{classes::FileMap, freeze::ThreadRegs, HeapBlock, Memory, Region};

/// The process's memory, and the registers of its stopped threads as if they were memory at
/// [`REGISTERS_AT`] (an address no user mapping has), so that they are scanned as a root.
pub struct ProcMemory {
    pid: libc::pid_t,
    registers: Vec<u8>,
    /// Bytes read so far.
    pub read_bytes: u64,
}

/// Where the registers of stopped threads are read from (kernel space in every process).
pub const REGISTERS_AT: u64 = 0xffff_c000_0000_0000;

impl ProcMemory {
    pub fn new(pid: u32) -> ProcMemory {
        ProcMemory {
            pid: pid as libc::pid_t,
            registers: Vec::new(),
            read_bytes: 0,
        }
    }

    pub fn with_registers(mut self, regs: &[ThreadRegs]) -> ProcMemory {
        self.registers = regs
            .iter()
            .flat_map(|r| r.words.iter().flat_map(|w| w.to_le_bytes()))
            .collect();
        self
    }
}

impl Memory for ProcMemory {
    /// One `process_vm_readv` for all the parts (up to `IOV_MAX`): the kernel stops at the
    /// first part it cannot read, and the parts from there are read one by one.
    fn read_many(&mut self, parts: &[(u64, usize)], buf: &mut [u8]) -> Vec<bool> {
        let mut ok = vec![false; parts.len()];
        let mut done = 0;
        let mut offset = 0;
        while done < parts.len() {
            if parts[done].0 >= REGISTERS_AT {
                let len = parts[done].1;
                ok[done] = self.read(parts[done].0, &mut buf[offset..offset + len]);
                offset += len;
                done += 1;
                continue;
            }
            let n = (parts.len() - done).min(1024);
            let mut local = Vec::with_capacity(n);
            let mut remote = Vec::with_capacity(n);
            let mut at = offset;
            for &(addr, len) in &parts[done..done + n] {
                local.push(libc::iovec {
                    iov_base: buf[at..].as_mut_ptr().cast(),
                    iov_len: len,
                });
                remote.push(libc::iovec {
                    iov_base: addr as *mut libc::c_void,
                    iov_len: len,
                });
                at += len;
            }
            // SAFETY: each local iovec lies inside `buf` (the parts' lengths sum to at most
            // its length); the remote side is only read, with ptrace read access checks.
            let got = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    n as libc::c_ulong,
                    remote.as_ptr(),
                    n as libc::c_ulong,
                    0,
                )
            };
            let mut got = got.max(0) as usize;
            self.read_bytes += got as u64;
            // The parts read whole.
            let before = done;
            while done < before + n && got >= parts[done].1 {
                got -= parts[done].1;
                ok[done] = true;
                offset += parts[done].1;
                done += 1;
            }
            if done < before + n {
                // The part it stopped at, on its own (it fails, or was cut short).
                let len = parts[done].1;
                ok[done] = self.read(parts[done].0, &mut buf[offset..offset + len]);
                offset += len;
                done += 1;
            }
        }
        ok
    }

    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        if addr >= REGISTERS_AT {
            let at = (addr - REGISTERS_AT) as usize;
            return match self.registers.get(at..at + buf.len()) {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    true
                }
                None => false,
            };
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, writable for its length; the remote side is only
        // read, by the kernel, with the permission checks of ptrace read access.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        self.read_bytes += n.max(0) as u64;
        n == buf.len() as isize
    }
}

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

pub fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(6, ' ');
            let (s, e) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let _dev = f.next()?;
            let inode = f.next()?.parse().ok()?;
            let path = f.next().unwrap_or("").trim().to_string();
            Some(MapLine {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                offset,
                inode,
                path,
            })
        })
        .collect()
}

/// What a root region is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// A file's data (its globals).
    File,
    /// A thread's stack.
    Stack,
    /// Anonymous memory no known block lies in.
    Anonymous,
    /// The registers of the stopped threads (`--stop-for-scan`).
    Registers,
}

/// Where the scan starts.
pub struct Roots {
    pub regions: Vec<Region>,
    pub kinds: Vec<RootKind>,
    /// The files the process maps (for names).
    pub files: Vec<FileMap>,
    /// Heap memory no known block covers (see `reach::scan`).
    pub unknown: Vec<Region>,
}

/// The stack pointers of the threads blocked in a system call (or waiting otherwise).
fn stack_pointers(pid: u32) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let text = std::fs::read_to_string(t.path().join("syscall")).ok()?;
            let f: Vec<&str> = text.split_whitespace().collect();
            let sp = match f.len() {
                9 => f[7],
                3 => f[1],
                _ => return None,
            };
            u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

/// The roots of `pid` for the heap `blocks` (sorted). `regs`: its threads, stopped (their
/// stack pointers are exact, and their registers a root of their own).
pub fn roots(pid: u32, blocks: &[HeapBlock], regs: &[ThreadRegs]) -> Option<Roots> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let sps: Vec<u64> = if regs.is_empty() {
        stack_pointers(pid)
    } else {
        regs.iter().map(|r| r.sp).collect()
    };
    let mut r = roots_from(pid, &parse_maps(&text), blocks, &sps);
    let words: u64 = regs.iter().map(|r| r.words.len() as u64).sum();
    if words > 0 {
        r.regions.push(Region {
            start: REGISTERS_AT,
            end: REGISTERS_AT + 8 * words,
        });
        r.kinds.push(RootKind::Registers);
    }
    Some(r)
}

/// [`roots`] from what was read.
pub fn roots_from(pid: u32, maps: &[MapLine], blocks: &[HeapBlock], sps: &[u64]) -> Roots {
    let mut r = Roots {
        regions: Vec::new(),
        kinds: Vec::new(),
        files: Vec::new(),
        unknown: Vec::new(),
    };
    let push = |r: &mut Roots, start: u64, end: u64, kind: RootKind| {
        if end > start {
            r.regions.push(Region { start, end });
            r.kinds.push(kind);
        }
    };
    for (i, m) in maps.iter().enumerate() {
        let readable = m.perms.starts_with('r');
        let writable = m.perms.as_bytes().get(1) == Some(&b'w');
        let exec = m.perms.as_bytes().get(2) == Some(&b'x');
        let file = m.inode != 0 && m.path.starts_with('/');
        if file {
            r.files.push(FileMap {
                start: m.start,
                end: m.end,
                offset: m.offset,
                path: m.path.clone(),
                open: PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)),
            });
        }
        if !readable || exec || m.path.starts_with("[v") {
            continue;
        }
        if file {
            // Writable data, and relro: read-only, right before the same file's data.
            let relro = !writable
                && m.offset > 0
                && maps.get(i + 1).is_some_and(|n| {
                    n.start == m.end && n.inode == m.inode && n.perms.starts_with("rw")
                });
            if writable || relro {
                push(&mut r, m.start, m.end, RootKind::File);
            }
            continue;
        }
        if !writable {
            continue;
        }
        // A file's .bss beyond its last page: the anonymous mapping right after its data.
        if let Some(prev) = i.checked_sub(1).map(|p| &maps[p]) {
            if m.inode == 0
                && m.path.is_empty()
                && prev.end == m.start
                && prev.inode != 0
                && prev.path.starts_with('/')
                && prev.perms.starts_with("rw")
            {
                r.files.push(FileMap {
                    start: m.start,
                    end: m.end,
                    offset: prev.offset + (prev.end - prev.start),
                    path: prev.path.clone(),
                    open: PathBuf::from(format!(
                        "/proc/{pid}/map_files/{:x}-{:x}",
                        prev.start, prev.end
                    )),
                });
                push(&mut r, m.start, m.end, RootKind::File);
                continue;
            }
        }
        let sp = sps.iter().copied().find(|&sp| sp >= m.start && sp < m.end);
        if m.path == "[stack]" || sp.is_some() {
            // Below the stack pointer: the 128-byte red zone a leaf function may use.
            let from = sp.map_or(m.start, |sp| sp.saturating_sub(128).max(m.start));
            push(&mut r, from, m.end, RootKind::Stack);
            continue;
        }
        // Heap blocks in it?
        let first = blocks.partition_point(|b| b.addr + b.size.max(1) <= m.start);
        let inside: Vec<&HeapBlock> = blocks[first..]
            .iter()
            .take_while(|b| b.addr < m.end)
            .collect();
        if inside.is_empty() {
            push(&mut r, m.start, m.end, RootKind::Anonymous);
        } else {
            // The gaps between known blocks.
            let mut at = m.start;
            for b in inside {
                if b.addr > at {
                    r.unknown.push(Region {
                        start: at,
                        end: b.addr,
                    });
                }
                at = at.max(b.addr + b.size);
            }
            if m.end > at {
                r.unknown.push(Region {
                    start: at,
                    end: m.end,
                });
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c0000000-55d4c0001000 r--p 00000000 08:01 1234 /usr/bin/holders
55d4c0001000-55d4c0002000 r-xp 00001000 08:01 1234 /usr/bin/holders
55d4c0002000-55d4c0003000 r--p 00002000 08:01 1234 /usr/bin/holders
55d4c0003000-55d4c0004000 r--p 00002000 08:01 1234 /usr/bin/holders
55d4c0004000-55d4c0005000 rw-p 00003000 08:01 1234 /usr/bin/holders
55d4c0005000-55d4c0006000 rw-p 00000000 00:00 0
55d4c1000000-55d4c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00100000 rw-p 00000000 00:00 0 [stack]
7ffd00200000-7ffd00202000 r-xp 00000000 00:00 0 [vdso]
";

    fn blocks() -> Vec<HeapBlock> {
        vec![
            HeapBlock {
                addr: 0x55d4c1000100,
                size: 0x100,
            },
            HeapBlock {
                addr: 0x55d4c1000400,
                size: 0x100,
            },
        ]
    }

    #[test]
    fn roots_are_file_data_relro_stacks_and_blockless_memory() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 10);
        let r = roots_from(7, &maps, &blocks(), &[0x7ffd000ff000, 0x7f00007ff000]);
        let got: Vec<(u64, u64, RootKind)> = r
            .regions
            .iter()
            .zip(&r.kinds)
            .map(|(g, k)| (g.start, g.end, k.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (0x55d4c0003000, 0x55d4c0004000, RootKind::File),
                (0x55d4c0004000, 0x55d4c0005000, RootKind::File),
                (0x55d4c0005000, 0x55d4c0006000, RootKind::File),
                (0x7f00007ff000 - 128, 0x7f0000800000, RootKind::Stack),
                (0x7ffd000ff000 - 128, 0x7ffd00100000, RootKind::Stack),
            ]
        );
        assert_eq!(r.files.len(), 6, "five mappings of the file and its .bss");
        assert!(r.files[0]
            .open
            .ends_with("map_files/55d4c0000000-55d4c0001000"));
    }

    #[test]
    fn the_heaps_parts_no_known_block_covers_are_unknown() {
        let maps = parse_maps(MAPS);
        let r = roots_from(7, &maps, &blocks(), &[]);
        let unknown: Vec<(u64, u64)> = r.unknown.iter().map(|g| (g.start, g.end)).collect();
        assert_eq!(
            unknown,
            [
                (0x55d4c1000000, 0x55d4c1000100),
                (0x55d4c1000200, 0x55d4c1000400),
                (0x55d4c1000500, 0x55d4c1100000),
            ]
        );
        // No stack pointer known: the whole stack.
        assert!(r
            .regions
            .iter()
            .any(|g| g.start == 0x7ffd00000000 && g.end == 0x7ffd00100000));
    }

    #[test]
    fn our_own_memory_reads_back() {
        let data = [0x1122334455667788u64, 42];
        let mut m = ProcMemory::new(std::process::id());
        let mut buf = [0u8; 16];
        assert!(m.read(data.as_ptr() as u64, &mut buf));
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), data[0]);
        assert!(!m.read(8, &mut buf), "the zero page is not mapped");
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;

    #[test]
    fn many_parts_read_in_one_call_and_a_bad_one_is_told_apart() {
        let a = [1u8; 64];
        let b = [2u8; 32];
        let c = [3u8; 16];
        let parts = [
            (a.as_ptr() as u64, 64),
            (b.as_ptr() as u64, 32),
            // Never mapped in a user process.
            (8, 16),
            (c.as_ptr() as u64, 16),
        ];
        let mut mem = ProcMemory::new(std::process::id());
        let mut buf = vec![0u8; 128];
        let ok = mem.read_many(&parts, &mut buf);
        assert_eq!(ok, [true, true, false, true]);
        assert_eq!(&buf[..64], &a[..]);
        assert_eq!(&buf[64..96], &b[..]);
        assert_eq!(&buf[112..], &c[..]);
        assert_eq!(mem.read_bytes, 112);
    }
}
