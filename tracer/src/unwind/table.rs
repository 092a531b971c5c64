//! An ELF file's unwind table, from its call-frame information (`.eh_frame`, or
//! `.debug_frame` when it has no `.eh_frame`), in the compact rows the kernel side walks
//! (`tracer_common::UnwindRow`). x86-64 only: the return address is at CFA - 8, and only the
//! CFA and rbp need rules.
//!
//! The file is untrusted input (any process may map any file): every malformed part ends in
//! an error or an `UNSUPPORTED` row, never a panic, and nothing in it is executed.
use anyhow::{bail, Context, Result};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindExpression, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};
use tracer_common::{unwind_rule, UnwindRow, RBP_LOST};

/// The DWARF expression of the PLT's CFA (`rsp + 8 + ((rip & 15) >= 11) * 8`), as GCC and
/// binutils emit it for lazy-binding PLT entries.
const PLT_EXPRESSION: [u8; 11] = [
    0x77, 0x08, // DW_OP_breg7 (rsp) 8
    0x80, 0x00, // DW_OP_breg16 (rip) 0
    0x3f, // DW_OP_lit15
    0x1a, // DW_OP_and
    0x3b, // DW_OP_lit11
    0x2a, // DW_OP_ge
    0x33, // DW_OP_lit3
    0x24, // DW_OP_shl
    0x22, // DW_OP_plus
];

/// Functions with frames set up on rbp, of this share of all functions or more, mean the
/// file was built with frame pointers.
const FRAME_POINTER_SHARE: f64 = 0.8;

/// A file's table.
#[derive(Debug, Default)]
pub struct Table {
    /// Sorted by `pc`, no two alike in a row.
    pub rows: Vec<UnwindRow>,
    /// Link-time address minus file offset, for the executable segment.
    pub vaddr_minus_offset: i64,
    /// The file keeps frame pointers (most functions set up rbp frames).
    pub frame_pointers: bool,
}

/// The GNU build id of the ELF file `data`, when it has one: the file's identity on any
/// machine, which the disk cache keys tables by.
pub fn build_id<'d, R: object::ReadRef<'d>>(data: R) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    let id = file.build_id().ok()??;
    (id.len() >= 8).then(|| id.to_vec())
}

/// The table of the ELF file `data`.
pub fn build<'d, R: object::ReadRef<'d>>(data: R) -> Result<Table> {
    let file = object::File::parse(data).context("not an ELF file tracer can read")?;
    if file.architecture() != object::Architecture::X86_64 {
        bail!("unwind tables are built for x86-64 files only");
    }
    let exec = file
        .segments()
        .find(|s| {
            matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
        })
        .context("no executable segment")?;
    let (offset, _) = exec.file_range();
    let vaddr_minus_offset = exec.address() as i64 - offset as i64;
    let section = |name: &str| {
        file.section_by_name(name)
            .and_then(|s| Some((s.address(), s.data().ok()?)))
    };
    let mut bases = BaseAddresses::default();
    if let Some((addr, _)) = section(".text") {
        bases = bases.set_text(addr);
    }
    if let Some((addr, _)) = section(".got") {
        bases = bases.set_got(addr);
    }
    if let Some((addr, _)) = section(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(addr);
    }
    let mut rows = Rows::default();
    if let Some((addr, bytes)) = section(".eh_frame") {
        let bases = bases.set_eh_frame(addr);
        let mut eh = EhFrame::new(bytes, LittleEndian);
        eh.set_address_size(8);
        rows.read(&eh, &bases)?;
    } else if let Some((_, bytes)) = section(".debug_frame") {
        let mut debug = DebugFrame::new(bytes, LittleEndian);
        debug.set_address_size(8);
        rows.read(&debug, &bases)?;
    } else {
        bail!("no call-frame information (.eh_frame or .debug_frame)");
    }
    let functions = rows.functions;
    let frame_pointers =
        functions > 0 && rows.rbp_framed as f64 >= FRAME_POINTER_SHARE * functions as f64;
    Ok(Table {
        rows: rows.finish(),
        vaddr_minus_offset,
        frame_pointers,
    })
}

/// Rows being gathered, before sorting.
#[derive(Default)]
struct Rows {
    /// (pc, order, row): `order` 0 for a function's end marker, 1 for a rule, so that at one
    /// address a function's rule wins over the previous function's end.
    all: Vec<(u64, u8, UnwindRow)>,
    functions: usize,
    /// Functions with a CFA on rbp somewhere.
    rbp_framed: usize,
}

impl Rows {
    fn read<'d, S>(&mut self, section: &S, bases: &BaseAddresses) -> Result<()>
    where
        S: UnwindSection<EndianSlice<'d, LittleEndian>>,
    {
        let is_plt = |e: &UnwindExpression<usize>| {
            e.get(section)
                .is_ok_and(|x| x.0.slice() == PLT_EXPRESSION.as_slice())
        };
        let mut ctx = Box::new(UnwindContext::new());
        let mut entries = section.entries(bases);
        loop {
            let entry = match entries.next() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => bail!("malformed call-frame information: {e}"),
            };
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            // A bad FDE costs its function, not the file.
            let Ok(fde) = partial.parse(S::cie_from_offset) else {
                continue;
            };
            let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
                continue;
            };
            let mut framed = false;
            let mut any = false;
            while let Ok(Some(row)) = table.next_row() {
                let r = convert(row, is_plt);
                framed |= r.rule == unwind_rule::CFA_RBP;
                any = true;
                self.all.push((row.start_address(), 1, r));
            }
            if !any {
                continue;
            }
            self.functions += 1;
            self.rbp_framed += framed as usize;
            let end = fde.end_address();
            self.all.push((end, 0, no_info()));
        }
        Ok(())
    }

    /// Sorted, one row per address (a rule over an end marker), consecutive equal rules
    /// merged; addresses beyond 32 bits dropped (the rows' `pc` is 32 bits).
    fn finish(mut self) -> Vec<UnwindRow> {
        self.all.sort_by_key(|&(pc, order, _)| (pc, order));
        let mut out: Vec<UnwindRow> = Vec::with_capacity(self.all.len());
        for (pc, _, mut row) in self.all {
            let Ok(pc) = u32::try_from(pc) else { continue };
            row.pc = pc;
            if let Some(last) = out.last_mut() {
                if last.pc == pc {
                    *last = row;
                    continue;
                }
            }
            out.push(row);
        }
        out.dedup_by(|next, prev| same_rule(prev, next));
        out
    }
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.rule, a.cfa_offset, a.rbp) == (b.rule, b.cfa_offset, b.rbp)
}

