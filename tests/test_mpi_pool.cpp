// SPDX-License-Identifier: MIT
// shmkit::mpi_pool, run by ctest as `mpirun -np 3 --oversubscribe test_mpi_pool [mode]`:
// rank 0 runs the Boost.Test cases against the pool, ranks 1 and 2 serve tasks, each in its
// local shmkit::pool.
//   (no mode)      one pool made as a program makes it, mpi_pool(argc, argv), owning MPI (the
//                  local pools are forked before MPI_Init): every pool call against the serial
//                  result, remote errors, tasks that kill their process (worker_lost_error,
//                  the rank lives on), callbacks, close() and join(); after MPI_Finalize, no
//                  worker rank's process and no local pool process is left
//   --terminate    MPI initialized by the program itself (the pool does not own it, and the
//                  local pools are forked after MPI_Init): they run tasks and survive a crash
//                  too; terminate() while tasks run fails them with worker_lost_error and the
//                  job still ends cleanly
//   --in-rank      the pool with local_pool = false: the default mode's cases, each worker
//                  rank running its tasks itself (the cases with crashing tasks are skipped)
//   --rank-dies    a task kills the worker rank it runs under with SIGKILL: mpirun stops the
//                  job and rank 0 says what was pending; the ctest test expects that message
//                  (and no hang)
#define BOOST_TEST_MODULE mpi_pool
#define BOOST_TEST_NO_MAIN
#include <boost/test/unit_test.hpp>

// The C API only, not the deprecated C++ bindings mpi.h would otherwise bring in.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <fcntl.h>
#include <unistd.h>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <string_view>
#include <thread>

#include "pool_tasks.hpp"
#include "shmkit/detail/identity.hpp"
#include "shmkit/mpi_pool.hpp"

using namespace std::chrono_literals;
namespace utf = boost::unit_test;

namespace {

using namespace shmkit::test;

int throw_an_int(int) { throw 7; }

// The parent of process `pid` (0 when it is gone).
pid_t parent_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return 0;
  char state = 0;
  int ppid = 0;
  if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2) return 0;
  return ppid;
}

// Where a task runs: its process, that process's parent (the local pool's supervisor) and
// grandparent (the worker rank), with the identities of the first two, so that the test can
// tell later whether they are gone.
struct lineage {
  pid_t self = 0, parent = 0, rank = 0;
  std::uint64_t self_id = 0, parent_id = 0;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(self, parent, rank, self_id, parent_id);
  }
};
lineage where_am_i(int) {
  lineage l;
  l.self = ::getpid();
  l.parent = ::getppid();
  l.rank = parent_of(l.parent);
  l.self_id = shmkit::detail::process_identity();
  l.parent_id = shmkit::detail::identity_of(l.parent);
  return l;
}

