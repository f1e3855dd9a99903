// SPDX-License-Identifier: MIT
// The shared-memory layout of a pipe: two ends (who holds each, whether it closed) and one
// SPSC byte ring per direction, followed by the rings' bytes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shmkit/detail/spsc_ring.hpp"

namespace shmkit::detail {

struct alignas(cache_line) pipe_end_state {
  // process_identity() of the process using this end: its creator until another process
  // uses it (a forked child claims its copy on first use; a named end is taken by opening it);
  // 0 while nobody holds it. The peer treats a dead owner as a closed end.
  std::atomic<std::uint64_t> owner{0};
  // 1 once the end is closed for good: the peer drains what is buffered, then sees EOF.
  std::atomic<std::uint32_t> closed{0};
  // 1 once some process used the end (or opened it by name); an opener by name may take an
  // end that is held but was never used (the creator's spare end), never one in use.
  std::atomic<std::uint32_t> used{0};
  // The CPU the owner ran on when it last began to wait: a scheduling hint for the peer, which
  // does not spin while it shares that CPU (spinning would only delay the owner).
  std::atomic<std::uint32_t> cpu{~0u};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Ring sizes: a power of two in [min_ring_bytes, max_ring_bytes].
inline constexpr std::size_t min_ring_bytes = 1024;
inline constexpr std::size_t max_ring_bytes = std::size_t(1) << 30;

struct pipe_state {
  pipe_state(bool is_duplex, std::uint64_t ring_size, std::uint64_t owner0,
             std::uint64_t owner1) noexcept
      : duplex(is_duplex ? 1 : 0), ring_bytes(ring_size) {
    ends[0].owner.store(owner0, std::memory_order_relaxed);  // published by segment::publish()
    ends[1].owner.store(owner1, std::memory_order_relaxed);
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
