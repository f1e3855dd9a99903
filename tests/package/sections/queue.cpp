// SPDX-License-Identifier: MIT
// The Queues section of the API contract with its own header alone.
#include <shmkit/queue.hpp>

#include <span>
#include <vector>

void section_queue() {
  shmkit::queue<int> q(4);
  shmkit::queue<int> b(shmkit::create_only, "jobs", 1024);
  shmkit::queue<int> c(shmkit::open_only, "jobs");
  shmkit::queue<int> d(shmkit::open_or_create, "jobs", 1024);
  q.put(1);
  bool ok = q.try_put(2) && q.put_for(3, std::chrono::milliseconds(100));
  int v = q.get();
  std::optional<int> w = q.try_get();
  w = q.get_for(std::chrono::milliseconds(100));
  const std::vector<int> vs{v, ok ? 1 : 0};
  q.put_many(std::span<const int>(vs));
  std::vector<int> got = q.get_many(2);
  (void)(q.size() + q.empty() + q.full() + q.capacity() + q.closed());
  q.close();
  shmkit::joinable_queue<int> jq(4);
  jq.task_done();
  jq.join();
  try {
  } catch (const shmkit::closed_error&) {
  }
}
