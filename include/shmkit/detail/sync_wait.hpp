// SPDX-License-Identifier: MIT
// Waiting patterns the synchronization states share, on top of the wait layer: waking only
// when somebody sleeps, spinning and yielding adaptively before sleeping, and sleeping in liveness
// slices so that a waiter can check, now and then, whether the peer it waits for still lives.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

// How long a blocked caller sleeps between two checks that the peer it waits for still lives.
inline constexpr std::chrono::milliseconds liveness_slice{150};

// Wakes up to n sleepers of `wp` only when somebody sleeps there: the caller has just changed
// the state the sleepers wait for with a seq_cst operation. Either our seq_cst load below sees
// a sleeper's seq_cst increment of `waiters` (so we wake it), or that increment comes later in
// the single total order, and then the sleeper's re-check of its condition (a seq_cst load,
// made after the increment) sees our change and it does not sleep. Saves waitpoint::notify's
// read-modify-write of `seq` on the uncontended path.
inline void wake_if_waiting(waitpoint& wp, int n) noexcept {
  if (wp.waiters.load(std::memory_order_seq_cst) != 0) wp.notify(n);
}

// Spins until pred() holds (true) or `budget` passes (false), testing pred() after 1, 2, 4,
// ... up to 64 pause instructions, so that a spinner reads a contended cache line rarely.
template <class Pred>
bool spin_with_backoff(Pred&& pred, std::chrono::nanoseconds budget) {
  const time_point end = clock::now() + budget;
  for (int delay = 1;; delay = delay < 64 ? 2 * delay : delay) {
    for (int i = 0; i < delay; ++i) cpu_relax();
    if (pred()) return true;
    if (clock::now() >= end) return false;
  }
}

// How waiters on one object try to catch their condition before they sleep, learnt from how
// that went: first a spin, then one yield of the CPU.
//
// The spin: a spin that caught its condition after t sets the budget to 4t (at least
// probe_budget, at most the caller's limit): enough for the next answer to come as fast,
// without spinning much longer than answers take. A spin that had to sleep halves the budget,
// down to none. Spinning pays when the peer runs on another CPU and answers within the budget;
// when both share one (two busy vCPUs, or an unpinned pair the scheduler put together) it only
// burns the CPU the peer needs, and measured up to 2x slower than not spinning at all. One
// wait in 64 (per thread) probes with probe_budget anyway (enough to catch a peer that spins
// on another CPU), so a budget that fell to zero climbs back when spinning pays again, at a
// cost of about 15 ns per wait while it does not.
//
// The yield: when the spin did not catch the condition, one sched_yield() before sleeping.
// When the peer that will answer is runnable on our CPU (the case where spinning cannot
// work), the yield runs it at once and it answers without a futex wake, and we see the answer
// without a futex wait: measured 1.6x faster per round trip than sleeping. When nobody else is
// runnable here it returns at once (a fraction of a microsecond, next to a sleep of several).
// But when a CPU-bound process shares our CPU, every yield hands it a time slice (measured
// 1.4 ms per round trip, against 8.5 us when sleeping, whose wake-up the scheduler favours).
// A yield that takes longer than yield_limit is counted as lost, and the object's waiters
// then skip the yield for a pause: yield_pause at first, doubled (up to 64 times, ~134 ms)
// each time fewer than yields_per_loss yields came between two losses, back to yield_pause
// when more did. Occasional long yields are not held against it: under a background load
// (other processes' compile jobs on both CPUs) about 1 wait in 1000 took over a millisecond
// whether it yielded or slept, and yielding stayed 1.4x faster; a CPU-bound neighbour makes
// nearly every yield long, so the pause soon reaches its longest (about 1% lost), short
// enough to notice within a fraction of a second when the neighbour goes. Never more than
// one yield per wait: yielding in a loop is what makes some libraries take milliseconds per
// hop on busy machines.
//
// Lives in shared memory next to the waitpoint; only a hint, so every access is relaxed.
struct spin_hint {
  static constexpr std::chrono::nanoseconds probe_budget{1000};
  static constexpr std::chrono::nanoseconds yield_limit{200000};
  static constexpr std::chrono::nanoseconds yield_pause{std::int64_t{1} << 21};  // ~2.1 ms
  static constexpr std::uint32_t max_pause_doublings = 6;                        // ~134 ms
  static constexpr std::uint32_t yields_per_loss = 64;
  // Counts this thread's waits with a zero budget, to pick the probes (process-local).
  static inline thread_local unsigned waits_of_this_thread = 0;

