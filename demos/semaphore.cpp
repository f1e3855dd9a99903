// SPDX-License-Identifier: MIT
// A semaphore as a limit: six processes want to "download", but only two may at once (like a
// connection pool). Each takes a ticket with acquire() and gives it back with release().
#include <shmkit/shmkit.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <new>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

int main() {
  // How many are downloading right now: a counter in shared memory, to show the limit holds.
  shmkit::shared_memory mem(sizeof(std::atomic<int>));
  auto* active = new (mem.data()) std::atomic<int>(0);

  //[semaphore
  shmkit::semaphore tickets(2);  // two tickets: at most two processes inside at once

  for (int i = 0; i < 6; ++i) {
    if (::fork() == 0) {
      tickets.acquire();  // waits while both tickets are taken
      std::printf("process %d downloads (%d at once)\n", i, active->fetch_add(1) + 1);
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the "download"
      active->fetch_sub(1);
      tickets.release();  // hand the ticket to the next one
      std::_Exit(0);
    }
  }
  for (int i = 0; i < 6; ++i) ::wait(nullptr);
  //]
  std::printf("done; tickets left: %td\n", tickets.value());
}
