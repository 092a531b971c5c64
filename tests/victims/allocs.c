/*
 * allocs: every allocator entry point tracer probes, with the exact truth printed at exit.
 *
 *   usage: allocs TICKS [START_DELAY_S]
 *
 * Prints "allocs pid=N", sleeps START_DELAY_S, then runs TICKS ticks of 10 ms. Each site is its
 * own noinline function; leaked pointers are dropped. At exit, one line per site:
 *   TRUTH <site> LEAK blocks=B bytes=N     (outstanding at exit)
 *   TRUTH <site> OK outstanding=0          (everything it allocated was released)
 * Bytes are the sizes requested (pvalloc's page rounding is the allocator's business).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SITE __attribute__((noinline, noipa))
static inline void escape(void *p) { __asm__ volatile("" : : "g"(p) : "memory"); }
static volatile unsigned long sink;

static unsigned long n_pm, n_aligned, n_memalign, n_valloc, n_pvalloc, n_rarray, n_rnull,
    n_rzero, n_failed, n_xthread, n_thread_leak, n_grow_array;

SITE void leak_posix_memalign(void) {
    void *p = NULL;
    if (posix_memalign(&p, 64, 100) != 0) abort();
    memset(p, 1, 100); escape(p); n_pm++;
}
SITE void leak_aligned_alloc(void) {
    void *p = aligned_alloc(64, 128);
    memset(p, 2, 128); escape(p); n_aligned++;
}
SITE void leak_memalign(void) {
    void *p = memalign(32, 48);
    memset(p, 3, 48); escape(p); n_memalign++;
}
SITE void leak_valloc(void) {
    void *p = valloc(200);
    memset(p, 4, 200); escape(p); n_valloc++;
}
SITE void leak_pvalloc(void) {
    void *p = pvalloc(10);
    memset(p, 5, 10); escape(p); n_pvalloc++;
}
SITE void leak_reallocarray(void) {
    void *p = reallocarray(NULL, 3, 16);
    memset(p, 6, 48); escape(p); n_rarray++;
}
SITE void leak_realloc_null(void) {
    void *p = realloc(NULL, 24);
    memset(p, 7, 24); escape(p); n_rnull++;
}
/* grows one array with reallocarray: one block whose size is the last request */
static char *grow_buf; static size_t grow_n;
SITE void leak_grow_array(void) {
    char *nb = reallocarray(grow_buf, grow_n + 1, 8);
    if (!nb) abort();
    memset(nb + grow_n * 8, 8, 8);
    grow_buf = nb; grow_n++; n_grow_array++;
}
/* malloc then realloc(p, 0): glibc frees p and returns NULL */
SITE void realloc_to_zero(void) {
    void *p = malloc(40);
    memset(p, 9, 40); escape(p);
    void *q = realloc(p, 0);
    escape(q);
    if (q) free(q);
    n_rzero++;
}
SITE void failed_alloc(void) {
    void *p = malloc(SIZE_MAX / 2);
    if (p) abort();
    volatile size_t n = SIZE_MAX / 4;   /* n * 8 overflows: calloc fails */
    p = calloc(n, 8);
    if (p) abort();
    n_failed++;
}
static void *free_it(void *p) { free(p); return NULL; }
/* allocated on this thread, freed on another */
SITE void cross_thread_free(void) {
    void *p = malloc(72);
    memset(p, 10, 72);
    pthread_t t;
    if (pthread_create(&t, NULL, free_it, p) != 0) abort();
    pthread_join(t, NULL);
    n_xthread++;
}
SITE void *thread_leak(void *arg) {
    (void)arg;
    void *p = malloc(56);
    memset(p, 11, 56); escape(p);
    return NULL;
}
SITE void leak_on_a_thread(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, thread_leak, NULL) != 0) abort();
    pthread_join(t, NULL);
    n_thread_leak++;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s TICKS [START_DELAY_S]\n", argv[0]); return 2; }
    long ticks = atol(argv[1]);
    double delay = argc > 2 ? atof(argv[2]) : 0.0;
    printf("allocs pid=%d\n", getpid());
    fflush(stdout);
    if (delay > 0) usleep((useconds_t)(delay * 1e6));
    for (long t = 0; t < ticks; t++) {
        leak_posix_memalign();
        leak_aligned_alloc();
        leak_memalign();
        leak_valloc();
        leak_pvalloc();
        leak_reallocarray();
        leak_realloc_null();
        leak_grow_array();
        realloc_to_zero();
        failed_alloc();
        if (t % 10 == 0) { cross_thread_free(); leak_on_a_thread(); }
        usleep(10000);
    }
    grow_buf = NULL;
    printf("TRUTH leak_posix_memalign LEAK blocks=%lu bytes=%lu\n", n_pm, n_pm * 100);
    printf("TRUTH leak_aligned_alloc LEAK blocks=%lu bytes=%lu\n", n_aligned, n_aligned * 128);
    printf("TRUTH leak_memalign LEAK blocks=%lu bytes=%lu\n", n_memalign, n_memalign * 48);
    printf("TRUTH leak_valloc LEAK blocks=%lu bytes=%lu\n", n_valloc, n_valloc * 200);
    printf("TRUTH leak_pvalloc LEAK blocks=%lu bytes=%lu\n", n_pvalloc, n_pvalloc * 10);
    printf("TRUTH leak_reallocarray LEAK blocks=%lu bytes=%lu\n", n_rarray, n_rarray * 48);
    printf("TRUTH leak_realloc_null LEAK blocks=%lu bytes=%lu\n", n_rnull, n_rnull * 24);
    printf("TRUTH leak_grow_array LEAK blocks=%d bytes=%lu\n", n_grow_array ? 1 : 0, grow_n * 8);
    printf("TRUTH thread_leak LEAK blocks=%lu bytes=%lu\n", n_thread_leak, n_thread_leak * 56);
    printf("TRUTH realloc_to_zero OK outstanding=0 calls=%lu\n", n_rzero);
    printf("TRUTH failed_alloc OK outstanding=0 calls=%lu\n", n_failed);
    printf("TRUTH cross_thread_free OK outstanding=0 calls=%lu\n", n_xthread);
    fflush(stdout);
    return 0;
}
