// SPDX-License-Identifier: MIT
// shmkit::queue under load: 4 producer processes x 4 consumer processes x 100,000 tagged,
// checksummed messages each, every one received exactly once and intact; then the same with
// message sizes drawn from 0 to 1 MiB.
#define BOOST_TEST_MODULE queue_stress
#include <sys/mman.h>

#include <atomic>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "queue_messages.hpp"
#include "shmkit/queue.hpp"
#include "support.hpp"

using shmkit::test::spawn;
using shmkit::test::wait_exit;

namespace {

constexpr int producers = 4, consumers = 4;

// A trivially copyable message: the raw fast path (one memcpy into the slot).
struct raw_message {
  std::uint64_t tag;
  std::uint64_t words[6];
  std::uint64_t checksum;
};
static_assert(sizeof(raw_message) <= shmkit::detail::queue_inline_bytes);

raw_message make_raw(std::uint64_t tag) {
  raw_message m{tag, {}, 0};
  std::uint64_t h = tag;
  for (auto& w : m.words) w = h = shmkit::test::mix(h + 1);
  m.checksum = shmkit::test::checksum(reinterpret_cast<const char*>(m.words), sizeof m.words);
  return m;
}
bool check_raw(const raw_message& m) {
  const raw_message e = make_raw(m.tag);
  return std::memcmp(&e, &m, sizeof m) == 0;
}

// Counts of each tag received, in memory shared with the children.
struct tally {
  std::atomic<std::uint8_t>* seen;
  std::atomic<std::uint64_t>* damaged;
  std::size_t n;
  explicit tally(std::size_t count) : n(count) {
    void* p = ::mmap(nullptr, n + 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    BOOST_REQUIRE(p != MAP_FAILED);
    damaged = static_cast<std::atomic<std::uint64_t>*>(p);
    seen = reinterpret_cast<std::atomic<std::uint8_t>*>(static_cast<char*>(p) + 64);
  }
  ~tally() { ::munmap(damaged, n + 64); }
  void got(std::uint64_t tag, bool intact) {
    if (!intact || tag >= n) {
      damaged->fetch_add(1);
      return;
    }
    seen[tag].fetch_add(1, std::memory_order_relaxed);
  }
  void check() {
    BOOST_TEST(damaged->load() == 0u);
    std::size_t missing = 0, twice = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const unsigned c = seen[i].load();
      missing += c == 0;
      twice += c > 1;
    }
    BOOST_TEST(missing == 0u);
    BOOST_TEST(twice == 0u);
  }
};

// Runs producers and consumers to the end: producers put `per` messages each (made by
// make(tag, rng)), half of them in batches; consumers get until the queue is closed and
// drained, half of them in batches, and report each message to `t`.
template <class T, class Make, class Check>
void run(shmkit::queue<T>& q, std::uint64_t per, tally& t, Make make, Check check) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<pid_t> pp, cc;
  for (int p = 0; p < producers; ++p)
    pp.push_back(spawn([&, p] {
      std::mt19937_64 rng(p + 1);
      std::uint64_t i = 0;
      while (i < per) {
        const std::uint64_t tag = p * per + i;
        if (p % 2) {
          std::vector<T> batch;
          for (std::uint64_t k = 0; k < 16 && i < per; ++k, ++i)
            batch.push_back(make(tag + k, rng));
          q.put_many(batch);
        } else {
          q.put(make(tag, rng));
          ++i;
        }
      }
    }));
  for (int c = 0; c < consumers; ++c)
    cc.push_back(spawn([&, c] {
      try {
        for (;;) {
          if (c % 2) {
            for (const T& m : q.get_many(32)) {
              std::uint64_t tag = 0;
              const bool ok = check(m, tag);
              t.got(tag, ok);
            }
          } else {
            const T m = q.get();
            std::uint64_t tag = 0;
            const bool ok = check(m, tag);
            t.got(tag, ok);
          }
        }
      } catch (const shmkit::closed_error&) {
      }
    }));
  for (pid_t p : pp) BOOST_TEST(wait_exit(p, std::chrono::seconds(600)) == 0);
  q.close();
  for (pid_t c : cc) BOOST_TEST(wait_exit(c, std::chrono::seconds(600)) == 0);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d x %d processes, %llu messages: %.2f s (%.0f messages/s)\n", producers, consumers,
              static_cast<unsigned long long>(per * producers), s, per * producers / s);
  t.check();
}

}  // namespace

BOOST_AUTO_TEST_CASE(four_by_four_small_raw_messages, *boost::unit_test::timeout(900)) {
  constexpr std::uint64_t per = 100000;
  shmkit::queue<raw_message> q(256);
  tally t(producers * per);
  run(
      q, per, t, [](std::uint64_t tag, std::mt19937_64&) { return make_raw(tag); },
      [](const raw_message& m, std::uint64_t& tag) {
        tag = m.tag;
        return check_raw(m);
      });
}

// String messages whose body sizes come from body_size(rng).
template <class Size>
void run_strings(std::size_t capacity, std::uint64_t per, Size body_size) {
  shmkit::queue<std::string> q(capacity);
  tally t(producers * per);
  run(
      q, per, t,
      [&](std::uint64_t tag, std::mt19937_64& rng) {
        return shmkit::test::make_message(tag, body_size(rng));
      },
      [](const std::string& m, std::uint64_t& tag) { return shmkit::test::check_message(m, tag); });
}

BOOST_AUTO_TEST_CASE(four_by_four_small_string_messages, *boost::unit_test::timeout(900)) {
  // Mostly inline; one in ten just out of line.
  run_strings(256, 100000,
              [](std::mt19937_64& rng) { return rng() % 10 ? rng() % 72 : 100 + rng() % 400; });
}

BOOST_AUTO_TEST_CASE(four_by_four_sizes_up_to_a_megabyte, *boost::unit_test::timeout(900)) {
  run_strings(64, 120, [](std::mt19937_64& rng) { return rng() % ((1 << 20) - 23); });
}
