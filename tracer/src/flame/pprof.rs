//! pprof export: google/pprof's `profile.proto`, gzip-compressed, encoded with Datadog's
//! maintained encoder for that schema (libdd-profiling-protobuf). It has no encoder for the
//! top-level Profile message or for a Location with several lines (inlined frames), so those
//! two messages are assembled here from its field records.
//!
//! Sample types follow Go's heap profiles, which every pprof consumer knows: `alloc_objects`,
//! `alloc_space`, `inuse_objects`, `inuse_space` (the default for every view but `allocs`).
use std::{collections::HashMap, io::Write};

use anyhow::Result;
use libdd_profiling_protobuf::{
    Function, Label, Line, Record, Sample, StringOffset, Tag, Value, ValueType, WireType,
    NO_OPT_ZERO, OPT_ZERO,
};

use super::{frame_name, Profile, What};

/// Field numbers of `perftools.profiles.Profile` written here.
mod field {
    pub const SAMPLE_TYPE: u32 = 1;
    pub const SAMPLE: u32 = 2;
    pub const MAPPING: u32 = 3;
    pub const LOCATION: u32 = 4;
    pub const FUNCTION: u32 = 5;
    pub const STRING_TABLE: u32 = 6;
    pub const TIME_NANOS: u32 = 9;
    pub const DURATION_NANOS: u32 = 10;
    pub const PERIOD_TYPE: u32 = 11;
    pub const PERIOD: u32 = 12;
    pub const COMMENT: u32 = 13;
    pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
}

/// The string table: index 0 is always "".
struct Strings {
    table: Vec<String>,
    index: HashMap<String, u32>,
}

