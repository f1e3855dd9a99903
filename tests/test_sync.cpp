// SPDX-License-Identifier: MIT
// shmkit/sync.hpp in real processes: mutual exclusion, counting, conditions, events, barriers,
// the reader-writer lock the library embeds, timeouts, misuse and the four ways of naming.
#define BOOST_TEST_MODULE sync
#include <boost/test/unit_test.hpp>

#include <sched.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "shmkit/detail/rwlock_state.hpp"
#include "shmkit/pool.hpp"
#include "shmkit/process.hpp"
#include "shmkit/sync.hpp"
#include "support.hpp"
#include "sync_support.hpp"

using namespace std::chrono_literals;
using shmkit::test::children;
using shmkit::test::in_shm;
using shmkit::test::name_guard;
using shmkit::test::reaches;
using shmkit::test::unique_name;
namespace utf = boost::unit_test;

namespace {

// Elapsed time of fn(), for "returns false in bounded time" checks.
template <class Fn>
std::chrono::steady_clock::duration timed(Fn&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::steady_clock::now() - t0;
}

// The bound for "returns in bounded time": the requested timeout plus a generous margin for a
// loaded machine (a hang is what this catches, not slowness).
constexpr auto slack = 20s;

struct counter_data {
  long counter;
};

}  // namespace

// --- mutex ---------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(mutex_counts_exactly_across_four_processes, *utf::timeout(240)) {
  constexpr int procs = 4, rounds = 100000;
  shmkit::mutex m;
  in_shm<counter_data> d;
  children kids;
  for (int p = 0; p < procs; ++p)
    kids.spawn([&] {
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard<shmkit::mutex> g(m);
        ++d->counter;  // a plain read-modify-write: only the mutex keeps it exact
      }
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(d->counter, long{procs} * rounds);
  BOOST_CHECK(m.try_lock());
  BOOST_CHECK(!m.owner_died());
  m.unlock();
}

