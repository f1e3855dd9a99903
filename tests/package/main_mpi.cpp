// SPDX-License-Identifier: MIT
// Uses the mpi component the way an outside program does: one rank, so rank 0 runs the task.
#include <shmkit/mpi_pool.hpp>

#include <cstdio>

int twice(int x) { return 2 * x; }

int main(int argc, char** argv) {
  shmkit::mpi_pool pool(argc, argv);
  if (!pool.is_root()) return 0;
  const bool ok = pool.apply(twice, 21) == 42;
  std::printf("consumer_mpi: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
