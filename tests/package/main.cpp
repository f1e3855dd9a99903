// SPDX-License-Identifier: MIT
// Uses shmkit the way an outside program does: one include, one target.
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

int main() {
  const std::string name = "test-" + std::to_string(::getpid()) + "-consumer";
  shmkit::shared_memory m(shmkit::create_only, name, 64);
  if (::fork() == 0) {
    shmkit::shared_memory v(shmkit::open_only, name);
    std::memcpy(v.data(), "from the child", 15);
    std::_Exit(0);
  }
  int status = 0;
  ::wait(&status);
  const bool ok = std::strcmp(reinterpret_cast<const char*>(m.data()), "from the child") == 0;
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
