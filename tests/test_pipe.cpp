// SPDX-License-Identifier: MIT
// shmkit::pipe between real processes: values and byte messages of every size (checksummed),
// ping-pong, EOF on close / exit / kill -9, poll, shmkit::wait over many pipes, named pipes
// opened by another process, type mismatch, and the fork hand-off of ends.
#define BOOST_TEST_MODULE pipe
#include <boost/test/unit_test.hpp>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <sys/resource.h>
#include <vector>

#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/detail/wait_any.hpp"
#include "shmkit/pipe.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmkit::test::kill_and_reap;
using shmkit::test::name_guard;
using shmkit::test::spawn;
using shmkit::test::unique_name;
using shmkit::test::wait_all_ok;
using shmkit::test::wait_exit;

namespace {

// Deterministic contents for a message of `n` bytes, seeded by `seed`.
std::vector<std::byte> pattern(std::size_t n, std::uint64_t seed) {
  std::vector<std::byte> v(n);
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + n + 1;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(v.data() + i, &x, 8);
  }
  for (; i < n; ++i) v[i] = static_cast<std::byte>(i * 31 + seed);
  return v;
}

std::uint64_t checksum(std::span<const std::byte> b) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte c : b) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h ^ b.size();
}

struct point {
  double x, y;
  std::int32_t tag;
  bool operator==(const point&) const = default;
};

// CPU time (user + system) this process has used so far.
std::chrono::microseconds cpu_used() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return std::chrono::seconds(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         std::chrono::microseconds(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Receives, in this process, what `producers` children send on one-way pipes at random moments
// (each sends `per_producer` values, then closes), using shmkit::wait; checks every value
// arrives, in order per child.
void fan_in(int producers, int per_producer) {
  std::vector<std::pair<shmkit::connection<int>, shmkit::connection<int>>> pipes;
  for (int i = 0; i < producers; ++i) pipes.push_back(shmkit::pipe<int>(false));
  std::vector<pid_t> kids;
  for (int p = 0; p < producers; ++p)
    kids.push_back(spawn([&, p] {
      std::mt19937 rng(static_cast<unsigned>(p * 7919 + ::getpid()));
      std::uniform_int_distribution<int> pause_us(0, 3000);
      for (int k = 0; k < per_producer; ++k) {
        if (rng() % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us(rng)));
        pipes[p].second.send(p * 1000000 + k);
      }
      pipes[p].second.close();
    }));
  std::vector<shmkit::connection<int>*> live;
  std::vector<int> owner_of;
  for (int p = 0; p < producers; ++p) {
    live.push_back(&pipes[p].first);
    owner_of.push_back(p);
  }
  std::vector<int> next(producers, 0);
  while (!live.empty()) {
    const std::vector<std::size_t> ready = shmkit::wait(live, 60s);
    BOOST_REQUIRE(!ready.empty());
    std::vector<std::size_t> finished;
    for (std::size_t i : ready) {
      BOOST_REQUIRE_LT(i, live.size());
      const int p = owner_of[i];
      try {
        // Ready means recv() does not block: a value or EOF.
        const int v = live[i]->recv();
        BOOST_REQUIRE_EQUAL(v, p * 1000000 + next[p]);
        ++next[p];
      } catch (const shmkit::eof_error&) {
        finished.push_back(i);
      }
    }
    for (auto it = finished.rbegin(); it != finished.rend(); ++it) {
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(*it));
      owner_of.erase(owner_of.begin() + static_cast<std::ptrdiff_t>(*it));
    }
  }
  for (int p = 0; p < producers; ++p) BOOST_CHECK_EQUAL(next[p], per_producer);
  BOOST_CHECK(wait_all_ok(kids));
}

// A user type that opts in to the codec.
struct order {
  std::string customer;
  std::vector<double> amounts;
  std::optional<int> priority;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(customer, amounts, priority);
  }
  bool operator==(const order&) const = default;
};

template <class F>
bool throws_eof(F&& f) {
  try {
    f();
  } catch (const shmkit::eof_error&) {
    return true;
  }
  return false;
}

}  // namespace

