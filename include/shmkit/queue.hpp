// SPDX-License-Identifier: MIT
// shmkit::queue<T> and shmkit::joinable_queue<T>: bounded multi-producer multi-consumer queues
// of values between processes, in shared memory, like Python's multiprocessing.Queue and
// JoinableQueue.
//
// Contract
// - Producers:consumers: any number of each, in any processes (and threads) that share it:
//   anonymous queues with children forked after them, named ones by name. One handle may be
//   used by several threads at once.
// - Elements: any T the codec handles (shmkit::encodable<T>). A message of up to 96 bytes
//   lives in its ring slot (a trivially copyable T of that size is one memcpy, no codec, no
//   allocation; one of up to 56 bytes gets slots of its own size, 16 to 64 bytes, several
//   to a cache line); a larger one lives in the queue's own heap, in the same segment (16 MiB
//   unless queue_options::heap_bytes says otherwise), so messages far larger than a slot go
//   through: a 4 MiB std::string through a queue of capacity 16. A message larger than the
//   whole heap throws shmkit::error from put and leaves the queue unchanged; one that fits
//   but not now waits (put) for consumers to free space.
// - Order: FIFO per the claim order of positions. Each message is received once.
// - Progress: the fast path takes a slot with one compare-and-swap on the slot's state word;
//   a handle alone on its side moves the shared position counter once every four claims,
//   one contending with others at every claim (point 2); no locks. A producer that stalls
//   mid-put delays only the consumer of its slot (as in Vyukov's ring). The heap's allocator
//   takes a short lock (out-of-line messages only); consumers never lock.
// - Blocking: put/get spin for up to about a futex round trip (shorter while spinning keeps
//   failing, as when both sides share one CPU), then sleep on the wait layer's futex; a
//   waker makes a system call only when somebody sleeps, once per sleep. A put or get
//   checks for sleepers with the compare-and-swap that claims its slot, not with a fence
//   (queue_ring.hpp, queue_run::sleepers), so a caller that would sleep on a slot whose put
//   or get is under way polls instead (50 us, doubling to 3 ms), never sleeps unbounded. A
//   sleeper also looks again every 100 ms (see point 7 below): an idle blocked caller costs
//   ten wake-ups a second, about 0.1% of a core, measured.
// - size() is the producers' first unclaimed position less the consumers' (each side's
//   counter, plus the claimed slots past it), read one after the other: a snapshot, exact
//   only while nobody else runs; it counts messages being written (their slot is claimed)
//   and not messages being read. empty() and full() derive from it.
// - close(): wakes every blocked caller; put, try_put, put_for and put_many then throw
//   shmkit::closed_error; get and friends hand out what is left (waiting for a message whose
//   put was already under way) and then throw shmkit::closed_error (try_get and get_for too:
//   "closed and drained" is not "empty"). A put racing with close() either throws or is
//   delivered. Closing is final.
// - Errors: closed_error as above; shmkit::error for a message too large for the heap, for
//   a corrupted message (its bytes do not decode: never seen unless memory was overwritten),
//   and when creating or opening fails (see naming.hpp); std::invalid_argument for a capacity
//   of 0; whatever the codec throws while encoding (the queue is then unchanged).
//
// What survives kill -9: a process killed at any instruction inside put or get costs at
// most the one message it was carrying, which is then delivered whole or not at all, never
// twice, never torn, and never wedges the queue for the others. The argument:
// 1. Every slot has one 64-bit state word: free(L) / full(L) / skip(L) for lap L, or a
//    claim word holding the claimant's identity (pid and start time), its side, L mod 16
//    and the length of its run (point 8). A slot is claimed by one compare-and-swap free(L) ->
//    claim (producer) or full(L) -> claim (consumer): the claim and its owner are recorded in one
//    instruction, so there is no instant at which a slot is taken by nobody known. The claimant
//    writes or reads the slot and finishes with one store: full(L) (publish) or free(L+1). Killed
//    before the compare-and-swap, it took nothing; after the final store, it is done.
// 2. The position counters (head, tail) are only hints, never past the first unclaimed
//    position F of their side: a claimant looks from the counter or from the end of its
//    handle's last claim on that side (also at most F), whichever is further, and walks past
//    claimed slots, so where it looks is at most F too. It moves the counter past its claim
//    when it walked past others' claims, or when the counter lags four (at most capacity)
//    positions behind its claim (a put or get of one raw message right after its slot's
//    last store, so that nothing stands between its claim and that store; other calls right
//    after the claim); a waiter blocked at a position moves the counter up to it. So the
//    counter lags F by at most four positions plus the claims in flight (fewer than a lap),
//    under two laps, while claimants finish, and a claimant that dies, wherever, never
//    stops it.
// 3. A waiter blocked by the same claim word for a few milliseconds asks whether the owner
//    lives (identity_alive: /proc, pid + start time, zombies dead). If not, it replaces that
//    exact word by one compare-and-swap: a dead producer's claim becomes skip(L) (consumers
//    pass it: that message is lost, never torn, since consumers never read a skip), a dead
//    consumer's claim becomes free(L+1) (the message it was reading is lost; it never
//    returned it, so it was not delivered twice). The word is unique (L only grows, a dead
//    owner never claims again), so a recovery can only hit the claim it inspected. The
//    position it recovers is exact: the waiter, at most F, found the counter at its position,
//    read the word, and found the counter there again; with the claim published by a
//    seq_cst compare-and-swap and the lag of point 2 this bounds the claim to within two
//    laps of the waiter's position, which 4 lap bits tell apart.
// 4. Out-of-line messages: a producer allocates its heap pages (tagged with a unique
//    allocation tag; the first page records the producer's identity) before it claims a
//    slot, so a producer never waits for pages while holding a slot (no deadlock with the
//    messages behind it). In its claimed slot it writes the tag, then clears the page owner,
//    then publishes. A consumer reads the pages while it holds its claim and frees nothing:
//    the collector (run under the heap lock when an allocation finds no room) frees every
//    allocation whose owner is 0 or dead and whose tag no slot still needs (full, or claimed
//    by a live process); it reads owners before slots, which the release/acquire pair on the
//    owner word makes sufficient. So pages of a dead producer or consumer are reclaimed, and
//    pages are never freed under a live reader.
// 5. The heap lock is a word holding its owner's identity; a waiter taking over from a dead
//    owner needs no repair, since every tag and owner word is written by one atomic store
//    and every prefix of an allocation or a collection is something the collector frees.
// 6. joinable_queue counts `gotten` just before a consumer releases its slot and `done` in
//    task_done() (so task_done() more times than items *got* is the std::logic_error; Python
//    counts items put); join() waits for a ring with no full slot and no live claim, then for
//    done == gotten. A producer killed mid-put therefore never leaves join() waiting; a
//    consumer killed between counting and returning (a few instructions) leaves its message
//    counted as got and never done, as does one killed after get() returned, as in Python.
// 7. A process killed while asleep in put or get stays queued on the futex until it next
//    runs and may swallow a wake-up meant for a live sleeper; every sleeper therefore looks
//    again within 100 ms, so the cost is that delay, once. Its count in the waitpoint stays
//    (later wakers make a needless system call, never miss one).
// 8. put_many and get_many claim a run of slots at once: a process killed inside one costs
//    at most the messages of that call (each message still whole or lost, never torn or
//    doubled). With compact slots a run of up to 64 is claimed by its first slot's word
//    alone (queue_ring.hpp); a dead claimant's run is recovered as a whole, as in point 3.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmkit/codec.hpp"
#include "shmkit/detail/queue_ring.hpp"
#include "shmkit/detail/shared_object.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"

