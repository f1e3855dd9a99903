// SPDX-License-Identifier: MIT
// The engine of shmkit::queue: a bounded MPMC ring of slots with per-slot state words
// (Vyukov-style), plus an out-of-line heap of 256-byte pages for messages larger than a slot,
// all in one segment. A slot is a 128-byte queue_slot (state word, heap descriptor, 96
// inline bytes), or for a small trivially copyable T that never leaves its slot, a compact
// slot: the state word and the value, 16, 32 or 64 bytes (queue_compact_slot_bytes()).
// shmkit/queue.hpp states the contract; this file holds the shared layout, the claim
// protocol's fast paths, and (in lib/queue.cpp) the slow paths: waiting, recovery
// from dead claimants, the heap's allocator and its collector.
//
// State word of a slot (`seq`), 64 bits:
//   free(L)      = 2L           slot is free for the producer of lap L (position L*cap + i)
//   full(L)      = 2L + 1       holds the message of lap L
//   skip(L)      = full(L) | S  "published" with no message: its producer died mid-put
//   claim(L,r,n,id)= C | r | (L mod 16) << 58 | (n - 1) << 54 | id
//                               claimed by producer (r = 0) or consumer (r = R) `id`, with
//                               the n - 1 positions after it (a run; n <= 16)
// with C = bit 63, R = S = bit 62 (R is read only in claim words, S only in the others) and
// id a detail::self_identity() (pid < 2^22 and 32 start-time bits: it fits 54 bits).
// A slot moves free(L) -> claim(L,P) -> full(L)|skip(L) -> claim(L,R) -> free(L+1); every
// move is one compare-and-swap or one store by the claimant, so a claim is recorded with its
// owner in the same instruction that takes it. Values never repeat (L only grows; a dead
// claimant never claims again), so there is no ABA on the word.
//
// Runs (compact slots only): one compare-and-swap on the first slot of a run (its head)
// takes it and the n - 1 slots after it (its mates), which keep their free(L) or full(L)
// word while they belong to the run. Nobody else touches a mate: claimants reach a position
// only by walking from their side's counter or their own last claim's end (never inside a
// run) through the positions before it, and a walker that meets a head of its lap jumps
// over the whole run. So the claimant checks before its compare-and-swap that the mates
// are free (full), and they stay so. It finishes the mates first and the head last: until
// the head changes, nobody walks past it. A dead claimant's run is recovered mates first,
// then the head (queue_ring::recover()). Queues of 128-byte slots claim one slot per
// compare-and-swap (n = 1): their heap collector trusts every slot's own word.
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

inline constexpr std::size_t queue_line = 128;  // two cache lines: adjacent-line prefetch
inline constexpr std::size_t queue_slot_bytes = 128;
inline constexpr std::size_t queue_inline_bytes = 96;  // message bytes stored in the slot
inline constexpr std::size_t queue_page_bytes = 256;   // heap allocation unit
inline constexpr std::size_t queue_default_heap_bytes = std::size_t(16) << 20;
inline constexpr std::uint32_t queue_layout = 0x51550006;  // "QU", layout 6
inline constexpr std::size_t queue_max_capacity = std::size_t(1) << 32;
inline constexpr std::size_t queue_max_batch = 1024;  // slots one claim takes at most

