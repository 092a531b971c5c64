// stacks: one leaked block from each of N call depths (N distinct stacks, each of its own
// depth). Prints the truth at exit.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;

__attribute__((noinline)) static void leaf(void) {
    void *p = malloc(24);
    memset(p, 0, 24);
    sink = p;
}

// Not a tail call: every depth is a frame of its own.
__attribute__((noinline)) static void descend(int n) {
    if (n == 0) {
        leaf();
    } else {
        descend(n - 1);
    }
    sink = (void *)(long)n;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    for (int d = 0; d < n; d++) descend(d);
    printf("TRUTH leaf LEAK blocks=%d bytes=%d\n", n, n * 24);
    return 0;
}
