// SPDX-License-Identifier: MIT
// The classic multiprocessing Lock example: four processes print in turn. Each holds the same
// mutex while it prints, so the lines of one message never mix with another's.
#include <shmkit/shmkit.hpp>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

int main() {
  //[mutex
  shmkit::mutex lock;  // anonymous: every child forked after this line shares it

  for (int i = 0; i < 4; ++i) {
    if (::fork() == 0) {  // in child number i
      for (int round = 0; round < 3; ++round) {
        {
          std::lock_guard<shmkit::mutex> hold(lock);  // one process at a time in this block
          std::printf("hello world from process %d (pid %d),", i, static_cast<int>(::getpid()));
          std::printf(" round %d\n", round);  // a message in two pieces, never split
          std::fflush(stdout);                // print before letting go of the lock
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // let the others have a turn
      }
      std::_Exit(0);  // a forked child leaves without running the parent's destructors
    }
  }
  for (int i = 0; i < 4; ++i) ::wait(nullptr);  // the parent waits for its four children
  //]
  std::printf("all four processes are done\n");
}
