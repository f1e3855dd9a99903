// SPDX-License-Identifier: MIT
// The shared state of a robust process-shared mutex and recursive mutex: standard layout, no
// pointers, placeable in any segment (shmkit::mutex owns one in a segment of its own;
// value, array and queue embed one in theirs and hand out a shmkit::mutex view of it).
//
// Lock word: the 64-bit identity (tid << 32 | start ticks) of the holding thread, 0 when free.
// Uncontended lock and unlock are one compare-and-swap and one exchange: no system call (the
// identity is cached per thread). Contended lockers spin briefly (at most mutex_spin, less when
// the spin_hint says spinning has not been paying), yield the CPU once (which lets a holder
// preempted on their CPU run and let go; skipped while the hint says yields lose the CPU to
// other processes), then sleep on the futex word `sleepers` in slices of liveness_slice;
// after each slice they check whether the holder still lives (reads /proc) and, if it does
// not, take the lock over with a compare-and-swap from the dead identity (only one taker can
// win it) and raise the owner-died flag, which stays up until mark_consistent() or unlock().
// Not fair: a running locker may overtake a sleeping one.
//
// `sleepers` is Drepper's "contended" state beside the lock word: a locker sets it to 1 before
// its last check and sleep; an unlocker that finds it 1 clears it and wakes one sleeper, which
// sets it again before it tries the lock, so that the others are not forgotten. While the woken
// one is on its way, the holder's further unlocks make no system call.
//
// Killed at any instruction: a holder's death is detected by the next locker within a slice;
// a sleeper killed after being woken, before it set `sleepers` again, leaves the others to
// their next slice (a delay, never a hang).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/sync_wait.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

// The longest a contended locker spins (testing the lock after 1, 2, 4, ... pauses) before it
// sleeps. Short on purpose: it catches a holder that is about to let go (a condition_variable
// waiter re-locking after its notifier, a short critical section), while a locker facing a
// holder that keeps re-locking (two processes hammering one lock) soon sleeps and leaves the
// holder running at full speed, as glibc's mutex does; longer spins handed the lock (and its
// cache line) back and forth and lost throughput, most of all on busy CPUs.
inline constexpr std::chrono::nanoseconds mutex_spin{1000};

// How often a caller that only polls try_lock() looks whether the holder refusing it lives.
inline constexpr std::chrono::milliseconds try_lock_liveness{10};

struct mutex_state {
  static constexpr const char* kind = "mutex";

  std::atomic<std::uint64_t> owner{0};     // identity of the holder, 0 when free
  std::atomic<std::uint32_t> died{0};      // 1: the holder took the lock over from a dead one
  std::atomic<std::uint32_t> sleepers{0};  // futex word: 1 when a locker may be asleep
  spin_hint spin;                          // how long contended lockers spin

  static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  // Does not throw. No system call, except that a caller the same holder keeps refusing
  // looks whether that holder still lives (reads /proc) once per try_lock_liveness, and takes
  // the lock over from a dead one (owner_died() then says so), as lock() does.
  bool try_lock() noexcept {
    std::uint64_t expected = 0;
    // acquire: pairs with the seq_cst (hence release) store of 0 in unlock_if_owner(): the
    // previous holder's writes are visible to us.
    if (owner.compare_exchange_strong(expected, self_identity(), std::memory_order_acquire,
                                      std::memory_order_relaxed))
      return true;
    return expected != 0 && try_take_over(expected);
  }

  // try_lock()'s refused path (lib/sync.cpp): true when it took the lock from a dead holder.
  bool try_take_over(std::uint64_t holder) noexcept;

  // Blocks until held; takes the lock over from a dead holder (owner_died() then says so).
  // Throws std::system_error (resource_deadlock_would_occur) when the caller already holds it.
  void lock() {
    if (!try_lock()) lock_slow(std::nullopt);
  }

  // Returns false when `deadline` passes first. Throws as lock().
  bool try_lock_until(time_point deadline) { return try_lock() || lock_slow(deadline); }

