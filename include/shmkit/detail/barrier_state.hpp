// SPDX-License-Identifier: MIT
// The shared state of a cyclic barrier: standard layout, no pointers, placeable in any
// segment, followed in memory by its seat table (bytes_for(parties) bytes in all).
//
// One 64-bit word holds the round (generation), how many parties have arrived in it, and a
// broken bit, so arriving, completing a round and breaking are each one compare-and-swap and
// a process killed at any instruction leaves the word consistent.
//
// Dead parties. Every process that holds a handle on the barrier counts as a party until it
// has destroyed its handles: making or opening a handle attaches the process (its identity goes
// into a seat marked `attached`, "holds a handle, has not arrived yet"), and so does inheriting
// handles through fork() (a pthread_atfork handler in lib/sync.cpp attaches the child before
// fork() returns in it); destroying its last handle on the barrier detaches it (frees its
// seat), unless the round in progress is waiting for it (it arrived in the previous round and
// others have arrived in this one). Each thread that arrives records its identity in a seat
// with the round it last arrived in (a process's main thread shares its process's seat).
// A waiter sleeps in slices of liveness_slice; after each it looks at the seats of parties
// that arrived in the previous round but not yet in this one, and of attached processes that
// have not arrived; if any of those is dead (a zombie counts as dead), the barrier breaks:
// every waiter, and every later arrival, throws shmkit::broken_barrier_error. So a party that
// dies before its first arrival, or after passing the barrier, never leaves the others waiting
// forever. The price: any process that ends still holding a handle (a forked helper that is
// not a party, a child that called exec()) breaks the round in progress, or a later one that
// waits past a slice, as a party would; a helper destroys the handle it inherited first, or is
// forked before the barrier is made. A party that leaves for good while the others go on with
// new members breaks the next round the same way, unless it destroyed its handles before that
// round began. A child killed in the first instructions after fork(), before its fork handler
// ran, is not known. The table has min(2 * parties, max_seats) seats (at least 8); processes
// and threads beyond that arrive and wait normally but are not watched.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "shmkit/detail/sync_wait.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

struct barrier_seat {
  std::atomic<std::uint64_t> who{0};        // identity of the party or holder, 0 = free
  std::atomic<std::uint32_t> round{never};  // the round it last arrived in, or a mark below
  std::uint32_t reserved = 0;

  // No round has these numbers (rounds are below 2^31).
  static constexpr std::uint32_t never = 0xffffffffu;     // claimed, not yet arrived: not watched
  static constexpr std::uint32_t attached = 0xfffffffeu;  // a process holding a handle, not yet
                                                          // arrived: watched
};

struct barrier_state {
  static constexpr std::uint32_t max_seats = 4096;
  static constexpr std::uint64_t broken_bit = std::uint64_t{1} << 63;
  static constexpr std::uint32_t round_mask = 0x7fffffffu;

  std::atomic<std::uint64_t> word{0};  // broken:1 | round:31 | arrived:32
  std::uint32_t parties;               // written once, before publication
  std::uint32_t seats;
  waitpoint wp;
  spin_hint spin;

  static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  // parties >= 1 (the caller checks). Construct in place at the start of bytes_for(parties).
  explicit barrier_state(std::uint32_t n) noexcept;

  static std::uint32_t seats_for(std::uint32_t parties) noexcept {
    const std::uint64_t s = std::uint64_t{2} * parties;
    return static_cast<std::uint32_t>(s < 8 ? 8 : s > max_seats ? max_seats : s);
  }
  static std::size_t bytes_for(std::uint32_t parties) noexcept {
    return sizeof(barrier_state) + seats_for(parties) * sizeof(barrier_seat);
  }
  // The seats follow the state.
  barrier_seat* seat_table() noexcept {
    return reinterpret_cast<barrier_seat*>(reinterpret_cast<std::byte*>(this) +
                                           sizeof(barrier_state));
  }

  enum class outcome { passed, timed_out, broken };

  // Arrives and waits for the round to complete (passed). timed_out: `deadline` passed
  // first, and this caller broke the barrier (as Python does). broken: the barrier was or
  // became broken by someone else (abort, a timeout, a dead party). Does not throw
  // (lib/sync.cpp).
  outcome arrive_and_wait(std::optional<time_point> deadline) noexcept;

  // Records process `who` (an identity, non-zero) as holding a handle: its seat, if it has
  // one, else a free or stale seat marked `attached` (none free: not watched). Only atomics on
  // this state and, when the table is full, identity_alive(): safe in a fork child handler.
  void attach(std::uint64_t who) noexcept;
  // Frees the seat of process `who` once it holds no handle any more, unless the round in
  // progress waits for it (see above). Does not throw.
  void detach(std::uint64_t who) noexcept;

  // Breaks the barrier: current and later waiters throw. Does not throw.
  void abort() noexcept;
  // acquire: pairs with the seq_cst compare-and-swap that set the bit.
  bool broken() const noexcept { return (word.load(std::memory_order_acquire) & broken_bit) != 0; }
  // How many have arrived in the current round (a snapshot).
  std::uint32_t arrived() const noexcept {
    return static_cast<std::uint32_t>(word.load(std::memory_order_relaxed));
  }
};
static_assert(sizeof(barrier_state) % alignof(barrier_seat) == 0);

// This process stops counting as a party of every barrier it holds handles on, and its
// children forked afterwards are not attached to them (lib/sync.cpp): for a process that ends
// normally with handles still in its memory (a shmkit::process child whose callable returned
// or threw), and for the library's own helper processes (a pool's supervisor and workers),
// which are no barrier's parties unless a task arrives at one (arriving seats it again).
void barrier_leave_all() noexcept;

}  // namespace shmkit::detail
