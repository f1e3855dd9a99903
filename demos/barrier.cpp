// SPDX-License-Identifier: MIT
// A barrier keeps a group of processes in step: nobody starts phase p + 1 until everybody has
// finished phase p. Three processes, three phases.
#include <shmkit/shmkit.hpp>

#include <chrono>
#include <cstdio>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

int main() {
  constexpr int parties = 3;

  //[barrier
  shmkit::barrier in_step(parties);  // opens each time all three have arrived

  for (int i = 0; i < parties; ++i) {
    if (::fork() == 0) {
      for (int phase = 1; phase <= 3; ++phase) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10 * (i + 1)));  // uneven work
        std::printf("process %d finished phase %d\n", i, phase);
        std::fflush(stdout);
        in_step.arrive_and_wait();  // the fast ones wait here for the slow one
      }
      std::_Exit(0);
    }
  }
  for (int i = 0; i < parties; ++i) ::wait(nullptr);
  //]
  // If a party died instead, the others would get shmkit::broken_barrier_error, not a hang.
  std::printf("all phases done; broken: %s\n", in_step.broken() ? "yes" : "no");
}
