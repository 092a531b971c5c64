// newloop: `operator new(64)` and `operator delete` as fast as possible, N times; prints pairs per second.
// Linked with an allocator that brings its own operator new (bench/cxxnew.sh: jemalloc), whose
// returns tracer sees at its `ret` instructions (collector/returns.rs).
#include <cstdio>
#include <cstdlib>
#include <ctime>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *p = ::operator new(64);
        asm volatile("" ::"r"(p) : "memory");
        ::operator delete(p);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double t = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%.0f pairs/s\n", n / t);
}
