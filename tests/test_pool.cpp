// SPDX-License-Identifier: MIT
// shmkit::pool with real worker processes: every API call against the serial result, remote
// exceptions, workers killed with SIGKILL or aborting, maxtasksperchild, initializers, a
// multithreaded parent, terminate().
#define BOOST_TEST_MODULE pool
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <dirent.h>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <unistd.h>

#include "shmkit/pool.hpp"
#include "shmkit/process.hpp"
#include "shmkit/progress.hpp"
#include "pool_tasks.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
namespace utf = boost::unit_test;
using namespace shmkit::test;

namespace {

int sleep_forever(int) {
  for (;;) ::pause();
}
int abort_on_7(int x) {
  if (x == 7) std::abort();
  return x;
}

// square(x) after about a microsecond of work: a worker killed in a stream of these is
// nearly always running one.
long busy_square(long x) {
  volatile long sink = 0;
  for (int i = 0; i < 300; ++i) sink = sink + i;
  return x * x + sink * 0;
}

int init_value = 0;
void init_worker() { init_value = 42; }
int read_init(int) { return init_value; }

// True once pid has gone (not even a zombie).
bool gone(pid_t pid) {
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < end) {
    if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

}  // namespace

BOOST_AUTO_TEST_CASE(map_of_a_million_ints_equals_the_serial_result, *utf::timeout(300)) {
  shmkit::pool pool(4);
  std::vector<long> items(1'000'000);
  std::iota(items.begin(), items.end(), 0L);
  auto got = pool.map(square, items);
  BOOST_REQUIRE_EQUAL(got.size(), items.size());
  for (std::size_t i = 0; i < items.size(); ++i) BOOST_REQUIRE_EQUAL(got[i], square(items[i]));
  // Explicit chunk sizes, including 1 and one larger than the input.
  for (std::size_t chunk : {1u, 7u, 5000u}) {
    std::vector<long> few(2000);
    std::iota(few.begin(), few.end(), 0L);
    auto r = pool.map(square, few, chunk);
    for (std::size_t i = 0; i < few.size(); ++i) BOOST_REQUIRE_EQUAL(r[i], square(few[i]));
  }
  BOOST_CHECK(pool.map(square, std::vector<long>{}).empty());
}

BOOST_AUTO_TEST_CASE(callables_of_every_allowed_kind, *utf::timeout(120)) {
  shmkit::pool pool(2);
  std::vector<std::string> words{"a", "bc", std::string(100000, 'x')};
  auto shouted = pool.map(shout, words);
  BOOST_CHECK_EQUAL(shouted[0], "A!");
  BOOST_CHECK_EQUAL(shouted[2].size(), 100001u);
  auto lam = pool.map([](int x) { return x + 1; }, std::vector<int>{1, 2, 3});
  BOOST_CHECK((lam == std::vector<int>{2, 3, 4}));
  auto scaled = pool.map(scaler{3}, std::vector<long>{1, 2, 3});
  BOOST_CHECK((scaled == std::vector<long>{3, 6, 9}));
}

BOOST_AUTO_TEST_CASE(imap_keeps_order_and_imap_unordered_yields_each_once, *utf::timeout(120)) {
  shmkit::pool pool(3);
  std::vector<int> items{50, 1, 30, 2, 20, 3, 10, 4};
  std::vector<int> ordered;
  for (int x : pool.imap(slow_identity, items)) ordered.push_back(x);
  BOOST_CHECK(ordered == items);

  std::vector<int> many(1000);
  std::iota(many.begin(), many.end(), 0);
  std::multiset<long> seen;
  for (long x : pool.imap_unordered(square, std::vector<long>(many.begin(), many.end())))
    seen.insert(x);
  BOOST_REQUIRE_EQUAL(seen.size(), many.size());
  for (int i : many) BOOST_CHECK_EQUAL(seen.count(square(i)), 1u);

  // imap with chunks, and with_progress over it.
  std::vector<long> got;
  for (long x : shmkit::with_progress(pool.imap(square, std::vector<long>{1, 2, 3, 4, 5}, 2)))
    got.push_back(x);
  BOOST_CHECK((got == std::vector<long>{1, 4, 9, 16, 25}));
}

// Long streams of tiny tasks (deep inboxes, outcomes packed several to a message): every
// result in its place, and with a worker killed midway, every item either yields its result
// exactly once or is reported lost.
BOOST_AUTO_TEST_CASE(long_streams_of_tiny_tasks_each_once_even_when_a_worker_dies,
                     *utf::timeout(300)) {
  shmkit::pool pool(2);
  std::vector<long> items(100'000);
  std::iota(items.begin(), items.end(), 0L);
  for (std::size_t chunk : {1u, 7u}) {
    std::size_t i = 0;
    for (long x : pool.imap(square, items, chunk)) {
      BOOST_REQUIRE_LT(i, items.size());
      BOOST_REQUIRE_EQUAL(x, square(items[i]));
      ++i;
    }
    BOOST_REQUIRE_EQUAL(i, items.size());
  }
  for (int round = 0; round < 3; ++round) {
    std::set<long> seen;
    std::size_t lost = 0;
    auto range = pool.imap_unordered(busy_square, items);
    bool killed = false;
    for (;;) {
      try {
        for (long x : range) {
          BOOST_REQUIRE(seen.insert(x).second);  // never twice
          if (!killed) {  // at the first result: the stream has just begun
            const auto pids = pool.worker_pids();
            BOOST_REQUIRE(!pids.empty());
            ::kill(pids[static_cast<std::size_t>(round) % pids.size()], SIGKILL);
            killed = true;
          }
        }
        break;
      } catch (const shmkit::worker_lost_error&) {
        ++lost;
      }
    }
    BOOST_TEST_MESSAGE("round " << round << ": " << seen.size() << " results, " << lost
                                << " lost");
    BOOST_CHECK_EQUAL(seen.size() + lost, items.size());
    bool all_squares = true;
    for (long x : seen) {
      const long r = std::lround(std::sqrt(static_cast<double>(x)));
      all_squares = all_squares && r * r == x && r < static_cast<long>(items.size());
    }
    BOOST_CHECK(all_squares);
    BOOST_CHECK_LE(lost, 2000u);  // what one worker ran or held unsent, not its whole inbox
  }
  BOOST_CHECK(pool.map(square, items, 1) == [&] {
    std::vector<long> want;
    for (long x : items) want.push_back(square(x));
    return want;
  }());
}

BOOST_AUTO_TEST_CASE(starmap_and_apply, *utf::timeout(120)) {
  shmkit::pool pool(2);
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  BOOST_CHECK((pool.starmap(add, pairs) == std::vector<int>{3, 7, 11}));
  BOOST_CHECK_EQUAL(pool.apply(add, 20, 22), 42);
  BOOST_CHECK_EQUAL(pool.apply(shout, std::string("hi")), "HI!");
  BOOST_CHECK_NE(pool.apply(my_pid, 0), ::getpid());
}

BOOST_AUTO_TEST_CASE(ten_thousand_apply_async_callbacks_each_called_once, *utf::timeout(300)) {
  shmkit::pool pool(2);
  constexpr int n = 10000;
  std::vector<std::atomic<int>> calls(n);
  std::atomic<int> errors{0};
  std::thread::id cb_thread;
  std::atomic<bool> one_thread{true};
  std::mutex mu;
  std::vector<shmkit::async_result<int>> results;
  results.reserve(n);
  for (int i = 0; i < n; ++i) {
    auto r = pool.apply_async(add, i, 0);
    r.then(
        [&, i](int v) {
          {
            std::lock_guard lk(mu);
            if (cb_thread == std::thread::id()) cb_thread = std::this_thread::get_id();
            if (cb_thread != std::this_thread::get_id()) one_thread = false;
          }
          if (v == i) calls[i].fetch_add(1);
        },
        [&](const std::exception&) { errors.fetch_add(1); });
    results.push_back(r);
  }
  for (auto& r : results) r.wait();
  // Callbacks of results already complete when attached also run on the result thread; give
  // the last of them a moment to finish.
  const auto end = std::chrono::steady_clock::now() + 60s;
  auto total = [&] {
    int t = 0;
    for (auto& c : calls) t += c.load();
    return t;
  };
  while (total() < n && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(5ms);
  for (int i = 0; i < n; ++i) BOOST_REQUIRE_EQUAL(calls[i].load(), 1);
  BOOST_CHECK_EQUAL(errors.load(), 0);
  BOOST_CHECK(one_thread.load());
  BOOST_CHECK(cb_thread != std::this_thread::get_id());
}

// Payloads of every size class: inline in a slot, in the queues' heaps, and beyond them in
// shared memory of their own; several at once, so that the heaps fill and drain.
BOOST_AUTO_TEST_CASE(arguments_and_results_of_any_size_travel_whole, *utf::timeout(300)) {
  shmkit::pool pool(2);
  std::vector<std::string> items;
  for (std::size_t n : {0ul, 1ul, 90ul, 4000ul, 200'000ul, 300'000ul, 1'100'000ul, 5'000'000ul})
    for (int k = 0; k < 3; ++k) {
      std::string s(n, '\0');
      for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + k) % 26);
      items.push_back(std::move(s));
    }
  std::vector<std::string> want;
  for (const auto& s : items) want.push_back(shout(s));
  BOOST_CHECK(pool.map(shout, items, 1) == want);
  BOOST_CHECK(pool.map(shout, items, 4) == want);
  std::vector<shmkit::async_result<std::string>> rs;
  for (const auto& s : items) rs.push_back(pool.apply_async(shout, s));
  for (std::size_t i = 0; i < rs.size(); ++i) BOOST_CHECK(rs[i].get() == want[i]);
}

BOOST_AUTO_TEST_CASE(async_result_queries, *utf::timeout(120)) {
  shmkit::pool pool(2);
  auto slow = pool.apply_async(slow_identity, 300);
  BOOST_CHECK(!slow.ready());
  BOOST_CHECK_THROW(slow.successful(), std::logic_error);
  BOOST_CHECK(!slow.get_for(1ms).has_value());
  BOOST_CHECK_EQUAL(slow.get(), 300);
  BOOST_CHECK(slow.ready());
  BOOST_CHECK(slow.successful());
  auto bad = pool.apply_async(fail_on_13, 13);
  bad.wait();
  BOOST_CHECK(!bad.successful());
  BOOST_CHECK_THROW(bad.get_for(1s), shmkit::remote_error);
  auto amr = pool.map_async(square, std::vector<long>{1, 2, 3});
  BOOST_CHECK((amr.get() == std::vector<long>{1, 4, 9}));
}

BOOST_AUTO_TEST_CASE(a_throwing_task_reaches_the_caller_and_the_pool_stays_usable,
                     *utf::timeout(120)) {
  shmkit::pool pool(2);
  std::vector<int> items(100);
  std::iota(items.begin(), items.end(), 0);
  try {
    pool.map(fail_on_13, items);
    BOOST_FAIL("map did not throw");
  } catch (const shmkit::remote_error& e) {
    BOOST_CHECK_EQUAL(e.type_name(), "std::invalid_argument");
    BOOST_CHECK_EQUAL(std::string(e.what()), "thirteen is unlucky");
    // The stack of the throw in the worker comes with it.
    BOOST_TEST(e.traceback().rfind("Traceback of the throw", 0) == 0, e.traceback());
    BOOST_TEST(e.traceback().find("  #0 ") != std::string::npos, e.traceback());
  }
  std::atomic<int> err_called{0};
  std::string err_text;
  auto r = pool.apply_async(fail_on_13, 13);
  r.then([](int) {}, [&](const std::exception& e) {
    err_text = e.what();
    err_called.fetch_add(1);
  });
  BOOST_CHECK_THROW(r.get(), shmkit::remote_error);
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (err_called.load() == 0 && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(1ms);
  BOOST_CHECK_EQUAL(err_called.load(), 1);
  BOOST_CHECK_EQUAL(err_text, "thirteen is unlucky");
  // Iteration throws where the failure stands.
  std::vector<int> seen;
  try {
    for (int x : pool.imap(fail_on_13, std::vector<int>{11, 12, 13, 14})) seen.push_back(x);
    BOOST_FAIL("imap did not throw");
  } catch (const shmkit::remote_error&) {
  }
  BOOST_CHECK((seen == std::vector<int>{11, 12}));
  // Still usable.
  BOOST_CHECK((pool.map(square, std::vector<long>{2, 3}) == std::vector<long>{4, 9}));
}

BOOST_AUTO_TEST_CASE(a_killed_worker_fails_its_task_and_is_replaced, *utf::timeout(180)) {
  shmkit::pool pool(2);
  auto stuck = pool.apply_async(sleep_forever, 0);
  // Find the worker running it: the one that stays busy. Kill every worker; the stuck task
  // must fail with worker_lost_error, not hang.
  std::this_thread::sleep_for(200ms);
  const auto before = pool.worker_pids();
  BOOST_REQUIRE_EQUAL(before.size(), 2u);
  for (pid_t p : before) ::kill(p, SIGKILL);
  BOOST_CHECK_THROW(stuck.get(), shmkit::worker_lost_error);
  // Replaced: a following map succeeds, on new workers.
  std::vector<long> items(1000);
  std::iota(items.begin(), items.end(), 0L);
  auto got = pool.map(square, items);
  for (std::size_t i = 0; i < items.size(); ++i) BOOST_REQUIRE_EQUAL(got[i], square(items[i]));
  for (pid_t p : before) BOOST_CHECK(gone(p));
  // The map may have run on the first replacement alone; the second follows.
  auto after = pool.worker_pids();
  for (const auto end = std::chrono::steady_clock::now() + 60s;
       after.size() < 2u && std::chrono::steady_clock::now() < end; after = pool.worker_pids())
    std::this_thread::sleep_for(5ms);
  BOOST_CHECK_EQUAL(after.size(), 2u);
  for (pid_t p : after) BOOST_CHECK(std::find(before.begin(), before.end(), p) == before.end());
}

BOOST_AUTO_TEST_CASE(a_worker_that_aborts_fails_map_with_worker_lost, *utf::timeout(180)) {
  shmkit::pool pool(2);
  std::vector<int> items(20);
  std::iota(items.begin(), items.end(), 0);
  BOOST_CHECK_THROW(pool.map(abort_on_7, items, 1), shmkit::worker_lost_error);
  std::vector<int> safe{1, 2, 3};
  BOOST_CHECK((pool.map(abort_on_7, safe) == safe));
}

// A caller that ignores SIGCHLD (as daemons do) has its children reaped by the kernel: the
// pool's workers are the supervisor's children, and the supervisor collects their statuses
// whatever the caller's disposition. Run in a child, whose disposition the test may change.
BOOST_AUTO_TEST_CASE(a_caller_ignoring_sigchld_still_gets_worker_lost_and_replacements,
                     *utf::timeout(180)) {
  const pid_t child = spawn([] {
    ::signal(SIGCHLD, SIG_IGN);
    shmkit::pool pool(2);
    CHILD_CHECK(pool.apply(square, 3L) == 9);
    bool lost = false;
    try {
      pool.apply(abort_on_7, 7);
    } catch (const shmkit::worker_lost_error&) {
      lost = true;
    }
    CHILD_CHECK(lost);
    CHILD_CHECK(pool.apply(square, 4L) == 16);
    // Idle workers killed: replaced, and the pool goes on.
    for (pid_t p : pool.worker_pids()) ::kill(p, SIGKILL);
    std::vector<long> items(100, 2);
    const auto got = pool.map(square, items);
    CHILD_CHECK(got.size() == 100 && got[99] == 4);
  });
  BOOST_CHECK_EQUAL(wait_exit(child), 0);
}

// Workers take many tiny tasks at once and send their results together: a worker dying in
// the middle of such a batch costs the tasks it took, each failing with worker_lost_error
// (never hanging, never a wrong value), and the rest complete.
BOOST_AUTO_TEST_CASE(a_worker_dying_inside_a_batch_loses_only_what_it_held, *utf::timeout(180)) {
  shmkit::pool pool(2);
  for (int round = 0; round < 3; ++round) {
    std::vector<shmkit::async_result<int>> rs;
    for (int i = 0; i < 400; ++i) rs.push_back(pool.apply_async(abort_on_7, i % 50 == 7 ? 7 : i));
    int ok = 0, lost = 0;
    for (int i = 0; i < 400; ++i) {
      try {
        const int v = rs[i].get();
        BOOST_REQUIRE_EQUAL(v, i);
        ++ok;
      } catch (const shmkit::worker_lost_error&) {
        ++lost;
      }
    }
    BOOST_TEST_MESSAGE("round " << round << ": " << ok << " done, " << lost << " lost");
    for (int i = 7; i < 400; i += 50) BOOST_CHECK_THROW(rs[i].get(), shmkit::worker_lost_error);
    BOOST_CHECK_EQUAL(ok + lost, 400);
    BOOST_CHECK_GE(ok, 400 - 8 * 40);  // each death costs at most a batch held and unsent
  }
  std::vector<int> safe(1000);
  std::iota(safe.begin(), safe.end(), 100);
  BOOST_CHECK(pool.map(abort_on_7, safe, 1) == safe);
}

// A worker takes a batch of what is queued for it; killed while it runs the first, the tasks it took
// but never started run on its replacement: only the task it ran fails.
BOOST_AUTO_TEST_CASE(tasks_a_killed_worker_took_but_never_started_still_run, *utf::timeout(180)) {
  shmkit::pool pool(1);
  auto stuck = pool.apply_async(sleep_forever, 0);
  std::vector<shmkit::async_result<int>> after;
  for (int i = 0; i < 5; ++i) after.push_back(pool.apply_async(add, i, 100));
  std::this_thread::sleep_for(300ms);  // the worker has taken what its inbox held
  const auto pids = pool.worker_pids();
  BOOST_REQUIRE_EQUAL(pids.size(), 1u);
  ::kill(pids[0], SIGKILL);
  BOOST_CHECK_THROW(stuck.get(), shmkit::worker_lost_error);
  for (int i = 0; i < 5; ++i) BOOST_CHECK_EQUAL(after[i].get(), i + 100);
}

// The same with arguments too large for a task record (they travel on the worker's bulk
// queue): the arguments of the records the killed worker took are dropped by its
// replacement, and never keep the tasks that go round again from being sent.
std::size_t length_of(const std::string& s) { return s.size(); }
int nap(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
BOOST_AUTO_TEST_CASE(large_arguments_of_tasks_a_killed_worker_took_still_run, *utf::timeout(180)) {
  shmkit::pool pool(1);
  // Quick tasks first, so that the pool lets the worker hold several tasks at once.
  for (int i = 0; i < 50; ++i) BOOST_REQUIRE_EQUAL(pool.apply(length_of, std::string(10, 'a')), 10u);
  // While the worker naps, the records queue up; it then takes them all at once.
  auto napping = pool.apply_async(nap, 300);
  std::this_thread::sleep_for(50ms);
  auto stuck = pool.apply_async(sleep_forever, 0);
  std::vector<shmkit::async_result<std::size_t>> after;
  for (int i = 0; i < 16; ++i)  // enough waiting that the worker holds several
    after.push_back(pool.apply_async(length_of, std::string(250'000 + i, 'a')));
  BOOST_CHECK_EQUAL(napping.get(), 300);
  std::this_thread::sleep_for(200ms);  // the worker has taken what its inbox held
  const auto pids = pool.worker_pids();
  BOOST_REQUIRE_EQUAL(pids.size(), 1u);
  ::kill(pids[0], SIGKILL);
  BOOST_CHECK_THROW(stuck.get(), shmkit::worker_lost_error);
  for (int i = 0; i < 16; ++i) BOOST_CHECK_EQUAL(after[i].get(), 250'000u + i);
}

BOOST_AUTO_TEST_CASE(maxtasksperchild_replaces_workers, *utf::timeout(180)) {
  shmkit::pool pool(shmkit::pool_options{.processes = 2, .maxtasksperchild = 10});
  std::vector<int> items(1000);
  std::iota(items.begin(), items.end(), 0);
  auto pids = pool.map(my_pid, items, 1);
  std::set<pid_t> distinct(pids.begin(), pids.end());
  BOOST_TEST_MESSAGE(distinct.size() << " distinct worker pids for 1000 tasks");
  BOOST_CHECK_GE(distinct.size(), 100u);  // 1000 tasks / 10 per worker
  auto sq = pool.map(square, std::vector<long>{1, 2, 3}, 1);
  BOOST_CHECK((sq == std::vector<long>{1, 4, 9}));
}

BOOST_AUTO_TEST_CASE(the_initializer_runs_in_every_worker, *utf::timeout(120)) {
  shmkit::pool pool(shmkit::pool_options{.processes = 3, .initializer = init_worker,
                                         .maxtasksperchild = 5});
  auto got = pool.map(read_init, std::vector<int>(100, 0), 1);
  for (int v : got) BOOST_REQUIRE_EQUAL(v, 42);
  BOOST_CHECK_EQUAL(init_value, 0);  // not in the parent
}

// An initializer that throws leaves the pool without workers: rather than replacing them for
// ever while the tasks wait, the pool breaks, and every task fails saying why.
BOOST_AUTO_TEST_CASE(a_failing_initializer_fails_the_tasks_instead_of_hanging,
                     *utf::timeout(120)) {
  shmkit::pool pool(shmkit::pool_options{
      .processes = 2, .initializer = [] { throw std::runtime_error("no config"); }});
  try {
    pool.map(square, std::vector<long>(100, 2L));
    BOOST_FAIL("map returned");
  } catch (const shmkit::worker_lost_error& e) {
    BOOST_TEST(std::string(e.what()).find("initializer failed") != std::string::npos, e.what());
  }
  BOOST_CHECK_THROW(pool.apply(square, 3L), shmkit::worker_lost_error);
}

BOOST_AUTO_TEST_CASE(a_multithreaded_parent_gets_correct_results_after_replacements,
                     *utf::timeout(180)) {
  shmkit::pool pool(shmkit::pool_options{.processes = 2, .maxtasksperchild = 3});
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    std::vector<std::string> junk;
    while (!stop.load()) {
      junk.emplace_back(1000, 'x');  // hold the allocator's locks now and then
      if (junk.size() > 100) junk.clear();
    }
  });
  for (int round = 0; round < 5; ++round) {
    std::vector<long> items(300);
    std::iota(items.begin(), items.end(), round * 1000L);
    auto got = pool.map(square, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i) BOOST_REQUIRE_EQUAL(got[i], square(items[i]));
  }
  stop = true;
  busy.join();
}

BOOST_AUTO_TEST_CASE(close_and_join_finish_the_work, *utf::timeout(120)) {
  shmkit::pool pool(2);
  auto r = pool.map_async(slow_identity, std::vector<int>{50, 50, 50, 50}, 1);
  BOOST_CHECK_THROW(pool.join(), std::logic_error);  // join before close
  pool.close();
  BOOST_CHECK_THROW(pool.apply(add, 1, 2), std::logic_error);
  pool.join();
  BOOST_CHECK((r.get() == std::vector<int>{50, 50, 50, 50}));
  BOOST_CHECK(pool.worker_pids().empty());
}

BOOST_AUTO_TEST_CASE(terminate_while_tasks_run_returns_promptly_and_leaves_no_process,
                     *utf::timeout(120)) {
  std::vector<pid_t> workers;
  shmkit::async_result<int> r = [&] {
    shmkit::pool pool(3);
    auto stuck = pool.apply_async(sleep_forever, 0);
    auto more = pool.map_async(sleep_forever, std::vector<int>(10, 0), 1);
    std::this_thread::sleep_for(100ms);
    workers = pool.worker_pids();
    pool.terminate();
    BOOST_CHECK_THROW(more.get(), shmkit::worker_lost_error);
    return stuck;
  }();  // the destructor after terminate() is harmless
  BOOST_CHECK_THROW(r.get(), shmkit::worker_lost_error);
  BOOST_REQUIRE_EQUAL(workers.size(), 3u);
  for (pid_t p : workers) BOOST_CHECK(gone(p));
  // No child of ours is left, not even a zombie.
  BOOST_CHECK_EQUAL(::waitpid(-1, nullptr, WNOHANG), -1);
  BOOST_CHECK_EQUAL(errno, ECHILD);
}

BOOST_AUTO_TEST_CASE(the_destructor_terminates, *utf::timeout(120)) {
  std::vector<pid_t> workers;
  {
    shmkit::pool pool(2);
    (void)pool.apply_async(sleep_forever, 0);
    workers = pool.worker_pids();
  }
  for (pid_t p : workers) BOOST_CHECK(gone(p));
}
