// SPDX-License-Identifier: MIT
// The pool against a serial loop and Python's multiprocessing.Pool (when python3 is there), in
// the same run: map of a tiny function, imap_unordered with chunksize 1, the apply_async round
// trip, pool start+stop, and the speed-up of a CPU-bound task set against the ideal.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <string>

#include "harness.hpp"
#include "shmkit/pool.hpp"
#include "shmkit/process.hpp"

using namespace shmkit::bench;

namespace {

long tiny(long x) { return x * x; }

double burn(int n) {
  double s = 0;
  for (int k = 0; k < n; ++k) s += std::sqrt(static_cast<double>(k) + 0.5);
  return s;
}

// Runs bench/pool_baseline.py; NaN figures when python3 is missing or fails.
std::map<std::string, double> python_figures(long n, long m, int workers) {
  std::map<std::string, double> f;
  const std::string cmd = fmt::format("python3 {}/pool_baseline.py {} {} {} 2>/dev/null",
                                      SHMKIT_BENCH_DIR, n, m, workers);
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return f;
  char buf[1024] = {};
  std::string line = std::fgets(buf, sizeof buf, p) ? buf : "";
  ::pclose(p);
  for (const char* key : {"map_tasks_per_s", "imap_unordered_tasks_per_s", "apply_async_rtt_us",
                          "start_stop_ms"}) {
    auto at = line.find(std::string("\"") + key + "\": ");
    if (at != std::string::npos) f[key] = std::strtod(line.c_str() + at + std::strlen(key) + 4, nullptr);
  }
  return f;
}

double py(const std::map<std::string, double>& f, const char* key) {
  auto it = f.find(key);
  return it == f.end() ? 0.0 / 0.0 : it->second;
}

}  // namespace

int main() {
  table t("pool");
  const int workers = std::max(2, shmkit::cpu_count());
  const long n = scaled(1'000'000);
  const long m = scaled(20'000);
  const auto pyf = python_figures(n, m, workers);

  shmkit::pool pool(workers);
  std::vector<long> items(n);
  std::iota(items.begin(), items.end(), 0L);
  // Warm up (the queues' pages and the allocators' arenas, as a long-lived pool has them);
  // Python's baseline warms up the same way.
  pool.map(tiny, items);

  {
    std::vector<double> runs;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = clock::now();
      auto r = pool.map(tiny, items);
      runs.push_back(n / seconds_since(t0));
    }
    auto t0 = clock::now();
    std::vector<long> serial(n);
    for (long i = 0; i < n; ++i) serial[i] = tiny(items[i]);
    const double serial_rate = n / seconds_since(t0);
    t.row(fmt::format("map tiny fn over {} ints, {} workers", n, workers), "tasks/s",
          better::higher, median(runs),
          {{"python multiprocessing.Pool.map", py(pyf, "map_tasks_per_s")},
           {"serial loop (no processes)", serial_rate}});
  }
  {
    // A few milliseconds per run: the median of five, as for map.
    std::vector<long> few(items.begin(), items.begin() + m);
    std::vector<double> runs;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = clock::now();
      long count = 0;
      for (long x : pool.imap_unordered(tiny, few, 1)) count += (x >= 0);
      runs.push_back(count / seconds_since(t0));
      if (count != m) return 1;
    }
    t.row("imap_unordered chunksize 1", "tasks/s", better::higher, median(runs),
          {{"python imap_unordered chunksize 1", py(pyf, "imap_unordered_tasks_per_s")}});
  }
  {
    // The median of five runs, as for map: one run is a few milliseconds, where one
    // descheduling of the caller or a worker moves the mean by microseconds.
    const long k = std::max(100L, m / 10);
    std::vector<double> runs;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = clock::now();
      for (long i = 0; i < k; ++i) pool.apply_async(tiny, i).get();
      runs.push_back(seconds_since(t0) / k * 1e6);
    }
    const double rtt = median(runs);
    t.row("apply_async(f).get() round trip", "us", better::lower, rtt,
          {{"python apply_async().get()", py(pyf, "apply_async_rtt_us")}});
  }
  {
    const int reps = 5;
    auto t0 = clock::now();
    for (int i = 0; i < reps; ++i) {
      shmkit::pool p(workers);
      p.close();
      p.join();
    }
    t.row(fmt::format("pool start+close+join, {} workers", workers), "ms", better::lower,
          seconds_since(t0) / reps * 1e3, {{"python Pool() close join", py(pyf, "start_stop_ms")}});
  }
  {
    const int tasks = static_cast<int>(std::max(8L, scaled(64)));
    const int work = 2'000'000;
    std::vector<int> job(tasks, work);
    auto t0 = clock::now();
    double s = 0;
    for (int w : job) s += burn(w);
    const double serial = seconds_since(t0);
    for (int w = 1; w <= workers; ++w) {
      shmkit::pool p(w);
      auto t1 = clock::now();
      auto r = p.map(burn, job, 1);
      const double speedup = serial / seconds_since(t1);
      t.row(fmt::format("cpu-bound speed-up | workers={}", w), "x serial", better::higher,
            speedup, {{"ideal (= workers)", static_cast<double>(w)}});
      if (r.size() != job.size() || s < 0) return 1;
    }
  }
}
