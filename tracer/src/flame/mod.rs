//! Flame data for the tools people already use: folded stacks (flamegraph.pl, inferno), a
//! differential folded file, an SVG rendered in-process by inferno, pprof (`go tool pprof`,
//! continuous-profiling backends) and speedscope.
//!
//! A [`Profile`] is built by the engine from the books (which stacks, which values: see
//! [`What`]); the writers here are pure functions of it, so each is unit-tested on a fixed
//! profile. Files are replaced atomically (a temporary file renamed over the target), so a
//! viewer never reads half a file even with `--flame-every`.
mod pprof;
pub mod profile;

use std::{io::Write, path::Path};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::symbolize::{Frame, Mapping};

/// What a flame graph shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// Outstanding bytes of the sites that leak (and of those not judged yet).
    Leaks,
    /// All live memory.
    Live,
    /// All allocations since the start (allocation-rate hot spots).
    Allocs,
    /// Growth of live memory since the last mark (or the start).
    Growth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `frame;frame;frame value` lines, outermost frame first.
    Folded,
    /// `stack before after` lines (inferno's differential input): live bytes at the last mark
    /// (or the start) and now.
    DiffFolded,
    /// An interactive SVG flame graph (inferno).
    Svg,
    /// pprof's profile.proto, gzip-compressed.
    Pprof,
    /// speedscope's JSON file format.
    Speedscope,
}

impl Format {
    /// The format a file name asks for.
    pub fn from_path(p: &Path) -> Result<Format> {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let ends = |s: &str| name.ends_with(s);
        Ok(if ends(".diff.folded") || ends(".diff") {
            Format::DiffFolded
        } else if ends(".folded") || ends(".collapsed") || ends(".txt") {
            Format::Folded
        } else if ends(".svg") {
            Format::Svg
        } else if ends(".pb.gz") || ends(".pprof") || ends(".pb") {
            Format::Pprof
        } else if ends(".json") || ends(".speedscope") {
            Format::Speedscope
        } else {
            bail!(
                "cannot tell the flame format from the name {}: use a .folded, .diff.folded, .svg, \
                 .pb.gz or .speedscope.json name, or --flame-format",
                p.display()
            )
        })
    }
}

/// The stacks to draw and their values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    pub what: Option<What>,
    pub pid: u32,
    pub command: String,
    /// The time window the values cover, in seconds since tracing began.
    pub start_s: f64,
    pub end_s: f64,
    /// Wall-clock time of the start of tracing, ns since the Unix epoch (0 when unknown).
    pub start_unix_ns: i64,
    pub stacks: Vec<Stack>,
    /// The memory maps of the process (with build ids) for pprof's mapping table.
    pub mappings: Vec<(Mapping, Vec<u8>)>,
    pub tracer_version: String,
}

/// One stack (one report row) and its values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stack {
    /// Innermost first (the allocator's caller first), inlined frames included.
    pub frames: Vec<Frame>,
    pub inuse_objects: i64,
    pub inuse_bytes: i64,
    pub alloc_objects: i64,
    pub alloc_bytes: i64,
    /// Live bytes at the start and at the end of the window (a differential file's columns).
    pub before_bytes: i64,
    pub after_bytes: i64,
}

impl Profile {
    /// The value drawn for a stack: bytes allocated for `allocs`, live (or grown) bytes else.
    pub fn value(&self, s: &Stack) -> i64 {
        match self.what {
            Some(What::Allocs) => s.alloc_bytes,
            _ => s.inuse_bytes,
        }
    }

    /// What the values are, for titles.
    pub fn value_name(&self) -> &'static str {
        match self.what {
            Some(What::Leaks) | None => "outstanding bytes of leaking sites",
            Some(What::Live) => "live bytes",
            Some(What::Allocs) => "bytes allocated",
            Some(What::Growth) => "bytes grown",
        }
    }

    pub fn title(&self) -> String {
        format!(
            "{} of {} (pid {}), {:.1}–{:.1} s",
            self.value_name(),
            self.command,
            self.pid,
            self.start_s,
            self.end_s
        )
    }
}

