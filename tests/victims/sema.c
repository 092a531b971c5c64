/* sema: a program with a counter another tool can use as a uprobe's reference counter (as a
 * USDT semaphore is), to provoke the kernel's refusal of a second uprobe on the same function
 * with a different counter. */
#include <stdlib.h>
#include <time.h>

unsigned short tracer_test_semaphore __attribute__((used, section(".data")));

/* ./sema [SECS]: allocates and frees for SECS seconds (default: 100 times, at once). */
int main(int argc, char **argv) {
    time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 0);
    do {
        for (int i = 0; i < 100; i++) {
            free(malloc(32 + i));
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    } while (time(NULL) < end);
    return 0;
}
