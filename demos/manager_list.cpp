// SPDX-License-Identifier: MIT
// The classic Manager example: four worker processes each append their number to one shared
// list, the parent joins them and prints the list. No server process: the list lives in
// shared memory and every process writes to it directly.
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <vector>

int main() {
  //[manager_list
  shmkit::manager mgr;  // anonymous: shared with the processes started below
  shmkit::shared_list<int> results = mgr.list<int>("results");

  std::vector<shmkit::process> workers;
  for (int n = 0; n < 4; ++n)
    workers.emplace_back(
        [](shmkit::shared_list<int> out, int me) {
          for (int i = 0; i < 10; ++i) out.push_back(me);
        },
        results, n);
  for (auto& w : workers) w.start();
  for (auto& w : workers) w.join();

  std::printf("results (%zu items):", results.size());
  for (int x : results.to_vector()) std::printf(" %d", x);
  std::printf("\n");
  //]
  return results.size() == 40 ? 0 : 1;
}
