// SPDX-License-Identifier: MIT
// Slow paths of shmkit::queue: waiting, recovery from dead claimants, the heap's robust lock,
// allocator and collector, joinable_queue's counters. The argument for why these are safe is
// in the contract block of include/shmkit/queue.hpp.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <stdexcept>
#include <vector>

#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/queue_ring.hpp"
#include "shmkit/error.hpp"

namespace shmkit::detail {
namespace {

// How long an obstacle (the same claim word, the same lock holder) must stay before a waiter
// asks whether its owner still lives; also the longest sleep of such a waiter.
constexpr std::chrono::milliseconds stall_period{3};
// The first sleep of a waiter with an obstacle in its way, doubled at each sleep up to the
// stall period. A claimant that finishes may not wake us (queue_run::sleepers): it may have
// read the sleepers' count before we counted ourselves, so a live claimant's hand-over is
// noticed within this.
constexpr std::chrono::microseconds first_poll{50};
// A sleeper with nothing to watch still wakes this often to look again: a process killed
// while asleep on a futex stays queued there until it next runs, and may swallow a wake-up
// meant for a live sleeper. Costs an idle waiter ten wake-ups a second (a few microseconds
// of CPU each).
constexpr std::chrono::milliseconds sweep_period{100};
constexpr std::uint64_t no_page = ~std::uint64_t(0);

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// Notices when the same obstacle stays in the way for a stall period.
struct stall_watch {
  const void* where = nullptr;
  std::uint64_t word = 0;
  time_point since{};

  // True once (where, word) has been seen continuously for stall_period; the next true
  // comes a stall period later.
  bool stuck(const void* w, std::uint64_t v) noexcept {
    const auto now = clock::now();
    if (w != where || v != word) {
      where = w;
      word = v;
      since = now;
      return false;
    }
    if (now - since < stall_period) return false;
    since = now;
    return true;
  }
};

// Liveness of identities during one pass of the collector: each /proc read at most once.
class alive_cache {
 public:
  bool operator()(std::uint64_t id) {
    if (id == self_identity()) return true;
    for (const auto& [k, v] : seen_)
      if (k == id) return v;
    const bool a = identity_alive(id);
    seen_.emplace_back(id, a);
    return a;
  }

