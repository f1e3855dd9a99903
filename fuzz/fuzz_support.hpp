// SPDX-License-Identifier: MIT
// Shared by the reader fuzzers: a second, raw mapping of a named object's segment, so the
// harness can overwrite the bytes a reader trusts, and a per-process object name.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shmkit/detail/segment.hpp"
#include "shmkit/naming.hpp"

namespace fuzz {

inline std::string object_name(const char* what) {
  return std::string("fuzz-") + what + "-" + std::to_string(::getpid());
}

// Maps the whole file of the named object; aborts on failure (a harness fault, not a finding).
class raw_mapping {
 public:
  explicit raw_mapping(const std::string& name) {
    const std::string path = "/dev/shm/" + std::string(shmkit::name_prefix) + name;
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) fail(path);
    size_ = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) fail(path);
    base_ = static_cast<std::byte*>(p);
  }
  ~raw_mapping() { ::munmap(base_, size_); }
  raw_mapping(const raw_mapping&) = delete;
  raw_mapping& operator=(const raw_mapping&) = delete;

  std::byte* payload() const noexcept { return base_ + shmkit::detail::payload_alignment; }
  std::size_t payload_size() const noexcept {
    return size_ - shmkit::detail::payload_alignment;
  }

 private:
  [[noreturn]] static void fail(const std::string& path) {
    std::perror(("fuzz: cannot map " + path).c_str());
    std::abort();
  }
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace fuzz
