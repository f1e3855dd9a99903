# SPDX-License-Identifier: MIT
# Baseline for bench_queue: Python's multiprocessing.Queue, one producer process to one
# consumer process, messages of SIZE bytes. Prints messages per second.
# Usage: python3 bench_queue.py SIZE COUNT
import multiprocessing as mp
import sys
import time


def produce(q, size, count):
    msg = b"p" * size
    for _ in range(count):
        q.put(msg)
    q.put(None)


def consume(q, done):
    while q.get() is not None:
        pass
    done.set()


def main():
    size, count = int(sys.argv[1]), int(sys.argv[2])
    mp.set_start_method("fork")
    q = mp.Queue(1024)
    done = mp.Event()
    c = mp.Process(target=consume, args=(q, done))
    c.start()
    t0 = time.perf_counter()
    p = mp.Process(target=produce, args=(q, size, count))
    p.start()
    done.wait()
    elapsed = time.perf_counter() - t0
    p.join()
    c.join()
    print(count / elapsed)


if __name__ == "__main__":
    main()
