// SPDX-License-Identifier: MIT
// Synchronization between processes: mutex, recursive_mutex, semaphore, bounded_semaphore,
// condition_variable, event and barrier (Python's Lock, RLock, Semaphore, BoundedSemaphore,
// Condition, Event and Barrier), each in shared memory.
//
// Contract, for all seven:
// - Made four ways: anonymous (shared with children forked after it), (create_only, name, ...),
//   (open_only, name), (open_or_create, name, ...); the arguments after the name are used only
//   when the object is created. Any number of processes and threads use one object at once.
//   Handles are move-only; a moved-from handle may only be destroyed or assigned to.
// - Blocking: the uncontended lock/unlock, acquire/release, set and notify without sleepers
//   make no system call. A blocked caller spins for a few microseconds (less, down to none,
//   while spinning has not been catching the answer), yields the CPU once (so that a peer on
//   the same CPU answers without a futex call), then sleeps in the kernel (futex): an idle
//   waiter costs no CPU. Not fair: a running caller may overtake a sleeping one.
// - kill -9 at any instruction: a mutex or recursive_mutex whose holder died is taken over by
//   the next locker (waiters check the holder's pid and start time every 150 ms), and
//   owner_died() tells that locker until mark_consistent() or unlock(); a barrier whose party
//   died breaks, and its waiters throw broken_barrier_error (every process holding a barrier
//   handle counts as a party, see barrier below); a condition_variable waiter
//   re-locks its mutex under the same rule. A semaphore count taken by a dead process stays
//   taken (that is the semaphore's meaning). A killed sleeper only costs later wakers a
//   needless futex_wake call.
// - Throws: shmkit::error from the named constructors (missing name, another kind of object,
//   no space), std::invalid_argument for bad names and arguments, std::logic_error for misuse
//   (unlocking a mutex the calling thread does not hold, releasing a bounded_semaphore above
//   its initial value), std::system_error (resource_deadlock_would_occur) for locking a
//   non-recursive mutex the calling thread holds, broken_barrier_error from a broken barrier.
//   Timed calls return false on timeout. Destructors do not throw.
// - Ownership of mutexes is per thread (the identity of the thread that locked).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>

#include "shmkit/detail/barrier_state.hpp"
#include "shmkit/detail/condition_state.hpp"
#include "shmkit/detail/event_state.hpp"
#include "shmkit/detail/mutex_state.hpp"
#include "shmkit/detail/semaphore_state.hpp"
#include "shmkit/detail/sync_handle.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"

namespace shmkit {

namespace detail {
// An absolute steady-clock deadline for a time point of any clock.
template <class Clock, class Duration>
time_point to_deadline(const std::chrono::time_point<Clock, Duration>& t) {
  if constexpr (std::is_same_v<Clock, clock>)
    return std::chrono::time_point_cast<clock::duration>(t);
  else
    return deadline_after(t - Clock::now());
}

// The interface shared by mutex and recursive_mutex (TimedLockable), over mutex_state or
// recursive_mutex_state.
template <class State>
class robust_lock : public sync_handle<State> {
 public:
  // Blocks until held; takes over from a dead holder (see owner_died()). mutex: throws
  // std::system_error when the calling thread already holds it.
  void lock() { this->state()->lock(); }
  // Does not throw, does not block, makes no system call.
  bool try_lock() noexcept { return this->state()->try_lock(); }
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return this->state()->try_lock_until(deadline_after(d));
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return this->state()->try_lock_until(to_deadline(t));
  }
  // Throws std::logic_error when the calling thread does not hold it.
  void unlock() {
    if (!this->state()->unlock_if_owner())
      this->state()->throw_not_held(this->describe(State::kind));
  }

  // True when the current holder took the lock over from a holder that died (the data it
  // guards may be half-updated), until mark_consistent() or unlock().
  bool owner_died() const noexcept { return this->state()->owner_died(); }
  void mark_consistent() noexcept { this->state()->mark_consistent(); }