namespace shmkit {

// How a queue is made (ignored when opening an existing one).
struct queue_options {
  // Bytes of shared heap for messages larger than a slot (96 bytes); the largest message
  // the queue takes. 0: every message must fit a slot. Reserved at creation. A queue of a
  // small trivially copyable T (up to 56 bytes), whose messages always fit their slot, has
  // none whatever this says.
  std::size_t heap_bytes = detail::queue_default_heap_bytes;
  // Mode of a named queue's file.
  permissions perms{};
};

template <class T>
class queue {
  static_assert(encodable<T>, "shmkit::queue<T> needs a T the codec handles (see codec.hpp)");
  static constexpr bool raw_inline =
      is_raw_encodable_v<T> && sizeof(T) <= detail::queue_inline_bytes;
  // A small raw T gets slots of its own size (the state word and the value): more messages
  // per cache line, nothing else to write or check.
  static constexpr std::size_t compact_bytes =
      is_raw_encodable_v<T> ? detail::queue_compact_slot_bytes(sizeof(T)) : 0;
  static constexpr bool compact = compact_bytes != 0;
  static constexpr std::size_t slot_bytes = compact ? compact_bytes : detail::queue_slot_bytes;
  // The heap the queue reserves: none when no message can need it.
  static std::size_t heap_for(const queue_options& o) noexcept {
    return compact ? 0 : o.heap_bytes;
  }

