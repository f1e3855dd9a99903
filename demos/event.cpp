// SPDX-License-Identifier: MIT
// An event is a flag that processes can wait for. Three workers start early and wait; the
// parent gets things ready and then releases all of them with one set().
#include <shmkit/shmkit.hpp>

#include <chrono>
#include <cstdio>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

int main() {
  using namespace std::chrono_literals;

  //[event
  shmkit::event ready;  // starts cleared

  for (int i = 0; i < 3; ++i) {
    if (::fork() == 0) {
      std::printf("worker %d waits for the go signal\n", i);
      std::fflush(stdout);
      ready.wait();  // sleeps until some process calls set()
      std::printf("worker %d runs\n", i);
      std::fflush(stdout);
      std::_Exit(0);
    }
  }
  std::this_thread::sleep_for(100ms);  // the parent's own preparation
  std::printf("parent: go!\n");
  std::fflush(stdout);
  ready.set();  // wakes every waiter, now and later, until clear()
  for (int i = 0; i < 3; ++i) ::wait(nullptr);
  //]
  std::printf("a wait_for on a cleared event times out: %s\n",
              (ready.clear(), ready.wait_for(10ms)) ? "no" : "yes");
}
