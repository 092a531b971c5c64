#!/usr/bin/env bash
# Overhead benchmark on churn (malloc/free pairs as fast as possible), all in one run:
#   untraced           churn alone
#   floor              bpftrace with empty uprobes on malloc entry+return and free (the cost of
#                      the traps alone: no tool that does not modify the target can be cheaper)
#   tracer             tracer --pid (attached the same way as the floor; --unwind auto: churn's
#                      own frames by frame pointers, the C library's by its unwind table)
#   tracer-fp          tracer --pid --unwind fp (frame pointers only)
#   floor-nofp         the floor on churn built without frame pointers (plain -O2)
#   dwarf-nofp         tracer --pid --unwind dwarf on churn built without frame pointers
#   sampled64k         tracer --pid --sample-rate 64K
#   sampled512k        tracer --pid --sample-rate 512K
#   memleak            bcc's memleak-bpfcc -p PID (report every 5 s)
#   memleak-s          memleak-bpfcc -p PID -s 100 (its own sampling: every 100th allocation)
#   heaptrack          heaptrack CMD (LD_PRELOAD injection)
#   valgrind           valgrind --tool=memcheck CMD
# The peers run when installed (bench/setup-peers.sh installs them); PEERS="" leaves them out.
# Then the bystanders: an unrelated process's getppid rate and churn's malloc rate, alone and
# while tracer --pid traces another process (leaky), REPS times.
# Prints every run, then medians and ratios. Needs root, a release build, bpftrace.
#   usage: bench/overhead.sh   env: REPS=5 SECS=3 THREADS=1 PEERS="memleak heaptrack valgrind"
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}; SECS=${SECS:-3}; THREADS=${THREADS:-1}
PEERS=${PEERS-memleak memleak-s heaptrack valgrind}
TRACER=${TRACER:-target/release/tracer}
[ -x "$TRACER" ] || { echo "no $TRACER: cargo build --release first" >&2; exit 1; }
command -v bpftrace >/dev/null || { echo "bpftrace missing: scripts/setup installs it" >&2; exit 1; }
peers=""
for p in $PEERS; do
    case $p in
      memleak|memleak-s) tool=memleak-bpfcc ;;
      *) tool=$p ;;
    esac
    if command -v "$tool" >/dev/null; then
        peers="$peers $p"
    else
        echo "note: $tool not installed, $p left out (bench/setup-peers.sh installs the peers)" >&2
    fi