impl Strings {
    fn new() -> Strings {
        Strings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> StringOffset {
        if let Some(&i) = self.index.get(s) {
            return StringOffset::new(i);
        }
        let i = self.table.len() as u32;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        StringOffset::new(i)
    }
}

/// Writes a length-delimited sub-message `field` whose encoded fields are `inner`.
fn message(out: &mut Vec<u8>, field: u32, inner: &[u8]) -> std::io::Result<()> {
    Tag::new(field, WireType::LengthDelimited).encode(out)?;
    (inner.len() as u64).encode(out)?;
    out.write_all(inner)
}

fn value_type(s: &mut Strings, kind: &str, unit: &str) -> ValueType {
    ValueType {
        r#type: s.id(kind).into(),
        unit: s.id(unit).into(),
    }
}

/// The gzip-compressed profile.
pub fn encode(p: &Profile) -> Result<Vec<u8>> {
    let raw = encode_raw(p)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}

fn encode_raw(p: &Profile) -> std::io::Result<Vec<u8>> {
    let mut s = Strings::new();
    let mut out = Vec::new();
    for (kind, unit) in [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ] {
        Record::<ValueType, { field::SAMPLE_TYPE }, NO_OPT_ZERO>::from(value_type(
            &mut s, kind, unit,
        ))
        .encode(&mut out)?;
    }

    // Mappings, with what their frames were resolved to.
    for (i, (m, build_id)) in p.mappings.iter().enumerate() {
        let mut inner = Vec::new();
        let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
        Record::<u64, 1, NO_OPT_ZERO>::from(i as u64 + 1).encode(&mut inner)?;
        Record::<u64, 2, OPT_ZERO>::from(m.start).encode(&mut inner)?;
        Record::<u64, 3, OPT_ZERO>::from(m.end).encode(&mut inner)?;
        Record::<u64, 4, OPT_ZERO>::from(m.offset).encode(&mut inner)?;
        Record::<StringOffset, 5, OPT_ZERO>::from(s.id(&m.path.to_string_lossy()))
            .encode(&mut inner)?;
        Record::<StringOffset, 6, OPT_ZERO>::from(s.id(&hex)).encode(&mut inner)?;
        // has_functions, has_filenames, has_line_numbers, has_inline_frames: already
        // symbolized, so consumers do not try to symbolize again.
        for f in 7..=10u32 {
            Tag::new(f, WireType::Varint).encode(&mut inner)?;
            1u64.encode(&mut inner)?;
        }
        message(&mut out, field::MAPPING, &inner)?;
    }
    let mapping_of = |addr: u64| {
        p.mappings
            .iter()
            .position(|(m, _)| addr >= m.start && addr < m.end)
            .map_or(0, |i| i as u64 + 1)
    };

    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: HashMap<u64, u64> = HashMap::new();
    let mut loc_out = Vec::new();
    let mut fn_out = Vec::new();
    let mut sample_out = Vec::new();
    let pid_key = s.id("pid");
    for st in &p.stacks {
        let values = [
            st.alloc_objects,
            st.alloc_bytes,
            st.inuse_objects,
            st.inuse_bytes,
        ];
        if values.iter().all(|&v| v == 0) {
            continue;
        }
        let mut ids: Vec<u64> = Vec::new();
        // Consecutive frames of one address are one location: inlined calls, then the caller.
        for group in st.frames.chunk_by(|a, b| a.addr == b.addr) {
            let addr = group[0].addr;
            if let Some(&id) = locations.get(&addr) {
                ids.push(id);
                continue;
            }
            let id = locations.len() as u64 + 1;
            locations.insert(addr, id);
            let mut inner = Vec::new();
            Record::<u64, 1, NO_OPT_ZERO>::from(id).encode(&mut inner)?;
            Record::<u64, 2, OPT_ZERO>::from(mapping_of(addr)).encode(&mut inner)?;
            Record::<u64, 3, OPT_ZERO>::from(addr).encode(&mut inner)?;
            for f in group {
                let name = frame_name(f);
                let file = f.file.clone().unwrap_or_default();
                let next = functions.len() as u64 + 1;
                let fid = *functions
                    .entry((name.clone(), file.clone()))
                    .or_insert_with(|| {
                        let func = Function {
                            id: next.into(),
                            name: s.id(&name).into(),
                            system_name: s.id(&name).into(),
                            filename: s.id(&file).into(),
                        };
                        let _ = Record::<Function, { field::FUNCTION }, NO_OPT_ZERO>::from(func)
                            .encode(&mut fn_out);
                        next
                    });
                Record::<Line, 4, NO_OPT_ZERO>::from(Line {
                    function_id: fid.into(),
                    lineno: i64::from(f.line.unwrap_or(0)).into(),
                })
                .encode(&mut inner)?;
            }
            message(&mut loc_out, field::LOCATION, &inner)?;
            ids.push(id);
        }
        let labels = [Record::<Label, 3, NO_OPT_ZERO>::from(Label {
            key: pid_key.into(),
            num: i64::from(p.pid).into(),
            ..Label::default()
        })];
        Record::<Sample, { field::SAMPLE }, NO_OPT_ZERO>::from(Sample {
            location_ids: Record::from(&ids[..]),
            values: Record::from(&values[..]),
            labels: &labels,
        })
        .encode(&mut sample_out)?;
    }
    out.extend_from_slice(&sample_out);
    out.extend_from_slice(&loc_out);
    out.extend_from_slice(&fn_out);

    Record::<i64, { field::TIME_NANOS }, OPT_ZERO>::from(p.start_unix_ns).encode(&mut out)?;
    let duration = ((p.end_s - p.start_s).max(0.0) * 1e9) as i64;
    Record::<i64, { field::DURATION_NANOS }, OPT_ZERO>::from(duration).encode(&mut out)?;
    Record::<ValueType, { field::PERIOD_TYPE }, OPT_ZERO>::from(value_type(
        &mut s, "space", "bytes",
    ))
    .encode(&mut out)?;
    // Every allocation was recorded (no sampling).
    Record::<i64, { field::PERIOD }, OPT_ZERO>::from(1).encode(&mut out)?;
    let comment = s.id(&format!("tracer {}: {}", p.tracer_version, p.title()));
    Record::<i64, { field::COMMENT }, NO_OPT_ZERO>::from(i64::from(comment)).encode(&mut out)?;
    let default = match p.what {
        Some(What::Allocs) => "alloc_space",
        _ => "inuse_space",
    };
    let default = s.id(default);
    Record::<i64, { field::DEFAULT_SAMPLE_TYPE }, OPT_ZERO>::from(i64::from(default))
        .encode(&mut out)?;

    for text in &s.table {
        Record::<&str, { field::STRING_TABLE }, NO_OPT_ZERO>::from(text.as_str())
            .encode(&mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::flame::tests::sample;

    /// One decoded field: number, wire type, varint value, bytes.
    type Field = (u32, u8, u64, Vec<u8>);

    /// A minimal protobuf reader for the test.
    fn fields(mut b: &[u8]) -> Vec<Field> {
        fn var(b: &mut &[u8]) -> u64 {
            let mut v = 0;
            for i in 0.. {
                let byte = b[0];
                *b = &b[1..];
                v |= ((byte & 0x7f) as u64) << (7 * i);
                if byte & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let tag = var(&mut b);
            let (f, w) = ((tag >> 3) as u32, (tag & 7) as u8);
            match w {
                0 => out.push((f, w, var(&mut b), Vec::new())),
                2 => {
                    let n = var(&mut b) as usize;
                    out.push((f, w, 0, b[..n].to_vec()));
                    b = &b[n..];
                }
                _ => panic!("wire type {w}"),
            }
        }
        out
    }

    #[test]
    fn profile_has_heap_sample_types_strings_and_inlined_lines() {
        let gz = encode(&sample()).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let top = fields(&raw);
        let strings: Vec<String> = top
            .iter()
            .filter(|f| f.0 == 6)
            .map(|f| String::from_utf8(f.3.clone()).unwrap())
            .collect();
        assert_eq!(strings[0], "");
        let types: Vec<String> = top
            .iter()
            .filter(|f| f.0 == 1)
            .map(|f| strings[fields(&f.3)[0].2 as usize].clone())
            .collect();
        assert_eq!(
            types,
            [
                "alloc_objects",
                "alloc_space",
                "inuse_objects",
                "inuse_space"
            ]
        );
        // the churn stack has allocations only, yet is a sample (alloc_* views need it)
        assert_eq!(top.iter().filter(|f| f.0 == 2).count(), 3);
        // leak_fixed's address holds two lines: the inlined `fill`, then leak_fixed
        let locs: Vec<Vec<Field>> = top
            .iter()
            .filter(|f| f.0 == 4)
            .map(|f| fields(&f.3))
            .collect();
        let inl = locs
            .iter()
            .find(|l| l.iter().any(|f| f.0 == 3 && f.2 == 0x401500))
            .unwrap();
        assert_eq!(inl.iter().filter(|f| f.0 == 4).count(), 2);
        // one mapping with its build id in hex, marked symbolized
        let maps: Vec<_> = top
            .iter()
            .filter(|f| f.0 == 3)
            .map(|f| fields(&f.3))
            .collect();
        assert_eq!(maps.len(), 1);
        let bid = maps[0].iter().find(|f| f.0 == 6).unwrap().2 as usize;
        assert_eq!(strings[bid], "abcd");
        assert!(maps[0].iter().any(|f| f.0 == 7 && f.2 == 1));
        let default = top.iter().find(|f| f.0 == 14).unwrap().2 as usize;
        assert_eq!(strings[default], "inuse_space");
    }
}
