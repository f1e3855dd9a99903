#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The Python baseline of bench_pipe: multiprocessing.Pipe round trip (a small int, pickled) and
# 64-byte messages one way (send_bytes / recv_bytes_into), pinned to CPUs 0/1 and unpinned.
# Usage: bench_pipe.py ROUND_TRIPS MESSAGES PIN(0|1). Prints "key value" lines.
import multiprocessing as mp
import os
import statistics
import sys
import time

REPS = 3


def pin(cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def echo(conn, n, cpu):
    pin(cpu)
    for _ in range(n):
        conn.send(conn.recv() + 1)


def sender(conn, n, cpu):
    pin(cpu)
    m = bytes(64)
    for _ in range(n):
        conn.send_bytes(m)


def round_trip(n, pinned):
    runs = []
    for _ in range(REPS):
        a, b = mp.Pipe()
        p = mp.Process(target=echo, args=(b, n, 1 if pinned else None))
        p.start()
        pin(0 if pinned else None)
        v = 0
        t0 = time.perf_counter()
        for _ in range(n):
            a.send(v)
            v = a.recv()
        runs.append((time.perf_counter() - t0) / n * 1e6)
        p.join()
        os.sched_setaffinity(0, range(os.cpu_count()))
    return statistics.median(runs)


def throughput(n, pinned):
    runs = []
    for _ in range(REPS):
        rx, tx = mp.Pipe(False)
        p = mp.Process(target=sender, args=(tx, n, 1 if pinned else None))
        buf = bytearray(64)
        t0 = time.perf_counter()
        p.start()
        pin(0 if pinned else None)
        for _ in range(n):
            rx.recv_bytes_into(buf)
        runs.append(n / (time.perf_counter() - t0))
        p.join()
        os.sched_setaffinity(0, range(os.cpu_count()))
    return statistics.median(runs)


def main():
    n_rtt, n_tput, can_pin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    mp.set_start_method("fork")
    for pinned in ([True, False] if can_pin else [False]):
        how = "pinned" if pinned else "unpinned"
        print(f"rtt_{how}_us {round_trip(n_rtt, pinned)}", flush=True)
        print(f"tput_{how} {throughput(n_tput, pinned)}", flush=True)


if __name__ == "__main__":
    main()
