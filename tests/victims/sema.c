/* sema: a program with a counter another tool can use as a uprobe's reference counter (as a
 * USDT semaphore is), to provoke the kernel's refusal of a second uprobe on the same function
 * with a different counter. */
#include <stdlib.h>

unsigned short tracer_test_semaphore __attribute__((used, section(".data")));

int main(void) {
    for (int i = 0; i < 100; i++) {
        free(malloc(32 + i));
    }
    return 0;
}
