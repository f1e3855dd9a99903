// SPDX-License-Identifier: MIT
// Python's JoinableQueue pattern: workers mark each item done with task_done(); the parent
// waits with join() until every item it put has been processed, then decides what next (here:
// a second batch, then close() to let the workers go).
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <shmkit/queue.hpp>
#include <string>

int main() {
  constexpr int workers = 3;
  // A counter the workers share, to show that join() returned after all the work.
  auto* processed = static_cast<std::atomic<int>*>(::mmap(nullptr, sizeof(std::atomic<int>),
                                                          PROT_READ | PROT_WRITE,
                                                          MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (processed) std::atomic<int>(0);

  //[joinable_queue
  shmkit::joinable_queue<std::string> tasks(8);
  for (int w = 0; w < workers; ++w) {
    if (::fork() == 0) {
      try {
        for (;;) {
          std::string t = tasks.get();
          ::usleep(1000);  // "work"
          processed->fetch_add(1);
          tasks.task_done();  // one per item got
        }
      } catch (const shmkit::closed_error&) {
      }
      std::_Exit(0);
    }
  }
  for (int batch = 1; batch <= 2; ++batch) {
    for (int i = 0; i < 20; ++i)
      tasks.put("batch " + std::to_string(batch) + " item " + std::to_string(i));
    tasks.join();  // every item put so far is got and done
    std::printf("batch %d: join() returned with %d items processed\n", batch, processed->load());
  }
  tasks.close();
  //]
  while (::wait(nullptr) > 0) {
  }
  return processed->load() == 40 ? 0 : 1;
}
