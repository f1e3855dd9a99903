// SPDX-License-Identifier: MIT
// Pipes with processes killed (SIGKILL) at random points: the survivor never hangs, never
// receives a torn message, and sees EOF once what was complete is read.
#define BOOST_TEST_MODULE pipe_crash
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "shmkit/pipe.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmkit::test::kill_and_reap;
using shmkit::test::spawn;
using shmkit::test::wait_exit;

namespace {

// A self-checking message: [u64 index][u64 size][bytes derived from index].
std::vector<std::byte> message(std::uint64_t index, std::size_t size) {
  size = std::max<std::size_t>(size, 16);
  std::vector<std::byte> m(size);
  std::memcpy(m.data(), &index, 8);
  std::memcpy(m.data() + 8, &size, 8);
  for (std::size_t i = 16; i < size; ++i) m[i] = static_cast<std::byte>((i * 131 + index) >> 3);
  return m;
}

bool intact(const std::vector<std::byte>& m, std::uint64_t want_index) {
  if (m.size() < 16) return false;
  std::uint64_t index = 0, size = 0;
  std::memcpy(&index, m.data(), 8);
  std::memcpy(&size, m.data() + 8, 8);
  if (index != want_index || size != m.size()) return false;
  for (std::size_t i = 16; i < m.size(); ++i)
    if (m[i] != static_cast<std::byte>((i * 131 + index) >> 3)) return false;
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_sender_killed_mid_message_never_delivers_it_torn) {
  std::mt19937 rng(12345);
  for (int round = 0; round < 12; ++round) {
    // A 4 KiB buffer: messages up to 256 KiB go through in many pieces, so the kill lands
    // inside a streamed message most of the time.
    auto [rx, tx] = shmkit::pipe<int>(false, 4096);
    const unsigned seed = static_cast<unsigned>(rng());
    pid_t child = spawn([&] {
      std::mt19937 r(seed);
      std::uniform_int_distribution<std::size_t> size(0, 256 * 1024);
      for (std::uint64_t i = 0;; ++i) tx.send_bytes(message(i, size(r)));
    });
    const int before_kill = static_cast<int>(rng() % 40);
    std::uint64_t next = 0;
    for (; next < static_cast<std::uint64_t>(before_kill); ++next)
      BOOST_REQUIRE(intact(rx.recv_bytes(), next));
    kill_and_reap(child);
    // Whatever complete messages are buffered come out intact, then EOF; never a torn one.
    for (;;) {
      std::vector<std::byte> m;
      try {
        m = rx.recv_bytes();
      } catch (const shmkit::eof_error&) {
        break;
      }
      BOOST_REQUIRE(intact(m, next));
      ++next;
    }
    BOOST_TEST_MESSAGE("round " << round << ": " << next << " messages, then EOF");
  }
}

BOOST_AUTO_TEST_CASE(ping_pong_partner_killed_at_a_random_moment_no_hang) {
  std::mt19937 rng(777);
  for (int round = 0; round < 10; ++round) {
    auto [a, b] = shmkit::pipe<std::uint64_t>(true, 1024);
    pid_t child = spawn([&] {
      for (;;) b.send(b.recv() + 1);
    });
    const auto kill_after = std::chrono::microseconds(rng() % 20000);
    pid_t killer = spawn([&] {
      std::this_thread::sleep_for(kill_after);
      ::kill(child, SIGKILL);
    });
    // Ping-pong until the partner dies: every call either succeeds or throws eof_error.
    bool eof = false;
    for (std::uint64_t i = 0; !eof; i += 2) {
      try {
        a.send(i);
        BOOST_REQUIRE_EQUAL(a.recv(), i + 1);
      } catch (const shmkit::eof_error&) {
        eof = true;
      }
    }
    BOOST_CHECK_EQUAL(wait_exit(killer), 0);
    BOOST_CHECK_EQUAL(wait_exit(child), -SIGKILL);
  }
}

BOOST_AUTO_TEST_CASE(wait_reports_killed_peers_as_ready) {
  constexpr int n = 4;
  std::vector<std::pair<shmkit::connection<int>, shmkit::connection<int>>> pipes;
  for (int i = 0; i < n; ++i) pipes.push_back(shmkit::pipe<int>(false));
  std::vector<pid_t> kids;
  for (int i = 0; i < n; ++i)
    kids.push_back(spawn([&, i] {
      pipes[i].second.send(i);
      std::this_thread::sleep_for(1h);
    }));
  std::vector<shmkit::connection<int>*> conns;
  for (auto& p : pipes) conns.push_back(&p.first);
  for (int i = 0; i < n; ++i) BOOST_CHECK_EQUAL(conns[i]->recv(), i);
  BOOST_CHECK(shmkit::wait(conns, 0ms).empty());
  for (int i = 0; i < n; i += 2) kill_and_reap(kids[i]);
  // The dead ones become ready (EOF); the living ones stay quiet.
  const auto ready = shmkit::wait(conns, 60s);
  BOOST_REQUIRE(!ready.empty());
  for (std::size_t i : ready) BOOST_CHECK_EQUAL(i % 2, 0u);
  std::this_thread::sleep_for(250ms);
  const auto all = shmkit::wait(conns, 60s);
  BOOST_CHECK_EQUAL(all.size(), static_cast<std::size_t>(n / 2));
  for (std::size_t i : all) {
    BOOST_CHECK_EQUAL(i % 2, 0u);
    BOOST_CHECK_THROW(conns[i]->recv(), shmkit::eof_error);
  }
  for (int i = 1; i < n; i += 2) kill_and_reap(kids[i]);
}
