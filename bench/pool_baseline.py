#!/usr/bin/env python3
"""Python's multiprocessing.Pool on the same cases as bench_pool, for the same-run ratios.

Prints one line of JSON: tasks per second of map over N ints of a tiny function, of
imap_unordered with chunksize 1 over M ints, the apply_async round trip in microseconds, and
pool start+stop in milliseconds.
"""
import json
import multiprocessing as mp
import sys
import time


def tiny(x):
    return x * x


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    ctx = mp.get_context("fork")
    out = {}
    with ctx.Pool(workers) as pool:
        items = list(range(n))
        pool.map(tiny, items)  # warm up, as the C++ side does
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            pool.map(tiny, items)
            runs.append(n / (time.perf_counter() - t))
        out["map_tasks_per_s"] = sorted(runs)[1]  # the median
        t = time.perf_counter()
        for _ in pool.imap_unordered(tiny, range(m), chunksize=1):
            pass
        out["imap_unordered_tasks_per_s"] = m / (time.perf_counter() - t)
        k = max(100, m // 10)
        t = time.perf_counter()
        for i in range(k):
            pool.apply_async(tiny, (i,)).get()
        out["apply_async_rtt_us"] = (time.perf_counter() - t) / k * 1e6
    reps = 5
    t = time.perf_counter()
    for _ in range(reps):
        p = ctx.Pool(workers)
        p.close()
        p.join()
    out["start_stop_ms"] = (time.perf_counter() - t) / reps * 1e3
    print(json.dumps(out))


if __name__ == "__main__":
    main()
