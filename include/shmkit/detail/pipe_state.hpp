// SPDX-License-Identifier: MIT
// The shared-memory layout of a pipe: two ends (who holds each, whether it closed) and one
// SPSC byte ring per direction, followed by the rings' bytes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shmkit/detail/spsc_ring.hpp"

namespace shmkit::detail {

// How many processes can be recorded as holding an unused copy of one end.
inline constexpr std::size_t holder_slots = 16;

// A holder slot with this bit set stands for a child being forked: bits 0..21 hold the
// parent's pid, bits 22..62 the CLOCK_MONOTONIC millisecond of the fork. It counts as alive
// until the child's identity replaces it (written by the parent once fork() returns, and by
// the child itself), or, should neither happen (a child killed before it ran at all, with
// no /proc to name it), until pending_holder_expiry has passed.
inline constexpr std::uint64_t pending_holder = std::uint64_t(1) << 63;
inline constexpr std::uint64_t pending_holder_expiry_ms = 5000;

constexpr std::uint64_t pending_marker(std::uint32_t parent_pid, std::uint64_t now_ms) noexcept {
  return pending_holder | ((now_ms & ((std::uint64_t(1) << 41) - 1)) << 22) |
         (parent_pid & ((1u << 22) - 1));
}
constexpr std::uint32_t pending_parent(std::uint64_t marker) noexcept {
  return static_cast<std::uint32_t>(marker & ((1u << 22) - 1));
}
constexpr bool pending_expired(std::uint64_t marker, std::uint64_t now_ms) noexcept {
  const std::uint64_t mask = (std::uint64_t(1) << 41) - 1;
  return ((now_ms - (marker >> 22)) & mask) > pending_holder_expiry_ms;
}

struct alignas(cache_line) pipe_end_state {
  // process_identity() of the process that uses this end (the first send, recv, poll or wait
  // there, or opening it by name); 0 while no process has. The peer treats a dead owner as a
  // closed end.
  std::atomic<std::uint64_t> owner{0};
  // 1 once the process using the end closed it: the peer drains what is buffered, then EOF.
  std::atomic<std::uint32_t> closed{0};
  // The CPU the owner ran on when it last began to wait: a scheduling hint for the peer, which
  // does not spin while it shares that CPU (spinning would only delay the owner).
  std::atomic<std::uint32_t> cpu{~0u};
  // While nobody uses the end: the processes holding a copy of it (its creator, children
  // forked while it was held, each recorded at fork), so that the peer can tell when every
  // one of them is gone. 0 = free slot; see pending_holder.
  std::atomic<std::uint64_t> holders[holder_slots]{};
  // 1 when a holder could not be recorded (no free slot): the holders are then unknown and
  // the end counts as alive until somebody uses it.
  std::atomic<std::uint32_t> crowded{0};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Ring sizes: a power of two in [min_ring_bytes, max_ring_bytes].
inline constexpr std::size_t min_ring_bytes = 1024;
inline constexpr std::size_t max_ring_bytes = std::size_t(1) << 30;

struct pipe_state {
  // `holder` (0 for none) holds both ends at first: the creator of a pair.
  pipe_state(bool is_duplex, std::uint64_t ring_size, std::uint64_t holder) noexcept
      : duplex(is_duplex ? 1 : 0), ring_bytes(ring_size) {
    // relaxed: published by segment::publish() (release) before any other process looks.
    ends[0].holders[0].store(holder, std::memory_order_relaxed);
    ends[1].holders[0].store(holder, std::memory_order_relaxed);
  }

  std::uint32_t ring_count() const noexcept { return duplex ? 2 : 1; }

  std::uint32_t duplex;  // 1: both ends send and receive; 0: end 0 receives, end 1 sends
  std::uint32_t reserved = 0;
  std::uint64_t ring_bytes;  // bytes of each ring
  pipe_end_state ends[2];
  // rings[k] carries what end k receives; a one-way pipe has only rings[0]. Ring k's bytes are
  // at offset k * ring_bytes after this struct.
  ring_ctl rings[2];
};
static_assert(sizeof(pipe_state) % cache_line == 0);

}  // namespace shmkit::detail
