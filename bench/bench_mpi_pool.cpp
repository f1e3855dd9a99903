// SPDX-License-Identifier: MIT
// mpi_pool on this machine under mpirun, against a serial loop and (when it is built) the
// local shmkit::pool, in the same run: the rate of a tiny function one task per message and
// chunked, the apply round trip, rank 0's CPU time per task (what bounds a cluster: every task
// passes through rank 0), and the speed-up of a CPU-bound task set.
//
// Run as it is, it starts itself again under `mpirun -np 2 --bind-to none --oversubscribe`:
// rank 0 dispatches and rank 1 runs the tasks in its local shmkit::pool over every CPU, as one
// node of a cluster would (--bind-to none, or mpirun would bind rank 1, and so its local pool,
// to one core). SHMKIT_BENCH_MPI_NP sets the count of ranks. The local pool baseline has as
// many processes as the worker ranks' local pools together (processes()).
// SHMKIT_BENCH_MPI_IN_FLIGHT sets mpi_pool_options::tasks_in_flight (default 2 per local
// process): the least a rank holds; for tiny tasks rank 0 keeps more on it (about 2 ms of its
// measured rate) and packs them, so the chunksize-1 rates no longer hang on it.
#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <numeric>
#include <string>

#include "harness.hpp"
#include "pool_work.hpp"
#include "shmkit/mpi_pool.hpp"

using namespace shmkit::bench;

