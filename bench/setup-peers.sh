#!/usr/bin/env bash
# Installs the peer tools bench/overhead.sh compares tracer with (Debian, root), idempotently:
# bcc's memleak, heaptrack, valgrind. bcc compiles its programs at run time against the
# running kernel's headers; a kernel without /lib/modules/$(uname -r)/build (and without
# CONFIG_IKHEADERS) gets Debian's generic headers linked there: memleak's uprobe programs
# only use struct pt_regs, the same across these kernels.
set -euo pipefail
need=()
command -v memleak-bpfcc >/dev/null || need+=(bpfcc-tools)
command -v heaptrack >/dev/null || need+=(heaptrack)
command -v valgrind >/dev/null || need+=(valgrind)
kv=$(uname -r)
if [ ! -e "/lib/modules/$kv/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 || need+=(linux-headers-amd64)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ ! -e "/lib/modules/$kv/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -1)
    mkdir -p "/lib/modules/$kv"
    ln -sfn "$hdr" "/lib/modules/$kv/build"
    ln -sfn "$common" "/lib/modules/$kv/source"
    echo "linked $hdr as the headers of kernel $kv (for bcc)"
fi
echo "peers ready: memleak-bpfcc, heaptrack, valgrind"
