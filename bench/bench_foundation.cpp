// SPDX-License-Identifier: MIT
// Foundation cases: the wait layer's ping-pong round trip between two processes against
// pipe(2) and a raw spinning ping-pong (the physical floor), and segment create+open+remove
// against Boost.Interprocess's shared_memory_object doing the same.
#include <sys/mman.h>
#include <unistd.h>
#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdint>
#include <new>

#include "harness.hpp"
#include "shmkit/detail/segment.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/shared_memory.hpp"

using namespace shmkit::bench;
namespace sd = shmkit::detail;

namespace {

struct alignas(64) pingpong {
  std::atomic<std::uint32_t> turn{0};
  alignas(64) sd::waitpoint to_child;
  alignas(64) sd::waitpoint to_parent;
};

void* shared_anon(std::size_t n) {
  return ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
}

// Median round trip in microseconds over `reps` runs of `n` round trips.
double futex_rtt(long n, bool pinned) {
  auto* pp = new (shared_anon(sizeof(pingpong))) pingpong;
  std::vector<double> runs;
  for (int rep = 0; rep < 3; ++rep) {
    pp->turn.store(0);
    pid_t child = fork_run([&] {
      if (pinned) pin_to(1);
      for (long i = 0; i < n; ++i) {
        pp->to_child.wait_until([&] { return pp->turn.load(std::memory_order_acquire) == 1; },
                                std::nullopt);
        pp->turn.store(0, std::memory_order_release);
        pp->to_parent.notify_one();
      }
    });
    if (pinned) pin_to(0);
    auto t0 = clock::now();
    for (long i = 0; i < n; ++i) {
      pp->turn.store(1, std::memory_order_release);
      pp->to_child.notify_one();
      pp->to_parent.wait_until([&] { return pp->turn.load(std::memory_order_acquire) == 0; },
                               std::nullopt);
    }
    runs.push_back(seconds_since(t0) / n * 1e6);
    reap(child);
  }
  ::munmap(pp, sizeof(pingpong));
  return median(runs);
}

double spin_rtt(long n, bool pinned) {
  std::vector<double> runs;
  for (int rep = 0; rep < 3; ++rep) runs.push_back(spin_round_trip_us(n, pinned));
  return median(runs);
}

double pipe_rtt(long n, bool pinned) {
  std::vector<double> runs;
  for (int rep = 0; rep < 3; ++rep) {
    int a[2], b[2];
    if (::pipe(a) != 0 || ::pipe(b) != 0) return 0.0 / 0.0;
    pid_t child = fork_run([&] {
      if (pinned) pin_to(1);
      char c;
      for (long i = 0; i < n; ++i) {
        if (::read(a[0], &c, 1) != 1) break;
        if (::write(b[1], &c, 1) != 1) break;
      }
    });
    if (pinned) pin_to(0);
    char c = 'x';
    auto t0 = clock::now();
    for (long i = 0; i < n; ++i) {
      if (::write(a[1], &c, 1) != 1 || ::read(b[0], &c, 1) != 1) break;
    }
    runs.push_back(seconds_since(t0) / n * 1e6);
    reap(child);
    for (int fd : {a[0], a[1], b[0], b[1]}) ::close(fd);
  }
  return median(runs);
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

double shmkit_segment_cycle(long n) {
  const std::string name = fmt::format("bench-seg-{}", ::getpid());
  auto t0 = clock::now();
  for (long i = 0; i < n; ++i) {
    shmkit::shared_memory a(shmkit::create_only, name, 4096);
    shmkit::shared_memory b(shmkit::open_only, name);
    b.data()[0] = std::byte{1};
  }  // a's destructor removes the name
  return n / seconds_since(t0);
}

double boost_segment_cycle(long n) {
  namespace bip = boost::interprocess;
  const std::string name = fmt::format("bench-bip-{}", ::getpid());
  auto t0 = clock::now();
  for (long i = 0; i < n; ++i) {
    bip::shared_memory_object a(bip::create_only, name.c_str(), bip::read_write);
    a.truncate(4096);
    bip::mapped_region ra(a, bip::read_write);
    bip::shared_memory_object b(bip::open_only, name.c_str(), bip::read_write);
    bip::mapped_region rb(b, bip::read_write);
    static_cast<char*>(rb.get_address())[0] = 1;
    bip::shared_memory_object::remove(name.c_str());
  }
  return n / seconds_since(t0);
}

}  // namespace

int main() {
  table t("foundation");
  const long n = scaled(100000);
  const bool can_pin = cpus_available() >= 2;
  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    const char* how = pinned ? "pinned" : "unpinned";
    double f = futex_rtt(n, pinned);
    double p = pipe_rtt(n, pinned);
    double s = spin_rtt(n, pinned);
    unpin();
    t.row(fmt::format("wait-layer ping-pong round trip, {}", how), "us per round trip",
          better::lower, f, {{"pipe(2)", p}, {"raw shared-memory spin (floor)", s}});
  }
  const long m = scaled(20000);
  t.row("segment create+open+remove (4 KiB)", "cycles/s", better::higher, shmkit_segment_cycle(m),
        {{"boost::interprocess shm object", boost_segment_cycle(m)}});
}
