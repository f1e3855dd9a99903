// SPDX-License-Identifier: MIT
// A robust, writer-preferring reader-writer lock in shared memory, for the library's own use
// (the manager's containers): standard layout, no pointers, placeable in any segment.
//
// Policy:
// - Many readers, in any processes, hold it at once. A reader claims one of reader_slots
//   slots by writing its identity there (one compare-and-swap), then checks that no writer
//   holds or claims the lock; if one does, it steps back and waits. More than reader_slots
//   concurrent readers wait for a free slot.
// - Writer-preferring: a writer first claims the writer word (which stops new readers), then
//   waits until every reader slot is empty. Readers are not re-entrant while a writer waits
//   (a reader taking a second read lock then deadlocks with the writer, as with most rwlocks).
// - Robust: waiters sleep in slices of liveness_slice and then check the peers they wait for.
//   A dead writer is cleared (by a reader) or taken over (by a writer); if it had already
//   drained the readers (so it may have been writing), owner_died() is true for the next
//   writer until mark_consistent() or unlock(). A reader that dies holding its slot is found
//   by a waiting writer's scan of the slots and its slot is cleared, so it never blocks
//   writers for longer than a slice.
// - Uncontended lock_shared/unlock_shared and lock/unlock make no system call.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "shmkit/detail/mutex_state.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

struct rwlock_state {
  static constexpr std::size_t reader_slots = 64;

  std::atomic<std::uint64_t> writer{0};   // identity of the writer holding or claiming it
  std::atomic<std::uint32_t> died{0};     // 1: the writer took over from a dead writer
  std::atomic<std::uint32_t> writing{0};  // 1 once the writer has drained the readers
  waitpoint wp;                           // readers, writers and slot seekers sleep here
  spin_hint spin;
  std::atomic<std::uint64_t> readers[reader_slots]{};  // identities of readers, 0 = free

  static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  // Shared (read) side. lock_shared blocks; the timed form returns false at the deadline.
  void lock_shared() { lock_shared_until(std::nullopt); }
  bool try_lock_shared() noexcept;
  bool lock_shared_until(std::optional<time_point> deadline);
  // Throws std::logic_error when the calling thread holds no read lock.
  void unlock_shared();

  // Exclusive (write) side. Throw std::system_error (resource_deadlock_would_occur) when the
  // calling thread already holds the write lock.
  void lock() { lock_until(std::nullopt); }
  bool try_lock();
  bool lock_until(std::optional<time_point> deadline);
  // Throws std::logic_error when the calling thread does not hold the write lock.
  void unlock();

  // relaxed: written by the writer under the lock, read by the writer.
  bool owner_died() const noexcept { return died.load(std::memory_order_relaxed) != 0; }
  void mark_consistent() noexcept { died.store(0, std::memory_order_relaxed); }

  // How many reader slots are taken right now (a snapshot, for tests and diagnostics).
  std::size_t reader_count() const noexcept;
};

}  // namespace shmkit::detail
