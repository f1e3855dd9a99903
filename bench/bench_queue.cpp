// SPDX-License-Identifier: MIT
// shmkit::queue against its baselines, all in the same run, between real processes:
// throughput 1 -> 1 and 2 -> 2 for 8 B, 64 B, 4 KiB and 1 MiB messages, single and batched,
// against boost::interprocess::message_queue, pipe(2), Python's multiprocessing.Queue (when
// python3 is there) and a raw shared-memory SPSC ring (no blocking, no codec: the floor);
// 1 MiB against memcpy bandwidth; ping-pong round trips (p50/p99/max) for payloads of 8 B to
// 4 MiB against pipe(2) and a raw spinning ping-pong that copies the same payload (and for
// 8 B the foundation bench's raw spin, a mean without copy), interleaved in the same run.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/interprocess/ipc/message_queue.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "harness.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/queue.hpp"

using namespace shmkit::bench;
namespace bip = boost::interprocess;
namespace sd = shmkit::detail;

namespace {

const double nan_v = std::numeric_limits<double>::quiet_NaN();

void* shared_anon(std::size_t n) {
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  return p;
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

// A start line shared by the parent and its children: children wait at it, the parent opens
// it and starts the clock, so process start-up is not measured.
struct start_line {
  std::atomic<std::uint32_t> go{0};
  void wait() {
    while (go.load(std::memory_order_acquire) == 0) sd::cpu_relax();
  }
};

// Runs `producers` and `consumers` children; returns seconds from the start until every one
// has exited. `after_producers` runs in the parent once the producers are done (to close a
// queue or send sentinels). One producer and one consumer are pinned to two CPUs (when
// there are two), so that every contender of a 1 -> 1 case meets the same conditions: an
// unpinned pair that lands on one CPU makes any spinning side (the raw ring most) collapse.
template <class P, class C, class A>
double run_parties(int producers, int consumers, P produce, C consume, A after_producers) {
  auto* line = new (shared_anon(sizeof(start_line))) start_line;
  const bool pin = producers == 1 && consumers == 1 && cpus_available() >= 2;
  std::vector<pid_t> pp, cc;
  for (int c = 0; c < consumers; ++c)
    cc.push_back(fork_run([&, c] {
      if (pin) pin_to(1);
      line->wait();
      consume(c);
    }));
  for (int p = 0; p < producers; ++p)
    pp.push_back(fork_run([&, p] {
      if (pin) pin_to(0);
      line->wait();
      produce(p);
    }));
  ::usleep(20000);
  const auto t0 = clock::now();
  line->go.store(1, std::memory_order_release);
  for (pid_t p : pp) reap(p);
  after_producers();
  for (pid_t c : cc) reap(c);
  const double s = seconds_since(t0);
  ::munmap(line, sizeof(start_line));
  return s;
}

// Contenders measured in turn, three rounds of one run each, and the median of each: on a
// shared machine the load changes by the second, and interleaving gives every contender
// the same share of quiet and busy moments.
std::vector<double> interleaved_medians(const std::vector<std::function<double()>>& runs) {
  std::vector<std::vector<double>> got(runs.size());
  for (int round = 0; round < 3; ++round)
    for (std::size_t i = 0; i < runs.size(); ++i) got[i].push_back(runs[i]());
  std::vector<double> out;
  for (auto& g : got) out.push_back(median(g));
  return out;
}

// ---------------------------------------------------------------------------------------
// Message types: raw bytes for 8 B and 64 B (the one-memcpy path), std::string beyond.

struct msg64 {
  std::uint64_t w[8];
};

template <std::size_t N>
struct payload_of {
  using type = std::string;
  static type make(std::uint64_t i) {
    std::string s(N - 8, 'p');  // the codec adds an 8-byte length: N bytes on the wire
    std::memcpy(s.data(), &i, 8);
    return s;
  }
};
template <>
struct payload_of<8> {
  using type = std::uint64_t;
  static type make(std::uint64_t i) { return i; }
};
template <>
struct payload_of<64> {
  using type = msg64;
  static type make(std::uint64_t i) { return msg64{{i, i, i, i, i, i, i, i}}; }
};

// ---------------------------------------------------------------------------------------
// shmkit

// `reuse`: the consumers decode into objects they keep (get(T&), get_many(out, n)).
template <std::size_t N>
double shmkit_rate_once(int producers, int consumers, long n, std::size_t cap, std::size_t batch,
                        bool reuse) {
  using T = typename payload_of<N>::type;
  shmkit::queue<T> q(cap);
  const long per = n / producers;
  const double s = run_parties(
      producers, consumers,
      [&](int) {
        const T v = payload_of<N>::make(1);
        if (batch <= 1) {
          for (long i = 0; i < per; ++i) q.put(v);
        } else {
          std::vector<T> vs(batch, v);
          for (long i = 0; i < per; i += static_cast<long>(batch))
            q.put_many(std::span<const T>(vs.data(), std::min<long>(batch, per - i)));
        }
      },
      [&](int) {
        T one{};
        std::vector<T> many;
        try {
          for (;;) {
            if (batch <= 1 && reuse)
              q.get(one);
            else if (batch <= 1)
              (void)q.get();
            else if (reuse)
              q.get_many(many, batch);
            else
              (void)q.get_many(batch);
          }
        } catch (const shmkit::closed_error&) {
        }
      },
      [&] { q.close(); });
  return per * producers / s;
}

// ---------------------------------------------------------------------------------------
// boost::interprocess::message_queue (sentinels end the consumers)

double boost_rate_once(std::size_t size, int producers, int consumers, long n, std::size_t cap) {
  const std::string name = fmt::format("shmkit-bench-mq-{}", ::getpid());
  bip::message_queue::remove(name.c_str());
  bip::message_queue mq(bip::create_only, name.c_str(), cap, size);
  const long per = n / producers;
  const double s = run_parties(
      producers, consumers,
      [&](int) {
        bip::message_queue q(bip::open_only, name.c_str());
        std::vector<char> buf(size, 'b');
        buf[0] = 0;
        for (long i = 0; i < per; ++i) q.send(buf.data(), size, 0);
      },
      [&](int) {
        bip::message_queue q(bip::open_only, name.c_str());
        std::vector<char> buf(size);
        bip::message_queue::size_type got;
        unsigned prio;
        for (;;) {
          q.receive(buf.data(), size, got, prio);
          if (buf[0] == 1) break;
        }
      },
      [&] {
        std::vector<char> end(size, 0);
        end[0] = 1;
        for (int c = 0; c < consumers; ++c) mq.send(end.data(), size, 0);
      });
  bip::message_queue::remove(name.c_str());
  return per * producers / s;
}

// ---------------------------------------------------------------------------------------
// pipe(2): fixed-size messages; with several writers only up to PIPE_BUF (atomic writes).

// Moves exactly n bytes through fd (op is ::read or ::write); false on EOF or error.
template <class Op, class Ptr>
bool all_of_it(Op op, int fd, Ptr p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = op(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}
bool write_all(int fd, const char* p, std::size_t n) { return all_of_it(::write, fd, p, n); }
bool read_all(int fd, char* p, std::size_t n) { return all_of_it(::read, fd, p, n); }

double pipe_rate_once(std::size_t size, int producers, int consumers, long n) {
  if ((producers > 1 || consumers > 1) && size > PIPE_BUF) return nan_v;
  int fd[2];
  if (::pipe(fd) != 0) return nan_v;
  const long per = n / producers;
  const double s = run_parties(
      producers, consumers,
      [&](int) {
        ::close(fd[0]);
        std::vector<char> buf(size, 'p');
        for (long i = 0; i < per; ++i)
          if (!write_all(fd[1], buf.data(), size)) break;
      },
      [&](int) {
        ::close(fd[1]);
        std::vector<char> buf(size);
        while (read_all(fd[0], buf.data(), size)) {
        }
      },
      [&] { ::close(fd[1]); });
  ::close(fd[0]);
  return per * producers / s;
}

// ---------------------------------------------------------------------------------------
// The floor: a raw SPSC ring in shared memory, cached indices, spinning, no codec.

struct raw_ring {
  alignas(128) std::atomic<std::uint64_t> head{0};
  alignas(128) std::atomic<std::uint64_t> tail{0};
  alignas(128) char data[1];
};

double raw_ring_rate_once(std::size_t size, long n, std::size_t cap) {
  const std::size_t bytes = sizeof(raw_ring) + cap * size;
  auto* r = new (shared_anon(bytes)) raw_ring;
  const double s = run_parties(
      1, 1,
      [&](int) {
        std::vector<char> buf(size, 'r');
        std::uint64_t h = 0, t_cached = 0;
        for (long i = 0; i < n; ++i, ++h) {
          while (h - t_cached >= cap) t_cached = r->tail.load(std::memory_order_acquire);
          std::memcpy(r->data + (h % cap) * size, buf.data(), size);
          r->head.store(h + 1, std::memory_order_release);
        }
      },
      [&](int) {
        std::vector<char> buf(size);
        std::uint64_t t = 0, h_cached = 0;
        for (long i = 0; i < n; ++i, ++t) {
          while (t == h_cached) h_cached = r->head.load(std::memory_order_acquire);
          std::memcpy(buf.data(), r->data + (t % cap) * size, size);
          r->tail.store(t + 1, std::memory_order_release);
        }
      },
      [] {});
  ::munmap(r, bytes);
  return n / s;
}

// ---------------------------------------------------------------------------------------
// Python's multiprocessing.Queue, through bench/bench_queue.py.

double python_rate_once(std::size_t size, long n) {
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) return nan_v;
  const std::string cmd =
      fmt::format("python3 {}/bench_queue.py {} {} 2>/dev/null", SHMKIT_BENCH_DIR, size, n);
  std::FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return nan_v;
  double rate = nan_v;
  if (std::fscanf(f, "%lf", &rate) != 1) rate = nan_v;
  ::pclose(f);
  return rate;
}

// ---------------------------------------------------------------------------------------
// memcpy bandwidth (bytes/s) for 1 MiB blocks streamed between two 64 MiB regions (past the
// caches, as a stream of large messages is), the reference for large messages.
double memcpy_bandwidth(long reps) {
  const std::size_t n = 1 << 20, blocks = 64;
  std::vector<char> a(n * blocks, 'a'), b(n * blocks, 'b');
  const auto t0 = clock::now();
  for (long i = 0; i < reps; ++i) {
    const std::size_t k = static_cast<std::size_t>(i) % blocks;
    std::memcpy(b.data() + k * n, a.data() + ((k * 7) % blocks) * n, n);
  }
  const double rate = static_cast<double>(n) * reps / seconds_since(t0);
  volatile char sink = b[reps % (n * blocks)];  // keep the copies observable
  (void)sink;
  return rate;
}

// ---------------------------------------------------------------------------------------
// Ping-pong: round-trip latencies (us), pinned to two CPUs or not.

struct latency {
  double p50, p99, max, mean;
};
latency summarize(std::vector<double>& us) {
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double u : us) sum += u;
  return {percentile(us, 50), percentile(us, 99), us.back(), sum / static_cast<double>(us.size())};
}

// Both sides get into a value they keep (get(T&)), as the floor copies into a kept buffer.
// `clocked`: each round trip timed (two clock reads in it, about 0.07 us on these machines);
// else only the mean over all, as the foundation floor is measured (p50, p99 and max are
// then that mean too).
template <class T>
latency shmkit_pingpong(const T& v, long n, bool pinned, bool clocked = true) {
  shmkit::queue<T> there(4), back(4);
  pid_t child = fork_run([&] {
    if (pinned) pin_to(1);
    T got{};
    for (long i = 0; i < n; ++i) {
      there.get(got);
      back.put(got);
    }
  });
  if (pinned) pin_to(0);
  std::vector<double> us(clocked ? n : 1);
  T reply{};
  const auto start = clock::now();
  for (long i = 0; i < n; ++i) {
    if (!clocked) {
      there.put(v);
      back.get(reply);
      continue;
    }
    const auto t0 = clock::now();
    there.put(v);
    back.get(reply);
    us[i] = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
  }
  if (!clocked) us[0] = seconds_since(start) / static_cast<double>(n) * 1e6;
  reap(child);
  unpin();
  return summarize(us);
}

latency pipe_pingpong(std::size_t size, long n, bool pinned) {
  int a[2], b[2];
  if (::pipe(a) != 0 || ::pipe(b) != 0) return {nan_v, nan_v, nan_v, nan_v};
  pid_t child = fork_run([&] {
    if (pinned) pin_to(1);
    std::vector<char> buf(size);
    for (long i = 0; i < n; ++i)
      if (!read_all(a[0], buf.data(), size) || !write_all(b[1], buf.data(), size)) break;
  });
  if (pinned) pin_to(0);
  std::vector<char> buf(size, 'x');
  std::vector<double> us(n);
  for (long i = 0; i < n; ++i) {
    const auto t0 = clock::now();
    if (!write_all(a[1], buf.data(), size) || !read_all(b[0], buf.data(), size)) break;
    us[i] = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
  }
  reap(child);
  unpin();
  for (int fd : {a[0], a[1], b[0], b[1]}) ::close(fd);
  return summarize(us);
}

// The physical floor: one flag bounced through a cache line, the payload copied into and out
// of shared memory on each side, nothing else.
latency raw_pingpong(std::size_t size, long n, bool pinned) {
  struct alignas(128) flags {
    std::atomic<std::uint32_t> turn{0};
  };
  const std::size_t bytes = sizeof(flags) + 2 * size + 256;
  char* mem = static_cast<char*>(shared_anon(bytes));
  auto* f = new (mem) flags;
  char* there = mem + 256;
  char* back = there + size;
  pid_t child = fork_run([&] {
    if (pinned) pin_to(1);
    std::vector<char> buf(size);
    for (long i = 0; i < n; ++i) {
      while (f->turn.load(std::memory_order_acquire) != 1) sd::cpu_relax();
      std::memcpy(buf.data(), there, size);
      std::memcpy(back, buf.data(), size);
      f->turn.store(0, std::memory_order_release);
    }
  });
  if (pinned) pin_to(0);
  std::vector<char> buf(size, 'y');
  std::vector<double> us(n);
  for (long i = 0; i < n; ++i) {
    const auto t0 = clock::now();
    std::memcpy(there, buf.data(), size);
    f->turn.store(1, std::memory_order_release);
    while (f->turn.load(std::memory_order_acquire) != 0) sd::cpu_relax();
    std::memcpy(buf.data(), back, size);
    us[i] = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
  }
  reap(child);
  unpin();
  ::munmap(mem, bytes);
  return summarize(us);
}

// Three rounds of each contender in turn (as interleaved_medians): the two vCPUs of a
// virtual machine sit closer or further apart on the host from one second to the next
// (measured: a raw spinning round trip of 0.09 us or 0.6 us on the same pinned pair), and
// a floor measured at another moment than the queue makes a ratio of nothing.
struct pingpong_figures {
  latency ours, raw;
  double spin_mean, ours_unclocked;  // 8 B only: means without a clock per round trip
};
pingpong_figures pingpong_rounds(std::size_t size, long n, bool pinned) {
  std::vector<latency> ours, raw;
  std::vector<double> spin, unclocked;
  for (int round = 0; round < 3; ++round) {
    ours.push_back(size == 8 ? shmkit_pingpong<std::uint64_t>(42, n, pinned)
                             : shmkit_pingpong<std::string>(std::string(size - 8, 'q'), n, pinned));
    raw.push_back(raw_pingpong(size, n, pinned));
    if (size == 8) {  // the foundation bench's floor (spin_rtt), at the same moment
      spin.push_back(spin_round_trip_us(n, pinned));
      unpin();
      unclocked.push_back(shmkit_pingpong<std::uint64_t>(42, n, pinned, false).mean);
    }
  }
  auto combine = [](const std::vector<latency>& v) {
    std::vector<double> p50, p99, mean;
    double mx = 0;
    for (const latency& l : v) {
      p50.push_back(l.p50);
      p99.push_back(l.p99);
      mean.push_back(l.mean);
      mx = std::max(mx, l.max);
    }
    return latency{median(p50), median(p99), mx, median(mean)};
  };
  return {combine(ours), combine(raw), spin.empty() ? nan_v : median(spin),
          unclocked.empty() ? nan_v : median(unclocked)};
}

std::string size_name(std::size_t n) {
  if (n >= (1 << 20)) return fmt::format("{} MiB", n >> 20);
  if (n >= 1024) return fmt::format("{} KiB", n >> 10);
  return fmt::format("{} B", n);
}

// The same without the space, as the report's sweep convention wants ("64B", "4KiB").
std::string compact_size(std::size_t n) {
  std::string s = size_name(n);
  s.erase(std::remove(s.begin(), s.end(), ' '), s.end());
  return s;
}

// `reuse_too`: also the consumers that decode into objects they keep. `python_n`: also
// Python's Queue (1 -> 1) with that many messages.
template <std::size_t N>
void throughput_rows(table& t, long n, std::size_t cap, std::size_t batch, long python_n = 0,
                     bool reuse_too = false) {
  for (int k : {1, 2}) {
    struct variant {
      std::size_t batch;
      bool reuse;
    };
    std::vector<variant> ours;
    for (bool reuse : {false, true})
      if (!reuse || reuse_too)
        for (std::size_t b : {std::size_t(1), batch}) ours.push_back({b, reuse});
    std::vector<std::function<double()>> runs;
    for (const variant& v : ours)
      runs.push_back([=] { return shmkit_rate_once<N>(k, k, n, cap, v.batch, v.reuse); });
    runs.push_back([=] { return boost_rate_once(N, k, k, n, cap); });
    runs.push_back([=] { return pipe_rate_once(N, k, k, n); });
    if (k == 1) runs.push_back([=] { return raw_ring_rate_once(N, n, cap); });
    if (k == 1 && python_n > 0) runs.push_back([=] { return python_rate_once(N, python_n); });
    const std::vector<double> m = interleaved_medians(runs);
    const std::size_t b0 = ours.size();
    std::vector<figure> base{{"boost::interprocess::message_queue", m[b0]}, {"pipe(2)", m[b0 + 1]}};
    if (k == 1) base.push_back({"raw SPSC ring (floor)", m[b0 + 2]});
    if (k == 1 && python_n > 0) base.push_back({"python multiprocessing.Queue", m[b0 + 3]});
    for (std::size_t i = 0; i < ours.size(); ++i) {
      const variant& v = ours[i];
      const std::string how =
          v.batch == 1 ? (v.reuse ? "put/get(out)" : "put/get")
                       : fmt::format("put_many/get_many({}{})", v.reuse ? "out, " : "", v.batch);
      // "<series> | msg=<size>": the report draws throughput against message size from these.
      t.row(fmt::format("queue {}->{}{} {} | msg={}", k, k, k == 1 ? " pinned" : "", how,
                        compact_size(N)),
            "messages/s", better::higher, m[i], base);
    }
  }
}

}  // namespace

