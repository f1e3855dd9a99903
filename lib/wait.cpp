// SPDX-License-Identifier: MIT
#include "shmkit/detail/wait.hpp"

#include <linux/futex.h>
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
}  // namespace

futex_counts futex_calls() noexcept {
  return {wait_calls.load(std::memory_order_relaxed), wake_calls.load(std::memory_order_relaxed),
          yield_calls.load(std::memory_order_relaxed)};
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
