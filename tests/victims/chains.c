/* chains: blocks held through a chain of other sites' blocks, with known truth.
 *   ./chains TICKS
 * Each tick, session_new() allocates a session (put on the global list g_sessions) whose
 * buffer comes from buf_alloc(): every buffer is held by g_sessions through a session, and
 * nothing is freed. Prints TRUTH lines, then waits for SIGTERM (or 60 s). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct session {
    struct session *next;
    char *buf;
    char name[48];
};

struct session *g_sessions;

__attribute__((noinline, noipa)) char *buf_alloc(void) {
    char *b = malloc(200);
    memset(b, 7, 200);
    return b;
}

__attribute__((noinline, noipa)) void session_new(int i) {
    struct session *s = malloc(sizeof *s);
    snprintf(s->name, sizeof s->name, "session %d", i);
    s->buf = buf_alloc();
    s->next = g_sessions;
    g_sessions = s;
}

int main(int argc, char **argv) {
    int ticks = argc > 1 ? atoi(argv[1]) : 100;
    for (int i = 0; i < ticks; i++)
        session_new(i);
    printf("TRUTH session_new REACHABLE blocks=%d bytes=%zu holder=g_sessions\n", ticks,
           ticks * sizeof(struct session));
    printf("TRUTH buf_alloc REACHABLE blocks=%d bytes=%d chain=g_sessions>session_new>buf_alloc\n",
           ticks, ticks * 200);
    fflush(stdout);
    return 0;
}
