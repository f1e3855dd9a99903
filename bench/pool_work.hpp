// SPDX-License-Identifier: MIT
// The work the pool benchmarks send (bench_pool.cpp, bench_mpi_pool.cpp): a function so small
// that only the pool's own cost shows, and a CPU-bound one.
#pragma once

#include <cmath>

namespace shmkit::bench {

inline long tiny(long x) { return x * x; }

inline double burn(int n) {
  double s = 0;
  for (int k = 0; k < n; ++k) s += std::sqrt(static_cast<double>(k) + 0.5);
  return s;
}

}  // namespace shmkit::bench
