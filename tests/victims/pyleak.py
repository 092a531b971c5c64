# pyleak: a Python program that keeps 100,000 dicts and strings (and makes and drops many
# more), then leaves without the interpreter's shutdown, so what it holds is outstanding at exit.
# Run with PYTHONMALLOC=malloc: every object then comes from malloc.
import os
keep = []
def grow(n):
    for i in range(n):
        keep.append({"i": i, "s": "x" * (i % 200), "t": (i, i + 1)})
def churn(n):
    for i in range(n):
        d = {"k": [j for j in range(i % 50)]}
        del d
for r in range(20):
    grow(5000)
    churn(20000)
print(len(keep), flush=True)
os._exit(0)   # no interpreter shutdown: what the program holds is outstanding at exit
