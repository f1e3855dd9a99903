// SPDX-License-Identifier: MIT
// shmkit::value and shmkit::array: the four ways, element types checked on open, exact
// counts under the lock from real processes, update(), and a holder killed in the middle.
#define BOOST_TEST_MODULE shared
#include <boost/test/unit_test.hpp>

#include <csignal>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <string>

#include "shmkit/shared.hpp"
#include "support.hpp"

using shmkit::test::name_guard;
using shmkit::test::spawn;
using shmkit::test::unique_name;
using shmkit::test::wait_all_ok;

namespace {

struct point {
  double x, y, z;
  long n;
};

}  // namespace

BOOST_AUTO_TEST_CASE(value_calls) {
  shmkit::value<long> v(5);
  BOOST_TEST(v.load() == 5);
  v.store(7);
  BOOST_TEST(v.load() == 7);
  BOOST_TEST(v.update([](long& x) { x *= 3; }) == 21);
  BOOST_TEST(v.load() == 21);
  {
    // Under get_lock(), load and store use the lock the caller holds (Python's RLock habit).
    std::lock_guard g(v.get_lock());
    v.store(v.load() + 1);
  }
  BOOST_TEST(v.load() == 22);
  BOOST_CHECK_THROW(v.update([](long&) { throw std::runtime_error("no"); }), std::runtime_error);
  BOOST_TEST(v.load() == 22);
  BOOST_TEST(v.get_lock().try_lock());  // update released it despite the throw
  v.get_lock().unlock();

  shmkit::value<point> p(point{1, 2, 3, 4});
  BOOST_TEST(p.load().z == 3);
  p.update([](point& q) { q.n += 10; });
  BOOST_TEST(p.load().n == 14);
}

BOOST_AUTO_TEST_CASE(value_four_ways_and_types) {
  const name_guard g(unique_name("value"));
  {
    shmkit::value<int> a(shmkit::create_only, g.name, 3);
    BOOST_CHECK_THROW(shmkit::value<int>(shmkit::create_only, g.name), shmkit::error);
    shmkit::value<int> b(shmkit::open_only, g.name);
    BOOST_TEST(b.load() == 3);
    shmkit::value<int> c(shmkit::open_or_create, g.name, 99);  // exists: 99 is not used
    BOOST_TEST(c.load() == 3);
    c.store(4);
    BOOST_TEST(a.load() == 4);
    try {
      shmkit::value<double> wrong(shmkit::open_only, g.name);
      BOOST_FAIL("opened a value<int> as a value<double>");
    } catch (const shmkit::error& e) {
      const std::string m = e.what();
      BOOST_TEST(m.find("int") != std::string::npos, m);
      BOOST_TEST(m.find("double") != std::string::npos, m);
    }
    BOOST_CHECK_THROW(shmkit::array<int>(shmkit::open_only, g.name), shmkit::error);
  }
  BOOST_CHECK_THROW(shmkit::value<int>(shmkit::open_only, g.name), shmkit::error);
  shmkit::value<int> d(shmkit::open_or_create, g.name, 9);
  BOOST_TEST(d.load() == 9);
}

BOOST_AUTO_TEST_CASE(value_counts_exactly_across_processes) {
  shmkit::value<long> counter(0);
  const name_guard g(unique_name("counter"));
  shmkit::value<long> named(shmkit::create_only, g.name, 0);
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p)
    kids.push_back(spawn([&] {
      shmkit::value<long> mine(shmkit::open_only, g.name);
      for (int i = 0; i < 10000; ++i) {
        counter.update([](long& x) { ++x; });
        std::lock_guard lk(mine.get_lock());
        mine.store(mine.load() + 1);  // two calls, one step under the lock
      }
    }));
  BOOST_TEST(wait_all_ok(kids));
  BOOST_TEST(counter.load() == 40000);
  BOOST_TEST(named.load() == 40000);
}