int main() {
  table t("queue");
  const bool can_pin = cpus_available() >= 2;

  // Throughput. Python is slow: fewer messages, same per-message measure.
  throughput_rows<8>(t, scaled(2000000), 1024, 64, scaled(200000));
  throughput_rows<64>(t, scaled(2000000), 1024, 64);
  throughput_rows<4096>(t, scaled(200000), 1024, 16);
  {
    const long n = scaled(4000);
    throughput_rows<(1 << 20)>(t, n, 16, 4, 0, true);
    const std::vector<double> m = interleaved_medians(
        {[=] { return shmkit_rate_once<(1 << 20)>(1, 1, n, 16, 1, true) * (1 << 20); },
         [=] { return memcpy_bandwidth(scaled(2000)); }});
    t.row("1 MiB 1->1 pinned put/get(out) bandwidth", "bytes/s", better::higher, m[0],
          {{"memcpy, 1 MiB blocks streamed over 64 MiB", m[1]}});
  }

  // Ping-pong sweep.
  const std::size_t sizes[] = {8, 64, 512, 4096, 65536, 1 << 20, 4 << 20};
  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    for (std::size_t size : sizes) {
      if (!pinned && size != 8 && size != 4096 && size != (1 << 20)) continue;
      const long n = scaled(size <= 4096        ? 100000
                            : size <= 65536     ? 20000
                            : size <= (1 << 20) ? 2000
                                                : 500);
      // The payloads up to 4 KiB take a fraction of a second: three interleaved rounds. The
      // larger ones (and pipe(2), slow at any size) one round.
      pingpong_figures f{};
      if (size <= 4096) {
        f = pingpong_rounds(size, n, pinned);
      } else {
        f.ours = shmkit_pingpong<std::string>(std::string(size - 8, 'q'), n, pinned);
        f.raw = raw_pingpong(size, n, pinned);
        f.spin_mean = f.ours_unclocked = nan_v;
      }
      const latency& ours = f.ours;
      const latency& raw = f.raw;
      latency pipe = pipe_pingpong(size, n, pinned);
      // "<series> | payload=<size>": the report draws latency against payload from these.
      auto what = [&](const char* stat) {
        return fmt::format("queue ping-pong {}, {} | payload={}", stat,
                           pinned ? "pinned" : "unpinned", compact_size(size));
      };
      // For 8 B, also the foundation bench's floor (a mean, no copy, no clock per round
      // trip: the target is "within 2x" of it).
      const figure spin{"raw spin, no copy, mean (foundation floor)", f.spin_mean};
      auto with_spin = [&](std::vector<figure> v) {
        if (size == 8) v.push_back(spin);
        return v;
      };
      t.row(what("p50"), "us per round trip", better::lower, ours.p50,
            with_spin({{"raw spin + copy (floor)", raw.p50}, {"pipe(2)", pipe.p50}}));
      t.row(what("p99"), "us per round trip", better::lower, ours.p99,
            with_spin({{"raw spin + copy (floor)", raw.p99}, {"pipe(2)", pipe.p99}}));
      t.row(what("max"), "us per round trip", better::lower, ours.max,
            {{"raw spin + copy (floor)", raw.max}, {"pipe(2)", pipe.max}});
      // The foundation floor is a mean without a clock read per round trip (the time of n
      // round trips over n, outliers in): the queue measured the same way beside it is the
      // like-for-like ratio; and the means of the clocked runs.
      if (size == 8) {
        const std::string how = pinned ? "pinned" : "unpinned";
        t.row(fmt::format("queue ping-pong mean, no clock per trip, {}, 8 B", how),
              "us per round trip", better::lower, f.ours_unclocked, {spin});
        t.row(fmt::format("queue ping-pong mean, {}, 8 B", how), "us per round trip", better::lower,
              ours.mean, {{"raw spin + copy (floor)", raw.mean}});
      }
    }
  }
}
