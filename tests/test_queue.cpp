// SPDX-License-Identifier: MIT
// shmkit::queue and shmkit::joinable_queue: the public contract, with real processes.
#define BOOST_TEST_MODULE queue
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <atomic>
#include <boost/mpl/list.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "shmkit/queue.hpp"
#include "support.hpp"

using namespace std::chrono_literals;

namespace {

using shmkit::test::name_guard;
using shmkit::test::spawn;
using shmkit::test::unique_name;
using shmkit::test::wait_exit;

// A raw type that fills a compact slot of 64 bytes, one that fills a slot exactly, and one
// that must go out of line.
struct line_sized {
  std::uint64_t id;
  std::array<std::uint8_t, 48> fill;
};
static_assert(shmkit::detail::queue_compact_slot_bytes(sizeof(line_sized)) == 64);
struct slot_sized {
  std::uint64_t id;
  std::array<std::uint8_t, 88> fill;
};
static_assert(sizeof(slot_sized) == shmkit::detail::queue_inline_bytes);
struct oversized {
  std::uint64_t id;
  std::array<std::uint8_t, 400> fill;
};

template <class T>
T make(std::uint64_t i) {
  if constexpr (std::is_same_v<T, std::string>) {
    // Sizes that cross the inline limit both ways.
    return std::string(i * 37 % 300, static_cast<char>('a' + i % 26)) + std::to_string(i);
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(i * 2654435761u);
  } else {
    T v{};
    v.id = i;
    v.fill.fill(static_cast<std::uint8_t>(i));
    return v;
  }
}

template <class T>
bool same(const T& a, const T& b) {
  if constexpr (std::is_same_v<T, std::string> || std::is_integral_v<T>)
    return a == b;
  else
    return a.id == b.id && a.fill == b.fill;
}

// Process-shared scratch memory for children to report into.
template <class T>
T* shared_scratch(std::size_t n = 1) {
  void* p =
      ::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(p != MAP_FAILED);
  return static_cast<T*>(p);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

using element_types =
    boost::mpl::list<int, std::uint64_t, line_sized, slot_sized, oversized, std::string>;

BOOST_AUTO_TEST_CASE_TEMPLATE(fifo_within_one_process, T, element_types) {
  for (std::size_t cap : {1u, 3u, 16u}) {
    shmkit::queue<T> q(cap);
    BOOST_TEST(q.capacity() == cap);
    BOOST_TEST(q.empty());
    std::uint64_t next_in = 0, next_out = 0;
    for (int round = 0; round < 50; ++round) {
      while (q.try_put(make<T>(next_in))) ++next_in;
      BOOST_TEST(q.full());
      BOOST_TEST(q.size() == cap);
      const std::size_t take = 1 + round % cap;
      for (std::size_t k = 0; k < take; ++k) {
        T v = q.get();
        BOOST_TEST(same(v, make<T>(next_out)));
        ++next_out;
      }
    }
    while (auto v = q.try_get()) {
      BOOST_TEST(same(*v, make<T>(next_out)));
      ++next_out;
    }
    BOOST_TEST(next_in == next_out);
    BOOST_TEST(q.empty());
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(one_producer_process_keeps_order, T, element_types) {
  shmkit::queue<T> q(8);
  constexpr std::uint64_t n = 20000;
  pid_t child = spawn([&] {
    for (std::uint64_t i = 0; i < n; ++i) q.put(make<T>(i));
  });
  for (std::uint64_t i = 0; i < n; ++i) {
    T v = q.get();
    if (!same(v, make<T>(i))) {
      BOOST_TEST(same(v, make<T>(i)), "message " << i);
      break;
    }
  }
  BOOST_TEST(wait_exit(child) == 0);
  BOOST_TEST(q.empty());
}

BOOST_AUTO_TEST_CASE(named_four_ways, *boost::unit_test::timeout(120)) {
  name_guard name(unique_name("q"));
  {
    shmkit::queue<int> a(shmkit::create_only, name.name, 4);
    BOOST_TEST(a.name() == name.name);
    BOOST_CHECK_THROW(shmkit::queue<int>(shmkit::create_only, name.name, 4), shmkit::error);
    shmkit::queue<int> b(shmkit::open_only, name.name);
    shmkit::queue<int> c(shmkit::open_or_create, name.name, 99);  // opens: capacity stays 4
    BOOST_TEST(c.capacity() == 4u);
    a.put(7);
    BOOST_TEST(b.get() == 7);
    pid_t child = spawn([&] {
      shmkit::queue<int> d(shmkit::open_only, name.name);
      d.put(42);
    });
    BOOST_TEST(wait_exit(child) == 0);
    BOOST_TEST(c.get() == 42);
    // Mismatches are errors, never garbage.
    BOOST_CHECK_THROW(shmkit::queue<long>(shmkit::open_only, name.name), shmkit::error);
    BOOST_CHECK_THROW(shmkit::joinable_queue<int>(shmkit::open_only, name.name), shmkit::error);
  }
  // The creator's handle removed the name.
  BOOST_CHECK_THROW(shmkit::queue<int>(shmkit::open_only, name.name), shmkit::error);
  {
    shmkit::queue<int> a(shmkit::open_or_create, name.name, 2);  // creates
    BOOST_TEST(a.capacity() == 2u);
    a.release_name();
  }
  shmkit::queue<int> again(shmkit::open_only, name.name);  // survived its creator
  BOOST_TEST(again.capacity() == 2u);
  BOOST_TEST(shmkit::remove(name.name));
  BOOST_CHECK_THROW(shmkit::queue<int>(shmkit::open_only, "bad name!"), std::invalid_argument);
  BOOST_CHECK_THROW(shmkit::queue<int>(0), std::invalid_argument);
}

// Each handle looks first past its own last claim and moves the shared counters lazily:
// handles that take turns walk past each other's claims, and size() still counts exactly.
BOOST_AUTO_TEST_CASE(handles_taking_turns_share_positions, *boost::unit_test::timeout(120)) {
  name_guard name(unique_name("qturns"));
  shmkit::queue<std::uint64_t> a(shmkit::create_only, name.name, 8);
  shmkit::queue<std::uint64_t> b(shmkit::open_only, name.name);
  std::uint64_t next = 0, expect = 0;
  for (int round = 0; round < 40; ++round) {  // many laps of 8 slots
    const int puts = 1 + round % 7;
    for (int i = 0; i < puts; ++i) ((i + round) % 3 == 0 ? a : b).put(next++);
    BOOST_TEST(a.size() == std::size_t(puts));
    BOOST_TEST(b.size() == std::size_t(puts));
    for (int i = 0; i < puts; ++i) BOOST_TEST(((i + round) % 2 == 0 ? b : a).get() == expect++);
    BOOST_TEST(a.empty());
    BOOST_TEST(!b.try_get().has_value());
  }
  for (std::uint64_t i = 0; i < 8; ++i) a.put(i);
  BOOST_TEST(b.full());
  BOOST_TEST(!b.try_put(9));
}

BOOST_AUTO_TEST_CASE(permissions_are_owner_only_by_default, *boost::unit_test::timeout(120)) {
  name_guard name(unique_name("qperm"));
  shmkit::queue<int> a(shmkit::create_only, name.name, 4);
  struct stat st {};
  BOOST_REQUIRE(::stat(("/dev/shm/" + shmkit::file_name(name.name)).c_str(), &st) == 0);
  BOOST_TEST((st.st_mode & 0777) == 0600u);
}

BOOST_AUTO_TEST_CASE(try_calls_return_at_once, *boost::unit_test::timeout(120)) {
  shmkit::queue<int> q(2);
  const auto t0 = std::chrono::steady_clock::now();
  BOOST_TEST(!q.try_get().has_value());
  BOOST_TEST(q.try_put(1));
  BOOST_TEST(q.try_put(2));
  BOOST_TEST(!q.try_put(3));
  BOOST_TEST(seconds_since(t0) < 2.0);  // generous: "at once" on a loaded machine
  BOOST_TEST(q.size() == 2u);
  BOOST_TEST(*q.try_get() == 1);
}

BOOST_AUTO_TEST_CASE(timed_calls_time_out, *boost::unit_test::timeout(120)) {
  shmkit::queue<std::string> q(1);
  auto t0 = std::chrono::steady_clock::now();
  BOOST_TEST(!q.get_for(50ms).has_value());
  double waited = seconds_since(t0);
  BOOST_TEST(waited >= 0.049);
  BOOST_TEST(waited < 10.0);
  BOOST_TEST(q.put_for(std::string("x"), 50ms));
  t0 = std::chrono::steady_clock::now();
  BOOST_TEST(!q.put_for(std::string("y"), 50ms));
  waited = seconds_since(t0);
  BOOST_TEST(waited >= 0.049);
  BOOST_TEST(waited < 10.0);
  BOOST_TEST(*q.get_until(std::chrono::system_clock::now() + 1s) == "x");
  BOOST_TEST(!q.get_for(0ms).has_value());
  BOOST_TEST(!q.get_for(-5ms).has_value());
}

BOOST_AUTO_TEST_CASE(close_wakes_blocked_consumers_and_producers, *boost::unit_test::timeout(120)) {
  shmkit::queue<int> q(1);
  auto* status = shared_scratch<std::atomic<int>>(2);
  new (status) std::atomic<int>(0);
  new (status + 1) std::atomic<int>(0);
  // Two consumers block on the empty queue.
  std::vector<pid_t> consumers;
  for (int i = 0; i < 2; ++i)
    consumers.push_back(spawn([&] {
      try {
        (void)q.get();
        CHILD_CHECK(false);
      } catch (const shmkit::closed_error&) {
        status[0].fetch_add(1);
      }
    }));
  std::this_thread::sleep_for(100ms);
  q.close();
  for (pid_t c : consumers) BOOST_TEST(wait_exit(c, 30s) == 0);
  BOOST_TEST(status[0].load() == 2);
  BOOST_TEST(q.closed());
  BOOST_CHECK_THROW(q.put(1), shmkit::closed_error);
  BOOST_CHECK_THROW(q.try_put(1), shmkit::closed_error);

  // A producer blocked on a full queue.
  shmkit::queue<int> r(1);
  r.put(1);
  pid_t producer = spawn([&] {
    try {
      r.put(2);
      CHILD_CHECK(false);
    } catch (const shmkit::closed_error&) {
      status[1].store(1);
    }
  });
  std::this_thread::sleep_for(100ms);
  r.close();
  BOOST_TEST(wait_exit(producer, 30s) == 0);
  BOOST_TEST(status[1].load() == 1);
  // get drains what is left, then throws.
  BOOST_TEST(r.get() == 1);
  BOOST_CHECK_THROW(r.get(), shmkit::closed_error);
  BOOST_CHECK_THROW(r.try_get(), shmkit::closed_error);
  BOOST_CHECK_THROW(r.get_for(10ms), shmkit::closed_error);
  BOOST_CHECK_THROW(r.get_many(3), shmkit::closed_error);
  ::munmap(status, 2 * sizeof(std::atomic<int>));
}

BOOST_AUTO_TEST_CASE(close_drains_many_then_throws, *boost::unit_test::timeout(120)) {
  shmkit::queue<std::string> q(64);
  for (int i = 0; i < 50; ++i) q.put(std::string(i * 10, 'z'));
  q.close();
  BOOST_CHECK_THROW(q.put("late"), shmkit::closed_error);
  int got = 0;
  for (;;) {
    try {
      auto v = q.get();
      BOOST_TEST(v.size() == std::size_t(got) * 10);
      ++got;
    } catch (const shmkit::closed_error&) {
      break;
    }
  }
  BOOST_TEST(got == 50);
}

BOOST_AUTO_TEST_CASE(megabyte_strings_through_capacity_16, *boost::unit_test::timeout(120)) {
  shmkit::queue<std::string> q(16);
  constexpr int n = 64;
  pid_t child = spawn([&] {
    for (int i = 0; i < n; ++i) {
      std::string s(1 << 20, static_cast<char>('A' + i % 26));
      std::memcpy(s.data(), &i, sizeof i);
      q.put(s);
    }
  });
  for (int i = 0; i < n; ++i) {
    std::string s = q.get();
    if (s.size() != std::size_t(1) << 20) {
      BOOST_TEST(s.size() == std::size_t(1) << 20);
      break;  // the child is reaped (by the watchdog if need be) below
    }
    int tag;
    std::memcpy(&tag, s.data(), sizeof tag);
    BOOST_TEST(tag == i);
    BOOST_TEST(s.find_first_not_of(static_cast<char>('A' + i % 26), sizeof tag) ==
               std::string::npos);
  }
  BOOST_TEST(wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(four_megabyte_string_through_capacity_16, *boost::unit_test::timeout(120)) {
  shmkit::queue<std::string> q(16);
  std::string big(4 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  pid_t child = spawn([&] {
    for (int i = 0; i < 6; ++i) q.put(big);
  });
  for (int i = 0; i < 6; ++i) BOOST_TEST((q.get() == big));
  BOOST_TEST(wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(message_larger_than_the_heap_throws_and_changes_nothing,
                     *boost::unit_test::timeout(120)) {
  shmkit::queue<std::string> q(4, shmkit::queue_options{.heap_bytes = 64 << 10});
  q.put("before");
  BOOST_CHECK_THROW(q.put(std::string(65 << 10, 'x')), shmkit::error);
  BOOST_CHECK_THROW(q.try_put(std::string(65 << 10, 'x')), shmkit::error);
  BOOST_TEST(q.size() == 1u);
  q.put(std::string(60 << 10, 'y'));  // fits
  BOOST_TEST(q.get() == "before");
  BOOST_TEST(q.get().size() == std::size_t(60) << 10);
  BOOST_TEST(q.empty());
  // No heap at all: slot-sized messages only.
  shmkit::queue<std::string> tiny(4, shmkit::queue_options{.heap_bytes = 0});
  tiny.put(std::string(80, 'a'));
  BOOST_CHECK_THROW(tiny.put(std::string(200, 'b')), shmkit::error);
  BOOST_TEST(tiny.get() == std::string(80, 'a'));
  BOOST_TEST(q.max_message_bytes() == std::size_t(64) << 10);
}

BOOST_AUTO_TEST_CASE(a_message_that_fits_later_waits_for_space, *boost::unit_test::timeout(120)) {
  // Heap for two 40 KiB messages; a third waits until a consumer frees one.
  shmkit::queue<std::string> q(8, shmkit::queue_options{.heap_bytes = 96 << 10});
  q.put(std::string(40 << 10, '1'));
  q.put(std::string(40 << 10, '2'));
  BOOST_TEST(!q.try_put(std::string(40 << 10, '3')));
  BOOST_TEST(!q.put_for(std::string(40 << 10, '3'), 20ms));
  pid_t child = spawn([&] {
    std::this_thread::sleep_for(50ms);
    CHILD_CHECK(q.get() == std::string(40 << 10, '1'));
  });
  q.put(std::string(40 << 10, '3'));  // blocks until the child got one
  BOOST_TEST(wait_exit(child) == 0);
  BOOST_TEST(q.get() == std::string(40 << 10, '2'));
  BOOST_TEST(q.get() == std::string(40 << 10, '3'));
}

BOOST_AUTO_TEST_CASE_TEMPLATE(batches, T, element_types) {
  shmkit::queue<T> q(16);
  std::vector<T> in;
  for (std::uint64_t i = 0; i < 1000; ++i) in.push_back(make<T>(i));
  pid_t child = spawn([&] { q.put_many(in); });
  std::uint64_t next = 0;
  while (next < in.size()) {
    std::vector<T> got = q.get_many(7);
    if (got.empty()) {
      BOOST_TEST(!got.empty());
      break;
    }
    BOOST_TEST(got.size() <= 7u);
    for (const T& v : got) {
      BOOST_TEST(same(v, in[next]));
      ++next;
    }
  }
  BOOST_TEST(next == in.size());
  BOOST_TEST(wait_exit(child) == 0);
  BOOST_TEST(q.get_many(0).empty());
  // A batch larger than the capacity goes through in runs.
  q.put_many(std::span<const T>(in.data(), 10));
  auto got = q.get_many(100);
  BOOST_TEST(got.size() == 10u);
}

BOOST_AUTO_TEST_CASE(many_processes_exactly_once, *boost::unit_test::timeout(120)) {
  shmkit::queue<std::uint64_t> q(32);
  constexpr int producers = 3, consumers = 3;
  constexpr std::uint64_t per = 20000;
  auto* seen = shared_scratch<std::atomic<std::uint8_t>>(producers * per);
  std::vector<pid_t> kids;
  for (int p = 0; p < producers; ++p)
    kids.push_back(spawn([&, p] {
      for (std::uint64_t i = 0; i < per; ++i) q.put(p * per + i);
    }));
  for (int c = 0; c < consumers; ++c)
    kids.push_back(spawn([&] {
      try {
        for (;;) seen[q.get()].fetch_add(1);
      } catch (const shmkit::closed_error&) {
      }
    }));
  for (int p = 0; p < producers; ++p) BOOST_TEST(wait_exit(kids[p]) == 0);
  q.close();
  for (int c = 0; c < consumers; ++c) BOOST_TEST(wait_exit(kids[producers + c]) == 0);
  std::size_t bad = 0;
  for (std::uint64_t i = 0; i < producers * per; ++i) bad += seen[i].load() != 1;
  BOOST_TEST(bad == 0u);
  ::munmap(seen, producers * per);
}

// Two processes answering each other through two small queues: every get waits for the
// other side's put (the one-message paths: queue_ring::try_one() and await_one()), on a
// joinable_queue too (each get counted before its slot is freed), and with get(), get(T&)
// and get_for() in turn.
BOOST_AUTO_TEST_CASE(ping_pong_between_processes, *boost::unit_test::timeout(120)) {
  constexpr std::uint64_t rounds = 20000;
  shmkit::queue<std::uint64_t> there(4);
  shmkit::joinable_queue<std::uint64_t> back(2);
  pid_t child = spawn([&] {
    std::uint64_t v = 0;
    for (std::uint64_t i = 0; i < rounds; ++i) {
      there.get(v);
      CHILD_CHECK(v == 3 * i + 1);
      back.put(v + 1);
    }
    CHILD_CHECK(there.get() == 0);  // the last message: then the parent closes
    try {
      (void)there.get();
      CHILD_CHECK(false);
    } catch (const shmkit::closed_error&) {
    }
  });
  std::uint64_t bad = 0;
  for (std::uint64_t i = 0; i < rounds; ++i) {
    there.put(3 * i + 1);
    std::uint64_t r = 0;
    switch (i % 3) {
      case 0: r = back.get(); break;
      case 1: back.get(r); break;
      default: r = back.get_for(60s).value_or(0);
    }
    bad += r != 3 * i + 2;
    back.task_done();
  }
  BOOST_TEST(bad == 0u);
  BOOST_TEST(back.join_for(10s));
  BOOST_CHECK_THROW(back.task_done(), std::logic_error);
  there.put(0);
  while (there.size() != 0) std::this_thread::sleep_for(1ms);
  there.close();
  BOOST_TEST(wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(joinable_task_done_and_join, *boost::unit_test::timeout(120)) {
  shmkit::joinable_queue<int> q(8);
  BOOST_CHECK_THROW(q.task_done(), std::logic_error);
  q.join();  // nothing put: returns at once
  for (int i = 0; i < 20; ++i) {
    if (i >= 8) break;
    q.put(i);
  }
  BOOST_TEST(!q.join_for(20ms));
  pid_t worker = spawn([&] {
    for (int i = 0; i < 8; ++i) {
      CHILD_CHECK(q.get() == i);
      std::this_thread::sleep_for(2ms);
      q.task_done();
    }
  });
  q.join();
  BOOST_TEST(wait_exit(worker) == 0);
  BOOST_CHECK_THROW(q.task_done(), std::logic_error);
  // A joinable_queue is a queue.
  shmkit::queue<int>& plain = q;
  plain.put(5);
  BOOST_TEST(plain.get() == 5);
  BOOST_TEST(!q.join_for(10ms));
  q.task_done();
  BOOST_TEST(q.join_for(10s));
  // Named: kinds do not mix.
  name_guard name(unique_name("jq"));
  shmkit::joinable_queue<int> j(shmkit::create_only, name.name, 4);
  BOOST_CHECK_THROW(shmkit::queue<int>(shmkit::open_only, name.name), shmkit::error);
  shmkit::joinable_queue<int> j2(shmkit::open_only, name.name);
  j.put(1);
  BOOST_TEST(j2.get() == 1);
  j2.task_done();
  j.join();
}

BOOST_AUTO_TEST_CASE(idle_blocked_consumer_uses_no_cpu, *boost::unit_test::timeout(120)) {
  shmkit::queue<int> q(4);
  pid_t child = spawn([&] {
    try {
      (void)q.get();
    } catch (const shmkit::closed_error&) {
    }
  });
  std::this_thread::sleep_for(1s);
  q.close();
  int status = 0;
  rusage ru{};
  BOOST_REQUIRE(::wait4(child, &status, 0, &ru) == child);
  BOOST_TEST(WIFEXITED(status));
  const double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                     ru.ru_stime.tv_usec / 1e6;
  BOOST_TEST_MESSAGE("consumer blocked 1 s used " << cpu * 1000 << " ms of CPU (" << cpu * 100
                                                  << "% of a core)");
  std::printf("idle consumer: %.3f ms CPU over 1 s blocked (%.3f%% of a core)\n", cpu * 1000,
              cpu * 100);
  BOOST_TEST(cpu < 0.2);  // generous (a loaded machine); expected well under 1%
}

BOOST_AUTO_TEST_CASE(moved_handles_keep_working, *boost::unit_test::timeout(120)) {
  shmkit::queue<int> a(4);
  a.put(1);
  shmkit::queue<int> b(std::move(a));
  BOOST_TEST(b.get() == 1);
  shmkit::queue<int> c(2);
  c = std::move(b);
  c.put(3);
  BOOST_TEST(c.get() == 3);
  BOOST_TEST(c.capacity() == 4u);
}

namespace {

// A user type with serialize(): strings, containers and a map, any size.
struct user_record {
  std::string name;
  int age = 0;
  std::vector<double> scores;
  std::map<std::string, int> tags;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(name, age, scores, tags);
  }
  bool operator==(const user_record&) const = default;
};

user_record make_record(int i) {
  user_record r{"user-" + std::to_string(i), i, {}, {}};
  r.scores.assign(static_cast<std::size_t>(i % 7 == 0 ? 20000 : i % 5), i * 0.5);
  r.tags["k" + std::to_string(i % 3)] = i;
  return r;
}

std::vector<std::string> make_strings(int i) {
  std::vector<std::string> v;
  for (int k = 0; k < i % 9; ++k)
    v.push_back(std::string(static_cast<std::size_t>(k * i % 300), 'v'));
  if (i % 50 == 0) v.push_back(std::string(1 << 20, 'L'));  // a megabyte in the middle
  return v;
}

// Counts live objects, to show that the queue's own path leaks none.
struct counted {
  static inline int live = 0;
  int v = 0;
  counted() { ++live; }
  explicit counted(int x) : v(x) { ++live; }
  counted(const counted& o) : v(o.v) { ++live; }
  counted& operator=(const counted&) = default;
  ~counted() { --live; }
  template <class Ar>
  void serialize(Ar& ar) {
    ar(v);
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(vectors_of_strings_between_processes, *boost::unit_test::timeout(120)) {
  shmkit::queue<std::vector<std::string>> q(16);
  constexpr int n = 200;
  pid_t child = spawn([&] {
    for (int i = 0; i < n; i += 2) {
      q.put(make_strings(i));
      const std::vector<std::vector<std::string>> two{make_strings(i + 1)};
      q.put_many(two);
    }
  });
  for (int i = 0; i < n; ++i) BOOST_TEST((q.get() == make_strings(i)), "message " << i);
  BOOST_TEST(wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(user_struct_with_serialize_between_processes,
                     *boost::unit_test::timeout(120)) {
  shmkit::queue<user_record> q(4);
  constexpr int n = 100;
  pid_t child = spawn([&] {
    for (int i = 0; i < n; ++i) q.put(make_record(i));
  });
  int i = 0;
  while (i < n) {
    for (const user_record& r : q.get_many(3)) {
      BOOST_TEST((r == make_record(i)), "record " << i);
      ++i;
    }
  }
  BOOST_TEST(wait_exit(child) == 0);
  // Named, opened by type: a queue of records is not a queue of strings.
  name_guard name(unique_name("rec"));
  shmkit::queue<user_record> a(shmkit::create_only, name.name, 2);
  BOOST_CHECK_THROW(shmkit::queue<std::string>(shmkit::open_only, name.name), shmkit::error);
}

BOOST_AUTO_TEST_CASE(no_element_leaks_in_the_queue_path, *boost::unit_test::timeout(60)) {
  {
    shmkit::queue<counted> q(8);
    const int before = counted::live;
    for (int round = 0; round < 20; ++round) {
      for (int i = 0; i < 5; ++i) q.put(counted(i));
      std::vector<counted> batch(3, counted(9));
      q.put_many(batch);
      BOOST_TEST(q.get().v == 0);
      (void)q.try_get();
      auto rest = q.get_many(10);
      BOOST_TEST(rest.size() == 6u);
      BOOST_TEST(counted::live == before + 3 + 6);
    }
    BOOST_TEST(counted::live == before);
  }
  BOOST_TEST(counted::live == 0);
}

BOOST_AUTO_TEST_CASE(getting_into_existing_objects, *boost::unit_test::timeout(60)) {
  shmkit::queue<std::string> q(8);
  std::string out;
  out.reserve(1 << 20);
  const char* before = out.data();
  q.put(std::string(300 << 10, 'a'));
  q.get(out);
  BOOST_TEST(out == std::string(300 << 10, 'a'));
  BOOST_TEST(static_cast<const void*>(out.data()) == static_cast<const void*>(before));  // reused
  // Batches: the vector takes the size of what was got, its elements are refilled.
  std::vector<std::string> outs(5, std::string(10, 'x'));
  for (int i = 0; i < 3; ++i) q.put(std::string(i * 100, char('0' + i)));
  BOOST_TEST(q.get_many(outs, 10) == 3u);
  BOOST_REQUIRE(outs.size() == 3u);
  for (int i = 0; i < 3; ++i) BOOST_TEST(outs[i] == std::string(i * 100, char('0' + i)));
  for (int i = 0; i < 6; ++i) q.put(std::to_string(i));
  BOOST_TEST(q.get_many(outs, 4) == 4u);
  BOOST_TEST(outs.size() == 4u);
  BOOST_TEST(outs[3] == "3");
  // Raw types too.
  shmkit::queue<slot_sized> r(2);
  r.put(make<slot_sized>(5));
  slot_sized v{};
  r.get(v);
  BOOST_TEST(same(v, make<slot_sized>(5)));
  q.close();
  BOOST_TEST(q.get_many(outs, 4) == 2u);  // what was left, then closed
  BOOST_CHECK_THROW(q.get_many(outs, 4), shmkit::closed_error);
  BOOST_CHECK_THROW(q.get(out), shmkit::closed_error);
}
