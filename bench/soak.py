#!/usr/bin/env python3
"""Soak: tracer on a busy host, for as long as a person would leave it running.

1. System-wide (`tracer` with no target) for SOAK_S seconds (default 600) while a shell loop
   starts short processes (`/bin/true; ls /`), a compile loop builds a C file again and again,
   and a leaky (tests/workloads/leaky.c) runs from the first minute to the end. Prints tracer's
   RSS every SOAK_S/20 seconds, its CPU time, the events lost (per process when the reports
   say), and leaky's verdicts and rates against its truth.
2. `--pid` on churn with 2 threads (tests/workloads/churn.c: 2 x 64 live blocks of random
   sizes, replaced one by one) for CHURN_S seconds (default SOAK_S / 3): every interval's
   verdict on churn's sites; a bounded site must never be `leak`.

Needs root and a release build. usage: bench/soak.py   env: SOAK_S=600 CHURN_S=200 INTERVAL=5
TRACER_ARGS="--sample-rate 64K" (more options for tracer in part 1; CHURN_S=0 skips part 2)
"""
import json, os, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACER = os.environ.get("TRACER", os.path.join(ROOT, "target/release/tracer"))
SOAK_S = float(os.environ.get("SOAK_S", "600"))
CHURN_S = float(os.environ.get("CHURN_S", str(SOAK_S / 3)))
INTERVAL = os.environ.get("INTERVAL", "5")
TRACER_ARGS = os.environ.get("TRACER_ARGS", "").split()
TICKS = os.sysconf("SC_CLK_TCK")

if os.geteuid() != 0:
    sys.exit("bench/soak.py loads eBPF: run it as root")
if not os.access(TRACER, os.X_OK):
    sys.exit("no %s: cargo build --release first" % TRACER)
work = tempfile.mkdtemp(prefix="tracer-soak-")


def build(src, out, *flags):
    path = os.path.join(work, out)
    subprocess.run(["gcc", "-O2", "-g", "-fno-omit-frame-pointer", *flags, "-o", path,
                    os.path.join(ROOT, src)], check=True)
    return path


def rss_mb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICKS


def reports(path):
    out = []
    for line in open(path):
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def name(site):
    fr = site.get("frames") or []
    return fr[0].get("function") if fr and fr[0].get("function") else "?"


leaky = build("tests/workloads/leaky.c", "leaky-fp")
churn = build("tests/workloads/churn.c", "churn-fp", "-pthread")

# 1. Every process.
out_path = os.path.join(work, "system.json")
out = open(out_path, "w")
tr = subprocess.Popen([TRACER, "-i", INTERVAL, "-n", "20", "--format", "json", *TRACER_ARGS], stdout=out,
                      stderr=subprocess.PIPE, text=True)
while True:
    line = tr.stderr.readline()
    if not line or line.startswith("tracer: tracing"):
        break
t0 = time.time()
loop = subprocess.Popen(["bash", "-c", "end=$((SECONDS+%d)); while [ $SECONDS -lt $end ]; do "
                         "/bin/true; ls / >/dev/null; done" % int(SOAK_S)])
csrc = os.path.join(ROOT, "tests/workloads/churn.c")
compile_loop = subprocess.Popen(["bash", "-c", "end=$((SECONDS+%d)); while [ $SECONDS -lt $end ]; do "
                                 "gcc -O2 -c -o %s/c.o %s; done" % (int(SOAK_S), work, csrc)])
