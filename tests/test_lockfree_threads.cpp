// SPDX-License-Identifier: MIT
// The pipe's single-producer single-consumer rings and the synchronization primitives' lock
// words and wait layer, driven by threads of one process, so ThreadSanitizer can watch every
// access (build with -DSHMKIT_SANITIZE=thread; the algorithms are the same across processes).
#define BOOST_TEST_MODULE lockfree_threads
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "shmkit/pipe.hpp"
#include "shmkit/shared.hpp"
#include "shmkit/sync.hpp"

using namespace std::chrono_literals;
namespace utf = boost::unit_test;

namespace {

// Bytes whose content depends on (n, seed), to check what arrives.
std::vector<std::byte> pattern(std::size_t n, std::uint64_t seed) {
  std::vector<std::byte> v(n);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + n;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(pipe_ping_pong_between_threads, *utf::timeout(300)) {
  auto [a, b] = shmkit::pipe<std::uint64_t>();
  constexpr std::uint64_t n = 20000;
  std::thread echo([&, &b = b] {
    for (std::uint64_t i = 0; i < n; ++i) b.send(b.recv() + 1);
  });
  std::uint64_t wrong = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    a.send(i * 2);
    if (a.recv() != i * 2 + 1) ++wrong;
  }
  echo.join();
  BOOST_CHECK_EQUAL(wrong, 0u);
}

BOOST_AUTO_TEST_CASE(pipe_streams_messages_of_every_size_between_threads, *utf::timeout(300)) {
  // A small buffer, so large messages stream through it in many pieces.
  auto [rx, tx] = shmkit::pipe<std::string>(false, 4096);
  const std::vector<std::size_t> sizes{0, 1, 100, 2047, 2048, 2049, 4096, 10000, 100000, 1 << 20};
  std::thread sender([&, &tx = tx] {
    for (int round = 0; round < 3; ++round)
      for (std::size_t s : sizes) {
        const auto bytes = pattern(s, round);
        tx.send_bytes(std::span<const std::byte>(bytes));
      }
    tx.close();
  });
  int wrong = 0, got = 0;
  for (int round = 0; round < 3; ++round)
    for (std::size_t s : sizes) {
      if (!rx.poll(60s)) break;
      if (rx.recv_bytes() != pattern(s, round)) ++wrong;
      ++got;
    }
  BOOST_CHECK_THROW(rx.recv_bytes(), shmkit::eof_error);  // closed and drained
  sender.join();
  BOOST_CHECK_EQUAL(wrong, 0);
  BOOST_CHECK_EQUAL(got, static_cast<int>(3 * sizes.size()));
}

BOOST_AUTO_TEST_CASE(wait_on_pipes_fed_by_threads, *utf::timeout(300)) {
  constexpr int pipes = 4, per = 2000;
  std::vector<std::pair<shmkit::connection<int>, shmkit::connection<int>>> ends;
  for (int i = 0; i < pipes; ++i) ends.push_back(shmkit::pipe<int>(false));
  std::vector<std::thread> feeders;
  for (int i = 0; i < pipes; ++i)
    feeders.emplace_back([&, i] {
      for (int k = 0; k < per; ++k) ends[i].second.send(i * per + k);
    });
  std::vector<shmkit::connection<int>*> rxs;
  for (auto& e : ends) rxs.push_back(&e.first);
  std::vector<int> next(pipes, 0);
  int wrong = 0, total = 0;
  while (total < pipes * per) {
    const auto ready = shmkit::wait(rxs, 60s);
    if (ready.empty()) break;
    for (std::size_t i : ready) {
      if (rxs[i]->recv() != static_cast<int>(i) * per + next[i]) ++wrong;
      ++next[i];
      ++total;
    }
  }
  for (auto& f : feeders) f.join();
  BOOST_CHECK_EQUAL(wrong, 0);
  BOOST_CHECK_EQUAL(total, pipes * per);
}

BOOST_AUTO_TEST_CASE(mutex_and_recursive_mutex_counters, *utf::timeout(300)) {
  shmkit::mutex m;
  shmkit::recursive_mutex r;
  long plain = 0, nested = 0;  // guarded by m and r
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) {
        if ((i + t) % 3 == 0) {
          while (!m.try_lock()) std::this_thread::yield();
        } else if ((i + t) % 3 == 1) {
          while (!m.try_lock_for(1ms)) {
          }
        } else {
          m.lock();
        }
        ++plain;
        m.unlock();
        std::lock_guard g1(r);
        std::lock_guard g2(r);
        ++nested;
      }
    });
  for (auto& t : ts) t.join();
  BOOST_CHECK_EQUAL(plain, 20000);
  BOOST_CHECK_EQUAL(nested, 20000);
}