done
mkdir -p target/bench
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
CHURN=target/bench/churn
gcc -O2 -g -fno-omit-frame-pointer -pthread -o "$CHURN" tests/workloads/churn.c
CHURN_NOFP=target/bench/churn-nofp
gcc -O2 -g -fomit-frame-pointer -pthread -o "$CHURN_NOFP" tests/workloads/churn.c
LEAKY=target/bench/leaky
gcc -O2 -g -fno-omit-frame-pointer -o "$LEAKY" tests/workloads/leaky.c
SYSCALLS=target/bench/syscalls
cat > "$tmp/syscalls.c" <<'C'
/* An unrelated process's system-call rate: getppid through syscall(2), as fast as it can. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 2.0, start = now(), t = start;
    unsigned long n = 0;
    while (t < start + secs) { for (int i = 0; i < 10000; i++) syscall(SYS_getppid); n += 10000; t = now(); }
    printf("syscalls_per_sec=%.0f\n", n / (t - start));
    return 0;
}
C
gcc -O2 -o "$SYSCALLS" "$tmp/syscalls.c"

wait_for() { # FILE REGEX TIMEOUT_S
    for _ in $(seq 1 $(( $3 * 20 ))); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for /$2/ in $1" >&2; return 1
}

# run MODE -> prints "ops_per_sec lost"
run() {
    local mode=$1 log=$tmp/churn.txt tlog=$tmp/tool.txt tout=$tmp/tool.out cp tp="" lost=0
    local churn=$CHURN
    case $mode in *-nofp) churn=$CHURN_NOFP ;; esac
    : > "$log"; : > "$tlog"; : > "$tout"
    case $mode in
      heaptrack)
        heaptrack -o "$tmp/ht" "$CHURN" 1000000000000 "$THREADS" "$SECS" > "$log" 2>&1
        rm -f "$tmp"/ht*
        echo "$(grep -oE 'ops_per_sec=[0-9]+' "$log" | cut -d= -f2) -"; return ;;
      valgrind)
        valgrind --tool=memcheck "$CHURN" 1000000000000 "$THREADS" "$SECS" > "$log" 2>&1
        echo "$(grep -oE 'ops_per_sec=[0-9]+' "$log" | cut -d= -f2) -"; return ;;
    esac
    CHURN_WAIT=1 "$churn" 1000000000000 "$THREADS" "$SECS" > "$log" 2>&1 &
    cp=$!
    wait_for "$log" 'waiting for SIGUSR1' 10
    local libc
    libc=$(awk '$NF ~ /libc\.so/ {print $NF; exit}' "/proc/$cp/maps")
    case $mode in
      memleak|memleak-s)
        # Stock bcc 0.26; it prints "Attaching" before its last probe is in: a second more.
        local sample=()
        [ "$mode" = memleak-s ] && sample=(-s 100)
        memleak-bpfcc -p "$cp" "${sample[@]}" 5 > "$tlog" 2>&1 &
        tp=$!; wait_for "$tlog" 'Attaching to pid' 60; sleep 2
        if ! kill -0 "$tp" 2>/dev/null; then
            # It failed to attach (a uprobe another tool holds with another reference
            # counter, say): no number, rather than churn's untraced one.
            echo "note: $mode did not attach: $(grep -m1 -iE 'error|cannot|fail' "$tlog")" >&2
            kill -USR1 "$cp"; wait "$cp" || true
            echo "none -"; return
        fi ;;
      floor|floor-nofp)
        bpftrace -p "$cp" -e "uprobe:$libc:malloc {} uretprobe:$libc:malloc {} uprobe:$libc:free {}" > "$tlog" 2>&1 &
        tp=$!; wait_for "$tlog" 'Attaching' 30; sleep 1 ;;
      tracer|tracer-fp|dwarf-nofp|sampled64k|sampled512k)
        local rate=0 unwind=auto
        case $mode in sampled64k) rate=64K;; sampled512k) rate=512K;; tracer-fp) unwind=fp;; dwarf-nofp) unwind=dwarf;; esac
        "$TRACER" --pid "$cp" --sample-rate "$rate" --unwind "$unwind" -i 60 --format json > "$tout" 2> "$tlog" &
        tp=$!; wait_for "$tlog" 'tracing pid' 30 ;;
    esac
    kill -USR1 "$cp"; wait "$cp" || true
    # A background job of a script ignores SIGINT, and python (memleak) keeps that: TERM it.
    if [ -n "$tp" ]; then
        if [ "${mode%-s}" = memleak ]; then kill -TERM "$tp" 2>/dev/null || true; else kill -INT "$tp" 2>/dev/null || true; fi
        wait "$tp" 2>/dev/null || true
    fi
    case $mode in
      tracer|tracer-fp|dwarf-nofp|sampled*)
        lost=$(python3 -c "
import json,sys
r=[json.loads(l) for l in open('$tout') if l.startswith('{')]
print(sum(r[-1]['lost'].values()) if r else -1)") ;;
    esac
    echo "$(grep -oE 'ops_per_sec=[0-9]+' "$log" | cut -d= -f2) $lost"
}

echo "mode,rep,ops_per_sec,lost" > "$tmp/results.csv"
for rep in $(seq 1 "$REPS"); do
    # Rotate the order so drift in the machine does not favour one mode.
    modes=(untraced floor tracer tracer-fp floor-nofp dwarf-nofp sampled64k sampled512k)
    order=""
    for i in "${!modes[@]}"; do order="$order ${modes[$(( (i + rep) % ${#modes[@]} ))]}"; done
    for mode in $order $peers; do
        read -r ops lost < <(run "$mode")
        echo "$mode,$rep,$ops,$lost" | tee -a "$tmp/results.csv"
    done
done
# Bystanders: rates of processes tracer was not asked to trace, alone and while it traces leaky.
rate_of() { "$@" 2>/dev/null | grep -oE '(syscalls|ops)_per_sec=[0-9.]+' | cut -d= -f2; }
echo "rep,syscalls_alone,syscalls_beside,malloc_alone,malloc_beside" > "$tmp/bystanders.csv"
for rep in $(seq 1 "$REPS"); do
    s0=$(rate_of "$SYSCALLS" 2); m0=$(rate_of "$CHURN" 1000000000000 1 2)
    "$LEAKY" 120 0 > /dev/null 2>&1 &
    lp=$!
    "$TRACER" --pid "$lp" -i 60 --format json > /dev/null 2> "$tmp/by.txt" &
    tp=$!; wait_for "$tmp/by.txt" 'tracing pid' 30
    s1=$(rate_of "$SYSCALLS" 2); m1=$(rate_of "$CHURN" 1000000000000 1 2)
    kill -INT "$tp"; wait "$tp" 2>/dev/null || true
    kill "$lp"; wait "$lp" 2>/dev/null || true
    echo "$rep,$s0,$s1,$m0,$m1" | tee -a "$tmp/bystanders.csv"
done
python3 - "$tmp/results.csv" "$THREADS" "$tmp/bystanders.csv" $peers <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
peers = sys.argv[4:]
ours = ["tracer", "tracer-fp", "dwarf-nofp", "sampled64k", "sampled512k"]
number = lambda v: v.replace(".", "", 1).isdigit()
ops = {m: [float(r["ops_per_sec"]) for r in rows if r["mode"] == m and number(r["ops_per_sec"])]
       for m in ["untraced", "floor", "floor-nofp"] + ours + peers}
med = {m: statistics.median(v) for m, v in ops.items() if v}
lost = {m: sum(int(r["lost"]) for r in rows if r["mode"] == m) for m in ours}
reps = len(ops["tracer"])
print(f"\nchurn, {sys.argv[2]} thread(s), {reps} repetitions, median ops/s:")
for m in ["untraced", "floor", "floor-nofp"] + ours:
    print(f"  {m:11s} {med[m]:>12,.0f}   (min {min(ops[m]):,.0f}, max {max(ops[m]):,.0f})")
by_rep = lambda a, b: [x / y for x, y in zip(ops[a], ops[b])]
# Each against the floor on the same build of churn.
floor_of = lambda m: "floor-nofp" if m.endswith("-nofp") else "floor"
for m in ours:
    f = floor_of(m)
    print(f"  {m + ' / ' + f:22s} = {med[m] / med[f]:.3f}  (per repetition: {', '.join(f'{r:.2f}' for r in by_rep(m, f))})")
print(f"  {'floor / untraced':22s} = {med['floor'] / med['untraced']:.4f}")
print(f"  {'tracer / untraced':22s} = {med['tracer'] / med['untraced']:.4f}")
print(f"  events lost over all runs: " + ", ".join(f"{m} {lost[m]}" for m in ours))
by = list(csv.DictReader(open(sys.argv[3])))
ratio = lambda a, b: [float(r[b]) / float(r[a]) for r in by if r[a] and r[b]]
rs, rm = ratio("syscalls_alone", "syscalls_beside"), ratio("malloc_alone", "malloc_beside")
print(f"\nbystanders while tracer --pid traces another process ({len(by)} repetitions):")
print(f"  getppid rate  {statistics.median(rs):.3f} x alone  (per repetition: {', '.join(f'{r:.2f}' for r in rs)})")
print(f"  malloc rate   {statistics.median(rm):.3f} x alone  (per repetition: {', '.join(f'{r:.2f}' for r in rm)})")
if peers:
    print("\npeers, same run (ops/s ratio to untraced; tracer's for comparison):")
    print(f"  {'tracer':10s} {med['tracer'] / med['untraced']:.4f}   1.00 x tracer")
    for p in peers:
        if p not in med:
            print(f"  {p:10s} no run finished")
            continue
        print(f"  {p:10s} {med[p] / med['untraced']:.4f}   {med[p] / med['tracer']:.2f} x tracer"
              f"   (median {med[p]:,.0f} ops/s over {len(ops[p])})")
PY
