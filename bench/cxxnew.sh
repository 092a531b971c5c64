#!/usr/bin/env bash
# The cost of tracing an allocator's own C++ operator new (jemalloc's), in one run:
#   untraced   bench/newloop.cpp alone (operator new(64) / operator delete pairs)
#   floor      bpftrace with empty uprobes on jemalloc's operator new entry and return and on
#              its operator delete (what a uretprobe-based tool cannot go below)
#   tracer     tracer -- newloop (full trace: the returns seen at operator new's `ret`s)
#   sampled64k tracer --sample-rate 64K -- newloop
# Prints each run, then medians and ratios to the floor. Needs root, a release build, bpftrace,
# g++ and Debian's libjemalloc-dev (scripts/setup installs them).
#   usage: bench/cxxnew.sh   env: REPS=3 N=150000 TRACER=target/release/tracer
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}; N=${N:-150000}
TRACER=${TRACER:-target/release/tracer}
LIB=$(ldconfig -p | awk '/libjemalloc.so.2 .*x86-64/ {print $NF; exit}')
[ -n "$LIB" ] || { echo "libjemalloc.so.2 missing: scripts/setup installs it" >&2; exit 1; }
[ -x "$TRACER" ] || { echo "no $TRACER: cargo build --release first" >&2; exit 1; }
mkdir -p target/bench
BIN=target/bench/newloop-je
g++ -O2 -o "$BIN" bench/newloop.cpp -ljemalloc
rate() { awk '/pairs\/s/ {print $1}'; }
run() { # mode -> pairs/s
    case $1 in
    untraced) "$BIN" $((N * 20)) | rate ;;
    floor)
        bpftrace -e "uprobe:$LIB:_Znwm {} uretprobe:$LIB:_Znwm {} uprobe:$LIB:_ZdlPv {}" \
            >/dev/null 2>&1 &
        local bt=$!
        sleep 3
        "$BIN" "$N" | rate
        kill -INT $bt; wait $bt 2>/dev/null || true ;;
    tracer) "$TRACER" -i 100 -- "$BIN" "$N" 2>/dev/null | rate ;;
    sampled64k) "$TRACER" -i 100 --sample-rate 64K -- "$BIN" "$N" 2>/dev/null | rate ;;
    esac
}
declare -A all
for r in $(seq "$REPS"); do
    for m in untraced floor tracer sampled64k; do
        v=$(run $m); echo "run $r $m: $v pairs/s"; all[$m]="${all[$m]:-} $v"
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
floor=$(echo "${all[floor]}" | median)
for m in untraced floor tracer sampled64k; do
    v=$(echo "${all[$m]}" | median)
    awk -v m=$m -v v="$v" -v f="$floor" 'BEGIN {printf "%-11s %12.0f pairs/s  %6.2fx the floor\n", m, v, v / f}'
done
