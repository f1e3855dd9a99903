// SPDX-License-Identifier: MIT
// Pipes: ping-pong round trip and 64-byte message throughput between two processes, against
// pipe(2), socketpair(AF_UNIX), Boost.Interprocess message_queue and Python's
// multiprocessing.Pipe (bench/bench_pipe.py, when python3 is on PATH); 1 MiB message
// bandwidth against memcpy of the same bytes. Every figure is the median of several runs made
// in this same process run.
#include <array>
#include <boost/interprocess/ipc/message_queue.hpp>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

#include "harness.hpp"
#include "shmkit/pipe.hpp"

using namespace shmkit::bench;
namespace bip = boost::interprocess;

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
constexpr int reps = 5;

void unpin_all() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

// Runs `reps` times: make() builds a fresh transport, child(t) runs in a forked child (pinned
// to CPU 1 when asked), parent(t) in this process (CPU 0) and returns its own measurement.
template <class Make, class Child, class Parent>
double median_of_runs(bool pinned, Make make, Child child, Parent parent) {
  std::vector<double> runs;
  for (int rep = 0; rep < reps; ++rep) {
    auto t = make();
    pid_t pid = fork_run([&] {
      if (pinned) pin_to(1);
      child(t);
    });
    if (pinned) pin_to(0);
    runs.push_back(parent(t));
    reap(pid);
    unpin_all();
  }
  return median(runs);
}

// ---- full read/write on a stream descriptor -----------------------------------------------
bool write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n != 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}
bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n != 0) {
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// Two descriptors pairs, each direction one: pipe(2) or socketpair(AF_UNIX, SOCK_STREAM).
struct fd_link {
  int to_child[2]{-1, -1};    // [0] read end, [1] write end
  int to_parent[2]{-1, -1};
  bool sockets = false;
  explicit fd_link(bool use_sockets) : sockets(use_sockets) {
    if (sockets) {
      ::socketpair(AF_UNIX, SOCK_STREAM, 0, to_child);
      ::socketpair(AF_UNIX, SOCK_STREAM, 0, to_parent);
    } else {
      (void)!::pipe(to_child);
      (void)!::pipe(to_parent);
    }
  }
  fd_link(fd_link&& o) noexcept { *this = std::move(o); }
  fd_link& operator=(fd_link&& o) noexcept {
    std::swap(to_child, o.to_child);
    std::swap(to_parent, o.to_parent);
    sockets = o.sockets;
    return *this;
  }
  ~fd_link() {
    for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]})
      if (fd >= 0) ::close(fd);
  }
};

// ---- round trip ---------------------------------------------------------------------------
double shmkit_rtt(long n, bool pinned) {
  return median_of_runs(
      pinned, [] { return shmkit::pipe<std::uint64_t>(); },
      [&](auto& p) {
        for (long i = 0; i < n; ++i) p.second.send(p.second.recv() + 1);
      },
      [&](auto& p) {
        std::uint64_t v = 0;
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i) {
          p.first.send(v);
          v = p.first.recv();
        }
        return seconds_since(t0) / static_cast<double>(n) * 1e6;
      });
}

double fd_rtt(long n, bool pinned, bool sockets) {
  return median_of_runs(
      pinned, [&] { return fd_link(sockets); },
      [&](fd_link& l) {
        std::uint64_t v;
        for (long i = 0; i < n; ++i) {
          if (!read_all(l.to_child[0], &v, sizeof v)) return;
          ++v;
          if (!write_all(l.to_parent[1], &v, sizeof v)) return;
        }
      },
      [&](fd_link& l) {
        std::uint64_t v = 0;
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i)
          if (!write_all(l.to_child[1], &v, sizeof v) || !read_all(l.to_parent[0], &v, sizeof v))
            return nan_v;
        return seconds_since(t0) / static_cast<double>(n) * 1e6;
      });
}

// Boost.Interprocess message queues, one per direction, named after this process.
struct mq_link {
  std::string a, b;
  std::optional<bip::message_queue> to_child, to_parent;
  mq_link(std::size_t max_msgs, std::size_t msg_size) {
    a = fmt::format("shmkit-bench-mq-{}-a", ::getpid());
    b = fmt::format("shmkit-bench-mq-{}-b", ::getpid());
    bip::message_queue::remove(a.c_str());
    bip::message_queue::remove(b.c_str());
    to_child.emplace(bip::create_only, a.c_str(), max_msgs, msg_size);
    to_parent.emplace(bip::create_only, b.c_str(), max_msgs, msg_size);
  }
  mq_link(mq_link&& o) noexcept = default;
  ~mq_link() {
    if (!a.empty()) bip::message_queue::remove(a.c_str());
    if (!b.empty()) bip::message_queue::remove(b.c_str());
  }
};

