//! Field offsets of kernel structures, read from the kernel's own BTF
//! (`/sys/kernel/btf/vmlinux`), so the eBPF programs can read a field of a structure whose
//! layout varies between kernel builds (the fork tracepoint's child `task_struct`).
//!
//! Only what that needs: walk the type section, find a struct by name, find a member by name
//! (through anonymous struct and union members). The format is the kernel's
//! `Documentation/bpf/btf.rst`. (The maintained BTF crates are either LGPL, which this
//! MIT/Apache project does not link, or keep type lookup private, as aya-obj does.)
use std::path::Path;

use anyhow::{bail, Context, Result};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;

pub struct Btf {
    data: Vec<u8>,
    /// Start of the string section in `data`.
    strings: usize,
    strings_len: usize,
    /// Byte position of each type id's record (index 0 is id 1).
    offsets: Vec<usize>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Btf> {
        Btf::read(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn read(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the kernel's type information {} (the kernel needs CONFIG_DEBUG_INFO_BTF)",
                path.display()
            )
        })?;
        Btf::parse(data).with_context(|| format!("{} is not BTF we can read", path.display()))
    }

    pub fn parse(data: Vec<u8>) -> Result<Btf> {
        let u32_at = |d: &[u8], at: usize| -> Result<u32> {
            d.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .context("truncated")
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("no BTF header (little-endian)");
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let (type_off, type_len) = (u32_at(&data, 8)? as usize, u32_at(&data, 12)? as usize);
        let (str_off, str_len) = (u32_at(&data, 16)? as usize, u32_at(&data, 20)? as usize);
        let types = hdr_len + type_off;
        let strings = hdr_len + str_off;
        if types + type_len > data.len() || strings + str_len > data.len() {
            bail!("sections beyond the end of the data");
        }
        let mut offsets = Vec::new();
        let mut at = types;
        while at < types + type_len {
            let info = u32_at(&data, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                // INT, VAR, DECL_TAG
                1 | 14 | 17 => 4,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7..=12 | 16 | 18 => 0,
                // ARRAY
                3 => 12,
                // STRUCT, UNION, DATASEC, ENUM64
                4 | 5 | 15 | 19 => 12 * vlen,
                // ENUM, FUNC_PROTO
                6 | 13 => 8 * vlen,
                k => bail!("unknown BTF kind {k} at byte {at}"),
            };
            offsets.push(at);
            at += 12 + extra;
        }
        Ok(Btf {
            data,
            strings,
            strings_len: str_len,
            offsets,
        })
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().expect("4 bytes"))
    }

    fn name(&self, off: u32) -> &str {
        let off = off as usize;
        if off >= self.strings_len {
            return "";
        }
        let s = &self.data[self.strings + off..self.strings + self.strings_len];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct name` (members of anonymous inner structs and
    /// unions included).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u64> {
        let at = self
            .offsets
            .iter()
            .copied()
            .find(|&at| {
                (self.u32(at + 4) >> 24) & 0x1f == KIND_STRUCT
                    && self.name(self.u32(at)) == name
                    && self.u32(at + 4) & 0xffff != 0
            })
            .with_context(|| format!("the kernel's BTF has no struct {name}"))?;
        let bits = self
            .find_member(at, member, 0)
            .with_context(|| format!("struct {name} has no member {member} in the kernel's BTF"))?;
        Ok(bits / 8)
    }

    /// The value of enumerator `name` in enum `enum_name` (None: this kernel has no such
    /// enumerator, e.g. an attach type newer than it).
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        self.offsets.iter().copied().find_map(|at| {
            let info = self.u32(at + 4);
            if (info >> 24) & 0x1f != KIND_ENUM || self.name(self.u32(at)) != enum_name {
                return None;
            }
            (0..(info & 0xffff) as usize)
                .map(|i| at + 12 + 8 * i)
                .find(|&e| self.name(self.u32(e)) == name)
                .map(|e| self.u32(e + 4))
        })
    }

    /// Bit offset of `member` in the struct or union at `at`, searching anonymous members.
    fn find_member(&self, at: usize, member: &str, depth: u32) -> Option<u64> {
        let info = self.u32(at + 4);
        let kflag = info >> 31 != 0;
        for i in 0..(info & 0xffff) as usize {
            let m = at + 12 + 12 * i;
            let raw = self.u32(m + 8);
            let bits = u64::from(if kflag { raw & 0x00ff_ffff } else { raw });
            let mname = self.name(self.u32(m));
            if mname == member {
                return Some(bits);
            }
            if mname.is_empty() && depth < 8 {
                let ty = self.resolve(self.u32(m + 4))?;
                let kind = (self.u32(ty + 4) >> 24) & 0x1f;
                if kind == KIND_STRUCT || kind == KIND_UNION {
                    if let Some(inner) = self.find_member(ty, member, depth + 1) {
                        return Some(bits + inner);
                    }
                }
            }
        }
        None
    }

    /// The record of a type id, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<usize> {
        for _ in 0..16 {
            let at = *self.offsets.get((id as usize).checked_sub(1)?)?;
            match (self.u32(at + 4) >> 24) & 0x1f {
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                8..=11 | 18 => id = self.u32(at + 8),
                _ => return Some(at),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF: struct outer { int a; union { int b; long c; }; int tgid; }
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0long\0outer\0a\0b\0c\0tgid\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        // 1: int (INT, 4 bytes)
        t.extend([s("int"), 1 << 24, 4, 32]);
        // 2: long
        t.extend([s("long"), 1 << 24, 8, 64]);
        // 3: anonymous union { int b; long c; }
        t.extend([0, (5 << 24) | 2, 8, s("b"), 1, 0, s("c"), 2, 0]);
        // 4: const union (a qualifier to resolve through)
        t.extend([0, 10 << 24, 3]);
        // 5: struct outer { int a @0; <anon> @64 bits; int tgid @128 bits }
        t.extend([
            s("outer"),
            (4 << 24) | 3,
            24,
            s("a"),
            1,
            0,
            0,
            4,
            64,
            s("tgid"),
            1,
            128,
        ]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut d = Vec::new();
        d.extend(MAGIC.to_le_bytes());
        d.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            d.extend(v.to_le_bytes());
        }
        d.extend(types);
        d.extend(strings);
        d
    }

    #[test]
    fn finds_members_directly_and_through_anonymous_unions() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "tgid").unwrap(), 16);
        let e = btf.member_offset("outer", "nope").unwrap_err().to_string();
        assert!(e.contains("no member nope"), "{e}");
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn bad_data_is_an_error() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        let mut d = sample();
        d.truncate(40);
        assert!(Btf::parse(d).is_err());
    }

    #[test]
    fn the_running_kernels_attach_types() {
        let btf = Btf::kernel().unwrap();
        // The uapi's fixed numbers.
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_MULTI"),
            Some(48)
        );
        assert_eq!(btf.enum_value("bpf_attach_type", "NO_SUCH_TYPE"), None);
        // Linux 6.13 and later: uprobe sessions (this machine's kernel has them).
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_SESSION"),
            Some(57)
        );
    }

    #[test]
    fn the_running_kernels_task_struct() {
        // /sys/kernel/btf/vmlinux is world-readable on kernels with BTF (this project needs one).
        let btf = Btf::kernel().unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        // Both are pid_t, declared one after the other.
        assert_eq!(tgid, pid + 4);
        assert!(tgid > 0 && tgid < 16384, "{tgid}");
    }
}
