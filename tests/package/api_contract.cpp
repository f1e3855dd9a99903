// SPDX-License-Identifier: MIT
// Every spelling of the public API contract (API.md), written the way an outside user writes
// them from that page alone, built against the installed package and run with real processes.
// A spelling that stops compiling, or a promise that stops holding, fails the package test.
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <sys/wait.h>
#include <tuple>
#include <unistd.h>
#include <unordered_map>
#include <variant>
#include <vector>

using namespace std::chrono_literals;

namespace {

int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "api_contract: FAILED: %s\n", what);
    ++failures;
  }
}
#define CHECK(expr) check((expr), #expr)

// Runs fn in a forked child; true when it exited with status 0.
template <class Fn>
bool in_child(Fn fn) {
  const pid_t pid = ::fork();
  if (pid == 0) std::_Exit(fn() ? 0 : 1);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string unique(const char* what) {
  return std::string("api-contract-") + what + "-" + std::to_string(::getpid());
}

struct point {
  int x = 0;
  std::string label;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(x, label);
  }
  bool operator==(const point&) const = default;
};

long square(long x) { return x * x; }
int add(int a, int b) { return a + b; }
int init_seen = 0;
void init() { init_seen = 1; }
int seen_init(int) { return init_seen; }
int throws(int) { throw std::runtime_error("no such thing"); }

void naming() {
  const std::string jobs = unique("jobs");
  {
    shmkit::queue<int> a(1024);
    shmkit::queue<int> b(shmkit::create_only, jobs, 1024);
    shmkit::queue<int> c(shmkit::open_only, jobs);
    shmkit::queue<int> d(shmkit::open_or_create, jobs, 1024);
    b.put(7);
    CHECK(c.get() == 7);
    CHECK(in_child([&] {
      shmkit::queue<int> e(shmkit::open_only, jobs);
      e.put(8);
      return true;
    }));
    CHECK(d.get() == 8);
    a.put(1);
    CHECK(a.get() == 1);
    bool mismatch = false;
    try {
      shmkit::queue<std::string> wrong(shmkit::open_only, jobs);
    } catch (const shmkit::error&) {
      mismatch = true;
    }
    CHECK(mismatch);
    b.release_name();
  }
  shmkit::remove(jobs);
  bool missing = false;
  try {
    shmkit::queue<int> gone(shmkit::open_only, jobs);
  } catch (const shmkit::error&) {
    missing = true;
  }
  CHECK(missing);
  bool bad_name = false;
  try {
    shmkit::queue<int> bad(shmkit::create_only, "no/slashes here", 4);
  } catch (const std::invalid_argument&) {
    bad_name = true;
  }
  CHECK(bad_name);
}

void raw_shared_memory() {
  const std::string frame = unique("frame");
  shmkit::shared_memory m(shmkit::create_only, frame, 1 << 20);
  std::span<std::byte> b = m.bytes();
  CHECK(b.size() == m.size() && m.data() == b.data() && m.size() >= (1u << 20));
  CHECK(!m.name().empty());
  CHECK(in_child([&] {
    shmkit::shared_memory v(shmkit::open_only, frame);
    v.bytes()[0] = std::byte{42};
    return true;
  }));
  CHECK(b[0] == std::byte{42});
}