namespace seqw {
inline constexpr std::uint64_t claim_bit = std::uint64_t(1) << 63;
inline constexpr std::uint64_t consumer_bit = std::uint64_t(1) << 62;  // in claim words
inline constexpr std::uint64_t skip_bit = std::uint64_t(1) << 62;      // in other words
inline constexpr int lap_shift = 58;
inline constexpr int run_shift = 54;
inline constexpr std::uint64_t max_run = 64;  // positions one claim word covers at most
inline constexpr std::uint64_t id_mask = (std::uint64_t(1) << run_shift) - 1;

// A run length takes 4 bits: codes 0..11 are runs of 1..12, codes 12..15 runs of 16, 24, 32
// and 64. A claimant takes the longest run it may encode (run_floor()) of those it found
// claimable.
inline constexpr std::uint64_t long_runs[4] = {16, 24, 32, 64};
constexpr std::uint64_t run_code(std::uint64_t run) noexcept {
  return run <= 12 ? run - 1 : run == 16 ? 12 : run == 24 ? 13 : run == 32 ? 14 : 15;
}
constexpr std::uint64_t run_length(std::uint64_t code) noexcept {
  return code < 12 ? code + 1 : long_runs[code - 12];
}
// The longest run of at most n positions (1 <= n <= max_run) that a claim word can say.
constexpr std::uint64_t run_floor(std::uint64_t n) noexcept {
  if (n < 16) return n <= 12 ? n : 12;
  return n >= 64 ? 64 : n >= 32 ? 32 : n >= 24 ? 24 : 16;
}

constexpr std::uint64_t free_word(std::uint64_t lap) noexcept { return lap << 1; }
constexpr std::uint64_t full_word(std::uint64_t lap) noexcept { return (lap << 1) | 1; }
constexpr std::uint64_t skip_word(std::uint64_t lap) noexcept { return full_word(lap) | skip_bit; }
constexpr std::uint64_t claim_word(std::uint64_t lap, bool consumer, std::uint64_t id,
                                   std::uint64_t run = 1) noexcept {
  return claim_bit | (consumer ? consumer_bit : 0) | ((lap & 0xf) << lap_shift) |
         (run_code(run) << run_shift) | (id & id_mask);
}
constexpr bool is_claim(std::uint64_t w) noexcept { return (w & claim_bit) != 0; }
constexpr std::uint64_t claimant(std::uint64_t w) noexcept { return w & id_mask; }
// Positions a claim word covers (its run, itself included).
constexpr std::uint64_t run_of(std::uint64_t w) noexcept {
  return run_length((w >> run_shift) & 0xf);
}
// Laps between a claim word and lap L, modulo 16, as a signed number (-8 .. 7).
constexpr int lap_delta(std::uint64_t w, std::uint64_t lap) noexcept {
  const int d = static_cast<int>(((w >> lap_shift) - lap) & 0xf);
  return d >= 8 ? d - 16 : d;
}
static_assert(run_of(claim_word(5, true, 77, 16)) == 16 && run_of(claim_word(5, false, 77)) == 1 &&
              run_of(claim_word(5, true, 77, 12)) == 12 &&
              run_of(claim_word(5, true, 77, 24)) == 24 &&
              run_of(claim_word(5, true, 77, 32)) == 32 &&
              run_of(claim_word(5, true, 77, 64)) == 64 && run_floor(13) == 12 &&
              run_floor(15) == 12 && run_floor(16) == 16 && run_floor(31) == 24 &&
              run_floor(63) == 32 && run_floor(64) == 64);
static_assert(lap_delta(claim_word(17, false, 1), 18) == -1 &&
              lap_delta(claim_word(17, false, 1), 15) == 2 &&
              claimant(claim_word(3, true, id_mask, 16)) == id_mask);
}  // namespace seqw