// A holder killed while it holds the lock (in a loop of stores of a value whose two halves
// must match) leaves the lock to the next locker and the value whole.
BOOST_AUTO_TEST_CASE(value_survives_a_killed_holder) {
  struct pair_of {
    std::uint64_t a[64];
    std::uint64_t b[64];
  };
  shmkit::value<pair_of> v(pair_of{});
  shmkit::value<int> started(0);
  for (int round = 0; round < 10; ++round) {
    started.store(0);
    const pid_t writer = spawn([&] {
      pair_of x{};
      for (std::uint64_t i = 1;; ++i) {
        std::fill(std::begin(x.a), std::end(x.a), i);
        std::fill(std::begin(x.b), std::end(x.b), i);
        v.store(x);
        if (i == 100) started.store(1);
      }
    });
    while (started.load() == 0) ::usleep(100);
    ::usleep(static_cast<useconds_t>(500 + round * 300));
    shmkit::test::kill_and_reap(writer);
    const pair_of x = v.load();  // takes the lock over if the writer died holding it
    for (int i = 0; i < 64; ++i) {
      BOOST_REQUIRE(x.a[i] == x.a[0]);
      BOOST_REQUIRE(x.b[i] == x.a[0]);
    }
  }
}

BOOST_AUTO_TEST_CASE(array_calls) {
  shmkit::array<double> a(1000);
  BOOST_TEST(a.size() == 1000u);
  BOOST_TEST(std::accumulate(a.begin(), a.end(), 0.0) == 0.0);  // zeroed
  a[3] = 1.5;
  BOOST_TEST(a.at(3) == 1.5);
  BOOST_CHECK_THROW(a.at(1000), std::out_of_range);
  for (double& x : a) x += 1;
  BOOST_TEST(std::accumulate(a.begin(), a.end(), 0.0) == 1001.5);

  shmkit::array<int> b{1, 2, 3};
  BOOST_TEST(b.size() == 3u);
  BOOST_TEST(b[2] == 3);
  BOOST_TEST(b.span().size() == 3u);
}

BOOST_AUTO_TEST_CASE(array_four_ways) {
  const name_guard g(unique_name("array"));
  shmkit::array<int> a(shmkit::create_only, g.name, 16);
  a[15] = 7;
  shmkit::array<int> b(shmkit::open_only, g.name);
  BOOST_TEST(b.size() == 16u);
  BOOST_TEST(b[15] == 7);
  shmkit::array<int> c(shmkit::open_or_create, g.name, 16);
  BOOST_TEST(c[15] == 7);
  BOOST_CHECK_THROW(shmkit::array<int>(shmkit::open_or_create, g.name, 17), shmkit::error);
  BOOST_CHECK_THROW(shmkit::array<long>(shmkit::open_only, g.name), shmkit::error);
  BOOST_CHECK_THROW(shmkit::value<int>(shmkit::open_only, g.name), shmkit::error);
}

BOOST_AUTO_TEST_CASE(array_filled_by_workers_under_its_lock) {
  shmkit::array<long> a(4096);
  shmkit::value<long> total(0);
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p)
    kids.push_back(spawn([&, p] {
      // Each worker fills its quarter, and all add to a shared slot 0 under the lock.
      for (std::size_t i = static_cast<std::size_t>(p) * 1024 + 1;
           i < static_cast<std::size_t>(p + 1) * 1024; ++i)
        a[i] = static_cast<long>(i);
      for (int i = 0; i < 5000; ++i) {
        std::lock_guard lk(a.get_lock());
        a[0] += 1;
      }
      total.update([](long& t) { ++t; });
    }));
  BOOST_TEST(wait_all_ok(kids));
  BOOST_TEST(a[0] == 20000);
  BOOST_TEST(total.load() == 4);
  for (std::size_t i = 1; i < a.size(); ++i)
    if (i % 1024 != 0) BOOST_REQUIRE(a[i] == static_cast<long>(i));
}

BOOST_AUTO_TEST_CASE(array_lock_taken_over_from_a_dead_holder) {
  shmkit::array<int> a(8);
  const pid_t c = spawn([&] {
    a.get_lock().lock();
    a[0] = 1;
    std::_Exit(0);  // dies holding the lock
  });
  BOOST_TEST(shmkit::test::wait_exit(c) == 0);
  a.get_lock().lock();  // would hang forever without takeover
  BOOST_TEST(a.get_lock().owner_died());
  BOOST_TEST(a[0] == 1);
  a.get_lock().mark_consistent();
  a.get_lock().unlock();
}
