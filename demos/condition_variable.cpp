// SPDX-License-Identifier: MIT
// A condition variable lets a process sleep until another one changes shared data. Here a
// producer hands numbers to a consumer through a one-slot mailbox in shared memory: the
// consumer waits for "full", the producer waits for "empty".
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <mutex>
#include <new>
#include <sys/wait.h>
#include <unistd.h>

struct mailbox {  // plain data in shared memory, guarded by the mutex
  bool full = false;
  int number = 0;
};

int main() {
  shmkit::shared_memory mem(sizeof(mailbox));
  auto* box = new (mem.data()) mailbox;

  //[condition_variable
  shmkit::mutex m;                     // guards the mailbox
  shmkit::condition_variable changed;  // "the mailbox changed": waiters re-check it

  if (::fork() == 0) {  // the consumer
    for (int i = 0; i < 5; ++i) {
      std::unique_lock<shmkit::mutex> lk(m);
      changed.wait(lk, [&] { return box->full; });  // unlocks m while asleep
      std::printf("consumer got %d\n", box->number);
      std::fflush(stdout);
      box->full = false;
      changed.notify_all();  // tell the producer the box is empty again
    }
    std::_Exit(0);
  }
  for (int i = 1; i <= 5; ++i) {  // the producer
    std::unique_lock<shmkit::mutex> lk(m);
    changed.wait(lk, [&] { return !box->full; });
    box->number = i * i;
    box->full = true;
    changed.notify_all();
  }
  ::wait(nullptr);
  //]
  std::printf("producer done\n");
}
