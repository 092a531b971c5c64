//! The allocator a process really uses: jemalloc, tcmalloc and mimalloc (preloaded and
//! linked), static glibc and static musl. In each case leaky's leaking sites and bytes must be
//! its truth, and the report must name the allocator it probed.
use std::process::Command;

use tracer_tests::*;

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

/// (name, the library's file in LIB_DIR, the linker flag)
const ALLOCATORS: [(&str, &str, &str); 3] = [
    ("jemalloc", "libjemalloc.so.2", "-ljemalloc"),
    ("tcmalloc", "libtcmalloc_minimal.so.4", "-ltcmalloc_minimal"),
    ("mimalloc", "libmimalloc.so.2", "-lmimalloc"),
];

fn check(run: &Launched, allocator_contains: &str, kind: &str) {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let allocator = fin["allocator"].as_str().unwrap();
    assert!(
        allocator.contains(allocator_contains),
        "allocator {allocator}, expected {allocator_contains}"
    );
    assert_eq!(fin["allocator_kind"], kind, "{allocator}");
    let truth = truth_leaks(&run.stdout);
    assert_eq!(truth.len(), 5, "{}", run.stdout);
    assert_outstanding_is_truth(fin, &truth);
    assert_eq!(fin["lost"]["ring_full_allocs"], 0);
}

#[test]
fn preloaded_allocators() {
    if !privileged("preloaded_allocators") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    for (name, file, _) in ALLOCATORS {
        let lib = format!("{LIB_DIR}/{file}");
        assert!(
            std::path::Path::new(&lib).exists(),
            "{lib} missing: scripts/setup installs Debian's {name}"
        );
        let run = launch_json_env(&[], &[("LD_PRELOAD", &lib)], &leaky, &["2", "0"]);
        check(&run, file, name);
    }
}

#[test]
fn linked_allocators() {
    if !privileged("linked_allocators") {
        return;
    }
    for (name, file, flag) in ALLOCATORS {
        let leaky = victim_with("workloads/leaky.c", &[FP, &[flag]].concat(), name, "");
        check(&launch_json(&[], &leaky, &["2", "0"]), file, name);
    }
}

/// The books of a run balance: every allocation received is freed or still outstanding, and
/// no free was of a block never seen (a free-like function probed twice for one block, or
/// one not probed at all, breaks this).
fn assert_books_balance(fin: &serde_json::Value) {
    let ev = &fin["events"];
    assert_eq!(ev["unknown_frees"], 0, "{ev}");
    assert_eq!(
        ev["received_allocs"].as_u64().unwrap(),
        ev["received_frees"].as_u64().unwrap() + fin["totals"]["live_objects"].as_u64().unwrap(),
        "{ev}"
    );
}

