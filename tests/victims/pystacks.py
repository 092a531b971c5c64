"""Outstanding memory at exit along several distinct paths, for comparing stacks with valgrind.

Run by Debian's python3 with PYTHONMALLOC=malloc (every object from malloc): native blocks
dropped through ctypes (libffi's call into the C library), objects kept by module globals
(freed or not by the interpreter's finalization, as it chooses), and a compiled regular
expression and its cache.

With an argument, writes its own memory map there at the end: under valgrind, the addresses of
valgrind's stacks are the real ones, and the map turns them into file offsets.

It imports what it needs and makes one native allocation first, then waits a moment, as a
long-running program is past its start-up when it leaks: the first stack through a library
loaded by `dlopen` (libffi here) has tracer build that library's table, and the frames walked
before it is in place are walked by frame pointers (counted in `events.fp_fallback`; another
test covers them). What is compared with valgrind is the walk by the tables.
"""
import ctypes
import re
import sys
import time

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.calloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8))
time.sleep(0.2)


def drop_native(n, size):
    """Blocks nobody will free: lost."""
    for _ in range(n):
        libc.malloc(size)


def drop_zeroed(n):
    for _ in range(n):
        libc.calloc(16, 64)


def build_table(n):
    """A dict of lists of strings, kept by a global."""
    return {"k%d" % i: ["v%d" % j for j in range(8)] for i in range(n)}


drop_native(300, 1000)
drop_zeroed(200)
TABLE = build_table(3000)
PATTERNS = [re.compile(r"(\w+)-%d-(\d+)" % i) for i in range(50)]
print(sum(len(v) for v in TABLE.values()), len(PATTERNS))
if len(sys.argv) > 1:
    with open("/proc/self/maps") as src, open(sys.argv[1], "w") as out:
        out.write(src.read())
