// throws: operator new throws std::bad_alloc (a request no allocator can meet) and the program
// catches it, again and again, from several depths and through each throwing form of new;
// between throws it leaks through new. Under tracer it must behave as without (catch, not
// terminate) and its books must stay exact. Prints the truth at exit in leaky's format.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <unistd.h>

static void *volatile sink;
static volatile size_t huge = (size_t)1 << 62;

struct alignas(64) Wide {
    char bytes[64];
};

__attribute__((noinline)) static int throw_plain() {
    try {
        sink = new char[huge];
        return 0;
    } catch (const std::bad_alloc &) {
        return 1;
    }
}

__attribute__((noinline)) static int throw_aligned() {
    try {
        sink = new Wide[huge / 64];
        return 0;
    } catch (const std::bad_alloc &) {
        return 1;
    }
}

__attribute__((noinline)) static int deeper(int n) {
    if (n > 0) {
        return deeper(n - 1) + 0 * (int)(long)sink;
    }
    sink = ::operator new(huge);
    return 0;
}

__attribute__((noinline)) static int throw_deep() {
    try {
        return deeper(5);
    } catch (const std::bad_alloc &) {
        return 1;
    }
}

// Allocated after each throw, deeper than the thrown call was: a slot the exception left
// stale would make these look nested, and they would be missed.
__attribute__((noinline)) static void *leak_after_throw(int n) {
    if (n > 0) {
        return leak_after_throw(n - 1);
    }
    int *p = new int[6];
    sink = p;
    return p;
}

static volatile sig_atomic_t stop;

static void on_term(int) { stop = 1; }

// ./throws ROUNDS [PAUSE_MS]: PAUSE_MS between rounds; SIGTERM ends the rounds early, cleanly.
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    int pause_ms = argc > 2 ? atoi(argv[2]) : 0;
    signal(SIGTERM, on_term);
    int caught = 0, n = 0;
    for (; n < rounds && !stop; n++) {
        caught += throw_plain();
        caught += throw_aligned();
        caught += throw_deep();
        sink = leak_after_throw(8);
        if (pause_ms > 0) {
            usleep(pause_ms * 1000);
        }
    }
    printf("caught %d of %d\n", caught, 3 * n);
    printf("TRUTH leak_after_throw LEAK blocks=%d bytes=%d\n", n, n * 24);
    return caught == 3 * n ? 0 : 1;
}
