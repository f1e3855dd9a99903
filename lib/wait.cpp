// SPDX-License-Identifier: MIT
#include "shmkit/detail/wait.hpp"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include <ctime>

namespace shmkit::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));

namespace {
// Process-local statistics; relaxed, they order nothing.
std::atomic<std::uint64_t> wait_calls{0};
std::atomic<std::uint64_t> wake_calls{0};
std::atomic<std::uint64_t> yield_calls{0};
std::atomic<std::uint64_t> fence_calls{0};

long membarrier(int cmd) noexcept { return ::syscall(SYS_membarrier, cmd, 0u, 0); }

// Whether the kernel offers MEMBARRIER_CMD_GLOBAL_EXPEDITED (asked once; a child inherits the
// answer along with the kernel). Process-local and idempotent: relaxed.
bool heavy_available() noexcept {
  static const bool yes = [] {
    const long cmds = membarrier(MEMBARRIER_CMD_QUERY);
    return cmds > 0 && (cmds & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0 &&
           (cmds & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0;
  }();
  return yes;
}

// The process that registered (a child forked later must register itself) and the kernel's
// answer. Process-local: relaxed (a thread that sees a stale pair registers once more).
std::atomic<int> registered_pid{0};
std::atomic<bool> registered_ok{false};
}  // namespace

bool register_light_fences() noexcept {
  const int pid = static_cast<int>(::getpid());
  if (registered_pid.load(std::memory_order_relaxed) == pid)
    return registered_ok.load(std::memory_order_relaxed);
  const bool ok =
      heavy_available() && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
  registered_ok.store(ok, std::memory_order_relaxed);
  registered_pid.store(pid, std::memory_order_relaxed);
  return ok;
}

bool heavy_fence() noexcept {
  if (!heavy_available()) return false;
  fence_calls.fetch_add(1, std::memory_order_relaxed);
  return membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0;
}

futex_counts futex_calls() noexcept {
  return {wait_calls.load(std::memory_order_relaxed), wake_calls.load(std::memory_order_relaxed),
          yield_calls.load(std::memory_order_relaxed), fence_calls.load(std::memory_order_relaxed)};
}

void yield_cpu() noexcept {
  yield_calls.fetch_add(1, std::memory_order_relaxed);
  ::sched_yield();  // cannot fail on Linux
}

bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::optional<time_point> until) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (until && *until != time_point::max()) {
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(until->time_since_epoch()).count();
    if (ns <= 0) return false;
    ts.tv_sec = static_cast<time_t>(ns / 1000000000);
    ts.tv_nsec = static_cast<long>(ns % 1000000000);
    tsp = &ts;
  }
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a retry after EINTR
  // does not stretch the wait. Not FUTEX_PRIVATE_FLAG: the word is shared between processes.
  wait_calls.fetch_add(1, std::memory_order_relaxed);
  long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_BITSET, expected,
                     tsp, nullptr, FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return true;
  switch (errno) {
    case EAGAIN:  // the word had changed already
    case EINTR:   // a signal: the caller re-checks and comes back
      return true;
    case ETIMEDOUT:
    default:
      return false;
  }
}

int futex_wake(std::atomic<std::uint32_t>* word, int n) noexcept {
  wake_calls.fetch_add(1, std::memory_order_relaxed);
  long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, n, nullptr,
                     nullptr, 0);
  return r < 0 ? 0 : static_cast<int>(r);
}

}  // namespace shmkit::detail
