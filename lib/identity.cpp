// SPDX-License-Identifier: MIT
#include "shmkit/detail/identity.hpp"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

namespace shmkit::detail {
namespace {

// Reads field 22 (starttime) and the state of /proc/<id>/stat. Returns 0 when missing,
// a zombie, or dead.
std::uint64_t read_start_ticks(pid_t id) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(id));
  int fd;
  do {
    fd = ::open(path, O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return 0;
  char buf[1024];
  ssize_t n;
  do {
    n = ::read(fd, buf, sizeof buf - 1);
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] == '\0' || p[2] == '\0') return 0;
  const char state = p[2];
  if (state == 'Z' || state == 'X' || state == 'x') return 0;
  // Fields from 3 on; starttime is field 22, the 20th after the state.
  int field = 3;
  for (const char* q = p + 2; *q != '\0'; ++q) {
    if (*q == ' ') {
      ++field;
      if (field == 22) return std::strtoull(q + 1, nullptr, 10);
    }
  }
  return 0;
}

std::uint64_t make_identity(pid_t id, std::uint64_t ticks) noexcept {
  // Start ticks of 0 are possible only for the first processes of the machine; keep the
  // identity non-zero by forcing the low bit, which still distinguishes reuse in practice.
  std::uint32_t low = static_cast<std::uint32_t>(ticks) | 1u;
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(id)) << 32) | low;
}

thread_local std::uint64_t cached_thread = 0;
std::atomic<std::uint64_t> cached_process{0};

void reset_after_fork() noexcept {
  cached_thread = 0;
  cached_process.store(0, std::memory_order_relaxed);
}

[[maybe_unused]] const int atfork_registered = [] {
  ::pthread_atfork(nullptr, nullptr, &reset_after_fork);
  return 0;
}();

}  // namespace

std::uint64_t identity_of(pid_t id) noexcept {
  std::uint64_t ticks = read_start_ticks(id);
  if (ticks == 0) return 0;
  return make_identity(id, ticks);
}

std::uint64_t self_identity() noexcept {
  if (cached_thread == 0) {
    pid_t tid = ::gettid();
    // /proc/<tid> resolves thread ids too; fall back to a start time of 1 if /proc is absent.
    std::uint64_t id = identity_of(tid);
    cached_thread = id != 0 ? id : make_identity(tid, 1);
  }
  return cached_thread;
}

std::uint64_t process_identity() noexcept {
  std::uint64_t id = cached_process.load(std::memory_order_relaxed);
  if (id == 0) {
    pid_t pid = ::getpid();
    id = identity_of(pid);
    if (id == 0) id = make_identity(pid, 1);
    cached_process.store(id, std::memory_order_relaxed);
  }
  return id;
}

bool identity_alive(std::uint64_t identity) noexcept {
  if (identity == 0) return false;
  pid_t id = identity_pid(identity);
  std::uint64_t now = identity_of(id);
  if (now == 0) return false;
  // Identities made without /proc carry a start time of 1: trust the id alone for them.
  if ((identity & 0xffffffffu) == 1u) return true;
  return now == identity;
}

}  // namespace shmkit::detail
