// SPDX-License-Identifier: MIT
// The Pool section of the API contract with its own header alone.
#include <shmkit/pool.hpp>

#include <tuple>
#include <vector>

namespace {
int twice(int x) { return 2 * x; }
int add(int a, int b) { return a + b; }
}  // namespace

void section_pool() {
  shmkit::pool pool(2);
  const std::vector<int> items{1, 2, 3};
  std::vector<int> r = pool.map(twice, items);
  r = pool.map(twice, items, 2);
  for (int x : pool.imap(twice, items)) (void)x;
  for (int x : pool.imap_unordered(twice, items)) (void)x;
  const std::vector<std::tuple<int, int>> pairs{{1, 2}};
  r = pool.starmap(add, pairs);
  int one = pool.apply(twice, 1);
  shmkit::async_result<int> ar = pool.apply_async(twice, one);
  (void)ar.get_for(std::chrono::seconds(1));
  pool.apply_async(twice, 2).then([](int) {}, [](const std::exception&) {});
  auto amr = pool.map_async(twice, items);
  for (int x : shmkit::with_progress(pool.imap(twice, items))) (void)x;
  pool.close();
  pool.join();
  shmkit::pool other(shmkit::pool_options{.processes = 2, .initializer = nullptr,
                                          .maxtasksperchild = 100});
  other.terminate();
  try {
  } catch (const shmkit::worker_lost_error&) {
  } catch (const shmkit::remote_error&) {
  }
}