/// A frame as flame graphs name it: the function (demangled), or `module+0xoffset`.
pub fn frame_name(f: &Frame) -> String {
    // `;` separates frames and a newline ends the line in the folded format.
    f.name().replace([';', '\n'], ":")
}

/// The folded stack of one row, outermost frame first.
fn folded_stack(s: &Stack) -> String {
    if s.frames.is_empty() {
        return "[stack unavailable]".into();
    }
    s.frames
        .iter()
        .rev()
        .map(frame_name)
        .collect::<Vec<_>>()
        .join(";")
}

/// `stack value` lines for the stacks with a positive value, merged and sorted.
pub fn folded(p: &Profile) -> String {
    let mut lines: std::collections::BTreeMap<String, i64> = Default::default();
    for s in &p.stacks {
        let v = p.value(s);
        if v > 0 {
            *lines.entry(folded_stack(s)).or_default() += v;
        }
    }
    lines
        .into_iter()
        .map(|(k, v)| format!("{k} {v}\n"))
        .collect()
}

/// `stack before after` lines: live bytes at the start of the window and at its end.
pub fn diff_folded(p: &Profile) -> String {
    let mut lines: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for s in &p.stacks {
        if s.before_bytes > 0 || s.after_bytes > 0 {
            let e = lines.entry(folded_stack(s)).or_default();
            e.0 += s.before_bytes.max(0);
            e.1 += s.after_bytes.max(0);
        }
    }
    lines
        .into_iter()
        .map(|(k, (a, b))| format!("{k} {a} {b}\n"))
        .collect()
}

/// An SVG flame graph, titled with the target, the value and the window.
pub fn svg(p: &Profile, out: &mut dyn Write) -> Result<()> {
    let differential = p.what == Some(What::Growth);
    let text = if differential {
        diff_folded(p)
    } else {
        folded(p)
    };
    let total: i64 = p.stacks.iter().map(|s| p.value(s).max(0)).sum();
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = format!("tracer: {}", p.title());
    opt.subtitle = Some(format!(
        "{} stacks, {} bytes in total{}",
        p.stacks.len(),
        crate::report::group(total as u64),
        if differential {
            "; red grew, blue shrank since the last mark"
        } else {
            ""
        }
    ));
    opt.count_name = "bytes".into();
    opt.colors =
        inferno::flamegraph::color::Palette::Basic(inferno::flamegraph::color::BasicPalette::Mem);
    opt.deterministic = true;
    if text.is_empty() {
        // inferno refuses empty input: draw the frame of an empty graph ourselves.
        write!(
            out,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="24" text-anchor="middle">{}</text><text x="600" y="48" text-anchor="middle">nothing to show</text></svg>"#,
            xml_escape(&opt.title)
        )?;
        return Ok(());
    }
    inferno::flamegraph::from_lines(&mut opt, text.lines(), out)
        .context("inferno could not render the flame graph")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[derive(Serialize)]
struct SpeedscopeFile<'a> {
    #[serde(rename = "$schema")]
    schema: &'a str,
    name: String,
    exporter: String,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: u32,
    shared: SpeedscopeShared,
    profiles: Vec<SpeedscopeProfile>,
}

#[derive(Serialize)]
struct SpeedscopeShared {
    frames: Vec<SpeedscopeFrame>,
}

