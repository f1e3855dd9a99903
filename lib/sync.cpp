// SPDX-License-Identifier: MIT
// Slow paths of the synchronization primitives (contended locking with dead-holder takeover,
// the reader-writer lock, the barrier) and the handles' constructors and error messages.
#include "shmkit/sync.hpp"

#include <pthread.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <climits>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "shmkit/detail/rwlock_state.hpp"

namespace shmkit::detail {
namespace {

// "thread 1234" or "nobody", for messages.
std::string holder_text(std::uint64_t identity) {
  return identity == 0 ? std::string("nobody") : fmt::format("thread {}", identity_pid(identity));
}

[[noreturn]] void throw_deadlock(std::string_view what) {
  throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                          fmt::format("shmkit: {} is already held by the calling thread {}", what,
                                      identity_pid(self_identity())));
}

// Takes a lock word over from a dead holder: true when this caller now holds it (the word went
// from `seen` to `self`). Only one caller can win the compare-and-swap from a given dead
// identity, and that identity never comes back (pid plus start time), so there is no ABA.
bool take_over_if_dead(std::atomic<std::uint64_t>& word, std::uint64_t seen, std::uint64_t self) {
  if (seen == 0 || identity_alive(seen)) return false;
  // acquire: pairs with the dead holder's release of what it wrote (as far as it got).
  return word.compare_exchange_strong(seen, self, std::memory_order_acquire,
                                      std::memory_order_relaxed);
}

}  // namespace

// --- mutex -----------------------------------------------------------------------------------

bool mutex_state::lock_slow(std::optional<time_point> deadline) {
  const std::uint64_t self = self_identity();
  // relaxed: only our own store could make it equal to self.
  if (owner.load(std::memory_order_relaxed) == self) throw_deadlock("the mutex");
  // seq_cst load: the load half of the handshake with unlock_if_owner() (we set `sleepers`
  // before it); test before the compare-and-swap so spinners do not keep stealing the line.
  auto acquired = [&] {
    std::uint64_t expected = 0;
    return owner.load(std::memory_order_seq_cst) == 0 &&
           owner.compare_exchange_strong(expected, self, std::memory_order_acquire,
                                         std::memory_order_relaxed);
  };
  // A short spin with exponential backoff (see mutex_spin), one yield (which lets a holder
  // preempted on our CPU finish and let go), then sleep.
  if (spin.spin_then_yield(acquired, deadline, mutex_spin, /*backoff=*/true)) return true;
  time_point slice_end = slice_deadline(deadline);
  for (;;) {
    // seq_cst: the store half of the handshake with unlock_if_owner(). Set before every try,
    // also after a wake-up (which cleared it), so that other sleepers are woken in turn; a
    // locker that gets the lock this way leaves it set, costing its unlock one futex_wake.
    sleepers.exchange(1, std::memory_order_seq_cst);
    if (acquired()) return true;
    if (clock::now() >= slice_end) {
      // A slice went by: does the holder still live?
      if (take_over_if_dead(owner, owner.load(std::memory_order_relaxed), self)) {
        died.store(1, std::memory_order_relaxed);  // read by ourselves, published by unlock
        return true;
      }
      if (deadline && clock::now() >= *deadline) {
        // We may have taken a wake-up meant for another sleeper; `sleepers` is set, so the
        // holder's unlock wakes one, and if the lock is already free we wake one now.
        if (!locked()) wake_one();
        return false;
      }
      slice_end = slice_deadline(deadline);
    }
    futex_wait(&sleepers, 1, slice_end);
  }
}

bool mutex_state::try_take_over(std::uint64_t holder) noexcept {
  // Per thread: which lock refused us, by which holder, since when. Only a refusal by the same
  // holder for try_lock_liveness makes us read /proc (a busy lock changes hands all the time).
  struct refusal {
    const mutex_state* lock = nullptr;
    std::uint64_t holder = 0;
    time_point since{};
  };
  thread_local refusal last;
  const time_point now = clock::now();
  if (last.lock != this || last.holder != holder) {
    last = {this, holder, now};
    // A first refusal by this holder: the cheap look (one system call, no /proc) whether its
    // thread exists at all, so that a try_lock() right after the holder died and was reaped
    // takes the lock, as the contract's "the next locker acquires it" says. A zombie or a
    // reused id still exists: those wait for the /proc look, try_lock_liveness later.
    if (!(::kill(static_cast<pid_t>(identity_pid(holder)), 0) != 0 && errno == ESRCH))
      return false;
  } else {
    if (now - last.since < try_lock_liveness) return false;
    last.since = now;
  }
  if (!take_over_if_dead(owner, holder, self_identity())) return false;
  died.store(1, std::memory_order_relaxed);  // read by ourselves, published by unlock
  last = {};
  return true;
}

