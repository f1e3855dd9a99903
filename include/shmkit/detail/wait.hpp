// SPDX-License-Identifier: MIT
// The wait layer: the one place where a process goes to sleep and is woken, across
// processes. A bounded spin with a pause instruction, then a futex (never FUTEX_PRIVATE) on a
// 32-bit word in shared memory. Porting shmkit to another kernel means porting this file and
// lib/wait.cpp.
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <optional>

namespace shmkit::detail {

using clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC, the futex's clock
using time_point = clock::time_point;

// Converts any duration to an absolute deadline, saturating instead of overflowing.
template <class Rep, class Period>
time_point deadline_after(std::chrono::duration<Rep, Period> d) noexcept {
  const auto now = clock::now();
  if (d <= d.zero()) return now;
  const auto max_left = time_point::max() - now;
  if (d >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(max_left) ||
      std::chrono::duration_cast<clock::duration>(d) >= max_left)
    return time_point::max();
  return now + std::chrono::duration_cast<clock::duration>(d);
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Sleeps while *word == expected, until woken or `until` (nullopt: no limit). Returns true when
// woken or when the word had already changed, false on timeout. Spurious returns are possible,
// so callers re-check their condition.
bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::optional<time_point> until) noexcept;

// Wakes up to n sleepers on `word`; returns how many were woken.
int futex_wake(std::atomic<std::uint32_t>* word, int n = INT_MAX) noexcept;

// Gives this CPU to another runnable thread, if there is one, and returns when the scheduler
// comes back to us (at once when nobody else is runnable here). One call before a sleep lets a
// peer on the same CPU answer with neither side making a futex call; never call it in a loop:
// each call may hand a whole time slice to an unrelated busy process (spin_hint decides).
void yield_cpu() noexcept;

// How many system calls of the wait layer (futex waits, wakes, yields, heavy fences) this
// process has made: lets tests check that the paths where nobody waits make none.
struct futex_counts {
  std::uint64_t waits;
  std::uint64_t wakes;
  std::uint64_t yields;
  std::uint64_t heavy_fences;  // heavy_fence() calls
};
futex_counts futex_calls() noexcept;

// Asymmetric fences (membarrier(2)): a hot path that publishes with a store and then loads a
// waiter count may skip the store-load fence (a locked instruction that stalls until the store
// is globally visible) when its process is registered, provided every sleeper it must wake
// calls heavy_fence() between counting itself and re-checking. heavy_fence() makes each
// running thread of every registered process execute a full fence; so for a hot path
// `store x; light_fence(); load w` and a sleeper `count w; heavy_fence(); load x`, either the
// sleeper sees the store or the hot path sees the count, as with seq_cst on both sides.
//
// Registers this process (idempotent; a forked child registers itself again). True when the
// kernel accepts: only then may this process's hot paths use light_fence() alone.
bool register_light_fences() noexcept;
// Orders the store before it against the load after it for heavy_fence() callers elsewhere;
// costs nothing at run time (it only stops the compiler).
inline void light_fence() noexcept { std::atomic_signal_fence(std::memory_order_seq_cst); }
// A full fence on every CPU that runs a registered process (one system call; an
// inter-processor interrupt to each CPU that runs one now). False when the kernel has no such
// call: a sleeper must then bound its sleep, since a light peer may not have seen it counted.
bool heavy_fence() noexcept;

// How long a waiter spins before it sleeps. About a futex round trip: a peer that answers
// within it is caught without a system call on either side.
inline constexpr std::chrono::nanoseconds spin_budget{8000};

// Spins while !pred(), up to `budget`. Returns pred()'s last value.
template <class Pred>
bool spin_until(Pred&& pred, std::chrono::nanoseconds budget = spin_budget) {
  if (pred()) return true;
  if (budget <= budget.zero()) return false;
  const auto end = clock::now() + budget;
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      cpu_relax();
      if (pred()) return true;
    }
    if (clock::now() >= end) return pred();
  }
}

// An event count in shared memory: sleepers wait for a condition on other shared state, and
// whoever changes that state calls notify_*(), which makes a system call only when somebody
// sleeps. Standard layout, no pointers; lives inside a segment.
//
// The protocol (Dekker-style, all seq_cst): a waiter increments `waiters`, reads `seq`, then
// re-checks its condition; a notifier changes the state, increments `seq`, then reads
// `waiters`. Either the waiter sees the new state, or the notifier sees the waiter and the
// waiter's futex_wait on the old `seq` value returns at once or is woken.
//
// A process killed while counted in `waiters` leaves the count high: that costs later
// notifiers a needless futex_wake call, never a missed wake-up.
struct waitpoint {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> waiters{0};

  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  void notify_one() noexcept { notify(1); }
  void notify_all() noexcept { notify(INT_MAX); }

  void notify(int n) noexcept {
    seq.fetch_add(1, std::memory_order_seq_cst);
    if (waiters.load(std::memory_order_seq_cst) != 0) futex_wake(&seq, n);
  }

  // Waits until pred() holds (true) or `until` passes (false). Spins for spin_budget first.
  // `heavy`: some notifier changes the state with light_fence() only (see
  // register_light_fences()), so each re-check follows a heavy_fence().
  template <class Pred>
  bool wait_until(Pred&& pred, std::optional<time_point> until,
                  std::chrono::nanoseconds spin = spin_budget, bool heavy = false) {
    if (spin_until(pred, spin)) return true;
    for (;;) {
      waiters.fetch_add(1, std::memory_order_seq_cst);
      const std::uint32_t key = seq.load(std::memory_order_seq_cst);
      std::optional<time_point> sleep_until = until;
      if (heavy && !heavy_fence()) sleep_until = bounded_sleep(until);
      if (pred()) {
        waiters.fetch_sub(1, std::memory_order_seq_cst);
        return true;
      }
      futex_wait(&seq, key, sleep_until);
      waiters.fetch_sub(1, std::memory_order_seq_cst);
      if (pred()) return true;
      if (until && clock::now() >= *until) return false;
    }
  }

  // Without heavy_fence(), a light notifier's store may reach us only after our re-check and
  // its load may miss our count: sleep in short slices, re-checking after each.
  static std::optional<time_point> bounded_sleep(std::optional<time_point> until) noexcept {
    const time_point slice = clock::now() + std::chrono::milliseconds(1);
    return until && *until < slice ? *until : slice;
  }
};

}  // namespace shmkit::detail
