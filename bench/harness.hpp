// SPDX-License-Identifier: MIT
// The bench harness: every case measures shmkit and its baselines in the same run, in real
// processes, and prints one row per case: the shmkit figure, each baseline's figure and the
// ratio (how many times better shmkit is: >1 means shmkit wins, whichever way the unit runs).
// The same rows are appended as JSON lines to $SHMKIT_BENCH_JSON when it is set.
//
// Sweeps: bench/report (which writes docs/BENCHMARKS.md) draws a chart from every case whose
// name ends in " | <key>=<value>"; the text before the bar names the series, one line per
// series and per baseline:
//   "queue ping-pong p50 | payload=64B"   latency against payload size (lower is better)
//   "queue throughput | msg=4KiB"         throughput against message size (higher is better)
//   "pool map | workers=4"                speed-up against worker count (each line divided by
//                                         its value at the fewest workers, unless the unit is
//                                         already a speed-up, e.g. "x")
// Keys payload, msg, message, size and bytes take a byte count (64, 64B, 4KiB, 1MiB, 2MB);
// workers, processes, procs and threads a count; any other key gets a chart of its own
// (unit against key). Keep the series text identical across the sweep, and one unit per series.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>
#include <sched.h>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include "shmkit/detail/wait.hpp"

namespace shmkit::bench {

struct figure {
  std::string who;  // "shmkit", "pipe(2)", "boost::interprocess", ...
  double value;     // NaN when the baseline is not available on this machine
};

enum class better { higher, lower };

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

inline double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  std::size_t i = static_cast<std::size_t>(p / 100.0 * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

// Quick mode (SHMKIT_BENCH_QUICK=1, used by the test suite's smoke run) scales work down.
inline bool quick() {
  const char* q = std::getenv("SHMKIT_BENCH_QUICK");
  return q != nullptr && *q != '\0' && *q != '0';
}
inline long scaled(long n) { return quick() ? std::max(1L, n / 100) : n; }

// Pins the calling process to one CPU (no-op when the CPU is not ours). Returns success.
inline bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

inline int cpus_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

// Runs fn in a forked child and returns at once; the child exits with 0 after fn.
inline pid_t fork_run(const std::function<void()>& fn) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    fn();
    std::fflush(nullptr);
    std::_Exit(0);
  }
  return pid;
}
inline void reap(pid_t pid) {
  int st;
  ::waitpid(pid, &st, 0);
}

class table {
 public:
  explicit table(std::string suite) : suite_(std::move(suite)) {
    std::printf("\n== %s ==\n", suite_.c_str());
    std::printf("%-44s %-22s %12s  %-34s %12s %8s\n", "case", "unit", "shmkit", "baseline",
                "figure", "ratio");
    std::fflush(stdout);
  }

  // One row per baseline; the shmkit figure is repeated for each.
  void row(std::string_view name, std::string_view unit, better dir, double shmkit,
           const std::vector<figure>& baselines) {
    for (const auto& b : baselines) {
      const double ratio = (b.value != b.value || shmkit == 0 || b.value == 0)
                               ? 0.0
                               : (dir == better::higher ? shmkit / b.value : b.value / shmkit);
      std::printf("%-44s %-22s %12s  %-34s %12s %7.2fx\n", std::string(name).c_str(),
                  std::string(unit).c_str(), num(shmkit).c_str(), b.who.c_str(),
                  b.value != b.value ? "n/a" : num(b.value).c_str(), ratio);
      json(name, unit, dir, shmkit, b, ratio);
    }
    if (baselines.empty()) {
      std::printf("%-44s %-22s %12s\n", std::string(name).c_str(), std::string(unit).c_str(),
                  num(shmkit).c_str());
      json(name, unit, dir, shmkit, {"", 0.0 / 0.0}, 0);
    }
    std::fflush(stdout);
  }

 private:
  static std::string num(double v) {
    if (v >= 1e7) return fmt::format("{:.3g}", v);
    if (v >= 100) return fmt::format("{:.0f}", v);
    if (v >= 1) return fmt::format("{:.2f}", v);
    return fmt::format("{:.3f}", v);
  }
  void json(std::string_view name, std::string_view unit, better dir, double shmkit,
            const figure& b, double ratio) {
    const char* path = std::getenv("SHMKIT_BENCH_JSON");
    if (path == nullptr || *path == '\0') return;
    if (std::FILE* f = std::fopen(path, "a")) {
      auto val = [](double v) {
        return std::isfinite(v) ? fmt::format("{}", v) : std::string("null");
      };
      const std::string suite = escape(suite_), nm = escape(name), un = escape(unit),
                        who = escape(b.who);
      std::fprintf(f,
                   "{\"suite\":\"%s\",\"case\":\"%s\",\"unit\":\"%s\",\"better\":\"%s\","
                   "\"shmkit\":%s,\"baseline\":\"%s\",\"baseline_value\":%s,\"ratio\":%s}\n",
                   suite.c_str(), nm.c_str(), un.c_str(),
                   dir == better::higher ? "higher" : "lower", val(shmkit).c_str(),
                   who.c_str(), val(b.value).c_str(), val(ratio).c_str());
      std::fclose(f);
    }
  }
  // The text of a JSON string: quotes, backslashes and control characters escaped.
  static std::string escape(std::string_view s) {
    std::string out;
    for (char c : s) {
      if (c == '"' || c == '\\') out += {'\\', c};
      else if (static_cast<unsigned char>(c) < 0x20)
        out += fmt::format("\\u{:04x}", static_cast<int>(c));
      else out += c;
    }
    return out;
  }
  std::string suite_;
};

using clock = std::chrono::steady_clock;
inline double seconds_since(clock::time_point t) {
  return std::chrono::duration<double>(clock::now() - t).count();
}

// The physical floor of a ping-pong between two processes: one flag bounced through a cache
// line by spinning, no copy, no clock read per round trip. Returns the mean round trip in
// microseconds over n; with `pinned`, the child runs on CPU 1 and the caller stays on CPU 0
// afterwards.
inline double spin_round_trip_us(long n, bool pinned) {
  void* mem = ::mmap(nullptr, 128, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return std::nan("");
  auto* turn = new (mem) std::atomic<std::uint32_t>(0);
  pid_t child = fork_run([&] {
    if (pinned) pin_to(1);
    for (long i = 0; i < n; ++i) {
      while (turn->load(std::memory_order_acquire) != 1) detail::cpu_relax();
      turn->store(0, std::memory_order_release);
    }
  });
  if (pinned) pin_to(0);
  const auto t0 = clock::now();
  for (long i = 0; i < n; ++i) {
    turn->store(1, std::memory_order_release);
    while (turn->load(std::memory_order_acquire) != 0) detail::cpu_relax();
  }
  const double us = seconds_since(t0) / static_cast<double>(n) * 1e6;
  reap(child);
  ::munmap(mem, 128);
  return us;
}

}  // namespace shmkit::bench
