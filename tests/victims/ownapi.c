// ownapi: leaks through an allocator's own interface rather than malloc (jemalloc's mallocx and
// rallocx, mimalloc's mi_*, tcmalloc's tc_*) and frees through its sized frees. Build with one
// of -DUSE_JEMALLOC, -DUSE_MIMALLOC, -DUSE_TCMALLOC and that allocator's library. Prints the
// truth at exit in leaky's format.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(USE_JEMALLOC)
#include <jemalloc/jemalloc.h>
#define OWN_ALLOC(n) mallocx((n), 0)
#define OWN_ZALLOC_ALIGNED(n) mallocx((n), MALLOCX_ALIGN(64) | MALLOCX_ZERO)
#define OWN_GROW(p, n) rallocx((p), (n), 0)
#define OWN_FREE_SIZED(p, n) sdallocx((p), (n), 0)
#define OWN_FREE(p) dallocx((p), 0)
#elif defined(USE_MIMALLOC)
#include <mimalloc.h>
#define OWN_ALLOC(n) mi_malloc(n)
#define OWN_ZALLOC_ALIGNED(n) mi_zalloc_aligned((n), 64)
#define OWN_GROW(p, n) mi_realloc((p), (n))
#define OWN_FREE_SIZED(p, n) mi_free_size((p), (n))
#define OWN_FREE(p) mi_free(p)
#elif defined(USE_TCMALLOC)
#include <gperftools/tcmalloc.h>
#define OWN_ALLOC(n) tc_malloc(n)
#define OWN_ZALLOC_ALIGNED(n) tc_memalign(64, (n))
#define OWN_GROW(p, n) tc_realloc((p), (n))
#define OWN_FREE_SIZED(p, n) tc_free_sized((p), (n))
#define OWN_FREE(p) tc_free(p)
#else
#error "build with -DUSE_JEMALLOC, -DUSE_MIMALLOC or -DUSE_TCMALLOC"
#endif

static void *volatile sink;

__attribute__((noinline)) static void *leak_plain(void) {
    void *p = OWN_ALLOC(40);
    memset(p, 1, 40);
    return p;
}

// Each leaking function stores its block before returning, so the allocator call is not a
// tail call and the function is the first frame of its stack.
__attribute__((noinline)) static void *leak_aligned(void) {
    void *p = OWN_ZALLOC_ALIGNED(128);
    sink = p;
    return p;
}

__attribute__((noinline)) static void *leak_grown(void) {
    char *p = OWN_ALLOC(16);
    memset(p, 2, 16);
    p = OWN_GROW(p, 200);
    sink = p;
    return p;
}

// Allocated and freed through the sized and plain frees: nothing outstanding.
__attribute__((noinline)) static void churn(void) {
    void *q = OWN_ALLOC(72);
    sink = q;
    OWN_FREE_SIZED(q, 72);
    void *r = OWN_ALLOC(24);
    sink = r;
    OWN_FREE(r);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    for (int i = 0; i < n; i++) {
        sink = leak_plain();
        sink = leak_aligned();
        sink = leak_grown();
        churn();
    }
    printf("TRUTH leak_plain LEAK blocks=%d bytes=%d\n", n, n * 40);
    printf("TRUTH leak_aligned LEAK blocks=%d bytes=%d\n", n, n * 128);
    printf("TRUTH leak_grown LEAK blocks=%d bytes=%d\n", n, n * 200);
    printf("TRUTH churn OK\n");
    return 0;
}
