// SPDX-License-Identifier: MIT
// apply_async with a callback and an error callback. Callbacks run in this process, on the
// pool's result thread, as results come in; a task that throws reaches the error callback as
// shmkit::remote_error, and the pool carries on.
#include <shmkit/shmkit.hpp>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

double safe_inverse(int x) {
  if (x == 0) throw std::domain_error("cannot invert zero");
  return 1.0 / x;
}

int main() {
  shmkit::pool pool(2);
  std::atomic<int> done{0};
  std::vector<shmkit::async_result<double>> pending;
  //[pool_apply_async
  for (int x : {4, 2, 0, 1}) {
    pending.push_back(pool.apply_async(safe_inverse, x));
    pending.back().then(
        [x, &done](double r) { std::printf("1/%d = %g\n", x, r); ++done; },
        [x, &done](const std::exception& e) {
          auto& re = dynamic_cast<const shmkit::remote_error&>(e);
          std::printf("1/%d failed in the worker: %s: %s\n", x, re.type_name().c_str(), re.what());
          ++done;
        });
  }
  //]
  for (auto& r : pending) r.wait();
  while (done.load() < 4)  // callbacks may still be running
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::printf("the pool is still fine: apply(safe_inverse, 8) = %g\n", pool.apply(safe_inverse, 8));
}