#[derive(Serialize, Clone, PartialEq, Eq, Hash)]
struct SpeedscopeFrame {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
struct SpeedscopeProfile {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: i64,
    #[serde(rename = "endValue")]
    end_value: i64,
    samples: Vec<Vec<usize>>,
    weights: Vec<i64>,
}

/// speedscope's file format: one sampled profile whose weights are bytes.
pub fn speedscope(p: &Profile) -> String {
    let mut frames: Vec<SpeedscopeFrame> = Vec::new();
    let mut index: std::collections::HashMap<SpeedscopeFrame, usize> = Default::default();
    let mut samples = Vec::new();
    let mut weights = Vec::new();
    for s in &p.stacks {
        let v = p.value(s);
        if v <= 0 {
            continue;
        }
        let stack: Vec<usize> = s
            .frames
            .iter()
            .rev()
            .map(|f| {
                let sf = SpeedscopeFrame {
                    name: frame_name(f),
                    file: f.file.clone(),
                    line: f.line,
                };
                *index.entry(sf.clone()).or_insert_with(|| {
                    frames.push(sf);
                    frames.len() - 1
                })
            })
            .collect();
        samples.push(stack);
        weights.push(v);
    }
    let total = weights.iter().sum();
    let file = SpeedscopeFile {
        schema: "https://www.speedscope.app/file-format-schema.json",
        name: format!("tracer: {}", p.title()),
        exporter: format!("tracer {}", p.tracer_version),
        active_profile_index: 0,
        shared: SpeedscopeShared { frames },
        profiles: vec![SpeedscopeProfile {
            kind: "sampled",
            name: p.title(),
            unit: "bytes",
            start_value: 0,
            end_value: total,
            samples,
            weights,
        }],
    };
    serde_json::to_string(&file).expect("serializing plain data cannot fail")
}

/// Writes `p` to `path` in `format`, replacing the file atomically.
pub fn write(p: &Profile, format: Format, path: &Path) -> Result<()> {
    let bytes: Vec<u8> = match format {
        Format::Folded => folded(p).into_bytes(),
        Format::DiffFolded => diff_folded(p).into_bytes(),
        Format::Svg => {
            let mut b = Vec::new();
            svg(p, &mut b)?;
            b
        }
        Format::Pprof => pprof::encode(p)?,
        Format::Speedscope => speedscope(p).into_bytes(),
    };
    crate::output::replace_with(path, &bytes)
        .map_err(|e| anyhow::anyhow!("cannot write the flame file {}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn frame(function: Option<&str>, line: u32, addr: u64, inlined: bool) -> Frame {
        Frame {
            addr,
            function: function.map(str::to_string),
            file: function.map(|_| "/src/leaky.c".to_string()),
            line: function.map(|_| line),
            module: Some("/opt/leaky".into()),
            offset: addr - 0x400000,
            inlined,
            unsymbolized: None,
        }
    }

    /// Two leaking stacks through leak_shared, one with an inlined helper, one unknown frame.
    pub(crate) fn sample() -> Profile {
        Profile {
            what: Some(What::Leaks),
            pid: 42,
            command: "leaky".into(),
            start_s: 0.0,
            end_s: 4.2,
            start_unix_ns: 1_700_000_000_000_000_000,
            stacks: vec![
                Stack {
                    frames: vec![
                        frame(Some("leak_shared"), 75, 0x401100, false),
                        frame(Some("path_a"), 81, 0x401200, false),
                        frame(Some("main"), 166, 0x401300, false),
                    ],
                    inuse_objects: 450,
                    inuse_bytes: 57600,
                    alloc_objects: 450,
                    alloc_bytes: 57600,
                    before_bytes: 0,
                    after_bytes: 57600,
                },
                Stack {
                    frames: vec![
                        frame(Some("fill"), 12, 0x401500, true),
                        frame(Some("leak_fixed"), 51, 0x401500, false),
                        frame(None, 0, 0x401666, false),
                    ],
                    inuse_objects: 900,
                    inuse_bytes: 57600,
                    alloc_objects: 900,
                    alloc_bytes: 57600,
                    before_bytes: 6400,
                    after_bytes: 57600,
                },
                Stack {
                    frames: vec![frame(Some("temp_churn"), 95, 0x401700, false)],
                    inuse_objects: 0,
                    inuse_bytes: 0,
                    alloc_objects: 1000,
                    alloc_bytes: 500_000,
                    before_bytes: 0,
                    after_bytes: 0,
                },
            ],
            mappings: vec![(
                Mapping {
                    start: 0x400000,
                    end: 0x402000,
                    offset: 0,
                    path: "/opt/leaky".into(),
                    open_path: None,
                },
                vec![0xab, 0xcd],
            )],
            tracer_version: "0.1.0".into(),
        }
    }

    #[test]
    fn folded_lines_are_outermost_first_with_values() {
        let text = folded(&sample());
        assert_eq!(
            text,
            "leaky+0x1666;leak_fixed;fill 57600\nmain;path_a;leak_shared 57600\n"
        );
        let mut p = sample();
        p.what = Some(What::Allocs);
        assert!(folded(&p).contains("temp_churn 500000"));
    }

    #[test]
    fn differential_lines_have_before_and_after() {
        let text = diff_folded(&sample());
        assert!(
            text.contains("leaky+0x1666;leak_fixed;fill 6400 57600\n"),
            "{text}"
        );
        assert!(text.contains("main;path_a;leak_shared 0 57600\n"), "{text}");
        assert!(!text.contains("temp_churn"));
    }

    #[test]
    fn frame_names_never_break_the_format() {
        let mut f = frame(Some("operator<<(std::ostream&; int)"), 1, 0x401000, false);
        assert_eq!(frame_name(&f), "operator<<(std::ostream&: int)");
        f.function = None;
        assert_eq!(frame_name(&f), "leaky+0x1000");
        f.module = None;
        assert_eq!(frame_name(&f), "[unknown] 0x401000");
    }

    #[test]
    fn svg_is_titled_and_names_the_frames() {
        let mut out = Vec::new();
        svg(&sample(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("<?xml"), "{}", &text[..100]);
        assert!(text.contains("outstanding bytes of leaking sites of leaky (pid 42)"));
        for f in [
            "leak_shared",
            "path_a",
            "leak_fixed",
            "fill",
            "leaky+0x1666",
        ] {
            assert!(text.contains(f), "{f} not in the SVG");
        }
        assert!(!text.contains("temp_churn"));
        // empty profiles still give a valid SVG
        let mut p = sample();
        p.stacks.clear();
        let mut out = Vec::new();
        svg(&p, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("nothing to show"));
    }

    #[test]
    fn speedscope_file_shares_frames_and_weighs_bytes() {
        let v: serde_json::Value = serde_json::from_str(&speedscope(&sample())).unwrap();
        assert_eq!(
            v["$schema"],
            "https://www.speedscope.app/file-format-schema.json"
        );
        let frames = v["shared"]["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 6);
        let prof = &v["profiles"][0];
        assert_eq!(prof["type"], "sampled");
        assert_eq!(prof["unit"], "bytes");
        assert_eq!(prof["weights"], serde_json::json!([57600, 57600]));
        assert_eq!(prof["endValue"], 115200);
        // samples are outermost first
        let first: Vec<&str> = prof["samples"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                frames[i.as_u64().unwrap() as usize]["name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(first, ["main", "path_a", "leak_shared"]);
    }

    #[test]
    fn formats_follow_the_file_name() {
        let f = |n: &str| Format::from_path(Path::new(n)).ok();
        assert_eq!(f("x.folded"), Some(Format::Folded));
        assert_eq!(f("x.diff.folded"), Some(Format::DiffFolded));
        assert_eq!(f("out/x.SVG"), Some(Format::Svg));
        assert_eq!(f("x.pb.gz"), Some(Format::Pprof));
        assert_eq!(f("x.speedscope.json"), Some(Format::Speedscope));
        assert_eq!(f("x.png"), None);
        let e = Format::from_path(Path::new("x.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--flame-format"), "{e}");
    }

    #[test]
    fn files_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("tracer-flame-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.folded");
        write(&sample(), Format::Folded, &path).unwrap();
        write(&sample(), Format::Folded, &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), folded(&sample()));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        let e = write(
            &sample(),
            Format::Folded,
            Path::new("/nonexistent/dir/x.folded"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/dir/x.folded"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
