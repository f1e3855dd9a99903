// SPDX-License-Identifier: MIT
// A single-producer single-consumer byte ring in shared memory, carrying framed messages: the
// stream under shmkit::pipe. The control block (ring_ctl) and the bytes live in a segment; the
// producer's ring_writer and the consumer's ring_reader are process-local views that cache the
// other side's position, so the fast path touches the shared head/tail lines only when the
// cached view runs out.
//
// Promises: no compare-and-swap anywhere; `head` is written only by the producer and `tail` only
// by the consumer, each on its own cache line. A frame becomes visible to the consumer only when
// it is complete (head is published after the bytes), so a producer killed mid-frame leaves
// nothing torn behind. Every frame is contiguous: when the end of the ring is too close, the
// producer first writes a pad frame that the consumer skips. Not thread-safe: one producer
// thread and one consumer thread at a time.
//
// Publication (commit(), consume()) is a store of head or tail followed by a load of the
// peer's waiter count: the two halves of the Dekker-style handshake with a sleeping peer. In a
// process registered for light fences (set_light(true), see register_light_fences()) the store
// is a plain release store and the store-load fence is left to the peer, which pays a
// heavy_fence() only when it is about to sleep (wait_until(..., heavy = true)): the hot path
// then neither stalls until the store reaches the other CPU nor locks the bus once per
// message. Otherwise both are seq_cst.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

inline constexpr std::size_t cache_line = 64;

// The shared half of one ring. Positions count bytes ever written / read (64-bit: they never
// wrap in practice); the index of position p is p & (capacity - 1).
struct ring_ctl {
  // Bytes published by the producer. Written only by the producer (commit()).
  alignas(cache_line) std::atomic<std::uint64_t> head{0};
  // Bytes released by the consumer. Written only by the consumer (consume()).
  alignas(cache_line) std::atomic<std::uint64_t> tail{0};
  // The consumer (and shmkit::wait) sleeps here for data or for the peer's close.
  alignas(cache_line) waitpoint readable;
  // The producer sleeps here for room.
  alignas(cache_line) waitpoint writable;
  // The tail the sleeping producer waits for (its room is there once tail reaches it). Written
  // by the producer before it sleeps; read by the consumer only while a producer sleeps.
  std::atomic<std::uint64_t> want_tail{0};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(offsetof(ring_ctl, tail) - offsetof(ring_ctl, head) >= cache_line,
              "head and tail must not share a cache line");
static_assert(offsetof(ring_ctl, readable) - offsetof(ring_ctl, tail) >= cache_line);
static_assert(offsetof(ring_ctl, writable) - offsetof(ring_ctl, readable) >= cache_line);

// Every frame starts with this header and is padded to a multiple of 8 bytes.
struct frame_header {
  std::uint32_t size;  // payload bytes that follow the header (before padding)
  std::uint32_t kind;  // a frame_kind
};
static_assert(sizeof(frame_header) == 8);

enum frame_kind : std::uint32_t {
  frame_whole = 0x4c4f4857,  // a complete message
  frame_first = 0x54535246,  // the first piece of a streamed message: u64 total size, then bytes
  frame_more = 0x45524f4d,   // a later piece of a streamed message
  frame_pad = 0x44444150,    // filler up to the end of the ring; skipped
};

inline constexpr std::size_t frame_align = 8;

constexpr std::size_t frame_bytes(std::size_t payload) noexcept {
  return sizeof(frame_header) + ((payload + frame_align - 1) & ~(frame_align - 1));
}

// The largest frame a ring of `capacity` bytes takes as one piece: half of it, so a frame
// always fits once the ring drains, whatever padding the wrap-around costs.
constexpr std::size_t max_frame_bytes(std::size_t capacity) noexcept { return capacity / 2; }

// The producer's view. `head_` mirrors ctl->head (only we write it); `tail_` is a cached copy
// of ctl->tail, refreshed only when it seems to leave too little room.
class ring_writer {
 public:
  ring_writer() noexcept = default;
  ring_writer(ring_ctl* ctl, std::byte* data, std::size_t capacity) noexcept
      : ctl_(ctl), data_(data), cap_(capacity), mask_(capacity - 1) {
    resync();
  }

