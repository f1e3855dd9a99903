// SPDX-License-Identifier: MIT
// A pipe between a parent and a child, like Python's multiprocessing.Pipe: both ends send and
// receive; the child answers each question until the parent closes its end.
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // no half-printed buffer is copied by fork()
  //[pipe
  auto [parent_end, child_end] = shmkit::pipe<std::string>();  // duplex, 64 KiB each way

  if (::fork() == 0) {
    // The child uses its copy of child_end; the first call makes this process its owner.
    try {
      for (;;) {
        std::string question = child_end.recv();  // blocks; EOF once the parent closed
        child_end.send("child " + std::to_string(::getpid()) + " heard '" + question + "'");
      }
    } catch (const shmkit::eof_error&) {
      std::printf("child: the parent closed its end, bye\n");
    }
    std::fflush(stdout);
    std::_Exit(0);
  }

  for (const char* q : {"hello", "how big can a message be?", "bye"}) {
    parent_end.send(q);
    std::printf("parent got: %s\n", parent_end.recv().c_str());
  }
  // Messages of any size: 8 MiB go through the 64 KiB buffer in pieces.
  parent_end.send(std::string(8 << 20, 'x'));
  std::printf("parent got: %.60s...\n", parent_end.recv().c_str());
  parent_end.close();  // the child's recv() now throws eof_error
  ::wait(nullptr);
  //]
}