  std::atomic<std::uint32_t> ns{static_cast<std::uint32_t>(probe_budget.count())};
  // When a yield last lost the CPU to someone else, in units of 2^20 ns of the steady clock
  // (wraps every 52 days; only differences are used).
  std::atomic<std::uint32_t> yield_lost_at{0};
  std::atomic<std::uint32_t> yields_since_loss{0};  // saturates
  std::atomic<std::uint32_t> pause_doublings{0};    // the pause after a loss: yield_pause << this

  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  // The budget for the next spin, at most `limit`.
  std::chrono::nanoseconds budget(std::chrono::nanoseconds limit) const noexcept {
    const std::chrono::nanoseconds v(ns.load(std::memory_order_relaxed));
    const std::chrono::nanoseconds probe = std::min(probe_budget, limit);
    if (v < probe && (++waits_of_this_thread & 63) == 0) return probe;
    return std::min(v, limit);
  }
  // Learns from a spin that caught its condition after `took` (caught) or gave up (!caught).
  void record(bool caught, std::chrono::nanoseconds took, std::chrono::nanoseconds limit) noexcept {
    const std::uint32_t v = ns.load(std::memory_order_relaxed);
    std::uint32_t next = v / 2;
    if (caught)
      next = static_cast<std::uint32_t>(
          std::clamp(4 * took, std::min(probe_budget, limit), limit).count());
    if (next != v) ns.store(next, std::memory_order_relaxed);
  }

  // Spins on pred() for the current budget (at most `limit`; with exponential backoff
  // between tests when `backoff`) and learns from the outcome.
  template <class Pred>
  bool spin(Pred&& pred, std::chrono::nanoseconds limit = spin_budget, bool backoff = false) {
    if (pred()) return true;
    const std::chrono::nanoseconds b = budget(limit);
    if (b <= b.zero()) return false;  // nothing to learn: only probes raise a zero budget
    const time_point start = clock::now();
    const bool caught = backoff ? spin_with_backoff(pred, b) : spin_until(pred, b);
    record(caught, clock::now() - start, limit);
    return caught;
  }

  // Yields the CPU once, unless a yield lost it lately or `deadline` has passed, and returns
  // pred() after it (false when it did not yield).
  template <class Pred>
  bool yield(Pred&& pred, std::optional<time_point> deadline) {
    const time_point start = clock::now();
    if (deadline && start >= *deadline) return false;  // a zero timeout does not yield
    const std::uint32_t pause = coarse_pause
                                << std::min(pause_doublings.load(std::memory_order_relaxed),
                                            max_pause_doublings);
    if (coarse(start) - yield_lost_at.load(std::memory_order_relaxed) < pause) return false;
    yield_cpu();
    const time_point end = clock::now();
    if (end - start > yield_limit) {
      note_lost_yield(end);
    } else {
      const std::uint32_t n = yields_since_loss.load(std::memory_order_relaxed);
      if (n != UINT32_MAX) yields_since_loss.store(n + 1, std::memory_order_relaxed);
    }
    return pred();
  }

  // Records that a yield lost the CPU at `t`: the next ones wait for a pause after it, longer
  // when losses come often.
  void note_lost_yield(time_point t) noexcept {
    const std::uint32_t d = pause_doublings.load(std::memory_order_relaxed);
    const bool often = yields_since_loss.exchange(0, std::memory_order_relaxed) < yields_per_loss;
    pause_doublings.store(often ? std::min(d + 1, max_pause_doublings) : 0,
                          std::memory_order_relaxed);
    yield_lost_at.store(coarse(t), std::memory_order_relaxed);
  }

  // Spins, then yields, as learnt; true when pred() holds.
  template <class Pred>
  bool spin_then_yield(Pred&& pred, std::optional<time_point> deadline,
                       std::chrono::nanoseconds limit = spin_budget, bool backoff = false) {
    return spin(pred, limit, backoff) || yield(pred, deadline);
  }

 private:
  static constexpr int coarse_shift = 20;
  static constexpr std::uint32_t coarse_pause =
      static_cast<std::uint32_t>(yield_pause.count() >> coarse_shift);
  static std::uint32_t coarse(time_point t) noexcept {
    return static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count() >>
        coarse_shift);
  }
};

// Deadline for one sleep: the caller's deadline or the end of the current liveness slice,
// whichever comes first.
inline time_point slice_deadline(std::optional<time_point> deadline) noexcept {
  const time_point slice_end = clock::now() + liveness_slice;
  return deadline && *deadline < slice_end ? *deadline : slice_end;
}

// Spins and yields as `hint` says, then sleeps on `wp` until ready() holds (true) or
// `deadline` passes (false).
template <class Ready>
bool wait_adaptively(waitpoint& wp, spin_hint& hint, Ready&& ready,
                     std::optional<time_point> deadline) {
  return hint.spin_then_yield(ready, deadline) ||
         wp.wait_until(ready, deadline, std::chrono::nanoseconds::zero());
}

// As wait_adaptively, but sleeps in liveness slices: after each it calls on_slice(), which
// checks the peers the caller waits for and may settle the wait itself by returning true (it
// took a dead holder's claim over, say).
template <class Ready, class OnSlice>
bool wait_in_slices(waitpoint& wp, spin_hint& hint, Ready&& ready,
                    std::optional<time_point> deadline, OnSlice&& on_slice) {
  if (hint.spin_then_yield(ready, deadline)) return true;
  for (;;) {
    if (wp.wait_until(ready, slice_deadline(deadline), std::chrono::nanoseconds::zero()))
      return true;
    if (on_slice()) return true;
    if (deadline && clock::now() >= *deadline) return false;
  }
}

}  // namespace shmkit::detail
