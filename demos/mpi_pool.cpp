// SPDX-License-Identifier: MIT
// The pool API across the ranks of an MPI job. One program, two ways to run it:
//   ./mpi_pool                                   one process: rank 0 runs the tasks itself
//   mpirun -np 2 --bind-to none ./mpi_pool       rank 0 dispatches, rank 1 runs the tasks in
//                                                its local pool, a process per CPU
//   mpirun -np 3 --host a:2,b:1 --bind-to none ./mpi_pool
//                                                the same over two machines: rank 0 and rank 1
//                                                on a, rank 2 on b, each worker rank with a
//                                                local pool over its machine's CPUs
// Every rank makes the pool. On ranks 1..N-1 the constructor serves tasks and returns only
// when rank 0's pool shuts down, so everything under `if (pool.is_root())` runs on rank 0.
// run_jobs() is written against the pool API alone: given a shmkit::pool instead, it runs
// unchanged on one machine's processes.
#include <shmkit/mpi_pool.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

// CPU-bound work: how many primes lie in [lo, hi).
long count_primes(std::pair<long, long> range) {
  long n = 0;
  for (long x = std::max(2L, range.first); x < range.second; ++x) {
    bool prime = true;
    for (long d = 2; d * d <= x && prime; ++d) prime = x % d != 0;
    n += prime;
  }
  return n;
}

long checked_sqrt(long x) {
  if (x < 0) throw std::domain_error("no square root of a negative number");
  long r = 0;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

pid_t where(int) { return ::getpid(); }

template <class Pool>
void run_jobs(Pool& pool) {
  //[mpi_pool_map
  // map: primes below 2,000,000, in 200 ranges; results come back in order.
  std::vector<std::pair<long, long>> ranges;
  for (long lo = 0; lo < 2'000'000; lo += 10'000) ranges.emplace_back(lo, lo + 10'000);
  std::vector<long> counts = pool.map(count_primes, ranges);
  //]
  std::printf("primes below 2,000,000: %ld (in %zu ranges)\n",
              std::accumulate(counts.begin(), counts.end(), 0L), counts.size());

  // imap: lazily, in order, each as soon as it and those before it are done.
  std::printf("primes per 100,000, as they come:");
  std::vector<std::pair<long, long>> big;
  for (long lo = 0; lo < 1'000'000; lo += 100'000) big.emplace_back(lo, lo + 100'000);
  for (long c : pool.imap(count_primes, big)) std::printf(" %ld", c);
  std::printf("\n");

  // apply_async with callbacks, which run on rank 0's result thread; a task that throws
  // reaches the error callback as shmkit::remote_error.
  std::atomic<int> done{0};
  std::vector<shmkit::async_result<long>> pending;
  for (long x : {49L, -1L, 1'000'000L}) {
    pending.push_back(pool.apply_async(checked_sqrt, x));
    pending.back().then(
        [x, &done](long r) {
          std::printf("sqrt(%ld) = %ld\n", x, r);
          ++done;
        },
        [x, &done](const std::exception& e) {
          auto& re = dynamic_cast<const shmkit::remote_error&>(e);
          std::printf("sqrt(%ld) failed on pid %d: %s: %s\n", x, static_cast<int>(re.pid()),
                      re.type_name().c_str(), re.what());
          ++done;
        });
  }
  for (auto& r : pending) r.wait();
  while (done.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  // Where did the tasks run?
  std::vector<int> probes(64);
  auto pids = pool.map(where, probes, 1);
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  std::printf("tasks ran in %zu process(es)\n", pids.size());
}

int main(int argc, char** argv) {
  shmkit::mpi_pool pool(argc, argv);  // every rank; worker ranks serve here until the end
  if (pool.is_root()) {
    if (pool.worker_ranks() == 0)
      std::printf("1 rank (not under mpirun): rank 0 (pid %d) runs the tasks itself, one at a "
                  "time\n",
                  static_cast<int>(::getpid()));
    else
      std::printf("%d ranks: rank 0 (pid %d) dispatches, %d worker rank(s) run the tasks in "
                  "local pools of %d processes in all\n",
                  pool.size(), static_cast<int>(::getpid()), pool.worker_ranks(),
                  pool.processes());
    run_jobs(pool);
  }
}  // rank 0's pool shuts down here, releasing the worker ranks; every rank finalizes MPI
