// tailcalls: allocator calls that call or tail-call one another inside the C library
// (glibc's realloc(NULL, n) jumps to malloc), for sampled mode's "counted once" rule.
// 100,000 realloc(NULL, 100) and 100,000 malloc(100), each freed; then 1,000 blocks of
// 1,000 bytes kept. Called through volatile pointers so that the compiler keeps every call
// (it would fold realloc(NULL, n) into malloc(n)).
#include <stdio.h>
#include <stdlib.h>

static void *volatile sink;
void *(*volatile re)(void *, size_t) = realloc;
void *(*volatile ma)(size_t) = malloc;
void (*volatile fr)(void *) = free;
static void *keep[1000];

int main(void) {
    for (int i = 0; i < 100000; i++) {
        void *p = re(NULL, 100);
        sink = p;
        fr(p);
    }
    for (int i = 0; i < 100000; i++) {
        void *p = ma(100);
        sink = p;
        fr(p);
    }
    for (int i = 0; i < 1000; i++) keep[i] = ma(1000);
    sink = keep;
    printf("TRUTH main LEAK blocks=1000 bytes=1000000\n");
    return 0;
}