 public:
  using value_type = T;

  // Anonymous: shared with children forked after it. Throws std::invalid_argument for a
  // capacity of 0, shmkit::error when the memory cannot be reserved.
  explicit queue(std::size_t capacity, queue_options options = {})
      : queue(detail::object_kind::queue, capacity, options) {}
  // Named, like every shmkit object (naming.hpp). Throws shmkit::error when the name exists
  // (create_only) or does not (open_only), or holds another kind or element type.
  queue(create_only_t, std::string_view name, std::size_t capacity, queue_options options = {})
      : queue(detail::object_kind::queue, create_only, name, capacity, options) {}
  queue(create_only_t, std::string_view name, std::size_t capacity, permissions perms)
      : queue(create_only, name, capacity, queue_options{.perms = perms}) {}
  queue(open_only_t, std::string_view name) : queue(detail::object_kind::queue, open_only, name) {}
  // Opens the name if it exists (its capacity and heap then stay as they are), or creates it.
  queue(open_or_create_t, std::string_view name, std::size_t capacity, queue_options options = {})
      : queue(detail::object_kind::queue, open_or_create, name, capacity, options) {}
  queue(open_or_create_t, std::string_view name, std::size_t capacity, permissions perms)
      : queue(open_or_create, name, capacity, queue_options{.perms = perms}) {}

  queue(queue&& other) noexcept
      : obj_(std::move(other.obj_)), ring_(std::exchange(other.ring_, {})) {}
  queue& operator=(queue&& other) noexcept {
    obj_ = std::move(other.obj_);
    ring_ = std::exchange(other.ring_, {});
    return *this;
  }
  queue(const queue&) = delete;
  queue& operator=(const queue&) = delete;
  ~queue() = default;

  // Blocks while the queue is full (or its heap has no room for v). Throws closed_error once
  // closed, shmkit::error if v is larger than the heap, what the codec throws.
  void put(const T& v) { send(v, std::nullopt, false); }
  // Never blocks: false when full (or the heap has no room now). Throws like put().
  bool try_put(const T& v) { return send(v, std::nullopt, true); }
  // False after waiting `d` in vain. Throws like put().
  template <class Rep, class Period>
  bool put_for(const T& v, std::chrono::duration<Rep, Period> d) {
    return send(v, detail::deadline_after(d), false);
  }
  template <class Clock, class Duration>
  bool put_until(const T& v, std::chrono::time_point<Clock, Duration> t) {
    return send(v, to_deadline(t), false);
  }

  // Blocks while the queue is empty. Throws closed_error when closed and drained,
  // shmkit::error when the message does not decode.
  T get() { return *receive(std::nullopt, false); }
  // The same, decoding into `out` and reusing the memory it holds (codec's decode_into):
  // saves the allocations of a consumer of large messages. On a throw, `out` is valid but
  // unspecified.
  void get(T& out) {
    if constexpr (compact) {
      one(true, std::nullopt, false, [&](const std::byte* s) noexcept { read_compact(s, out); });
    } else {
      receive_with(std::nullopt, false, [&](std::uint64_t pos, bool& heap) {
        take_into(pos, heap, out);
        return true;
      });
    }
  }
  // Never blocks: nullopt when empty. Throws like get().
  std::optional<T> try_get() { return receive(std::nullopt, true); }
  template <class Rep, class Period>
  std::optional<T> get_for(std::chrono::duration<Rep, Period> d) {
    return receive(detail::deadline_after(d), false);
  }
  template <class Clock, class Duration>
  std::optional<T> get_until(std::chrono::time_point<Clock, Duration> t) {
    return receive(to_deadline(t), false);
  }

