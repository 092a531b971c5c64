/*
 * actions: a process whose leaks happen only when asked, for testing marks.
 *
 * Prints "actions pid=<pid> ready", then for each line read on stdin performs one action:
 * leaks ACTION_BLOCKS blocks of ACTION_SIZE bytes (kept on a list nothing frees) and makes
 * ACTION_TEMPS temporaries that it frees, then prints "done <n> leaked_blocks=<b> leaked_bytes=<y>"
 * (cumulative). A background thread churns malloc/free the whole time (at most one of its blocks
 * is live at any moment). Exits at end of input.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ACTION_BLOCKS 5
#define ACTION_SIZE 96
#define ACTION_TEMPS 20

struct node { struct node *next; char pad[ACTION_SIZE - sizeof(struct node *)]; };
static struct node *kept;
static atomic_int stop;

__attribute__((noinline)) static void leak_one(void) {
    struct node *n = malloc(sizeof *n);
    memset(n, 0x5a, sizeof *n);
    n->next = kept;
    kept = n;
}

__attribute__((noinline)) static void temporaries(void) {
    for (int i = 0; i < ACTION_TEMPS; i++) {
        char *p = malloc(200 + i);
        memset(p, i, 200 + i);
        __asm__ volatile("" : : "g"(p) : "memory");
        free(p);
    }
}

__attribute__((noinline)) static void action(void) {
    for (int i = 0; i < ACTION_BLOCKS; i++)
        leak_one();
    temporaries();
}

static void *churn(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        char *p = malloc(48);
        __asm__ volatile("" : : "g"(p) : "memory");
        free(p);
        usleep(1000);
    }
    return NULL;
}

int main(void) {
    _Static_assert(sizeof(struct node) == ACTION_SIZE, "node size");
    pthread_t t;
    pthread_create(&t, NULL, churn, NULL);
    printf("actions pid=%d ready\n", getpid());
    fflush(stdout);
    char line[256];
    unsigned long n = 0;
    while (fgets(line, sizeof line, stdin)) {
        action();
        n++;
        printf("done %lu leaked_blocks=%lu leaked_bytes=%lu\n", n, n * ACTION_BLOCKS,
               n * ACTION_BLOCKS * ACTION_SIZE);
        fflush(stdout);
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    return 0;
}