double mq_rtt(long n, bool pinned) {
  return median_of_runs(
      pinned, [] { return mq_link(64, 8); },
      [&](mq_link& l) {
        std::uint64_t v;
        std::size_t got;
        unsigned prio;
        for (long i = 0; i < n; ++i) {
          l.to_child->receive(&v, sizeof v, got, prio);
          ++v;
          l.to_parent->send(&v, sizeof v, 0);
        }
      },
      [&](mq_link& l) {
        std::uint64_t v = 0;
        std::size_t got;
        unsigned prio;
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i) {
          l.to_child->send(&v, sizeof v, 0);
          l.to_parent->receive(&v, sizeof v, got, prio);
        }
        return seconds_since(t0) / static_cast<double>(n) * 1e6;
      });
}

// ---- 64-byte message throughput (child sends, parent receives) ----------------------------
using msg64 = std::array<std::byte, 64>;

double shmkit_throughput(long n, bool pinned) {
  return median_of_runs(
      pinned, [] { return shmkit::pipe<int>(false); },
      [&](auto& p) {
        msg64 m{};
        for (long i = 0; i < n; ++i) {
          m[0] = static_cast<std::byte>(i);
          p.second.send_bytes(m);
        }
      },
      [&](auto& p) {
        msg64 m{};
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i) p.first.recv_bytes_into(m);
        return static_cast<double>(n) / seconds_since(t0);
      });
}

double fd_throughput(long n, bool pinned, bool sockets) {
  return median_of_runs(
      pinned, [&] { return fd_link(sockets); },
      [&](fd_link& l) {
        msg64 m{};
        for (long i = 0; i < n; ++i)
          if (!write_all(l.to_parent[1], m.data(), m.size())) return;
      },
      [&](fd_link& l) {
        msg64 m{};
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i)
          if (!read_all(l.to_parent[0], m.data(), m.size())) return nan_v;
        return static_cast<double>(n) / seconds_since(t0);
      });
}

double mq_throughput(long n, bool pinned) {
  return median_of_runs(
      pinned, [] { return mq_link(1024, 64); },
      [&](mq_link& l) {
        msg64 m{};
        for (long i = 0; i < n; ++i) l.to_parent->send(m.data(), m.size(), 0);
      },
      [&](mq_link& l) {
        msg64 m{};
        std::size_t got;
        unsigned prio;
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i) l.to_parent->receive(m.data(), m.size(), got, prio);
        return static_cast<double>(n) / seconds_since(t0);
      });
}

// ---- 1 MiB bandwidth ----------------------------------------------------------------------
constexpr std::size_t mib = 1 << 20;

double shmkit_bandwidth(long n, bool pinned, std::size_t buffer) {
  return median_of_runs(
      pinned, [&] { return shmkit::pipe<int>(false, buffer); },
      [&](auto& p) {
        std::vector<std::byte> src(mib, std::byte{7});
        for (long i = 0; i < n; ++i) p.second.send_bytes(src);
      },
      [&](auto& p) {
        std::vector<std::byte> dst(mib);
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i) p.first.recv_bytes_into(dst);
        return static_cast<double>(n) * mib / seconds_since(t0) / 1e9;
      });
}

double fd_bandwidth(long n, bool pinned) {
  return median_of_runs(
      pinned, [] { return fd_link(false); },
      [&](fd_link& l) {
        std::vector<std::byte> src(mib, std::byte{7});
        for (long i = 0; i < n; ++i)
          if (!write_all(l.to_parent[1], src.data(), mib)) return;
      },
      [&](fd_link& l) {
        std::vector<std::byte> dst(mib);
        const auto t0 = clock::now();
        for (long i = 0; i < n; ++i)
          if (!read_all(l.to_parent[0], dst.data(), mib)) return nan_v;
        return static_cast<double>(n) * mib / seconds_since(t0) / 1e9;
      });
}

