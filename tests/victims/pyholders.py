# pyholders: a Python program whose native blocks (malloc'd through ctypes) end in each
# reachability class, beside everything the interpreter itself holds, then leaves without the
# interpreter's shutdown, so what it holds is outstanding at exit.
# Run with PYTHONMALLOC=malloc: every object then comes from malloc.
#   dropped   malloc(1000) x 2000, the address never stored   -> definitely lost
#   kept      malloc(2000) x 2000, stored in a ctypes array    -> reachable (from the module)
#   interior  malloc(128)  x 2000, only address+16 stored      -> possibly lost
import ctypes
import os

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

N = 2000
kept = (ctypes.c_void_p * N)()
interior = (ctypes.c_void_p * N)()
names = {}
for i in range(N):
    # The address of a dropped block lives only in a Python int, whose digits are 30 bits
    # each: no aligned word anywhere holds it.
    libc.memset(libc.malloc(1000), 0, 1000)
    p = libc.malloc(2000)
    libc.memset(p, 0, 2000)
    kept[i] = p
    q = libc.malloc(128)
    libc.memset(q, 0, 128)
    interior[i] = q + 16
    names["k%d" % i] = "v" * (i % 100)
    p = q = None
print(len(names), flush=True)
os._exit(0)
