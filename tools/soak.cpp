// SPDX-License-Identifier: MIT
// Soak: 8 processes mix every primitive for minutes, with checksums on everything, and report
// operations done per primitive, errors, RSS at start and end per process, the bytes the soak's
// objects hold in /dev/shm at start and end, and the objects left behind after cleanup.
//
//   soak [--minutes N | --seconds S]        (default: 10 minutes)
//
// Every process runs the same cycle, in step with the others: an event says whether to go on;
// messages through one queue shared by all (put, then get, counted and hashed both ways); a
// duplex pipe with its partner (ordered, checksummed); a mutex-guarded pair and a value
// counter; a condition_variable token ring (each process takes its turn once per cycle); a
// semaphore of 3 with a count of who is inside; manager dict writes, reads and updates and list
// pushes and pops; in process 0 a pool map; then the barrier. At the end every total must
// agree (puts with gets, increments with counters, the ring's turns with the cycles, the
// manager's heap with its containers). Exit status 1 on any error or leaked object.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "queue_messages.hpp"
#include "shmkit/shmkit.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmkit::test::check_message;
using shmkit::test::make_message;
using shmkit::test::mix;
using shmkit::test::mixed_size;
using u64 = std::uint64_t;

namespace {

constexpr int procs = 8;
constexpr int semaphore_slots = 3;

enum kind {
  k_queue,
  k_pipe,
  k_mutex,
  k_value,
  k_condition,
  k_event,
  k_semaphore,
  k_barrier,
  k_dict,
  k_list,
  k_pool,
  kinds
};
constexpr const char* kind_names[kinds] = {
    "queue",   "pipe",         "mutex",        "value", "condition_variable", "event", "semaphore",
    "barrier", "manager dict", "manager list", "pool"};

// What each process reports; written only by that process, read by the parent after it ended.
struct proc_stats {
  u64 ops[kinds];
  u64 errors;
  // Bytes resident (statm's resident) and of those not shared with other processes (resident
  // minus shared: the heap, where a leak would show), after the first cycle and at the end.
  u64 rss_start, rss_end, private_start, private_end;
  u64 put_count, put_hash, got_count, got_hash;  // queue messages, hashed by tag
  u64 sections, increments, dict_updates, list_pushes, list_pops, cycles;
};

struct board {
  proc_stats p[procs];
  std::atomic<int> stop;      // process 0's decision for the current cycle
  std::atomic<int> abort;     // a process failed: everyone leaves
  std::atomic<u64> progress;  // cycles done by all, for the parent's watchdog
  std::atomic<u64> inside;    // processes inside the semaphore
  u64 pair_a, pair_b, turn;   // under the mutex
};
static_assert(std::atomic<u64>::is_always_lock_free);

// {resident, resident and not shared} in bytes, from /proc/self/statm.
std::pair<u64, u64> resident_bytes() {
  std::ifstream f("/proc/self/statm");
  u64 size = 0, resident = 0, shared = 0;
  f >> size >> resident >> shared;
  const auto page = static_cast<u64>(::sysconf(_SC_PAGESIZE));
  return {resident * page, (resident - shared) * page};
}

// The soak's own files in /dev/shm (names starting with one of `tags` after the shmkit prefix):
// their names and the bytes they hold.
struct shm_use {
  std::vector<std::string> names;
  u64 bytes = 0;
};
shm_use files_of(const std::vector<std::string>& tags) {
  shm_use u;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (std::none_of(tags.begin(), tags.end(), [&](const std::string& t) {
            return n.rfind(std::string(shmkit::name_prefix) + t, 0) == 0;
          }))
        continue;
      struct stat st {};
      if (::stat(("/dev/shm/" + n).c_str(), &st) == 0)
        u.bytes += static_cast<u64>(st.st_blocks) * 512;
      u.names.push_back(n);
    }
    ::closedir(d);
  }
  return u;
}

std::uint64_t pool_square(std::uint64_t x) { return mix(x) ^ (x * x); }

