// SPDX-License-Identifier: MIT
// The shared state of a counting semaphore (optionally bounded): standard layout, no pointers,
// placeable in any segment.
//
// Uncontended acquire and release are one compare-and-swap each: no system call. A blocked
// acquirer spins briefly, then sleeps on the waitpoint; release(n) wakes up to n sleepers,
// and only when somebody sleeps. A count taken by a process that then dies stays taken (that
// is what a semaphore means); a killed sleeper costs later releasers a needless futex_wake.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>
#include <limits>
#include <optional>

#include "shmkit/detail/sync_wait.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

struct semaphore_state {
  static constexpr std::int64_t unbounded = std::numeric_limits<std::int64_t>::max();

  std::atomic<std::int64_t> count;
  std::int64_t max;  // release never takes count above this; written once, before publication
  waitpoint wp;
  spin_hint spin;

  static_assert(std::atomic<std::int64_t>::is_always_lock_free);

  explicit semaphore_state(std::int64_t initial, std::int64_t bound = unbounded) noexcept
      : count(initial), max(bound) {}

  // Does not throw. No system call.
  bool try_acquire() noexcept {
    std::int64_t c = count.load(std::memory_order_relaxed);
    while (c > 0) {
      // acquire: pairs with the seq_cst (hence release) compare-and-swap in try_release(), so
      // whatever the releaser wrote before releasing is visible to us.
      if (count.compare_exchange_weak(c, c - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed))
        return true;
    }
    return false;
  }

  void acquire() {
    if (!try_acquire()) acquire_slow(std::nullopt);
  }
  bool try_acquire_until(time_point deadline) { return try_acquire() || acquire_slow(deadline); }

  // Adds n (>= 0) and wakes up to n sleepers. Returns false, changing nothing, when the count
  // would pass `max`. Does not throw.
  bool try_release(std::int64_t n = 1) noexcept {
    std::int64_t c = count.load(std::memory_order_relaxed);
    do {
      if (n > max - c) return false;
      // seq_cst: a release pairing with try_acquire()'s acquire, and the store half of the
      // Dekker handshake in wake_if_waiting().
    } while (!count.compare_exchange_weak(c, c + n, std::memory_order_seq_cst,
                                          std::memory_order_relaxed));
    if (n > 0) wake_if_waiting(wp, n > INT_MAX ? INT_MAX : static_cast<int>(n));
    return true;
  }

  // relaxed: a snapshot that may be stale as soon as it is read.
  std::int64_t value() const noexcept { return count.load(std::memory_order_relaxed); }

  // lib/sync.cpp. Returns false only when `deadline` passes.
  bool acquire_slow(std::optional<time_point> deadline);
};

}  // namespace shmkit::detail