void synchronization() {
  shmkit::mutex m;
  m.lock();
  m.unlock();
  CHECK(m.try_lock());
  m.unlock();
  CHECK(m.try_lock_for(10ms));
  m.unlock();
  CHECK(m.try_lock_until(std::chrono::steady_clock::now() + 10ms));
  m.unlock();
  { std::lock_guard g(m); }
  { std::unique_lock g(m); }
  shmkit::recursive_mutex r;
  {
    std::scoped_lock g(m, r);
    std::lock_guard again(r);
  }
  CHECK(!m.owner_died());
  shmkit::semaphore s(3);
  s.acquire();
  CHECK(s.try_acquire());
  CHECK(s.try_acquire_for(10ms));
  CHECK(!s.try_acquire());
  s.release();
  s.release(2);
  CHECK(s.value() == 3);
  shmkit::bounded_semaphore bs(2);
  bool over = false;
  try {
    bs.release();
  } catch (const std::logic_error&) {
    over = true;
  }
  CHECK(over);
  shmkit::condition_variable cv;
  shmkit::value<int> flag(0);
  {
    std::unique_lock lk(m);
    CHECK(!cv.wait_for(lk, 1ms, [&] { return flag.load() == 1; }));
  }
  shmkit::process setter([&] {
    std::lock_guard g(m);
    flag.store(1);
    cv.notify_all();
  });
  setter.start();
  {
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return flag.load() == 1; });
  }
  setter.join();
  cv.notify_one();
  shmkit::event e;
  CHECK(!e.is_set() && !e.wait_for(1ms));
  e.set();
  e.wait();
  CHECK(e.is_set());
  e.clear();
  shmkit::barrier b(2);
  shmkit::process party([&] { b.arrive_and_wait(); });
  party.start();
  b.arrive_and_wait();
  party.join();
  CHECK(!b.broken());
  shmkit::barrier lonely(2);
  CHECK(!lonely.wait_for(10ms));
  lonely.abort();
  CHECK(lonely.broken());
  bool broke = false;
  try {
    lonely.arrive_and_wait();
  } catch (const shmkit::broken_barrier_error&) {
    broke = true;
  }
  CHECK(broke);
  // A holder killed with the lock: the next locker gets it and is told.
  shmkit::mutex held;
  shmkit::process dies([&] {
    held.lock();
    ::kill(::getpid(), SIGKILL);
  });
  dies.start();
  dies.join();
  held.lock();
  CHECK(held.owner_died());
  held.mark_consistent();
  CHECK(!held.owner_died());
  held.unlock();
}

void queues() {
  shmkit::queue<std::string> q(16);
  q.put("a");
  CHECK(q.try_put("b"));
  CHECK(q.put_for("c", 100ms));
  CHECK(q.get() == "a");
  std::optional<std::string> v = q.try_get();
  CHECK(v && *v == "b");
  std::optional<std::string> w = q.get_for(100ms);
  CHECK(w && *w == "c");
  const std::string big(1 << 20, 'x');
  q.put(big);  // far larger than a slot
  CHECK(q.get() == big);
  std::vector<std::string> many{"1", "2", "3"};
  q.put_many(std::span<const std::string>(many));
  std::vector<std::string> vs = q.get_many(5);
  CHECK(!vs.empty() && vs.front() == "1");
  while (vs.size() < 3) vs.push_back(q.get());
  CHECK(vs == many);
  CHECK(q.size() == 0 && q.empty() && !q.full() && q.capacity() >= 16);
  q.close();
  CHECK(q.closed());
  bool closed = false;
  try {
    q.put("late");
  } catch (const shmkit::closed_error&) {
    closed = true;
  }
  CHECK(closed);
  shmkit::joinable_queue<int> jq(8);
  jq.put(1);
  shmkit::process consumer([&] {
    (void)jq.get();
    jq.task_done();
  });
  consumer.start();
  jq.join();
  consumer.join();
}

void pipes() {
  auto [a, b] = shmkit::pipe<point>();
  auto [rx, tx] = shmkit::pipe<point>(false);
  shmkit::process child([&] {
    point p = a.recv();
    p.x += 1;
    a.send(p);
    tx.send(point{5, "one-way"});
    const std::byte raw[3] = {std::byte{1}, std::byte{2}, std::byte{3}};
    tx.send_bytes(std::span<const std::byte>(raw));
  });
  child.start();
  b.send(point{1, "ping"});
  CHECK(b.recv() == (point{2, "ping"}));
  bool ready = rx.poll(10s);
  CHECK(ready);
  std::vector<std::size_t> readable = shmkit::wait({&rx, &b}, 1s);
  CHECK(!readable.empty() && readable.front() == 0);
  CHECK(rx.recv() == (point{5, "one-way"}));
  std::vector<std::byte> buf = rx.recv_bytes();
  CHECK(buf.size() == 3 && buf[2] == std::byte{3});
  child.join();
  a.close();
  tx.close();
  bool eof = false;
  try {
    (void)rx.recv();
  } catch (const shmkit::eof_error&) {
    eof = true;
  }
  CHECK(eof);
}

