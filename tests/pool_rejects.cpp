// SPDX-License-Identifier: MIT
// Compiled by CTest once per CASE: each pool call must refuse a lambda that captures with
// the static_assert message that says why (no wall of errors from the codec's insides).
// CASE ok must compile cleanly.
#include <mutex>
#include <tuple>
#include <vector>

#include "shmkit/pool.hpp"

void calls(shmkit::pool& pool) {
  [[maybe_unused]] int k = 3;
  [[maybe_unused]] std::mutex m;
  const std::vector<int> xs{1, 2};
  [[maybe_unused]] const std::vector<std::tuple<int>> ts{{1}};
#if CASE_ok
  (void)pool.map(+[](int x) { return x; }, xs);
#elif CASE_map_by_value
  (void)pool.map([k](int x) { return x + k; }, xs);
#elif CASE_imap_by_reference
  for (int x : pool.imap([&m](int y) { return y; }, xs)) (void)x;
#elif CASE_starmap
  (void)pool.starmap([k](int a) { return a + k; }, ts);
#elif CASE_apply_async
  (void)pool.apply_async([&k] { return k; });
#endif
}

int main() {}
