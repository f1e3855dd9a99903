// SPDX-License-Identifier: MIT
// Waiting patterns the synchronization states share, on top of the wait layer: waking only
// when somebody sleeps, spinning adaptively before sleeping, and sleeping in liveness slices so
// that a waiter can check, now and then, whether the peer it waits for still lives.
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

// How long waiters on one object spin before they sleep, learnt from how spinning went. A spin
// that caught its condition after t sets the budget to 4t (at least probe_budget, at most the
// caller's limit): enough for the next answer to come as fast, without spinning much longer
// than answers take. A spin that had to sleep halves the budget, down to none. Spinning pays
// when the peer runs on another CPU and answers within the budget; when both share one (two
// busy vCPUs, or an unpinned pair the scheduler put together) it only burns the CPU the peer
// needs, and measured up to 2x slower than not spinning at all. One wait in 64 (per thread)
// probes with probe_budget anyway (enough to catch a peer that spins on another CPU), so a
// budget that fell to zero climbs back when spinning pays again, at a cost of about 15 ns per
// wait while it does not. Lives in shared memory next to the waitpoint; only a hint, so every
// access is relaxed.
struct spin_hint {
  static constexpr std::chrono::nanoseconds probe_budget{1000};
  // Counts this thread's waits with a zero budget, to pick the probes (process-local).
  static inline thread_local unsigned waits_of_this_thread = 0;

  std::atomic<std::uint32_t> ns{static_cast<std::uint32_t>(probe_budget.count())};

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
};

// Deadline for one sleep: the caller's deadline or the end of the current liveness slice,
// whichever comes first.
inline time_point slice_deadline(std::optional<time_point> deadline) noexcept {
  const time_point slice_end = clock::now() + liveness_slice;
  return deadline && *deadline < slice_end ? *deadline : slice_end;
}

// Spins as `hint` says, then sleeps on `wp` until ready() holds (true) or `deadline` passes
// (false).
template <class Ready>
bool wait_adaptively(waitpoint& wp, spin_hint& hint, Ready&& ready,
                     std::optional<time_point> deadline) {
  return hint.spin(ready) || wp.wait_until(ready, deadline, std::chrono::nanoseconds::zero());
}

// As wait_adaptively, but sleeps in liveness slices: after each it calls on_slice(), which
// checks the peers the caller waits for and may settle the wait itself by returning true (it
// took a dead holder's claim over, say).
template <class Ready, class OnSlice>
bool wait_in_slices(waitpoint& wp, spin_hint& hint, Ready&& ready,
                    std::optional<time_point> deadline, OnSlice&& on_slice) {
  if (hint.spin(ready)) return true;
  for (;;) {
    if (wp.wait_until(ready, slice_deadline(deadline), std::chrono::nanoseconds::zero()))
      return true;
    if (on_slice()) return true;
    if (deadline && clock::now() >= *deadline) return false;
  }
}

}  // namespace shmkit::detail
