// SPDX-License-Identifier: MIT
// Regression tests for what the fuzzers in fuzz/ found: each case rebuilds the corrupted
// shared state a fuzzer fed a reader and checks the reader answers with shmkit::error.
#define BOOST_TEST_MODULE fuzz_found
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shmkit/detail/pipe_state.hpp"
#include "shmkit/pipe.hpp"
#include "shmkit/queue.hpp"
#include "support.hpp"

using shmkit::test::spawn;
using shmkit::test::unique_name;
using shmkit::test::wait_exit;

namespace {

// A second mapping of a named object's whole file, to corrupt what its reader trusts.
struct raw_mapping {
  std::byte* base = nullptr;
  std::size_t size = 0;
  explicit raw_mapping(const std::string& name) {
    const std::string path = "/dev/shm/" + std::string(shmkit::name_prefix) + name;
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    BOOST_REQUIRE(fd >= 0);
    struct stat st {};
    BOOST_REQUIRE(::fstat(fd, &st) == 0);
    size = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    BOOST_REQUIRE(p != MAP_FAILED);
    base = static_cast<std::byte*>(p);
  }
  ~raw_mapping() { ::munmap(base, size); }
  std::byte* payload() const { return base + shmkit::detail::payload_alignment; }
};

}  // namespace

// fuzz_pipe_reader: the first piece of a streamed message declaring 2^45 bytes (below the
// pipe's bound on a message, 2^46) made recv reserve all of it up front: std::bad_alloc
// (an ASan abort) instead of shmkit::error.
BOOST_AUTO_TEST_CASE(pipe_stream_with_a_huge_declared_size_is_an_error_not_an_allocation) {
  const std::string name = unique_name("pipe");
  auto [rx, tx] = shmkit::pipe<std::string>(shmkit::create_only, name, false, 1024);
  {
    raw_mapping raw(name);
    auto* st = reinterpret_cast<shmkit::detail::pipe_state*>(raw.payload());
    std::byte* ring = raw.payload() + sizeof(shmkit::detail::pipe_state);
    const shmkit::detail::frame_header h{16, shmkit::detail::frame_first};
    const std::uint64_t total = std::uint64_t(1) << 45;
    std::memcpy(ring, &h, sizeof h);
    std::memcpy(ring + sizeof h, &total, sizeof total);
    std::memset(ring + sizeof h + sizeof total, 'x', 8);
    st->rings[0].head.store(shmkit::detail::frame_bytes(16), std::memory_order_seq_cst);
    // The sender closed mid-message: recv sees the end, never the rest.
    st->ends[1].closed.store(1, std::memory_order_seq_cst);
  }
  BOOST_CHECK_THROW(rx.recv(), shmkit::error);
}

// fuzz_queue_reader: slot words of a lap far ahead of the consumers' counter (a corrupted
// segment) used to read as "passed" at every lap below theirs, so try_get's claim loop helped
// the tail forward one position at a time, ~2^40 times here: try_get never returned. A slot
// word may lead by at most two laps (queue_view::max_lap_lead); further is corruption.
BOOST_AUTO_TEST_CASE(queue_slot_of_a_far_lap_does_not_livelock_try_get) {
  const std::string name = unique_name("queue");
  shmkit::queue_options opts;
  opts.heap_bytes = 4096;
  shmkit::queue<std::string> q(shmkit::create_only, name, 4, opts);
  {
    raw_mapping raw(name);
    auto* st = reinterpret_cast<shmkit::detail::queue_state*>(raw.payload());
    auto* slots = reinterpret_cast<shmkit::detail::queue_slot*>(raw.payload() + st->slots_offset);
    for (std::uint64_t i = 0; i < st->capacity; ++i)
      slots[i].seq.store(shmkit::detail::seqw::full_word(std::uint64_t(1) << 40));
  }
  const pid_t child = spawn([&] {
    try {
      (void)q.try_get();
    } catch (const shmkit::error&) {
    }
  });
  BOOST_CHECK_EQUAL(wait_exit(child, std::chrono::seconds(20)), 0);
}

// fuzz_queue_reader: a corrupted slot word claiming a run longer than the ring (64 positions
// on a ring of 4) of the walker's lap carried try_get's walk exactly 16 laps on, back to the
// same slot seen the same way (claim words keep their lap mod 16): try_get never returned. A
// walker now passes at most the capacity, as no real run covers more.
BOOST_AUTO_TEST_CASE(queue_claim_run_longer_than_the_ring_does_not_livelock_try_get) {
  namespace sd = shmkit::detail;
  const std::string name = unique_name("queue");
  shmkit::queue_options opts;
  opts.heap_bytes = 4096;
  shmkit::queue<std::string> q(shmkit::create_only, name, 4, opts);
  {
    raw_mapping raw(name);
    auto* st = reinterpret_cast<sd::queue_state*>(raw.payload());
    auto* slots = reinterpret_cast<sd::queue_slot*>(raw.payload() + st->slots_offset);
    // Every slot: a consumer's claim of lap 0 covering 64 positions, by a process that lives
    // (this one), which the consumers' walker at lap 0 passes over.
    for (std::uint64_t i = 0; i < st->capacity; ++i)
      slots[i].seq.store(sd::seqw::claim_word(0, true, sd::self_identity(), 64));
  }
  const pid_t child = spawn([&] {
    for (int i = 0; i < 5; ++i) {
      try {
        (void)q.try_get();
      } catch (const shmkit::error&) {
      }
    }
  });
  BOOST_CHECK_EQUAL(wait_exit(child, std::chrono::seconds(20)), 0);
}
