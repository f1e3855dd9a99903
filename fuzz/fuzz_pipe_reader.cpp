// SPDX-License-Identifier: MIT
// Fuzzes the pipe's reader with arbitrary ring bytes: a fresh named one-way pipe<std::string>
// (1 KiB ring) per input; the input becomes the ring's bytes from position 0 and the
// producer's head is set to the input's length (so the reader sees it all as published
// frames), then the sending end is marked closed (its `closed` word: a named end the creator
// never used stays open for an opener, so close() alone would not end it) and the receiving
// end calls poll(200 us) and recv a few times. It may throw shmkit::error (eof_error, a
// corrupted frame) but must not crash, hang or read out of bounds.
//
// The sender is closed before reading: a well-formed first piece of a streamed message
// otherwise makes recv wait, legitimately, for the rest from a live sender, without bound.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_support.hpp"
#include "shmkit/detail/pipe_state.hpp"
#include "shmkit/pipe.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace shmkit;
  if (size == 0 || size > 64 * 1024) return 0;
  static const std::string name = fuzz::object_name("pipe");
  shmkit::remove(name);  // a previous input that crashed may have left it
  auto [rx, tx] = pipe<std::string>(create_only, name, false, 1024);
  {
    fuzz::raw_mapping raw(name);
    auto* st = reinterpret_cast<detail::pipe_state*>(raw.payload());
    std::byte* ring = raw.payload() + sizeof(detail::pipe_state);
    const std::size_t n = std::min<std::size_t>(size, st->ring_bytes);
    std::memcpy(ring, data, n);
    st->rings[0].head.store(n, std::memory_order_seq_cst);
    st->ends[1].closed.store(1, std::memory_order_seq_cst);  // the sender closed
  }
  for (int i = 0; i < 4; ++i) {
    try {
      if (!rx.poll(std::chrono::microseconds(200))) continue;
      (void)rx.recv();
    } catch (const shmkit::error&) {
    }
  }
  return 0;
}
