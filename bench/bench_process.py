# SPDX-License-Identifier: MIT
# Baseline for bench_process: Python's multiprocessing.Process(...).start(); join() with the
# fork start method, an empty target. Prints the median microseconds of one start+join.
import multiprocessing as mp
import statistics
import sys
import time


def empty():
    pass


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    ctx = mp.get_context("fork")
    warm = ctx.Process(target=empty)
    warm.start()
    warm.join()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = ctx.Process(target=empty)
        p.start()
        p.join()
        samples.append((time.perf_counter() - t0) * 1e6)
    print(f"{statistics.median(samples):.3f}")


if __name__ == "__main__":
    main()
