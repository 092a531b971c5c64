/* brief: a short-lived program for fault tests.  ./brief MS OUTFILE STATUS
 * Writes its pid to OUTFILE, allocates for MS milliseconds, writes "done", and exits with
 * STATUS through exit() (so the probes on exit() run). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int ms = argc > 1 ? atoi(argv[1]) : 50;
    FILE *f = fopen(argc > 2 ? argv[2] : "/dev/null", "w");
    if (!f)
        return 2;
    fprintf(f, "%d\n", getpid());
    fflush(f);
    for (int i = 0; i < ms; i++) {
        volatile char *p = malloc(100 + i);
        p[0] = 1;
        usleep(1000);
    }
    fprintf(f, "done\n");
    fclose(f);
    exit(argc > 3 ? atoi(argv[3]) : 0);
}