// Everything the processes share, made by the parent with names under `tag`.
struct objects {
  std::string tag;
  shmkit::queue<std::string> queue;
  std::vector<std::pair<shmkit::connection<std::string>, shmkit::connection<std::string>>> pipes;
  shmkit::mutex mutex;
  shmkit::condition_variable cv;
  shmkit::event go[2];
  shmkit::semaphore sem;
  shmkit::barrier bar;
  shmkit::value<u64> counter;
  shmkit::manager mgr;

  explicit objects(const std::string& t)
      : tag(t),
        queue(shmkit::create_only, t + ".queue", 1024,
              shmkit::queue_options{.heap_bytes = 8 << 20}),
        mutex(shmkit::create_only, t + ".mutex"),
        cv(shmkit::create_only, t + ".cv"),
        go{shmkit::event(shmkit::create_only, t + ".go0"),
           shmkit::event(shmkit::create_only, t + ".go1")},
        sem(shmkit::create_only, t + ".sem", semaphore_slots),
        bar(shmkit::create_only, t + ".barrier", procs),
        counter(shmkit::create_only, t + ".counter", 0),
        mgr(shmkit::create_only, t + ".manager", 256 * 1024) {
    for (int j = 0; j < procs / 2; ++j)
      pipes.push_back(
          shmkit::pipe<std::string>(shmkit::create_only, fmt::format("{}.pipe{}", t, j)));
    mgr.dict<std::string, std::string>("state");
    mgr.dict<std::string, long>("counters");
    mgr.list<std::string>("log");
  }
};

struct failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One soak process: cycles until process 0 says stop. A failed check counts an error and ends
// the process (and, through the abort flag and the barrier, all of them).
class worker {
 public:
  worker(objects& o, board& b, int id, u64 seed)
      : o_(o),
        b_(b),
        s_(b.p[id]),
        id_(id),
        rng_(seed),
        pipe_(id % 2 == 0 ? o.pipes[id / 2].first : o.pipes[id / 2].second) {}

  void run(std::chrono::steady_clock::time_point end) {
    std::optional<shmkit::pool> pool;
    if (id_ == 0) pool.emplace(2);
    try {
      for (u64 c = 0;; ++c) {
        if (!step_event(c, end)) break;
        step_queue(c);
        step_pipe(c);
        step_mutex();
        step_condition(c);
        step_semaphore();
        step_manager(c);
        if (pool) step_pool(*pool);
        o_.bar.arrive_and_wait();
        ++s_.ops[k_barrier];
        ++s_.cycles;
        if (id_ == 0) b_.progress.store(c + 1);
        if (c == 0) std::tie(s_.rss_start, s_.private_start) = resident_bytes();
      }
    } catch (const std::exception& e) {
      ++s_.errors;
      fmt::print(stderr, "soak process {} (pid {}): {}\n", id_, ::getpid(), e.what());
      b_.abort.store(1);
      o_.bar.abort();
    }
    std::tie(s_.rss_end, s_.private_end) = resident_bytes();
  }

 private:
  void check(bool ok, const char* what) {
    if (!ok) throw failure(fmt::format("check failed: {}", what));
  }
  void check_abort() {
    if (b_.abort.load()) throw failure("another process failed");
  }
  u64 tag(u64 seq) const { return (u64(id_) << 48) | seq; }

  // Process 0 decides whether this cycle runs, then opens the cycle's event; the others wait
  // for it. The other event (last cycle's) is cleared: everyone is past it (the barrier).
  bool step_event(u64 c, std::chrono::steady_clock::time_point end) {
    shmkit::event& now = o_.go[c % 2];
    if (id_ == 0) {
      b_.stop.store(std::chrono::steady_clock::now() >= end);
      o_.go[(c + 1) % 2].clear();
      now.set();
    } else {
      while (!now.wait_for(1s)) check_abort();
    }
    ++s_.ops[k_event];
    return b_.stop.load() == 0;
  }

