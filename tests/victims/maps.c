// maps: anonymous memory mappings made by the program itself, next to a large malloc block
// (which glibc maps inside malloc: a heap block, not a mapping of the program's). Prints the
// truth at exit in leaky's format; mappings count whole pages.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
static void *volatile sink;

// A macro, not a function: each caller is its own site (an inlined function would show as
// the first frame).
#define anon(n) mmap(NULL, (n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)

// 3000 bytes asked, one page mapped, kept.
__attribute__((noinline)) static void map_leak(void) { sink = anon(3000); }

// Mapped and unmapped: nothing left.
__attribute__((noinline)) static void map_churn(void) {
    void *p = anon(2 * PAGE);
    sink = p;
    munmap(p, 2 * PAGE);
}

// One page grown to three by mremap (which may move it), kept.
__attribute__((noinline)) static void map_grow(void) {
    void *p = anon(PAGE);
    p = mremap(p, PAGE, 3 * PAGE, MREMAP_MAYMOVE);
    sink = p;
}

// Five pages with the middle two unmapped: two mappings, three pages, kept.
__attribute__((noinline)) static void map_cut(void) {
    char *p = anon(5 * PAGE);
    munmap(p + PAGE, 2 * PAGE);
    sink = p;
}

// A reservation (PROT_NONE) is address space, not memory: not counted.
__attribute__((noinline)) static void map_reserve(void) {
    sink = mmap(NULL, 16 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

// 1 MiB from malloc: glibc maps it inside malloc; one heap block, never a mapping too.
__attribute__((noinline)) static void big_malloc(void) {
    void *p = malloc(1 << 20);
    memset(p, 1, 64);
    sink = p;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10;
    for (int i = 0; i < n; i++) {
        map_leak();
        map_churn();
        map_grow();
        map_cut();
        map_reserve();
        big_malloc();
    }
    printf("TRUTH map_leak LEAK blocks=%d bytes=%d\n", n, n * PAGE);
    printf("TRUTH map_grow LEAK blocks=%d bytes=%d\n", n, n * 3 * PAGE);
    printf("TRUTH map_cut LEAK blocks=%d bytes=%d\n", 2 * n, n * 3 * PAGE);
    printf("TRUTH big_malloc LEAK blocks=%d bytes=%d\n", n, n << 20);
    return 0;
}
