// SPDX-License-Identifier: MIT
// The first example of every multiprocessing tutorial: pool.map(square, range(10)).
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <numeric>
#include <vector>

int square(int x) { return x * x; }

int main() {
  //[pool_map
  shmkit::pool pool(4);                       // four worker processes
  std::vector<int> xs(10);
  std::iota(xs.begin(), xs.end(), 0);         // 0, 1, ..., 9
  std::vector<int> squares = pool.map(square, xs);
  //]
  for (int s : squares) std::printf("%d ", s);
  std::printf("\n");
}
