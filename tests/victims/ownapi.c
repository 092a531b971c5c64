// ownapi: leaks through an allocator's own interface rather than malloc (jemalloc's mallocx and
// rallocx, mimalloc's mi_*, tcmalloc's tc_*) and frees through its sized frees. Build with one
// of -DUSE_JEMALLOC, -DUSE_MIMALLOC, -DUSE_TCMALLOC and that allocator's library. Prints the
// truth at exit in leaky's format. With mimalloc it also allocates in heaps of its own
// (mi_heap_*): one kept (its blocks leak), one per round destroyed whole (its blocks are freed
// with no call per block: nothing leaks), one per round deleted (its blocks live on: a leak).
// The stacks need frame pointers.
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

#if defined(USE_MIMALLOC)
static mi_heap_t *kept;

__attribute__((noinline)) static void *heap_leak(void) {
    void *p = mi_heap_malloc(kept, 56);
    sink = p;
    return p;
}

__attribute__((noinline)) static void *heap_leak_grown(void) {
    char *p = mi_heap_calloc(kept, 2, 8);
    sink = p;
    p = mi_heap_realloc(kept, p, 96);
    sink = p;
    return p;
}

// A heap destroyed whole: its blocks go with it, freed or not.
__attribute__((noinline)) static void heap_destroyed(void) {
    mi_heap_t *t = mi_heap_new();
    void *a = mi_heap_malloc(t, 100);
    sink = a;
    void *b = mi_heap_zalloc(t, 300);
    sink = b;
    void *c = mi_heap_mallocn(t, 4, 25);
    sink = c;
    mi_free(b);
    mi_heap_destroy(t);
}

// A heap deleted: its blocks move to the default heap and live on.
__attribute__((noinline)) static void *heap_deleted(void) {
    mi_heap_t *t = mi_heap_new();
    void *p = mi_heap_malloc(t, 88);
    sink = p;
    mi_heap_delete(t);
    return p;
}
#endif

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
#if defined(USE_MIMALLOC)
    kept = mi_heap_new();
#endif
    for (int i = 0; i < n; i++) {
        sink = leak_plain();
        sink = leak_aligned();
        sink = leak_grown();
        churn();
#if defined(USE_MIMALLOC)
        sink = heap_leak();
        sink = heap_leak_grown();
        heap_destroyed();
        sink = heap_deleted();
#endif
    }
    printf("TRUTH leak_plain LEAK blocks=%d bytes=%d\n", n, n * 40);
    printf("TRUTH leak_aligned LEAK blocks=%d bytes=%d\n", n, n * 128);
    printf("TRUTH leak_grown LEAK blocks=%d bytes=%d\n", n, n * 200);
    printf("TRUTH churn OK\n");
#if defined(USE_MIMALLOC)
    printf("TRUTH heap_leak LEAK blocks=%d bytes=%d\n", n, n * 56);
    printf("TRUTH heap_leak_grown LEAK blocks=%d bytes=%d\n", n, n * 96);
    printf("TRUTH heap_destroyed OK\n");
    printf("TRUTH heap_deleted LEAK blocks=%d bytes=%d\n", n, n * 88);
#endif
    return 0;
}