  // Puts all of vs in order, blocking as needed: each run of free slots is taken with one
  // claim and woken with one wake-up (with compact slots, a run is up to 64 slots). Throws
  // like put(); on a throw, a prefix of vs is in.
  void put_many(std::span<const T> vs);
  // Blocks until at least one message is there, then returns up to n (one claim, one
  // wake-up for the producers; with compact slots, one per run of up to 64 of the messages
  // there). Throws like get(); n == 0 returns nothing at once.
  std::vector<T> get_many(std::size_t n);
  // The same into `out`, resized to the number got, its elements reused as by get(T&).
  // Returns that number. On a throw, `out` is valid but unspecified.
  std::size_t get_many(std::vector<T>& out, std::size_t n);

  std::size_t size() const noexcept { return static_cast<std::size_t>(ring_.size()); }
  bool empty() const noexcept { return size() == 0; }
  bool full() const noexcept { return size() >= capacity(); }
  std::size_t capacity() const noexcept { return static_cast<std::size_t>(ring_.capacity()); }
  // The largest message (encoded bytes) that can go through.
  std::size_t max_message_bytes() const noexcept {
    return std::max<std::size_t>(ring_.heap_bytes(), detail::queue_inline_bytes);
  }
  // Wakes every blocked caller; see the contract above. Does not throw.
  void close() noexcept { ring_.close(); }
  bool closed() const noexcept { return ring_.closed(); }

  // The name it was made or opened with; empty for an anonymous queue.
  const std::string& name() const noexcept { return obj_.seg().name(); }
  // Keeps the name alive after this (creating) handle is destroyed.
  void release_name() noexcept { obj_.seg().release_name(); }

 protected:
  queue(detail::object_kind kind, std::size_t capacity, queue_options o)
      : obj_(spec(kind), detail::queue_extra_bytes(capacity, heap_for(o), slot_bytes), capacity,
             detail::queue_heap_pages(heap_for(o)), kind == detail::object_kind::joinable_queue,
             slot_bytes) {
    attach(kind, false);
  }
  // Named creation: create_only_t or open_or_create_t (which may open instead).
  template <class Tag>
  requires std::is_same_v<Tag, create_only_t> || std::is_same_v<Tag, open_or_create_t> queue(
      detail::object_kind kind, Tag tag, std::string_view name, std::size_t capacity,
      queue_options o)
      : obj_(tag, name, spec(kind), detail::queue_extra_bytes(capacity, heap_for(o), slot_bytes),
             o.perms, capacity, detail::queue_heap_pages(heap_for(o)),
             kind == detail::object_kind::joinable_queue, slot_bytes) {
    attach(kind, std::is_same_v<Tag, open_or_create_t>);
  }
  queue(detail::object_kind kind, open_only_t, std::string_view name)
      : obj_(open_only, name, spec(kind)) {
    attach(kind, true);
  }

  detail::queue_ring& ring() noexcept { return ring_; }

 private:
  static constexpr detail::segment_spec spec(detail::object_kind kind) {
    return {kind, detail::tag_of<T>()};
  }
  void attach(detail::object_kind kind, bool check) {
    const std::string what = obj_.seg().describe();
    detail::queue_check_identity();
    if (check)
      detail::queue_check_opened(obj_.state(), obj_.seg().payload_size(),
                                 kind == detail::object_kind::joinable_queue, slot_bytes, what);
    ring_ = detail::queue_ring(obj_.state(), what);
  }
  template <class Clock, class Duration>
  static detail::time_point to_deadline(std::chrono::time_point<Clock, Duration> t) {
    if constexpr (std::is_same_v<Clock, detail::clock>)
      return std::chrono::time_point_cast<detail::clock::duration>(t);
    else
      return detail::deadline_after(t - Clock::now());
  }