BOOST_AUTO_TEST_CASE(recursive_mutex_counts_exactly_with_nested_locks, *utf::timeout(240)) {
  constexpr int procs = 4, rounds = 100000;
  shmkit::recursive_mutex m;
  in_shm<counter_data> d;
  children kids;
  for (int p = 0; p < procs; ++p)
    kids.spawn([&] {
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard<shmkit::recursive_mutex> outer(m);
        const long before = d->counter;
        {
          std::unique_lock<shmkit::recursive_mutex> inner(m);  // re-entered by its holder
          CHILD_CHECK(m.try_lock());                           // and once more
          d->counter = before + 1;
          m.unlock();
        }
        CHILD_CHECK(d->counter == before + 1);
      }
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(d->counter, long{procs} * rounds);
}

BOOST_AUTO_TEST_CASE(mutexes_exclude_threads_as_well_as_processes, *utf::timeout(240)) {
  // Ownership is per thread: two threads in each of two processes.
  constexpr int rounds = 20000;
  shmkit::mutex m;
  shmkit::recursive_mutex r;
  in_shm<counter_data> a, b;
  auto work = [&] {
    auto body = [&] {
      for (int i = 0; i < rounds; ++i) {
        {
          std::lock_guard<shmkit::mutex> g(m);
          ++a->counter;
        }
        std::scoped_lock g(r, r);  // re-entered by the same thread
        ++b->counter;
      }
    };
    std::thread t(body);
    body();
    t.join();
  };
  children kids;
  kids.spawn(work);
  kids.spawn(work);
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(a->counter, 4L * rounds);
  BOOST_CHECK_EQUAL(b->counter, 4L * rounds);
}

BOOST_AUTO_TEST_CASE(standard_lock_helpers_work) {
  shmkit::mutex a;
  shmkit::recursive_mutex b;
  {
    std::scoped_lock both(a, b);
    BOOST_CHECK(!a.try_lock());
    BOOST_CHECK(b.try_lock());  // recursive for its holder
    b.unlock();
  }
  {
    std::unique_lock<shmkit::mutex> lk(a, 50ms);  // try_lock_for
    BOOST_CHECK(lk.owns_lock());
    std::unique_lock<shmkit::recursive_mutex> lk2(b, std::chrono::steady_clock::now() + 50ms);
    BOOST_CHECK(lk2.owns_lock());
  }
  BOOST_CHECK(a.try_lock());
  a.unlock();
}

BOOST_AUTO_TEST_CASE(mutex_view_of_an_embedded_state) {
  struct embedded {
    shmkit::detail::mutex_state lock;
    long counter;
  };
  in_shm<embedded> e;
  constexpr int procs = 2, rounds = 20000;
  children kids;
  for (int p = 0; p < procs; ++p)
    kids.spawn([&] {
      shmkit::mutex view(&e->lock);
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard<shmkit::mutex> g(view);
        ++e->counter;
      }
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(e->counter, long{procs} * rounds);
  shmkit::mutex view(&e->lock);
  BOOST_CHECK(view.name().empty());
  BOOST_CHECK(view.try_lock());
  BOOST_CHECK(e->lock.held_by_caller());
  view.unlock();
}

// --- waiting: spin, one yield, sleep -------------------------------------------------------------

BOOST_AUTO_TEST_CASE(a_wait_yields_at_most_once_and_not_after_a_lost_yield) {
  namespace sd = shmkit::detail;
  using hint_t = sd::spin_hint;
  hint_t hint;
  int tests = 0;
  auto never = [&] {
    ++tests;
    return false;
  };
  // Longer ago than the longest pause.
  const auto long_ago = [] { return sd::clock::now() - 2 * (hint_t::yield_pause * 512); };
  static_assert(hint_t::max_pause_doublings <= 9);
  hint.note_lost_yield(long_ago());
  auto before = sd::futex_calls();
  BOOST_CHECK(!hint.yield(never, std::nullopt));
  BOOST_CHECK_EQUAL(sd::futex_calls().yields, before.yields + 1);
  BOOST_CHECK_EQUAL(tests, 1);  // tested once, after the yield

  // A passed deadline (a zero timeout) does not yield, nor test.
  before = sd::futex_calls();
  BOOST_CHECK(!hint.yield(never, sd::clock::now() - 1ms));
  BOOST_CHECK_EQUAL(sd::futex_calls().yields, before.yields);
  BOOST_CHECK_EQUAL(tests, 1);

  // A yield that lost the CPU lately (to a busy process on ours): no yield for a while.
  hint.note_lost_yield(sd::clock::now());
  before = sd::futex_calls();
  BOOST_CHECK(!hint.yield(never, std::nullopt));
  BOOST_CHECK_EQUAL(sd::futex_calls().yields, before.yields);

  // Losses with few yields between them double the pause, up to its limit; a loss after
  // many good yields brings it back to the shortest.
  hint_t fresh;
  fresh.note_lost_yield(sd::clock::now());
  BOOST_CHECK_EQUAL(fresh.pause_doublings.load(), 1u);
  for (int i = 0; i < 20; ++i) fresh.note_lost_yield(sd::clock::now());
  BOOST_CHECK_EQUAL(fresh.pause_doublings.load(), hint_t::max_pause_doublings);
  fresh.yields_since_loss.store(hint_t::yields_per_loss);
  fresh.note_lost_yield(sd::clock::now());
  BOOST_CHECK_EQUAL(fresh.pause_doublings.load(), 0u);
  BOOST_CHECK_EQUAL(fresh.yields_since_loss.load(), 0u);

  // A timed wait that times out with nobody answering: one yield per wait, never a loop.
  shmkit::semaphore s(0);
  before = sd::futex_calls();
  BOOST_CHECK(!s.try_acquire_for(30ms));
  BOOST_CHECK_LE(sd::futex_calls().yields, before.yields + 1);
}

BOOST_AUTO_TEST_CASE(ping_pong_on_one_cpu_uses_the_yield, *utf::timeout(240)) {
  // Both processes on one CPU, where spinning cannot catch the peer: every round trip still
  // completes, and waits took the yield path (at least the first one, before any learning).
  cpu_set_t mine;
  BOOST_REQUIRE(::sched_getaffinity(0, sizeof mine, &mine) == 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &mine)) ++cpu;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  constexpr int rounds = 20000;
  shmkit::semaphore ping(0), pong(0);
  struct tally {
    std::atomic<long> seen;
  };
  in_shm<tally> t;
  BOOST_REQUIRE(::sched_setaffinity(0, sizeof one, &one) == 0);
  const auto before = shmkit::detail::futex_calls();
  children kids;
  kids.spawn([&] {
    for (int i = 0; i < rounds; ++i) {
      ping.acquire();
      t->seen.fetch_add(1);
      pong.release();
    }
  });
  for (int i = 0; i < rounds; ++i) {
    ping.release();
    pong.acquire();
  }
  const auto after = shmkit::detail::futex_calls();
  ::sched_setaffinity(0, sizeof mine, &mine);
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK_EQUAL(t->seen.load(), rounds);
  BOOST_CHECK_GT(after.yields, before.yields);
  BOOST_TEST_MESSAGE("one CPU, " << rounds << " round trips: " << after.yields - before.yields
                                 << " yields, " << after.waits - before.waits << " futex waits");
}

// --- timeouts ------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(every_try_for_returns_false_in_bounded_time, *utf::timeout(120)) {
  shmkit::mutex m;
  shmkit::recursive_mutex rm;
  shmkit::event held, done;
  in_shm<shmkit::detail::rwlock_state> rw;
  children kids;
  // Another process, alive, holds both mutexes and a read lock until told to stop.
  kids.spawn([&] {
    std::scoped_lock both(m, rm);
    rw->lock_shared();
    held.set();
    CHILD_CHECK(done.wait_for(60s));
    rw->unlock_shared();
  });
  BOOST_REQUIRE(held.wait_for(60s));

  auto d = timed([&] { BOOST_CHECK(!m.try_lock_for(200ms)); });
  BOOST_CHECK(d >= 200ms && d < 200ms + slack);
  d = timed([&] { BOOST_CHECK(!m.try_lock_until(std::chrono::system_clock::now() + 100ms)); });
  BOOST_CHECK(d < 100ms + slack);
  BOOST_CHECK(!m.try_lock());
  d = timed([&] { BOOST_CHECK(!rm.try_lock_for(200ms)); });
  BOOST_CHECK(d >= 200ms && d < 200ms + slack);
  BOOST_CHECK(!rm.try_lock_for(0ms));
  d = timed([&] { BOOST_CHECK(!rw->lock_until(shmkit::detail::deadline_after(200ms))); });
  BOOST_CHECK(d >= 200ms && d < 200ms + slack);
  BOOST_CHECK(rw->lock_shared_until(shmkit::detail::deadline_after(1s)));  // readers share
  rw->unlock_shared();

  shmkit::semaphore s(0);
  d = timed([&] { BOOST_CHECK(!s.try_acquire_for(200ms)); });
  BOOST_CHECK(d >= 200ms && d < 200ms + slack);
  BOOST_CHECK(!s.try_acquire());
  BOOST_CHECK_EQUAL(s.value(), 0);

  shmkit::event e;
  d = timed([&] { BOOST_CHECK(!e.wait_for(200ms)); });
  BOOST_CHECK(d >= 200ms && d < 200ms + slack);

  shmkit::mutex cm;
  shmkit::condition_variable cv;
  {
    std::unique_lock<shmkit::mutex> lk(cm);
    d = timed([&] { BOOST_CHECK(cv.wait_for(lk, 200ms) == std::cv_status::timeout); });
    BOOST_CHECK(d >= 200ms && d < 200ms + slack);
    BOOST_CHECK(lk.owns_lock());
    d = timed([&] { BOOST_CHECK(!cv.wait_for(lk, 100ms, [] { return false; })); });
    BOOST_CHECK(d < 100ms + slack);
    BOOST_CHECK(!cv.wait_until(lk, std::chrono::steady_clock::now() + 50ms, [] { return false; }));
  }
  BOOST_CHECK(cm.try_lock());  // the waits gave the mutex back
  cm.unlock();

  shmkit::barrier b(2);
  d = timed([&] { BOOST_CHECK(!b.wait_for(200ms)); });
  BOOST_CHECK(d >= 200ms && d < 200ms + slack);
  BOOST_CHECK(b.broken());  // a timeout breaks it, as in Python

  done.set();
  BOOST_CHECK(kids.all_ok());
  // Now free: each returns true at once.
  BOOST_CHECK(m.try_lock_for(1s));
  m.unlock();
  BOOST_CHECK(rw->lock_until(shmkit::detail::deadline_after(1s)));
  rw->unlock();
}

