// SPDX-License-Identifier: MIT
// shmkit/sync.hpp when processes die at the worst moment (kill -9): holders of a mutex,
// recursive_mutex or reader-writer lock, a holder that has just returned from
// condition_variable::wait, sleepers, and a barrier party. Survivors must never hang.
#define BOOST_TEST_MODULE sync_crash
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>

#include "shmkit/detail/rwlock_state.hpp"
#include "shmkit/sync.hpp"
#include "support.hpp"
#include "sync_support.hpp"

using namespace std::chrono_literals;
using shmkit::test::children;
using shmkit::test::in_shm;
using shmkit::test::park_forever;
using shmkit::test::reaches;
namespace utf = boost::unit_test;

namespace {
struct steps {
  std::atomic<int> holding;   // the victim holds what it will die with
  std::atomic<int> blocking;  // survivors about to block
  long data;
};

struct rw_data {
  shmkit::detail::rwlock_state lock;
  std::atomic<int> holding;
};

// Spawns a victim that runs take() (claiming what it will die with), raises `holding` and
// parks until it is killed. Returns once the victim holds its claim.
template <class Take>
pid_t spawn_holder(children& kids, std::atomic<int>& holding, Take take) {
  holding.store(0);
  const pid_t victim = kids.spawn([&] {
    take();
    holding.store(1);
    park_forever();
  });
  BOOST_REQUIRE(reaches(holding, 1));
  return victim;
}
}  // namespace

BOOST_AUTO_TEST_CASE(mutex_holder_killed_next_waiter_takes_over, *utf::timeout(120)) {
  shmkit::mutex m;
  in_shm<steps> st;
  children kids;
  const pid_t victim = spawn_holder(kids, st->holding, [&] {
    m.lock();
    st->data = 1;
  });
  // A survivor already asleep in lock() when the holder dies.
  const pid_t survivor = kids.spawn([&] {
    st->blocking.store(1);
    m.lock();
    CHILD_CHECK(m.owner_died());
    CHILD_CHECK(st->data == 1);
    m.mark_consistent();
    CHILD_CHECK(!m.owner_died());
    st->data = 2;
    m.unlock();
  });
  BOOST_REQUIRE(reaches(st->blocking, 1));
  std::this_thread::sleep_for(50ms);  // let it fall asleep in lock()
  kids.kill(victim);
  BOOST_CHECK_EQUAL(kids.wait(survivor, 60s), 0);
  BOOST_CHECK_EQUAL(st->data, 2);
  BOOST_CHECK(m.try_lock_for(10s));
  BOOST_CHECK(!m.owner_died());
  m.unlock();
}

BOOST_AUTO_TEST_CASE(owner_died_lasts_until_unlock, *utf::timeout(120)) {
  shmkit::mutex m;
  in_shm<steps> st;
  children kids;
  const pid_t victim = spawn_holder(kids, st->holding, [&] { m.lock(); });
  kids.kill(victim);
  BOOST_REQUIRE(m.try_lock_for(30s));  // within a liveness slice or so
  BOOST_CHECK(m.owner_died());
  BOOST_CHECK(m.owner_died());  // stays up while held
  m.unlock();
  m.lock();
  BOOST_CHECK(!m.owner_died());
  m.unlock();
}

// A caller that only polls try_lock() takes the lock over from a dead holder too (as POSIX's
// robust trylock does): at once when the holder is reaped; a living holder keeps refusing it.
BOOST_AUTO_TEST_CASE(try_lock_alone_takes_over_from_a_dead_holder, *utf::timeout(120)) {
  shmkit::mutex m;
  shmkit::recursive_mutex r;
  in_shm<steps> st;
  children kids;
  const pid_t victim = spawn_holder(kids, st->holding, [&] {
    m.lock();
    r.lock();
    r.lock();
  });
  const auto refused_for = [](auto& lock, std::chrono::milliseconds d) {
    const auto end = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < end)
      if (lock.try_lock()) return false;
    return true;
  };
  BOOST_CHECK(refused_for(m, 100ms));  // alive: refused, however often it is asked
  BOOST_CHECK(refused_for(r, 100ms));
  kids.kill(victim);  // kill -9 and reap: the holder's thread is gone
  // The very next try_lock() takes it, as "the next locker acquires it" says: no retry loop.
  BOOST_REQUIRE(m.try_lock());
  BOOST_CHECK(m.owner_died());
  m.unlock();
  BOOST_REQUIRE(r.try_lock());
  BOOST_CHECK(r.owner_died());
  r.unlock();  // depth 1: ours, not the dead holder's two
  BOOST_CHECK(r.try_lock());
  BOOST_CHECK(!r.owner_died());
  r.unlock();
}