  bool valid() const noexcept { return ctl_ != nullptr; }
  ring_ctl* ctl() const noexcept { return ctl_; }
  std::size_t capacity() const noexcept { return cap_; }

  // Light publication (see the top of this file): only in a process registered for light
  // fences, and only while every sleeper on ctl->readable waits with heavy = true.
  void set_light(bool on) noexcept { light_ = on; }

  // Reloads both positions from shared memory: after this process takes over the end.
  void resync() noexcept {
    // acquire: pairs with our own (or a previous producer's) store in commit().
    head_ = ctl_->head.load(std::memory_order_acquire);
    published_ = head_;
    // acquire: pairs with the consumer's store of tail in ring_reader::consume().
    tail_ = ctl_->tail.load(std::memory_order_acquire);
  }

  // Room for one frame of `bytes` bytes (a multiple of 8, at most max_frame_bytes): a pointer
  // to where its header goes, after a pad frame when the end of the ring is too close; nullptr
  // when the ring lacks the room now. Commit the frame with commit(bytes).
  std::byte* try_reserve(std::size_t bytes) noexcept {
    std::size_t off = head_ & mask_;
    const std::size_t to_end = cap_ - off;
    const std::size_t need = bytes <= to_end ? bytes : to_end + bytes;
    if (!has_room(need)) return nullptr;
    if (bytes > to_end) {
      pad(off, to_end);
      off = 0;
    }
    return data_ + off;
  }

  // True when try_reserve(bytes) would succeed (refreshes the cached tail).
  bool can_reserve(std::size_t bytes) noexcept {
    const std::size_t to_end = cap_ - (head_ & mask_);
    return has_room(bytes <= to_end ? bytes : to_end + bytes);
  }

  // Contiguous room of at least `min_bytes` and at most `max_bytes` (multiples of 8, min_bytes
  // at most max_frame_bytes), for one piece of a streamed message: empty when there is none now.
  std::span<std::byte> try_reserve_some(std::size_t min_bytes, std::size_t max_bytes) noexcept {
    std::size_t off = head_ & mask_;
    std::size_t to_end = cap_ - off;
    if (to_end < min_bytes) {
      if (!has_room(to_end + min_bytes)) return {};
      pad(off, to_end);
      off = 0;
      to_end = cap_;
    }
    std::size_t room = cap_ - (head_ - tail_);
    if (room < max_bytes && room < to_end) {
      refresh_tail();
      room = cap_ - (head_ - tail_);
    }
    const std::size_t n = std::min({room, to_end, max_bytes});
    if (n < min_bytes) return {};
    return {data_ + off, n};
  }

  // Publishes the frame of `bytes` bytes written at the place try_reserve*() gave (together
  // with any pad frame before it), and wakes the consumer if it sleeps.
  void commit(std::size_t bytes) noexcept {
    const std::uint64_t before = published_;
    head_ += bytes;
    published_ = head_;
    // (1) release: pairs with the consumer's acquire loads of head in ring_reader::resync()
    // and has_data(), so the frame's bytes are visible before the new head. (2) The store
    // before the load of readable.waiters below, against the waiter's increment of `waiters`
    // in waitpoint::wait_until() before it re-checks head: either the waiter sees this head,
    // or we see it counted. Light: our light_fence() with the waiter's heavy_fence(); else
    // seq_cst on both sides.
    if (light_) [[likely]] {
      ctl_->head.store(head_, std::memory_order_release);
      light_fence();
    } else {
      ctl_->head.store(head_, std::memory_order_seq_cst);
    }
    // seq_cst: the load half of (2).
    if (ctl_->readable.waiters.load(std::memory_order_seq_cst) != 0) [[unlikely]] {
      // A consumer sleeps or is about to. If it has not consumed all we published before this
      // commit, it saw those frames or was woken for them (by the commit that first published
      // past its tail: that one found tail >= its `before`), and it re-reads head after
      // consuming them, and before it sleeps again it counts itself, fences (heavy when we are
      // light) and re-checks: then it sees this head, or this load of tail sees all it
      // consumed before that fence (>= before) and we wake it. So no wake-up is due: this
      // spares a system call per message while a woken consumer waits for a CPU.
      // seq_cst: pairs with the consumer's store in ring_reader::consume(), as above.
      if (ctl_->tail.load(std::memory_order_seq_cst) >= before) ctl_->readable.notify_all();
    }
  }

