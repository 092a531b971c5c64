// forker: leaks in the parent, then forks children that leak and exit at once (without
// exec, so their symbols are the parent's), then waits for them. Prints the truth per
// process: "TRUTH <pid> <site> LEAK blocks=B bytes=N".
//   usage: forker [CHILDREN] [CHILD_DELAY_MS]   (a child waits that long before it leaks, as
//   a server's worker starts its work a moment after the fork)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile sink;

__attribute__((noinline)) static void parent_leak(int n) {
    for (int i = 0; i < n; i++) {
        void *p = malloc(40);
        memset(p, 1, 40);
        sink = p;
    }
}

__attribute__((noinline)) static void child_leak(int n) {
    for (int i = 0; i < n; i++) {
        void *p = malloc(56);
        memset(p, 2, 56);
        sink = p;
    }
}

int main(int argc, char **argv) {
    int children = argc > 1 ? atoi(argv[1]) : 2;
    int delay_ms = argc > 2 ? atoi(argv[2]) : 0;
    parent_leak(10);
    printf("TRUTH %d parent_leak LEAK blocks=10 bytes=400\n", getpid());
    fflush(stdout);
    for (int c = 0; c < children; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            usleep(delay_ms * 1000);
            child_leak(100 + c);
            printf("TRUTH %d child_leak LEAK blocks=%d bytes=%d\n", getpid(), 100 + c,
                   56 * (100 + c));
            fflush(stdout);
            _exit(0);
        }
        waitpid(pid, NULL, 0);
    }
    return 0;
}