BOOST_AUTO_TEST_CASE(recursive_mutex_holder_killed_at_depth_three, *utf::timeout(120)) {
  shmkit::recursive_mutex m;
  in_shm<steps> st;
  children kids;
  const pid_t victim = spawn_holder(kids, st->holding, [&] {
    m.lock();
    m.lock();
    m.lock();
  });
  const pid_t survivor = kids.spawn([&] {
    st->blocking.store(1);
    CHILD_CHECK(m.try_lock_for(60s));
    CHILD_CHECK(m.owner_died());
    m.lock();  // re-entrant for the new holder, from depth 1
    m.unlock();
    m.unlock();  // fully released: the old depth is gone
  });
  BOOST_REQUIRE(reaches(st->blocking, 1));
  kids.kill(victim);
  BOOST_CHECK_EQUAL(kids.wait(survivor, 60s), 0);
  BOOST_CHECK(m.try_lock_for(10s));
  BOOST_CHECK(!m.owner_died());
  m.unlock();
}

BOOST_AUTO_TEST_CASE(holder_killed_just_after_condition_wait_returned, *utf::timeout(120)) {
  struct shared {
    bool ready;
    std::atomic<int> waiting;
    std::atomic<int> returned;
  };
  shmkit::mutex m;
  shmkit::condition_variable cv;
  in_shm<shared> sh;
  children kids;
  const pid_t victim = kids.spawn([&] {
    std::unique_lock<shmkit::mutex> lk(m);
    sh->waiting.store(1);
    cv.wait(lk, [&] { return sh->ready; });
    sh->returned.store(1);  // holds the re-acquired mutex, and dies with it
    park_forever();
  });
  BOOST_REQUIRE(reaches(sh->waiting, 1));
  {
    std::lock_guard<shmkit::mutex> g(m);  // the victim is inside wait() now
    sh->ready = true;
  }
  cv.notify_all();
  BOOST_REQUIRE(reaches(sh->returned, 1));
  kids.kill(victim);
  // Another waiter on the same condition re-locks the dead holder's mutex.
  const pid_t survivor = kids.spawn([&] {
    std::unique_lock<shmkit::mutex> lk(m, 60s);
    CHILD_CHECK(lk.owns_lock());
    CHILD_CHECK(m.owner_died());
    CHILD_CHECK(cv.wait_for(lk, 60s, [&] { return sh->ready; }));
  });
  BOOST_CHECK_EQUAL(kids.wait(survivor, 60s), 0);
  BOOST_CHECK(m.try_lock_for(10s));
  BOOST_CHECK(!m.owner_died());
  m.unlock();
}

BOOST_AUTO_TEST_CASE(condition_waiter_relocks_a_mutex_whose_holder_died, *utf::timeout(120)) {
  // The waiter sleeps in wait(); the notifier dies holding the mutex; the waiter's re-lock
  // takes it over.
  struct shared {
    bool ready;
    std::atomic<int> waiting;
  };
  shmkit::mutex m;
  shmkit::condition_variable cv;
  in_shm<shared> sh;
  in_shm<steps> st;
  children kids;
  const pid_t waiter = kids.spawn([&] {
    std::unique_lock<shmkit::mutex> lk(m);
    sh->waiting.store(1);
    CHILD_CHECK(cv.wait_for(lk, 60s, [&] { return sh->ready; }));
    CHILD_CHECK(m.owner_died());
  });
  BOOST_REQUIRE(reaches(sh->waiting, 1));
  const pid_t victim = spawn_holder(kids, st->holding, [&] {
    m.lock();
    sh->ready = true;
    cv.notify_all();
  });
  kids.kill(victim);
  BOOST_CHECK_EQUAL(kids.wait(waiter, 60s), 0);
}

BOOST_AUTO_TEST_CASE(killed_sleepers_do_not_block_others, *utf::timeout(120)) {
  shmkit::mutex m;
  shmkit::semaphore s(0);
  in_shm<steps> st;
  children kids;
  m.lock();
  const pid_t mutex_sleeper = kids.spawn([&] {
    st->blocking.fetch_add(1);
    m.lock();
  });
  const pid_t sem_sleeper = kids.spawn([&] {
    st->blocking.fetch_add(1);
    s.acquire();
  });
  BOOST_REQUIRE(reaches(st->blocking, 2));
  std::this_thread::sleep_for(50ms);
  kids.kill(mutex_sleeper);
  kids.kill(sem_sleeper);
  m.unlock();
  s.release();
  const pid_t next = kids.spawn([&] {
    CHILD_CHECK(m.try_lock_for(60s));
    CHILD_CHECK(!m.owner_died());
    m.unlock();
    CHILD_CHECK(s.try_acquire_for(60s));
  });
  BOOST_CHECK_EQUAL(kids.wait(next, 60s), 0);
}

