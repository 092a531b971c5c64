// widgets: a C++ victim. A method in a namespace leaks through operator new (which calls
// malloc inside libstdc++) and through malloc directly; the report must show the demangled
// names. Prints what it leaked at exit.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace shop {
struct Widget {
    char data[48];
    __attribute__((noinline)) static Widget *make(int i) {
        Widget *w = new Widget;
        std::memset(w->data, i, sizeof w->data);
        return w;
    }
    __attribute__((noinline)) static void *raw_buffer(std::size_t n) {
        void *p = std::malloc(n);
        std::memset(p, 1, n);
        return p;
    }
};
}  // namespace shop

static volatile void *sink;

int main(int argc, char **argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 100;
    for (int i = 0; i < n; i++) {
        sink = shop::Widget::make(i);
        sink = shop::Widget::raw_buffer(24);
    }
    std::printf("LEAKED raw_buffer blocks=%d bytes=%d\n", n, n * 24);
    std::printf("LEAKED make blocks=%d bytes=%d\n", n, n * 48);
    return 0;
}