// --- misuse --------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(misuse_is_reported) {
  shmkit::mutex m;
  BOOST_CHECK_THROW(m.unlock(), std::logic_error);  // never locked
  m.lock();
  BOOST_CHECK_THROW(m.lock(), std::system_error);  // would deadlock
  BOOST_CHECK(!m.try_lock());
  m.unlock();
  BOOST_CHECK_THROW(m.unlock(), std::logic_error);

  shmkit::recursive_mutex r;
  r.lock();
  r.lock();
  r.unlock();
  r.unlock();
  BOOST_CHECK_THROW(r.unlock(), std::logic_error);

  shmkit::bounded_semaphore bs(2);
  BOOST_CHECK_THROW(bs.release(), std::logic_error);  // already at its initial value
  bs.acquire();
  BOOST_CHECK_THROW(bs.release(2), std::logic_error);
  BOOST_CHECK_EQUAL(bs.value(), 1);  // a refused release changes nothing
  bs.release();
  BOOST_CHECK_EQUAL(bs.value(), 2);
  BOOST_CHECK_THROW(shmkit::semaphore(-1), std::invalid_argument);
  BOOST_CHECK_THROW(shmkit::bounded_semaphore(-1), std::invalid_argument);
  shmkit::semaphore s(0);
  BOOST_CHECK_THROW(s.release(-1), std::invalid_argument);
  s.release(PTRDIFF_MAX);
  BOOST_CHECK_THROW(s.release(), std::logic_error);  // would overflow

  BOOST_CHECK_THROW(shmkit::barrier(0), std::invalid_argument);

  shmkit::condition_variable cv;
  std::unique_lock<shmkit::mutex> unlocked(m, std::defer_lock);
  BOOST_CHECK_THROW(cv.wait(unlocked), std::logic_error);

  in_shm<shmkit::detail::rwlock_state> rw;
  BOOST_CHECK_THROW(rw->unlock_shared(), std::logic_error);
  BOOST_CHECK_THROW(rw->unlock(), std::logic_error);
  rw->lock();
  BOOST_CHECK_THROW(rw->lock(), std::system_error);
  BOOST_CHECK_THROW(rw->unlock_shared(), std::logic_error);
  rw->unlock();
}