void mutex_state::wake_one() noexcept {
  // seq_cst: see unlock_if_owner(). Only the caller that turns 1 into 0 wakes, once.
  if (sleepers.exchange(0, std::memory_order_seq_cst) != 0) futex_wake(&sleepers, 1);
}

void mutex_state::throw_not_held(std::string_view what) const {
  throw std::logic_error(fmt::format(
      "shmkit: unlock() of {} by thread {}, which does not hold it (held by {})", what,
      identity_pid(self_identity()), holder_text(owner.load(std::memory_order_relaxed))));
}

bool recursive_mutex_state::deepen() {
  const std::uint32_t d = depth.load(std::memory_order_relaxed);
  if (d == std::numeric_limits<std::uint32_t>::max()) return false;
  depth.store(d + 1, std::memory_order_relaxed);
  return true;
}

bool recursive_mutex_state::lock_until(std::optional<time_point> deadline) {
  if (m.held_by_caller()) {  // try_lock() failed for the holder: the depth is at its limit
    throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                            "shmkit: recursive_mutex locked 4294967295 times by the same thread");
  }
  if (!m.lock_slow(deadline)) return false;
  depth.store(1, std::memory_order_relaxed);
  return true;
}

// --- reader-writer lock ------------------------------------------------------------------------

namespace {
std::size_t slot_start(std::uint64_t self) noexcept {
  // The pid's low bits spread concurrent readers over the slots.
  return static_cast<std::size_t>(identity_pid(self)) % rwlock_state::reader_slots;
}
}  // namespace

bool rwlock_state::try_lock_shared() noexcept {
  const std::uint64_t self = self_identity();
  // Writers first: no slot while a writer holds or claims the lock (seq_cst, a plain load on
  // x86; the check that matters is the one after the slot is ours).
  if (writer.load(std::memory_order_seq_cst) != 0) return false;
  const std::size_t start = slot_start(self);
  for (std::size_t i = 0; i < reader_slots; ++i) {
    auto& slot = readers[(start + i) % reader_slots];
    std::uint64_t expected = 0;
    if (slot.load(std::memory_order_relaxed) != 0 ||
        !slot.compare_exchange_strong(expected, self, std::memory_order_seq_cst,
                                      std::memory_order_relaxed))
      continue;
    // Dekker with lock_until(): we store our slot then load the writer word; a writer stores
    // the writer word then loads the slots (all seq_cst). One of us sees the other. acquire
    // (within seq_cst): pairs with unlock()'s release of the writer word, so the last
    // writer's data is visible.
    if (writer.load(std::memory_order_seq_cst) == 0) return true;
    // A writer came: step back and let it run.
    slot.store(0, std::memory_order_seq_cst);
    wake_if_waiting(wp, INT_MAX);
    return false;
  }
  return false;
}

namespace {
// Clears a dead writer so readers can proceed. The reader takes the writer word over for a
// moment (so that only one caller settles the flags), remembers for the next writer whether
// the dead one had drained the readers (so may have been writing), and lets go.
void clear_dead_writer(rwlock_state& s, std::uint64_t seen, std::uint64_t self) {
  if (!take_over_if_dead(s.writer, seen, self)) return;
  // relaxed: we hold the writer word; its acquire above pairs with the dead writer's release.
  if (s.writing.exchange(0, std::memory_order_relaxed) != 0)
    s.died.store(1, std::memory_order_relaxed);
  // seq_cst: a release of the flags above to the next reader or writer (their seq_cst loads
  // of `writer`), and the store half of wake_if_waiting().
  s.writer.store(0, std::memory_order_seq_cst);
  wake_if_waiting(s.wp, INT_MAX);
}
}  // namespace

namespace {
// True when no reader slot is taken. seq_cst loads: the load half of the Dekker handshake
// with try_lock_shared(); acquire within it pairs with unlock_shared()'s release.
bool no_readers(const rwlock_state& s) noexcept {
  for (const auto& slot : s.readers)
    if (slot.load(std::memory_order_seq_cst) != 0) return false;
  return true;
}

// Clears the slots of readers that died holding them.
void clear_dead_readers(rwlock_state& s) {
  for (auto& slot : s.readers) {
    std::uint64_t id = slot.load(std::memory_order_relaxed);
    if (id != 0 && !identity_alive(id) &&
        slot.compare_exchange_strong(id, 0, std::memory_order_seq_cst, std::memory_order_relaxed))
      s.wp.notify_all();
  }
}
}  // namespace

