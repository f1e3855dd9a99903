// SPDX-License-Identifier: MIT
// Synchronization cases, each beside its baselines in the same run: mutex lock+unlock
// uncontended, two processes contending for a counter, semaphore ping-pong and
// condition_variable ping-pong between two processes. Baselines: Boost.Interprocess
// (interprocess_mutex, interprocess_semaphore, interprocess_condition: pthread and sem_t on
// Linux), a pthread PTHREAD_PROCESS_SHARED mutex, and pipe(2).
#include <atomic>
#include <boost/interprocess/sync/interprocess_condition.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <boost/interprocess/sync/interprocess_semaphore.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>
#include <cstdint>
#include <mutex>
#include <new>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.hpp"
#include "shmkit/sync.hpp"

using namespace shmkit::bench;
namespace bip = boost::interprocess;

namespace {

constexpr int reps = 5;

// A T in anonymous shared memory, shared with children forked afterwards (never unmapped:
// the bench is short-lived).
template <class T, class... Args>
T* shared_new(Args&&... args) {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                   0);
  if (p == MAP_FAILED) std::abort();
  return new (p) T(std::forward<Args>(args)...);
}

// A pthread mutex made process-shared, as a Lockable.
struct pthread_shared_mutex {
  pthread_mutex_t m;
  pthread_shared_mutex() {
    pthread_mutexattr_t a;
    ::pthread_mutexattr_init(&a);
    ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    ::pthread_mutex_init(&m, &a);
    ::pthread_mutexattr_destroy(&a);
  }
  void lock() { ::pthread_mutex_lock(&m); }
  void unlock() { ::pthread_mutex_unlock(&m); }
};

cpu_set_t original_affinity;
void save_affinity() { ::sched_getaffinity(0, sizeof original_affinity, &original_affinity); }
void unpin() { ::sched_setaffinity(0, sizeof original_affinity, &original_affinity); }

// Nanoseconds per lock+unlock by one process, median of reps runs.
template <class Lock>
double uncontended_ns(Lock& lk, long n) {
  std::vector<double> runs;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clock::now();
    for (long i = 0; i < n; ++i) {
      lk.lock();
      lk.unlock();
    }
    runs.push_back(seconds_since(t0) / n * 1e9);
  }
  return median(runs);
}

struct counter {
  std::atomic<int> go{0};
  alignas(64) long value = 0;
};

// Increments per second when two processes each add n to a counter under `lk`.
template <class Lock>
double contended_rate(Lock& lk, long n, bool pinned) {
  auto* c = shared_new<counter>();
  std::vector<double> runs;
  for (int r = 0; r < reps; ++r) {
    c->go.store(0);
    c->value = 0;
    auto work = [&] {
      for (long i = 0; i < n; ++i) {
        std::lock_guard<Lock> g(lk);
        ++c->value;
      }
    };
    const pid_t child = fork_run([&] {
      if (pinned) pin_to(1);
      while (c->go.load(std::memory_order_acquire) == 0) shmkit::detail::cpu_relax();
      work();
    });
    if (pinned) pin_to(0);
    const auto t0 = clock::now();
    c->go.store(1, std::memory_order_release);
    work();
    reap(child);
    runs.push_back(2.0 * n / seconds_since(t0));
    if (c->value != 2 * n) std::fprintf(stderr, "bench: lost increments (%ld)\n", c->value);
    unpin();
  }
  return median(runs);
}

// Microseconds per round trip: the parent runs ping() and the child pong(), n times each,
// median of reps runs.
template <class Ping, class Pong>
double round_trip_us(long n, bool pinned, Ping ping, Pong pong) {
  std::vector<double> runs;
  for (int r = 0; r < reps; ++r) {
    const pid_t child = fork_run([&] {
      if (pinned) pin_to(1);
      for (long i = 0; i < n; ++i) pong();
    });
    if (pinned) pin_to(0);
    const auto t0 = clock::now();
    for (long i = 0; i < n; ++i) ping();
    runs.push_back(seconds_since(t0) / n * 1e6);
    reap(child);
    unpin();
  }
  return median(runs);
}

double shmkit_semaphore_rtt(long n, bool pinned) {
  shmkit::semaphore to_child(0), to_parent(0);
  return round_trip_us(
      n, pinned, [&] { to_child.release(), to_parent.acquire(); },
      [&] { to_child.acquire(), to_parent.release(); });
}

