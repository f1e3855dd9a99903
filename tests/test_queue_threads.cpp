// SPDX-License-Identifier: MIT
// The queue's ring algorithm driven by threads of one process, so ThreadSanitizer can watch
// every access (build with -DSHMKIT_SANITIZE=thread): every slot hand-over, heap allocation,
// collection, batch, timed and non-blocking call, close() and joinable_queue's counters.
#define BOOST_TEST_MODULE queue_threads
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "queue_messages.hpp"
#include "shmkit/queue.hpp"

using namespace std::chrono_literals;

namespace {

constexpr int producers = 4, consumers = 4;
constexpr std::uint64_t per = 4000;

}  // namespace

BOOST_AUTO_TEST_CASE(threads_exactly_once, *boost::unit_test::timeout(300)) {
  // A small heap, so producers wait for pages and the collector runs often.
  shmkit::queue<std::string> q(32, shmkit::queue_options{.heap_bytes = 256 << 10});
  auto seen = std::make_unique<std::atomic<int>[]>(producers * per);
  std::atomic<int> damaged{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      std::mt19937_64 rng(p);
      std::uint64_t i = 0;
      while (i < per) {
        const std::uint64_t tag = p * per + i;
        const unsigned how = rng() % 5;
        if (how == 0) {
          std::vector<std::string> batch;
          for (int k = 0; k < 8 && i < per; ++k, ++i)
            batch.push_back(
                shmkit::test::make_message(tag + k, shmkit::test::mixed_size(rng, 60000)));
          q.put_many(batch);
          continue;
        }
        const std::string m = shmkit::test::make_message(tag, shmkit::test::mixed_size(rng, 60000));
        if (how == 1) {
          while (!q.try_put(m)) std::this_thread::yield();
        } else if (how == 2) {
          while (!q.put_for(m, 1ms)) {
          }
        } else {
          q.put(m);
        }
        ++i;
      }
    });
  for (int c = 0; c < consumers; ++c)
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(100 + c);
      auto take = [&](const std::string& m) {
        std::uint64_t tag = 0;
        if (!shmkit::test::check_message(m, tag) || tag >= producers * per)
          damaged.fetch_add(1);
        else
          seen[tag].fetch_add(1);
      };
      try {
        for (;;) {
          const unsigned how = rng() % 4;
          if (how == 0) {
            for (const auto& m : q.get_many(5)) take(m);
          } else if (how == 1) {
            if (auto m = q.try_get())
              take(*m);
            else
              std::this_thread::yield();
          } else if (how == 2) {
            if (auto m = q.get_for(1ms)) take(*m);
          } else {
            take(q.get());
          }
        }
      } catch (const shmkit::closed_error&) {
      }
    });
  for (int p = 0; p < producers; ++p) threads[p].join();
  q.close();
  for (std::size_t t = producers; t < threads.size(); ++t) threads[t].join();
  BOOST_TEST(damaged.load() == 0);
  int bad = 0;
  for (std::uint64_t i = 0; i < producers * per; ++i) bad += seen[i].load() != 1;
  BOOST_TEST(bad == 0);
}

BOOST_AUTO_TEST_CASE(threads_raw_fast_path, *boost::unit_test::timeout(300)) {
  shmkit::queue<std::uint64_t> q(8);
  constexpr std::uint64_t n = 64 * 800;  // whole batches of 64
  auto seen = std::make_unique<std::atomic<int>[]>(2 * n);
  std::thread a([&] {
    for (std::uint64_t i = 0; i < n; ++i) q.put(i);
  });
  std::thread b([&] {
    std::vector<std::uint64_t> v(64);
    for (std::uint64_t i = 0; i < n; i += v.size()) {
      for (std::size_t k = 0; k < v.size(); ++k) v[k] = n + i + k;
      q.put_many(v);
    }
  });
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back([&, r] {
      try {
        for (;;) {
          if (r) {
            for (auto x : q.get_many(16)) seen[x].fetch_add(1);
          } else {
            seen[q.get()].fetch_add(1);
          }
        }
      } catch (const shmkit::closed_error&) {
      }
    });
  a.join();
  b.join();
  q.close();
  for (auto& t : readers) t.join();
  int bad = 0;
  for (std::uint64_t i = 0; i < 2 * n; ++i) bad += seen[i].load() != 1;
  BOOST_TEST(bad == 0);
}

BOOST_AUTO_TEST_CASE(threads_joinable, *boost::unit_test::timeout(300)) {
  shmkit::joinable_queue<int> q(16);
  std::atomic<int> done{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 3; ++w)
    workers.emplace_back([&] {
      try {
        for (;;) {
          (void)q.get();
          done.fetch_add(1);
          q.task_done();
        }
      } catch (const shmkit::closed_error&) {
      }
    });
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 50; ++i) q.put(i);
    q.join();
    BOOST_TEST(done.load() == (round + 1) * 50);
  }
  q.close();
  for (auto& t : workers) t.join();
}