bool rwlock_state::lock_shared_until(std::optional<time_point> deadline) {
  // Retries until a slot is ours with no writer; sleeps while a writer holds or claims the
  // lock, or while every slot is taken. After each slice, clears a dead writer, and when every
  // slot is taken, the slots of dead readers.
  const std::uint64_t self = self_identity();
  return wait_in_slices(
      wp, spin, [&] { return try_lock_shared(); }, deadline,
      [&] {
        clear_dead_writer(*this, writer.load(std::memory_order_relaxed), self);
        if (reader_count() == reader_slots) clear_dead_readers(*this);
        return false;
      });
}

void rwlock_state::unlock_shared() {
  const std::uint64_t self = self_identity();
  const std::size_t start = slot_start(self);
  for (std::size_t i = 0; i < reader_slots; ++i) {
    auto& slot = readers[(start + i) % reader_slots];
    std::uint64_t expected = self;
    // seq_cst: a release pairing with the writer's seq_cst scan in lock_until() (our reads
    // happen before its writes), and the store half of wake_if_waiting().
    if (slot.load(std::memory_order_relaxed) == self &&
        slot.compare_exchange_strong(expected, 0, std::memory_order_seq_cst,
                                     std::memory_order_relaxed)) {
      wake_if_waiting(wp, INT_MAX);
      return;
    }
  }
  throw std::logic_error(fmt::format(
      "shmkit: unlock_shared() of a reader-writer lock by thread {}, which holds no read lock",
      identity_pid(self)));
}

bool rwlock_state::try_lock() {
  const std::uint64_t self = self_identity();
  std::uint64_t expected = 0;
  if (!writer.compare_exchange_strong(expected, self, std::memory_order_seq_cst,
                                      std::memory_order_relaxed)) {
    if (expected == self) throw_deadlock("the reader-writer lock");
    return false;
  }
  if (no_readers(*this)) {
    // relaxed: read by ourselves in unlock(), or by a taker once we are found dead.
    writing.store(1, std::memory_order_relaxed);
    return true;
  }
  writer.store(0, std::memory_order_seq_cst);
  wake_if_waiting(wp, INT_MAX);
  return false;
}

bool rwlock_state::lock_until(std::optional<time_point> deadline) {
  const std::uint64_t self = self_identity();
  if (writer.load(std::memory_order_relaxed) == self) throw_deadlock("the reader-writer lock");
  // Phase 1: claim the writer word (new readers stop coming). seq_cst: the store half of the
  // handshake with try_lock_shared(); acquire within it pairs with the last writer's release.
  auto claimed = [&] {
    std::uint64_t expected = 0;
    return writer.load(std::memory_order_seq_cst) == 0 &&
           writer.compare_exchange_strong(expected, self, std::memory_order_seq_cst,
                                          std::memory_order_relaxed);
  };
  auto take_over = [&] {
    if (!take_over_if_dead(writer, writer.load(std::memory_order_relaxed), self)) return false;
    // relaxed: we hold the writer word; its acquire pairs with the dead writer's release.
    if (writing.exchange(0, std::memory_order_relaxed) != 0)
      died.store(1, std::memory_order_relaxed);
    return true;
  };
  if (!wait_in_slices(wp, spin, claimed, deadline, take_over)) return false;
  // Phase 2: wait for the readers to leave, clearing the slots of dead ones.
  auto drained = [&] { return no_readers(*this); };
  auto clear_dead = [&] {
    clear_dead_readers(*this);
    return no_readers(*this);
  };
  if (!wait_in_slices(wp, spin, drained, deadline, clear_dead)) {
    writer.store(0, std::memory_order_seq_cst);  // give up the claim; readers may come
    wake_if_waiting(wp, INT_MAX);
    return false;
  }
  // relaxed: read by ourselves in unlock(), or by a taker once we are found dead (a liveness
  // check after a whole slice, long after this store).
  writing.store(1, std::memory_order_relaxed);
  return true;
}