  // Takes `n` positions (at least one): the inline fast path first, then the ring's waiting
  // or non-waiting slow path. False on timeout or (try_only) when blocked.
  bool claim(bool consumer, std::uint64_t n, detail::queue_run& run,
             std::optional<detail::time_point> until, bool try_only) {
    if (consumer || !ring_.closed()) {
      if (n == 1 && ring_.try_claim_one(consumer, run)) return true;
      detail::queue_obstacle ob;
      if (ring_.try_claim(consumer, n, run, ob)) return true;
    }
    return try_only ? ring_.claim_now(consumer, n, run) : ring_.claim(consumer, n, run, until);
  }

  // Writes a raw value into its claimed slot (its start).
  static void fill_raw(std::byte* slot, const T& v) noexcept {
    if constexpr (compact)
      std::memcpy(slot + sizeof(std::uint64_t), std::addressof(v), sizeof(T));
    else
      fill_inline(*reinterpret_cast<detail::queue_slot*>(slot), std::addressof(v), sizeof(T));
  }
  // After a first run of a compact get_many: the next run of up to n messages that are there
  // now (a claim word covers at most seqw::max_run), without waiting.
  bool more_compact(std::uint64_t n, detail::queue_run& run) noexcept {
    detail::queue_obstacle ob;
    return ring_.try_claim(true, n, run, ob);
  }
  // One message into (producer: use fills the slot) or out of (consumer: use reads it) a
  // queue whose messages travel as raw bytes in their slot; use must not throw. The ring's
  // inline one-message path (try_one), again after each of a few pauses unless try_only
  // (the answer of a peer busy exchanging messages with us comes within a few: measured,
  // this beats starting the ring's out-of-line wait at once), then the slow path (claim()).
  // False on timeout or (try_only) when blocked. Throws like put() / get().
  template <class Use>
  bool one(bool consumer, std::optional<detail::time_point> until, bool try_only, Use use) {
    // A producer looks at close() before it claims, as claim() does.
    auto attempt = [&] { return (consumer || !ring_.closed()) && ring_.try_one(consumer, use); };
    if (attempt()) return true;
    if (!try_only)
      for (int look = 0; look < 8; ++look) {
        detail::cpu_relax();
        if (attempt()) return true;
      }
    detail::queue_run run;
    if (!claim(consumer, 1, run, until, try_only)) return false;
    if (consumer)
      ring_.take_run(run, use);
    else
      ring_.publish(run, use);
    return true;
  }
  // Reads the value of a compact slot (its start).
  static void read_compact(const std::byte* slot, T& out) noexcept {
    std::memcpy(static_cast<void*>(std::addressof(out)), slot + sizeof(std::uint64_t), sizeof(T));
  }
  static T read_compact(const std::byte* slot) noexcept {
    std::array<std::byte, sizeof(T)> raw;
    std::memcpy(raw.data(), slot + sizeof(std::uint64_t), sizeof(T));
    return std::bit_cast<T>(raw);
  }
  void fill_inline(std::uint64_t pos, const void* src, std::size_t n) noexcept {
    fill_inline(ring_.slot(pos), src, n);
  }
  static void fill_inline(detail::queue_slot& s, const void* src, std::size_t n) noexcept {
    // relaxed: read only by the collector, after its acquire of `seq` (see collect()).
    s.tag.store(0, std::memory_order_relaxed);
    s.size = static_cast<std::uint32_t>(n);
    s.where = 0;
    std::memcpy(s.data, src, n);
  }

  bool send(const T& v, std::optional<detail::time_point> until, bool try_only);
  std::optional<T> receive(std::optional<detail::time_point> until, bool try_only);
  // Claims one message (waiting as asked) and hands its position to fn(pos, heap), then
  // wakes producers. nullopt on timeout.
  template <class Fn>
  auto receive_with(std::optional<detail::time_point> until, bool try_only, Fn fn)
      -> std::optional<decltype(fn(std::uint64_t(), std::declval<bool&>()))>;
  // Reads the message at a claimed position with use(bytes), counts it (joinable) and
  // releases the slot, also when use throws. Sets `heap` when it was out of line.
  template <class Use>
  auto take_with(std::uint64_t pos, bool& heap, Use use);
  T take(std::uint64_t pos, bool& heap);
  void take_into(std::uint64_t pos, bool& heap, T& out);
  // Claims up to n messages (at least one, waiting) and hands each position to fn.
  template <class Fn>
  std::uint64_t receive_run(std::size_t n, Fn fn);

