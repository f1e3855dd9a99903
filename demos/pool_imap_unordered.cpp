// SPDX-License-Identifier: MIT
// Four workers, four tasks of two seconds each: all done in about two seconds, each result
// printed as soon as it arrives (completion order, not submission order).
#include <shmkit/shmkit.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <unistd.h>
#include <vector>

int nap(int seconds) {
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  return seconds;
}

int main() {
  const auto start = std::chrono::steady_clock::now();
  auto since = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  shmkit::pool pool(4);
  std::vector<int> tasks{2, 2, 2, 2};
  for (int r : pool.imap_unordered(nap, tasks))
    std::printf("%5.2f s: a task of %d s finished\n", since(), r);
  std::printf("total %.2f s for %zu tasks of ~2 s on %d workers\n", since(), tasks.size(),
              pool.processes());
}
