// SPDX-License-Identifier: MIT
// The shared state of an event (Python's multiprocessing.Event): a flag that waiters sleep on
// until it is set. Standard layout, no pointers, placeable in any segment. set() makes a
// system call only when somebody sleeps; a killed waiter costs later setters a needless wake.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>
#include <optional>

#include "shmkit/detail/sync_wait.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

struct event_state {
  std::atomic<std::uint32_t> flag{0};
  spin_hint spin;
  waitpoint wp;

  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  void set() noexcept {
    // seq_cst: a release pairing with the acquire in is_set() (what the setter wrote before
    // set() is visible to whoever sees the flag), and the store half of wake_if_waiting().
    flag.store(1, std::memory_order_seq_cst);
    wake_if_waiting(wp, INT_MAX);
  }
  // relaxed: clearing publishes nothing.
  void clear() noexcept { flag.store(0, std::memory_order_relaxed); }
  // acquire: pairs with the store in set().
  bool is_set() const noexcept { return flag.load(std::memory_order_acquire) != 0; }

  // True once set; false when `deadline` passes first. Does not throw.
  bool wait_until(std::optional<time_point> deadline) noexcept {
    // seq_cst: the load half of the handshake with set()'s wake_if_waiting().
    return wait_adaptively(
        wp, spin, [&] { return flag.load(std::memory_order_seq_cst) != 0; }, deadline);
  }
};

}  // namespace shmkit::detail