void shared_state() {
  shmkit::value<long> counter(0);
  shmkit::array<double> arr(1000);
  std::vector<shmkit::process> ps;
  for (int i = 0; i < 2; ++i)
    ps.emplace_back([&] {
      for (int k = 0; k < 1000; ++k) counter.update([](long& v) { ++v; });
      std::lock_guard g(arr.get_lock());
      arr[0] += 1.0;
    });
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();
  CHECK(counter.load() == 2000);
  counter.store(5);
  { std::lock_guard g(counter.get_lock()); }
  CHECK(arr.size() == 1000 && arr[0] == 2.0);
  CHECK(std::accumulate(arr.begin(), arr.end(), 0.0) == 2.0);

  shmkit::manager mgr;
  shmkit::shared_dict<std::string, int> d = mgr.dict<std::string, int>("scores");
  d.set("a", 1);
  int x = d.get("a");
  std::optional<int> y = d.try_get("b");
  CHECK(x == 1 && !y);
  CHECK(d.contains("a"));
  shmkit::process writer([&] { d.update("a", [](int& v) { ++v; }); });
  writer.start();
  writer.join();
  CHECK(d.get("a") == 2);
  d.update("new", [](int& v) { v += 10; });
  CHECK(d.get("new") == 10);
  CHECK(d.size() == 2 && d.keys().size() == 2 && d.values().size() == 2 && d.items().size() == 2);
  d.erase("a");
  d.clear();
  CHECK(d.size() == 0);
  shmkit::shared_list<int> l = mgr.list<int>("results");
  l.push_back(3);
  CHECK(l.at(0) == 3);
  l.set(0, 4);
  CHECK(l.size() == 1 && l.to_vector() == std::vector<int>{4});
  l.pop_back();
  l.push_back(1);
  l.clear();
  CHECK(l.size() == 0);
  bool mismatch = false;
  try {
    (void)mgr.dict<int, int>("scores");
  } catch (const shmkit::error&) {
    mismatch = true;
  }
  CHECK(mismatch);
  const std::string mname = unique("manager");
  shmkit::manager named(shmkit::create_only, mname, 1 << 20);
  named.dict<std::string, std::vector<std::string>>("nested").set("k", {"v", "w"});
  CHECK(in_child([&] {
    shmkit::manager other(shmkit::open_only, mname);
    return other.dict<std::string, std::vector<std::string>>("nested").get("k").size() == 2;
  }));
}

void processes() {
  shmkit::process p([&] {});
  p.start();
  p.join();
  CHECK(p.exitcode() == std::optional<int>(0));
  shmkit::process q([](int code) { std::_Exit(code); }, 3);
  q.start();
  bool done = q.join_for(10s);
  CHECK(done && q.exitcode() == std::optional<int>(3));
  shmkit::process sleeper([] { ::pause(); });
  sleeper.daemon(true);
  sleeper.start();
  CHECK(sleeper.is_alive() && sleeper.pid() > 0);
  (void)sleeper.name();
  sleeper.terminate();
  sleeper.join();
  CHECK(sleeper.exitcode() == std::optional<int>(-SIGTERM));
  shmkit::process killed([] { ::pause(); });
  killed.start();
  killed.kill();
  killed.join();
  CHECK(killed.exitcode() == std::optional<int>(-SIGKILL));
  shmkit::process failing([] { throw std::invalid_argument("bad input"); });
  failing.start();
  failing.join();
  CHECK(failing.exitcode() == std::optional<int>(1));
  bool rethrown = false;
  try {
    failing.rethrow_if_failed();
  } catch (const shmkit::remote_error& e) {
    rethrown = std::string(e.what()).find("bad input") != std::string::npos &&
               e.type_name() == "std::invalid_argument";
  }
  CHECK(rethrown);
  int n = shmkit::cpu_count();
  CHECK(n >= 1);
}

