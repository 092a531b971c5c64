//! Whole stacks through code built without frame pointers: the unwind tables (--unwind auto).
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use serde_json::Value;
use tracer_tests::*;

/// gcc's default at -O2 on x86-64: no frame pointers.
const NOFP: &[&str] = &["-O2", "-g"];

fn sites(fin: &Value) -> &Vec<Value> {
    fin["sites"].as_array().expect("sites")
}

/// The functions of a stack up to `main`, which must be there, every one named.
fn named_to_main(site: &Value) -> Vec<String> {
    let f = functions(site);
    let main = f
        .iter()
        .position(|n| n == "main")
        .unwrap_or_else(|| panic!("no main in {f:?}: {site}"));
    let upto = f[..=main].to_vec();
    assert!(upto.iter().all(|n| !n.is_empty()), "unnamed frame: {f:?}");
    upto
}

#[test]
fn leaky_without_frame_pointers_has_exact_sites_and_whole_stacks() {
    if !privileged("leaky_without_frame_pointers_has_exact_sites_and_whole_stacks") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let run = launch_json(&[], &leaky, &["2", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let truth = truth_leaks(&run.stdout);
    assert_eq!(truth.len(), 5, "{}", run.stdout);
    let fin = &run.final_report;
    assert_outstanding_is_truth(fin, &truth);
    // One row per site: leak_shared's two callers apart, no garbage frames splitting a site.
    let leak_rows: Vec<&Value> = sites(fin)
        .iter()
        .filter(|s| truth.contains_key(&site_name(s)))
        .collect();
    assert_eq!(leak_rows.len(), 5, "{fin}");
    for s in &leak_rows {
        let f = named_to_main(s);
        assert!(s.get("stack_cut").is_none(), "{s}");
        if f[0] == "leak_shared" {
            assert!(f[1] == "path_a" || f[1] == "path_b", "{f:?}");
            assert_eq!(f[2], "main", "{f:?}");
        } else {
            assert_eq!(f[1], "main", "{f:?}");
        }
        // Through the C library's start code to the program's entry.
        assert_eq!(
            functions(s).last().map(String::as_str),
            Some("_start"),
            "{s}"
        );
    }
    let u = &fin["unwind"];
    assert!(u["files"].as_u64().unwrap() >= 2, "{u}");
    assert!(u["rows"].as_u64().unwrap() > 1000, "{u}");
    // Launched: the tables were built before the program ran.
    assert_eq!(fin["events"]["fp_fallback"], 0, "{}", fin["events"]);
}

#[test]
fn frame_pointers_only_loses_the_callers_above_the_first_frame() {
    if !privileged("frame_pointers_only_loses_the_callers_above_the_first_frame") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let run = launch_json(&["--unwind", "fp"], &leaky, &["2", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let truth = truth_leaks(&run.stdout);
    let live = by_site(fin, "live_bytes");
    // The allocator's caller is still right, so the bytes per first frame are exact...
    for site in ["leak_fixed", "leak_calloc", "leak_realloc_grow"] {
        assert_eq!(
            live.get(site).copied(),
            Some(truth[site].1 as i64),
            "{site}: {live:?}"
        );
    }
    let shared: i64 = live
        .iter()
        .filter(|(k, _)| k.starts_with("leak_shared"))
        .map(|(_, v)| v)
        .sum();
    let want = truth["leak_shared<-path_a"].1 + truth["leak_shared<-path_b"].1;
    assert_eq!(shared, want as i64, "{live:?}");
    // ...but the frames above it are lost: leak_shared's two callers cannot be told apart.
    assert!(
        !(live.contains_key("leak_shared<-path_a") && live.contains_key("leak_shared<-path_b")),
        "{live:?}"
    );
    assert!(fin.get("unwind").is_none(), "{fin}");
}

#[test]
fn cpp_containers_without_frame_pointers_are_whole_through_libstdcxx() {
    if !privileged("cpp_containers_without_frame_pointers_are_whole_through_libstdcxx") {
        return;
    }
    let prog = victim("victims/containers.cpp", NOFP);
    let run = launch_json(&[], &prog, &["1000"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let truth = truth_leaks(&run.stdout);
    assert_eq!(truth.len(), 3, "{}", run.stdout);
    let fin = &run.final_report;
    for (func, &(objects, bytes)) in &truth {
        let with: Vec<&Value> = sites(fin)
            .iter()
            .filter(|s| functions(s).contains(func))
            .collect();
        assert_eq!(with.len(), 1, "{func}: {with:?}");
        let s = with[0];
        assert_eq!(s["live_objects"].as_u64(), Some(objects), "{func}: {s}");
        assert_eq!(s["live_bytes"].as_u64(), Some(bytes), "{func}: {s}");
        let f = named_to_main(s);
        let at = f.iter().position(|n| n == func).unwrap();
        // The program's own frames between its function and main.
        let want: &[&str] = match func.as_str() {
            "store::fill_index(int)" => &["main"],
            _ => &["work(int)", "main"],
        };
        assert_eq!(&f[at + 1..], want, "{func}: {f:?}");
    }
    // std::string grows inside libstdc++ (no frame pointers there): its frames are walked.
    let text = sites(fin)
        .iter()
        .find(|s| functions(s).iter().any(|f| f == "store::grow_text(int)"))
        .unwrap();
    let in_libstdcxx = text["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["module"].as_str().unwrap_or("").contains("libstdc++"))
        .count();
    assert!(in_libstdcxx >= 1, "{text}");
}

/// Starts `victim`, attaches `tracer --pid` once it printed its first line, and traces it until
/// it exits: the final report and the rest of the victim's output.
fn attached_until_exit(victim: &mut Command) -> (Value, String) {
    let mut child = victim.stdout(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let out =
        run(Command::new(tracer()).args(["--pid", &child.id().to_string(), "--format", "json"]));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    child.wait().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{se}");
    let fin = reports(&so)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .expect("a final report");
    (fin, rest)
}

#[test]
fn attached_to_a_running_program_its_stacks_are_whole_from_the_first() {
    if !privileged("attached_to_a_running_program_its_stacks_are_whole_from_the_first") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let (fin, rest) = attached_until_exit(Command::new(&leaky).args(["2", "1"]));
    // The code it had mapped got its tables before the probes went on.
    assert_eq!(fin["events"]["fp_fallback"], 0, "{}", fin["events"]);
    let truth = truth_leaks(&rest);
    assert_outstanding_is_truth(&fin, &truth);
    for s in sites(&fin)
        .iter()
        .filter(|s| truth.contains_key(&site_name(s)))
    {
        named_to_main(s);
        assert!(s.get("stack_cut").is_none(), "{s}");
    }
}

#[test]
fn a_library_loaded_after_attaching_gets_its_table() {
    if !privileged("a_library_loaded_after_attaching_gets_its_table") {
        return;
    }
    let lib = victim_with(
        "victims/plugin.c",
        &["-O2", "-g", "-DPLUGIN", "-shared", "-fPIC"],
        "so-nofp",
        "",
    );
    let prog = victim_with("victims/plugin.c", &["-O2", "-g", "-ldl"], "nofp", "");
    let (fin, rest) = attached_until_exit(Command::new(&prog).arg(&lib).args(["1500", "400"]));
    let truth = truth_leaks(&rest);
    let (blocks, bytes) = truth["plugin_alloc"];
    let rows: Vec<&Value> = sites(&fin)
        .iter()
        .filter(|s| site_name(s) == "plugin_alloc")
        .collect();
    // Every block counted, whichever way its stack was walked.
    let sum = |k: &str| rows.iter().map(|s| s[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (sum("live_objects"), sum("live_bytes")),
        (blocks, bytes),
        "{rows:?}"
    );
    // Its table is asked for when the loader maps it; stacks that meet it before the table
    // is in place (the first calls, a millisecond or so) are walked by frame pointers, and
    // counted: a row without the whole stack comes with a count.
    let whole_rows = rows
        .iter()
        .filter(|s| functions(s).iter().any(|f| f == "main"))
        .count();
    if whole_rows < rows.len() {
        assert!(
            fin["events"]["fp_fallback"].as_u64().unwrap() > 0,
            "{}: {rows:?}",
            fin["events"]
        );
    }
    // Then whole: the library's frames, the program's, main.
    let whole = rows
        .iter()
        .find(|s| functions(s).iter().any(|f| f == "main"))
        .unwrap_or_else(|| panic!("no whole stack: {rows:?}"));
    let f = named_to_main(whole);
    assert_eq!(
        f,
        ["plugin_alloc", "plugin_work", "run_plugin", "main"],
        "{whole}"
    );
    // Most blocks have the whole stack.
    assert!(
        whole["live_objects"].as_u64().unwrap() > blocks / 2,
        "{rows:?}"
    );
}

/// A physical frame as both tools can name it whatever symbols there are: the file's name and
/// the offset in it of the call's last byte (a return address − 1, as valgrind shows callers).
type Frame = (String, u64);

/// Bytes outstanding at exit and their stacks (innermost first, below the allocator).
type Stacks = Vec<(u64, Vec<Frame>)>;

/// The file name of a path.
fn base(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// Inlined frames share their caller's address: one physical frame each.
fn physical(frames: impl IntoIterator<Item = Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for f in frames {
        if out.last() != Some(&f) {
            out.push(f);
        }
    }
    out
}

/// The stacks of the final report's heap blocks (pseudo-frames left out).
fn tracer_stacks(fin: &Value) -> Stacks {
    sites(fin)
        .iter()
        .filter(|s| s["category"] == "heap")
        .map(|s| {
            let frames = s["frames"].as_array().unwrap().iter().filter_map(|f| {
                let off = f["offset"].as_str()?.strip_prefix("0x")?;
                let off = u64::from_str_radix(off, 16).ok()?;
                Some((base(f["module"].as_str()?), off - 1))
            });
            (s["live_bytes"].as_u64().unwrap(), physical(frames))
        })
        .collect()
}

/// The text between `<tag>` and `</tag>` in `s`, from `from` on: (text, end).
fn xml_field<'a>(s: &'a str, tag: &str, from: usize) -> Option<(&'a str, usize)> {
    let open = format!("<{tag}>");
    let start = s[from..].find(&open)? + from + open.len();
    let end = s[start..].find(&format!("</{tag}>"))? + start;
    Some((&s[start..end], end))
}

/// valgrind's leak records at exit (every kind) from its XML report, their frames turned into
/// file offsets by the memory map the program wrote of itself under valgrind (`maps`, a
/// `/proc/PID/maps` copy: valgrind runs the program at the addresses it reports).
fn valgrind_stacks(xml: &str, maps: &str) -> Stacks {
    let code: Vec<(u64, u64, u64, String)> = maps
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 6 || !w[1].contains('x') {
                return None;
            }
            let (a, b) = w[0].split_once('-')?;
            let hex = |v: &str| u64::from_str_radix(v, 16).ok();
            Some((hex(a)?, hex(b)?, hex(w[2])?, base(w[5])))
        })
        .collect();
    let mut out = Vec::new();
    for record in xml.split("<error>").skip(1) {
        let Some((bytes, _)) = xml_field(record, "leakedbytes", 0) else {
            continue;
        };
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some((frame, end)) = xml_field(record, "frame", at) {
            at = end;
            let ip = xml_field(frame, "ip", 0)
                .and_then(|(ip, _)| u64::from_str_radix(ip.trim_start_matches("0x"), 16).ok())
                .expect("a frame's ip");
            let obj = xml_field(frame, "obj", 0).map(|(o, _)| o).unwrap_or("");
            // valgrind's own allocator functions come first.
            if frames.is_empty() && obj.contains("vgpreload") {
                continue;
            }
            frames.push(
                match code.iter().find(|(a, b, _, _)| (*a..*b).contains(&ip)) {
                    Some((a, _, off, name)) => (name.clone(), ip - a + off),
                    None => ("?".to_string(), ip),
                },
            );
        }
        out.push((bytes.parse().unwrap(), physical(frames)));
    }
    out
}

/// Of valgrind's bytes, those whose first `depth` frames below the allocator are the same in
/// tracer's report: per stack prefix, the smaller of the two tools' bytes. (agreeing, total)
fn agreement(ours: &Stacks, theirs: &Stacks, depth: usize) -> (u64, u64) {
    let by_prefix = |s: &Stacks| {
        let mut m: std::collections::HashMap<Vec<Frame>, u64> = Default::default();
        for (bytes, frames) in s {
            let k = frames.iter().take(depth).cloned().collect();
            *m.entry(k).or_default() += bytes;
        }
        m
    };
    let (ours, theirs) = (by_prefix(ours), by_prefix(theirs));
    let total = theirs.values().sum();
    let agree = theirs
        .iter()
        .map(|(k, b)| (*b).min(ours.get(k).copied().unwrap_or(0)))
        .sum();
    (agree, total)
}

/// Runs `program args` under valgrind's leak check (the program writes its own memory map to
/// the path in MAPS_OUT, or to its last argument when `maps_as_arg`): the leak records' stacks.
fn under_valgrind(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    maps_as_arg: bool,
    code: i32,
) -> Stacks {
    let dir = std::env::temp_dir().join(format!(
        "tracer-vg-{}-{}",
        std::process::id(),
        base(program)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (xml, maps) = (dir.join("leaks.xml"), dir.join("maps"));
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--leak-check=full",
        "--show-leak-kinds=all",
        "--num-callers=40",
    ])
    .arg("--xml=yes")
    .arg(format!("--xml-file={}", xml.display()))
    .arg(program)
    .args(args)
    .envs(env.iter().copied())
    .env("MAPS_OUT", &maps)
    .stdout(Stdio::null());
    if maps_as_arg {
        cmd.arg(&maps);
    }
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(code), "valgrind: {}", stderr(&o));
    let stacks = valgrind_stacks(
        &std::fs::read_to_string(&xml).unwrap(),
        &std::fs::read_to_string(&maps).expect("the program's map under valgrind"),
    );
    std::fs::remove_dir_all(&dir).ok();
    stacks
}

/// Asserts that at least 90 % of valgrind's bytes agree four frames deep, and that both tools
/// count about the same bytes; returns the agreement at depths 1, 2 and 4 (in per mille).
fn compare(what: &str, fin: &Value, theirs: &Stacks) -> [u64; 3] {
    let ours = tracer_stacks(fin);
    let (total_ours, total_theirs): (u64, u64) = (
        ours.iter().map(|(b, _)| b).sum(),
        theirs.iter().map(|(b, _)| b).sum(),
    );
    assert!(
        total_theirs > 100_000,
        "{what}: valgrind counted {total_theirs} B"
    );
    // The C library's own buffers, which valgrind frees at exit (__libc_freeres), are the
    // difference: small.
    assert!(
        total_ours.abs_diff(total_theirs) * 20 <= total_theirs,
        "{what}: tracer {total_ours} B, valgrind {total_theirs} B"
    );
    let per_mille = |depth| {
        let (agree, total) = agreement(&ours, theirs, depth);
        agree * 1000 / total
    };
    [per_mille(1), per_mille(2), per_mille(4)]
}

/// Debian's python3 (objects from malloc), leaving native blocks through ctypes and libffi and
/// its own objects at exit: four frames below the allocator agree with valgrind's for at least
/// 90 % of the bytes outstanding at exit.
#[test]
fn python_stacks_agree_with_valgrind_four_frames_deep() {
    if !privileged("python_stacks_agree_with_valgrind_four_frames_deep") {
        return;
    }
    let python = "/usr/bin/python3";
    let script = root().join("tests/victims/pystacks.py");
    let script = script.to_str().unwrap();
    let env = [("PYTHONMALLOC", "malloc")];
    let run = launch_json_env(
        &["-n", "100000", "-i", "60"],
        &env,
        python.as_ref(),
        &[script],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let theirs = under_valgrind(python, &[script], &env, true, 0);
    let [one, two, four] = compare("python3", &run.final_report, &theirs);
    assert!(
        four >= 900,
        "python3: {one}‰ {two}‰ {four}‰ agree 1, 2, 4 frames deep"
    );
}

/// Debian's sqlite3 running a query file (tests/victims/queries.sql) that leaves an in-memory
/// database allocated: four frames below the allocator agree with valgrind's for at least
/// 90 % of the bytes; by frame pointers alone (sqlite has none) only the first does.
#[test]
fn sqlite_stacks_agree_with_valgrind_four_frames_deep() {
    if !privileged("sqlite_stacks_agree_with_valgrind_four_frames_deep") {
        return;
    }
    let sqlite = "/usr/bin/sqlite3";
    let queries = root().join("tests/victims/queries.sql");
    let read = format!(".read {}", queries.display());
    let args = [":memory:", read.as_str()];
    let theirs = under_valgrind(sqlite, &args, &[], false, 3);
    let run = launch_json(&["-n", "100000", "-i", "60"], sqlite.as_ref(), &args);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    let [one, two, four] = compare("sqlite3", &run.final_report, &theirs);
    assert!(
        four >= 900,
        "sqlite3: {one}‰ {two}‰ {four}‰ agree 1, 2, 4 frames deep"
    );
    // The comparison tells walks apart: frame pointers alone get the first frame only.
    let fp = launch_json(
        &["--unwind", "fp", "-n", "100000", "-i", "60"],
        sqlite.as_ref(),
        &args,
    );
    let [one, two, _] = compare("sqlite3 --unwind fp", &fp.final_report, &theirs);
    assert!(
        one >= 900 && two < 500,
        "--unwind fp: {one}‰ {two}‰ agree 1, 2 frames deep"
    );
}

/// Tables are kept on disk by build id (root's directory only): a second run reads every table
/// the first built, and its stacks are the same; a directory others may write to is refused.
#[test]
fn tables_kept_on_disk_make_the_next_run_warm() {
    if !privileged("tables_kept_on_disk_make_the_next_run_warm") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let dir = std::path::PathBuf::from(format!("/var/cache/tracer-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let flags = ["--unwind-cache", dir.to_str().unwrap()];
    let first = launch_json(&flags, &leaky, &["1", "0"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let u1 = &first.final_report["unwind"];
    assert_eq!(u1["cached"], 0, "{u1}");
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".rows"))
        })
        .count() as u64;
    assert_eq!(kept, u1["files"].as_u64().unwrap(), "{u1}");
    let second = launch_json(&flags, &leaky, &["1", "0"]);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let u2 = &second.final_report["unwind"];
    assert_eq!(u2["cached"], u1["files"], "{u2}");
    assert_eq!(u2["rows"], u1["rows"], "{u2}");
    let stacks = |fin: &Value| -> std::collections::BTreeSet<Vec<String>> {
        sites(fin).iter().map(functions).collect()
    };
    assert_eq!(stacks(&first.final_report), stacks(&second.final_report));
    std::fs::remove_dir_all(&dir).unwrap();

    // A shared directory (the temporary one's parent may be written by anyone) is refused.
    let shared = std::env::temp_dir().join(format!("tracer-e2e-cache-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let run = launch_json(
        &["--unwind-cache", shared.to_str().unwrap()],
        &leaky,
        &["1", "0"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("unwind tables are not kept between runs"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    std::fs::remove_dir_all(&shared).ok();
}

/// The program's own memory mappings (tests/victims/maps.c built without frame pointers),
/// seen at the C library's wrappers' return: their stacks are walked by the tables too, whole
/// to `main`; by frame pointers alone only the first frame is left.
#[test]
fn mappings_without_frame_pointers_have_whole_stacks() {
    if !privileged("mappings_without_frame_pointers_have_whole_stacks") {
        return;
    }
    let maps = victim("victims/maps.c", NOFP);
    let mapped = |flags: &[&str]| -> Vec<Vec<String>> {
        let run = launch_json(flags, &maps, &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let mut v: Vec<Vec<String>> = sites(&run.final_report)
            .iter()
            .filter(|s| s["category"] == "mmap")
            .map(functions)
            .collect();
        v.sort();
        v
    };
    let whole = mapped(&[]);
    let leaves: Vec<&str> = whole.iter().map(|f| f[0].as_str()).collect();
    assert_eq!(leaves, ["map_cut", "map_grow", "map_leak"], "{whole:?}");
    for f in &whole {
        assert_eq!(&f[1], "main", "{whole:?}");
    }
    let fp = mapped(&["--unwind", "fp"]);
    assert!(fp.iter().all(|f| f.len() == 1), "{fp:?}");
}