fn no_info() -> UnwindRow {
    UnwindRow {
        rule: unwind_rule::NO_INFO,
        ..UnwindRow::default()
    }
}

fn unsupported() -> UnwindRow {
    UnwindRow {
        rule: unwind_rule::UNSUPPORTED,
        ..UnwindRow::default()
    }
}

/// One of gimli's rows in the kernel side's terms.
fn convert(
    row: &gimli::UnwindTableRow<usize>,
    is_plt: impl Fn(&UnwindExpression<usize>) -> bool,
) -> UnwindRow {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                rule: unwind_rule::OUTERMOST,
                ..UnwindRow::default()
            }
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return unsupported(),
    }
    let (rule, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let rule = match *register {
                X86_64::RSP => unwind_rule::CFA_RSP,
                X86_64::RBP => unwind_rule::CFA_RBP,
                _ => return unsupported(),
            };
            let Ok(off) = u16::try_from(*offset) else {
                return unsupported();
            };
            (rule, off)
        }
        CfaRule::Expression(e) if is_plt(e) => (unwind_rule::CFA_PLT, 0),
        CfaRule::Expression(_) => return unsupported(),
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(n)) if n % 8 == 0 && n != 0 => i8::try_from(n / 8)
            .ok()
            .filter(|&w| w != RBP_LOST)
            .unwrap_or(RBP_LOST),
        _ => RBP_LOST,
    };
    UnwindRow {
        pc: 0,
        cfa_offset,
        rule,
        rbp,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use object::ObjectSymbol;

    /// The row that holds at link-time address `pc` (what the kernel side's search finds).
    fn row_at(rows: &[UnwindRow], pc: u32) -> Option<&UnwindRow> {
        let i = rows.partition_point(|r| r.pc <= pc);
        rows.get(i.checked_sub(1)?)
    }

    /// The C library this test process runs on (any machine tracer runs on has one).
    pub fn libc_path() -> std::path::PathBuf {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("/libc.so"))
            .map(std::path::PathBuf::from)
            .expect("the test process maps a C library")
    }

    #[test]
    fn the_c_library_has_a_sorted_table_without_frame_pointers() {
        let data = std::fs::read(libc_path()).unwrap();
        let t = build(&*data).unwrap();
        assert!(t.rows.len() > 5000, "{} rows", t.rows.len());
        assert!(!t.frame_pointers);
        assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        assert!(t.rows.windows(2).all(|w| !same_rule(&w[0], &w[1])));
    }

    #[test]
    fn at_a_function_entry_the_return_address_is_on_top_of_the_stack() {
        let data = std::fs::read(libc_path()).unwrap();
        let t = build(&*data).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let mut checked = 0;
        for name in ["malloc", "free", "calloc", "realloc", "memcpy", "qsort"] {
            let Some(sym) = elf.dynamic_symbols().find(|s| s.name() == Ok(name)) else {
                continue;
            };
            let row = row_at(&t.rows, sym.address() as u32).expect("a row");
            // IFUNC resolvers' targets aside, a function's first byte: CFA = rsp + 8.
            if row.rule == unwind_rule::CFA_RSP {
                assert_eq!((row.cfa_offset, row.rbp), (8, 0), "{name}");
                checked += 1;
            }
        }
        assert!(checked >= 3, "{checked} functions checked");
    }

    #[test]
    fn a_damaged_file_gives_an_error_or_rows_never_a_panic() {
        let data = std::fs::read(libc_path()).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let eh = elf.section_by_name(".eh_frame").unwrap();
        let (start, len) = eh.file_range().unwrap();
        // A fixed pseudo-random sequence of byte changes inside .eh_frame.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut copy = data.clone();
        for round in 0..40 {
            for _ in 0..(1 + round % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = start as usize + (x % len) as usize;
                copy[at] = (x >> 32) as u8;
            }
            if let Ok(t) = build(&*copy) {
                assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc));
            }
        }
        assert!(build(&data[..4096]).is_err());
        assert!(build(&b"not an elf"[..]).is_err());
    }

    #[test]
    fn the_row_at_an_address_is_the_last_at_or_below_it() {
        let rows = [10, 20, 30].map(|pc| UnwindRow {
            pc,
            ..UnwindRow::default()
        });
        assert_eq!(row_at(&rows, 5), None);
        assert_eq!(row_at(&rows, 10).unwrap().pc, 10);
        assert_eq!(row_at(&rows, 29).unwrap().pc, 20);
        assert_eq!(row_at(&rows, 99).unwrap().pc, 30);
    }
}