BOOST_AUTO_TEST_CASE(semaphore_ping_pong_and_bounded_counts, *utf::timeout(300)) {
  shmkit::semaphore ping(0), pong(0);
  long shared = 0;  // handed over by the semaphores
  constexpr int n = 10000;
  std::thread other([&] {
    for (int i = 0; i < n; ++i) {
      ping.acquire();
      ++shared;
      pong.release();
    }
  });
  for (int i = 0; i < n; ++i) {
    ++shared;
    ping.release();
    pong.acquire();
  }
  other.join();
  BOOST_CHECK_EQUAL(shared, 2L * n);
  shmkit::bounded_semaphore slots(3);
  std::atomic<int> inside{0}, most{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        while (!slots.try_acquire_for(1ms)) {
        }
        const int now = inside.fetch_add(1) + 1;
        int m = most.load();
        while (now > m && !most.compare_exchange_weak(m, now)) {
        }
        inside.fetch_sub(1);
        slots.release();
      }
    });
  for (auto& t : ts) t.join();
  BOOST_CHECK_LE(most.load(), 3);
  BOOST_CHECK_EQUAL(slots.value(), 3);
}

BOOST_AUTO_TEST_CASE(condition_variable_event_and_barrier, *utf::timeout(300)) {
  shmkit::mutex m;
  shmkit::condition_variable cv;
  std::vector<int> items;  // guarded by m
  bool done = false;
  constexpr int n = 5000;
  std::thread consumer([&] {
    long sum = 0;
    std::unique_lock lk(m);
    for (;;) {
      cv.wait(lk, [&] { return !items.empty() || done; });
      if (items.empty() && done) break;
      sum += items.back();
      items.pop_back();
    }
    BOOST_CHECK_EQUAL(sum, static_cast<long>(n) * (n - 1) / 2);
  });
  for (int i = 0; i < n; ++i) {
    {
      std::lock_guard g(m);
      items.push_back(i);
    }
    cv.notify_one();
  }
  {
    std::lock_guard g(m);
    done = true;
  }
  cv.notify_all();
  consumer.join();

  shmkit::event go;
  shmkit::barrier b(4);
  std::atomic<int> phases{0};
  long written[4] = {};  // each party writes its own; read by all after the barrier
  std::vector<std::thread> parties;
  for (int p = 0; p < 4; ++p)
    parties.emplace_back([&, p] {
      go.wait();
      for (int round = 1; round <= 200; ++round) {
        written[p] = round;
        b.arrive_and_wait();
        for (long w : written)
          if (w != round) phases.fetch_add(1000000);
        b.arrive_and_wait();
      }
      phases.fetch_add(1);
    });
  go.set();
  for (auto& t : parties) t.join();
  BOOST_CHECK_EQUAL(phases.load(), 4);
}

BOOST_AUTO_TEST_CASE(value_updates_from_threads, *utf::timeout(300)) {
  shmkit::value<long> counter(0);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) counter.update([](long& v) { ++v; });
    });
  for (auto& t : ts) t.join();
  BOOST_CHECK_EQUAL(counter.load(), 20000);
}
