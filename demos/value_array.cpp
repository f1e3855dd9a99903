// SPDX-License-Identifier: MIT
// Python's Value and Array: a counter that four processes increment under its lock, and an
// array that each worker fills a part of. value::update() is one locked step; holding
// get_lock() makes several calls one step.
#include <shmkit/shmkit.hpp>

#include <cmath>
#include <cstdio>
#include <mutex>
#include <vector>

int main() {
  constexpr int workers = 4;
  constexpr std::size_t n = 20;
  //[value_array
  shmkit::value<long> counter(0);
  shmkit::array<double> squares(n);  // zeroed

  auto work = [&](int w) {  // runs in a child: counter and squares are the shared objects
    for (std::size_t i = static_cast<std::size_t>(w); i < n; i += workers)
      squares[i] = std::pow(static_cast<double>(i), 2);  // a plain reference into shared memory
    for (int k = 0; k < 1000; ++k) counter.update([](long& c) { ++c; });
    std::lock_guard lock(counter.get_lock());  // two calls, one step
    counter.store(counter.load() + 1000);
  };
  std::vector<shmkit::process> procs;
  for (int w = 0; w < workers; ++w) procs.emplace_back(work, w);
  for (auto& p : procs) p.start();
  for (auto& p : procs) p.join();

  std::printf("counter = %ld\nsquares =", counter.load());
  for (double x : squares) std::printf(" %.0f", x);
  std::printf("\n");
  //]
  return counter.load() == workers * 2000 ? 0 : 1;
}
