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
#include <functional>
#include <vector>
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

constexpr int rounds = 7;

// Measures each contender once per round, the contenders interleaved so that a change in the
// machine's load hits all of them alike; returns each one's median.
std::vector<double> interleaved(const std::vector<std::function<double()>>& contenders) {
  std::vector<std::vector<double>> runs(contenders.size());
  for (int r = 0; r < rounds; ++r)
    for (std::size_t i = 0; i < contenders.size(); ++i) runs[i].push_back(contenders[i]());
  std::vector<double> medians;
  for (auto& v : runs) medians.push_back(median(v));
  return medians;
}

// A T in anonymous shared memory, shared with children forked afterwards (never unmapped:
// the bench is short-lived).
template <class T, class... Args>
T* shared_new(Args&&... args) {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
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

// Where the two processes of a case run: CPUs 0 and 1, both on CPU 0, or wherever the
// scheduler puts them.
enum class placement { pinned, same_cpu, unpinned };
const char* name_of(placement p) {
  return p == placement::pinned     ? "pinned 0/1"
         : p == placement::same_cpu ? "both on CPU 0"
                                    : "unpinned";
}
void place_parent(placement p) {
  if (p != placement::unpinned) pin_to(0);
}
void place_child(placement p) {
  if (p != placement::unpinned) pin_to(p == placement::pinned ? 1 : 0);
}

cpu_set_t original_affinity;
void save_affinity() { ::sched_getaffinity(0, sizeof original_affinity, &original_affinity); }
void unpin() { ::sched_setaffinity(0, sizeof original_affinity, &original_affinity); }

// Nanoseconds per lock+unlock by one process.
template <class Lock>
double uncontended_ns(Lock& lk, long n) {
  const auto t0 = clock::now();
  for (long i = 0; i < n; ++i) {
    lk.lock();
    lk.unlock();
  }
  return seconds_since(t0) / n * 1e9;
}

struct counter {
  std::atomic<int> go{0};
  alignas(64) long value = 0;
};

// Increments per second when two processes each add n to a counter under `lk`.
template <class Lock>
double contended_rate(Lock& lk, counter* c, long n, placement where) {
  c->go.store(0);
  c->value = 0;
  auto work = [&] {
    for (long i = 0; i < n; ++i) {
      std::lock_guard<Lock> g(lk);
      ++c->value;
    }
  };
  const pid_t child = fork_run([&] {
    place_child(where);
    while (c->go.load(std::memory_order_acquire) == 0) shmkit::detail::cpu_relax();
    work();
  });
  place_parent(where);
  const auto t0 = clock::now();
  c->go.store(1, std::memory_order_release);
  work();
  reap(child);
  const double rate = 2.0 * n / seconds_since(t0);
  if (c->value != 2 * n) std::fprintf(stderr, "bench: lost increments (%ld)\n", c->value);
  unpin();
  return rate;
}

// Microseconds per round trip: the parent runs ping() and the child pong(), n times each.
template <class Ping, class Pong>
double round_trip_us(long n, placement where, Ping ping, Pong pong) {
  const pid_t child = fork_run([&] {
    place_child(where);
    for (long i = 0; i < n; ++i) pong();
  });
  place_parent(where);
  const auto t0 = clock::now();
  for (long i = 0; i < n; ++i) ping();
  const double us = seconds_since(t0) / n * 1e6;
  reap(child);
  unpin();
  return us;
}

// The ping-pong pairs: each is set up once and measured once per round.
struct semaphore_pairs {
  shmkit::semaphore to_child{0}, to_parent{0};
  bip::interprocess_semaphore* b_to_child = shared_new<bip::interprocess_semaphore>(0);
  bip::interprocess_semaphore* b_to_parent = shared_new<bip::interprocess_semaphore>(0);
  int a[2], b[2];
  semaphore_pairs() {
    if (::pipe(a) != 0 || ::pipe(b) != 0) std::abort();
  }

  double shmkit_rtt(long n, placement where) {
    return round_trip_us(
        n, where, [&] { to_child.release(), to_parent.acquire(); },
        [&] { to_child.acquire(), to_parent.release(); });
  }
  double boost_rtt(long n, placement where) {
    return round_trip_us(
        n, where, [&] { b_to_child->post(), b_to_parent->wait(); },
        [&] { b_to_child->wait(), b_to_parent->post(); });
  }
  double pipe_rtt(long n, placement where) {
    char c = 'x';
    return round_trip_us(
        n, where,
        [&] {
          if (::write(a[1], &c, 1) != 1 || ::read(b[0], &c, 1) != 1) std::abort();
        },
        [&] {
          if (::read(a[0], &c, 1) != 1 || ::write(b[1], &c, 1) != 1) std::abort();
        });
  }
};

struct condition_pairs {
  struct boost_state {
    bip::interprocess_mutex m;
    bip::interprocess_condition to_child, to_parent;
    int whose = 0;
  };
  shmkit::mutex m;
  shmkit::condition_variable to_child, to_parent;
  int* whose = shared_new<int>(0);  // 1: the child's turn, 0: the parent's; under m
  boost_state* b = shared_new<boost_state>();

  double shmkit_rtt(long n, placement where) {
    return round_trip_us(
        n, where,
        [&] {
          std::unique_lock<shmkit::mutex> lk(m);
          *whose = 1;
          to_child.notify_one();
          to_parent.wait(lk, [&] { return *whose == 0; });
        },
        [&] {
          std::unique_lock<shmkit::mutex> lk(m);
          to_child.wait(lk, [&] { return *whose == 1; });
          *whose = 0;
          to_parent.notify_one();
        });
  }
  double boost_rtt(long n, placement where) {
    return round_trip_us(
        n, where,
        [&] {
          bip::scoped_lock<bip::interprocess_mutex> lk(b->m);
          b->whose = 1;
          b->to_child.notify_one();
          while (b->whose != 0) b->to_parent.wait(lk);
        },
        [&] {
          bip::scoped_lock<bip::interprocess_mutex> lk(b->m);
          while (b->whose != 1) b->to_child.wait(lk);
          b->whose = 0;
          b->to_parent.notify_one();
        });
  }
};

}  // namespace