  void step_queue(u64 c) {
    constexpr int k = 8;
    std::vector<std::string> out;
    for (int i = 0; i < k; ++i)
      out.push_back(make_message(tag(c * k + i), mixed_size(rng_, 64 << 10)));
    if (c % 4 == 0) {
      o_.queue.put_many(out);
    } else {
      for (const auto& m : out)
        if (!o_.queue.try_put(m)) o_.queue.put(m);
    }
    for (int i = 0; i < k; ++i) {
      s_.put_hash += mix(tag(c * k + i));
      ++s_.put_count;
    }
    s_.ops[k_queue] += k;
    for (int got = 0; got < k;) {
      std::vector<std::string> in;
      if (c % 4 == 1) {
        in = o_.queue.get_many(k - got);
      } else if (auto m = o_.queue.get_for(1s)) {
        in.push_back(std::move(*m));
      } else {
        check_abort();
      }
      for (const auto& m : in) {
        u64 t = 0;
        check(check_message(m, t), "a queue message is damaged");
        s_.got_hash += mix(t);
        ++s_.got_count;
        ++got;
        ++s_.ops[k_queue];
      }
    }
  }

  // Partners send each other 4 messages (at most 8 KiB each: they fit the buffer, so neither
  // blocks), then read the other's 4, in order.
  void step_pipe(u64 c) {
    constexpr int k = 4;
    for (int i = 0; i < k; ++i) pipe_.send(make_message(tag(c * k + i), rng_() % (8 << 10)));
    const u64 peer = static_cast<u64>(id_ ^ 1);
    for (int i = 0; i < k; ++i) {
      while (!pipe_.poll(1s)) check_abort();
      u64 t = 0;
      check(check_message(pipe_.recv(), t), "a pipe message is damaged");
      check(t == ((peer << 48) | (c * k + i)), "a pipe message is out of order");
    }
    s_.ops[k_pipe] += 2 * k;
  }

  void step_mutex() {
    for (int i = 0; i < 16; ++i) {
      std::lock_guard<shmkit::mutex> g(o_.mutex);
      check(b_.pair_a == b_.pair_b, "the mutex-guarded pair is inconsistent");
      ++b_.pair_a;
      ++b_.pair_b;
      ++s_.sections;
      ++s_.ops[k_mutex];
    }
    for (int i = 0; i < 4; ++i) {
      o_.counter.update([](u64& v) { ++v; });
      ++s_.increments;
      ++s_.ops[k_value];
    }
  }

  // The token goes round: process i may go when turn % 8 == i.
  void step_condition(u64 c) {
    std::unique_lock<shmkit::mutex> lk(o_.mutex);
    while (!o_.cv.wait_for(lk, 1s, [&] { return b_.turn % procs == static_cast<u64>(id_); }))
      check_abort();
    check(b_.turn == c * procs + id_, "the condition ring's turn is wrong");
    ++b_.turn;
    lk.unlock();
    o_.cv.notify_all();
    ++s_.ops[k_condition];
  }

  void step_semaphore() {
    for (int i = 0; i < 4; ++i) {
      if (i % 2 == 0) {
        o_.sem.acquire();
      } else {
        while (!o_.sem.try_acquire_for(1s)) check_abort();
      }
      const u64 in = b_.inside.fetch_add(1) + 1;
      check(in <= semaphore_slots, "more processes inside the semaphore than it allows");
      b_.inside.fetch_sub(1);
      o_.sem.release();
      ++s_.ops[k_semaphore];
    }
  }

  void step_manager(u64 c) {
    auto d = o_.mgr.dict<std::string, std::string>("state");
    auto n = o_.mgr.dict<std::string, long>("counters");
    auto l = o_.mgr.list<std::string>("log");
    const std::string key = fmt::format("p{}.{}", id_, c % 8);
    const std::size_t size = rng_() % 200 == 0 ? 30000 : rng_() % 2000;
    d.set(key, make_message(tag(c), size));
    const std::string other = fmt::format("p{}.{}", rng_() % procs, rng_() % 8);
    if (auto v = d.try_get(other)) {
      u64 t = 0;
      check(check_message(*v, t), "a dict value is damaged");
    }
    n.update("total", [](long& v) { ++v; });
    ++s_.dict_updates;
    s_.ops[k_dict] += 3;
    l.push_back(make_message(tag(c), rng_() % 500));
    ++s_.list_pushes;
    try {
      u64 t = 0;
      check(check_message(l.pop_back(), t), "a list item is damaged");
      ++s_.list_pops;
    } catch (const std::out_of_range&) {  // others emptied it meanwhile
    }
    s_.ops[k_list] += 2;
    if (c % 64 == 0) {
      for (const auto& [k, v] : d.items()) {
        u64 t = 0;
        check(check_message(v, t), "a dict snapshot holds a damaged value");
      }
      for (const auto& v : l.to_vector()) {
        u64 t = 0;
        check(check_message(v, t), "a list snapshot holds a damaged item");
      }
      s_.ops[k_dict] += 1;
      s_.ops[k_list] += 1;
    }
  }

