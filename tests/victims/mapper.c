// mapper: memory mappings only, in a loop, and no malloc at all: a program whose only records
// are mapping records. Every millisecond it keeps one page (map_keep) and maps and unmaps 16
// more (map_churn), for SECS seconds (default 3). Prints its truth in leaky's format, with
// write(2) (stdio would allocate).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
static void *volatile sink;

#define anon(n) mmap(NULL, (n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)

__attribute__((noinline)) static void map_keep(void) { sink = anon(PAGE); }

__attribute__((noinline)) static void map_churn(void) {
    void *p = anon(PAGE);
    sink = p;
    munmap(p, PAGE);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3;
    double end = now() + secs;
    long kept = 0;
    while (now() < end) {
        map_keep();
        kept++;
        for (int i = 0; i < 16; i++)
            map_churn();
        usleep(1000);
    }
    static char buf[128];
    int n = snprintf(buf, sizeof buf, "TRUTH map_keep LEAK blocks=%ld bytes=%ld\n", kept,
                     kept * PAGE);
    if (write(1, buf, n) != n)
        return 1;
    return 0;
}