  // Releases the lock if the calling thread holds it (and clears owner_died); returns false,
  // changing nothing, when it does not. Does not throw. No system call unless someone sleeps.
  bool unlock_if_owner() noexcept {
    // relaxed: only this thread ever stores its own identity here, so if we hold the lock we
    // read our own store; if we do not, no value we might read equals our identity.
    if (owner.load(std::memory_order_relaxed) != self_identity()) return false;
    // relaxed: ordered before the release below, which publishes it to the next holder.
    if (died.load(std::memory_order_relaxed) != 0) died.store(0, std::memory_order_relaxed);
    // seq_cst: a release that pairs with the next locker's acquire compare-and-swap, and the
    // store half of a Dekker handshake with lock_slow(), which sets `sleepers` then loads
    // `owner`: either it sees the lock free, or we see its 1 below and wake it.
    owner.store(0, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0) wake_one();
    return true;
  }

  // Throws std::logic_error when the calling thread does not hold the lock.
  void unlock() {
    if (!unlock_if_owner()) throw_not_held("a mutex");
  }

  bool held_by_caller() const noexcept {
    return owner.load(std::memory_order_relaxed) == self_identity();
  }
  bool locked() const noexcept { return owner.load(std::memory_order_relaxed) != 0; }

  // relaxed: the flag is written by the holder under the lock and read by the holder.
  bool owner_died() const noexcept { return died.load(std::memory_order_relaxed) != 0; }
  void mark_consistent() noexcept { died.store(0, std::memory_order_relaxed); }

  // Clears `sleepers` and wakes one sleeper if it was set (lib/sync.cpp).
  void wake_one() noexcept;

  // The contended path (lib/sync.cpp): spin, then sleep in liveness slices, taking over from a
  // dead holder. Returns false only when `deadline` passes.
  bool lock_slow(std::optional<time_point> deadline);

  // Throws std::logic_error for an unlock() of `what` (a description) by a non-holder.
  [[noreturn]] void throw_not_held(std::string_view what) const;
};

// A re-entrant mutex: the same lock word plus a depth that only the holder touches.
struct recursive_mutex_state {
  static constexpr const char* kind = "recursive_mutex";
  mutex_state m;
  // relaxed everywhere: written and read only by the holder, and handed from one holder to the
  // next by the lock word's release and acquire (a taker from a dead holder overwrites it).
  std::atomic<std::uint32_t> depth{0};
  std::uint32_t reserved = 0;

  bool try_lock() noexcept {
    if (m.held_by_caller()) return deepen();
    if (!m.try_lock()) return false;
    depth.store(1, std::memory_order_relaxed);
    return true;
  }

  // Throws std::system_error (resource_unavailable_try_again) when the depth would overflow.
  void lock() {
    if (!try_lock()) lock_until(std::nullopt);
  }

  bool try_lock_until(time_point deadline) { return try_lock() || lock_until(deadline); }

  // Undoes one lock(); the last one releases. Returns false, changing nothing, when the
  // calling thread does not hold it. Does not throw.
  bool unlock_if_owner() noexcept {
    if (!m.held_by_caller()) return false;
    const std::uint32_t d = depth.load(std::memory_order_relaxed);
    if (d > 1) {
      depth.store(d - 1, std::memory_order_relaxed);
      return true;
    }
    depth.store(0, std::memory_order_relaxed);
    return m.unlock_if_owner();
  }

  void unlock() {
    if (!unlock_if_owner()) m.throw_not_held("a recursive_mutex");
  }

  bool owner_died() const noexcept { return m.owner_died(); }
  void mark_consistent() noexcept { m.mark_consistent(); }
  [[noreturn]] void throw_not_held(std::string_view what) const { m.throw_not_held(what); }

 private:
  bool deepen();                                        // holder re-entering; lib/sync.cpp
  bool lock_until(std::optional<time_point> deadline);  // not yet held; lib/sync.cpp
};

}  // namespace shmkit::detail