BOOST_AUTO_TEST_CASE(killing_a_barrier_party_breaks_it, *utf::timeout(120)) {
  constexpr int procs = 4;
  struct shared {
    std::atomic<int> passed_once;
    std::atomic<int> arriving_again;
  };
  shmkit::barrier b(procs);
  in_shm<shared> sh;
  children kids;
  // The victim passes the barrier once, then dies without arriving again.
  const pid_t victim = kids.spawn([&] {
    b.arrive_and_wait();
    sh->passed_once.fetch_add(1);
    park_forever();
  });
  for (int p = 1; p < procs; ++p)
    kids.spawn([&] {
      b.arrive_and_wait();
      sh->passed_once.fetch_add(1);
      sh->arriving_again.fetch_add(1);
      try {
        b.arrive_and_wait();
      } catch (const shmkit::broken_barrier_error&) {
        return;  // what must happen
      }
      CHILD_CHECK(!"arrive_and_wait passed a barrier that lost a party");
    });
  BOOST_REQUIRE(reaches(sh->passed_once, procs));
  BOOST_REQUIRE(reaches(sh->arriving_again, procs - 1));
  BOOST_REQUIRE(shmkit::test::eventually([&] { return b.n_waiting() == procs - 1; }));
  kids.kill(victim);
  BOOST_CHECK(kids.all_ok(60s));
  BOOST_CHECK(b.broken());
  BOOST_CHECK_THROW(b.arrive_and_wait(), shmkit::broken_barrier_error);
}

BOOST_AUTO_TEST_CASE(barrier_party_dead_before_the_others_arrive, *utf::timeout(120)) {
  shmkit::barrier b(2);
  in_shm<steps> st;
  children kids;
  const pid_t victim = kids.spawn([&] {
    b.arrive_and_wait();
    st->holding.store(1);
    park_forever();
  });
  b.arrive_and_wait();  // round 0: both pass
  BOOST_REQUIRE(reaches(st->holding, 1));
  kids.kill(victim);
  BOOST_CHECK_THROW(b.arrive_and_wait(), shmkit::broken_barrier_error);  // round 1
}

// A party killed before its first arrival: it holds a handle (inherited through fork, or
// opened by name), so the barrier knows it and breaks instead of waiting for it forever. Each
// survivor waits with wait_for(60s): a barrier that does not break fails the check (returns
// false) instead of hanging the test.
BOOST_AUTO_TEST_CASE(barrier_party_killed_before_its_first_arrival, *utf::timeout(120)) {
  shmkit::barrier b(2);
  in_shm<steps> st;
  children kids;
  // The victim inherited `b` through fork and is killed while "working", before arriving.
  kids.kill(spawn_holder(kids, st->holding, [] {}));
  BOOST_CHECK_THROW(b.wait_for(60s), shmkit::broken_barrier_error);
  BOOST_CHECK(b.broken());
}

BOOST_AUTO_TEST_CASE(barrier_party_killed_before_arriving_while_the_other_waits,
                     *utf::timeout(120)) {
  shmkit::barrier b(2);
  in_shm<steps> st;
  children kids;
  const pid_t victim = spawn_holder(kids, st->holding, [] {});
  // A thread of this process kills the victim once the main thread waits (not a forked
  // killer: it would hold the barrier too, and its own end would break it).
  std::thread killer([&] {
    if (shmkit::test::eventually([&] { return b.n_waiting() == 1; })) ::kill(victim, SIGKILL);
  });
  BOOST_CHECK_THROW(b.wait_for(60s), shmkit::broken_barrier_error);
  killer.join();
  kids.kill(victim);  // reaps it
}

BOOST_AUTO_TEST_CASE(barrier_opener_killed_before_its_first_arrival, *utf::timeout(120)) {
  const std::string name = shmkit::test::unique_name("barrier");
  shmkit::test::name_guard guard(name);
  in_shm<steps> st;
  children kids;
  // Forked before the barrier exists, so the victim's only handle is the one it opens.
  const pid_t victim = kids.spawn([&] {
    CHILD_CHECK(reaches(st->blocking, 1));
    shmkit::barrier mine(shmkit::open_only, name);
    // A second mapping of the same barrier, destroyed: `mine` still holds it.
    { shmkit::barrier again(shmkit::open_only, name); }
    st->holding.store(1);
    park_forever();
  });
  shmkit::barrier b(shmkit::create_only, name, 2);
  st->blocking.store(1);
  BOOST_REQUIRE(reaches(st->holding, 1));
  kids.kill(victim);
  BOOST_CHECK_THROW(b.wait_for(60s), shmkit::broken_barrier_error);
}