// Asks for the cache line of p with intent to write (a hint: no fault, no effect on
// correctness). x86's PREFETCHW (a NOP on processors without it); elsewhere the compiler's.
inline void prefetch_for_write(const void* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

struct queue_slot {
  std::atomic<std::uint64_t> seq;  // the state word above
  // Heap allocation tag of the message (0: inline). Read by the collector in other
  // processes, hence atomic; written only by the producer holding the claim.
  std::atomic<std::uint64_t> tag;
  // Written by the claiming producer before its release store of `seq`, read by the consumer
  // after its acquire of `seq`: plain fields.
  std::uint32_t size;   // message bytes
  std::uint32_t where;  // 0 inline, 1 heap
  std::uint32_t page;   // heap: first page
  std::uint32_t pages;  // heap: page count
  alignas(8) std::byte data[queue_inline_bytes];
};
static_assert(sizeof(queue_slot) == queue_slot_bytes);
static_assert(std::is_standard_layout_v<queue_slot>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// The slot size for values of `value_bytes` that always travel in their slot as raw bytes
// (no codec, no heap): the state word and the value rounded up to a power of two, so that
// a slot never straddles a cache line. 0 when the value needs a queue_slot (over 56 bytes).
constexpr std::size_t queue_compact_slot_bytes(std::size_t value_bytes) noexcept {
  if (value_bytes > 56) return 0;
  std::size_t b = 16;
  while (b < 8 + value_bytes) b *= 2;
  return b;
}
static_assert(queue_compact_slot_bytes(8) == 16 && queue_compact_slot_bytes(9) == 32 &&
              queue_compact_slot_bytes(56) == 64 && queue_compact_slot_bytes(57) == 0);

// The shared state at the start of the segment's payload; slots, page tags, page owners and
// heap pages follow it (offsets below, from the start of this struct).
struct alignas(queue_line) queue_state {
  // Written once by the creator before the segment is published; read-only afterwards.
  std::uint32_t layout;
  std::uint32_t joinable;
  std::uint64_t capacity;
  std::uint64_t pages;  // heap pages (0: no heap; every message must fit a slot)
  std::uint64_t slots_offset, tags_offset, owners_offset, heap_offset, total_bytes;
  std::atomic<std::uint32_t> closed;  // 0 open, 1 closed: set once by close()
  std::uint32_t slot_bytes;           // queue_slot_bytes, or a compact slot's size

  // Producers' next position, a hint that lags by a few claims: moved past claimed positions
  // by their claimants, lazily, and by waiters up to where they wait (queue.hpp, point 2),
  // so a claimant that dies leaves it movable.
  alignas(queue_line) std::atomic<std::uint64_t> head;
  // Consumers' next position, likewise.
  alignas(queue_line) std::atomic<std::uint64_t> tail;
  alignas(queue_line) waitpoint not_empty;  // consumers sleep here
  alignas(queue_line) waitpoint not_full;   // producers sleep here
  // The heap: a robust lock (holder identity or 0) that serialises allocation and collection.
  alignas(queue_line) std::atomic<std::uint64_t> heap_lock;
  waitpoint heap_lock_wait;
  std::atomic<std::uint64_t> next_fit;  // allocation cursor (a hint)
  std::atomic<std::uint64_t> next_tag;  // allocation tags: unique, never 0
  // Every tagged page lies below it (raised before tagging, lowered by the collector): the
  // collector scans no further.
  std::atomic<std::uint64_t> high_water;
  std::atomic<std::uint64_t> since_collect;  // pages allocated since the last collection
  // Producers waiting for pages sleep here. Apart from the allocator's line: consumers read
  // it after every out-of-line message, which must not cost the next allocation a miss.
  alignas(queue_line) waitpoint heap_space;
  // joinable_queue: messages handed out by get (counted before the slot is released) and
  // task_done() calls.
  alignas(queue_line) std::atomic<std::uint64_t> gotten;
  std::atomic<std::uint64_t> done;
  waitpoint joined;

  queue_state(std::uint64_t cap, std::uint64_t heap_pages, bool join, std::size_t slot) noexcept;
};
static_assert(std::is_standard_layout_v<queue_state>);
static_assert(offsetof(queue_state, tail) - offsetof(queue_state, head) >= queue_line,
              "head and tail must not share a cache line");
static_assert(offsetof(queue_state, not_empty) - offsetof(queue_state, tail) >= queue_line);
static_assert(offsetof(queue_state, heap_space) - offsetof(queue_state, heap_lock) >= queue_line,
              "consumers read heap_space: it must not share the allocator's line");
static_assert(offsetof(queue_state, head) % queue_line == 0,
              "the counters start their own lines, apart from the constants");
static_assert(sizeof(queue_state) % queue_line == 0);

// Bytes after the state for a queue of `capacity` slots of `slot_bytes` and a heap of
// `heap_bytes`. Throws std::invalid_argument for a capacity of 0 or above
// queue_max_capacity, or a heap above 1 TiB.
std::size_t queue_extra_bytes(std::size_t capacity, std::size_t heap_bytes, std::size_t slot_bytes);
std::uint64_t queue_heap_pages(std::size_t heap_bytes);
// Throws shmkit::error if identities of this system do not fit a claim word (pids above
// 2^22, never on Linux, whose PID_MAX_LIMIT is 2^22).
void queue_check_identity();
// Checks the state of an opened queue (slots of `slot_bytes`); throws shmkit::error naming
// `what` on a mismatch.
void queue_check_opened(const queue_state* st, std::size_t payload, bool joinable,
                        std::size_t slot_bytes, const std::string& what);

// Set by a thread that has just woken a sleeper, for its next wait (see queue_ring::block()).
inline thread_local bool woke_sleeper = false;

// The queue's protocol on a waitpoint (its fields, not its wait_until/notify): a sleeper
// counts itself in `waiters` before each sleep and a waker takes the counts it serves, so a
// sleeper that was woken but has not run yet is not woken again by every later waker (with
// the consumer descheduled, that was one system call per message). A sleeper takes its own
// count back only when it did not sleep or its sleep timed out; any other miscount is too
// high, never too low, and costs at most one needless system call.
//
// Wakes up to n sleepers (INT_MAX: all) that a waker has seen counted (see wake() and
// queue_run::sleepers for the two ways of seeing them): takes their counts and makes the
// system call.
inline void wake_counted(waitpoint& wp, int n) noexcept {
  // relaxed: the caller's fence or seq_cst load ordered us; seq below carries the wake-up.
  std::uint32_t counted = wp.waiters.load(std::memory_order_relaxed);
  std::uint32_t take;
  do {
    take = n == INT_MAX ? counted : std::min<std::uint32_t>(counted, static_cast<std::uint32_t>(n));
  } while (take != 0 &&
           !wp.waiters.compare_exchange_weak(counted, counted - take, std::memory_order_relaxed));
  if (take == 0) return;
  woke_sleeper = true;
  wp.seq.fetch_add(1, std::memory_order_seq_cst);
  futex_wake(&wp.seq, n == INT_MAX ? INT_MAX : static_cast<int>(take));
}

// Wakes up to n sleepers (INT_MAX: all) after any change of state, with a system call only
// when one is counted: when nobody sleeps, a fence and a load. The fence pairs with the fence
// after the increment of `waiters` in queue_ring::block(): either the sleeper sees our state
// change, or we see it. (The claim fast path needs no fence: see queue_run::sleepers.)
inline void wake(waitpoint& wp, int n) noexcept {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer does not model fences; an RMW gives it the same ordering to see.
  const std::uint32_t counted = wp.waiters.fetch_add(0, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint32_t counted = wp.waiters.load(std::memory_order_relaxed);
#endif
  if (counted != 0) wake_counted(wp, n);
}

// What stopped a claim: the word seen and, for a claim word, the position it is for
// (validated, so a dead claimant can be recovered exactly).
struct queue_obstacle {
  std::atomic<std::uint64_t>* slot = nullptr;  // the slot's state word
  std::uint64_t word = 0;
  std::uint64_t pos = 0;
  bool recoverable() const noexcept { return slot != nullptr && seqw::is_claim(word); }
};

// A run of claimed positions [first, first + count).
struct queue_run {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  // The other side's sleepers (not_empty's for a producer, not_full's for a consumer), read
  // with a seq_cst load after the run's last seq_cst claim compare-and-swap (try_one():
  // after the slot's last store too, which changes nothing below). A sleeper
  // counts itself (seq_cst), then looks at the slot it waits for (seq_cst load in
  // try_claim()): either it sees our claim word or a later state, or it precedes our claim
  // in the total order of seq_cst operations and we see its count here (Dekker, with the
  // claim as our state change). A sleeper that sees a claim word in its way only sleeps
  // for a poll period (block()): the claimant may have read the count before it. So the
  // waker after a claim needs no fence: 0 here means nobody needs a wake-up from this run.
  std::uint32_t sleepers = 0;
};

// A heap allocation held by a producer until it is in a slot.
struct queue_block {
  std::uint64_t tag = 0;
  std::uint32_t page = 0;
  std::uint32_t pages = 0;
};

// A process-local view of one queue's segment. Copyable; all state is in shared memory.
class queue_ring {
 public:
  queue_ring() noexcept = default;
  // `state` is the built queue_state at the start of the payload; `what` names the queue in
  // error messages ("queue 'jobs'").
  queue_ring(queue_state* state, std::string what) noexcept;

  queue_state* state() const noexcept { return st_; }
  std::uint64_t capacity() const noexcept { return cap_; }
  std::uint64_t heap_bytes() const noexcept { return st_->pages * queue_page_bytes; }
  // acquire: pairs with the seq_cst store in close(); a closer's earlier puts are visible.
  bool closed() const noexcept { return st_->closed.load(std::memory_order_acquire) != 0; }

  // The state word of position pos's slot (any slot size); its queue_slot (queue_slot_bytes
  // slots only); the value of a compact slot.
  std::atomic<std::uint64_t>& word(std::uint64_t pos) const noexcept {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(slot_at(index(pos)));
  }
  queue_slot& slot(std::uint64_t pos) const noexcept {
    return *reinterpret_cast<queue_slot*>(slot_at(index(pos)));
  }
  std::byte* value(std::uint64_t pos) const noexcept {
    return slot_at(index(pos)) + sizeof(std::uint64_t);
  }
  std::uint64_t lap(std::uint64_t pos) const noexcept { return pow2_ ? pos >> shift_ : pos / cap_; }
  std::uint64_t index(std::uint64_t pos) const noexcept { return pow2_ ? pos & mask_ : pos % cap_; }
  std::byte* page_data(std::uint32_t page) const noexcept {
    return heap_ + std::size_t(page) * queue_page_bytes;
  }

  // -- Claims. `consumer` picks the side. Never wait: claim up to `n` consecutive positions
  // that are free (producer) or full (consumer), or report the obstacle. A consumer's run
  // never contains a skip slot: a skip at the start of a run is released on the way.
  bool try_claim(bool consumer, std::uint64_t n, queue_run& run, queue_obstacle& ob) noexcept;
  // The common case of one claim, small enough to inline: the slot where this handle looks
  // first holds just what it wants (free; or a message, not a skip) and nobody takes it
  // first. False in any other case, which try_claim() then handles.
  bool try_claim_one(bool consumer, queue_run& run) noexcept;
  // One whole put (consumer false) or get of a single message, inline: claims the slot as
  // try_claim_one() does, calls use(slot) (fill it, or read it; must not throw), then makes
  // the slot's last store (full, or free for the next lap) before this handle's bookkeeping
  // (hint, counter, the other side's sleepers): the other side may be waiting for that
  // store, and every instruction between the claim and it is latency to it. False, having
  // done nothing, in any case try_claim_one() refuses.
  template <class Use>
  bool try_one(bool consumer, Use&& use) noexcept;

  // Claims at least one position, waiting until `until` (nullopt: no limit). Returns false on
  // timeout. Producers: throws closed_error once closed. Consumers: throws closed_error when
  // closed and nothing is left (a message still being written is waited for).
  bool claim(bool consumer, std::uint64_t n, queue_run& run, std::optional<time_point> until);
  // One attempt, no waiting, but recovers a dead claimant in the way if it has been in the
  // way long enough. Throws like claim().
  bool claim_now(bool consumer, std::uint64_t n, queue_run& run);

  // Calls fn(slot, L) for the slots of positions [first, first + count) in order (count at
  // most the capacity), slot being the start of the slot and L its lap, while fn returns
  // true (or returns void): the index arithmetic done once per stretch of the ring (a run
  // wraps at most once), not per position.
  template <class Fn>
  void for_each_slot(std::uint64_t first, std::uint64_t count, Fn&& fn) const noexcept {
    std::uint64_t i = index(first), L = lap(first);
    std::byte* const base = slots_;
    const unsigned shift = slot_shift_;
    const std::uint64_t cap = cap_;
    while (count != 0) {
      const std::uint64_t stretch = std::min(count, cap - i);
      std::byte* s = base + (i << shift);
      for (std::uint64_t k = 0; k < stretch; ++k, s += std::size_t(1) << shift) {
        if constexpr (std::is_void_v<decltype(fn(s, L))>)
          fn(s, L);
        else if (!fn(s, L))
          return;
      }
      count -= stretch;
      i = 0;
      ++L;
    }
  }

  // Producer: makes the claimed positions visible to consumers, with one wake-up.
  void publish(queue_run run) noexcept {
    publish(run, [](std::byte*) noexcept {});
  }
  // The same, calling fill(slot) for each slot just before making it visible (in one pass:
  // each line is written while this CPU holds it), the head of the run last (see the top of
  // this file).
  template <class Fill>
  void publish(queue_run run, Fill&& fill) noexcept {
    auto one = [&](std::byte* s, std::uint64_t L) {
      fill(s);
      // release: pairs with the consumer's acquire of `seq` in try_claim(): the slot's fields
      // and data written above are visible to whoever claims the message.
      reinterpret_cast<std::atomic<std::uint64_t>*>(s)->store(seqw::full_word(L),
                                                              std::memory_order_release);
    };
    std::byte* head = slot_at(index(run.first));
    fill(head);
    for_each_slot(run.first + 1, run.count - 1, one);
    // release: as above.
    reinterpret_cast<std::atomic<std::uint64_t>*>(head)->store(seqw::full_word(lap(run.first)),
                                                               std::memory_order_release);
    if (run.sleepers != 0) wake_counted(st_->not_empty, static_cast<int>(run.count));
  }
  // Consumer: calls take(slot) for each slot of a claimed run, then frees it for the next lap
  // as release() does, the head of the run last (see the top of this file), and wakes
  // producers once (released()). Nothing may throw in between.
  template <class Take>
  void take_run(const queue_run& run, Take&& take) noexcept {
    count_gotten(run.count);  // before the releases: see queue.hpp, point 6
    std::byte* head = slot_at(index(run.first));
    take(head);
    for_each_slot(run.first + 1, run.count - 1, [&](std::byte* s, std::uint64_t L) {
      take(s);
      // release: as in release().
      reinterpret_cast<std::atomic<std::uint64_t>*>(s)->store(seqw::free_word(L + 1),
                                                              std::memory_order_release);
    });
    release(run.first);
    released(run, false);
  }
  // Consumer: frees one claimed slot for the next lap (no wake-up; see released()).
  void release(std::uint64_t pos) noexcept {
    // release: pairs with the acquire of `seq` by the producer of the next lap (it then
    // overwrites what we read) and by the heap collector (it then frees what we read).
    word(pos).store(seqw::free_word(lap(pos) + 1), std::memory_order_release);
  }
  // After releasing the slots of `run` (claimed by a consumer), some with heap blocks
  // (`heap`).
  void released(const queue_run& run, bool heap) noexcept {
    if (run.sleepers != 0) wake_counted(st_->not_full, static_cast<int>(run.count));
    if (heap) wake(st_->heap_space, 1);
  }

  // -- Heap. Allocates a block for `bytes`: `wait` waits until `until` for space (nullopt:
  // no limit), `now` does not wait but collects garbage first if that makes room,
  // `if_free` only takes pages already free (a batch filling up: cheap to fail). Returns
  // nullopt on timeout or no room. Throws closed_error once closed, shmkit::error when
  // `bytes` exceeds the whole heap.
  enum class alloc_mode { wait, now, if_free };
  std::optional<queue_block> allocate(std::size_t bytes, std::optional<time_point> until,
                                      alloc_mode mode);
  // Gives a block back before it went into a slot (timeout, close, encoding failure).
  void abandon(const queue_block& b) noexcept;
  // The producer's last step for a block in a claimed slot: it now belongs to the slot.
  void hand_over(std::uint64_t pos, const queue_block& b, std::uint32_t size) noexcept;

  // -- Observers and control.
  std::uint64_t size() const noexcept;
  void close() noexcept;

  // -- joinable_queue.
  void count_gotten(std::uint64_t n = 1) noexcept {
    if (joinable_) st_->gotten.fetch_add(n, std::memory_order_release);
    // release: pairs with the acquire loads in task_done() and join().
  }
  void task_done();
  bool join(std::optional<time_point> until);

  // try_claim(), plus close(): producers throw closed_error once closed, consumers when
  // closed and nothing is in flight.
  bool attempt_claim(bool consumer, std::uint64_t n, queue_run& run, queue_obstacle& ob);

  // Recovers the claim described by `ob` if its claimant is dead: a producer's claim becomes
  // skip (the message is lost), a consumer's claim frees the slot. Returns true if it did.
  bool recover(const queue_obstacle& ob) noexcept;

 private:
  template <class Attempt>
  bool block(waitpoint& wp, Attempt&& attempt, std::optional<time_point> until,
             std::chrono::nanoseconds spin);
  void lock_heap() noexcept;
  void unlock_heap() noexcept;
  std::uint64_t find_run(std::uint64_t n) const noexcept;
  // Frees the pages nothing needs. `check_liveness`: also those of dead owners and dead
  // claimants (asks /proc); without it, any owner or claimant counts as alive (cheap).
  void collect(bool check_liveness);
  bool ring_idle() const;
  std::atomic<std::uint64_t>& counter_of(bool consumer) const noexcept {
    return consumer ? st_->tail : st_->head;
  }
  // relaxed: the hint is process-local and only a place to start looking.
  std::uint64_t hint_of(bool consumer) noexcept {
    return std::atomic_ref<std::uint64_t>(hints_[consumer ? 1 : 0]).load(std::memory_order_relaxed);
  }
  // The first look of try_claim_one() and try_one(): claims the position p this handle looks
  // at first (lap L, the counter read as c) if its slot holds just what the side wants;
  // slot nullptr, having taken nothing, otherwise.
  struct first_claim {
    std::byte* slot = nullptr;
    std::uint64_t c = 0, p = 0, L = 0;
  };
  first_claim claim_first(bool consumer) noexcept;
  // A claim of [p, end) made with the counter read as c: sets the hint, moves the counter
  // when due, reads the other side's sleepers, fills `run`.
  void finish_claim(bool consumer, std::uint64_t c, std::uint64_t p, std::uint64_t end, bool walked,
                    queue_run& run) noexcept;
  // The first position not yet claimed by that side (consumers: not yet claimed nor passed).
  std::uint64_t frontier(bool consumer) const noexcept;
  std::byte* slot_at(std::uint64_t k) const noexcept { return slots_ + (k << slot_shift_); }
  // Asks for the cache lines of the slots of positions [first, first + n) (at most
  // prefetch_max_bytes of them) for writing.
  void prefetch_run(std::uint64_t first, std::uint64_t n) const noexcept {
    constexpr std::uint64_t line = 64, prefetch_max_bytes = 4096;
    const std::uint64_t bytes = std::min(n << slot_shift_, prefetch_max_bytes);
    const std::uint64_t step = std::max<std::uint64_t>(line >> slot_shift_, 1);
    for (std::uint64_t k = 0; k < (bytes >> slot_shift_); k += step)
      prefetch_for_write(slot_at(index(first + k)));
  }

  queue_state* st_ = nullptr;
  std::byte* slots_ = nullptr;
  unsigned slot_shift_ = 0;  // log2 of the slot size
  // Lone claimants move a counter once every lazy_ claims (min(capacity, 4)).
  std::uint64_t lazy_ = 1;
  // Per side (producer, consumer), the end of this handle's last claim: where it looks
  // first. Process-local, shared by the threads using this handle (atomic_ref, relaxed).
  alignas(std::atomic_ref<std::uint64_t>::required_alignment) std::uint64_t hints_[2] = {0, 0};
  std::atomic<std::uint64_t>* tags_ = nullptr;    // per heap page: allocation tag, 0 free
  std::atomic<std::uint64_t>* owners_ = nullptr;  // per first page: producer holding it
  std::byte* heap_ = nullptr;
  std::uint64_t cap_ = 1, mask_ = 0;
  unsigned shift_ = 0;
  bool pow2_ = false;
  bool joinable_ = false;
  bool runs_ = false;  // compact slots: one claim word per run (see the top of this file)
  std::string what_;
};

// ---------------------------------------------------------------------------------------
// The claim fast path. For the argument, see the contract block of shmkit/queue.hpp.

namespace queue_view {
// A slot word can be ahead of the lap a claimant looks for by at most two (taken and then
// reused by the other side); anything further is a corrupted segment, reported as stale so
// that no claimant walks the counter forward through laps that never happened.
inline constexpr std::uint64_t max_lap_lead = 2;
enum kind : std::uint8_t { claimable, passed, blocked, stale };

// The slot of position p (lap L) seen by a producer.
inline kind producer(std::uint64_t w, std::uint64_t L) noexcept {
  if (seqw::is_claim(w)) {
    const int d = seqw::lap_delta(w, L);
    if (d == -1) return blocked;  // lap L-1 still being written or read
    return d >= 0 ? passed : stale;
  }
  const std::uint64_t v = w & ~seqw::skip_bit;
  const std::uint64_t wl = v >> 1;
  if (v & 1) {                        // full(wl) or skip(wl)
    if (wl + 1 == L) return blocked;  // the previous lap's message: the ring is full
    return wl >= L ? passed : stale;
  }
  if (wl == L) return claimable;
  return wl > L && wl - L <= max_lap_lead ? passed : stale;
}

// How far a walker moves past a slot of lap L it found passed with word w: over the whole
// run of a claim of that lap (at most the capacity `cap`: no claim covers more, and a
// corrupted word saying more must not carry a walker a whole number of 16-lap cycles, back
// to the same slot seen the same way, for ever), else to the next position.
inline std::uint64_t passed_by(std::uint64_t w, std::uint64_t L, std::uint64_t cap) noexcept {
  return seqw::is_claim(w) && seqw::lap_delta(w, L) == 0 ? std::min(seqw::run_of(w), cap) : 1;
}

// The slot of position c (lap L) seen by a consumer.
inline kind consumer(std::uint64_t w, std::uint64_t L) noexcept {
  if (seqw::is_claim(w)) {
    const int d = seqw::lap_delta(w, L);
    if (d > 0) return passed;
    if (w & seqw::consumer_bit) {
      if (d == 0) return passed;         // another consumer took c
      return d == -1 ? blocked : stale;  // lap L-1 still being read: nothing for c yet
    }
    return d == 0 ? blocked : stale;  // c is being written
  }
  const std::uint64_t v = w & ~seqw::skip_bit;
  const std::uint64_t wl = v >> 1;
  if (wl == L) return (v & 1) ? claimable : blocked;  // full / empty
  return wl > L && wl - L <= max_lap_lead ? passed : stale;
}
}  // namespace queue_view

inline void queue_ring::finish_claim(bool consumer, std::uint64_t c, std::uint64_t p,
                                     std::uint64_t end, bool walked, queue_run& run) noexcept {
  // relaxed: the hint is process-local and only a place to start looking.
  std::atomic_ref<std::uint64_t>(hints_[consumer ? 1 : 0]).store(end, std::memory_order_relaxed);
  // Move the counter past the run when others claim on this side too (we walked past their
  // claims) or when it lags lazy_ positions: alone on its side, a handle moves it once every
  // lazy_ claims. acq_rel: pairs with the acquire loads of the counter.
  if (walked || end - c >= lazy_) {
    std::atomic<std::uint64_t>& counter = counter_of(consumer);
    std::uint64_t h = counter.load(std::memory_order_acquire);
    while (h < end && !counter.compare_exchange_weak(h, end, std::memory_order_acq_rel)) {
    }
  }
  // seq_cst: after the run's last claim; see queue_run::sleepers.
  const waitpoint& other = consumer ? st_->not_full : st_->not_empty;
  run = {p, end - p, other.waiters.load(std::memory_order_seq_cst)};
}

inline queue_ring::first_claim queue_ring::claim_first(bool consumer) noexcept {
  // acquire: as in try_claim().
  const std::uint64_t c = counter_of(consumer).load(std::memory_order_acquire);
  const std::uint64_t p = std::max(c, hint_of(consumer));
  const std::uint64_t L = lap(p);
  std::byte* const slot = slot_at(index(p));
  std::atomic<std::uint64_t>& s = *reinterpret_cast<std::atomic<std::uint64_t>*>(slot);
  std::uint64_t w = consumer ? seqw::full_word(L) : seqw::free_word(L);
  // acquire: as in try_claim() (only a look before the compare-and-swap, which decides).
  if (s.load(std::memory_order_acquire) != w) return {};
  // seq_cst: as in try_claim(); relaxed on failure: nothing was taken (try_claim() looks
  // again).
  if (!s.compare_exchange_strong(w, seqw::claim_word(L, consumer, self_identity()),
                                 std::memory_order_seq_cst, std::memory_order_relaxed))
    return {};
  return {slot, c, p, L};
}

inline bool queue_ring::try_claim_one(bool consumer, queue_run& run) noexcept {
  const first_claim f = claim_first(consumer);
  if (f.slot == nullptr) return false;
  finish_claim(consumer, f.c, f.p, f.p + 1, false, run);
  return true;
}

template <class Use>
inline bool queue_ring::try_one(bool consumer, Use&& use) noexcept {
  const auto [slot, c, p, L] = claim_first(consumer);
  if (slot == nullptr) return false;
  std::atomic<std::uint64_t>& s = *reinterpret_cast<std::atomic<std::uint64_t>*>(slot);
  use(slot);
  if (consumer) {
    count_gotten();  // before the release: see queue.hpp, point 6
    // release: as in release().
    s.store(seqw::free_word(L + 1), std::memory_order_release);
  } else {
    // release: as in publish().
    s.store(seqw::full_word(L), std::memory_order_release);
  }
  // The bookkeeping after that store: the hint (process-local), the counter move when due
  // (queue.hpp, point 2: a claim finished but not yet passed by the counter lags it as one in
  // flight would), and the sleepers, read after our seq_cst claim as queue_run::sleepers
  // needs.
  queue_run run;
  finish_claim(consumer, c, p, p + 1, false, run);
  if (run.sleepers != 0) wake_counted(consumer ? st_->not_full : st_->not_empty, 1);
  return true;
}

inline bool queue_ring::try_claim(bool consumer, std::uint64_t n, queue_run& run,
                                  queue_obstacle& ob) noexcept {
  std::atomic<std::uint64_t>& counter = counter_of(consumer);
  const std::uint64_t me = self_identity();
  // The counter and this handle's hint (the end of its last claim on this side) only say
  // where to look, both at most the first unclaimed position (see queue.hpp, point 2); the
  // slot word carries every guarantee, and a stale position is detected by the slot word
  // itself. acquire (free on x86): pairs with the acq_rel counter moves, so a slot read
  // after the counter is at least as new as the claim that moved the counter.
  const std::uint64_t c = counter.load(std::memory_order_acquire);
  std::uint64_t p = std::max(c, hint_of(consumer));
  bool walked = false;  // past claims of others
  for (;;) {
    std::atomic<std::uint64_t>& s = word(p);
    const std::uint64_t L = lap(p);
    // seq_cst: acquire pairs with the release store of the other side (publish(),
    // release()); seq_cst for a sleeper's look (queue_run::sleepers).
    std::uint64_t w = s.load(std::memory_order_seq_cst);
    const queue_view::kind k = consumer ? queue_view::consumer(w, L) : queue_view::producer(w, L);
    if (k == queue_view::claimable) {
      // Compact slots: the run's mates are those of the next positions that are free (full,
      // not skip) now; they stay so until our head is claimed (see the top of this file),
      // and if another claims p first, our compare-and-swap fails. Their lines are asked
      // for with intent to write first, so that their misses overlap.
      std::uint64_t mates = 0;
      if (runs_ && n > 1 && !(w & seqw::skip_bit)) {
        const std::uint64_t want = std::min({n, seqw::max_run, cap_});
        prefetch_run(p, want);
        for_each_slot(p + 1, want - 1, [&](std::byte* m, std::uint64_t Lm) {
          // acquire: pairs with the release store of the other side (publish(), release(),
          // take_run()): what it wrote there is visible to us once the run is ours.
          const std::uint64_t wm =
              reinterpret_cast<std::atomic<std::uint64_t>*>(m)->load(std::memory_order_acquire);
          if (wm != (consumer ? seqw::full_word(Lm) : seqw::free_word(Lm))) return false;
          ++mates;
          return true;
        });
        mates = seqw::run_floor(1 + mates) - 1;  // what one claim word can say
      }
      // seq_cst: acquire as above; release so that whoever reads our claim word also sees
      // the counter value we read (the position bound recovery relies on); seq_cst as the
      // state change of queue_run::sleepers.
      if (!s.compare_exchange_strong(w, seqw::claim_word(L, consumer, me, 1 + mates),
                                     std::memory_order_seq_cst, std::memory_order_seq_cst))
        continue;  // lost the race for p: look at the slot again
      if (consumer && (w & seqw::skip_bit)) {
        // A message its producer never finished: drop it and carry on at p + 1.
        std::uint64_t e = p;
        counter.compare_exchange_strong(e, p + 1, std::memory_order_acq_rel);
        release(p);
        wake(st_->not_full, 1);
        if (joinable_) wake(st_->joined, INT_MAX);
        p = std::max(e, p + 1);
        continue;
      }
      // 128-byte slots: extend the run over the following positions while they are
      // claimable, one compare-and-swap each. Their lines are asked for with intent to write
      // first: each compare-and-swap waits for its line before the next may start (a locked
      // instruction), so without this a run of lines last written by the other side costs
      // one cross-CPU miss after the other.
      std::uint64_t k2 = 1 + mates;
      if (!runs_ && n > 1) {
        prefetch_run(p + 1, n - 1);
        for_each_slot(p + 1, std::min(n, cap_) - 1, [&](std::byte* s2b, std::uint64_t L2) {
          auto& s2 = *reinterpret_cast<std::atomic<std::uint64_t>*>(s2b);
          // acquire / seq_cst: as for the first slot of the run; relaxed on failure: we stop.
          std::uint64_t w2 = s2.load(std::memory_order_acquire);
          const bool ok = consumer ? (w2 == seqw::full_word(L2)) : (w2 == seqw::free_word(L2));
          if (!ok ||
              !s2.compare_exchange_strong(w2, seqw::claim_word(L2, consumer, me),
                                          std::memory_order_seq_cst, std::memory_order_relaxed))
            return false;
          ++k2;
          return true;
        });
      }
      finish_claim(consumer, c, p, p + k2, walked, run);
      return true;
    }
    if (k == queue_view::passed) {
      // p was claimed (perhaps by a claimant that died before moving the counter): walk on,
      // or jump to the counter if it is further. acquire: as at the top.
      walked = true;
      p = std::max(p + queue_view::passed_by(w, L, cap_), counter.load(std::memory_order_acquire));
      continue;
    }
    // acquire: as at the top; reading the counter again after w is the bracket recovery
    // relies on (see queue.hpp, point 3).
    const std::uint64_t now = counter.load(std::memory_order_acquire);
    if (now > p) {  // stale, or blocked on an old view: look again
      p = now;
      continue;
    }
    if (now < p) {
      // The counter lags (moved lazily, or we came by the hint): bring it up to p and look
      // again, so that a blocked view below has read the counter at p before and after w.
      // acq_rel: as for the moves above.
      std::uint64_t e = now;
      while (e < p && !counter.compare_exchange_weak(e, p, std::memory_order_acq_rel)) {
      }
      continue;
    }
    if (k == queue_view::stale) {
      // The counter has not moved but the slot looks inconsistent with it: only possible
      // with a corrupted segment. Report as blocked without a recoverable claim.
      ob = {&s, 0, 0};
      return false;
    }
    // Blocked, and the counter still reads p after we read w: the claim in w (if any) is
    // for p itself or for p - capacity, told apart by its lap bits.
    ob = {&s, w, 0};
    if (seqw::is_claim(w)) {
      const int d = seqw::lap_delta(w, L);
      if (d == 0)
        ob.pos = p;
      else if (d == -1 && p >= cap_)
        ob.pos = p - cap_;
      else
        ob.word = 0;  // not recoverable from this view
    }
    return false;
  }
}

}  // namespace shmkit::detail
