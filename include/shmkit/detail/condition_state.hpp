// SPDX-License-Identifier: MIT
// The shared state of a condition variable: standard layout, no pointers, placeable in any
// segment. It is only an event count (a waitpoint): a waiter reads the count while it holds
// the mutex, unlocks, and sleeps until the count moves; notify moves it and wakes sleepers.
//
// No notification is lost: a notify made after the waiter read the count (which it did while
// holding the mutex, so any notify under the mutex comes later) changes the count, so the
// waiter's futex_wait returns at once or is woken. Wake-ups may be spurious, as the standard
// allows: callers re-check their predicate. A waiter killed while asleep costs later
// notifiers a needless wake; a process killed while holding the mutex is handled by the
// mutex (the waiter that re-locks it takes it over and sees owner_died()).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "shmkit/detail/sync_wait.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

struct condition_state {
  waitpoint wp;
  spin_hint spin;

  void notify_one() noexcept { wp.notify_one(); }
  void notify_all() noexcept { wp.notify_all(); }

  // Unlocks `m` (which the caller holds), sleeps until notified, `deadline` passes or a
  // spurious wake-up, and locks `m` again. Returns false on timeout. Lockable is any type
  // with lock() and unlock(); an exception from m.unlock() leaves everything unchanged.
  template <class Lockable>
  bool wait_until(Lockable& m, std::optional<time_point> deadline) {
    // seq_cst: read while holding m, so it precedes every notify made under m after we
    // release it; pairs with the fetch_add of `seq` in waitpoint::notify().
    const std::uint32_t key = wp.seq.load(std::memory_order_seq_cst);
    m.unlock();
    const bool woken = wait_adaptively(
        wp, spin, [&] { return wp.seq.load(std::memory_order_seq_cst) != key; }, deadline);
    m.lock();
    return woken;
  }
};

}  // namespace shmkit::detail