  // Before sleeping until try_reserve(bytes) or try_reserve_some(bytes, ...) can succeed:
  // tells the consumer which tail brings that room, so that it wakes us once, when its tail
  // crosses that point (see ring_reader::consume()).
  void announce_need(std::size_t bytes) noexcept {
    const std::size_t to_end = cap_ - (head_ & mask_);
    const std::size_t need = bytes <= to_end ? bytes : to_end + bytes;
    // seq_cst: stored before our increment of writable.waiters in waitpoint::wait_until(), so
    // a consumer that sees us counted reads this value (or a later one).
    const std::uint64_t want = head_ + need > cap_ ? head_ + need - cap_ : 0;
    ctl_->want_tail.store(want, std::memory_order_seq_cst);
  }

  // Bytes written and not yet consumed, as far as this view knows (refreshes the tail).
  std::size_t used() noexcept {
    refresh_tail();
    return static_cast<std::size_t>(head_ - tail_);
  }

 private:
  bool has_room(std::size_t need) noexcept {
    if (cap_ - (head_ - tail_) >= need) return true;
    refresh_tail();
    return cap_ - (head_ - tail_) >= need;
  }
  void refresh_tail() noexcept {
    // seq_cst: acquire pairs with the consumer's release (or seq_cst) store of tail in
    // consume() (its reads of the freed bytes happened before, so we may overwrite them);
    // seq_cst for the waiter's re-check in waitpoint::wait_until() against consume()'s load of
    // writable.waiters (after a heavy_fence() when the consumer is light).
    tail_ = ctl_->tail.load(std::memory_order_seq_cst);
  }
  void pad(std::size_t off, std::size_t to_end) noexcept {
    frame_header h{static_cast<std::uint32_t>(to_end - sizeof(frame_header)), frame_pad};
    std::memcpy(data_ + off, &h, sizeof h);
    head_ += to_end;  // published with the frame that follows, in commit()
  }

  ring_ctl* ctl_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t cap_ = 0;
  std::size_t mask_ = 0;
  std::uint64_t head_ = 0;       // next byte to write (past any pad not yet published)
  std::uint64_t published_ = 0;  // head as last published
  std::uint64_t tail_ = 0;
  bool light_ = false;
};

// The consumer's view. `tail_` mirrors ctl->tail (only we write it); `head_` is a cached copy
// of ctl->head, refreshed only when the cached view is empty.
class ring_reader {
 public:
  ring_reader() noexcept = default;
  ring_reader(ring_ctl* ctl, std::byte* data, std::size_t capacity) noexcept
      : ctl_(ctl), data_(data), cap_(capacity), mask_(capacity - 1) {
    resync();
  }

  bool valid() const noexcept { return ctl_ != nullptr; }
  ring_ctl* ctl() const noexcept { return ctl_; }

  // Light publication of tail: as ring_writer::set_light(), for sleepers on ctl->writable.
  void set_light(bool on) noexcept { light_ = on; }

