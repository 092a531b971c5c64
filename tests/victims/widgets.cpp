// widgets: a C++ victim. Methods in a namespace leak through operator new, its nothrow and
// array forms (which call malloc inside libstdc++) and through malloc directly, and pair new
// with delete; the report must show the demangled names of the callers of new. Prints what it
// leaked at exit.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <unistd.h>

namespace shop {
struct Widget {
    char data[48];
    __attribute__((noinline)) static Widget *make(int i) {
        Widget *w = new Widget;
        std::memset(w->data, i, sizeof w->data);
        return w;
    }
    __attribute__((noinline)) static Widget *make_nothrow(int i) {
        Widget *w = new (std::nothrow) Widget;
        std::memset(w->data, i, sizeof w->data);
        return w;
    }
    __attribute__((noinline)) static int *ids(int n) {
        int *v = new int[n];
        for (int k = 0; k < n; k++) v[k] = k;
        return v;
    }
    // new and delete in pairs: nothing outstanding, nothing counted twice.
    __attribute__((noinline)) static void scratch() {
        for (int k = 0; k < 10; k++) {
            char *t = new char[100 + k];
            std::memset(t, k, 100 + k);
            sink_scratch = t;
            delete[] t;
            Widget *w = new Widget;
            sink_scratch = w;
            delete w;
        }
    }
    static void *volatile sink_scratch;
    __attribute__((noinline)) static void *raw_buffer(std::size_t n) {
        void *p = std::malloc(n);
        std::memset(p, 1, n);
        return p;
    }
};
void *volatile Widget::sink_scratch;
}  // namespace shop

static volatile void *sink;

int main(int argc, char **argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 100;
    for (int i = 0; i < n; i++) {
        sink = shop::Widget::make(i);
        sink = shop::Widget::make_nothrow(i);
        sink = shop::Widget::ids(8);
        sink = shop::Widget::raw_buffer(24);
        shop::Widget::scratch();
    }
    std::printf("LEAKED raw_buffer blocks=%d bytes=%d\n", n, n * 24);
    std::printf("LEAKED make blocks=%d bytes=%d\n", n, n * 48);
    std::printf("LEAKED make_nothrow blocks=%d bytes=%d\n", n, n * 48);
    std::printf("LEAKED ids blocks=%d bytes=%d\n", n, n * 32);
    return 0;
}