#[test]
fn allocators_own_interfaces_and_sized_frees() {
    if !privileged("allocators_own_interfaces_and_sized_frees") {
        return;
    }
    // mallocx/rallocx/sdallocx/dallocx, mi_malloc/mi_zalloc_aligned/mi_realloc/mi_free_size,
    // tc_malloc/tc_memalign/tc_realloc/tc_free_sized: leaks exact, pairs leave nothing.
    for (name, _, flag) in ALLOCATORS {
        let define = format!("-DUSE_{}", name.to_uppercase());
        let own = victim_with(
            "victims/ownapi.c",
            &[FP, &[define.as_str(), flag]].concat(),
            name,
            "",
        );
        let run = launch_json(&[], &own, &["50"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let fin = &run.final_report;
        assert_eq!(fin["allocator_kind"], name);
        let truth = truth_leaks(&run.stdout);
        // mimalloc's run adds its heaps: one kept (2 leaks), one deleted per round (its block
        // lives on), one destroyed per round (nothing left of it).
        let heaps = name == "mimalloc";
        assert_eq!(truth.len(), if heaps { 6 } else { 3 }, "{}", run.stdout);
        assert_outstanding_is_truth(fin, &truth);
        // Both frees were seen (churn leaves nothing), and each once (no unknown frees).
        let live = by_site(fin, "live_bytes");
        assert!(!live.contains_key("churn"), "{name}");
        assert_eq!(fin["events"]["unknown_frees"], 0, "{name}");
        if heaps {
            // Destroyed heaps leave nothing: neither their blocks nor the heaps themselves.
            // Of the heaps' own blocks (allocated inside mi_heap_new) only the kept one lives.
            assert!(!live.contains_key("heap_destroyed"), "{live:?}");
            let objects = by_site(fin, "live_objects");
            let heaps_left: i64 = objects
                .iter()
                .filter(|(s, _)| s.starts_with("mi_heap"))
                .map(|(_, n)| n)
                .sum();
            assert_eq!(heaps_left, 1, "{objects:?}");
        }
    }
}

#[test]
fn cxx_new_and_sized_delete_on_each_allocator() {
    if !privileged("cxx_new_and_sized_delete_on_each_allocator") {
        return;
    }
    // jemalloc, tcmalloc and mimalloc define their own operator new and (sized) delete, which
    // do not go through malloc and free: each is probed, and a delete that calls another
    // free-like function counts once.
    for (name, _, flag) in ALLOCATORS {
        let widgets = victim_with("victims/widgets.cpp", &[FP, &[flag]].concat(), name, "");
        let run = launch_json(&[], &widgets, &["50"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let fin = &run.final_report;
        assert_eq!(fin["allocator_kind"], name);
        let live = by_site(fin, "live_bytes");
        for (site, bytes) in [
            ("shop::Widget::raw_buffer(unsigned long)", 50 * 24),
            ("shop::Widget::make(int)", 50 * 48),
            ("shop::Widget::make_nothrow(int)", 50 * 48),
            ("shop::Widget::ids(int)", 50 * 32),
        ] {
            assert_eq!(
                live.get(site).copied(),
                Some(bytes),
                "{name} {site}: {live:?}"
            );
        }
        assert!(
            !live.contains_key("shop::Widget::scratch()"),
            "{name}: {live:?}"
        );
        assert_books_balance(fin);
    }
}

#[test]
fn static_binaries_glibc_and_musl() {
    if !privileged("static_binaries_glibc_and_musl") {
        return;
    }
    let glibc = victim_with(
        "workloads/leaky.c",
        &[FP, &["-static"]].concat(),
        "static-glibc",
        "",
    );
    check(
        &launch_json(&[], &glibc, &["2", "0"]),
        "leaky-static-glibc",
        "glibc",
    );
    let musl = victim_with(
        "workloads/leaky.c",
        &[FP, &["-static"]].concat(),
        "static-musl",
        "musl-gcc",
    );
    check(
        &launch_json(&[], &musl, &["2", "0"]),
        "leaky-static-musl",
        "musl",
    );
}

#[test]
fn attached_to_a_process_with_a_preloaded_allocator() {
    if !privileged("attached_to_a_process_with_a_preloaded_allocator") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let leaky = victim("workloads/leaky.c", FP);
    let lib = format!("{LIB_DIR}/libjemalloc.so.2");
    let mut child = Command::new(&leaky)
        .args(["2", "1.5"])
        .env("LD_PRELOAD", &lib)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let t =
        run(Command::new(tracer()).args(["--format", "json", "--pid", &child.id().to_string()]));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    child.wait().unwrap();
    let fin = reports(&stdout(&t))
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .unwrap_or_else(|| panic!("no final report: {}", stderr(&t)));
    assert!(
        fin["allocator"].as_str().unwrap().contains("jemalloc"),
        "{}",
        fin["allocator"]
    );
    assert_outstanding_is_truth(&fin, &truth_leaks(&rest));
}

#[test]
fn an_exec_brings_its_new_allocator_into_the_probes() {
    if !privileged("an_exec_brings_its_new_allocator_into_the_probes") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let lib = format!("{LIB_DIR}/libjemalloc.so.2");
    // `env` (glibc) execs leaky with jemalloc preloaded: held at the exec, the new allocator is
    // probed before leaky's first allocation, and env's own books are closed.
    let run = run(Command::new(tracer())
        .args(["--format", "json", "--", "env"])
        .arg(format!("LD_PRELOAD={lib}"))
        .arg(&leaky)
        .args(["2", "0"]));
    let (so, se) = (stdout(&run), stderr(&run));
    assert!(run.status.success(), "{se}");
    let fin = reports(&so)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .unwrap();
    assert!(
        fin["allocator"].as_str().unwrap().contains("jemalloc"),
        "{}",
        fin["allocator"]
    );
    assert_eq!(fin["command"], "leaky-fp");
    assert_outstanding_is_truth(&fin, &truth_leaks(&so));
    assert!(se.contains("exec'd: probing its allocator"), "{se}");
    // A shell that execs the program: same books as a direct launch.
    let run = launch_json(
        &[],
        std::path::Path::new("/bin/sh"),
        &["-c", &format!("exec {} 2 0", leaky.display())],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_outstanding_is_truth(&run.final_report, &truth_leaks(&run.stdout));
}

#[test]
fn every_process_covers_a_program_on_another_allocator() {
    if !privileged("every_process_covers_a_program_on_another_allocator") {
        return;
    }
    let leaky = victim_with(
        "workloads/leaky.c",
        &[FP, &["-ljemalloc"]].concat(),
        "jemalloc",
        "",
    );
    let t = start_tracer(&["-i", "1", "-d", "6"]);
    // No idle start: the system's jemalloc was probed up front, so the books are exact from
    // the program's first call (probed at its exec, the first milliseconds were missed).
    let child = Command::new(&leaky)
        .args(["2", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let truth = truth_leaks(&stdout(&child.wait_with_output().unwrap()));
    let (reps, rest) = finish(t);
    assert!(rest.contains("also probed up front"), "{rest}");
    assert!(rest.contains("libjemalloc"), "{rest}");
    let fin = reps.last().unwrap();
    let p = fin["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not in {fin}"));
    assert!(
        p["allocator"].as_str().unwrap().contains("jemalloc"),
        "{rest}\n{p}"
    );
    assert_outstanding_is_truth(p, &truth);
}

/// Builds a Go program from tests/victims/go/NAME (cgo or not) with Debian's Go.
fn go_victim(name: &str, cgo: bool) -> std::path::PathBuf {
    let src = root().join("tests/victims/go").join(name);
    let out = root()
        .join("target/test-victims")
        .join(format!("go-{name}"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("CGO_ENABLED", if cgo { "1" } else { "0" })
        .env("GOFLAGS", "-mod=mod")
        // The C side of cgo with frame pointers, so the stack walks on into the Go frames.
        .env("CGO_CFLAGS", "-g -O2 -fno-omit-frame-pointer")
        .status()
        .expect("go (scripts/setup installs golang-go)");
    assert!(st.success(), "go build {name}");
    out
}

#[test]
fn go_programs_are_explained() {
    if !privileged("go_programs_are_explained") {
        return;
    }
    // Pure Go: no malloc anywhere; the mappings its runtime grows the heap by are traced, and
    // the user is told that is all.
    let pure = go_victim("pure", false);
    let traced = launch_json(&["-n", "100"], &pure, &[]);
    assert_eq!(traced.code, Some(0), "{}", traced.stderr);
    assert!(
        traced
            .stderr
            .contains("is a Go program without the C library"),
        "{}",
        traced.stderr
    );
    let fin = &traced.final_report;
    assert_eq!(fin["allocator_kind"], "go");
    let sites = fin["sites"].as_array().unwrap();
    assert!(!sites.is_empty(), "{fin}");
    assert!(sites.iter().all(|s| s["category"] == "mmap"), "{fin}");
    assert!(
        sites
            .iter()
            .any(|s| functions(s).iter().any(|f| f == "runtime.mallocgc")),
        "{fin}"
    );
    // With --no-mmap there is nothing to trace: a clear error.
    let o = run(Command::new(tracer()).args(["--no-mmap", "--"]).arg(&pure));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("with --no-mmap there is nothing"), "{e}");
    // cgo: the C allocations are traced, and the user is told the Go heap is not.
    let cgo = go_victim("cgo", true);
    // The Go runtime's own heap arenas show as mappings: room for them all in the report.
    let run = launch_json(&["-n", "100"], &cgo, &["30"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is a Go program: the Go runtime manages Go's heap itself"),
        "{}",
        run.stderr
    );
    let fin = &run.final_report;
    let c_leak = fin["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["live_objects"] == 30 && s["live_bytes"] == 30 * 72)
        .unwrap_or_else(|| panic!("no site with the 30 C.malloc(72) blocks: {fin}"));
    assert!(
        functions(c_leak).iter().any(|f| f == "main.leakC"),
        "{c_leak}"
    );
    assert_eq!(c_leak["category"], "heap");
    // Go's heap grows by mappings its runtime makes, which are seen, with their Go stacks.
    assert!(
        fin["sites"].as_array().unwrap().iter().any(
            |s| s["category"] == "mmap" && functions(s).iter().any(|f| f == "runtime.mallocgc")
        ),
        "{fin}"
    );
}

#[test]
fn a_caught_bad_alloc_is_caught_under_tracer_too() {
    if !privileged("a_caught_bad_alloc_is_caught_under_tracer_too") {
        return;
    }
    // operator new throws bad_alloc and the program catches it: the kernel's uretprobe
    // trampoline over new's return address would stop the C++ unwinder (the program would
    // terminate). The program must behave as it does without tracer, with exact books.
    let mut builds = vec![("glibc", victim("victims/throws.cpp", FP))];
    for (name, _, flag) in ALLOCATORS {
        builds.push((
            name,
            victim_with("victims/throws.cpp", &[FP, &[flag]].concat(), name, ""),
        ));
    }
    for (name, throws) in builds {
        let alone = Command::new(&throws).arg("20").output().unwrap();
        let run = launch_json(&[], &throws, &["20"]);
        // tracer exits as a shell does: 128 + the signal that killed the program.
        use std::os::unix::process::ExitStatusExt;
        let alone_code = alone
            .status
            .code()
            .or_else(|| alone.status.signal().map(|s| 128 + s));
        assert_eq!(run.code, alone_code, "{name}: {}", run.stderr);
        // What the program printed (tracer's JSON reports aside).
        let said: Vec<&str> = run.stdout.lines().filter(|l| !l.starts_with('{')).collect();
        let alone_said = String::from_utf8_lossy(&alone.stdout);
        assert_eq!(
            said,
            alone_said.lines().collect::<Vec<_>>(),
            "{name}: {}",
            run.stderr
        );
        if alone.status.success() {
            // 60 throws caught, and the blocks leaked after each (deeper than the throw) all
            // seen.
            assert!(run.stdout.contains("caught 60 of 60"), "{name}");
            let ev = &run.final_report["events"];
            if name == "glibc" {
                // libstdc++'s new is probed at entry only: its malloc returned NULL (a failed
                // call) before the throw, and no trampoline was ever in its frame.
                assert_eq!(ev["thrown"], 0, "{name}: {ev}");
                assert!(ev["failed"].as_u64().unwrap() >= 60, "{name}: {ev}");
            } else {
                // An allocator's own new is seen returning at its `ret`s: the throw ends
                // the call, and no return probe was ever in its frame.
                assert_eq!(ev["thrown"], 60, "{name}: {ev}");
            }
            // Each exception object was allocated inside the throwing new (nested, not
            // recorded) and freed after the catch: the only unknown frees there can be.
            assert!(ev["unknown_frees"].as_u64().unwrap() <= 60, "{name}: {ev}");
            assert_outstanding_is_truth(&run.final_report, &truth_leaks(&run.stdout));
            // Sampled: the entries are not uprobe sessions there either (a sampled call's
            // return probe would be in the thrower's frame).
            let sampled = launch_json(&["--sample-rate", "4K"], &throws, &["20"]);
            assert_eq!(sampled.code, alone_code, "{name}: {}", sampled.stderr);
            assert!(sampled.stdout.contains("caught 60 of 60"), "{name}");
        } else {
            // mimalloc's C build aborts in a failing new, with or without tracer.
            assert_eq!(name, "mimalloc");
        }
    }
}
