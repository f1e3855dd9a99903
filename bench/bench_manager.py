# SPDX-License-Identifier: MIT
# Baseline for bench_manager: Python's multiprocessing Manager().dict() and .list(), the same
# workloads from 1 or more processes. Prints one number: operations per second (all processes
# together). Usage: python3 bench_manager.py {set|get|update|append} N PROCESSES
import sys
import time
from multiprocessing import Manager, Process

KEYS = ["key%d" % i for i in range(1000)]


def work(container, op, n):
    if op == "set":
        for i in range(n):
            container[KEYS[i % 1000]] = i
    elif op == "get":
        for i in range(n):
            container[KEYS[i % 1000]]
    elif op == "update":  # two round trips and not atomic: Manager has no read-modify-write
        for i in range(n):
            k = KEYS[i % 1000]
            container[k] = container[k] + 1
    elif op == "append":
        for i in range(n):
            container.append(i)


def main():
    op, n, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Manager() as m:
        container = m.list() if op == "append" else m.dict({k: 0 for k in KEYS})
        t0 = time.perf_counter()
        if procs == 1:
            work(container, op, n)
        else:
            ps = [Process(target=work, args=(container, op, n)) for _ in range(procs)]
            for p in ps:
                p.start()
            for p in ps:
                p.join()
        dt = time.perf_counter() - t0
    print(n * procs / dt)


if __name__ == "__main__":
    main()
