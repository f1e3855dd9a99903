// SPDX-License-Identifier: MIT
// Raw shared memory by name, like Python's SharedMemory: the parent fills an image-sized
// buffer, a child process opens the same memory by its name and reads it back.
#include <shmkit/shmkit.hpp>

#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

int main() {
  constexpr int width = 1920, height = 1080;
  const std::string name = "demo-frame-" + std::to_string(::getpid());

  //[shared_memory
  shmkit::shared_memory frame(shmkit::create_only, name, width * height);  // 0600, zeroed
  auto pixels = frame.bytes();
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::byte(i % 251);

  if (::fork() == 0) {  // any process of the same user could do this part, by name alone
    shmkit::shared_memory view(shmkit::open_only, name);
    std::uint64_t sum = 0;
    for (std::byte b : view.bytes()) sum += std::to_integer<unsigned>(b);
    std::printf("child %d read %zu bytes from '%s', checksum %llu\n", ::getpid(), view.size(),
                view.name().c_str(), static_cast<unsigned long long>(sum));
    std::fflush(stdout);
    std::_Exit(0);
  }
  ::wait(nullptr);
  //]
  std::uint64_t sum = 0;
  for (std::byte b : pixels) sum += std::to_integer<unsigned>(b);
  std::printf("parent wrote checksum %llu; the name goes away with the creating handle\n",
              static_cast<unsigned long long>(sum));
}