 protected:
  using sync_handle<State>::sync_handle;
};
}  // namespace detail

// A process-shared, robust, non-recursive mutex (Python's Lock, std::mutex's interface plus
// try_lock_for/until). TimedLockable: std::lock_guard, std::unique_lock and std::scoped_lock
// work with it.
class mutex : public detail::robust_lock<detail::mutex_state> {
 public:
  mutex();
  explicit mutex(create_only_t, std::string_view name, permissions perms = {});
  explicit mutex(open_only_t, std::string_view name);
  explicit mutex(open_or_create_t, std::string_view name, permissions perms = {});
  // A view of a mutex state embedded in another object's segment (library use: value<T>'s
  // get_lock()). Owns nothing; the state must outlive the view. name() is empty.
  explicit mutex(detail::mutex_state* state) noexcept : robust_lock(state) {}
};

// A robust mutex that its holder may lock again (Python's RLock); each lock() needs an
// unlock(). TimedLockable.
class recursive_mutex : public detail::robust_lock<detail::recursive_mutex_state> {
 public:
  recursive_mutex();
  explicit recursive_mutex(create_only_t, std::string_view name, permissions perms = {});
  explicit recursive_mutex(open_only_t, std::string_view name);
  explicit recursive_mutex(open_or_create_t, std::string_view name, permissions perms = {});
  explicit recursive_mutex(detail::recursive_mutex_state* state) noexcept : robust_lock(state) {}
};

// A counting semaphore (Python's Semaphore). The count never goes below 0.
class semaphore : public detail::sync_handle<detail::semaphore_state> {
 public:
  // Throws std::invalid_argument when initial < 0.
  explicit semaphore(std::ptrdiff_t initial = 1);
  explicit semaphore(create_only_t, std::string_view name, std::ptrdiff_t initial = 1,
                     permissions perms = {});
  explicit semaphore(open_only_t, std::string_view name);
  explicit semaphore(open_or_create_t, std::string_view name, std::ptrdiff_t initial = 1,
                     permissions perms = {});
  // A view of a state embedded in another object's segment. (A template so that semaphore(0)
  // still means a count of 0, not a null view.)
  template <class State>
    requires std::is_same_v<State, detail::semaphore_state>
  explicit semaphore(State* state) noexcept : sync_handle(state) {}

  void acquire() { state()->acquire(); }
  bool try_acquire() noexcept { return state()->try_acquire(); }
  template <class Rep, class Period>
  bool try_acquire_for(const std::chrono::duration<Rep, Period>& d) {
    return state()->try_acquire_until(detail::deadline_after(d));
  }
  template <class Clock, class Duration>
  bool try_acquire_until(const std::chrono::time_point<Clock, Duration>& t) {
    return state()->try_acquire_until(detail::to_deadline(t));
  }
  // Adds n and wakes up to n waiters. Throws std::invalid_argument when n < 0, and
  // std::logic_error when the count would pass its bound (bounded_semaphore: the initial
  // value; semaphore: PTRDIFF_MAX).
  void release(std::ptrdiff_t n = 1) {
    if (n < 0 || !state()->try_release(n)) throw_bad_release(n);
  }
  // The count now (a snapshot).
  std::ptrdiff_t value() const noexcept { return static_cast<std::ptrdiff_t>(state()->value()); }

 protected:
  struct bounded_tag {};
  semaphore(bounded_tag, std::ptrdiff_t initial);
  semaphore(bounded_tag, create_only_t, std::string_view name, std::ptrdiff_t initial,
            permissions perms);
  semaphore(bounded_tag, open_only_t, std::string_view name);
  semaphore(bounded_tag, open_or_create_t, std::string_view name, std::ptrdiff_t initial,
            permissions perms);

 private:
  [[noreturn]] void throw_bad_release(std::ptrdiff_t n) const;
  const char* kind() const noexcept;
};

