//! Where a function returns: the `ret` instructions of an allocator's own `operator new`, and
//! of every function it tail-calls.
//!
//! **Why.** A return probe (uretprobe) works by replacing the caller's return address on the
//! stack with the kernel's trampoline for the length of the call. An `operator new` that throws
//! `bad_alloc` never returns: the C++ unwinder reads that stack slot to find the caller, cannot
//! step through the trampoline, and the program terminates instead of catching. Putting the
//! original address back needs a write into the process, which locked-down kernels refuse to
//! eBPF programs, and which no write from tracer itself can do safely: tracer killed before it
//! writes leaves the process to die or stopped. So an allocator's own `operator new` (jemalloc,
//! tcmalloc, mimalloc bring their own) gets no return probe. Its return is seen by plain
//! uprobes on its `ret` instructions instead, where the stack pointer is the one the call
//! was entered with and the return address is still the caller's: nothing in the process is
//! ever changed, so a throw, or tracer's death at any instant, finds it as it would be
//! untraced.
//!
//! **How.** The function's bytes are decoded from its start to its end (its symbol's size,
//! else its `.eh_frame` entry's range). Every `ret` is a site. A direct jump out of the function
//! is a tail call (jemalloc's `operator new` jumps to its slow path, tcmalloc's through the
//! PLT to another exported function): the target function's returns are the caller's too, so
//! its sites are added, recursively. A jump through the PLT is followed to the symbol its GOT
//! slot is relocated against, when this file defines it. Anything the analysis cannot follow
//! (an indirect jump, a tail call into another file, bytes that do not decode) makes it give
//! up: the function then gets no return probe, and the caller says so.
use std::collections::{BTreeMap, HashMap, HashSet};

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable};

/// At most this many functions reached by tail calls, and this many sites: beyond, the
/// function is not one whose returns are worth a probe each.
const MAX_FUNCTIONS: usize = 16;
const MAX_SITES: usize = 64;

/// What the analysis needs of a file's code (a trait, so that it can be tested on bytes
/// assembled by hand).
pub trait Code {
    /// The bytes of `[start, end)` (virtual addresses).
    fn bytes(&self, start: u64, end: u64) -> Option<&[u8]>;
    /// The function containing `addr`: `[start, end)`.
    fn function_at(&self, addr: u64) -> Option<(u64, u64)>;
    /// Where a PLT stub at `addr` jumps, when it is one and this file defines its symbol;
    /// `Err(name)` for a stub whose symbol is defined elsewhere.
    fn through_plt(&self, addr: u64) -> Option<Result<u64, String>>;
}

/// The virtual addresses of the `ret` instructions by which the function at `entry` returns
/// to its caller, or why they cannot be known.
pub fn sites(code: &impl Code, entry: u64) -> Result<Vec<u64>, String> {
    let mut sites = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![entry];
    while let Some(mut addr) = queue.pop() {
        match code.through_plt(addr) {
            Some(Ok(target)) => addr = target,
            Some(Err(name)) => return Err(format!("it tail-calls {name} in another file")),
            None => {}
        }
        let Some((start, end)) = code.function_at(addr) else {
            return Err(format!(
                "it jumps to {addr:#x}, in no function the file describes"
            ));
        };
        if !seen.insert(start) {
            continue;
        }
        if seen.len() > MAX_FUNCTIONS {
            return Err(format!("it tail-calls more than {MAX_FUNCTIONS} functions"));
        }
        let bytes = code
            .bytes(start, end)
            .ok_or_else(|| format!("its code at {start:#x} is not in the file"))?;
        let mut decoder = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
        for insn in &mut decoder {
            if insn.is_invalid() {
                return Err(format!("its code at {:#x} does not decode", insn.ip()));
            }
            match insn.flow_control() {
                FlowControl::Return => {
                    if insn.mnemonic() != Mnemonic::Ret {
                        return Err(format!("{:?} at {:#x}", insn.mnemonic(), insn.ip()));
                    }
                    sites.push(insn.ip());
                }
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                    if !matches!(
                        insn.op0_kind(),
                        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                    ) {
                        return Err(format!("a far jump at {:#x}", insn.ip()));
                    }
                    let target = insn.near_branch_target();
                    if target < start || target >= end {
                        queue.push(target);
                    }
                }
                FlowControl::IndirectBranch => {
                    return Err(format!("an indirect jump at {:#x}", insn.ip()));
                }
                // Calls come back; an exception leaves by the unwinder, which needs no site.
                _ => {}
            }
            if sites.len() > MAX_SITES {
                return Err(format!("it has more than {MAX_SITES} return instructions"));
            }
        }
    }
    if sites.is_empty() {
        return Err("it has no return instruction".into());
    }
    sites.sort_unstable();
    sites.dedup();
    Ok(sites)
}