int main() {
  save_affinity();
  table t("sync");
  const bool can_pin = cpus_available() >= 2;

  shmkit::mutex sm;
  auto* bm = shared_new<bip::interprocess_mutex>();
  auto* pm = shared_new<pthread_shared_mutex>();
  const long u = scaled(2000000);
  auto un =
      interleaved({[&] { return uncontended_ns(sm, u); }, [&] { return uncontended_ns(*bm, u); },
                   [&] { return uncontended_ns(*pm, u); }});
  t.row("mutex lock+unlock, uncontended", "ns per lock+unlock", better::lower, un[0],
        {{"boost::interprocess_mutex", un[1]}, {"pthread mutex (process-shared)", un[2]}});

  auto* c = shared_new<counter>();
  const long n = scaled(500000);
  const std::vector<placement> places =
      can_pin ? std::vector{placement::pinned, placement::same_cpu, placement::unpinned}
              : std::vector{placement::unpinned};
  for (placement where : places) {
    auto r = interleaved({[&] { return contended_rate(sm, c, n, where); },
                          [&] { return contended_rate(*bm, c, n, where); },
                          [&] { return contended_rate(*pm, c, n, where); }});
    t.row(fmt::format("mutex, 2 processes contending, {}", name_of(where)), "increments/s",
          better::higher, r[0],
          {{"boost::interprocess_mutex", r[1]}, {"pthread mutex (process-shared)", r[2]}});
  }

  semaphore_pairs sp;
  condition_pairs cp;
  const long p = scaled(20000);
  for (placement where : places) {
    auto s = interleaved({[&] { return sp.shmkit_rtt(p, where); },
                          [&] { return sp.boost_rtt(p, where); },
                          [&] { return sp.pipe_rtt(p, where); }});
    t.row(fmt::format("semaphore ping-pong round trip, {}", name_of(where)), "us per round trip",
          better::lower, s[0], {{"boost::interprocess_semaphore", s[1]}, {"pipe(2)", s[2]}});
    auto cv = interleaved(
        {[&] { return cp.shmkit_rtt(p, where); }, [&] { return cp.boost_rtt(p, where); }});
    t.row(fmt::format("condition_variable ping-pong round trip, {}", name_of(where)),
          "us per round trip", better::lower, cv[0], {{"boost::interprocess_condition", cv[1]}});
  }
}