leaky_run = None
curve = []
every = SOAK_S / 20
next_sample = 0.0
while loop.poll() is None or compile_loop.poll() is None:
    now = time.time() - t0
    if now >= next_sample:
        curve.append((round(now), round(rss_mb(tr.pid), 1)))
        next_sample += every
    if leaky_run is None and now >= min(60, SOAK_S / 5):
        # Runs to the end of the soak, from its first minute.
        leaky_run = subprocess.Popen([leaky, str(int(SOAK_S - now - 2)), "0"],
                                     stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
truth_text = leaky_run.communicate()[0] if leaky_run else ""
time.sleep(float(INTERVAL) + 1)
cpu = cpu_s(tr.pid)
curve.append((round(time.time() - t0), round(rss_mb(tr.pid), 1)))
tr.send_signal(2)
err = tr.communicate(timeout=120)[1]
out.close()
reps = reports(out_path)
fin = reps[-1]
truth = {}
for line in truth_text.splitlines():
    # TRUTH <site> LEAK blocks=B bytes=N over the run's seconds
    w = line.split()
    if len(w) >= 5 and w[0] == "TRUTH" and w[2] == "LEAK":
        truth[w[1]] = int(w[4].split("=")[1])
run_s = max(1.0, SOAK_S - min(60, SOAK_S / 5) - 2)
# leaky's sites in the last interval report that still had it
verdicts, rates = {}, {}
for r in reps:
    for p in r.get("processes") or []:
        if leaky_run and p.get("pid") == leaky_run.pid and r.get("kind") == "interval" and not p.get("exited"):
            for s in p.get("sites") or []:
                fr = s.get("frames") or []
                key = name(s) + ("<-" + (fr[1].get("function") or "?") if name(s) == "leak_shared" and len(fr) > 1 else "")
                verdicts[key] = s.get("verdict")
                rates[key] = s.get("rate_bytes_per_s")
processes_seen = set()
for r in reps:
    for p in r.get("processes") or []:
        processes_seen.add(p.get("pid"))
print("== every process%s, %d s: a shell loop of short processes, a compile loop, leaky from the first minute" % (
    (" (" + " ".join(TRACER_ARGS) + ")") if TRACER_ARGS else "", SOAK_S))
print("tracer RSS (s, MB): %s" % curve)
after_first = [m for s, m in curve if s >= 60] or [m for _, m in curve]
print("RSS after the first minute: min %.1f MB, max %.1f MB, growth %.1f MB" % (
    min(after_first), max(after_first), max(after_first) - after_first[0]))
print("tracer CPU: %.1f s in %d s (%.1f %% of one core)" % (cpu, SOAK_S, 100 * cpu / SOAK_S))
print("final report: %d bytes of JSON; processes in it %d, exited ones omitted %s" % (
    len(json.dumps(fin)), len(fin.get("processes") or []), fin.get("exited_omitted", 0)))
print("events: %s" % json.dumps(fin.get("events")))
print("lost (whole run): %s" % json.dumps(fin.get("lost")))
lost_by = fin.get("lost_by_process")
if lost_by is not None:
    print("lost per process (top 5): %s" % json.dumps(lost_by[:5]))
print("leaky (pid %s), truth over %.0f s:" % (leaky_run.pid if leaky_run else "-", run_s))
for k in sorted(set(verdicts) | set(truth)):
    t = truth.get(k)
    print("  %-28s verdict %-9s rate %s B/s%s" % (k, verdicts.get(k), rates.get(k),
          "" if t is None else " (truth %.0f B/s)" % (t / run_s)))

# 2. --pid on churn, 2 threads.
if CHURN_S <= 0:
    sys.exit(0)
env = dict(os.environ, CHURN_WAIT="1")
ch = subprocess.Popen([churn, "1000000000", "2", str(int(CHURN_S))], stdout=subprocess.PIPE, text=True, env=env)
ch.stdout.readline()
cout_path = os.path.join(work, "churn.json")
cout = open(cout_path, "w")
ct = subprocess.Popen([TRACER, "--pid", str(ch.pid), "-i", INTERVAL, "--format", "json"], stdout=cout,
                      stderr=subprocess.PIPE, text=True)
while True:
    line = ct.stderr.readline()
    if not line or line.startswith("tracer: tracing"):
        break
os.kill(ch.pid, 10)  # SIGUSR1: start the timed loop
ch.communicate()
ct.wait(timeout=120)
cout.close()
judged = {}
for r in reports(cout_path):
    if r.get("kind") != "interval":
        continue
    for s in r.get("sites") or []:
        judged.setdefault(name(s), []).append(s.get("verdict"))
print("== --pid on churn (2 threads, 2 x 64 live blocks of random sizes), %d s, a report every %s s" % (CHURN_S, INTERVAL))
for k, v in sorted(judged.items()):
    counts = {x: v.count(x) for x in sorted(set(v))}
    print("  %-20s %s" % (k, counts))
leaks = sum(v.count("leak") for v in judged.values())
print("leak verdicts on churn's bounded sites: %d" % leaks)