// A semaphore whose release() above the initial value throws std::logic_error (Python's
// BoundedSemaphore).
class bounded_semaphore : public semaphore {
 public:
  explicit bounded_semaphore(std::ptrdiff_t initial = 1) : semaphore(bounded_tag{}, initial) {}
  explicit bounded_semaphore(create_only_t, std::string_view name, std::ptrdiff_t initial = 1,
                             permissions perms = {})
      : semaphore(bounded_tag{}, create_only, name, initial, perms) {}
  explicit bounded_semaphore(open_only_t, std::string_view name)
      : semaphore(bounded_tag{}, open_only, name) {}
  explicit bounded_semaphore(open_or_create_t, std::string_view name, std::ptrdiff_t initial = 1,
                             permissions perms = {})
      : semaphore(bounded_tag{}, open_or_create, name, initial, perms) {}
};

// A condition variable for shmkit::mutex (Python's Condition, with its lock kept apart).
// Spurious wake-ups are possible, as with std::condition_variable: use the predicate forms.
class condition_variable : public detail::sync_handle<detail::condition_state> {
 public:
  condition_variable();
  explicit condition_variable(create_only_t, std::string_view name, permissions perms = {});
  explicit condition_variable(open_only_t, std::string_view name);
  explicit condition_variable(open_or_create_t, std::string_view name, permissions perms = {});
  explicit condition_variable(detail::condition_state* state) noexcept : sync_handle(state) {}

  // Do not throw; a system call only when somebody sleeps.
  void notify_one() noexcept { state()->notify_one(); }
  void notify_all() noexcept { state()->notify_all(); }

  // Unlocks lk's mutex, sleeps until notified (or spuriously woken), locks it again. The
  // re-lock follows the mutex's rules: a dead holder is taken over and owner_died() says so.
  // Throws std::logic_error when lk does not hold its mutex.
  void wait(std::unique_lock<mutex>& lk) { wait_impl(lk, std::nullopt); }
  template <class Pred>
  void wait(std::unique_lock<mutex>& lk, Pred pred) {
    while (!pred()) wait(lk);
  }
  template <class Rep, class Period>
  std::cv_status wait_for(std::unique_lock<mutex>& lk,
                          const std::chrono::duration<Rep, Period>& d) {
    return wait_impl(lk, detail::deadline_after(d)) ? std::cv_status::no_timeout
                                                    : std::cv_status::timeout;
  }
  // Returns pred() at the end: false only when the deadline passed with pred() false.
  template <class Rep, class Period, class Pred>
  bool wait_for(std::unique_lock<mutex>& lk, const std::chrono::duration<Rep, Period>& d,
                Pred pred) {
    return wait_until_deadline(lk, detail::deadline_after(d), std::move(pred));
  }
  template <class Clock, class Duration>
  std::cv_status wait_until(std::unique_lock<mutex>& lk,
                            const std::chrono::time_point<Clock, Duration>& t) {
    return wait_impl(lk, detail::to_deadline(t)) ? std::cv_status::no_timeout
                                                 : std::cv_status::timeout;
  }
  template <class Clock, class Duration, class Pred>
  bool wait_until(std::unique_lock<mutex>& lk, const std::chrono::time_point<Clock, Duration>& t,
                  Pred pred) {
    return wait_until_deadline(lk, detail::to_deadline(t), std::move(pred));
  }

 private:
  template <class Pred>
  bool wait_until_deadline(std::unique_lock<mutex>& lk, detail::time_point deadline, Pred pred) {
    while (!pred())
      if (!wait_impl(lk, deadline)) return pred();
    return true;
  }
  // False on timeout.
  bool wait_impl(std::unique_lock<mutex>& lk, std::optional<detail::time_point> deadline);
};

// A flag that processes wait for (Python's Event).
class event : public detail::sync_handle<detail::event_state> {
 public:
  event();
  explicit event(create_only_t, std::string_view name, permissions perms = {});
  explicit event(open_only_t, std::string_view name);
  explicit event(open_or_create_t, std::string_view name, permissions perms = {});
  explicit event(detail::event_state* state) noexcept : sync_handle(state) {}