  void step_pool(shmkit::pool& pool) {
    std::vector<std::uint64_t> in(8);
    for (auto& x : in) x = rng_();
    const auto out = pool.map(pool_square, in);
    check(out.size() == in.size(), "a pool map returned the wrong number of results");
    for (std::size_t i = 0; i < in.size(); ++i)
      check(out[i] == pool_square(in[i]), "a pool result is wrong");
    s_.ops[k_pool] += in.size();
  }

  objects& o_;
  board& b_;
  proc_stats& s_;
  int id_;
  std::mt19937_64 rng_;
  shmkit::connection<std::string>& pipe_;
};

int usage(const char* argv0) {
  fmt::print(stderr, "usage: {} [--minutes N | --seconds S]   (default 10 minutes)\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 600;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--minutes" && i + 1 < argc)
      seconds = 60 * std::atof(argv[++i]);
    else if (a == "--seconds" && i + 1 < argc)
      seconds = std::atof(argv[++i]);
    else
      return usage(argv[0]);
  }
  if (seconds <= 0) return usage(argv[0]);

  const std::string tag = fmt::format("soak-{}", ::getpid());
  // Ours: the objects named after the tag, and what a pool in one of the processes stashes
  // (large payloads travel in segments named pool-<pid of the pool's owner>-...).
  std::vector<std::string> ours{tag};
  void* mem =
      ::mmap(nullptr, sizeof(board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return 1;
  board& b = *new (mem) board{};
  u64 errors = 0;
  shm_use start, end;
  double elapsed = 0;
  fmt::print("soak: {} processes for {:.0f} s; objects named {}*\n", procs, seconds, tag);
  std::fflush(stdout);
  try {
    objects o(tag);
    start = files_of(ours);
    const auto t0 = std::chrono::steady_clock::now();
    const auto deadline = t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                   std::chrono::duration<double>(seconds));
    std::vector<pid_t> pids;
    {
      shmkit::test::children kids;
      std::mt19937_64 rng(7);
      for (int i = 0; i < procs; ++i)
        pids.push_back(
            kids.add(shmkit::test::spawn([&, i, s = rng()] { worker(o, b, i, s).run(deadline); })));
      for (pid_t p : pids) ours.push_back(fmt::format("pool-{}-", p));
      // Watchdog: the cycles must keep moving (a minute without one is a hang).
      u64 last = 0;
      auto last_move = std::chrono::steady_clock::now();
      for (int i = 0; i < procs;) {
        int status = 0;
        const pid_t r = ::waitpid(-1, &status, WNOHANG);
        if (r > 0) {
          kids.reaped(r);
          if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            ++errors;
            fmt::print(stderr, "soak: process {} ended with status {}\n", r, status);
          }
          ++i;
          continue;
        }
        if (b.progress.load() != last) {
          last = b.progress.load();
          last_move = std::chrono::steady_clock::now();
        } else if (std::chrono::steady_clock::now() - last_move > 60s) {
          ++errors;
          fmt::print(stderr, "soak: no cycle finished for 60 s (hang); killing the processes\n");
          b.abort.store(1);
          break;  // `kids` kills and reaps the rest
        }
        std::this_thread::sleep_for(20ms);
      }
    }
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    end = files_of(ours);

    // Every total must agree.
    proc_stats sum{};
    for (const auto& p : b.p) {
      for (int k = 0; k < kinds; ++k) sum.ops[k] += p.ops[k];
      sum.errors += p.errors;
      sum.put_count += p.put_count;
      sum.put_hash += p.put_hash;
      sum.got_count += p.got_count;
      sum.got_hash += p.got_hash;
      sum.sections += p.sections;
      sum.increments += p.increments;
      sum.dict_updates += p.dict_updates;
      sum.list_pushes += p.list_pushes;
      sum.list_pops += p.list_pops;
    }
    errors += sum.errors;
    auto expect = [&](bool ok, const std::string& what) {
      if (!ok) {
        ++errors;
        fmt::print(stderr, "soak: {}\n", what);
      }
    };
    const u64 cycles = b.p[0].cycles;
    for (const auto& p : b.p)
      expect(p.cycles == cycles, "the processes ran different numbers of cycles");
    expect(sum.put_count == sum.got_count && sum.put_hash == sum.got_hash,
           fmt::format("queue: {} put, {} got (or the same count of other messages)", sum.put_count,
                       sum.got_count));
    expect(o.queue.empty(), "queue: not empty at the end");
    expect(b.pair_a == sum.sections && b.pair_b == sum.sections,
           fmt::format("mutex: {} sections, pair {} / {}", sum.sections, b.pair_a, b.pair_b));
    expect(o.counter.load() == sum.increments,
           fmt::format("value: {} increments, counter {}", sum.increments, o.counter.load()));
    expect(b.turn == cycles * procs,
           fmt::format("condition ring: turn {} after {} cycles", b.turn, cycles));
    expect(o.sem.value() == semaphore_slots, "semaphore: count not back to its start");
    auto n = o.mgr.dict<std::string, long>("counters");
    expect(static_cast<u64>(n.try_get("total").value_or(0)) == sum.dict_updates,
           "manager dict: the shared counter does not match the updates");
    auto l = o.mgr.list<std::string>("log");
    expect(l.size() == sum.list_pushes - sum.list_pops,
           fmt::format("manager list: {} items, {} pushed, {} popped", l.size(), sum.list_pushes,
                       sum.list_pops));
    try {
      o.mgr.verify();
    } catch (const std::exception& e) {
      expect(false, fmt::format("manager verify: {}", e.what()));
    }
    // The report.
    fmt::print("ran {:.1f} s, {} cycles\n\n{:<20} {:>14} {:>12}\n", elapsed, cycles, "primitive",
               "operations", "per second");
    for (int k = 0; k < kinds; ++k)
      fmt::print("{:<20} {:>14} {:>12.0f}\n", kind_names[k], sum.ops[k], sum.ops[k] / elapsed);
    u64 total = 0;
    for (int k = 0; k < kinds; ++k) total += sum.ops[k];
    fmt::print("{:<20} {:>14} {:>12.0f}\n\n", "all", total, total / elapsed);
    // Start: after the first cycle (libraries and the objects' pages touched once).
    fmt::print("{:<8} {:>14} {:>12} {:>18} {:>16}\n", "process", "RSS start KiB", "RSS end KiB",
               "private start KiB", "private end KiB");
    for (int i = 0; i < procs; ++i)
      fmt::print("{:<8} {:>14} {:>12} {:>18} {:>16}\n", i, b.p[i].rss_start / 1024,
                 b.p[i].rss_end / 1024, b.p[i].private_start / 1024, b.p[i].private_end / 1024);
    fmt::print("\nsegments in /dev/shm: {} objects, {} KiB at start; {} objects, {} KiB at end\n",
               start.names.size(), start.bytes / 1024, end.names.size(), end.bytes / 1024);
  } catch (const std::exception& e) {
    ++errors;
    fmt::print(stderr, "soak: {}\n", e.what());
  }
  // The objects are gone with `o`: nothing of ours may stay in /dev/shm.
  const shm_use left = files_of(ours);
  fmt::print("leaked objects after cleanup: {}\n", left.names.size());
  for (const auto& name : left.names) {
    fmt::print(stderr, "soak: leaked /dev/shm/{}\n", name);
    try {
      shmkit::remove(name.substr(shmkit::name_prefix.size()));
    } catch (...) {
    }
  }
  fmt::print("errors: {}\n", errors);
  ::munmap(mem, sizeof(board));
  return errors == 0 && left.names.empty() ? 0 : 1;
}