void rwlock_state::unlock() {
  const std::uint64_t self = self_identity();
  const std::uint64_t held = writer.load(std::memory_order_relaxed);
  if (held != self || writing.load(std::memory_order_relaxed) == 0)
    throw std::logic_error(fmt::format(
        "shmkit: unlock() of a reader-writer lock by thread {}, which does not hold it for "
        "writing (held by {})",
        identity_pid(self), holder_text(held)));
  died.store(0, std::memory_order_relaxed);  // published by the release below
  writing.store(0, std::memory_order_relaxed);
  // seq_cst: a release pairing with the readers' and writers' acquire loads of `writer`, and
  // the store half of wake_if_waiting().
  writer.store(0, std::memory_order_seq_cst);
  wake_if_waiting(wp, INT_MAX);
}

std::size_t rwlock_state::reader_count() const noexcept {
  std::size_t n = 0;
  for (const auto& slot : readers)
    if (slot.load(std::memory_order_relaxed) != 0) ++n;
  return n;
}

// --- semaphore ---------------------------------------------------------------------------------

bool semaphore_state::acquire_slow(std::optional<time_point> deadline) {
  // seq_cst load: the load half of the handshake with try_release()'s wake_if_waiting().
  auto acquired = [&] {
    std::int64_t c = count.load(std::memory_order_seq_cst);
    while (c > 0)
      if (count.compare_exchange_weak(c, c - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed))
        return true;
    return false;
  };
  if (wait_adaptively(wp, spin, acquired, deadline)) return true;
  // A wake-up meant for a sleeper may have come to us as we gave up: pass it on.
  if (count.load(std::memory_order_seq_cst) > 0) wake_if_waiting(wp, 1);
  return false;
}

// --- barrier -----------------------------------------------------------------------------------

namespace {
constexpr std::uint32_t round_of(std::uint64_t w) noexcept {
  return static_cast<std::uint32_t>(w >> 32) & barrier_state::round_mask;
}
constexpr std::uint64_t make_word(std::uint32_t round, std::uint32_t arrived) noexcept {
  return (static_cast<std::uint64_t>(round & barrier_state::round_mask) << 32) | arrived;
}

// The seat of `self`, claiming one if needed: its own, else a free one, else one whose party
// took part in neither this round nor the last (stale), else one whose party is dead. A seat
// claimed here gets the mark `claim_as` (never for an arrival, attached for a process that
// attaches). nullptr when all seats are held by live, current parties or attached processes
// (then `self` is not watched). Atomics only, but for identity_alive() on a full table.
barrier_seat* seat_of(barrier_state& s, std::uint64_t self, std::uint32_t round,
                      std::uint32_t claim_as) noexcept {
  barrier_seat* seats = s.seat_table();
  const std::uint32_t n = s.seats;
  const std::uint32_t start = static_cast<std::uint32_t>(identity_pid(self)) % n;
  const std::uint32_t previous = (round - 1) & barrier_state::round_mask;
  for (std::uint32_t i = 0; i < n; ++i)
    if (seats[(start + i) % n].who.load(std::memory_order_relaxed) == self)
      return &seats[(start + i) % n];
  for (int pass = 0; pass < 3; ++pass) {
    for (std::uint32_t i = 0; i < n; ++i) {
      barrier_seat& seat = seats[(start + i) % n];
      std::uint64_t who = seat.who.load(std::memory_order_relaxed);
      const std::uint32_t r = seat.round.load(std::memory_order_relaxed);
      // Free; or stale (its party took part in neither this round nor the last, has arrived
      // at least once, and is not an attached process waiting to arrive); or dead and not
      // counted in this round.
      const bool take = pass == 0   ? who == 0
                        : pass == 1 ? r != round && r != previous && r != barrier_seat::never &&
                                          r != barrier_seat::attached
                                    : r != round && !identity_alive(who);
      if (!take) continue;
      // relaxed: seats are hints read on slow paths. Until we store `claim_as`, the seat shows
      // us (alive) with the old party's round, which can make no waiter break the barrier.
      if (seat.who.compare_exchange_strong(who, self, std::memory_order_relaxed)) {
        // release: pairs with party_missing()'s acquire load of `round` (an attached mark
        // is read together with `who`, stored just before).
        seat.round.store(claim_as, std::memory_order_release);
        return &seat;
      }
    }
  }
  return nullptr;
}

// True when a seat waited for in `round` belongs to a dead process or thread: a party that
// arrived in the previous round but not in this one, or an attached process that has not
// arrived since it attached.
bool party_missing(barrier_state& s, std::uint32_t round) {
  barrier_seat* seats = s.seat_table();
  const std::uint32_t previous = (round - 1) & barrier_state::round_mask;
  for (std::uint32_t i = 0; i < s.seats; ++i) {
    // acquire: pairs with the release stores of `round` after a party's arrival and in
    // seat_of() (attached), so `who` read next is the one that stored it, or newer.
    const std::uint32_t r = seats[i].round.load(std::memory_order_acquire);
    if (r != previous && r != barrier_seat::attached) continue;
    // relaxed: ordered after the acquire load above; re-checked by the load below.
    const std::uint64_t who = seats[i].who.load(std::memory_order_relaxed);
    // acquire: as above. The seat still shows `r`: nobody took it over meanwhile.
    if (who != 0 && !identity_alive(who) && seats[i].round.load(std::memory_order_acquire) == r)
      return true;
  }
  return false;
}

// Sets the broken bit if the barrier is still in `round`. Returns true when the barrier is
// broken in `round` (by us or before), false when the round completed first.
bool break_round(barrier_state& s, std::uint32_t round) noexcept {
  std::uint64_t w = s.word.load(std::memory_order_acquire);
  for (;;) {
    if (round_of(w) != round) return false;
    if (w & barrier_state::broken_bit) return true;
    // seq_cst: a release pairing with the waiters' acquire loads of the word, and the store
    // half of the waitpoint's handshake (notify_all below always bumps `seq`).
    if (s.word.compare_exchange_weak(w, w | barrier_state::broken_bit, std::memory_order_seq_cst,
                                     std::memory_order_acquire)) {
      s.wp.notify_all();
      return true;
    }
  }
}
}  // namespace