namespace {

double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

bool under_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

// Replaces this process with `mpirun -np N --oversubscribe <this program>`. Returns only when
// that cannot start.
void relaunch_under_mpirun() {
  const char* np_env = std::getenv("SHMKIT_BENCH_MPI_NP");
  const std::string np = np_env != nullptr ? np_env : "2";
  if (::geteuid() == 0) {  // Open MPI refuses root unless told
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  std::string self = "/proc/self/exe";
  char buf[4096];
  const ssize_t len = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (len > 0) self.assign(buf, static_cast<std::size_t>(len));
  std::printf("bench_mpi_pool: running under %s -np %s --bind-to none --oversubscribe\n",
              SHMKIT_MPIEXEC, np.c_str());
  std::fflush(stdout);
  ::execl(SHMKIT_MPIEXEC, SHMKIT_MPIEXEC, "-np", np.c_str(), "--bind-to", "none", "--oversubscribe",
          self.c_str(), static_cast<char*>(nullptr));
  std::perror("bench_mpi_pool: cannot start mpirun; measuring one rank");
}

const double not_built = std::nan("");  // the harness prints n/a

}  // namespace

int main(int argc, char** argv) {
  if (!under_mpirun()) relaunch_under_mpirun();
  shmkit::mpi_pool_options options;
  if (const char* f = std::getenv("SHMKIT_BENCH_MPI_IN_FLIGHT"))
    options.tasks_in_flight = std::max(1, std::atoi(f));
  shmkit::mpi_pool pool(argc, argv, options);
  if (!pool.is_root()) return 0;

  const int workers = pool.processes();  // local pool processes over the worker ranks
  table t(
      fmt::format("mpi_pool ({} ranks on this machine: rank 0 dispatches, {} worker "
                  "rank(s) run tasks in local pools of {} processes in all, {} tasks in "
                  "flight per process)",
                  pool.size(), pool.worker_ranks(), workers, options.tasks_in_flight));
#ifdef SHMKIT_HAVE_LOCAL_POOL
  shmkit::pool local(workers);
  auto local_figure = [&](auto&& measure) { return measure(local); };
#else
  auto local_figure = [](auto&&) { return not_built; };
#endif
  const long n = scaled(1'000'000);
  const long m = scaled(100'000);
  std::vector<long> items(n);
  std::iota(items.begin(), items.end(), 0L);
  pool.map(tiny, std::vector<long>(1000, 1), 1);  // warm up every rank

  {
    auto t0 = clock::now();
    std::vector<long> serial(n);
    for (long i = 0; i < n; ++i) serial[i] = tiny(items[i]);
    const double serial_rate = n / seconds_since(t0);
    auto map_rate = [&](auto& p) {
      std::vector<double> runs;
      for (int rep = 0; rep < 3; ++rep) {
        auto t1 = clock::now();
        auto r = p.map(tiny, items);
        runs.push_back(n / seconds_since(t1));
        if (r != serial) std::abort();
      }
      return median(runs);
    };
    t.row(fmt::format("map tiny fn over {} ints (default chunks)", n), "tasks/s", better::higher,
          map_rate(pool),
          {{"shmkit::pool (local)", local_figure(map_rate)},
           {"serial loop (no processes)", serial_rate}});
  }
  {
    std::vector<long> few(items.begin(), items.begin() + m);
    auto t0 = clock::now();
    std::vector<long> serial;
    for (long x : few) serial.push_back(tiny(x));
    const double serial_rate = m / seconds_since(t0);
    auto imap_rate = [&](auto& p) {
      std::vector<double> runs;
      for (int rep = 0; rep < 3; ++rep) {
        auto t1 = clock::now();
        long count = 0;
        for (long x : p.imap_unordered(tiny, few, 1)) count += (x >= 0);
        runs.push_back(count / seconds_since(t1));
      }
      return median(runs);
    };
    const double cpu0 = cpu_seconds();
    auto t1 = clock::now();
    long count = 0;
    for (long x : pool.imap_unordered(tiny, few, 1)) count += (x >= 0);
    const double wall = seconds_since(t1);
    const double rank0_us = (cpu_seconds() - cpu0) / static_cast<double>(count) * 1e6;
    t.row("imap_unordered tiny fn, chunksize 1", "tasks/s", better::higher, imap_rate(pool),
          {{"shmkit::pool (local)", local_figure(imap_rate)},
           {"serial loop (no processes)", serial_rate}});
    // Everything rank 0 spends per task (the caller's thread and the result thread): its
    // inverse is the most tasks per second one dispatching rank can sustain, however many
    // worker ranks there are.
    t.row("rank 0 CPU per task, chunksize 1", "us", better::lower, rank0_us, {});
    t.row("rank 0 dispatch ceiling (1 / CPU per task)", "tasks/s", better::higher, 1e6 / rank0_us,
          {{"measured rate in the same run", count / wall}});
  }
  {
    // Submitted one at a time, all before the first get(): they travel packed.
    auto burst_rate = [&](auto& p) {
      std::vector<double> runs;
      for (int rep = 0; rep < 3; ++rep) {
        auto t1 = clock::now();
        std::vector<decltype(p.apply_async(tiny, 0L))> rs;
        rs.reserve(static_cast<std::size_t>(m));
        for (long i = 0; i < m; ++i) rs.push_back(p.apply_async(tiny, i));
        long sum = 0;
        for (auto& r : rs) sum += r.get() >= 0;
        runs.push_back(static_cast<double>(sum) / seconds_since(t1));
      }
      return median(runs);
    };
    t.row(fmt::format("apply_async tiny fn x {}, then get() each", m), "tasks/s", better::higher,
          burst_rate(pool), {{"shmkit::pool (local)", local_figure(burst_rate)}});
  }
  {
    const long k = std::max(100L, m / 20);
    auto rtt = [&](auto& p) {
      auto t0 = clock::now();
      for (long i = 0; i < k; ++i) p.apply_async(tiny, i).get();
      return seconds_since(t0) / static_cast<double>(k) * 1e6;
    };
    t.row("apply_async(f).get() round trip", "us", better::lower, rtt(pool),
          {{"shmkit::pool (local)", local_figure(rtt)}});
  }
  {
    // Serial runs, pool runs and plain forked processes (the job split by hand, no pool: the
    // most this machine gives right now) alternate, and each figure is the median of the
    // ratios to the serial run just before it: on a shared machine the load changes.
    const int tasks = static_cast<int>(std::max(8L, scaled(64)));
    const int work = 4'000'000;
    std::vector<int> job(tasks, work);
    auto serial_seconds = [&] {
      auto t0 = clock::now();
      double s = 0;
      for (int w : job) s += burn(w);
      if (s < 0) std::abort();
      return seconds_since(t0);
    };
    auto forked_seconds = [&](int procs) {
      auto t0 = clock::now();
      std::vector<pid_t> kids;
      for (int p = 0; p < procs; ++p)
        kids.push_back(fork_run([&, p] {
          double s = 0;
          for (int i = p; i < tasks; i += procs) s += burn(job[i]);
          if (s < 0) std::abort();
        }));
      for (pid_t k : kids) reap(k);
      return seconds_since(t0);
    };
    // Each round: serial, mpi_pool, local pool, forked processes; each figure is the median
    // of its ratios to the serial run of its round.
    double task_ms = 0;
    std::vector<double> mpi_ratios, local_ratios, forked_ratios;
    auto pool_seconds = [&](auto& p) {
      auto t1 = clock::now();
      auto r = p.map(burn, job, 1);
      if (r.size() != job.size()) std::abort();
      return seconds_since(t1);
    };
    for (int rep = 0; rep < 5; ++rep) {
      const double serial = serial_seconds();
      task_ms = serial / tasks * 1e3;
      mpi_ratios.push_back(serial / pool_seconds(pool));
      local_ratios.push_back(local_figure([&](auto& p) { return serial / pool_seconds(p); }));
      forked_ratios.push_back(serial / forked_seconds(workers));
    }
    const double mpi = median(mpi_ratios);
    const double local_speedup = median(local_ratios);
    t.row(fmt::format("cpu-bound speed-up, {} tasks of {:.0f} ms", tasks, task_ms), "x serial",
          better::higher, mpi,
          {{"shmkit::pool (local)", local_speedup},
           {fmt::format("{} forked processes, no pool", workers), median(forked_ratios)},
           {fmt::format("ideal (= {} processes)", workers), static_cast<double>(workers)}});
  }
}
