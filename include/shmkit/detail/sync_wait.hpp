// SPDX-License-Identifier: MIT
// Waiting patterns the synchronization states share, on top of the wait layer: waking only
// when somebody sleeps, spinning adaptively before sleeping, and sleeping in liveness slices so
// that a waiter can check, now and then, whether the peer it waits for still lives.
#pragma once

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

// How long waiters on one object spin before they sleep, learnt from how spinning went: a
// spin that caught its condition resets the budget to the full spin_budget; one that had to
// sleep halves it, down to none. Spinning pays when the peer runs on another CPU and answers
// within the budget; it only burns the CPU the peer needs when both share one (two busy vCPUs,
// or an unpinned pair the scheduler put together). One wait in 16 spins the full budget
// anyway, so a budget that fell to zero can climb back. Lives in shared memory next to the
// waitpoint; only a hint, so every access is relaxed.
struct spin_hint {
  std::atomic<std::uint32_t> ns{static_cast<std::uint32_t>(spin_budget.count())};

  static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

  std::chrono::nanoseconds budget() const noexcept {
    const std::uint32_t v = ns.load(std::memory_order_relaxed);
    if (v < spin_budget.count() && (clock::now().time_since_epoch().count() & 0xf0) == 0)
      return spin_budget;  // a probe: the low bits of the clock are random enough
    return std::chrono::nanoseconds(v);
  }
  void record(bool caught) noexcept {
    const std::uint32_t v = ns.load(std::memory_order_relaxed);
    const std::uint32_t next = caught ? static_cast<std::uint32_t>(spin_budget.count()) : v / 2;
    if (next != v) ns.store(next, std::memory_order_relaxed);
  }

  // Spins on pred() for the current budget and learns from the outcome.
  template <class Pred>
  bool spin(Pred&& pred, bool backoff = false) {
    if (pred()) return true;
    const std::chrono::nanoseconds b = budget();
    const bool caught = backoff ? spin_with_backoff(pred, b) : spin_until(pred, b);
    record(caught);
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
                    std::optional<time_point> deadline, OnSlice&& on_slice,
                    bool backoff = false) {
  if (hint.spin(ready, backoff)) return true;
  for (;;) {
    if (wp.wait_until(ready, slice_deadline(deadline), std::chrono::nanoseconds::zero()))
      return true;
    if (on_slice()) return true;
    if (deadline && clock::now() >= *deadline) return false;
  }
}

}  // namespace shmkit::detail