barrier_state::barrier_state(std::uint32_t n) noexcept : parties(n), seats(seats_for(n)) {
  barrier_seat* table = seat_table();
  for (std::uint32_t i = 0; i < seats; ++i) new (&table[i]) barrier_seat;
}

barrier_state::outcome barrier_state::arrive_and_wait(std::optional<time_point> deadline) noexcept {
  const std::uint64_t self = self_identity();
  // acquire: pairs with the seq_cst compare-and-swap that completed the previous round, so
  // what the other parties wrote before arriving is visible once we pass.
  std::uint64_t w = word.load(std::memory_order_acquire);
  if (w & broken_bit) return outcome::broken;
  barrier_seat* seat = seat_of(*this, self, round_of(w), barrier_seat::never);
  std::uint32_t round;
  for (;;) {
    if (w & broken_bit) return outcome::broken;
    round = round_of(w);
    const std::uint32_t arrived = static_cast<std::uint32_t>(w);
    const bool last = arrived + 1 >= parties;
    const std::uint64_t next = last ? make_word(round + 1, 0) : make_word(round, arrived + 1);
    // seq_cst: the arrival releases what we wrote (pairs with the acquire loads of the other
    // parties), acquires theirs (when we are last), and is the store half of the waitpoint
    // handshake for the last arrival's notify_all.
    if (word.compare_exchange_weak(w, next, std::memory_order_seq_cst, std::memory_order_acquire)) {
      // release: pairs with party_missing()'s acquire load.
      if (seat != nullptr) seat->round.store(round, std::memory_order_release);
      if (last) {
        wp.notify_all();
        return outcome::passed;
      }
      break;
    }
  }
  // seq_cst load: the load half of the waitpoint handshake (see break_round, the last arrival).
  auto moved = [&] {
    const std::uint64_t now = word.load(std::memory_order_seq_cst);
    return round_of(now) != round || (now & broken_bit) != 0;
  };
  // After each slice: a party that passed the last round, is dead and has not arrived in
  // this one will never come, so break the round (which settles the wait).
  auto check_parties = [&] { return party_missing(*this, round) && break_round(*this, round); };
  if (wait_in_slices(wp, spin, moved, deadline, check_parties)) {
    // acquire: pairs with the seq_cst compare-and-swap that completed or broke the round.
    const std::uint64_t now = word.load(std::memory_order_acquire);
    return round_of(now) != round ? outcome::passed : outcome::broken;
  }
  // Timed out: break the round, unless it completed just now.
  return break_round(*this, round) ? outcome::timed_out : outcome::passed;
}

void barrier_state::attach(std::uint64_t who) noexcept {
  // relaxed: the round only judges which seats are stale (a hint, as in seat_of()).
  seat_of(*this, who, round_of(word.load(std::memory_order_relaxed)), barrier_seat::attached);
}