  detail::shared_object<detail::queue_state> obj_;
  detail::queue_ring ring_;
};

// queue<T> plus task_done() and join(), as Python's JoinableQueue. A distinct kind of object:
// opening a queue as a joinable_queue (or the reverse) throws shmkit::error.
template <class T>
class joinable_queue : public queue<T> {
  using base = queue<T>;
  static constexpr detail::object_kind kind = detail::object_kind::joinable_queue;

 public:
  explicit joinable_queue(std::size_t capacity, queue_options options = {})
      : base(kind, capacity, options) {}
  joinable_queue(create_only_t, std::string_view name, std::size_t capacity,
                 queue_options options = {})
      : base(kind, create_only, name, capacity, options) {}
  joinable_queue(create_only_t, std::string_view name, std::size_t capacity, permissions perms)
      : base(kind, create_only, name, capacity, queue_options{.perms = perms}) {}
  joinable_queue(open_only_t, std::string_view name) : base(kind, open_only, name) {}
  joinable_queue(open_or_create_t, std::string_view name, std::size_t capacity,
                 queue_options options = {})
      : base(kind, open_or_create, name, capacity, options) {}

  // Marks one item got from this queue (by any process) as processed. Throws
  // std::logic_error when called more times than items were got.
  void task_done() { this->ring().task_done(); }
  // Blocks until every item put has been got and marked done (see the contract above for
  // killed processes). Does not throw.
  void join() { this->ring().join(std::nullopt); }
  // False after waiting `d` in vain.
  template <class Rep, class Period>
  bool join_for(std::chrono::duration<Rep, Period> d) {
    return this->ring().join(detail::deadline_after(d));
  }
};

// ---------------------------------------------------------------------------------------

template <class T>
bool queue<T>::send(const T& v, std::optional<detail::time_point> until, bool try_only) {
  if constexpr (raw_inline) {
    return one(false, until, try_only, [&](std::byte* slot) noexcept { fill_raw(slot, v); });
  } else {
    detail::queue_run run;
    const std::size_t n = encoded_size(v);
    if (n <= detail::queue_inline_bytes) {
      std::array<std::byte, detail::queue_inline_bytes> buf;
      encode_into(v, std::span<std::byte>(buf.data(), n));
      if (!claim(false, 1, run, until, try_only)) return false;
      fill_inline(run.first, buf.data(), n);
    } else {
      std::optional<detail::queue_block> b = ring_.allocate(
          n, until,
          try_only ? detail::queue_ring::alloc_mode::now : detail::queue_ring::alloc_mode::wait);
      if (!b) return false;
      try {
        encode_into(v, std::span<std::byte>(ring_.page_data(b->page), n));
        if (!claim(false, 1, run, until, try_only)) {
          ring_.abandon(*b);
          return false;
        }
      } catch (...) {
        ring_.abandon(*b);
        throw;
      }
      ring_.hand_over(run.first, *b, static_cast<std::uint32_t>(n));
    }
    ring_.publish(run);
    return true;
  }
}

template <class T>
template <class Use>
auto queue<T>::take_with(std::uint64_t pos, bool& heap, Use use) {
  struct releaser {
    detail::queue_ring& r;
    std::uint64_t pos;
    ~releaser() { r.release(pos); }
  } guard{ring_, pos};
  std::span<const std::byte> bytes;
  if constexpr (compact) {
    bytes = {ring_.value(pos), sizeof(T)};
  } else {
    const detail::queue_slot& s = ring_.slot(pos);
    const std::uint32_t size = s.size;
    if (s.where == 0 && size <= detail::queue_inline_bytes) {
      bytes = {s.data, size};
    } else if (s.where == 1 && std::uint64_t(s.page) + s.pages <= ring_.state()->pages &&
               size <= std::uint64_t(s.pages) * detail::queue_page_bytes) {
      heap = true;
      bytes = {ring_.page_data(s.page), size};
    } else {
      throw error(fmt::format("shmkit: {} holds a corrupted message (slot {}: where {}, {} bytes)",
                              obj_.seg().describe(), ring_.index(pos), s.where, size));
    }
    if constexpr (is_raw_encodable_v<T>) {
      if (bytes.size() != sizeof(T))
        throw error(fmt::format("shmkit: {} holds a message of {} bytes, not the {} of its type",
                                obj_.seg().describe(), bytes.size(), sizeof(T)));
    }
  }
  auto result = use(bytes);
  ring_.count_gotten();  // before the release above: see the contract, point 6
  return result;
}

template <class T>
T queue<T>::take(std::uint64_t pos, bool& heap) {
  return take_with(pos, heap, [](std::span<const std::byte> bytes) {
    if constexpr (is_raw_encodable_v<T>) {
      std::array<std::byte, sizeof(T)> raw;
      std::memcpy(raw.data(), bytes.data(), sizeof(T));
      return std::bit_cast<T>(raw);
    } else {
      return decode<T>(bytes);
    }
  });
}

template <class T>
void queue<T>::take_into(std::uint64_t pos, bool& heap, T& out) {
  take_with(pos, heap, [&](std::span<const std::byte> bytes) {
    if constexpr (is_raw_encodable_v<T>)
      std::memcpy(std::addressof(out), bytes.data(), sizeof(T));
    else
      decode_into(bytes, out);
    return true;
  });
}

template <class T>
template <class Fn>
auto queue<T>::receive_with(std::optional<detail::time_point> until, bool try_only, Fn fn)
    -> std::optional<decltype(fn(std::uint64_t(), std::declval<bool&>()))> {
  detail::queue_run run;
  if (!claim(true, 1, run, until, try_only)) return std::nullopt;
  bool heap = false;
  struct notifier {
    detail::queue_ring& r;
    const detail::queue_run& run;
    bool& heap;
    ~notifier() { r.released(run, heap); }
  } wake{ring_, run, heap};
  return fn(run.first, heap);
}

template <class T>
std::optional<T> queue<T>::receive(std::optional<detail::time_point> until, bool try_only) {
  if constexpr (compact) {
    std::optional<T> v;
    one(true, until, try_only, [&](const std::byte* s) noexcept { v.emplace(read_compact(s)); });
    return v;
  }
  return receive_with(until, try_only,
                      [this](std::uint64_t pos, bool& heap) { return take(pos, heap); });
}

template <class T>
void queue<T>::put_many(std::span<const T> vs) {
  const std::uint64_t batch = std::min<std::uint64_t>(ring_.capacity(), detail::queue_max_batch);
  if constexpr (raw_inline) {
    std::size_t i = 0;
    while (i < vs.size()) {
      detail::queue_run run;
      if (!claim(false, std::min<std::uint64_t>(vs.size() - i, batch), run, std::nullopt, false))
        continue;
      const T* src = vs.data() + i;
      ring_.publish(run, [&](std::byte* slot) noexcept { fill_raw(slot, *src++); });
      i += run.count;
    }
  } else {
    // Messages are encoded (and their pages allocated) before their slots are claimed, a
    // batch at a time; only the first of a batch may wait for pages.
    struct prepared {
      std::uint32_t size;
      std::optional<detail::queue_block> block;
      std::array<std::byte, detail::queue_inline_bytes> bytes;
    };
    std::deque<prepared> ready;
    struct abandoner {
      detail::queue_ring& r;
      std::deque<prepared>& ready;
      ~abandoner() {
        for (auto& p : ready)
          if (p.block) r.abandon(*p.block);
      }
    } cleanup{ring_, ready};
    std::size_t next = 0;
    while (next < vs.size() || !ready.empty()) {
      while (next < vs.size() && ready.size() < batch) {
        const std::size_t n = encoded_size(vs[next]);
        prepared p{static_cast<std::uint32_t>(n), std::nullopt, {}};
        if (n <= detail::queue_inline_bytes) {
          encode_into(vs[next], std::span<std::byte>(p.bytes.data(), n));
        } else {
          p.block = ring_.allocate(n, std::nullopt,
                                   ready.empty() ? detail::queue_ring::alloc_mode::wait
                                                 : detail::queue_ring::alloc_mode::if_free);
          if (!p.block) break;  // no room now: send what is ready first
          try {
            encode_into(vs[next], std::span<std::byte>(ring_.page_data(p.block->page), n));
          } catch (...) {
            ring_.abandon(*p.block);
            throw;
          }
        }
        ready.push_back(p);
        ++next;
      }
      detail::queue_run run;
      if (!claim(false, ready.size(), run, std::nullopt, false)) continue;
      for (std::uint64_t k = 0; k < run.count; ++k) {
        prepared& p = ready[k];
        if (p.block)
          ring_.hand_over(run.first + k, *p.block, p.size);
        else
          fill_inline(run.first + k, p.bytes.data(), p.size);
      }
      ready.erase(ready.begin(), ready.begin() + static_cast<std::ptrdiff_t>(run.count));
      ring_.publish(run);
    }
  }
}

template <class T>
template <class Fn>
std::uint64_t queue<T>::receive_run(std::size_t n, Fn fn) {
  if (n == 0) return 0;
  detail::queue_run run;
  const std::uint64_t want =
      std::min<std::uint64_t>({n, ring_.capacity(), detail::queue_max_batch});
  if (!claim(true, want, run, std::nullopt, false)) return 0;
  bool heap = false;
  std::uint64_t k = 0;
  struct finisher {
    detail::queue_ring& r;
    detail::queue_run run;
    std::uint64_t& k;
    bool& heap;
    ~finisher() {
      // After a throw, the rest of the run is released unread (those messages are lost).
      for (std::uint64_t j = k; j < run.count; ++j) r.release(run.first + j);
      r.released(run, heap);
    }
  } done{ring_, run, k, heap};
  while (k < run.count) {
    const std::uint64_t i = k++;
    fn(i, run.first + i, heap);
  }
  return run.count;
}

template <class T>
std::vector<T> queue<T>::get_many(std::size_t n) {
  std::vector<T> out;
  if constexpr (compact) {
    // Room first (what may throw), then one claim and a pass over the run's slots.
    const std::uint64_t want =
        std::min<std::uint64_t>({n, ring_.capacity(), detail::queue_max_batch});
    if (want == 0) return out;
    out.reserve(want);
    detail::queue_run run;
    claim(true, want, run, std::nullopt, false);
    do {
      ring_.take_run(run, [&](const std::byte* s) noexcept {
        out.push_back(read_compact(s));  // within the capacity reserved: does not throw
      });
    } while (out.size() < want && more_compact(want - out.size(), run));
    return out;
  }
  receive_run(n, [&](std::uint64_t i, std::uint64_t pos, bool& heap) {
    if (i == 0) out.reserve(std::min<std::size_t>(n, ring_.capacity()));
    out.push_back(take(pos, heap));
  });
  return out;
}

template <class T>
std::size_t queue<T>::get_many(std::vector<T>& out, std::size_t n) {
  if constexpr (compact) {
    const std::uint64_t want =
        std::min<std::uint64_t>({n, ring_.capacity(), detail::queue_max_batch});
    if (want == 0) {
      out.clear();
      return 0;
    }
    out.resize(want);
    detail::queue_run run;
    claim(true, want, run, std::nullopt, false);
    T* dst = out.data();
    std::uint64_t got = 0;
    do {
      ring_.take_run(run, [&](const std::byte* s) noexcept { read_compact(s, *dst++); });
      got += run.count;
    } while (got < want && more_compact(want - got, run));
    out.resize(got);  // shrinks: does not throw
    return got;
  }
  std::size_t got = 0;
  receive_run(n, [&](std::uint64_t i, std::uint64_t pos, bool& heap) {
    if (out.size() <= i) out.resize(i + 1);
    take_into(pos, heap, out[i]);
    got = i + 1;
  });
  out.resize(got);
  return got;
}

}  // namespace shmkit
