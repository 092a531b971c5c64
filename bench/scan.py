#!/usr/bin/env python3
"""The reachability scan's cost on a large heap: bytes read per second, and how long the
target is held still under --stop-for-scan.

tests/victims/bigheap.c allocates HEAP_MIB MiB (default 1024) in BLOCK-byte blocks (default
1024), all on one list, once tracer is attached (so every block is on record), then ticks
every millisecond and prints the longest tick: its own measure of how long it was held. For
each mode (the scan beside the running target, then --stop-for-scan) a fresh bigheap is traced
with `--pid`, a mark (SIGUSR1) takes the scan, and the report's `scans` gives the bytes read,
the time and the pause. tracer's RSS before and after the scan is printed too.

Needs root and a release build. usage: bench/scan.py   env: HEAP_MIB=1024 BLOCK=1024
"""
import json, os, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACER = os.environ.get("TRACER", os.path.join(ROOT, "target/release/tracer"))
HEAP_MIB = os.environ.get("HEAP_MIB", "1024")
BLOCK = os.environ.get("BLOCK", "1024")

if os.geteuid() != 0:
    sys.exit("bench/scan.py loads eBPF: run it as root")
if not os.access(TRACER, os.X_OK):
    sys.exit("no %s: cargo build --release first" % TRACER)
work = tempfile.mkdtemp(prefix="tracer-scan-")
bigheap = os.path.join(work, "bigheap")
subprocess.run(["cc", "-O2", "-g", "-fno-omit-frame-pointer", "-o", bigheap,
                os.path.join(ROOT, "tests/victims/bigheap.c")], check=True)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_line(stream, prefix, limit_s):
    end = time.time() + limit_s
    while time.time() < end:
        line = stream.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    sys.exit("bigheap never printed %s" % prefix)


def one(stop):
    # Allocation starts 3 s after bigheap starts: tracer attaches first.
    victim = subprocess.Popen([bigheap, HEAP_MIB, BLOCK, "25", "3"], stdout=subprocess.PIPE,
                              text=True)
    wait_line(victim.stdout, "START", 10)
    args = [TRACER, "--pid", str(victim.pid), "-i", "600", "-n", "3", "--format", "json"]
    if stop:
        args.append("--stop-for-scan")
    out = open(os.path.join(work, "out.json"), "w+")
    t = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE, text=True)
    while "tracer: tracing" not in t.stderr.readline():
        pass
    ready = wait_line(victim.stdout, "READY", 600)
    time.sleep(1)
    before = rss_mib(t.pid)
    t.send_signal(signal.SIGUSR1)
    # The mark's report, once written.
    scan = None
    end = time.time() + 300
    while scan is None and time.time() < end:
        time.sleep(0.5)
        out.seek(0)
        for line in out:
            if line.startswith("{"):
                r = json.loads(line)
                if r.get("kind") == "mark" and r.get("scans"):
                    scan = r["scans"][0]
    after = rss_mib(t.pid)
    stall = wait_line(victim.stdout, "STALL", 60)
    t.send_signal(signal.SIGINT)
    t.wait()
    victim.wait()
    if scan is None:
        sys.exit("no scan in the mark's report")
    secs = scan["micros"] / 1e6
    print("%-16s %s; read %.0f MiB in %.2f s = %.0f MiB/s; pause %.2f s (bigheap's longest "
          "tick: %s ms); tracer RSS %.0f -> %.0f MiB" % (
              "--stop-for-scan" if stop else "running target", ready, scan["bytes"] / 2**20,
              secs, scan["bytes"] / 2**20 / max(secs, 1e-9), scan["pause_micros"] / 1e6,
              stall.split("=")[1], before, after))


print("heap: %s MiB in %s-byte blocks" % (HEAP_MIB, BLOCK))
one(False)
one(True)