  void resync() noexcept {
    // acquire: pairs with our own (or a previous consumer's) store in consume().
    tail_ = ctl_->tail.load(std::memory_order_acquire);
    // acquire: pairs with the producer's store of head in ring_writer::commit().
    head_ = ctl_->head.load(std::memory_order_acquire);
  }

  // True when a frame is published and not consumed. seq_cst load: this is the re-check a
  // waiter makes after counting itself in readable.waiters (see ring_writer::commit()).
  bool has_data() noexcept {
    if (head_ != tail_) return true;
    // seq_cst: acquire pairs with the producer's release (or seq_cst) store in commit(), for
    // the bytes; seq_cst for the sleep/wake handshake.
    head_ = ctl_->head.load(std::memory_order_seq_cst);
    return head_ != tail_;
  }

  // True when more than the next frame is published, as far as this view knows (no load of
  // head): a hint for pacing (see connection_base::wait_readable()).
  bool several_frames() const noexcept {
    if (head_ - tail_ <= sizeof(frame_header)) return false;
    const auto* h = reinterpret_cast<const frame_header*>(data_ + (tail_ & mask_));
    return head_ - tail_ > frame_bytes(h->size);
  }

  // The next frame that is not a pad frame, or nullptr when none is published. The frame stays
  // in place (and may be read) until consume(frame_bytes(h->size)). A header that breaks the
  // frame rules (only a corrupted segment could hold one) yields `bad`.
  const frame_header* peek() noexcept {
    for (;;) {
      if (!has_data()) return nullptr;
      const std::size_t off = tail_ & mask_;
      const auto* h = reinterpret_cast<const frame_header*>(data_ + off);
      const std::size_t n = frame_bytes(h->size);
      if (h->size > cap_ || n > cap_ - off || n > head_ - tail_) return &bad;
      if (h->kind != frame_pad) return h;
      consume(n);
    }
  }

  // The payload of the frame peek() returned.
  static const std::byte* payload(const frame_header* h) noexcept {
    return reinterpret_cast<const std::byte*>(h) + sizeof(frame_header);
  }

  // Releases `bytes` bytes (the frame just read) to the producer, waking it if it sleeps
  // for the room this makes.
  void consume(std::size_t bytes) noexcept {
    const std::uint64_t before = tail_;
    tail_ += bytes;
    // (1) release: pairs with the producer's loads of tail in ring_writer::refresh_tail() and
    // resync(), so our reads of the frame complete before it may overwrite them; (2) the
    // store before the load of writable.waiters below, against the producer's increment of
    // `waiters` before it re-checks the room (waitpoint::wait_until()). Light: our
    // light_fence() with its heavy_fence(); else seq_cst on both sides.
    if (light_) [[likely]] {
      ctl_->tail.store(tail_, std::memory_order_release);
      light_fence();
    } else {
      ctl_->tail.store(tail_, std::memory_order_seq_cst);
    }
    // seq_cst: the load half of (2).
    if (ctl_->writable.waiters.load(std::memory_order_seq_cst) != 0) [[unlikely]] {
      // Wake the producer once, when the tail crosses the point it announced: before that it
      // has no room, after that an earlier consume() already woke it (or it saw the room
      // itself when it re-checked), so no system call per frame while it waits for a CPU.
      // seq_cst: pairs with the store in ring_writer::announce_need(), made before the
      // producer counted itself in `waiters`.
      const std::uint64_t want = ctl_->want_tail.load(std::memory_order_seq_cst);
      if (before < want && tail_ >= want) ctl_->writable.notify_all();
    }
  }

  // Returned by peek() for a header that breaks the frame rules.
  static constexpr frame_header bad{0, 0};

 private:
  ring_ctl* ctl_ = nullptr;
  const std::byte* data_ = nullptr;
  std::size_t cap_ = 0;
  std::size_t mask_ = 0;
  std::uint64_t tail_ = 0;
  std::uint64_t head_ = 0;
  bool light_ = false;
};

}  // namespace shmkit::detail