void barrier_state::detach(std::uint64_t who) noexcept {
  barrier_seat* table = seat_table();
  for (std::uint32_t i = 0; i < seats; ++i) {
    barrier_seat& seat = table[i];
    // relaxed: a hint; the compare-and-swap below decides.
    std::uint64_t mine = seat.who.load(std::memory_order_relaxed);
    if (mine != who) continue;
    // acquire: pairs with the seq_cst compare-and-swaps that count arrivals.
    const std::uint64_t w = word.load(std::memory_order_acquire);
    const std::uint32_t round = round_of(w);
    // relaxed: our own store (only a taker of a stale seat also writes it, after taking
    // `who`, which makes the compare-and-swap below fail).
    const std::uint32_t r = seat.round.load(std::memory_order_relaxed);
    const bool in_progress = (w & broken_bit) == 0 && static_cast<std::uint32_t>(w) != 0;
    // The round in progress counts on us (we arrived in the last one, or in this one, and
    // others have arrived): keep the seat, so that our death breaks the round.
    if (in_progress && (r == round || r == ((round - 1) & round_mask))) return;
    // Free it, unless a taker of stale seats got it first. The seat keeps our mark until its
    // next claimant stores its own: a free seat (who 0) is never counted (party_missing()),
    // and until then the claimant, alive, shows in it as in seat_of().
    // relaxed: seats are hints read on slow paths, as in seat_of().
    seat.who.compare_exchange_strong(mine, 0, std::memory_order_relaxed);
    return;
  }
}

void barrier_state::abort() noexcept {
  // seq_cst: a release pairing with the waiters' loads of the word; notify_all bumps `seq`.
  word.fetch_or(broken_bit, std::memory_order_seq_cst);
  wp.notify_all();
}

}  // namespace shmkit::detail

