// containers: a C++ victim for stacks without frame pointers, built -O2 (no frame pointers)
// like the libstdc++ it runs on. Its own functions grow standard containers kept in globals:
// a std::string (whose growth runs inside libstdc++.so: basic_string<char> is instantiated
// there), a std::vector and a std::map (instantiated here). What the containers hold at exit
// is outstanding; the program prints that truth from the containers themselves.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace store {
std::string *g_text;
std::vector<long> *g_numbers;
std::map<int, long> *g_index;

__attribute__((noinline)) void grow_text(int n) {
    for (int i = 0; i < n; i++) g_text->append("0123456789abcdef");
}
__attribute__((noinline)) void grow_numbers(int n) {
    for (int i = 0; i < n; i++) g_numbers->push_back(i);
}
__attribute__((noinline)) void fill_index(int n) {
    for (int i = 0; i < n; i++) (*g_index)[i] = i;
}
}  // namespace store

// One level more between main and the containers, in a file without frame pointers.
__attribute__((noinline)) void work(int n) {
    store::grow_text(n);
    store::grow_numbers(n);
    store::fill_index(n);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 1000;
    store::g_text = new std::string;
    store::g_numbers = new std::vector<long>;
    store::g_index = new std::map<int, long>;
    work(n);
    using Node = std::_Rb_tree_node<std::map<int, long>::value_type>;
    std::printf("TRUTH store::grow_text(int) LEAK blocks=1 bytes=%zu\n",
                store::g_text->capacity() + 1);
    std::printf("TRUTH store::grow_numbers(int) LEAK blocks=1 bytes=%zu\n",
                store::g_numbers->capacity() * sizeof(long));
    std::printf("TRUTH store::fill_index(int) LEAK blocks=%zu bytes=%zu\n",
                store::g_index->size(), store::g_index->size() * sizeof(Node));
    return 0;
}
