// SPDX-License-Identifier: MIT
// Fan-in with shmkit::wait, like multiprocessing.connection.wait: several children report
// progress at their own pace on one-way pipes, and the parent sleeps until any has something.
#include <shmkit/shmkit.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // no half-printed buffer is copied by fork()
  constexpr int workers = 4;
  //[pipe_fan_in
  std::vector<shmkit::connection<std::string>> readers;
  for (int w = 0; w < workers; ++w) {
    auto [rx, tx] = shmkit::pipe<std::string>(false);  // one-way: rx receives, tx sends
    if (::fork() == 0) {
      for (int step = 1; step <= 3; ++step) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20 * (w + 1) * step));
        tx.send("worker " + std::to_string(w) + " finished step " + std::to_string(step));
      }
      tx.close();  // the parent sees EOF on this pipe
      std::_Exit(0);
    }
    readers.push_back(std::move(rx));
  }

  std::vector<shmkit::connection<std::string>*> open;
  for (auto& r : readers) open.push_back(&r);
  while (!open.empty()) {
    // Sleeps until at least one pipe has a message or an EOF.
    std::vector<std::size_t> ready = shmkit::wait(open, std::chrono::seconds(10));
    for (auto i = ready.rbegin(); i != ready.rend(); ++i) {  // back to front: erase is safe
      try {
        std::printf("%s\n", open[*i]->recv().c_str());
      } catch (const shmkit::eof_error&) {
        open.erase(open.begin() + static_cast<std::ptrdiff_t>(*i));
      }
    }
  }
  //]
  while (::wait(nullptr) > 0) {
  }
  std::printf("all workers done\n");
}