// Tasks that kill the process running them.
int abort_now(int) { std::abort(); }
int abort_on_5(int x) {
  if (x == 5) std::abort();
  return x;
}
int die_by(int sig) {
  ::raise(sig);
  return sig;
}
void kill_my_rank(int) { ::kill(parent_of(::getppid()), SIGKILL); }
// Kills the local pool's supervisor, then waits to be killed in turn.
int kill_my_supervisor(int) {
  ::kill(::getppid(), SIGKILL);
  for (;;) ::pause();
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// Every process seen running tasks or supervising them: none may outlive the pool.
std::vector<std::uint64_t> pool_processes;

shmkit::mpi_pool* the_pool = nullptr;
bool in_rank_mode = false;  // --in-rank: no local pools

// The worker rank under which process `pid` ran a task.
pid_t rank_of(pid_t pid) { return in_rank_mode ? pid : parent_of(parent_of(pid)); }

struct with_local_pools {
  boost::test_tools::assertion_result operator()(utf::test_unit_id) const {
    boost::test_tools::assertion_result r(!in_rank_mode);
    r.message() << "worker ranks run their tasks themselves (--in-rank)";
    return r;
  }
};
shmkit::mpi_pool& pool() {
  BOOST_REQUIRE(the_pool != nullptr);
  return *the_pool;
}

template <class Pred>
bool eventually(Pred pred, std::chrono::seconds limit = 60s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

}  // namespace

// Checks that tasks killing their process fail with worker_lost_error while the worker ranks
// live on, and that the pool then works as before. Used in both modes.
void crashing_tasks_fail_and_the_ranks_live_on() {
  const auto workers = pool().worker_pids();
  std::vector<std::uint64_t> rank_ids;
  for (pid_t p : workers) rank_ids.push_back(shmkit::detail::identity_of(p));
  try {
    pool().apply(abort_now, 0);
    BOOST_FAIL("apply of a task that aborts did not throw");
  } catch (const shmkit::worker_lost_error& e) {
    BOOST_TEST_MESSAGE("abort: " << e.what());
    BOOST_CHECK(contains(e.what(), "shmkit::mpi_pool: rank "));
    BOOST_CHECK(contains(e.what(), "signal 6"));
  }
  BOOST_CHECK_THROW(pool().apply(die_by, SIGKILL), shmkit::worker_lost_error);
  BOOST_CHECK_THROW(pool().apply(die_by, SIGSEGV), shmkit::worker_lost_error);
  // In a map: the chunk with the crash fails the map.
  std::vector<int> items(100);
  std::iota(items.begin(), items.end(), 0);
  BOOST_CHECK_THROW(pool().map(abort_on_5, items), shmkit::worker_lost_error);
  // In imap: results in order, then the iteration throws at the lost task. The local pool
  // may fail with it the tiny tasks its worker had just finished and not yet reported (see
  // shmkit::pool), so the throw may come a little earlier; never a result after it.
  std::vector<int> seen;
  try {
    for (int x : pool().imap(abort_on_5, std::vector<int>{1, 2, 3, 4, 5, 6})) seen.push_back(x);
    BOOST_FAIL("imap over a task that aborts did not throw");
  } catch (const shmkit::worker_lost_error&) {
  }
  BOOST_CHECK_LE(seen.size(), 4u);
  for (std::size_t i = 0; i < seen.size(); ++i) BOOST_CHECK_EQUAL(seen[i], static_cast<int>(i) + 1);
  // The error callback gets it too.
  std::atomic<int> lost{0};
  auto r = pool().apply_async(abort_now, 0);
  r.then([](int) {},
         [&](const std::exception& e) {
           if (dynamic_cast<const shmkit::worker_lost_error*>(&e) != nullptr) lost.fetch_add(1);
         });
  BOOST_CHECK_THROW(r.get(), shmkit::worker_lost_error);
  BOOST_CHECK(eventually([&] { return lost.load() == 1; }));
  // A crash amid many tiny tasks submitted one at a time (deep windows, packed): the task
  // that crashes fails with worker_lost_error; every other task succeeds, or fails the same
  // way when its local worker had just finished it (see shmkit::pool); each outcome comes once.
  {
    constexpr int n = 20'000;
    std::vector<std::atomic<int>> ok(n), failed(n);
    std::vector<shmkit::async_result<int>> rs;
    rs.reserve(n);
    for (int i = 0; i < n; ++i) {
      rs.push_back(pool().apply_async(abort_on_5, i));
      rs.back().then(
          [&, i](int v) {
            if (v == i) ok[i].fetch_add(1);
          },
          [&, i](const std::exception& e) {
            if (dynamic_cast<const shmkit::worker_lost_error*>(&e) != nullptr)
              failed[i].fetch_add(1);
          });
    }
    for (auto& r : rs) r.wait();
    auto total = [&] {
      int t = 0;
      for (int i = 0; i < n; ++i) t += ok[i].load() + failed[i].load();
      return t;
    };
    BOOST_CHECK(eventually([&] { return total() >= n; }));
    BOOST_CHECK_EQUAL(failed[5].load(), 1);
    int lost = 0;
    for (int i = 0; i < n; ++i) {
      BOOST_REQUIRE_EQUAL(ok[i].load() + failed[i].load(), 1);
      lost += failed[i].load();
    }
    BOOST_TEST_MESSAGE("tasks lost with the crashing one: " << lost - 1);
  }
  // A task that kills its local pool's supervisor: the rank makes a new local pool.
  BOOST_CHECK_THROW(pool().apply(kill_my_supervisor, 0), shmkit::worker_lost_error);
  BOOST_CHECK_EQUAL(pool().apply(add, 2, 3), 5);
  // The ranks are the same processes, and later work is right and runs on both.
  BOOST_CHECK(pool().worker_pids() == workers);
  for (auto id : rank_ids) BOOST_CHECK(shmkit::detail::identity_alive(id));
  std::vector<long> many(20'000);
  std::iota(many.begin(), many.end(), 0L);
  std::vector<long> serial;
  for (long x : many) serial.push_back(square(x));
  BOOST_CHECK(pool().map(square, many) == serial);
  std::set<pid_t> used_ranks;
  for (const lineage& l : pool().map(where_am_i, std::vector<int>(100, 0), 1))
    used_ranks.insert(l.rank);
  BOOST_CHECK((used_ranks == std::set<pid_t>(workers.begin(), workers.end())));
}

BOOST_AUTO_TEST_SUITE(with_pool)

BOOST_AUTO_TEST_CASE(two_worker_ranks_and_tasks_run_there, *utf::timeout(120)) {
  BOOST_REQUIRE(pool().is_root());
  BOOST_REQUIRE_EQUAL(pool().size(), 3);
  BOOST_CHECK_EQUAL(pool().worker_ranks(), 2);
  // Each worker rank has a local pool of at least one process (the CPUs shared by the two).
  if (in_rank_mode)
    BOOST_CHECK_EQUAL(pool().processes(), 2);
  else
    BOOST_CHECK_GE(pool().processes(), 2);
  const auto workers = pool().worker_pids();
  BOOST_REQUIRE_EQUAL(workers.size(), 2u);
  const std::set<pid_t> ranks(workers.begin(), workers.end());
  BOOST_CHECK_EQUAL(ranks.size(), 2u);
  BOOST_CHECK(!ranks.contains(::getpid()));
  std::vector<int> items(200);
  std::iota(items.begin(), items.end(), 0);
  // Tasks run in the local pools' workers, grandchildren of the ranks, on both ranks.
  std::set<pid_t> used_ranks, runners;
  for (const lineage& l : pool().map(where_am_i, items, 1)) {
    BOOST_REQUIRE(ranks.contains(rank_of(l.self)));
    BOOST_REQUIRE(in_rank_mode == ranks.contains(l.self));
    used_ranks.insert(rank_of(l.self));
    runners.insert(l.self);
  }
  BOOST_CHECK_EQUAL(used_ranks.size(), 2u);
  BOOST_CHECK_LE(runners.size(), static_cast<std::size_t>(pool().processes()));
}

BOOST_AUTO_TEST_CASE(map_of_100000_tasks_equals_the_serial_result, *utf::timeout(300)) {
  std::vector<long> items(100'000);
  std::iota(items.begin(), items.end(), 0L);
  std::vector<long> serial;
  for (long x : items) serial.push_back(square(x));
  BOOST_CHECK(pool().map(square, items) == serial);      // default chunks
  BOOST_CHECK(pool().map(square, items, 10) == serial);  // 10,000 messages
  // Explicit chunk sizes, including 1 and one larger than the input.
  for (std::size_t chunk : {1u, 7u, 5000u}) {
    std::vector<long> few(2000);
    std::iota(few.begin(), few.end(), 0L);
    auto r = pool().map(square, few, chunk);
    for (std::size_t i = 0; i < few.size(); ++i) BOOST_REQUIRE_EQUAL(r[i], square(few[i]));
  }
  BOOST_CHECK(pool().map(square, std::vector<long>{}).empty());
}

BOOST_AUTO_TEST_CASE(callables_of_every_allowed_kind_starmap_and_apply, *utf::timeout(120)) {
  std::vector<std::string> words{"a", "bc", std::string(1'000'000, 'x')};
  auto shouted = pool().map(shout, words, 1);
  BOOST_CHECK_EQUAL(shouted[0], "A!");
  BOOST_CHECK_EQUAL(shouted[1], "BC!");
  BOOST_CHECK_EQUAL(shouted[2], std::string(1'000'000, 'X') + "!");
  auto lam = pool().map([](int x) { return x + 1; }, std::vector<int>{1, 2, 3});
  BOOST_CHECK((lam == std::vector<int>{2, 3, 4}));
  auto scaled = pool().map(scaler{3}, std::vector<long>{1, 2, 3});
  BOOST_CHECK((scaled == std::vector<long>{3, 6, 9}));
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  BOOST_CHECK((pool().starmap(add, pairs) == std::vector<int>{3, 7, 11}));
  BOOST_CHECK_EQUAL(pool().apply(add, 20, 22), 42);
  BOOST_CHECK_EQUAL(pool().apply(shout, std::string("hi")), "HI!");
  BOOST_CHECK_NE(pool().apply(my_pid, 0), ::getpid());
  BOOST_CHECK(
      (pool().map_async(square, std::vector<long>{1, 2, 3}).get() == std::vector<long>{1, 4, 9}));
}

BOOST_AUTO_TEST_CASE(imap_keeps_order_and_imap_unordered_yields_each_once, *utf::timeout(120)) {
  // Early items are slow, so later ones finish first on the other rank.
  std::vector<int> items{300, 1, 200, 2, 100, 3, 50, 4, 0, 5};
  std::vector<int> ordered;
  for (int x : pool().imap(slow_identity, items)) ordered.push_back(x);
  BOOST_CHECK(ordered == items);

  std::vector<long> many(20'000);
  std::iota(many.begin(), many.end(), 0L);
  std::vector<long> in_order;
  for (long x : pool().imap(square, many)) in_order.push_back(x);  // one message per item
  BOOST_REQUIRE_EQUAL(in_order.size(), many.size());
  for (std::size_t i = 0; i < many.size(); ++i) BOOST_REQUIRE_EQUAL(in_order[i], square(many[i]));

  std::multiset<long> seen;
  for (long x : pool().imap_unordered(square, many, 16)) seen.insert(x);
  BOOST_REQUIRE_EQUAL(seen.size(), many.size());
  for (long i : many) BOOST_REQUIRE_EQUAL(seen.count(square(i)), 1u);

  // One item per task, many at once on each rank (the window grows with the rank's rate).
  std::vector<long> more(100'000);
  std::iota(more.begin(), more.end(), 0L);
  std::vector<int> count(more.size(), 0);
  for (long x : pool().imap_unordered(scaler{2}, more)) {
    BOOST_REQUIRE(x % 2 == 0 && x / 2 >= 0 && x / 2 < static_cast<long>(more.size()));
    ++count[static_cast<std::size_t>(x / 2)];
  }
  for (std::size_t i = 0; i < count.size(); ++i) BOOST_REQUIRE_EQUAL(count[i], 1);
}

BOOST_AUTO_TEST_CASE(apply_async_callbacks_run_once_on_the_result_thread, *utf::timeout(300)) {
  constexpr int n = 4000;
  std::vector<std::atomic<int>> calls(n);
  std::atomic<int> errors{0};
  std::mutex mu;
  std::thread::id cb_thread;
  bool one_thread = true;
  std::vector<shmkit::async_result<int>> results(n, shmkit::async_result<int>(nullptr));
  // Two submitting threads at once.
  auto submit = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      results[i] = pool().apply_async(add, i, 0);
      results[i].then(
          [&, i](int v) {
            {
              std::lock_guard lk(mu);
              if (cb_thread == std::thread::id()) cb_thread = std::this_thread::get_id();
              if (cb_thread != std::this_thread::get_id()) one_thread = false;
            }
            if (v == i) calls[i].fetch_add(1);
          },
          [&](const std::exception&) { errors.fetch_add(1); });
    }
  };
  std::thread a(submit, 0, n / 2);
  submit(n / 2, n);
  a.join();
  for (auto& r : results) r.wait();
  auto total = [&] {
    int t = 0;
    for (auto& c : calls) t += c.load();
    return t;
  };
  // Callbacks of results complete when attached are posted to the result thread: give the
  // last of them a moment.
  BOOST_CHECK(eventually([&] { return total() >= n; }));
  for (int i = 0; i < n; ++i) BOOST_REQUIRE_EQUAL(calls[i].load(), 1);
  BOOST_CHECK_EQUAL(errors.load(), 0);
  std::lock_guard lk(mu);
  BOOST_CHECK(one_thread);
  BOOST_CHECK(cb_thread != std::this_thread::get_id());
}

BOOST_AUTO_TEST_CASE(async_result_queries, *utf::timeout(120)) {
  auto slow = pool().apply_async(slow_identity, 300);
  BOOST_CHECK(!slow.get_for(1ms).has_value());
  BOOST_CHECK_EQUAL(slow.get(), 300);
  BOOST_CHECK(slow.ready());
  BOOST_CHECK(slow.successful());
  auto bad = pool().apply_async(fail_on_13, 13);
  bad.wait();
  BOOST_CHECK(!bad.successful());
  BOOST_CHECK_THROW(bad.get_for(1s), shmkit::remote_error);
}

BOOST_AUTO_TEST_CASE(a_throwing_task_reaches_the_caller_and_the_pool_stays_usable,
                     *utf::timeout(120)) {
  const auto workers = pool().worker_pids();
  std::vector<int> items(100);
  std::iota(items.begin(), items.end(), 0);
  try {
    pool().map(fail_on_13, items);
    BOOST_FAIL("map did not throw");
  } catch (const shmkit::remote_error& e) {
    BOOST_CHECK_EQUAL(e.type_name(), "std::invalid_argument");
    BOOST_CHECK_EQUAL(std::string(e.what()), "thirteen is unlucky");
    // The pid of the local worker that ran it, under one of the ranks.
    const pid_t rank = rank_of(e.pid());
    BOOST_CHECK(std::find(workers.begin(), workers.end(), rank) != workers.end());
  }
  try {
    pool().apply(throw_an_int, 0);
    BOOST_FAIL("apply did not throw");
  } catch (const shmkit::remote_error& e) {
    BOOST_CHECK_EQUAL(e.type_name(), "int");
  }
  std::atomic<int> err_called{0};
  std::string err_text;
  auto r = pool().apply_async(fail_on_13, 13);
  r.then([](int) {},
         [&](const std::exception& e) {
           err_text = e.what();
           err_called.fetch_add(1);
         });
  BOOST_CHECK_THROW(r.get(), shmkit::remote_error);
  BOOST_CHECK(eventually([&] { return err_called.load() > 0; }));
  BOOST_CHECK_EQUAL(err_called.load(), 1);
  BOOST_CHECK_EQUAL(err_text, "thirteen is unlucky");
  // Iteration throws where the failure stands.
  std::vector<int> seen;
  try {
    for (int x : pool().imap(fail_on_13, std::vector<int>{11, 12, 13, 14})) seen.push_back(x);
    BOOST_FAIL("imap did not throw");
  } catch (const shmkit::remote_error&) {
  }
  BOOST_CHECK((seen == std::vector<int>{11, 12}));
  // Still usable.
  BOOST_CHECK((pool().map(square, std::vector<long>{2, 3}) == std::vector<long>{4, 9}));
}

BOOST_AUTO_TEST_CASE(a_task_that_kills_its_process_fails_with_worker_lost_error,
                     *utf::timeout(300) * utf::precondition(with_local_pools())) {
  crashing_tasks_fail_and_the_ranks_live_on();
}

// Tasks submitted one at a time from two threads, of several functions (a function pointer,
// a callable with state, failures among them): they travel packed with whatever else is
// pending, and each gets its own outcome, once.
BOOST_AUTO_TEST_CASE(tasks_submitted_one_by_one_of_mixed_functions_each_get_their_own_outcome,
                     *utf::timeout(300)) {
  constexpr int n = 6000;
  std::vector<shmkit::async_result<int>> ints(n, shmkit::async_result<int>(nullptr));
  std::vector<shmkit::async_result<long>> longs(n, shmkit::async_result<long>(nullptr));
  std::vector<shmkit::async_result<std::string>> words(n,
                                                       shmkit::async_result<std::string>(nullptr));
  std::vector<std::atomic<int>> outcomes(n);
  auto submit = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      ints[i] = i % 7 == 0 ? pool().apply_async(fail_on_13, 13) : pool().apply_async(add, i, 1);
      ints[i].then([&, i](int) { outcomes[i].fetch_add(1); },
                   [&, i](const std::exception&) { outcomes[i].fetch_add(1); });
      longs[i] = pool().apply_async(scaler{3}, static_cast<long>(i));
      words[i] = pool().apply_async(shout, std::to_string(i));
    }
  };
  std::thread other(submit, 0, n / 2);
  submit(n / 2, n);
  other.join();
  for (int i = 0; i < n; ++i) {
    if (i % 7 == 0) {
      try {
        ints[i].get();
        BOOST_FAIL("task " << i << " did not fail");
      } catch (const shmkit::remote_error& e) {
        BOOST_REQUIRE_EQUAL(e.type_name(), "std::invalid_argument");
        BOOST_REQUIRE_EQUAL(std::string(e.what()), "thirteen is unlucky");
      }
    } else {
      BOOST_REQUIRE_EQUAL(ints[i].get(), i + 1);
    }
    BOOST_REQUIRE_EQUAL(longs[i].get(), 3L * i);
    BOOST_REQUIRE_EQUAL(words[i].get(), std::to_string(i) + "!");
  }
  auto total = [&] {
    int t = 0;
    for (auto& c : outcomes) t += c.load();
    return t;
  };
  BOOST_CHECK(eventually([&] { return total() >= n; }));
  for (int i = 0; i < n; ++i) BOOST_REQUIRE_EQUAL(outcomes[i].load(), 1);
}

// Last: it shuts the pool down.
BOOST_AUTO_TEST_CASE(close_and_join_finish_the_work_and_release_the_worker_ranks,
                     *utf::timeout(120)) {
  // The processes now running tasks and supervising them (checked gone after MPI_Finalize).
  if (!in_rank_mode) {
    for (const lineage& l : pool().map(where_am_i, std::vector<int>(50, 0), 1)) {
      pool_processes.push_back(l.self_id);
      pool_processes.push_back(l.parent_id);
    }
  }
  auto r = pool().map_async(slow_identity, std::vector<int>{50, 50, 50, 50}, 1);
  BOOST_CHECK_THROW(pool().join(), std::logic_error);  // join before close
  pool().close();
  BOOST_CHECK_THROW(pool().apply(add, 1, 2), std::logic_error);
  pool().join();
  BOOST_CHECK((r.get() == std::vector<int>{50, 50, 50, 50}));
  pool().terminate();  // harmless after join
  // Callbacks attached now run at once, here.
  bool ran = false;
  r.then([&](const std::vector<int>&) { ran = true; });
  BOOST_CHECK(ran);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(terminate_mode, *utf::disabled())

BOOST_AUTO_TEST_CASE(local_pools_forked_after_mpi_init_run_tasks_and_survive_crashes,
                     *utf::timeout(300)) {
  const auto workers = pool().worker_pids();
  const std::set<pid_t> ranks(workers.begin(), workers.end());
  for (const lineage& l : pool().map(where_am_i, std::vector<int>(20, 0), 1)) {
    BOOST_REQUIRE(ranks.contains(l.rank));
    BOOST_REQUIRE(!ranks.contains(l.self));
  }
  crashing_tasks_fail_and_the_ranks_live_on();
}

BOOST_AUTO_TEST_CASE(terminate_fails_what_is_pending_and_releases_the_ranks, *utf::timeout(120)) {
  auto running = pool().map_async(slow_identity, std::vector<int>(40, 200), 1);
  // Tiny tasks, one per item: many in flight on each rank when terminate() comes, or done.
  std::vector<long> tiny(400'000);
  std::iota(tiny.begin(), tiny.end(), 0L);
  auto tiny_map = pool().map_async(square, tiny, 1);
  auto single = pool().apply_async(slow_identity, 200);
  std::atomic<int> lost{0};
  single.then([](int) {},
              [&](const std::exception& e) {
                if (dynamic_cast<const shmkit::worker_lost_error*>(&e) != nullptr)
                  lost.fetch_add(1);
              });
  std::this_thread::sleep_for(100ms);
  pool().terminate();
  BOOST_CHECK_THROW(running.get(), shmkit::worker_lost_error);
  BOOST_CHECK_THROW(single.get(), shmkit::worker_lost_error);
  BOOST_CHECK(eventually([&] { return lost.load() == 1; }));
  try {
    const auto squares = tiny_map.get();
    BOOST_REQUIRE_EQUAL(squares.size(), tiny.size());
    for (std::size_t i = 0; i < tiny.size(); ++i) BOOST_REQUIRE_EQUAL(squares[i], square(tiny[i]));
  } catch (const shmkit::worker_lost_error&) {
  }
  BOOST_CHECK_THROW(pool().apply(add, 1, 2), std::logic_error);
  pool().terminate();  // twice is harmless
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

// After MPI_Finalize: every worker rank's process ends, and every process of their local
// pools (a zombie counts as ended).
int check_no_process_left(const std::vector<std::uint64_t>& identities, const char* what) {
  for (auto id : identities) {
    if (!eventually([&] { return !shmkit::detail::identity_alive(id); })) {
      std::fprintf(stderr, "test_mpi_pool: %s process %d still runs 60 s after shutdown\n", what,
                   static_cast<int>(shmkit::detail::identity_pid(id)));
      return 1;
    }
  }
  std::printf("test_mpi_pool: all %zu %s processes have exited\n", identities.size(), what);
  return 0;
}

int run_tests(const char* argv0, const char* filter) {
  std::vector<char*> args{const_cast<char*>(argv0)};
  std::string run_test = filter != nullptr ? std::string("--run_test=") + filter : "";
  if (filter != nullptr) args.push_back(run_test.data());
  return utf::unit_test_main(&init_unit_test, static_cast<int>(args.size()), args.data());
}

// A worker rank: the constructor served until rank 0's pool shut down. Submitting here is a
// mistake the pool names.
int worker_rank_after_serving(shmkit::mpi_pool& p) {
  try {
    (void)p.apply(add, 1, 2);
    std::fprintf(stderr, "rank %d: apply() on a worker rank did not throw\n", p.rank());
    return 3;
  } catch (const std::logic_error&) {
    return 0;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view mode = argc > 1 ? argv[1] : "";
  if (mode == "--terminate") {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rc = 0;
    {
      shmkit::mpi_pool p(argc, argv);
      if (!p.is_root()) {
        rc = worker_rank_after_serving(p);
      } else {
        the_pool = &p;
        rc = run_tests(argv[0], "terminate_mode");
        the_pool = nullptr;
      }
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized != 0) {
      std::fprintf(stderr, "test_mpi_pool: the pool finalized MPI it did not initialize\n");
      return 1;
    }
    MPI_Finalize();
    return rc;
  }

  if (mode == "--rank-dies") {
    shmkit::mpi_pool p(argc, argv);
    if (!p.is_root()) return 0;
    // Rank 0's report goes to the file named after the mode when there is one: mpirun, busy
    // ending the job, may drop the last lines it forwards.
    if (argc > 2) {
      const int fd = ::open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd < 0 || ::dup2(fd, 2) < 0) return 1;
      ::close(fd);
    }
    auto more = p.map_async(slow_identity, std::vector<int>(10, 100), 1);
    p.apply(kill_my_rank, 0);  // mpirun ends the job: rank 0 never returns
    std::fprintf(stderr, "test_mpi_pool: rank 0 survived the death of a worker rank\n");
    return 1;
  }

  in_rank_mode = mode == "--in-rank";
  std::vector<std::uint64_t> workers;
  int rc = 0;
  {
    shmkit::mpi_pool p(argc, argv, shmkit::mpi_pool_options{.local_pool = !in_rank_mode});
    if (!p.is_root()) return worker_rank_after_serving(p);
    for (pid_t pid : p.worker_pids()) workers.push_back(shmkit::detail::identity_of(pid));
    the_pool = &p;
    rc = run_tests(argv[0], nullptr);
    the_pool = nullptr;
  }
  if (rc != 0) return rc;
  if (in_rank_mode) return check_no_process_left(workers, "worker rank");
  if (pool_processes.empty()) {
    std::fprintf(stderr, "test_mpi_pool: no local pool process was seen\n");
    return 1;
  }
  rc = check_no_process_left(workers, "worker rank");
  if (rc != 0) return rc;
  return check_no_process_left(pool_processes, "local pool");
}