/// An x86-64 ELF file's code, as [`sites`] reads it.
pub struct ElfCode<'d> {
    file: object::File<'d>,
    /// Functions by start: (end) from the symbol tables (sized symbols), then the `.eh_frame`
    /// entries for the functions no symbol names (a stripped library's local functions).
    symbols: BTreeMap<u64, u64>,
    fdes: BTreeMap<u64, u64>,
    /// GOT slot → the symbol its relocation names.
    got: HashMap<u64, String>,
    /// Exported definitions: name → address.
    defined: HashMap<String, u64>,
    plt: Vec<(u64, u64)>,
}

impl<'d> ElfCode<'d> {
    pub fn parse(data: &'d [u8]) -> Result<ElfCode<'d>, String> {
        let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err("not an x86-64 file".into());
        }
        let mut symbols = BTreeMap::new();
        let mut defined = HashMap::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if !sym.is_definition() || sym.kind() != object::SymbolKind::Text || sym.address() == 0
            {
                continue;
            }
            if sym.size() > 0 {
                symbols
                    .entry(sym.address())
                    .or_insert(sym.address() + sym.size());
            }
            if let Ok(name) = sym.name() {
                defined.entry(name.to_string()).or_insert(sym.address());
            }
        }
        let mut got = HashMap::new();
        if let (Some(relocs), Some(dynsym)) =
            (file.dynamic_relocations(), file.dynamic_symbol_table())
        {
            for (slot, r) in relocs {
                if let object::RelocationTarget::Symbol(i) = r.target() {
                    if let Some(name) = dynsym.symbol_by_index(i).ok().and_then(|s| s.name().ok()) {
                        got.insert(slot, name.to_string());
                    }
                }
            }
        }
        let plt = file
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with(".plt")))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        let fdes = fde_ranges(&file).unwrap_or_default();
        Ok(ElfCode {
            file,
            symbols,
            fdes,
            got,
            defined,
            plt,
        })
    }

    /// A file offset's virtual address (in an executable segment).
    pub fn vaddr(&self, offset: u64) -> Option<u64> {
        self.file.segments().find_map(|seg| {
            let (off, size) = seg.file_range();
            (offset >= off && offset < off + size).then(|| seg.address() + (offset - off))
        })
    }

    /// A virtual address's file offset.
    pub fn offset(&self, vaddr: u64) -> Option<u64> {
        super::target::file_offset(&self.file, vaddr)
    }
}

impl Code for ElfCode<'_> {
    fn bytes(&self, start: u64, end: u64) -> Option<&[u8]> {
        self.file.segments().find_map(|seg| {
            if start < seg.address() || end > seg.address() + seg.size() {
                return None;
            }
            let data = seg.data().ok()?;
            data.get((start - seg.address()) as usize..(end - seg.address()) as usize)
        })
    }

    fn function_at(&self, addr: u64) -> Option<(u64, u64)> {
        let within = |m: &BTreeMap<u64, u64>| {
            m.range(..=addr)
                .next_back()
                .filter(|(_, end)| addr < **end)
                .map(|(s, e)| (*s, *e))
        };
        within(&self.symbols).or_else(|| within(&self.fdes))
    }

    fn through_plt(&self, addr: u64) -> Option<Result<u64, String>> {
        if !self.plt.iter().any(|(s, e)| addr >= *s && addr < *e) {
            return None;
        }
        // A stub: [endbr64] [bnd] jmp *slot(%rip).
        let code = self.bytes(addr, addr + 16)?;
        let jump = Decoder::with_ip(64, code, addr, DecoderOptions::NONE)
            .into_iter()
            .take(3)
            .find(|i| i.mnemonic() == Mnemonic::Jmp)?;
        if jump.op0_kind() != OpKind::Memory || jump.memory_base() != Register::RIP {
            return None;
        }
        let name = self.got.get(&jump.memory_displacement64())?;
        Some(self.defined.get(name).copied().ok_or_else(|| name.clone()))
    }
}