namespace shmkit {

using detail::object_kind;

// --- handles ---------------------------------------------------------------------------------

mutex::mutex() : robust_lock(object_kind::mutex, 0) {}
mutex::mutex(create_only_t, std::string_view name, permissions perms)
    : robust_lock(create_only, name, object_kind::mutex, 0, perms) {}
mutex::mutex(open_only_t, std::string_view name)
    : robust_lock(open_only, name, object_kind::mutex) {}
mutex::mutex(open_or_create_t, std::string_view name, permissions perms)
    : robust_lock(open_or_create, name, object_kind::mutex, 0, perms) {}

recursive_mutex::recursive_mutex() : robust_lock(object_kind::recursive_mutex, 0) {}
recursive_mutex::recursive_mutex(create_only_t, std::string_view name, permissions perms)
    : robust_lock(create_only, name, object_kind::recursive_mutex, 0, perms) {}
recursive_mutex::recursive_mutex(open_only_t, std::string_view name)
    : robust_lock(open_only, name, object_kind::recursive_mutex) {}
recursive_mutex::recursive_mutex(open_or_create_t, std::string_view name, permissions perms)
    : robust_lock(open_or_create, name, object_kind::recursive_mutex, 0, perms) {}

namespace {
std::int64_t checked_initial(std::ptrdiff_t initial, const char* kind) {
  if (initial < 0)
    throw std::invalid_argument(
        fmt::format("shmkit: a {} needs an initial value >= 0, not {}", kind, initial));
  return static_cast<std::int64_t>(initial);
}
constexpr std::int64_t unbounded = detail::semaphore_state::unbounded;
}  // namespace

semaphore::semaphore(std::ptrdiff_t initial)
    : sync_handle(object_kind::semaphore, 0, checked_initial(initial, "semaphore"), unbounded) {}
semaphore::semaphore(create_only_t, std::string_view name, std::ptrdiff_t initial,
                     permissions perms)
    : sync_handle(create_only, name, object_kind::semaphore, 0, perms,
                  checked_initial(initial, "semaphore"), unbounded) {}
semaphore::semaphore(open_only_t, std::string_view name)
    : sync_handle(open_only, name, object_kind::semaphore) {}
semaphore::semaphore(open_or_create_t, std::string_view name, std::ptrdiff_t initial,
                     permissions perms)
    : sync_handle(open_or_create, name, object_kind::semaphore, 0, perms,
                  checked_initial(initial, "semaphore"), unbounded) {}

semaphore::semaphore(bounded_tag, std::ptrdiff_t initial)
    : sync_handle(object_kind::bounded_semaphore, 0, checked_initial(initial, "bounded_semaphore"),
                  static_cast<std::int64_t>(initial)) {}
semaphore::semaphore(bounded_tag, create_only_t, std::string_view name, std::ptrdiff_t initial,
                     permissions perms)
    : sync_handle(create_only, name, object_kind::bounded_semaphore, 0, perms,
                  checked_initial(initial, "bounded_semaphore"),
                  static_cast<std::int64_t>(initial)) {}
semaphore::semaphore(bounded_tag, open_only_t, std::string_view name)
    : sync_handle(open_only, name, object_kind::bounded_semaphore) {}
semaphore::semaphore(bounded_tag, open_or_create_t, std::string_view name, std::ptrdiff_t initial,
                     permissions perms)
    : sync_handle(open_or_create, name, object_kind::bounded_semaphore, 0, perms,
                  checked_initial(initial, "bounded_semaphore"),
                  static_cast<std::int64_t>(initial)) {}

const char* semaphore::kind() const noexcept {
  return state()->max == unbounded ? "semaphore" : "bounded_semaphore";
}

void semaphore::throw_bad_release(std::ptrdiff_t n) const {
  if (n < 0)
    throw std::invalid_argument(fmt::format(
        "shmkit: release({}) of {}: the count to add must be >= 0", n, describe(kind())));
  throw std::logic_error(
      fmt::format("shmkit: release({}) of {} would take its value {} above its bound {}", n,
                  describe(kind()), state()->value(), state()->max));
}

condition_variable::condition_variable() : sync_handle(object_kind::condition_variable, 0) {}
condition_variable::condition_variable(create_only_t, std::string_view name, permissions perms)
    : sync_handle(create_only, name, object_kind::condition_variable, 0, perms) {}
condition_variable::condition_variable(open_only_t, std::string_view name)
    : sync_handle(open_only, name, object_kind::condition_variable) {}
condition_variable::condition_variable(open_or_create_t, std::string_view name, permissions perms)
    : sync_handle(open_or_create, name, object_kind::condition_variable, 0, perms) {}

bool condition_variable::wait_impl(std::unique_lock<mutex>& lk,
                                   std::optional<detail::time_point> deadline) {
  if (!lk.owns_lock())
    throw std::logic_error(
        fmt::format("shmkit: wait() on {} with a std::unique_lock that holds no mutex",
                    describe("condition_variable")));
  // The unique_lock keeps saying it owns the mutex: it does again when we return.
  return state()->wait_until(*lk.mutex(), deadline);
}

event::event() : sync_handle(object_kind::event, 0) {}
event::event(create_only_t, std::string_view name, permissions perms)
    : sync_handle(create_only, name, object_kind::event, 0, perms) {}
event::event(open_only_t, std::string_view name)
    : sync_handle(open_only, name, object_kind::event) {}
event::event(open_or_create_t, std::string_view name, permissions perms)
    : sync_handle(open_or_create, name, object_kind::event, 0, perms) {}

namespace {
std::uint32_t checked_parties(std::size_t parties) {
  if (parties == 0 || parties > std::numeric_limits<std::uint32_t>::max() - 1)
    throw std::invalid_argument(fmt::format("shmkit: a barrier needs 1..{} parties, not {}",
                                            std::numeric_limits<std::uint32_t>::max() - 1,
                                            parties));
  return static_cast<std::uint32_t>(parties);
}
std::size_t seat_bytes(std::uint32_t parties) {
  return detail::barrier_state::bytes_for(parties) - sizeof(detail::barrier_state);
}

// The barriers this process holds handles on, and how many handles each: at fork() a child
// inherits a copy of every handle, so its fork handler attaches it to each of these. Locked
// across fork() (prepare locks, the parent and child handlers unlock), so that no other thread
// changes it meanwhile and the child inherits it consistent. Handles on one named barrier
// opened twice map it at two addresses: they are told apart by name.
struct barrier_registry {
  struct entry {
    detail::barrier_state* state;
    int handles;
    std::string name;  // empty when anonymous or a view
  };
  std::mutex lock;
  std::vector<entry> entries;
};

barrier_registry& barriers() {
  // Never destroyed: handles in statics are destroyed after it would be.
  static barrier_registry* r = new barrier_registry;
  return *r;
}

void barriers_before_fork() noexcept { barriers().lock.lock(); }
void barriers_after_fork_in_parent() noexcept { barriers().lock.unlock(); }

// Async-signal-safe only (the child of a multi-threaded parent): no allocation, no locks. Not
// process_identity(): its cache may not be refreshed yet in this child (the order of fork
// handlers registered by different files is unspecified); identity_of() makes no allocation
// and takes no lock (open, read and close /proc/<pid>/stat, snprintf of one integer, as
// lib/pipe.cpp's child handler does). attach() is atomics on shared memory (and, when the
// seat table is full, identity_alive(), the same reads of /proc). Without /proc (0) the child
// is not watched.
void barriers_after_fork_in_child() noexcept {
  barrier_registry& r = barriers();
  if (!r.entries.empty())
    if (const std::uint64_t me = detail::identity_of(::getpid()); me != 0)
      for (const auto& e : r.entries) e.state->attach(me);
  r.lock.unlock();
}

}  // namespace

void detail::barrier_leave_all() noexcept {
  barrier_registry& r = barriers();
  std::lock_guard g(r.lock);
  const std::uint64_t me = detail::process_identity();
  for (const auto& e : r.entries) e.state->detach(me);
  r.entries.clear();  // handles destroyed later find no entry, and detach again (no seat)
}

namespace {
[[maybe_unused]] const int barrier_fork_hooks_registered = [] {
  barriers();  // built before any fork handler can run
  ::pthread_atfork(&barriers_before_fork, &barriers_after_fork_in_parent,
                   &barriers_after_fork_in_child);
  return 0;
}();
}  // namespace

barrier::barrier(std::size_t parties)
    : sync_handle(object_kind::barrier, seat_bytes(checked_parties(parties)),
                  checked_parties(parties)) {
  join();
}
barrier::barrier(create_only_t, std::string_view name, std::size_t parties, permissions perms)
    : sync_handle(create_only, name, object_kind::barrier, seat_bytes(checked_parties(parties)),
                  perms, checked_parties(parties)) {
  join();
}
barrier::barrier(open_only_t, std::string_view name)
    : sync_handle(open_only, name, object_kind::barrier) {
  if (extra_size() < state()->seats * sizeof(detail::barrier_seat))
    throw error(fmt::format("shmkit: {} is corrupted: {} seats do not fit in {} bytes",
                            describe("barrier"), state()->seats, extra_size()));
  join();
}
barrier::barrier(open_or_create_t, std::string_view name, std::size_t parties, permissions perms)
    : sync_handle(open_or_create, name, object_kind::barrier, seat_bytes(checked_parties(parties)),
                  perms, checked_parties(parties)) {
  if (extra_size() < state()->seats * sizeof(detail::barrier_seat))
    throw error(fmt::format("shmkit: {} is corrupted: {} seats do not fit in {} bytes",
                            describe("barrier"), state()->seats, extra_size()));
  join();
}

barrier::~barrier() { leave(); }

barrier& barrier::operator=(barrier&& other) noexcept {
  if (this != &other) {
    leave();
    sync_handle::operator=(std::move(other));
  }
  return *this;
}

void barrier::join() noexcept {
  detail::barrier_state* s = state();
  if (s == nullptr) return;
  try {
    barrier_registry& r = barriers();
    std::lock_guard g(r.lock);
    auto it = std::find_if(r.entries.begin(), r.entries.end(),
                           [&](const auto& e) { return e.state == s; });
    if (it != r.entries.end())
      ++it->handles;
    else
      r.entries.push_back({s, 1, name()});
  } catch (...) {
    // No memory for the entry: children forked later are not attached (not watched).
  }
  s->attach(detail::process_identity());
}

void barrier::leave() noexcept {
  detail::barrier_state* s = state();
  if (s == nullptr) return;
  bool last = true;
  {
    barrier_registry& r = barriers();
    std::lock_guard g(r.lock);
    auto it = std::find_if(r.entries.begin(), r.entries.end(),
                           [&](const auto& e) { return e.state == s; });
    if (it != r.entries.end()) {
      if (--it->handles > 0) {
        last = false;
      } else {
        const std::string gone = std::move(it->name);
        r.entries.erase(it);
        // Another mapping of the same named barrier is still held.
        if (!gone.empty())
          last = std::none_of(r.entries.begin(), r.entries.end(),
                              [&](const auto& e) { return e.name == gone; });
      }
    }
  }
  if (last) s->detach(detail::process_identity());
}

void barrier::arrive_and_wait() { wait_impl(std::nullopt); }

bool barrier::wait_impl(std::optional<detail::time_point> deadline) {
  using outcome = detail::barrier_state::outcome;
  switch (state()->arrive_and_wait(deadline)) {
    case outcome::passed:
      return true;
    case outcome::timed_out:
      return false;
    case outcome::broken:
      break;
  }
  throw broken_barrier_error(
      fmt::format("shmkit: {} of {} parties is broken (aborted, timed out, or a party died)",
                  describe("barrier"), state()->parties));
}

}  // namespace shmkit
