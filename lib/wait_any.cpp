// SPDX-License-Identifier: MIT
#include "shmkit/detail/wait_any.hpp"

#include <cerrno>
#include <ctime>
#include <sys/syscall.h>
#include <unistd.h>

namespace shmkit::detail {
namespace {

// The kernel's struct futex_waitv (include/uapi/linux/futex.h, 5.16), spelled here so that
// older headers still build.
struct kernel_futex_waitv {
  std::uint64_t val;
  std::uint64_t uaddr;
  std::uint32_t flags;
  std::uint32_t reserved;
};

constexpr long sys_futex_waitv = 449;  // the same number on every architecture
constexpr std::uint32_t futex2_size_u32 = 0x02;

std::atomic<bool> waitv_missing{false};

}  // namespace

void simulate_missing_futex_waitv(bool missing) noexcept {
  // relaxed: a flag read by this process only; a stale read costs one more system call.
  waitv_missing.store(missing, std::memory_order_relaxed);
}

wait_any_result futex_wait_any(std::span<const wait_word> words,
                               std::optional<time_point> until) noexcept {
  if (words.empty() || words.size() > wait_any_max ||
      waitv_missing.load(std::memory_order_relaxed))  // relaxed: see simulate_missing_...()
    return wait_any_result::unsupported;
  kernel_futex_waitv v[wait_any_max];
  for (std::size_t i = 0; i < words.size(); ++i)
    v[i] = {words[i].expected, reinterpret_cast<std::uintptr_t>(words[i].word), futex2_size_u32,
            0};
  timespec ts{};
  timespec* tsp = nullptr;
  if (until && *until != time_point::max()) {
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(until->time_since_epoch()).count();
    if (ns <= 0) return wait_any_result::timed_out;
    ts.tv_sec = static_cast<time_t>(ns / 1000000000);
    ts.tv_nsec = static_cast<long>(ns % 1000000000);
    tsp = &ts;
  }
  // Absolute CLOCK_MONOTONIC deadline, so a retry after EINTR does not stretch the wait.
  const long r = ::syscall(sys_futex_waitv, v, static_cast<unsigned>(words.size()), 0u, tsp,
                           CLOCK_MONOTONIC);
  if (r >= 0) return wait_any_result::woken;
  switch (errno) {
    case ETIMEDOUT: return wait_any_result::timed_out;
    case ENOSYS:
      waitv_missing.store(true, std::memory_order_relaxed);
      return wait_any_result::unsupported;
    case EAGAIN:  // a word had changed already
    case EINTR: return wait_any_result::woken;
    default: return wait_any_result::unsupported;  // EINVAL, EFAULT, ...: let the caller poll
  }
}

}  // namespace shmkit::detail
