//! uprobe-multi links (Linux 6.6): one link puts a program on many offsets of one file.
//!
//! With one perf event per probe, the kernel detaches probes one at a time, each after its
//! own RCU grace periods, under a global lock: a few dozen probes kept tracer alive for
//! seconds after its report, and probing every allocator library on the system up front
//! (so that a program started later on one is traced from its first call) would have taken
//! half a minute to undo. A uprobe-multi link is detached with one wait for all its offsets.
//!
//! aya 0.14 loads uprobe programs without the attach type such links need, so the programs
//! used here are loaded a second time from the same object: relocated by aya-obj against the
//! maps aya created (same rings, stack map, tables and read-only settings), and loaded with
//! the `bpf` syscall. Where the kernel cannot (older kernels), the caller keeps aya's
//! perf-event probes.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{maps::Map, Ebpf};

/// `BPF_PROG_LOAD`, `BPF_LINK_CREATE` (uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// `union bpf_attr` for `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with its `uprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 112);
const _: () = assert!(std::mem::size_of::<BtfLoadAttr>() == 32);
const _: () = assert!(std::mem::size_of::<LinkCreateAttr>() == 64);

/// The `bpf` syscall with `attr`: its non-negative result, or the error.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; every pointer
    // in it refers to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// A `bpf` command that returns a new file descriptor.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: a new file descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The programs, loaded for uprobe-multi links, by name; and those loaded for uprobe
/// sessions (Linux 6.13: one program at a function's entry and, when it asks, at its return).
pub struct MultiPrograms {
    progs: HashMap<&'static str, OwnedFd>,
    sessions: HashMap<&'static str, OwnedFd>,
    /// `BPF_TRACE_UPROBE_SESSION` in this kernel's numbering, when the sessions loaded.
    session_type: Option<u32>,
}

/// The fd of a map aya created (the map types tracer's object has).
pub(super) fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::StackTraceMap(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

impl MultiPrograms {
    /// Loads `names` from `object` for uprobe-multi links, against the maps of `ebpf` (which
    /// must still hold every map: call it before taking any out).
    /// `sessions`: programs to load a second time for uprobe sessions, where the kernel has
    /// them (see [`MultiPrograms::has_sessions`]).
    pub fn load(
        object: &[u8],
        ebpf: &Ebpf,
        names: &[&'static str],
        sessions: &[&'static str],
    ) -> Result<MultiPrograms> {
        let mut obj = aya_obj::Object::parse(object).context("cannot parse the eBPF object")?;
        // The object's type information, which the verifier needs for functions passed to
        // helpers as callbacks (the stack walk's loops): this kernel has every BTF feature
        // aya knows (uprobe-multi needs Linux 6.6).
        let features =
            aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf = match obj.fixup_and_sanitize_btf(&features) {
            Ok(Some(btf)) => Some(load_btf(&btf.to_bytes())?),
            Ok(None) => None,
            Err(e) => bail!("the eBPF object's type information: {e}"),
        };
        let map_objs = obj.maps.clone();
        let mut fds = Vec::new();
        for (name, map) in ebpf.maps() {
            let fd = map_fd(map).with_context(|| format!("map {name} of an unexpected type"))?;
            let obj_map = map_objs
                .get(name)
                .with_context(|| format!("map {name} missing from the object"))?;
            fds.push((name, fd, obj_map));
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(fds.into_iter(), &text_sections)
            .map_err(|e| anyhow!("relocating the eBPF object's maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| anyhow!("relocating the eBPF object's calls: {e}"))?;
        let license = obj.license.clone();
        // The relocated instructions of program `name`, with their type information.
        let code = |name: &str| -> Result<Code<'_>> {
            let program = obj
                .programs
                .get(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .with_context(|| format!("program {name} has no code"))?;
            Ok(Code {
                insns: &function.instructions,
                btf: btf.as_ref(),
                func_info: function.func_info.func_info_bytes(),
                func_info_cnt: function.func_info.len() as u32,
                func_info_rec_size: function.func_info_rec_size as u32,
                line_info: function.line_info.line_info_bytes(),
                line_info_cnt: function.line_info.len() as u32,
                line_info_rec_size: function.line_info_rec_size as u32,
            })
        };
        let mut progs = HashMap::new();
        for &name in names {
            let fd = load_program(name, code(name)?, &license, BPF_TRACE_UPROBE_MULTI)?;
            progs.insert(name, fd);
        }
        // The session attach type's number, from the kernel's own BTF: a kernel without it
        // has no uprobe sessions.
        let session_type = if sessions.is_empty() {
            None
        } else {
            super::btf::Btf::kernel()
                .ok()
                .and_then(|b| b.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_SESSION"))
        };
        let mut loaded = HashMap::new();
        if let Some(t) = session_type {
            for &name in sessions {
                match load_program(name, code(name)?, &license, t) {
                    Ok(fd) => {
                        loaded.insert(name, fd);
                    }
                    Err(_) => {
                        loaded.clear();
                        break;
                    }
                }
            }
        }
        let session_type = session_type.filter(|_| !loaded.is_empty());
        Ok(MultiPrograms {
            progs,
            sessions: loaded,
            session_type,
        })
    }

    /// Whether entry programs can go on as uprobe sessions.
    pub fn has_sessions(&self) -> bool {
        self.session_type.is_some()
    }

    /// Attaches `program` as a uprobe session at `offsets` of `path` (each with its cookie):
    /// it runs at each entry and, when it returns 0, at that call's return.
    pub fn attach_session(
        &self,
        program: &str,
        path: &Path,
        probes: &[(u64, u64)],
        pid: Option<u32>,
    ) -> std::io::Result<OwnedFd> {
        let (Some(prog), Some(t)) = (self.sessions.get(program), self.session_type) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no session program {program}"),
            ));
        };
        link_create(prog, t, path, probes, 0, pid)
    }

    /// Attaches `program` at `offsets` of `path` (each with its cookie), at the returns with
    /// `ret`, in process `pid` only or (None) every process mapping the file.
    pub fn attach(
        &self,
        program: &str,
        path: &Path,
        probes: &[(u64, u64)],
        ret: bool,
        pid: Option<u32>,
    ) -> std::io::Result<OwnedFd> {
        let prog = self.progs.get(program).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no program {program}"),
            )
        })?;
        let flags = if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
        link_create(prog, BPF_TRACE_UPROBE_MULTI, path, probes, flags, pid)
    }
}

/// `BPF_LINK_CREATE` of a uprobe-multi link (or session) of `prog` on `path`.
fn link_create(
    prog: &OwnedFd,
    attach_type: u32,
    path: &Path,
    probes: &[(u64, u64)],
    multi_flags: u32,
    pid: Option<u32>,
) -> std::io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let offsets: Vec<u64> = probes.iter().map(|p| p.0).collect();
    let cookies: Vec<u64> = probes.iter().map(|p| p.1).collect();
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: probes.len() as u32,
        multi_flags,
        pid: pid.unwrap_or(0),
        ..LinkCreateAttr::default()
    };
    sys_bpf(BPF_LINK_CREATE, &mut attr)
}