BOOST_AUTO_TEST_CASE(unlocking_another_process_lock_throws, *utf::timeout(120)) {
  shmkit::mutex m;
  shmkit::event held, done;
  children kids;
  kids.spawn([&] {
    m.lock();
    held.set();
    CHILD_CHECK(done.wait_for(60s));
    m.unlock();
  });
  BOOST_REQUIRE(held.wait_for(60s));
  try {
    m.unlock();
    BOOST_ERROR("unlock of another process's mutex did not throw");
  } catch (const std::logic_error& e) {
    BOOST_TEST_MESSAGE(e.what());
    BOOST_CHECK(std::string(e.what()).find("does not hold") != std::string::npos);
  }
  BOOST_CHECK(!m.try_lock());  // still held by the child
  done.set();
  BOOST_CHECK(kids.all_ok());
}

// --- semaphore -----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(semaphore_admits_at_most_its_count, *utf::timeout(240)) {
  struct stats {
    std::atomic<int> inside;
    std::atomic<int> most;
    std::atomic<int> finished;
  };
  constexpr int procs = 8, rounds = 300;
  shmkit::semaphore s(3);
  in_shm<stats> st;
  children kids;
  for (int p = 0; p < procs; ++p)
    kids.spawn([&] {
      for (int i = 0; i < rounds; ++i) {
        s.acquire();
        const int now = st->inside.fetch_add(1) + 1;
        int most = st->most.load();
        while (now > most && !st->most.compare_exchange_weak(most, now)) {
        }
        CHILD_CHECK(now <= 3);
        if (i % 16 == 0) std::this_thread::sleep_for(100us);  // let the others pile up
        st->inside.fetch_sub(1);
        s.release();
      }
      st->finished.fetch_add(1);
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(st->finished.load(), procs);
  BOOST_CHECK_LE(st->most.load(), 3);
  BOOST_CHECK_GE(st->most.load(), 1);
  BOOST_CHECK_EQUAL(s.value(), 3);
}

BOOST_AUTO_TEST_CASE(semaphore_release_many_wakes_many, *utf::timeout(120)) {
  shmkit::semaphore s(0);
  in_shm<std::atomic<int>> through;
  children kids;
  for (int p = 0; p < 5; ++p)
    kids.spawn([&] {
      CHILD_CHECK(s.try_acquire_for(60s));
      through->fetch_add(1);
    });
  s.release(5);
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK_EQUAL(through->load(), 5);
  BOOST_CHECK_EQUAL(s.value(), 0);
}

// --- condition_variable --------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(bounded_buffer_two_producers_two_consumers, *utf::timeout(240)) {
  constexpr int items = 100000, slots = 16, producers = 2, consumers = 2;
  struct buffer {
    int ring[slots];
    long head, tail;  // guarded by the mutex
    unsigned char seen[items];
    long consumed;
  };
  shmkit::mutex m;
  shmkit::condition_variable not_full, not_empty;
  in_shm<buffer> b;
  children kids;
  for (int p = 0; p < producers; ++p)
    kids.spawn([&, p] {
      const int per = items / producers;
      for (int i = p * per; i < (p + 1) * per; ++i) {
        std::unique_lock<shmkit::mutex> lk(m);
        not_full.wait(lk, [&] { return b->tail - b->head < slots; });
        b->ring[b->tail++ % slots] = i;
        not_empty.notify_one();
      }
      std::unique_lock<shmkit::mutex> lk(m);  // one end marker per consumer
      not_full.wait(lk, [&] { return b->tail - b->head < slots; });
      b->ring[b->tail++ % slots] = -1;
      not_empty.notify_one();
    });
  for (int c = 0; c < consumers; ++c)
    kids.spawn([&] {
      for (;;) {
        std::unique_lock<shmkit::mutex> lk(m);
        not_empty.wait(lk, [&] { return b->tail != b->head; });
        const int v = b->ring[b->head++ % slots];
        not_full.notify_one();
        if (v < 0) return;
        CHILD_CHECK(v < items);
        ++b->seen[v];
        ++b->consumed;
      }
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(b->consumed, items);
  BOOST_CHECK(std::all_of(b->seen, b->seen + items, [](unsigned char n) { return n == 1; }));
}

BOOST_AUTO_TEST_CASE(notify_all_wakes_every_waiter, *utf::timeout(120)) {
  constexpr int waiters = 6;
  struct flags {
    int waiting;
    bool go;
  };
  shmkit::mutex m;
  shmkit::condition_variable cv;
  in_shm<flags> f;
  children kids;
  for (int w = 0; w < waiters; ++w)
    kids.spawn([&] {
      std::unique_lock<shmkit::mutex> lk(m);
      ++f->waiting;
      // One notify_all must wake all: a lost wake-up shows as a timeout here.
      CHILD_CHECK(cv.wait_for(lk, 30s, [&] { return f->go; }));
    });
  BOOST_REQUIRE(shmkit::test::eventually([&] {
    std::lock_guard<shmkit::mutex> g(m);
    return f->waiting == waiters;
  }));
  std::this_thread::sleep_for(50ms);  // let them get past spinning into the kernel
  {
    std::lock_guard<shmkit::mutex> g(m);
    f->go = true;
  }
  cv.notify_all();
  BOOST_CHECK(kids.all_ok());
}

BOOST_AUTO_TEST_CASE(notify_one_wakes_a_waiter, *utf::timeout(120)) {
  struct flags {
    int tokens;
    int waiting;
  };
  shmkit::mutex m;
  shmkit::condition_variable cv;
  in_shm<flags> f;
  children kids;
  for (int w = 0; w < 3; ++w)
    kids.spawn([&] {
      std::unique_lock<shmkit::mutex> lk(m);
      ++f->waiting;
      CHILD_CHECK(cv.wait_for(lk, 30s, [&] { return f->tokens > 0; }));
      --f->tokens;
    });
  BOOST_REQUIRE(shmkit::test::eventually([&] {
    std::lock_guard<shmkit::mutex> g(m);
    return f->waiting == 3;
  }));
  for (int i = 0; i < 3; ++i) {  // one token and one notify_one per waiter
    {
      std::lock_guard<shmkit::mutex> g(m);
      ++f->tokens;
    }
    cv.notify_one();
  }
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK_EQUAL(f->tokens, 0);
}

// --- event ---------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(event_releases_eight_waiters, *utf::timeout(120)) {
  shmkit::event e;
  in_shm<std::atomic<int>> ready;
  children kids;
  for (int w = 0; w < 8; ++w)
    kids.spawn([&] {
      ready->fetch_add(1);
      e.wait();
      CHILD_CHECK(e.is_set());
    });
  BOOST_REQUIRE(reaches(*ready, 8));
  std::this_thread::sleep_for(20ms);
  BOOST_CHECK(!e.is_set());
  e.set();
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK(e.is_set());
  BOOST_CHECK(e.wait_for(0ms));
  e.clear();
  BOOST_CHECK(!e.is_set());
  BOOST_CHECK(!e.wait_for(50ms));
  BOOST_CHECK(!e.wait_until(std::chrono::system_clock::now() + 10ms));
}

// --- barrier -------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(barrier_four_processes_thousand_rounds, *utf::timeout(240)) {
  constexpr int procs = 4, rounds = 1000;
  struct progress {
    std::atomic<int> round[procs];
  };
  shmkit::barrier b(procs);
  in_shm<progress> pr;
  children kids;
  for (int p = 0; p < procs; ++p)
    kids.spawn([&, p] {
      for (int r = 1; r <= rounds; ++r) {
        pr->round[p].store(r);
        b.arrive_and_wait();
        // Everyone has reached round r, and nobody has gone past r + 1.
        for (int q = 0; q < procs; ++q) {
          const int seen = pr->round[q].load();
          CHILD_CHECK(seen == r || seen == r + 1);
        }
      }
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK(!b.broken());
  BOOST_CHECK_EQUAL(b.n_waiting(), 0u);
  BOOST_CHECK_EQUAL(b.parties(), std::size_t{procs});
}

BOOST_AUTO_TEST_CASE(barrier_abort_breaks_waiters, *utf::timeout(120)) {
  shmkit::barrier one(1);
  one.arrive_and_wait();  // a party of one never waits
  BOOST_CHECK(one.wait_for(0ms));

  shmkit::barrier b(3);
  in_shm<std::atomic<int>> arrived;
  children kids;
  for (int w = 0; w < 2; ++w)
    kids.spawn([&] {
      arrived->fetch_add(1);
      try {
        b.arrive_and_wait();
      } catch (const shmkit::broken_barrier_error&) {
        return;  // expected
      }
      CHILD_CHECK(!"arrive_and_wait passed a barrier that was aborted");
    });
  BOOST_REQUIRE(reaches(*arrived, 2));
  BOOST_REQUIRE(shmkit::test::eventually([&] { return b.n_waiting() == 2; }));
  b.abort();
  BOOST_CHECK(b.broken());
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK_THROW(b.arrive_and_wait(), shmkit::broken_barrier_error);
  BOOST_CHECK_THROW(b.wait_for(1s), shmkit::broken_barrier_error);
}

BOOST_AUTO_TEST_CASE(barrier_timeout_breaks_it_for_the_others, *utf::timeout(120)) {
  shmkit::barrier b(3);
  children kids;
  kids.spawn([&] {
    try {
      b.arrive_and_wait();
    } catch (const shmkit::broken_barrier_error&) {
      return;
    }
    CHILD_CHECK(!"passed a barrier broken by a timeout");
  });
  BOOST_REQUIRE(shmkit::test::eventually([&] { return b.n_waiting() == 1; }));
  BOOST_CHECK(!b.wait_for(100ms));
  BOOST_CHECK(b.broken());
  BOOST_CHECK(kids.all_ok());
}

// Every process holding a barrier handle counts as a party (a dead one breaks the barrier):
// these check that the living ones, and those that let go of their handles, never do.

BOOST_AUTO_TEST_CASE(barrier_party_that_exits_after_the_last_round_breaks_nothing,
                     *utf::timeout(240)) {
  constexpr int rounds = 3;
  // A child that inherited the handle and ends (_Exit, handle not destroyed) after the last
  // round.
  {
    shmkit::barrier b(2);
    children kids;
    const pid_t c = kids.spawn([&] {
      for (int r = 0; r < rounds; ++r) CHILD_CHECK(b.wait_for(60s));
    });
    for (int r = 0; r < rounds; ++r) BOOST_CHECK(b.wait_for(60s));
    BOOST_CHECK_EQUAL(kids.wait(c), 0);
    BOOST_CHECK(!b.broken());
  }
  // Parties that open a named barrier, take their rounds and destroy their handle, one after
  // the other: the barrier goes on with the next one, though the first has died meanwhile.
  const std::string name = unique_name("barrier");
  name_guard guard(name);
  struct flags {
    std::atomic<int> go[2];
  };
  in_shm<flags> f;
  children kids;
  pid_t c[2];
  for (int k = 0; k < 2; ++k)  // forked before the barrier exists: no inherited handle
    c[k] = kids.spawn([&, k] {
      CHILD_CHECK(reaches(f->go[k], 1));
      shmkit::barrier mine(shmkit::open_only, name);
      for (int r = 0; r < rounds; ++r) CHILD_CHECK(mine.wait_for(60s));
    });
  shmkit::barrier b(shmkit::create_only, name, 2);
  for (int k = 0; k < 2; ++k) {
    f->go[k].store(1);
    for (int r = 0; r < rounds; ++r) BOOST_CHECK(b.wait_for(60s));
    BOOST_CHECK_EQUAL(kids.wait(c[k]), 0);
  }
  BOOST_CHECK(!b.broken());
}

BOOST_AUTO_TEST_CASE(barrier_parties_forked_one_at_a_time, *utf::timeout(240)) {
  // The early ones wait through several liveness checks while the later ones are forked.
  constexpr int procs = 3, rounds = 5;
  shmkit::barrier b(procs + 1);
  children kids;
  for (int p = 0; p < procs; ++p) {
    kids.spawn([&] {
      for (int r = 0; r < rounds; ++r) CHILD_CHECK(b.wait_for(60s));
    });
    std::this_thread::sleep_for(350ms);
  }
  for (int r = 0; r < rounds; ++r) BOOST_CHECK(b.wait_for(60s));
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK(!b.broken());
}

BOOST_AUTO_TEST_CASE(barrier_helper_that_drops_its_inherited_handle_breaks_nothing,
                     *utf::timeout(240)) {
  std::optional<shmkit::barrier> b;
  b.emplace(2);
  in_shm<std::atomic<int>> dropped;
  children kids;
  // A helper forked for other work: it holds a copy of the handle until it destroys it.
  const pid_t helper = kids.spawn([&] {
    b.reset();
    dropped->store(1);
  });
  BOOST_REQUIRE(reaches(*dropped, 1));
  BOOST_CHECK_EQUAL(kids.wait(helper), 0);  // dead (and reaped) before the round below
  kids.spawn([&] {
    std::this_thread::sleep_for(400ms);  // the parent waits through liveness checks
    CHILD_CHECK(b->wait_for(60s));
  });
  BOOST_CHECK(b->wait_for(60s));
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK(!b->broken());
}

// The library's own processes made after a barrier end without breaking it: a
// shmkit::process child whose callable returns ends normally (its inherited handle is never
// destroyed, yet it is no dead party), and a pool's workers and supervisor are no party at
// all. Both end while the parent waits through liveness checks for the real second party.
BOOST_AUTO_TEST_CASE(barrier_outlives_process_children_and_pools_made_after_it,
                     *utf::timeout(240)) {
  shmkit::barrier b(2);
  {
    shmkit::pool pool(2);
    BOOST_CHECK_EQUAL(pool.apply(+[](int x) { return x + 1; }, 1), 2);
    pool.close();
    pool.join();
  }
  shmkit::process helper([] { std::this_thread::sleep_for(200ms); });
  helper.start();
  children kids;
  kids.spawn([&] {
    std::this_thread::sleep_for(600ms);  // the helper ends meanwhile
    CHILD_CHECK(b.wait_for(60s));
  });
  BOOST_CHECK(b.wait_for(60s));
  helper.join();
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK(!b.broken());
}

BOOST_AUTO_TEST_CASE(barrier_threads_of_two_processes_as_parties, *utf::timeout(240)) {
  constexpr int threads = 2, rounds = 100;
  struct progress {
    std::atomic<int> round[2 * threads];
  };
  shmkit::barrier b(2 * threads);
  in_shm<progress> pr;
  // Each process runs `threads` parties, numbered from `first`; true when all went well.
  auto run = [&](int first) {
    std::atomic<bool> ok{true};
    std::vector<std::thread> ts;
    for (int t = first; t < first + threads; ++t)
      ts.emplace_back([&, t] {
        for (int r = 1; r <= rounds; ++r) {
          pr->round[t].store(r);
          if (!b.wait_for(60s)) ok = false;
          for (const auto& seen : pr->round)
            if (const int v = seen.load(); v != r && v != r + 1) ok = false;
        }
      });
    for (auto& t : ts) t.join();
    return ok.load();
  };
  children kids;
  kids.spawn([&] { CHILD_CHECK(run(threads)); });
  BOOST_CHECK(run(0));
  BOOST_CHECK(kids.all_ok());
  BOOST_CHECK(!b.broken());
}

// --- reader-writer lock (detail, embedded by the manager)
// ------------------------------------------

BOOST_AUTO_TEST_CASE(rwlock_readers_share_and_writers_exclude, *utf::timeout(240)) {
  struct data {
    shmkit::detail::rwlock_state lock;
    long a, b;
    std::atomic<int> readers_inside;
  };
  in_shm<data> d;
  children kids;
  // Three readers hold the lock at the same time: each waits inside for the other two.
  for (int r = 0; r < 3; ++r)
    kids.spawn([&] {
      std::shared_lock<shmkit::detail::rwlock_state> lk(d->lock);
      d->readers_inside.fetch_add(1);
      CHILD_CHECK(reaches(d->readers_inside, 3));
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(d->lock.reader_count(), 0u);

  constexpr int rounds = 20000;
  for (int w = 0; w < 2; ++w)
    kids.spawn([&] {
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard<shmkit::detail::rwlock_state> lk(d->lock);
        ++d->a;
        ++d->b;
      }
    });
  for (int r = 0; r < 2; ++r)
    kids.spawn([&] {
      for (int i = 0; i < rounds; ++i) {
        std::shared_lock<shmkit::detail::rwlock_state> lk(d->lock);
        CHILD_CHECK(d->a == d->b);  // never half an update
      }
    });
  BOOST_REQUIRE(kids.all_ok());
  BOOST_CHECK_EQUAL(d->a, 2L * rounds);
  BOOST_CHECK_EQUAL(d->b, 2L * rounds);
  BOOST_CHECK(d->lock.try_lock());
  BOOST_CHECK(!d->lock.owner_died());
  BOOST_CHECK(!d->lock.try_lock_shared());  // writer-held
  d->lock.unlock();
  BOOST_CHECK(d->lock.try_lock_shared());
  BOOST_CHECK(d->lock.try_lock_shared());  // twice by the same thread: two slots
  BOOST_CHECK(!d->lock.try_lock());
  d->lock.unlock_shared();
  d->lock.unlock_shared();
  BOOST_CHECK(d->lock.try_lock());
  d->lock.unlock();
}

// --- naming --------------------------------------------------------------------------------------

namespace {

// The four ways of making T, the creator's ownership of the name, release_name().
template <class T, class... Args>
void check_named_lifecycle(Args... args) {
  const std::string name = unique_name("sync");
  name_guard guard(name);
  {
    T a(shmkit::create_only, name, args...);
    BOOST_CHECK_EQUAL(a.name(), name);
    BOOST_CHECK_THROW(T(shmkit::create_only, name, args...), shmkit::error);
    T b(shmkit::open_only, name);
    BOOST_CHECK_EQUAL(b.name(), name);
    T c(shmkit::open_or_create, name, args...);
    BOOST_CHECK_EQUAL(c.name(), name);
    T moved(std::move(c));
    BOOST_CHECK_EQUAL(moved.name(), name);
  }
  BOOST_CHECK_THROW(T(shmkit::open_only, name), shmkit::error);  // the creator removed it
  {
    T d(shmkit::open_or_create, name, args...);  // creates it
    d.release_name();
  }
  T e(shmkit::open_only, name);  // still there after its creator went
  BOOST_CHECK(shmkit::remove(name));
  T anonymous(args...);
  BOOST_CHECK(anonymous.name().empty());
}

}  // namespace

BOOST_AUTO_TEST_CASE(named_lifecycle_of_each_kind) {
  check_named_lifecycle<shmkit::mutex>();
  check_named_lifecycle<shmkit::recursive_mutex>();
  check_named_lifecycle<shmkit::semaphore>(std::ptrdiff_t{2});
  check_named_lifecycle<shmkit::bounded_semaphore>(std::ptrdiff_t{2});
  check_named_lifecycle<shmkit::condition_variable>();
  check_named_lifecycle<shmkit::event>();
  check_named_lifecycle<shmkit::barrier>(std::size_t{3});
}

BOOST_AUTO_TEST_CASE(opening_a_name_as_another_kind_throws) {
  const std::string name = unique_name("kind");
  name_guard guard(name);
  shmkit::mutex m(shmkit::create_only, name);
  BOOST_CHECK_THROW(shmkit::event(shmkit::open_only, name), shmkit::error);
  BOOST_CHECK_THROW(shmkit::recursive_mutex(shmkit::open_only, name), shmkit::error);
  BOOST_CHECK_THROW(shmkit::barrier(shmkit::open_or_create, name, 2), shmkit::error);
  try {
    shmkit::event e(shmkit::open_only, name);
  } catch (const shmkit::error& e) {
    BOOST_TEST_MESSAGE(e.what());
    BOOST_CHECK(std::string(e.what()).find("mutex") != std::string::npos);
  }
  const std::string sname = unique_name("kind");
  name_guard sguard(sname);
  shmkit::semaphore s(shmkit::create_only, sname, 1);
  BOOST_CHECK_THROW(shmkit::bounded_semaphore(shmkit::open_only, sname), shmkit::error);
  BOOST_CHECK_THROW(shmkit::mutex(shmkit::open_only, unique_name("missing")), shmkit::error);
  BOOST_CHECK_THROW(shmkit::mutex(shmkit::create_only, "bad/name"), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(named_objects_are_shared_by_name, *utf::timeout(120)) {
  const std::string base = unique_name("byname");
  name_guard gm(base + ".m"), gs(base + ".s"), ge(base + ".e"), gb(base + ".b"), gc(base + ".c");
  shmkit::mutex m(shmkit::create_only, base + ".m");
  shmkit::semaphore s(shmkit::open_or_create, base + ".s", 0);
  shmkit::event e(shmkit::create_only, base + ".e");
  shmkit::barrier b(shmkit::create_only, base + ".b", 2);
  shmkit::condition_variable cv(shmkit::create_only, base + ".c");
  children kids;
  // The child opens everything by name only, as an unrelated process would.
  kids.spawn([&] {
    shmkit::mutex cm(shmkit::open_only, base + ".m");
    shmkit::semaphore cs(shmkit::open_only, base + ".s");
    shmkit::event ce(shmkit::open_or_create, base + ".e");
    shmkit::barrier cb(shmkit::open_only, base + ".b");
    shmkit::condition_variable ccv(shmkit::open_only, base + ".c");
    CHILD_CHECK(cb.parties() == 2);
    cm.lock();
    cs.release(2);
    CHILD_CHECK(ce.wait_for(60s));
    cm.unlock();
    CHILD_CHECK(cb.wait_for(60s));
    ccv.notify_all();
  });
  BOOST_REQUIRE(s.try_acquire_for(60s));
  BOOST_CHECK_EQUAL(s.value(), 1);
  BOOST_CHECK(!m.try_lock());  // the child holds it
  e.set();
  BOOST_CHECK(m.try_lock_for(60s));
  m.unlock();
  BOOST_CHECK(b.wait_for(60s));
  BOOST_CHECK(kids.all_ok());
}