BOOST_AUTO_TEST_CASE(values_both_ways_in_one_process) {
  auto [a, b] = shmkit::pipe<int>();
  BOOST_CHECK(a.duplex());
  BOOST_CHECK(a.readable() && a.writable());
  BOOST_CHECK_EQUAL(a.buffer_size(), shmkit::default_pipe_buffer);
  a.send(1);
  a.send(2);
  b.send(-7);
  BOOST_CHECK_EQUAL(b.recv(), 1);
  BOOST_CHECK_EQUAL(b.recv(), 2);
  BOOST_CHECK_EQUAL(a.recv(), -7);
  BOOST_CHECK(!a.poll());
  BOOST_CHECK(!b.poll());
}

BOOST_AUTO_TEST_CASE(one_way_pipe_first_receives_second_sends) {
  auto [rx, tx] = shmkit::pipe<point>(false);
  BOOST_CHECK(!rx.duplex());
  BOOST_CHECK(rx.readable() && !rx.writable());
  BOOST_CHECK(!tx.readable() && tx.writable());
  tx.send({1.5, -2.5, 42});
  BOOST_CHECK(rx.recv() == (point{1.5, -2.5, 42}));
  BOOST_CHECK_THROW(rx.send({}), std::logic_error);
  BOOST_CHECK_THROW(tx.recv(), std::logic_error);
  BOOST_CHECK_THROW(tx.recv_bytes(), std::logic_error);
}

BOOST_AUTO_TEST_CASE(codec_values_cross_processes) {
  using table = std::map<std::string, std::vector<int>>;
  auto [a, b] = shmkit::pipe<table>();
  auto [oa, ob] = shmkit::pipe<order>(false);
  pid_t child = spawn([&] {
    table t = b.recv();
    t["added"] = {1, 2, 3};
    t["big"] = std::vector<int>(100000, 7);  // 400 KB: streamed through 64 KiB
    b.send(t);
    ob.send({"ada", {1.5, 2.5}, 3});
    ob.send({std::string(70000, 'c'), {}, std::nullopt});
  });
  a.send({{"x", {1}}, {"y", {}}});
  const table t = a.recv();
  BOOST_CHECK_EQUAL(t.size(), 4u);
  BOOST_CHECK(t.at("x") == std::vector<int>{1});
  BOOST_CHECK(t.at("added") == (std::vector<int>{1, 2, 3}));
  BOOST_CHECK(t.at("big") == std::vector<int>(100000, 7));
  BOOST_CHECK(oa.recv() == (order{"ada", {1.5, 2.5}, 3}));
  BOOST_CHECK(oa.recv() == (order{std::string(70000, 'c'), {}, std::nullopt}));
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  // Bytes that are not a table: shmkit::error, and the pipe goes on.
  const std::array<std::byte, 5> junk{std::byte{0xff}, std::byte{0xff}, std::byte{0xff},
                                      std::byte{0xff}, std::byte{0x01}};
  b.send_bytes(junk);
  b.send({});
  BOOST_CHECK_THROW(a.recv(), shmkit::error);
  BOOST_CHECK(a.recv().empty());
}

