#!/usr/bin/env bash
# Overhead benchmark on churn (malloc/free pairs as fast as possible), all in one run:
#   untraced           churn alone
#   floor              bpftrace with empty uprobes on malloc entry+return and free (the cost of
#                      the traps alone: no tool that does not modify the target can be cheaper)
#   tracer             tracer --pid (attached the same way as the floor)
#   memleak            bcc's memleak-bpfcc -p PID (report every 5 s)
#   heaptrack          heaptrack CMD (LD_PRELOAD injection)
#   valgrind           valgrind --tool=memcheck CMD
# The peers run when installed (bench/setup-peers.sh installs them); PEERS="" leaves them out.
# Prints every run, then medians and ratios. Needs root, a release build, bpftrace.
#   usage: bench/overhead.sh   env: REPS=5 SECS=3 THREADS=1 PEERS="memleak heaptrack valgrind"
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}; SECS=${SECS:-3}; THREADS=${THREADS:-1}
PEERS=${PEERS-memleak heaptrack valgrind}
TRACER=${TRACER:-target/release/tracer}
[ -x "$TRACER" ] || { echo "no $TRACER: cargo build --release first" >&2; exit 1; }
command -v bpftrace >/dev/null || { echo "bpftrace missing: scripts/setup installs it" >&2; exit 1; }
peers=""
for p in $PEERS; do
    case $p in
      memleak) tool=memleak-bpfcc ;;
      *) tool=$p ;;
    esac
    if command -v "$tool" >/dev/null; then
        peers="$peers $p"
    else
        echo "note: $tool not installed, $p left out (bench/setup-peers.sh installs the peers)" >&2
    fi
done
mkdir -p target/bench
CHURN=target/bench/churn
gcc -O2 -g -fno-omit-frame-pointer -pthread -o "$CHURN" tests/workloads/churn.c
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

wait_for() { # FILE REGEX TIMEOUT_S
    for _ in $(seq 1 $(( $3 * 20 ))); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for /$2/ in $1" >&2; return 1
}

# run MODE -> prints "ops_per_sec lost"
run() {
    local mode=$1 log=$tmp/churn.txt tlog=$tmp/tool.txt tout=$tmp/tool.out cp tp="" lost=0
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
    CHURN_WAIT=1 "$CHURN" 1000000000000 "$THREADS" "$SECS" > "$log" 2>&1 &
    cp=$!
    wait_for "$log" 'waiting for SIGUSR1' 10
    local libc
    libc=$(awk '$NF ~ /libc\.so/ {print $NF; exit}' "/proc/$cp/maps")
    case $mode in
      memleak)
        # Stock bcc 0.26; it prints "Attaching" before its last probe is in: a second more.
        memleak-bpfcc -p "$cp" 5 > "$tlog" 2>&1 &
        tp=$!; wait_for "$tlog" 'Attaching to pid' 60; sleep 2 ;;
      floor)
        bpftrace -p "$cp" -e "uprobe:$libc:malloc {} uretprobe:$libc:malloc {} uprobe:$libc:free {}" > "$tlog" 2>&1 &
        tp=$!; wait_for "$tlog" 'Attaching' 30; sleep 1 ;;
      tracer)
        "$TRACER" --pid "$cp" -i 60 --format json > "$tout" 2> "$tlog" &
        tp=$!; wait_for "$tlog" 'tracing pid' 30 ;;
    esac
    kill -USR1 "$cp"; wait "$cp" || true
    # A background job of a script ignores SIGINT, and python (memleak) keeps that: TERM it.
    if [ -n "$tp" ]; then
        if [ "$mode" = memleak ]; then kill -TERM "$tp" 2>/dev/null || true; else kill -INT "$tp" 2>/dev/null || true; fi
        wait "$tp" 2>/dev/null || true
    fi
    if [ "$mode" = tracer ]; then
        lost=$(python3 -c "
import json,sys
r=[json.loads(l) for l in open('$tout') if l.startswith('{')]
print(sum(r[-1]['lost'].values()) if r else -1)")
    fi
    echo "$(grep -oE 'ops_per_sec=[0-9]+' "$log" | cut -d= -f2) $lost"
}

echo "mode,rep,ops_per_sec,lost" > "$tmp/results.csv"
for rep in $(seq 1 "$REPS"); do
    # Rotate the order so drift in the machine does not favour one mode.
    case $(( rep % 3 )) in 1) order="untraced floor tracer";; 2) order="floor tracer untraced";; *) order="tracer untraced floor";; esac
    for mode in $order $peers; do
        read -r ops lost < <(run "$mode")
        echo "$mode,$rep,$ops,$lost" | tee -a "$tmp/results.csv"
    done
done
python3 - "$tmp/results.csv" "$THREADS" $peers <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
peers = sys.argv[3:]
ops = {m: [float(r["ops_per_sec"]) for r in rows if r["mode"] == m and r["ops_per_sec"]]
       for m in ["untraced", "floor", "tracer"] + peers}
med = {m: statistics.median(v) for m, v in ops.items() if v}
lost = sum(int(r["lost"]) for r in rows if r["mode"] == "tracer")
reps = len(ops["tracer"])
print(f"\nchurn, {sys.argv[2]} thread(s), {reps} repetitions, median ops/s:")
for m in ("untraced", "floor", "tracer"):
    print(f"  {m:9s} {med[m]:>12,.0f}   (min {min(ops[m]):,.0f}, max {max(ops[m]):,.0f})")
by_rep = lambda a, b: [x / y for x, y in zip(ops[a], ops[b])]
print(f"  tracer / floor    = {med['tracer'] / med['floor']:.3f}  (per repetition: {', '.join(f'{r:.2f}' for r in by_rep('tracer', 'floor'))})")
print(f"  floor / untraced  = {med['floor'] / med['untraced']:.4f}")
print(f"  tracer / untraced = {med['tracer'] / med['untraced']:.4f}")
print(f"  events lost by tracer over all runs: {lost}")
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