/// The code ranges `.eh_frame` describes: start → end.
fn fde_ranges(file: &object::File) -> Option<BTreeMap<u64, u64>> {
    let section = file.section_by_name(".eh_frame")?;
    let data = section.data().ok()?;
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut eh = EhFrame::new(data, LittleEndian);
    eh.set_address_size(8);
    let mut ranges = BTreeMap::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry {
            if let Ok(fde) = partial.parse(EhFrame::cie_from_offset) {
                ranges.insert(fde.initial_address(), fde.end_address());
            }
        }
    }
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Code assembled by hand: functions at given addresses, and PLT stubs.
    struct Fake {
        base: u64,
        bytes: Vec<u8>,
        functions: Vec<(u64, u64)>,
        plt: HashMap<u64, Result<u64, String>>,
    }

    impl Code for Fake {
        fn bytes(&self, start: u64, end: u64) -> Option<&[u8]> {
            self.bytes
                .get((start - self.base) as usize..(end - self.base) as usize)
        }
        fn function_at(&self, addr: u64) -> Option<(u64, u64)> {
            self.functions
                .iter()
                .copied()
                .find(|(s, e)| addr >= *s && addr < *e)
        }
        fn through_plt(&self, addr: u64) -> Option<Result<u64, String>> {
            self.plt.get(&addr).cloned()
        }
    }

    const RET: u8 = 0xc3;
    const NOP: u8 = 0x90;

    /// `jmp rel32` from `at` to `to`.
    fn jmp(at: u64, to: u64) -> Vec<u8> {
        let rel = (to as i64 - (at as i64 + 5)) as i32;
        [vec![0xe9], rel.to_le_bytes().to_vec()].concat()
    }

    /// Lays out `parts` (bytes of each function) from 0x1000, 16-byte aligned, padded with
    /// `int3`.
    fn fake(parts: &[Vec<u8>]) -> Fake {
        let base = 0x1000;
        let mut bytes = Vec::new();
        let mut functions = Vec::new();
        for p in parts {
            let start = base + bytes.len() as u64;
            bytes.extend_from_slice(p);
            functions.push((start, start + p.len() as u64));
            while bytes.len() % 16 != 0 {
                bytes.push(0xcc);
            }
        }
        Fake {
            base,
            bytes,
            functions,
            plt: HashMap::new(),
        }
    }

    #[test]
    fn every_ret_of_a_function_is_a_site_and_calls_are_not_followed() {
        // cmp $0x1000,%rdi; ja +1; ret; call 0x2000; ret
        let f = fake(&[vec![
            0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x77, 0x01, RET, 0xe8, 0xf1, 0x0f, 0x00,
            0x00, RET,
        ]]);
        assert_eq!(sites(&f, 0x1000), Ok(vec![0x1009, 0x100f]));
    }

    #[test]
    fn tail_calls_bring_their_callees_returns_once_each() {
        // f: jne g; jmp g; ret.   g: nop; ret.   (g reached twice, its ret counted once)
        let g = 0x1010;
        let mut f = vec![0x0f, 0x85];
        f.extend(((g as i64 - 0x1006) as i32).to_le_bytes());
        f.extend(jmp(0x1006, g));
        f.push(RET);
        let code = fake(&[f, vec![NOP, RET]]);
        assert_eq!(code.functions[1].0, g);
        assert_eq!(sites(&code, 0x1000), Ok(vec![0x100b, 0x1011]));
    }

    #[test]
    fn a_jump_within_the_function_is_not_a_tail_call() {
        // jmp +1 (over the int3); int3; ret
        let code = fake(&[vec![0xeb, 0x01, 0xcc, RET]]);
        assert_eq!(sites(&code, 0x1000), Ok(vec![0x1003]));
    }

    #[test]
    fn a_plt_stub_is_followed_to_the_function_this_file_defines() {
        let mut code = fake(&[jmp(0x1000, 0x1010), vec![RET], vec![NOP, RET]]);
        code.plt.insert(0x1010, Ok(0x1020));
        assert_eq!(sites(&code, 0x1000), Ok(vec![0x1021]));
        code.plt.insert(0x1010, Err("elsewhere".into()));
        let e = sites(&code, 0x1000).unwrap_err();
        assert!(e.contains("elsewhere in another file"), "{e}");
    }

    #[test]
    fn what_cannot_be_followed_gives_up() {
        // jmp *%rax
        let e = sites(&fake(&[vec![0xff, 0xe0, RET]]), 0x1000).unwrap_err();
        assert!(e.contains("indirect jump"), "{e}");
        // A jump out of every known function.
        let e = sites(&fake(&[jmp(0x1000, 0x9000)]), 0x1000).unwrap_err();
        assert!(e.contains("in no function"), "{e}");
        // No ret at all (an endless loop).
        let e = sites(&fake(&[vec![0xeb, 0xfe]]), 0x1000).unwrap_err();
        assert!(e.contains("no return"), "{e}");
        // Undecodable bytes (`push %es` has no 64-bit form).
        let e = sites(&fake(&[vec![0x06, RET]]), 0x1000).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
    }

    #[test]
    fn a_chain_of_tail_calls_is_bounded() {
        // Each function jumps to the next: more functions than the bound.
        let n = MAX_FUNCTIONS + 2;
        let parts: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let at = 0x1000 + 16 * i as u64;
                if i + 1 < n {
                    jmp(at, at + 16)
                } else {
                    vec![RET]
                }
            })
            .collect();
        let e = sites(&fake(&parts), 0x1000).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }
}