BOOST_AUTO_TEST_CASE(strings_of_many_sizes_through_a_small_buffer) {
  // 1 KiB buffer: messages above 504 bytes are streamed, and the wrap-around pads are hit.
  auto [a, b] = shmkit::pipe<std::string>(true, 1024);
  BOOST_CHECK_EQUAL(a.buffer_size(), 1024u);
  pid_t child = spawn([&] {
    for (std::size_t n = 0; n < 3000; n += 37) b.send(std::string(n, static_cast<char>('a' + n % 26)));
    b.send(std::string(1 << 20, 'z'));
  });
  for (std::size_t n = 0; n < 3000; n += 37) {
    const std::string s = a.recv();
    BOOST_REQUIRE_EQUAL(s.size(), n);
    BOOST_REQUIRE(s == std::string(n, static_cast<char>('a' + n % 26)));
  }
  BOOST_CHECK(a.recv() == std::string(1 << 20, 'z'));
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(ping_pong_100000_values_between_two_processes) {
  auto [a, b] = shmkit::pipe<std::uint64_t>();
  constexpr std::uint64_t n = 100000;
  pid_t child = spawn([&] {
    for (;;) {
      const std::uint64_t v = b.recv();
      if (v == n) return;
      b.send(v * 2 + 1);
    }
  });
  for (std::uint64_t i = 0; i < n; ++i) {
    a.send(i);
    const std::uint64_t r = a.recv();
    if (r != i * 2 + 1) BOOST_REQUIRE_EQUAL(r, i * 2 + 1);
  }
  a.send(n);
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(byte_messages_from_0_bytes_to_100_mib_checksummed) {
  const std::size_t buf = shmkit::default_pipe_buffer;
  const std::vector<std::size_t> sizes = {
      0,       1,           7,           8,           9,          63,        64,
      65,      1000,        4095,        4096,        4097,       buf / 2 - 16,
      buf / 2 - 8, buf / 2, buf / 2 + 1, buf - 1,     buf,        buf + 1,
      3 * buf + 5, 1 << 20, (1 << 20) + 3, 10 << 20, 100 << 20};
  auto [rx, tx] = shmkit::pipe<int>(false);
  auto [ack_rx, ack_tx] = shmkit::pipe<std::uint64_t>(false);
  pid_t child = spawn([&] {
    // The child sends each message and its checksum on a second pipe.
    std::uint64_t seed = 1;
    for (std::size_t n : sizes) {
      const auto m = pattern(n, seed++);
      ack_tx.send(checksum(m));
      tx.send_bytes(m);
    }
  });
  for (std::size_t n : sizes) {
    const std::uint64_t want = ack_rx.recv();
    const std::vector<std::byte> got = rx.recv_bytes();
    BOOST_REQUIRE_EQUAL(got.size(), n);
    BOOST_REQUIRE_EQUAL(checksum(got), want);
  }
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  BOOST_CHECK(throws_eof([&] { rx.recv_bytes(); }));
}

BOOST_AUTO_TEST_CASE(recv_bytes_into_a_buffer) {
  auto [a, b] = shmkit::pipe<int>(true, 4096);
  const auto small = pattern(100, 1);
  const auto big = pattern(100000, 2);
  a.send_bytes(small);
  std::vector<std::byte> out(50);
  BOOST_CHECK_THROW(b.recv_bytes_into(out), shmkit::error);  // too short: stays in the pipe
  out.resize(200);
  BOOST_CHECK_EQUAL(b.recv_bytes_into(out), 100u);
  BOOST_CHECK(std::equal(small.begin(), small.end(), out.begin()));
  pid_t child = spawn([&] { a.send_bytes(big); });
  out.resize(big.size());
  BOOST_CHECK_EQUAL(b.recv_bytes_into(out), big.size());
  BOOST_CHECK(out == big);
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(a_message_that_does_not_decode_is_consumed_with_an_error) {
  auto [a, b] = shmkit::pipe<std::int64_t>();
  const std::array<std::byte, 3> three{};
  a.send_bytes(three);
  a.send(77);
  BOOST_CHECK_THROW(b.recv(), shmkit::error);
  BOOST_CHECK_EQUAL(b.recv(), 77);
  // And the other way round: a value read as bytes is its encoding.
  a.send(0x0102030405060708);
  const auto bytes = b.recv_bytes();
  BOOST_CHECK_EQUAL(bytes.size(), 8u);
}

BOOST_AUTO_TEST_CASE(poll_reports_data_and_eof_and_times_out) {
  auto [a, b] = shmkit::pipe<int>();
  BOOST_CHECK(!b.poll());
  const auto t0 = shmkit::detail::clock::now();
  BOOST_CHECK(!b.poll(30ms));
  BOOST_CHECK(shmkit::detail::clock::now() - t0 >= 30ms);
  a.send(5);
  BOOST_CHECK(b.poll());
  BOOST_CHECK(b.poll(1s));
  BOOST_CHECK_EQUAL(b.recv(), 5);
  BOOST_CHECK(!b.poll());
  // A child sends after a while: poll wakes for it.
  pid_t child = spawn([&] {
    std::this_thread::sleep_for(50ms);
    a.send(6);
  });
  BOOST_CHECK(b.poll(60s));
  BOOST_CHECK_EQUAL(b.recv(), 6);
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  // The child used `a` and exited without closing: its death reads as EOF.
  BOOST_CHECK(b.poll(60s));
  BOOST_CHECK(throws_eof([&] { b.recv(); }));
}

BOOST_AUTO_TEST_CASE(eof_after_the_peer_closes_buffered_data_first) {
  auto [a, b] = shmkit::pipe<int>();
  pid_t child = spawn([&] {
    for (int i = 0; i < 3; ++i) b.send(i);
    b.close();
    CHILD_CHECK(b.closed());
    std::this_thread::sleep_for(200ms);  // still alive: the EOF comes from close()
  });
  for (int i = 0; i < 3; ++i) BOOST_CHECK_EQUAL(a.recv(), i);
  BOOST_CHECK(throws_eof([&] { a.recv(); }));
  BOOST_CHECK(throws_eof([&] { a.recv_bytes(); }));
  BOOST_CHECK(throws_eof([&] { a.send(1); }));
  BOOST_CHECK(a.poll());
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(eof_in_one_process_after_close) {
  auto [a, b] = shmkit::pipe<int>();
  b.send(1);
  b.close();
  BOOST_CHECK(b.closed());
  BOOST_CHECK_THROW(b.send(2), shmkit::closed_error);
  BOOST_CHECK_EQUAL(a.recv(), 1);
  BOOST_CHECK(throws_eof([&] { a.recv(); }));
  // A handle never used, closed in a process that never forked: the peer sees EOF too.
  auto [c, d] = shmkit::pipe<int>();
  d.close();
  BOOST_CHECK(throws_eof([&] { c.recv(); }));
  BOOST_CHECK(throws_eof([&] { c.send(3); }));
}

BOOST_AUTO_TEST_CASE(eof_when_the_peer_exits_normally) {
  auto [a, b] = shmkit::pipe<std::string>();
  // _Exit: no destructor runs, so nothing is closed; the dead owner means EOF.
  pid_t child = spawn([&] { b.send("bye"); });
  BOOST_CHECK_EQUAL(a.recv(), "bye");
  BOOST_CHECK(throws_eof([&] { a.recv(); }));
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  // exit() with destructors: the child's handle closes its end.
  auto [c, d] = shmkit::pipe<std::string>();
  std::fflush(nullptr);
  pid_t child2 = ::fork();
  if (child2 == 0) {
    {
      auto mine = std::move(d);
      mine.send("bye too");
    }
    std::_Exit(0);
  }
  BOOST_CHECK_EQUAL(c.recv(), "bye too");
  BOOST_CHECK(throws_eof([&] { c.recv(); }));
  BOOST_CHECK_EQUAL(wait_exit(child2), 0);
}

BOOST_AUTO_TEST_CASE(eof_when_the_peer_is_killed_no_hang) {
  auto [a, b] = shmkit::pipe<int>(true, 4096);
  pid_t child = spawn([&] {
    b.send(1);
    for (;;) b.recv();  // blocks: never returns until killed
  });
  BOOST_CHECK_EQUAL(a.recv(), 1);
  a.send(10);  // the child reads it and blocks again
  kill_and_reap(child);
  BOOST_CHECK(throws_eof([&] { a.recv(); }));
  // Sending to the dead peer: the buffer fills and then send throws; it never hangs.
  bool eof = false;
  for (int i = 0; i < 100000 && !eof; ++i) eof = throws_eof([&] { a.send(i); });
  BOOST_CHECK(eof);
}

BOOST_AUTO_TEST_CASE(a_child_killed_before_it_ever_used_its_end_is_a_dead_peer) {
  for (bool parent_lets_go : {false, true}) {
    auto [a, b] = shmkit::pipe<int>();
    pid_t child = spawn([&] { std::this_thread::sleep_for(1h); });  // never touches b
    if (parent_lets_go) b.close();  // Python's habit; either way the child held the copy
    a.send(1);                      // the parent uses its end
    BOOST_CHECK(!a.poll(50ms));     // the child could still use b: no EOF yet
    kill_and_reap(child);
    // Every process that held b is gone (the parent, having forked, left b to its child).
    BOOST_CHECK(throws_eof([&] { a.recv(); }));
  }
}

BOOST_AUTO_TEST_CASE(an_unused_end_held_by_this_process_is_alive_for_its_threads) {
  auto [a, b] = shmkit::pipe<int>();
  BOOST_CHECK(!a.poll(20ms));  // b is ours: not EOF, just nothing yet
  std::thread t([&b] {
    std::this_thread::sleep_for(200ms);
    b.send(7);
  });
  BOOST_CHECK_EQUAL(a.recv(), 7);  // waits through liveness checks without a false EOF
  t.join();
}

BOOST_AUTO_TEST_CASE(a_sender_blocked_on_a_full_buffer_sees_the_reader_die) {
  auto [rx, tx] = shmkit::pipe<int>(false, 1024);
  pid_t child = spawn([&] {
    rx.poll();  // claims the receiving end, then sleeps without reading
    std::this_thread::sleep_for(1h);
  });
  // Wait until the child holds the end, then fill the buffer until send blocks.
  pid_t killer = spawn([&] {
    std::this_thread::sleep_for(300ms);
    ::kill(child, SIGKILL);
  });
  bool eof = false;
  for (int i = 0; i < 1000000 && !eof; ++i) eof = throws_eof([&] { tx.send(i); });
  BOOST_CHECK(eof);
  BOOST_CHECK_EQUAL(wait_exit(killer), 0);
  BOOST_CHECK_EQUAL(wait_exit(child), -SIGKILL);
}

BOOST_AUTO_TEST_CASE(wait_on_8_pipes_fed_by_8_processes_at_random_times) { fan_in(8, 200); }

BOOST_AUTO_TEST_CASE(wait_without_futex_waitv_polls_and_loses_nothing) {
  shmkit::detail::simulate_missing_futex_waitv(true);
  fan_in(4, 100);
  shmkit::detail::simulate_missing_futex_waitv(false);
}

BOOST_AUTO_TEST_CASE(blocked_calls_sleep_instead_of_spinning) {
  auto [a, b] = shmkit::pipe<int>();
  auto [c, d] = shmkit::pipe<int>();
  // wait() with nothing ready for 400 ms: a few milliseconds of CPU at most, not 400.
  const auto before = cpu_used();
  BOOST_CHECK(shmkit::wait({&a, &c}, 400ms).empty());
  BOOST_CHECK_LT((cpu_used() - before).count(), 150000);
  // recv() blocked 400 ms in a child until the parent sends.
  pid_t child = spawn([&] {
    const auto t0 = cpu_used();
    CHILD_CHECK(b.recv() == 1);
    CHILD_CHECK((cpu_used() - t0).count() < 150000);
  });
  std::this_thread::sleep_for(400ms);
  a.send(1);
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(a_trivially_copyable_value_larger_than_the_buffer_is_streamed) {
  using big = std::array<std::uint32_t, 20000>;  // 80 KB through a 4 KiB buffer
  auto [rx, tx] = shmkit::pipe<big>(false, 4096);
  pid_t child = spawn([&] {
    auto v = std::make_unique<big>();
    for (std::uint32_t round = 0; round < 3; ++round) {
      for (std::size_t i = 0; i < v->size(); ++i) (*v)[i] = static_cast<std::uint32_t>(i * 7 + round);
      tx.send(*v);
    }
  });
  for (std::uint32_t round = 0; round < 3; ++round) {
    const auto v = std::make_unique<big>(rx.recv());
    bool ok = true;
    for (std::size_t i = 0; i < v->size(); ++i) ok = ok && (*v)[i] == i * 7 + round;
    BOOST_CHECK(ok);
  }
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(wait_with_nothing_ready_times_out) {
  auto [a, b] = shmkit::pipe<int>();
  auto [rx, tx] = shmkit::pipe<std::string>(false);
  const auto t0 = shmkit::detail::clock::now();
  BOOST_CHECK(shmkit::wait({&a, &rx}, 50ms).empty());
  BOOST_CHECK(shmkit::detail::clock::now() - t0 >= 50ms);
  BOOST_CHECK(shmkit::wait({&a, &rx}, 0ms).empty());
  tx.send("x");
  const auto r = shmkit::wait({&a, &rx}, 1s);
  BOOST_REQUIRE_EQUAL(r.size(), 1u);
  BOOST_CHECK_EQUAL(r[0], 1u);
  BOOST_CHECK_THROW(shmkit::wait({&a, &tx}, 0ms), std::invalid_argument);
  // A sleeping wait() is woken by a child's send, and by a child's death.
  pid_t child = spawn([&] {
    std::this_thread::sleep_for(50ms);
    b.send(9);
  });
  BOOST_CHECK_EQUAL(rx.recv(), "x");
  const auto r2 = shmkit::wait({&rx, &a}, 60s);
  BOOST_REQUIRE_EQUAL(r2.size(), 1u);
  BOOST_CHECK_EQUAL(r2[0], 1u);
  BOOST_CHECK_EQUAL(a.recv(), 9);
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  const auto r3 = shmkit::wait({&rx, &a}, 60s);  // the child that used `b` is gone: EOF
  BOOST_REQUIRE_EQUAL(r3.size(), 1u);
  BOOST_CHECK(throws_eof([&] { a.recv(); }));
}

BOOST_AUTO_TEST_CASE(named_pipe_opened_by_another_process) {
  const name_guard name(unique_name("pipe"));
  auto [mine, spare] = shmkit::pipe<std::string>(shmkit::create_only, name.name);
  BOOST_CHECK_EQUAL(mine.name(), name.name);
  spare.close();  // never used: let go, so another process can open it
  pid_t child = spawn([&] {
    // Opens by name, as an unrelated process would (the inherited handles stay untouched).
    shmkit::connection<std::string> c(shmkit::open_only, name.name, shmkit::pipe_end::second);
    CHILD_CHECK(c.recv() == "hello");
    c.send("world");
    c.send(std::string(300000, 'q'));
    CHILD_CHECK(c.recv() == "done");
  });
  mine.send("hello");
  BOOST_CHECK_EQUAL(mine.recv(), "world");
  BOOST_CHECK(mine.recv() == std::string(300000, 'q'));
  // The end is in use by the child: nobody else may open it.
  BOOST_CHECK_THROW(shmkit::connection<std::string>(shmkit::open_only, name.name,
                                                    shmkit::pipe_end::second),
                    shmkit::error);
  mine.send("done");
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  BOOST_CHECK(throws_eof([&] { mine.recv(); }));
  // An end whose process died cannot be opened again.
  BOOST_CHECK_THROW(shmkit::connection<std::string>(shmkit::open_only, name.name,
                                                    shmkit::pipe_end::second),
                    shmkit::error);
}

BOOST_AUTO_TEST_CASE(the_creators_spare_end_is_taken_by_an_opener) {
  const name_guard name(unique_name("pipe"));
  auto [mine, spare] = shmkit::pipe<int>(shmkit::create_only, name.name, false);
  // `spare` (second, the sending end) is kept but never used: an opener takes it over.
  pid_t child = spawn([&] {
    shmkit::connection<int> tx(shmkit::open_only, name.name, shmkit::pipe_end::second);
    for (int i = 0; i < 1000; ++i) tx.send(i);
  });
  for (int i = 0; i < 1000; ++i) BOOST_REQUIRE_EQUAL(mine.recv(), i);
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
  BOOST_CHECK(throws_eof([&] { mine.recv(); }));
}

BOOST_AUTO_TEST_CASE(open_or_create_lets_two_processes_meet) {
  const name_guard name(unique_name("pipe"));
  // Whichever comes first creates the pipe; each takes its own end and they talk.
  auto side = [&](shmkit::pipe_end end, int mine, int theirs) {
    return spawn([&, end, mine, theirs] {
      shmkit::connection<int> c(shmkit::open_or_create, name.name, end);
      c.send(mine);
      CHILD_CHECK(c.recv() == theirs);
    });
  };
  pid_t p1 = side(shmkit::pipe_end::first, 1, 2);
  pid_t p2 = side(shmkit::pipe_end::second, 2, 1);
  BOOST_CHECK(wait_all_ok({p1, p2}));
}

BOOST_AUTO_TEST_CASE(opening_with_another_element_type_throws) {
  const name_guard name(unique_name("pipe"));
  auto ends = shmkit::pipe<int>(shmkit::create_only, name.name);
  try {
    shmkit::connection<double> c(shmkit::open_only, name.name, shmkit::pipe_end::second);
    BOOST_FAIL("opened a pipe<int> as a pipe<double>");
  } catch (const shmkit::error& e) {
    const std::string what = e.what();
    BOOST_TEST_MESSAGE(what);
    BOOST_CHECK(what.find("int") != std::string::npos);
    BOOST_CHECK(what.find("double") != std::string::npos);
  }
  BOOST_CHECK_THROW(shmkit::connection<std::string>(shmkit::open_only, name.name,
                                                    shmkit::pipe_end::first),
                    shmkit::error);
  BOOST_CHECK_THROW(shmkit::connection<int>(shmkit::open_only, unique_name("missing"),
                                            shmkit::pipe_end::first),
                    shmkit::error);
  BOOST_CHECK_THROW(shmkit::pipe<int>(shmkit::create_only, name.name), shmkit::error);
  BOOST_CHECK_THROW(shmkit::pipe<int>(shmkit::create_only, "bad name!"), std::invalid_argument);
  BOOST_CHECK_THROW(shmkit::pipe<int>(true, 0), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(the_shmkit_command_sees_a_pipes_ends_and_buffered_bytes) {
  const name_guard name(unique_name("pipe"));
  auto [a, b] = shmkit::pipe<int>(shmkit::create_only, name.name, false, 4096);
  b.send(1);
  b.send(2);
  const auto r = shmkit::detail::inspect_file(shmkit::file_name(name.name));
  BOOST_REQUIRE(r.status == shmkit::detail::object_status::ok);
  auto line = [&](std::string_view key) {
    for (const auto& [k, v] : r.details)
      if (k == key) return v;
    return std::string("(missing)");
  };
  BOOST_CHECK_EQUAL(line("direction"), "one-way (first receives)");
  BOOST_CHECK_EQUAL(line("buffer"), "4096 bytes each way");
  BOOST_CHECK_EQUAL(line("to first"), "32 bytes buffered");  // two 16-byte frames
  BOOST_CHECK_EQUAL(line("end second"), fmt::format("used by pid {} (alive)", ::getpid()));
  BOOST_CHECK_EQUAL(line("end first"), fmt::format("unused, held by pid {}", ::getpid()));
}

BOOST_AUTO_TEST_CASE(parent_closing_the_childs_end_after_fork_is_harmless) {
  // Python's idiom: after fork, each side closes the end it does not use.
  for (int round = 0; round < 2; ++round) {
    auto [a, b] = shmkit::pipe<int>();
    pid_t child = spawn([&] {
      a.close();  // the parent's end: only let go here
      if (round == 1) std::this_thread::sleep_for(50ms);  // the parent closes b first
      b.send(round);
      CHILD_CHECK(b.recv() == round + 100);
    });
    if (round == 0) std::this_thread::sleep_for(50ms);  // the child claims b first
    b.close();  // the child's end: only let go here
    BOOST_CHECK_EQUAL(a.recv(), round);
    a.send(round + 100);
    BOOST_CHECK_EQUAL(wait_exit(child), 0);
    BOOST_CHECK(throws_eof([&] { a.recv(); }));
  }
}

BOOST_AUTO_TEST_CASE(no_futex_call_while_nobody_sleeps) {
  auto [a, b] = shmkit::pipe<int>();
  const auto before = shmkit::detail::futex_calls();
  for (int i = 0; i < 1000; ++i) {
    a.send(i);
    BOOST_REQUIRE_EQUAL(b.recv(), i);
  }
  for (std::size_t i = 0; i < 1000; ++i) {
    b.send_bytes(pattern(i * 50, 3));  // up to 50 KB: streamed above 32 KB
    BOOST_REQUIRE_EQUAL(a.recv_bytes().size(), i * 50);
  }
  const auto after = shmkit::detail::futex_calls();
  BOOST_CHECK_EQUAL(after.wakes, before.wakes);
  BOOST_CHECK_EQUAL(after.waits, before.waits);
  BOOST_CHECK_EQUAL(after.heavy_fences, before.heavy_fences);
}

BOOST_AUTO_TEST_CASE(moved_and_empty_handles) {
  auto [a, b] = shmkit::pipe<int>();
  shmkit::connection<int> c = std::move(a);
  BOOST_CHECK(a.closed());
  BOOST_CHECK(!c.closed());
  c.send(3);
  BOOST_CHECK_EQUAL(b.recv(), 3);
  BOOST_CHECK_THROW(a.send(1), shmkit::closed_error);
  BOOST_CHECK_THROW(a.poll(), shmkit::closed_error);
  a.close();  // idempotent on an empty handle
  shmkit::connection<int> empty;
  BOOST_CHECK(empty.closed());
  BOOST_CHECK_THROW(shmkit::wait({&empty}, 0ms), std::invalid_argument);
}
