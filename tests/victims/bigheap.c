/* bigheap: a large live heap for measuring the reachability scan.
 *   ./bigheap MIB BLOCK_BYTES SECONDS [DELAY]
 * Waits DELAY seconds (for a tracer to attach), allocates MIB MiB in blocks of BLOCK_BYTES,
 * each holding a pointer to the one before (a list whose head is the global g_head), prints
 * READY, then ticks every millisecond for SECONDS and exits, printing the longest time a tick
 * took (how long something held it still). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

void **g_head;

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 1024;
    long size = argc > 2 ? atol(argv[2]) : 1024;
    int secs = argc > 3 ? atoi(argv[3]) : 30;
    int delay = argc > 4 ? atoi(argv[4]) : 0;
    printf("START pid=%d\n", getpid());
    fflush(stdout);
    sleep(delay);
    long n = mib * 1024 * 1024 / size;
    for (long i = 0; i < n; i++) {
        void **b = malloc(size);
        memset(b, 0x5a, size);
        b[0] = g_head;
        g_head = b;
    }
    printf("READY blocks=%ld bytes=%ld\n", n, n * size);
    fflush(stdout);
    double end = now_ms() + secs * 1e3, last = now_ms(), worst = 0;
    struct timespec tick = {0, 1000 * 1000};
    while (last < end) {
        nanosleep(&tick, NULL);
        double t = now_ms();
        if (t - last > worst)
            worst = t - last;
        last = t;
    }
    printf("STALL max_ms=%.1f\n", worst);
    fflush(stdout);
    return 0;
}
