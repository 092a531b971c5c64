#!/usr/bin/env python3
"""What the unwind tables cost: rows, kernel memory, build time and tracer's memory, per program.

For each program, `tracer --unwind dwarf` launches it (every file it maps before it runs gets
its table up front, built from its .eh_frame; `dwarf` so files with frame pointers get rows
too) and the final report's `unwind` gives the files, rows, the kernel memory of the rows
and the time spent building them. The same program under `--unwind fp` is the baseline for
tracer's peak RSS in the same run (wait4's ru_maxrss: tracer's, or its command's when that
is larger). Each `dwarf` run starts with an empty table cache (--unwind-cache, a fresh
directory), then runs again warm: the tables read from the cache, and the milliseconds that
took.

Programs: the C library alone (`/bin/true`), libstdc++ (tests/victims/containers.cpp, built
here), Debian's python3, and a large one: the Rust compiler this project builds with (rustc's
librustc_driver, 153 MB with LLVM inside, 6 MB of .eh_frame).

Needs root and a release build. usage: bench/unwind.py
"""
import json, os, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACER = os.environ.get("TRACER", os.path.join(ROOT, "target/release/tracer"))

if os.geteuid() != 0:
    sys.exit("bench/unwind.py loads eBPF: run it as root")
if not os.access(TRACER, os.X_OK):
    sys.exit("no %s: cargo build --release first" % TRACER)
work = tempfile.mkdtemp(prefix="tracer-unwind-")
containers = os.path.join(work, "containers")
subprocess.run(["g++", "-O2", "-g", "-o", containers,
                os.path.join(ROOT, "tests/victims/containers.cpp")], check=True)

programs = [
    ("libc (/bin/true)", ["/bin/true"]),
    ("libstdc++ (containers)", [containers, "10"]),
    ("python3", [shutil.which("python3") or "python3", "-c", "pass"]),
]
sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True)
if sysroot.returncode == 0:
    # The compiler itself, not rustup's proxy (which would exec it).
    rustc = os.path.join(sysroot.stdout.strip(), "bin", "rustc")
    programs.append(("rustc (librustc_driver)", [rustc, "--version"]))


def traced(how, argv, cache="none"):
    """The final report and tracer's peak RSS (KiB) of one launch."""
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        p = subprocess.Popen([TRACER, "--format", "json", "--unwind", how,
                              "--unwind-cache", cache, "--"] + argv,
                             stdout=so, stderr=se, text=True)
        _, _, usage = os.wait4(p.pid, 0)
        so.seek(0)
        se.seek(0)
        finals = [json.loads(l) for l in so.read().splitlines() if l.startswith("{")]
        finals = [r for r in finals if r.get("kind") == "final"]
        if not finals:
            sys.exit("%s: no final report: %s" % (argv[0], se.read()[-300:]))
    return finals[-1], usage.ru_maxrss


print("%-24s %6s %9s %10s %9s %8s %8s %12s %12s" % (
    "program", "files", "rows", "table KiB", "build ms", "cached", "warm ms", "RSS fp MiB",
    "RSS dwarf MiB"))
for name, argv in programs:
    # The cache must be root's, parents included: under /var/cache, not /tmp.
    cache = tempfile.mkdtemp(prefix="tracer-bench-", dir="/var/cache")
    fp, rss_fp = traced("fp", argv)
    dw, rss_dw = traced("dwarf", argv, cache)
    warm, _ = traced("dwarf", argv, cache)
    shutil.rmtree(cache)
    u, w = dw.get("unwind") or {}, warm.get("unwind") or {}
    show = lambda k: "%.1f" % (k / 1024)
    print("%-24s %6d %9d %10.0f %9.1f %8d %8.1f %12s %12s" % (
        name, u.get("files", 0), u.get("rows", 0), u.get("table_bytes", 0) / 1024,
        u.get("build_ms", 0.0), w.get("cached", 0), w.get("build_ms", 0.0), show(rss_fp),
        show(rss_dw)))
shutil.rmtree(work)
