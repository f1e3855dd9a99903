// SPDX-License-Identifier: MIT
// The classic Manager example: four worker processes each append their number to one shared
// list, the parent waits for them and prints the list. No server process: the list lives in
// shared memory and every process writes to it directly.
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <sys/wait.h>
#include <unistd.h>

int main() {
  //[manager_list
  shmkit::manager mgr;  // anonymous: shared with the children forked below
  shmkit::shared_list<int> results = mgr.list<int>("results");

  for (int n = 0; n < 4; ++n) {
    if (::fork() == 0) {  // a worker: append our number, ten times
      for (int i = 0; i < 10; ++i) results.push_back(n);
      std::_Exit(0);
    }
  }
  while (::wait(nullptr) > 0) {
  }

  std::printf("results (%zu items):", results.size());
  for (int x : results.to_vector()) std::printf(" %d", x);
  std::printf("\n");
  //]
  return results.size() == 40 ? 0 : 1;
}
