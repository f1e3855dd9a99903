// SPDX-License-Identifier: MIT
// The classic worker pattern: the parent fills a queue with jobs, four worker processes drain
// it and send their results back on a second queue. Closing the job queue tells the workers
// there is nothing more: each get() then hands out what is left and throws closed_error.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <shmkit/queue.hpp>

namespace {

// A job and its result: plain structs travel as raw bytes, one memcpy each way.
struct job {
  int id;
  std::uint64_t n;
};
struct result {
  int id;
  int worker;
  std::uint64_t divisors;
};

std::uint64_t count_divisors(std::uint64_t n) {
  std::uint64_t c = 0;
  for (std::uint64_t d = 1; d * d <= n; ++d)
    if (n % d == 0) c += (d * d == n) ? 1 : 2;
  return c;
}

}  // namespace

int main() {
  constexpr int workers = 4, jobs = 40;

  //[queue_workers
  shmkit::queue<job> todo(16);  // anonymous: shared with the children forked below
  shmkit::queue<result> done(jobs);

  for (int w = 0; w < workers; ++w) {
    if (::fork() == 0) {
      try {
        for (;;) {
          job j = todo.get();  // blocks while empty; throws once closed and drained
          done.put({j.id, w, count_divisors(j.n)});
        }
      } catch (const shmkit::closed_error&) {
      }
      std::_Exit(0);
    }
  }
  for (int i = 0; i < jobs; ++i) todo.put({i, 1000000007ull * (i + 1)});  // waits when full
  todo.close();  // no more jobs: workers finish what is queued, then stop
  //]

  int per_worker[workers] = {};
  std::uint64_t total = 0;
  for (int i = 0; i < jobs; ++i) {
    result r = done.get();
    per_worker[r.worker]++;
    total += r.divisors;
  }
  while (::wait(nullptr) > 0) {
  }
  std::printf("%d jobs done by %d workers (", jobs, workers);
  for (int w = 0; w < workers; ++w) std::printf("%s%d", w ? ", " : "", per_worker[w]);
  std::printf("), %llu divisors in all\n", static_cast<unsigned long long>(total));
}