// The price of counting every holder: a forked helper that is not a party, killed while it
// still holds the handle it inherited, breaks the round in progress too.
BOOST_AUTO_TEST_CASE(barrier_helper_killed_holding_a_handle_breaks_it, *utf::timeout(120)) {
  shmkit::barrier b(2);
  in_shm<steps> st;
  children kids;
  const pid_t party = kids.spawn([&] {
    try {
      b.arrive_and_wait();
    } catch (const shmkit::broken_barrier_error&) {
      return;
    }
    CHILD_CHECK(!"passed a barrier whose other holder died");
  });
  const pid_t helper = spawn_holder(kids, st->holding, [] {});
  BOOST_REQUIRE(shmkit::test::eventually([&] { return b.n_waiting() == 1; }));
  kids.kill(helper);
  BOOST_CHECK_EQUAL(kids.wait(party, 60s), 0);
  BOOST_CHECK(b.broken());
}

BOOST_AUTO_TEST_CASE(rwlock_reader_killed_does_not_block_writers, *utf::timeout(120)) {
  in_shm<rw_data> d;
  children kids;
  const pid_t victim = spawn_holder(kids, d->holding, [&] { d->lock.lock_shared(); });
  const pid_t writer = kids.spawn([&] {
    CHILD_CHECK(d->lock.lock_until(shmkit::detail::deadline_after(60s)));
    CHILD_CHECK(!d->lock.owner_died());  // a dead reader changed nothing
    d->lock.unlock();
  });
  std::this_thread::sleep_for(50ms);
  kids.kill(victim);
  BOOST_CHECK_EQUAL(kids.wait(writer, 60s), 0);
  BOOST_CHECK_EQUAL(d->lock.reader_count(), 0u);
}

BOOST_AUTO_TEST_CASE(rwlock_writer_killed_is_detected, *utf::timeout(120)) {
  in_shm<rw_data> d;
  children kids;
  const pid_t victim = spawn_holder(kids, d->holding, [&] { d->lock.lock(); });
  const pid_t reader = kids.spawn([&] {
    CHILD_CHECK(d->lock.lock_shared_until(shmkit::detail::deadline_after(60s)));
    d->lock.unlock_shared();
  });
  std::this_thread::sleep_for(50ms);
  kids.kill(victim);
  BOOST_CHECK_EQUAL(kids.wait(reader, 60s), 0);
  // The next writer learns that a writer died holding the lock.
  BOOST_REQUIRE(d->lock.lock_until(shmkit::detail::deadline_after(60s)));
  BOOST_CHECK(d->lock.owner_died());
  d->lock.mark_consistent();
  BOOST_CHECK(!d->lock.owner_died());
  d->lock.unlock();

  // A writer killed holding it, found by the next writer directly.
  const pid_t victim2 = spawn_holder(kids, d->holding, [&] { d->lock.lock(); });
  kids.kill(victim2);
  BOOST_REQUIRE(d->lock.lock_until(shmkit::detail::deadline_after(60s)));
  BOOST_CHECK(d->lock.owner_died());
  d->lock.unlock();
  BOOST_CHECK(d->lock.try_lock());
  BOOST_CHECK(!d->lock.owner_died());
  d->lock.unlock();
}

BOOST_AUTO_TEST_CASE(rwlock_slots_of_dead_readers_are_reclaimed, *utf::timeout(120)) {
  // A reader that dies holding every slot (a thread may hold several) leaves later readers
  // waiting only until their next liveness check.
  in_shm<rw_data> d;
  children kids;
  const pid_t victim = spawn_holder(kids, d->holding, [&] {
    for (std::size_t i = 0; i < shmkit::detail::rwlock_state::reader_slots; ++i)
      CHILD_CHECK(d->lock.try_lock_shared());
    CHILD_CHECK(!d->lock.try_lock_shared());  // full
  });
  BOOST_CHECK_EQUAL(d->lock.reader_count(), shmkit::detail::rwlock_state::reader_slots);
  kids.kill(victim);
  BOOST_REQUIRE(d->lock.lock_shared_until(shmkit::detail::deadline_after(60s)));
  d->lock.unlock_shared();
  BOOST_REQUIRE(d->lock.lock_until(shmkit::detail::deadline_after(60s)));
  BOOST_CHECK_EQUAL(d->lock.reader_count(), 0u);
  d->lock.unlock();
}