/// A program's relocated instructions and the type information the kernel checks them with.
struct Code<'a> {
    insns: &'a [aya_obj::generated::bpf_insn],
    btf: Option<&'a OwnedFd>,
    func_info: Vec<u8>,
    func_info_cnt: u32,
    func_info_rec_size: u32,
    line_info: Vec<u8>,
    line_info_cnt: u32,
    line_info_rec_size: u32,
}

/// Loads type information into the kernel.
fn load_btf(bytes: &[u8]) -> Result<OwnedFd> {
    let mut attr = BtfLoadAttr {
        btf: bytes.as_ptr() as u64,
        btf_size: bytes.len() as u32,
        ..BtfLoadAttr::default()
    };
    sys_bpf(BPF_BTF_LOAD, &mut attr)
        .map_err(|e| anyhow!("the kernel refused the eBPF object's type information: {e}"))
}

fn load_program(
    name: &str,
    code: Code<'_>,
    license: &std::ffi::CStr,
    attach_type: u32,
) -> Result<OwnedFd> {
    let insns = code.insns;
    let mut log = vec![0u8; 1 << 16];
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        ..ProgLoadAttr::default()
    };
    if let Some(btf) = code.btf {
        attr.prog_btf_fd = btf.as_raw_fd() as u32;
        if code.func_info_rec_size > 0 {
            attr.func_info = code.func_info.as_ptr() as u64;
            attr.func_info_cnt = code.func_info_cnt;
            attr.func_info_rec_size = code.func_info_rec_size;
        }
        if code.line_info_rec_size > 0 {
            attr.line_info = code.line_info.as_ptr() as u64;
            attr.line_info_cnt = code.line_info_cnt;
            attr.line_info_rec_size = code.line_info_rec_size;
        }
    }
    if let Ok(fd) = sys_bpf(BPF_PROG_LOAD, &mut attr) {
        return Ok(fd);
    }
    // Again with the verifier's log, to say why.
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let tail: String = String::from_utf8_lossy(&log[..end])
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ");
            bail!("the kernel refused program {name} for uprobe-multi links: {e} ({tail})")
        }
    }
}
