// SPDX-License-Identifier: MIT
// The wait layer across real processes: wake one, wake all, timeouts, spurious wake-ups (signals),
// no system call on the paths where nobody sleeps, and light/heavy (asymmetric) fences.
#define BOOST_TEST_MODULE wait
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <csignal>
#include <new>
#include <sched.h>
#include <sys/mman.h>

#include "shmkit/detail/wait.hpp"
#include "support.hpp"

namespace sd = shmkit::detail;
using namespace std::chrono_literals;

namespace {

struct shared_block {
  std::atomic<std::uint32_t> word{0};
  std::atomic<std::uint32_t> tickets{0};
  std::atomic<std::uint32_t> done{0};
  std::atomic<std::uint32_t> flag{0};
  sd::waitpoint wp;
};

// A block of anonymous shared memory, visible to children forked afterwards.
struct mapping {
  shared_block* b;
  mapping() {
    void* p = ::mmap(nullptr, sizeof(shared_block), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    BOOST_REQUIRE(p != MAP_FAILED);
    b = new (p) shared_block;
  }
  ~mapping() { ::munmap(b, sizeof(shared_block)); }
};

// Waits until `n` processes are counted as sleepers on wp (they may still be on their way into
// the kernel, which the protocol tolerates).
void await_sleepers(sd::waitpoint& wp, std::uint32_t n) {
  const auto end = sd::clock::now() + 30s;
  while (wp.waiters.load() < n && sd::clock::now() < end) std::this_thread::sleep_for(1ms);
  BOOST_REQUIRE_GE(wp.waiters.load(), n);
}

}  // namespace

BOOST_AUTO_TEST_CASE(futex_wait_returns_at_once_when_the_word_differs) {
  std::atomic<std::uint32_t> w{5};
  BOOST_CHECK(sd::futex_wait(&w, 4, sd::clock::now() + 10s));
}

BOOST_AUTO_TEST_CASE(futex_wait_times_out_and_not_before_the_deadline) {
  std::atomic<std::uint32_t> w{0};
  const auto until = sd::clock::now() + 100ms;
  bool woken = true;
  while (woken && sd::clock::now() < until) woken = sd::futex_wait(&w, 0, until);
  BOOST_CHECK(!woken);
  BOOST_CHECK(sd::clock::now() >= until);
}

BOOST_AUTO_TEST_CASE(waitpoint_timeout) {
  mapping m;
  const auto until = sd::clock::now() + 150ms;
  BOOST_CHECK(!m.b->wp.wait_until([&] { return m.b->flag.load() != 0; }, until));
  BOOST_CHECK(sd::clock::now() >= until);
  BOOST_CHECK_EQUAL(m.b->wp.waiters.load(), 0u);
}

BOOST_AUTO_TEST_CASE(wake_one_across_processes) {
  mapping m;
  auto* b = m.b;
  std::vector<pid_t> kids;
  for (int i = 0; i < 3; ++i)
    kids.push_back(shmkit::test::spawn([b] {
      // Take one ticket, sleeping until there is one.
      for (;;) {
        b->wp.wait_until([&] { return b->tickets.load() > 0; }, std::nullopt);
        std::uint32_t t = b->tickets.load();
        if (t > 0 && b->tickets.compare_exchange_strong(t, t - 1)) break;
      }
      b->done.fetch_add(1);
    }));
  await_sleepers(b->wp, 3);
  for (std::uint32_t round = 1; round <= 3; ++round) {
    b->tickets.fetch_add(1);
    b->wp.notify_one();
    const auto end = sd::clock::now() + 30s;
    while (b->done.load() < round && sd::clock::now() < end) std::this_thread::sleep_for(1ms);
    BOOST_CHECK_EQUAL(b->done.load(), round);  // exactly one more finished per ticket
  }
  BOOST_CHECK(shmkit::test::wait_all_ok(kids));
}

BOOST_AUTO_TEST_CASE(wake_all_across_processes) {
  mapping m;
  auto* b = m.b;
  std::vector<pid_t> kids;
  for (int i = 0; i < 6; ++i)
    kids.push_back(shmkit::test::spawn([b] {
      CHILD_CHECK(b->wp.wait_until([&] { return b->flag.load() != 0; }, sd::clock::now() + 60s));
      b->done.fetch_add(1);
    }));
  await_sleepers(b->wp, 6);
  b->flag.store(1);
  b->wp.notify_all();
  BOOST_CHECK(shmkit::test::wait_all_ok(kids));
  BOOST_CHECK_EQUAL(b->done.load(), 6u);
}

namespace {
void on_usr1(int) {}
}  // namespace

BOOST_AUTO_TEST_CASE(signals_are_spurious_wakeups_not_results) {
  mapping m;
  auto* b = m.b;
  pid_t kid = shmkit::test::spawn([b] {
    struct sigaction sa {};
    sa.sa_handler = on_usr1;  // no SA_RESTART: the futex call returns EINTR
    ::sigaction(SIGUSR1, &sa, nullptr);
    b->done.store(1);
    const bool ok = b->wp.wait_until([&] { return b->flag.load() != 0; }, std::nullopt);
    CHILD_CHECK(ok && b->flag.load() == 1);
  });
  while (b->done.load() == 0) std::this_thread::sleep_for(1ms);
  await_sleepers(b->wp, 1);
  for (int i = 0; i < 50; ++i) {
    ::kill(kid, SIGUSR1);
    std::this_thread::sleep_for(2ms);
  }
  b->flag.store(1);
  b->wp.notify_all();
  BOOST_CHECK_EQUAL(shmkit::test::wait_exit(kid, 60s), 0);
}

BOOST_AUTO_TEST_CASE(no_system_call_when_nobody_sleeps) {
  mapping m;
  const auto before = sd::futex_calls();
  for (int i = 0; i < 1000; ++i) {
    m.b->wp.notify_one();
    m.b->wp.notify_all();
    m.b->flag.store(1);
    BOOST_CHECK(m.b->wp.wait_until([&] { return m.b->flag.load() != 0; }, std::nullopt));
  }
  const auto after = sd::futex_calls();
  BOOST_CHECK_EQUAL(after.wakes, before.wakes);
  BOOST_CHECK_EQUAL(after.waits, before.waits);
}

BOOST_AUTO_TEST_CASE(deadline_after_saturates) {
  auto far = sd::deadline_after(std::chrono::hours::max());
  BOOST_CHECK(far == sd::time_point::max());
  auto past = sd::deadline_after(-5s);
  BOOST_CHECK(past <= sd::clock::now());
}

namespace {

// The store-buffering litmus test, across two processes: in round i the light side stores x = i,
// light_fence(), loads w; the heavy side stores w = i, heavy_fence(), loads x. At least one of
// them must see the other's store (without the heavy fence x86 lets both miss).
constexpr int litmus_rounds = 20000;

struct litmus_block {
  std::atomic<std::uint64_t> go{0};    // the round both sides may start
  std::atomic<std::uint64_t> done{0};  // the last round the light side finished
  alignas(64) std::atomic<std::uint64_t> x{0};
  alignas(64) std::atomic<std::uint64_t> w{0};
  std::atomic<std::uint8_t> light_saw[litmus_rounds + 1];
};

void await(const std::atomic<std::uint64_t>& v, std::uint64_t at_least) {
  for (int spins = 0; v.load(std::memory_order_acquire) < at_least; ++spins)
    if (spins % 1024 == 1023) ::sched_yield();  // the other side may share our CPU
    else sd::cpu_relax();
}

}  // namespace

BOOST_AUTO_TEST_CASE(light_and_heavy_fences_order_a_store_before_a_load) {
  if (!sd::register_light_fences() || !sd::heavy_fence()) {
    BOOST_TEST_MESSAGE("membarrier(2) global expedited is not available: nothing to test");
    return;
  }
  void* p = ::mmap(nullptr, sizeof(litmus_block), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(p != MAP_FAILED);
  auto* b = new (p) litmus_block;
  const pid_t light = shmkit::test::spawn([&] {
    CHILD_CHECK(sd::register_light_fences());
    for (std::uint64_t i = 1; i <= litmus_rounds; ++i) {
      await(b->go, i);
      // release: the ring's publication store; relaxed load: as the ring's waiter count.
      b->x.store(i, std::memory_order_release);
      sd::light_fence();
      b->light_saw[i].store(b->w.load(std::memory_order_relaxed) >= i ? 1 : 0,
                            std::memory_order_relaxed);
      b->done.store(i, std::memory_order_release);  // release: publishes light_saw[i]
    }
  });
  int both_missed = 0;
  for (std::uint64_t i = 1; i <= litmus_rounds; ++i) {
    b->go.store(i, std::memory_order_release);
    b->w.store(i, std::memory_order_seq_cst);
    const bool fenced = sd::heavy_fence();
    const bool heavy_saw = b->x.load(std::memory_order_relaxed) >= i;
    await(b->done, i);
    if (!fenced || (!heavy_saw && b->light_saw[i].load(std::memory_order_relaxed) == 0))
      ++both_missed;
  }
  BOOST_CHECK_EQUAL(shmkit::test::wait_exit(light), 0);
  BOOST_CHECK_EQUAL(both_missed, 0);
  ::munmap(p, sizeof(litmus_block));
}