void pools() {
  shmkit::pool pool(2);
  std::vector<long> items(1000);
  std::iota(items.begin(), items.end(), 0L);
  std::vector<long> r = pool.map(square, items);
  CHECK(r.size() == items.size() && r[999] == 999L * 999L);
  std::vector<long> r2 = pool.map(square, items, 10);
  CHECK(r2 == r);
  std::size_t i = 0;
  bool ordered = true;
  for (long x : pool.imap(square, items)) ordered = ordered && x == square(items[i++]);
  CHECK(ordered && i == items.size());
  std::set<long> unordered;
  for (long x : pool.imap_unordered(square, items)) unordered.insert(x);
  CHECK(unordered.size() == items.size());
  std::vector<std::tuple<int, int>> tuples{{1, 2}, {3, 4}};
  std::vector<int> sums = pool.starmap(add, tuples);
  CHECK((sums == std::vector<int>{3, 7}));
  int s = pool.apply(add, 2, 3);
  CHECK(s == 5);
  shmkit::async_result<int> ar = pool.apply_async(add, 1, 1);
  CHECK(ar.get() == 2);
  std::optional<int> got = ar.get_for(1s);
  CHECK(got && *got == 2);
  ar.wait();
  CHECK(ar.ready() && ar.successful());
  std::atomic<int> called{0};
  shmkit::async_result<int> cb = pool.apply_async(add, 2, 2);
  cb.then([&](int v) { called += v; }, [&](const std::exception&) { called = -100; });
  auto bad = pool.apply_async(throws, 0);
  bad.then([&](int) {}, [&](const std::exception& e) {
    if (std::string(e.what()).find("no such thing") != std::string::npos) called += 1000;
  });
  cb.wait();
  bad.wait();
  for (int k = 0; k < 10000 && called.load() != 1004; ++k) std::this_thread::sleep_for(1ms);
  CHECK(called.load() == 1004);
  bool remote = false;
  try {
    (void)pool.apply(throws, 0);
  } catch (const shmkit::remote_error& e) {
    remote = e.type_name() == "std::runtime_error";
  }
  CHECK(remote);
  auto amr = pool.map_async(square, items);
  CHECK(amr.get() == r);
  long total = 0;
  for (long x : shmkit::with_progress(pool.imap(square, items))) total += x;
  CHECK(total == std::accumulate(r.begin(), r.end(), 0L));
  pool.close();
  pool.join();
  shmkit::pool other(
      shmkit::pool_options{.processes = 2, .initializer = init, .maxtasksperchild = 100});
  std::vector<int> flags = other.map(seen_init, std::vector<int>(50, 0));
  CHECK(std::accumulate(flags.begin(), flags.end(), 0) == 50);
  other.terminate();
  // A captureless lambda.
  shmkit::pool third(1);
  CHECK(third.apply([](int v) { return v * 3; }, 4) == 12);
  bool lost = false;
  auto stuck = third.apply_async([](int) { ::pause(); return 0; }, 0);
  std::this_thread::sleep_for(200ms);
  third.terminate();  // kills the workers: the task fails with worker_lost_error, never hangs
  try {
    (void)stuck.get();
  } catch (const shmkit::worker_lost_error&) {
    lost = true;
  }
  CHECK(lost);
}

void codec() {
  using big_t = std::tuple<std::map<std::string, std::vector<int>>, std::unordered_map<int, double>,
                           std::set<std::string>, std::pair<int, std::string>,
                           std::optional<std::array<int, 3>>, std::variant<int, std::string>, point>;
  big_t value{{{"a", {1, 2}}}, {{1, 0.5}}, {"s"}, {1, "p"}, std::array<int, 3>{1, 2, 3},
              std::string("v"), point{3, "pt"}};
  std::vector<std::byte> bytes = shmkit::encode(value);
  big_t back = shmkit::decode<big_t>(std::span<const std::byte>(bytes));
  CHECK(back == value);
  bytes.push_back(std::byte{0});
  bool trailing = false;
  try {
    (void)shmkit::decode<big_t>(std::span<const std::byte>(bytes));
  } catch (const shmkit::error&) {
    trailing = true;
  }
  CHECK(trailing);
  bytes.resize(bytes.size() / 2);
  bool truncated = false;
  try {
    (void)shmkit::decode<big_t>(std::span<const std::byte>(bytes));
  } catch (const shmkit::error&) {
    truncated = true;
  }
  CHECK(truncated);
}

void errors() {
  static_assert(std::is_base_of_v<std::runtime_error, shmkit::error>);
  static_assert(std::is_base_of_v<shmkit::error, shmkit::closed_error>);
  static_assert(std::is_base_of_v<shmkit::error, shmkit::eof_error>);
  static_assert(std::is_base_of_v<shmkit::error, shmkit::remote_error>);
  static_assert(std::is_base_of_v<shmkit::error, shmkit::worker_lost_error>);
  static_assert(std::is_base_of_v<shmkit::error, shmkit::broken_barrier_error>);
}

}  // namespace

int main() {
  naming();
  raw_shared_memory();
  synchronization();
  queues();
  pipes();
  shared_state();
  processes();
  pools();
  codec();
  errors();
  std::printf("api_contract: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