  // Sets the flag and wakes every waiter. Does not throw.
  void set() noexcept { state()->set(); }
  void clear() noexcept { state()->clear(); }
  bool is_set() const noexcept { return state()->is_set(); }
  // Blocks until the flag is set. Does not throw.
  void wait() noexcept { state()->wait_until(std::nullopt); }
  // True when set, false on timeout.
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& d) noexcept {
    return state()->wait_until(detail::deadline_after(d));
  }
  template <class Clock, class Duration>
  bool wait_until(const std::chrono::time_point<Clock, Duration>& t) {
    return state()->wait_until(detail::to_deadline(t));
  }
};

// A cyclic barrier for a fixed number of parties (Python's Barrier, std::barrier's
// arrive_and_wait). Once broken (abort(), a wait_for timeout, a dead party) it stays broken:
// every waiter and every later arrival throws broken_barrier_error.
// Who counts as a party when one dies: every process holding a handle on the barrier, made,
// opened, or inherited through fork() (raw fork() included, and a forked child that calls
// exec(), until it ends), until it has destroyed its handles or ended normally as a
// shmkit::process child (its callable returned or threw). A pool's supervisor and workers are
// no party (unless a task arrives at the barrier, which seats its worker). One that ends
// still holding a handle otherwise (kill -9, a crash, _exit, exit() with the handle alive)
// breaks the round in progress, or, if it ended between rounds, a later round (the first in
// which a waiter waits past a liveness check, 150 ms), whether it ever arrived or not: the
// barrier cannot tell a helper from a party that died before its first arrival. So a raw
// forked helper process that is not a party must not end holding a barrier handle before the
// barrier's last round: it destroys the handle it inherited first (say, a
// std::optional<barrier> reset in the child), or it is forked before the barrier is made.
// Destroying the last handle (or a process child's normal end) stops counting the process,
// unless the round in progress waits for it (it arrived in the previous round and others have
// arrived in this one); a party that ends after the last round breaks nothing. Threads of one
// process count one by one once they have arrived. Not watched: a child killed before its
// first instructions after fork() ran, and processes and threads beyond the barrier's seats
// (2 * parties, at least 8).
class barrier : public detail::sync_handle<detail::barrier_state> {
 public:
  // Throws std::invalid_argument when parties is 0 (or above UINT32_MAX).
  explicit barrier(std::size_t parties);
  explicit barrier(create_only_t, std::string_view name, std::size_t parties,
                   permissions perms = {});
  explicit barrier(open_only_t, std::string_view name);
  explicit barrier(open_or_create_t, std::string_view name, std::size_t parties,
                   permissions perms = {});
  // A view of a state built in barrier_state::bytes_for(parties) bytes of another object's
  // segment. (A template so that barrier(0) stays an invalid party count, not a null view.)
  template <class State>
    requires std::is_same_v<State, detail::barrier_state>
  explicit barrier(State* state) noexcept : sync_handle(state) { join(); }
  barrier(barrier&&) noexcept = default;
  barrier& operator=(barrier&& other) noexcept;
  ~barrier();

  // Waits until all parties have arrived in this round. Throws broken_barrier_error when the
  // barrier is or becomes broken.
  void arrive_and_wait();
  // As arrive_and_wait(), but returns false after d, having broken the barrier (the others
  // then throw).
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& d) {
    return wait_impl(detail::deadline_after(d));
  }
  // Breaks the barrier. Does not throw.
  void abort() noexcept { state()->abort(); }
  bool broken() const noexcept { return state()->broken(); }
  std::size_t parties() const noexcept { return state()->parties; }
  // How many parties wait in the current round (a snapshot).
  std::size_t n_waiting() const noexcept { return state()->arrived(); }

 private:
  bool wait_impl(std::optional<detail::time_point> deadline);
  // Counts this handle in the process's registry and attaches the process (see above).
  void join() noexcept;
  // Uncounts it, and detaches the process when it was its last handle on the barrier.
  void leave() noexcept;
};

}  // namespace shmkit