 private:
  std::vector<std::pair<std::uint64_t, bool>> seen_;
};

[[noreturn]] void throw_closed(const std::string& what) {
  throw closed_error(fmt::format("shmkit: {} is closed", what));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Layout

std::uint64_t queue_heap_pages(std::size_t heap_bytes) {
  return (heap_bytes + queue_page_bytes - 1) / queue_page_bytes;
}

namespace {
struct layout_offsets {
  std::uint64_t slots, tags, owners, heap, total;
};
layout_offsets compute_layout(std::uint64_t capacity, std::uint64_t pages,
                              std::uint64_t slot_bytes) {
  layout_offsets o{};
  o.slots = sizeof(queue_state);
  o.tags = o.slots + capacity * slot_bytes;
  o.owners = o.tags + pages * sizeof(std::uint64_t);
  o.heap = round_up(o.owners + pages * sizeof(std::uint64_t), queue_page_bytes);
  o.total = o.heap + pages * queue_page_bytes;
  return o;
}

// Whether the constants of a queue's state describe a layout of its slot size that fits
// `payload` bytes.
bool layout_fits(const queue_state* st, std::size_t payload) {
  if (st->capacity == 0 || st->capacity > queue_max_capacity || st->slot_bytes < 16 ||
      st->slot_bytes > queue_slot_bytes || !std::has_single_bit(st->slot_bytes))
    return false;
  const layout_offsets o = compute_layout(st->capacity, st->pages, st->slot_bytes);
  return o.total == st->total_bytes && o.slots == st->slots_offset && o.total <= payload;
}
}  // namespace

std::size_t queue_extra_bytes(std::size_t capacity, std::size_t heap_bytes,
                              std::size_t slot_bytes) {
  if (capacity == 0) throw std::invalid_argument("shmkit: a queue needs a capacity of at least 1");
  if (capacity > queue_max_capacity)
    throw std::invalid_argument(fmt::format(
        "shmkit: a queue capacity of {} is beyond the limit of {}", capacity, queue_max_capacity));
  if (heap_bytes > (std::size_t(1) << 40))
    throw std::invalid_argument(
        fmt::format("shmkit: a queue heap of {} bytes is beyond the limit of 1 TiB", heap_bytes));
  return compute_layout(capacity, queue_heap_pages(heap_bytes), slot_bytes).total -
         sizeof(queue_state);
}

queue_state::queue_state(std::uint64_t cap, std::uint64_t heap_pages, bool join,
                         std::size_t slot) noexcept
    : layout(queue_layout),
      joinable(join ? 1 : 0),
      capacity(cap),
      pages(heap_pages),
      slot_bytes(static_cast<std::uint32_t>(slot)) {
  const layout_offsets o = compute_layout(cap, heap_pages, slot);
  slots_offset = o.slots;
  tags_offset = o.tags;
  owners_offset = o.owners;
  heap_offset = o.heap;
  total_bytes = o.total;
  // Slots start free for lap 0 (state word 0) and pages untagged: the segment is zeroed.
}

queue_ring::queue_ring(queue_state* state, std::string what) noexcept
    : st_(state), what_(std::move(what)) {
  auto* base = reinterpret_cast<std::byte*>(state);
  slots_ = base + state->slots_offset;
  while ((std::uint64_t(1) << slot_shift_) < state->slot_bytes) ++slot_shift_;
  tags_ = reinterpret_cast<std::atomic<std::uint64_t>*>(base + state->tags_offset);
  owners_ = reinterpret_cast<std::atomic<std::uint64_t>*>(base + state->owners_offset);
  heap_ = base + state->heap_offset;
  cap_ = state->capacity;
  pow2_ = (cap_ & (cap_ - 1)) == 0;
  mask_ = cap_ - 1;
  shift_ = 0;
  while ((std::uint64_t(1) << shift_) < cap_) ++shift_;
  joinable_ = state->joinable != 0;
  lazy_ = std::min<std::uint64_t>(cap_, 4);
  runs_ = state->slot_bytes != queue_slot_bytes;
}

void queue_check_identity() {
  const std::uint64_t id = self_identity();
  if (id & ~seqw::id_mask)
    throw error(
        fmt::format("shmkit: this process's identity {:#x} does not fit the 54 bits a "
                    "queue records per claim (pid {} above 2^22?)",
                    id, identity_pid(id)));
}

void queue_check_opened(const queue_state* st, std::size_t payload, bool joinable,
                        std::size_t slot_bytes, const std::string& what) {
  if (st->layout != queue_layout)
    throw error(fmt::format("shmkit: {} has queue layout {:#x}, this build expects {:#x}", what,
                            st->layout, queue_layout));
  if ((st->joinable != 0) != joinable)
    throw error(fmt::format("shmkit: {} is {}a joinable_queue", what, joinable ? "not " : ""));
  if (st->slot_bytes != slot_bytes)
    throw error(fmt::format("shmkit: {} has slots of {} bytes, this build expects {}", what,
                            st->slot_bytes, slot_bytes));
  if (!layout_fits(st, payload))
    throw error(
        fmt::format("shmkit: {} is corrupted: capacity {} and {} heap pages need {} "
                    "bytes, the segment holds {}",
                    what, st->capacity, st->pages, st->total_bytes, payload));
}

// ---------------------------------------------------------------------------------------
// Waiting

namespace {

// Whether spinning pays on a waitpoint, per thread: spinning only helps when the other side
// runs on another CPU at the time. A spin that ends in vain halves the next one (down to a
// few looks); one that succeeds restores the full budget; every 16th wait after a run of
// misses spins fully again, to notice when the other side has moved to another CPU.
//
// A thread that has just woken a sleeper spins for woken_spin on its next wait, whatever its
// record: the answer of a peer it woke comes after the peer's wake-up latency (tens of
// microseconds on a virtual machine, more than spin_budget), and a wait that sleeps through
// it makes the peer sleep in turn. Without this, two processes that exchange messages stay in
// that state once either has slept once (a ping-pong of ~2 us per round trip instead of
// ~0.1 us); with it, the first answer is caught spinning and both sides spin again.
constexpr std::chrono::microseconds woken_spin{100};
struct spin_record {
  const void* wp = nullptr;
  unsigned misses = 0;
  unsigned waits = 0;
};
thread_local spin_record spin_records[8];

spin_record& spin_record_of(const void* wp) noexcept {
  spin_record& r = spin_records[(reinterpret_cast<std::uintptr_t>(wp) >> 7) % 8];
  if (r.wp != wp) r = {wp, 0, 0};
  return r;
}

}  // namespace

template <class Attempt>
bool queue_ring::block(waitpoint& wp, Attempt&& attempt, std::optional<time_point> until,
                       std::chrono::nanoseconds spin) {
  bool poll = false;
  if (spin > spin.zero()) {
    spin_record& rec = spin_record_of(&wp);
    const bool probe = ++rec.waits % 16 == 0;
    const auto budget = woke_sleeper ? std::max<std::chrono::nanoseconds>(spin, woken_spin)
                        : probe      ? spin
                                     : spin / (1u << std::min(rec.misses, 7u));
    woke_sleeper = false;
    // One pause between looks (a pause is tens of cycles on current x86: more would add
    // that much to every hand-over caught while spinning); the clock every 16 looks.
    const auto end = clock::now() + budget;
    for (unsigned i = 1;; ++i) {
      if (attempt(poll)) {
        rec.misses = 0;
        return true;
      }
      cpu_relax();
      if (i % 16 == 0 && clock::now() >= end) break;
    }
    rec.misses = std::min(rec.misses + 1, 16u);
  }
  // Takes our count back when we did not sleep after all (see wake()).
  auto uncount = [&wp] {
    std::uint32_t c = wp.waiters.load(std::memory_order_relaxed);
    while (c != 0 && !wp.waiters.compare_exchange_weak(c, c - 1, std::memory_order_relaxed)) {
    }
  };
  std::chrono::nanoseconds poll_sleep = first_poll;
  for (;;) {
    wp.waiters.fetch_add(1, std::memory_order_seq_cst);
    // Pairs with the fence in wake(): either the waker sees us counted, or our attempt
    // below sees the waker's state change. (ThreadSanitizer models no fences; its wake()
    // uses an RMW instead, which the seq_cst increment above already orders against.)
#if !defined(__SANITIZE_THREAD__)
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
    const std::uint32_t key = wp.seq.load(std::memory_order_seq_cst);
    poll = false;
    bool done;
    try {
      done = attempt(poll);
    } catch (...) {
      uncount();
      throw;
    }
    if (done) {
      uncount();
      return true;
    }
    const auto now = clock::now();
    if (until && now >= *until) {
      uncount();
      return false;
    }
    const time_point next = now + (poll ? poll_sleep : sweep_period);
    if (poll) poll_sleep = std::min<std::chrono::nanoseconds>(2 * poll_sleep, stall_period);
    // Woken (a waker took a count) or the key was stale: keep the count, a waker took one.
    // Timed out: nobody took it on our behalf, take it back.
    if (!futex_wait(&wp.seq, key, until ? std::min(*until, next) : next)) uncount();
  }
}

// ---------------------------------------------------------------------------------------
// Claims

bool queue_ring::attempt_claim(bool consumer, std::uint64_t n, queue_run& run, queue_obstacle& ob) {
  const bool was_closed = closed();
  if (was_closed && !consumer) throw_closed(what_);
  if (try_claim(consumer, n, run, ob)) return true;
  // A consumer stops only when nothing is in flight: a message being written when close()
  // came is still waited for (or recovered, if its producer died).
  if (was_closed) {
    const bool in_flight = seqw::is_claim(ob.word) && !(ob.word & seqw::consumer_bit);
    if (!in_flight) throw_closed(what_);
  }
  return false;
}

namespace {
// Shared by claim() and claim_now(): one attempt, and a recovery when the claim in the way
// has stayed for a stall period and its owner is dead.
template <class Ring>
bool attempt_and_recover(Ring& ring, bool consumer, std::uint64_t n, queue_run& run,
                         stall_watch& watch, bool& poll) {
  queue_obstacle ob;
  if (ring.attempt_claim(consumer, n, run, ob)) return true;
  if (!ob.recoverable()) {
    watch.where = nullptr;
    return false;
  }
  poll = true;
  if (watch.stuck(ob.slot, ob.word) && ring.recover(ob))
    return ring.attempt_claim(consumer, n, run, ob);
  return false;
}
}  // namespace

bool queue_ring::claim(bool consumer, std::uint64_t n, queue_run& run,
                       std::optional<time_point> until) {
  stall_watch watch;
  waitpoint& wp = consumer ? st_->not_empty : st_->not_full;
  return block(
      wp, [&](bool& poll) { return attempt_and_recover(*this, consumer, n, run, watch, poll); },
      until, spin_budget);
}

bool queue_ring::claim_now(bool consumer, std::uint64_t n, queue_run& run) {
  // The stall is measured across calls: a caller that polls with try_get() still recovers
  // a dead claimant that stays in its way.
  thread_local stall_watch watch;
  bool poll = false;
  return attempt_and_recover(*this, consumer, n, run, watch, poll);
}

bool queue_ring::recover(const queue_obstacle& ob) noexcept {
  if (!ob.recoverable() || identity_alive(seqw::claimant(ob.word))) return false;
  const bool consumer = (ob.word & seqw::consumer_bit) != 0;
  // The run's mates first, while its head still stops every walker (see queue_ring.hpp):
  // a mate a dead producer had not published becomes skip (one it had is a whole message,
  // delivered), one a dead consumer had not freed is freed (its message is lost). Each
  // move is a compare-and-swap from the very word the run left there, so a second
  // recoverer, or one that comes after the head has moved on, changes nothing: words never
  // repeat. relaxed on failure: nothing to read. acq_rel: as for the head below.
  const std::uint64_t mates = std::min(seqw::run_of(ob.word), cap_) - 1;
  for_each_slot(ob.pos + 1, mates, [&](std::byte* m, std::uint64_t Lm) {
    std::uint64_t e = consumer ? seqw::full_word(Lm) : seqw::free_word(Lm);
    reinterpret_cast<std::atomic<std::uint64_t>*>(m)->compare_exchange_strong(
        e, consumer ? seqw::free_word(Lm + 1) : seqw::skip_word(Lm), std::memory_order_acq_rel,
        std::memory_order_relaxed);
  });
  const std::uint64_t L = lap(ob.pos);
  const std::uint64_t next = consumer ? seqw::free_word(L + 1) : seqw::skip_word(L);
  std::uint64_t expected = ob.word;
  // acq_rel: release so that the next claimant of the slot is ordered after us; the word is
  // unique (its owner is dead and never claims again), so this succeeds only if the slot
  // still holds that very claim.
  if (!ob.slot->compare_exchange_strong(expected, next, std::memory_order_acq_rel,
                                        std::memory_order_relaxed))
    return false;
  wake(st_->not_empty, INT_MAX);
  wake(st_->not_full, INT_MAX);
  wake(st_->heap_space, INT_MAX);
  if (joinable_) wake(st_->joined, INT_MAX);
  return true;
}

// ---------------------------------------------------------------------------------------
// Observers and control

std::uint64_t queue_ring::frontier(bool consumer) const noexcept {
  // acquire: pairs with the acq_rel counter moves in try_claim().
  std::uint64_t p = (consumer ? st_->tail : st_->head).load(std::memory_order_acquire);
  // A counter lags its side's claims by less than two laps (queue.hpp, point 2).
  for (std::uint64_t k = 0; k <= 2 * cap_; ++k) {
    // acquire: pairs with the release stores and claims of both sides.
    const std::uint64_t w = word(p).load(std::memory_order_acquire);
    if ((consumer ? queue_view::consumer(w, lap(p)) : queue_view::producer(w, lap(p))) !=
        queue_view::passed)
      break;
    p += queue_view::passed_by(w, lap(p), cap_);
  }
  return p;
}

std::uint64_t queue_ring::size() const noexcept {
  // Consumers first, so that the producers' frontier found after it is at least as new.
  const std::uint64_t t = frontier(true);
  const std::uint64_t h = frontier(false);
  return h > t ? std::min(h - t, cap_) : 0;
}

void queue_ring::close() noexcept {
  st_->closed.store(1, std::memory_order_seq_cst);
  wake(st_->not_empty, INT_MAX);
  wake(st_->not_full, INT_MAX);
  wake(st_->heap_space, INT_MAX);
}

// ---------------------------------------------------------------------------------------
// joinable_queue

void queue_ring::task_done() {
  // acquire: pairs with the release increment of `gotten` in count_gotten().
  std::uint64_t d = st_->done.load(std::memory_order_acquire);
  for (;;) {
    if (d >= st_->gotten.load(std::memory_order_acquire))
      throw std::logic_error(fmt::format(
          "shmkit: task_done() on {} called more times than items were got from it", what_));
    // acq_rel: join() reads `done` with acquire after scanning the ring.
    if (st_->done.compare_exchange_weak(d, d + 1, std::memory_order_acq_rel,
                                        std::memory_order_acquire))
      break;
  }
  wake(st_->joined, INT_MAX);
}

bool queue_ring::ring_idle() const {
  alive_cache alive;
  // The mates of a dead consumer's run still read full(L) (see queue_ring.hpp) until a
  // waiter recovers the run: their messages are lost with it, no items of anybody's.
  struct dead_run {
    std::uint64_t head, mates, lap;  // head's index, mates after it, lap mod 16
  };
  std::vector<dead_run> dead_runs;
  for (std::uint64_t k = 0; k < cap_; ++k) {
    // acquire: pairs with release() (gotten was counted before it) and publish().
    const std::uint64_t w = word(k).load(std::memory_order_acquire);
    if (!seqw::is_claim(w)) continue;
    // A dead claimant's message is lost; it is no item of anybody's.
    if (alive(seqw::claimant(w))) return false;
    if ((w & seqw::consumer_bit) && seqw::run_of(w) > 1)
      dead_runs.push_back({k, std::min(seqw::run_of(w), cap_) - 1, (w >> seqw::lap_shift) & 0xf});
  }
  auto lost_mate = [&](std::uint64_t k, std::uint64_t w) {
    for (const dead_run& r : dead_runs) {
      const std::uint64_t off = (k + cap_ - r.head) % cap_;
      // The mate's own lap: the head's, or the next one past the end of the slots.
      const std::uint64_t lap = (r.lap + (r.head + off >= cap_ ? 1 : 0)) & 0xf;
      if (off >= 1 && off <= r.mates && ((w >> 1) & 0xf) == lap) return true;
    }
    return false;
  };
  for (std::uint64_t k = 0; k < cap_; ++k) {
    // acquire: as above.
    const std::uint64_t w = word(k).load(std::memory_order_acquire);
    if (!seqw::is_claim(w) && (w & 1) && !(w & seqw::skip_bit) && !lost_mate(k, w)) return false;
  }
  return true;
}

bool queue_ring::join(std::optional<time_point> until) {
  return block(
      st_->joined,
      [&](bool& poll) {
        // The ring first, then the counters: a consumer counts `gotten` before it releases
        // its slot, so a released slot means the count is visible to us.
        if (!ring_idle()) {
          poll = true;  // a claimant may die without telling anyone
          return false;
        }
        const std::uint64_t g = st_->gotten.load(std::memory_order_acquire);
        return st_->done.load(std::memory_order_acquire) >= g;
      },
      until, std::chrono::nanoseconds(0));
}

// ---------------------------------------------------------------------------------------
// The heap

void queue_ring::lock_heap() noexcept {
  const std::uint64_t me = self_identity();
  std::uint64_t e = 0;
  // acquire: pairs with the release store in unlock_heap().
  if (st_->heap_lock.compare_exchange_strong(e, me, std::memory_order_acquire,
                                             std::memory_order_relaxed))
    return;
  stall_watch watch;
  block(
      st_->heap_lock_wait,
      [&](bool& poll) {
        std::uint64_t holder = 0;
        // acquire: pairs with the release store in unlock_heap().
        if (st_->heap_lock.compare_exchange_strong(holder, me, std::memory_order_acquire,
                                                   std::memory_order_relaxed))
          return true;
        poll = true;
        // A holder that died mid-allocation or mid-collection left every page tag and
        // owner word whole (each is one atomic store) and the rest only as hints: taking
        // the lock over needs no repair, the collector frees what the dead one held.
        if (watch.stuck(&st_->heap_lock, holder) && !identity_alive(holder))
          return st_->heap_lock.compare_exchange_strong(holder, me, std::memory_order_acquire,
                                                        std::memory_order_relaxed);
        return false;
      },
      std::nullopt, spin_budget);
}

void queue_ring::unlock_heap() noexcept {
  // release: pairs with the acquire in lock_heap().
  st_->heap_lock.store(0, std::memory_order_release);
  wake(st_->heap_lock_wait, 1);
}

std::uint64_t queue_ring::find_run(std::uint64_t n) const noexcept {
  const std::uint64_t pages = st_->pages;
  if (n == 0 || n > pages) return no_page;
  // relaxed: a hint, read and written only under the heap lock (whose acquire/release
  // orders it), like every tag and owner access of the allocator below.
  std::uint64_t i = st_->next_fit.load(std::memory_order_relaxed);
  if (i >= pages) i = 0;
  std::uint64_t run = 0;
  for (std::uint64_t scanned = 0; scanned < pages + n; ++scanned, ++i) {
    if (i == pages) {  // runs do not wrap
      i = 0;
      run = 0;
    }
    // relaxed: tags change only under the heap lock, which we hold.
    if (tags_[i].load(std::memory_order_relaxed) != 0) {
      run = 0;
    } else if (++run == n) {
      return i + 1 - n;
    }
  }
  return no_page;
}

void queue_ring::collect(bool check_liveness) {
  struct candidate {
    std::uint64_t first, end, tag;
  };
  std::vector<candidate> candidates;
  alive_cache alive;
  auto lives = [&](std::uint64_t id) { return !check_liveness || alive(id); };
  // relaxed, here and for every tag below: under the lock, which the allocator that wrote
  // them released and the next allocator acquires.
  const std::uint64_t top = std::min(st_->high_water.load(std::memory_order_relaxed), st_->pages);
  std::uint64_t kept_top = 0;  // end of the highest allocation that stays
  // 1. Allocations no live producer holds. A run of pages with one tag is one allocation (a
  // holder that died while tagging leaves a prefix, a collector that died while freeing a
  // suffix; either way the owner word at its start is 0 or dead).
  for (std::uint64_t i = 0; i < top;) {
    const std::uint64_t t = tags_[i].load(std::memory_order_relaxed);
    if (t == 0) {
      ++i;
      continue;
    }
    std::uint64_t j = i + 1;
    while (j < top && tags_[j].load(std::memory_order_relaxed) == t) ++j;
    // acquire: pairs with the release store of 0 in hand_over(); the producer wrote the
    // tag into its slot before, so step 2 finds it there.
    const std::uint64_t owner = owners_[i].load(std::memory_order_acquire);
    if (owner == 0 || !lives(owner))
      candidates.push_back({i, j, t});
    else
      kept_top = j;
    i = j;
  }
  // 2. Tags that slots still need: a message published, or claimed by a live process.
  std::vector<std::uint64_t> live;
  // (Compact slots hold no tags: their values never leave them.)
  if (!candidates.empty() && st_->slot_bytes == queue_slot_bytes) {
    for (std::uint64_t k = 0; k < cap_; ++k) {
      // acquire: pairs with release() (a consumer finished reading before it freed the
      // slot) and with publish().
      const std::uint64_t w = slot(k).seq.load(std::memory_order_acquire);
      // relaxed: ordered after the acquire of the owner in step 1 and of `seq` just above.
      const std::uint64_t t = slot(k).tag.load(std::memory_order_relaxed);
      if (t == 0) continue;
      const bool needed = seqw::is_claim(w) ? lives(seqw::claimant(w))
                                            : ((w & 1) != 0 && (w & seqw::skip_bit) == 0);
      if (needed) live.push_back(t);
    }
    std::sort(live.begin(), live.end());
  }
  // 3. Free the rest; allocation goes on from the lowest page freed, so a queue whose
  // consumers keep up reuses the same few (cache-warm) megabytes.
  std::uint64_t lowest = no_page;
  for (const candidate& c : candidates) {
    if (std::binary_search(live.begin(), live.end(), c.tag)) {
      kept_top = std::max(kept_top, c.end);
      continue;
    }
    for (std::uint64_t p = c.first; p < c.end; ++p) tags_[p].store(0, std::memory_order_relaxed);
    lowest = std::min(lowest, c.first);
  }
  st_->high_water.store(kept_top, std::memory_order_relaxed);
  if (lowest != no_page) st_->next_fit.store(lowest, std::memory_order_relaxed);
  st_->since_collect.store(0, std::memory_order_relaxed);
}

std::optional<queue_block> queue_ring::allocate(std::size_t bytes, std::optional<time_point> until,
                                                alloc_mode mode) {
  const std::uint64_t n = (bytes + queue_page_bytes - 1) / queue_page_bytes;
  if (bytes > UINT32_MAX || n > st_->pages)
    throw error(fmt::format(
        "shmkit: cannot put a message of {} bytes into {}: its heap holds {} bytes (make the "
        "queue with a larger shmkit::queue_options::heap_bytes)",
        bytes, what_, st_->pages * queue_page_bytes));
  const std::uint64_t me = self_identity();
  queue_block b;
  auto attempt = [&](bool& poll) {
    if (closed()) throw_closed(what_);
    lock_heap();
    struct unlock {
      queue_ring* r;
      ~unlock() { r->unlock_heap(); }
    } unlocker{this};
    // Collect every so often (after about 2 MiB, eight such messages or a quarter of the
    // ring's worth of pages since the last time), to keep reusing warm pages; when there is
    // no room, collect at once, and if that is not enough, ask which owners died.
    const bool may_collect = mode != alloc_mode::if_free;
    const std::uint64_t every = std::max({std::uint64_t(8192), 8 * n, cap_ / 4});
    if (may_collect && st_->since_collect.load(std::memory_order_relaxed) >= every) collect(false);
    std::uint64_t first = find_run(n);
    for (bool liveness : {false, true}) {
      if (first != no_page || !may_collect) break;
      collect(liveness);
      first = find_run(n);
    }
    if (first == no_page) {
      poll = true;  // pages held by a producer that dies are found by a later collection
      return false;
    }
    // The tag first (one atomic add: a holder that dies never leaves it reusable), the high
    // water mark, then the owner, then the pages' tags: every prefix of this is something
    // collect() finds and frees. relaxed, all: under the lock, which the collector acquires.
    const std::uint64_t tag = st_->next_tag.fetch_add(1, std::memory_order_relaxed) + 1;
    if (st_->high_water.load(std::memory_order_relaxed) < first + n)
      st_->high_water.store(first + n, std::memory_order_relaxed);
    st_->since_collect.fetch_add(n, std::memory_order_relaxed);
    owners_[first].store(me, std::memory_order_relaxed);
    for (std::uint64_t p = first; p < first + n; ++p)
      tags_[p].store(tag, std::memory_order_relaxed);
    st_->next_fit.store(first + n, std::memory_order_relaxed);  // a hint, under the lock
    b = {tag, static_cast<std::uint32_t>(first), static_cast<std::uint32_t>(n)};
    return true;
  };
  bool poll = false;
  if (attempt(poll)) return b;
  if (mode != alloc_mode::wait) return std::nullopt;
  if (block(st_->heap_space, attempt, until, std::chrono::nanoseconds(0))) return b;
  return std::nullopt;
}

void queue_ring::abandon(const queue_block& b) noexcept {
  // release: pairs with the acquire in collect(), which then frees the pages.
  owners_[b.page].store(0, std::memory_order_release);
  wake(st_->heap_space, 1);
}

void queue_ring::hand_over(std::uint64_t pos, const queue_block& b, std::uint32_t size) noexcept {
  queue_slot& s = slot(pos);
  s.size = size;
  s.where = 1;
  s.page = b.page;
  s.pages = b.pages;
  // relaxed: published to the collector by the release store of the owner just below.
  s.tag.store(b.tag, std::memory_order_relaxed);
  // release: pairs with the acquire in collect(): a collector that finds the block without
  // an owner also finds its tag in this slot (claimed by us, then full).
  owners_[b.page].store(0, std::memory_order_release);
}

// What `shmkit ls` and `shmkit inspect` show of a queue: depth, capacity, heap, state.
namespace {

detail_lines inspect_queue(const segment_header&, std::span<const std::byte> payload) {
  if (payload.size() < sizeof(queue_state)) return {{"state", "truncated"}};
  const auto* st = reinterpret_cast<const queue_state*>(payload.data());
  std::uint64_t depth;
  if (st->layout == queue_layout && layout_fits(st, payload.size())) {
    // Counts claims past the counters too (they move lazily); reads only.
    depth = queue_ring(const_cast<queue_state*>(st), std::string()).size();
  } else {
    // relaxed: a snapshot for display; nothing is read on the strength of it.
    const std::uint64_t head = st->head.load(std::memory_order_relaxed);
    const std::uint64_t tail = st->tail.load(std::memory_order_relaxed);
    depth = head >= tail ? head - tail : 0;
  }
  detail_lines out;
  out.emplace_back("depth", fmt::format("{}", std::min(depth, st->capacity)));
  out.emplace_back("capacity", fmt::format("{}", st->capacity));
  out.emplace_back("heap", fmt::format("{} bytes", st->pages * queue_page_bytes));
  out.emplace_back("closed", st->closed.load(std::memory_order_relaxed) ? "yes" : "no");
  if (st->joinable)
    out.emplace_back("unfinished tasks",
                     fmt::format("{}", st->gotten.load(std::memory_order_relaxed) -
                                           st->done.load(std::memory_order_relaxed)));
  return out;
}

const inspector_registrar queue_inspector(object_kind::queue, &inspect_queue);
const inspector_registrar joinable_queue_inspector(object_kind::joinable_queue, &inspect_queue);

}  // namespace

}  // namespace shmkit::detail