double boost_semaphore_rtt(long n, bool pinned) {
  auto* to_child = shared_new<bip::interprocess_semaphore>(0);
  auto* to_parent = shared_new<bip::interprocess_semaphore>(0);
  return round_trip_us(
      n, pinned, [&] { to_child->post(), to_parent->wait(); },
      [&] { to_child->wait(), to_parent->post(); });
}

double pipe_rtt(long n, bool pinned) {
  int a[2], b[2];
  if (::pipe(a) != 0 || ::pipe(b) != 0) return 0.0 / 0.0;
  char c = 'x';
  const double us = round_trip_us(
      n, pinned,
      [&] {
        if (::write(a[1], &c, 1) != 1 || ::read(b[0], &c, 1) != 1) std::abort();
      },
      [&] {
        if (::read(a[0], &c, 1) != 1 || ::write(b[1], &c, 1) != 1) std::abort();
      });
  for (int fd : {a[0], a[1], b[0], b[1]}) ::close(fd);
  return us;
}

struct turn {
  int whose = 0;  // 1: the child's turn, 0: the parent's; guarded by the mutex
};

double shmkit_condition_rtt(long n, bool pinned) {
  shmkit::mutex m;
  shmkit::condition_variable to_child, to_parent;
  auto* t = shared_new<turn>();
  return round_trip_us(
      n, pinned,
      [&] {
        std::unique_lock<shmkit::mutex> lk(m);
        t->whose = 1;
        to_child.notify_one();
        to_parent.wait(lk, [&] { return t->whose == 0; });
      },
      [&] {
        std::unique_lock<shmkit::mutex> lk(m);
        to_child.wait(lk, [&] { return t->whose == 1; });
        t->whose = 0;
        to_parent.notify_one();
      });
}

double boost_condition_rtt(long n, bool pinned) {
  struct state {
    bip::interprocess_mutex m;
    bip::interprocess_condition to_child, to_parent;
    int whose = 0;
  };
  auto* s = shared_new<state>();
  return round_trip_us(
      n, pinned,
      [&] {
        bip::scoped_lock<bip::interprocess_mutex> lk(s->m);
        s->whose = 1;
        s->to_child.notify_one();
        while (s->whose != 0) s->to_parent.wait(lk);
      },
      [&] {
        bip::scoped_lock<bip::interprocess_mutex> lk(s->m);
        while (s->whose != 1) s->to_child.wait(lk);
        s->whose = 0;
        s->to_parent.notify_one();
      });
}

}  // namespace

int main() {
  save_affinity();
  table t("sync");
  const bool can_pin = cpus_available() >= 2;

  shmkit::mutex sm;
  auto* bm = shared_new<bip::interprocess_mutex>();
  auto* pm = shared_new<pthread_shared_mutex>();
  const long u = scaled(5000000);
  t.row("mutex lock+unlock, uncontended", "ns per lock+unlock", better::lower,
        uncontended_ns(sm, u),
        {{"boost::interprocess_mutex", uncontended_ns(*bm, u)},
         {"pthread mutex (process-shared)", uncontended_ns(*pm, u)}});

  const long c = scaled(1000000);
  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    t.row(fmt::format("mutex, 2 processes contending, {}", pinned ? "pinned" : "unpinned"),
          "increments/s", better::higher, contended_rate(sm, c, pinned),
          {{"boost::interprocess_mutex", contended_rate(*bm, c, pinned)},
           {"pthread mutex (process-shared)", contended_rate(*pm, c, pinned)}});
  }

  const long p = scaled(50000);
  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    const char* how = pinned ? "pinned" : "unpinned";
    t.row(fmt::format("semaphore ping-pong round trip, {}", how), "us per round trip",
          better::lower, shmkit_semaphore_rtt(p, pinned),
          {{"boost::interprocess_semaphore", boost_semaphore_rtt(p, pinned)},
           {"pipe(2)", pipe_rtt(p, pinned)}});
    t.row(fmt::format("condition_variable ping-pong round trip, {}", how),
          "us per round trip", better::lower, shmkit_condition_rtt(p, pinned),
          {{"boost::interprocess_condition", boost_condition_rtt(p, pinned)}});
  }
}
