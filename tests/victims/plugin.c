/* plugin: code loaded with dlopen after tracer has attached, built without frame pointers: its
 * unwind table is built when a stack first meets it. One source built twice: with -DPLUGIN,
 * -shared -fPIC as the library; without, as the program that loads it.
 *
 * ./plugin LIBRARY DELAY_MS TICKS: prints "plugin pid=N", waits DELAY_MS, dlopens LIBRARY, calls
 * its plugin_work() once a millisecond TICKS times (every block leaked), prints the TRUTH. */
#ifdef PLUGIN
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static void *plugin_alloc(size_t n) {
    void *p = malloc(n);
    memset(p, 7, n);
    return p;
}

__attribute__((noinline)) void *plugin_work(int i) {
    void *p = plugin_alloc(48 + (i & 1) * 16);
    __asm__ volatile("" ::: "memory");
    return p;
}
#else
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *volatile sink;

__attribute__((noinline)) static unsigned long run_plugin(void *(*work)(int), int ticks) {
    unsigned long bytes = 0;
    for (int i = 0; i < ticks; i++) {
        sink = work(i);
        bytes += 48 + (i & 1) * 16;
        usleep(1000);
    }
    return bytes;
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    printf("plugin pid=%d\n", getpid());
    fflush(stdout);
    usleep(atoi(argv[2]) * 1000);
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    void *(*work)(int) = (void *(*)(int))dlsym(lib, "plugin_work");
    int ticks = atoi(argv[3]);
    unsigned long bytes = run_plugin(work, ticks);
    printf("TRUTH plugin_alloc LEAK blocks=%d bytes=%lu\n", ticks, bytes);
    return 0;
}
#endif