// One process copying the same 1 MiB messages from one buffer to another.
double memcpy_bandwidth(long n) {
  std::vector<double> runs;
  std::vector<std::byte> src(mib, std::byte{7}), dst(mib);
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = clock::now();
    for (long i = 0; i < n; ++i) {
      src[static_cast<std::size_t>(i) % mib] = static_cast<std::byte>(i);
      std::memcpy(dst.data(), src.data(), mib);
      asm volatile("" : : "r"(dst.data()) : "memory");
    }
    runs.push_back(static_cast<double>(n) * mib / seconds_since(t0) / 1e9);
  }
  return median(runs);
}

// ---- Python's multiprocessing.Pipe --------------------------------------------------------
struct python_figures {
  double rtt_pinned = nan_v, rtt_unpinned = nan_v, tput_pinned = nan_v, tput_unpinned = nan_v;
};

python_figures run_python(long n_rtt, long n_tput) {
  python_figures f;
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) return f;
  const std::string cmd = fmt::format("python3 {}/bench_pipe.py {} {} {}", SHMKIT_BENCH_DIR,
                                      n_rtt, n_tput, cpus_available() >= 2 ? 1 : 0);
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return f;
  char line[256];
  while (std::fgets(line, sizeof line, p) != nullptr) {
    char key[64];
    double v;
    if (std::sscanf(line, "%63s %lf", key, &v) != 2) continue;
    const std::string k = key;
    if (k == "rtt_pinned_us") f.rtt_pinned = v;
    if (k == "rtt_unpinned_us") f.rtt_unpinned = v;
    if (k == "tput_pinned") f.tput_pinned = v;
    if (k == "tput_unpinned") f.tput_unpinned = v;
  }
  ::pclose(p);
  return f;
}

}  // namespace

int main() {
  table t("pipe");
  const bool can_pin = cpus_available() >= 2;
  // The kernel-based baselines take 5-100 us per round trip: fewer of those keep the run short.
  const long n_rtt = scaled(100000);
  const long n_rtt_sys = scaled(20000);
  const long n_tput = scaled(2000000);
  const long n_tput_sys = scaled(500000);
  const long n_bw = scaled(2000);
  const python_figures py = run_python(std::max(1L, n_rtt_sys), std::max(1L, n_tput_sys / 2));

  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    const char* how = pinned ? "pinned" : "unpinned";
    const double s = shmkit_rtt(n_rtt, pinned);
    const double p = fd_rtt(n_rtt_sys, pinned, false);
    const double u = fd_rtt(n_rtt_sys, pinned, true);
    const double q = mq_rtt(n_rtt_sys, pinned);
    t.row(fmt::format("ping-pong round trip (8 B), {}", how), "us per round trip",
          better::lower, s,
          {{"pipe(2)", p},
           {"socketpair(AF_UNIX)", u},
           {"boost::interprocess::message_queue", q},
           {"python multiprocessing.Pipe", pinned ? py.rtt_pinned : py.rtt_unpinned}});
  }
  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    const char* how = pinned ? "pinned" : "unpinned";
    const double s = shmkit_throughput(n_tput, pinned);
    const double p = fd_throughput(n_tput_sys, pinned, false);
    const double u = fd_throughput(n_tput_sys, pinned, true);
    const double q = mq_throughput(n_tput_sys, pinned);
    t.row(fmt::format("64 B messages one way, {}", how), "messages/s", better::higher, s,
          {{"pipe(2)", p},
           {"socketpair(AF_UNIX)", u},
           {"boost::interprocess::message_queue", q},
           {"python multiprocessing.Pipe", pinned ? py.tput_pinned : py.tput_unpinned}});
  }
  for (bool pinned : {true, false}) {
    if (pinned && !can_pin) continue;
    const char* how = pinned ? "pinned" : "unpinned";
    const double s = shmkit_bandwidth(n_bw, pinned, shmkit::default_pipe_buffer);
    const double big = shmkit_bandwidth(n_bw, pinned, mib);
    const double m = memcpy_bandwidth(n_bw);
    const double p = fd_bandwidth(n_bw / 4, pinned);
    t.row(fmt::format("1 MiB msgs one way, 64 KiB buffer, {}", how), "GB/s", better::higher,
          s, {{"memcpy (one process)", m}, {"pipe(2)", p}});
    t.row(fmt::format("1 MiB msgs one way, 1 MiB buffer, {}", how), "GB/s", better::higher,
          big, {{"memcpy (one process)", m}});
  }
}
