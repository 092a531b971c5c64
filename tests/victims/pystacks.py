"""Outstanding memory at exit along several distinct paths, for comparing stacks with valgrind.

Run by Debian's python3 with PYTHONMALLOC=malloc (every object from malloc): native blocks
dropped through ctypes (libffi's call into the C library), objects kept by module globals
(freed or not by the interpreter's finalization, as it chooses), and a compiled regular
expression and its cache.

With an argument, writes its own memory map there at the end: under valgrind, the addresses of
valgrind's stacks are the real ones, and the map turns them into file offsets.
"""
import ctypes
import re
import sys

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.calloc.restype = ctypes.c_void_p


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
