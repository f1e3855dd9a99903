// SPDX-License-Identifier: MIT
// shmkit::queue against processes that die: first each dangerous moment staged exactly (a
// claim, a heap block, the heap lock held by a process that then exits), then 200 rounds of
// kill -9 at random moments on random producers and consumers of one queue while the others
// run on. Survivors must finish; the received set must equal the sent set minus at most one
// message per killed process; every received message must be whole.
#define BOOST_TEST_MODULE queue_crash
#include <sys/mman.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "queue_messages.hpp"
#include "shmkit/queue.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
namespace sd = shmkit::detail;
using shmkit::test::spawn;
using shmkit::test::wait_exit;

namespace {

// The queue with its engine in reach, to stage a death at an exact point of the protocol.
template <class T>
struct exposed_queue : shmkit::queue<T> {
  using shmkit::queue<T>::queue;
  using shmkit::queue<T>::ring;
};
template <class T>
struct exposed_joinable : shmkit::joinable_queue<T> {
  using shmkit::joinable_queue<T>::joinable_queue;
  using shmkit::joinable_queue<T>::ring;
};

// Runs fn in a child that then exits without finishing anything it started (like a kill).
void die_after(const std::function<void()>& fn) {
  pid_t c = spawn([&] {
    fn();
    std::_Exit(0);
  });
  BOOST_REQUIRE(wait_exit(c) == 0);
}

template <class T>
T* shared_array(std::size_t n) {
  void* p =
      ::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(p != MAP_FAILED);
  return static_cast<T*>(p);
}

}  // namespace

BOOST_AUTO_TEST_CASE(producer_dies_holding_a_claim, *boost::unit_test::timeout(60)) {
  exposed_queue<int> q(4);
  q.put(1);
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(false, 1, run, ob));
  });
  BOOST_TEST(q.size() == 2u);  // the dead claim counts until passed
  q.put(2);
  BOOST_TEST(q.get() == 1);
  BOOST_TEST(q.get() == 2);  // the dead producer's slot is skipped
  BOOST_TEST(!q.try_get().has_value());
  // The ring keeps going round.
  for (int i = 0; i < 20; ++i) {
    q.put(i);
    BOOST_TEST(q.get() == i);
  }
}

BOOST_AUTO_TEST_CASE(producer_dies_holding_a_batch_of_claims, *boost::unit_test::timeout(60)) {
  exposed_queue<int> q(8);
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(false, 5, run, ob) && run.count == 5);
  });
  for (int i = 0; i < 3; ++i) q.put(i);
  for (int i = 0; i < 3; ++i) BOOST_TEST(q.get() == i);
  BOOST_TEST(!q.try_get().has_value());
  for (int i = 0; i < 30; ++i) {  // round and round over the dead laps
    q.put(i);
    BOOST_TEST(q.get_many(1).at(0) == i);
  }
}

BOOST_AUTO_TEST_CASE(consumer_dies_holding_a_run, *boost::unit_test::timeout(60)) {
  exposed_queue<int> q(8);  // compact slots: one claim word for the run
  for (int i = 0; i < 6; ++i) q.put(i);
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(true, 4, run, ob) && run.count == 4);
  });
  BOOST_TEST(q.get() == 4);  // past the dead run
  // Producers go round onto the dead run's slots: they recover it, all four.
  for (int i = 6; i < 13; ++i) q.put(i);
  std::vector<int> got = q.get_many(100);
  BOOST_TEST(got == (std::vector<int>{5, 6, 7, 8, 9, 10, 11, 12}));
}

BOOST_AUTO_TEST_CASE(consumer_dies_holding_a_claim_of_a_full_ring, *boost::unit_test::timeout(60)) {
  exposed_queue<int> q(2);
  q.put(1);
  q.put(2);
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(true, 1, run, ob));
  });
  q.put(3);  // waits for the dead consumer's slot, recovers it
  BOOST_TEST(q.get() == 2);
  BOOST_TEST(q.get() == 3);
}

BOOST_AUTO_TEST_CASE(try_calls_alone_recover_a_dead_claimant, *boost::unit_test::timeout(60)) {
  exposed_queue<int> q(1);
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(false, 1, run, ob));
  });
  // Nobody blocks: a consumer that only polls must still get past the dead claim.
  const auto end = std::chrono::steady_clock::now() + 20s;
  bool put = false;
  std::optional<int> got;
  while (!got && std::chrono::steady_clock::now() < end) {
    if (!put) put = q.try_put(5);
    got = q.try_get();
    std::this_thread::sleep_for(1ms);
  }
  BOOST_TEST(got.value_or(-1) == 5);
}

BOOST_AUTO_TEST_CASE(producer_dies_holding_heap_pages, *boost::unit_test::timeout(60)) {
  exposed_queue<std::string> q(4, shmkit::queue_options{.heap_bytes = 64 << 10});
  die_after([&] {
    CHILD_CHECK(
        q.ring().allocate(60 << 10, std::nullopt, sd::queue_ring::alloc_mode::wait).has_value());
  });
  const std::string big(60 << 10, 'b');
  q.put(big);  // needs the dead producer's pages back
  BOOST_TEST((q.get() == big));
}

BOOST_AUTO_TEST_CASE(producer_dies_after_handing_its_block_to_a_slot,
                     *boost::unit_test::timeout(60)) {
  exposed_queue<std::string> q(4, shmkit::queue_options{.heap_bytes = 64 << 10});
  die_after([&] {
    auto b = q.ring().allocate(60 << 10, std::nullopt, sd::queue_ring::alloc_mode::wait);
    CHILD_CHECK(b.has_value());
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(false, 1, run, ob));
    q.ring().hand_over(run.first, *b, 60 << 10);
  });
  const std::string big(60 << 10, 'c');
  q.put(big);
  BOOST_TEST((q.get() == big));
  BOOST_TEST(q.empty());
}

BOOST_AUTO_TEST_CASE(consumer_dies_reading_a_heap_message, *boost::unit_test::timeout(60)) {
  exposed_queue<std::string> q(4, shmkit::queue_options{.heap_bytes = 64 << 10});
  q.put(std::string(60 << 10, 'x'));
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(true, 1, run, ob));
  });
  const std::string big(60 << 10, 'y');
  q.put(big);  // the dead reader's pages come back
  BOOST_TEST((q.get() == big));
}

BOOST_AUTO_TEST_CASE(heap_lock_holder_dies, *boost::unit_test::timeout(60)) {
  exposed_queue<std::string> q(4, shmkit::queue_options{.heap_bytes = 64 << 10});
  die_after([&] {
    std::uint64_t zero = 0;
    CHILD_CHECK(q.ring().state()->heap_lock.compare_exchange_strong(zero, sd::self_identity()));
  });
  const std::string big(10 << 10, 'l');
  q.put(big);  // takes the lock over
  BOOST_TEST((q.get() == big));
  BOOST_TEST(q.ring().state()->heap_lock.load() == 0u);
}

BOOST_AUTO_TEST_CASE(joinable_queue_survives_dead_parties, *boost::unit_test::timeout(60)) {
  exposed_joinable<int> q(4);
  die_after([&] {  // a producer dies mid-put
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(false, 1, run, ob));
  });
  q.put(1);
  die_after([&] {  // a consumer passes the dead claim, then dies mid-get of that message
    sd::queue_run run;
    CHILD_CHECK(q.ring().claim(true, 1, run, std::nullopt));
  });
  BOOST_TEST(q.join_for(30s));
  q.put(2);
  BOOST_TEST(!q.join_for(10ms));
  while (true) {
    auto v = q.get_for(20s);
    BOOST_REQUIRE(v.has_value());
    q.task_done();
    if (*v == 2) break;
  }
  BOOST_TEST(q.join_for(30s));
}

BOOST_AUTO_TEST_CASE(join_passes_a_dead_consumers_run, *boost::unit_test::timeout(60)) {
  exposed_joinable<int> q(8);
  for (int i = 0; i < 6; ++i) q.put(i);  // the run below wraps past the end of the slots
  for (int i = 0; i < 6; ++i) {
    BOOST_TEST(q.get() == i);
    q.task_done();
  }
  for (int i = 0; i < 3; ++i) q.put(i);
  die_after([&] {
    sd::queue_run run;
    sd::queue_obstacle ob;
    CHILD_CHECK(q.ring().try_claim(true, 3, run, ob) && run.count == 3);
  });
  BOOST_TEST(q.join_for(30s));  // those messages died with their consumer
  q.put(7);
  BOOST_TEST(!q.join_for(10ms));
  BOOST_TEST(q.get() == 7);
  q.task_done();
  BOOST_TEST(q.join_for(30s));
}

BOOST_AUTO_TEST_CASE(a_swallowed_wake_up_does_not_strand_a_sleeper,
                     *boost::unit_test::timeout(60)) {
  // A process killed while asleep stays on the futex queue until it runs again, and can take
  // a wake-up meant for a live sleeper. Stage it: a fake sleeper queues first on the
  // consumers' waitpoint and exits as soon as it is woken, without taking anything.
  exposed_queue<int> q(4);
  sd::waitpoint& wp = q.ring().state()->not_empty;
  pid_t fake = spawn([&] {
    wp.waiters.fetch_add(1);
    const std::uint32_t key = wp.seq.load();
    while (wp.seq.load() == key) sd::futex_wait(&wp.seq, key, std::nullopt);
    std::_Exit(0);  // swallowed it; never decrements `waiters`, like a killed process
  });
  std::this_thread::sleep_for(100ms);
  pid_t consumer = spawn([&] { CHILD_CHECK(q.get() == 7); });
  std::this_thread::sleep_for(100ms);
  q.put(7);  // one wake-up, taken by the fake sleeper queued first
  BOOST_TEST(wait_exit(fake, 30s) == 0);
  BOOST_TEST(wait_exit(consumer, 30s) == 0);  // found the message anyway
}

BOOST_AUTO_TEST_CASE(killed_while_asleep_costs_nothing, *boost::unit_test::timeout(60)) {
  shmkit::queue<int> q(1);
  pid_t sleeper = spawn([&] { (void)q.get(); });
  std::this_thread::sleep_for(50ms);
  shmkit::test::kill_and_reap(sleeper);
  q.put(1);
  BOOST_TEST(q.get() == 1);
  q.put(2);
  pid_t blocked = spawn([&] { q.put(3); });
  std::this_thread::sleep_for(50ms);
  shmkit::test::kill_and_reap(blocked);
  BOOST_TEST(q.get() == 2);
  BOOST_TEST(!q.try_get().has_value());
}

// ---------------------------------------------------------------------------------------
// Random kill -9.

namespace {

constexpr int producers = 2, consumers = 2;
constexpr int consumer_logs = consumers + 2;  // room for replacements of killed consumers
constexpr std::uint64_t per_producer = 400;
constexpr std::uint64_t sentinel = ~std::uint64_t(0);

struct ledger {
  // Producer p: the message it is putting (tag), and how many puts returned.
  std::atomic<std::uint64_t> attempting[producers];
  std::atomic<std::uint64_t> confirmed[producers];
  // Consumer c: tags got, in order.
  std::atomic<std::uint64_t> got_count[consumer_logs];
  std::uint64_t got[consumer_logs][producers * per_producer + 8];
  std::atomic<int> bad[consumer_logs];  // messages that arrived damaged
};

// Waits until `mark` puts of the round are confirmed (at most 2 s).
void wait_until_moved(const ledger& l, std::uint64_t mark) {
  const auto give_up = std::chrono::steady_clock::now() + 2s;
  for (;;) {
    std::uint64_t moved = 0;
    for (int p = 0; p < producers; ++p) moved += l.confirmed[p].load();
    if (moved >= mark || std::chrono::steady_clock::now() > give_up) return;
    std::this_thread::sleep_for(20us);
  }
}

// Kills party `who` (the producers, then the consumers) and notes it.
void kill_party(int who, const std::vector<pid_t>& pp, const std::vector<pid_t>& cc,
                std::vector<bool>& p_killed, std::vector<bool>& c_killed) {
  if (who < producers) {
    ::kill(pp[who], SIGKILL);
    p_killed[who] = true;
  } else {
    ::kill(cc[who - producers], SIGKILL);
    c_killed[who - producers] = true;
  }
}

std::uint64_t tag_of(std::uint64_t round, int producer, std::uint64_t seq) {
  return (round << 32) | (std::uint64_t(producer) << 24) | seq;
}

void produce(exposed_queue<std::string>& q, ledger& l, std::uint64_t round, int p,
             std::uint64_t seed, bool batches) {
  std::mt19937_64 rng(seed);
  std::uint64_t seq = 0;
  while (seq < per_producer) {
    if (batches && rng() % 4 == 0) {
      // A batch: any of it may be lost if we are killed in it; the ledger says which.
      const std::uint64_t k = std::min<std::uint64_t>(1 + rng() % 6, per_producer - seq);
      std::vector<std::string> msgs;
      for (std::uint64_t j = 0; j < k; ++j)
        msgs.push_back(shmkit::test::make_message(tag_of(round, p, seq + j),
                                                  shmkit::test::mixed_size(rng, 200000)));
      l.attempting[p].store(seq + k);
      q.put_many(msgs);
      seq += k;
    } else {
      std::string m =
          shmkit::test::make_message(tag_of(round, p, seq), shmkit::test::mixed_size(rng, 200000));
      l.attempting[p].store(seq + 1);
      shmkit::test::put_some_way(q, m, rng());
      ++seq;
    }
    l.confirmed[p].store(seq);
  }
}

void consume(exposed_queue<std::string>& q, ledger& l, int c, std::uint64_t seed, bool batches) {
  std::mt19937_64 rng(seed);
  auto record = [&](const std::string& m) {
    std::uint64_t tag = 0;
    if (!shmkit::test::check_message(m, tag)) l.bad[c].fetch_add(1);
    if (tag == sentinel) return false;
    const std::uint64_t n = l.got_count[c].load(std::memory_order_relaxed);
    l.got[c][n] = tag;
    l.got_count[c].store(n + 1);
    return true;
  };
  for (;;) {
    if (batches && rng() % 3 == 0) {
      std::vector<std::string> ms = q.get_many(1 + rng() % 5);
      for (std::size_t i = 0; i < ms.size(); ++i) {
        if (record(ms[i])) continue;
        // Our sentinel; any after it in the batch belong to other consumers.
        for (std::size_t j = i + 1; j < ms.size(); ++j) q.put(ms[j]);
        return;
      }
    } else {
      if (!record(shmkit::test::get_some_way(q, rng()))) return;
    }
  }
}

// Waits for a child; if it hangs, prints where (gdb, when present) and the ring's state.
int finish(pid_t pid, exposed_queue<std::string>& q) {
  int status = 0;
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < end) {
    if (::waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    std::this_thread::sleep_for(2ms);
  }
  const auto* st = q.ring().state();
  std::fprintf(stderr, "child %d hangs; head %llu tail %llu closed %u heap_lock %llx\n", (int)pid,
               (unsigned long long)st->head.load(), (unsigned long long)st->tail.load(),
               st->closed.load(), (unsigned long long)st->heap_lock.load());
  std::fprintf(stderr, "  not_empty seq %u waiters %u; not_full seq %u waiters %u\n",
               st->not_empty.seq.load(), st->not_empty.waiters.load(), st->not_full.seq.load(),
               st->not_full.waiters.load());
  for (std::uint64_t i = 0; i < q.capacity(); ++i) {
    const std::uint64_t w = q.ring().slot(i).seq.load();
    std::fprintf(
        stderr, "  slot %llu: %016llx%s\n", (unsigned long long)i, (unsigned long long)w,
        sd::seqw::is_claim(w) && !sd::identity_alive(sd::seqw::claimant(w)) ? " (dead)" : "");
  }
  std::string cmd = "gdb -p " + std::to_string(pid) + " -batch -ex bt 2>/dev/null | grep '^#' 1>&2";
  (void)!std::system(cmd.c_str());
  shmkit::test::kill_and_reap(pid);
  return -1000;
}

}  // namespace

BOOST_AUTO_TEST_CASE(two_hundred_rounds_of_kill_9, *boost::unit_test::timeout(240)) {
  // Capacity and heap small enough that producers often wait and the collector runs often.
  exposed_queue<std::string> q(64, shmkit::queue_options{.heap_bytes = 1 << 20});
  ledger* l = shared_array<ledger>(1);
  // SHMKIT_TEST_SEED replays a run; the seed is printed either way.
  const char* seed_env = std::getenv("SHMKIT_TEST_SEED");
  const std::uint64_t seed0 = seed_env ? std::strtoull(seed_env, nullptr, 10) : 20240601;
  std::printf("kill -9 rounds: seed %llu\n", static_cast<unsigned long long>(seed0));
  std::mt19937_64 rng(seed0);
  const auto t0 = std::chrono::steady_clock::now();
  int killed_total = 0, lost_total = 0, maybe_total = 0, killed_running = 0;
  std::uint64_t received_total = 0;
  constexpr int rounds = 200;
  for (int round = 0; round < rounds; ++round) {
    new (l) ledger{};
    // Batches lose a whole run when their owner dies mid-run; they are tested in one round
    // out of four with that bound, single calls in the others with the bound of one.
    const bool batches = round % 4 == 3;
    std::vector<pid_t> pp, cc;
    shmkit::test::children guard;  // kills whatever a failed check leaves running
    for (int p = 0; p < producers; ++p) {
      const std::uint64_t seed = rng();
      pp.push_back(guard.add(spawn([&, p, seed] { produce(q, *l, round, p, seed, batches); })));
    }
    for (int c = 0; c < consumers; ++c) {
      const std::uint64_t seed = rng();
      cc.push_back(guard.add(spawn([&, c, seed] { consume(q, *l, c, seed, batches); })));
    }
    // Kill one or two random parties at a random moment: once a random share of the round's
    // messages has moved (so the victims are mid-stream), plus a random few microseconds.
    const std::uint64_t mark = rng() % (producers * per_producer);
    wait_until_moved(*l, mark);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
    std::vector<bool> p_killed(producers, false), c_killed(consumer_logs, false);
    const int victims = rng() % 5 == 0 ? 2 : 1;
    for (int v = 0; v < victims; ++v) {
      kill_party(rng() % (producers + consumers), pp, cc, p_killed, c_killed);
      if (v == 0 && victims == 2)
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    }
    // Each killed consumer is replaced by a fresh process, which meets whatever the dead left.
    for (int c = 0; c < consumers; ++c) {
      if (!c_killed[c]) continue;
      const int slot = static_cast<int>(cc.size());
      const std::uint64_t seed = rng();
      cc.push_back(guard.add(spawn([&, slot, seed] { consume(q, *l, slot, seed, batches); })));
    }
    // Survivors finish; then one sentinel per surviving consumer ends them.
    for (int p = 0; p < producers; ++p) {
      const int code = finish(pp[p], q);
      guard.reaped(pp[p]);
      BOOST_REQUIRE_MESSAGE(code == 0 || (p_killed[p] && code == -SIGKILL),
                            "round " << round << ": producer " << p << " ended with " << code);
      killed_running += code == -SIGKILL;
    }
    int live_consumers = 0;
    for (std::size_t c = 0; c < cc.size(); ++c) live_consumers += !c_killed[c];
    for (int s = 0; s < live_consumers; ++s) q.put(shmkit::test::make_message(sentinel, 0));
    for (std::size_t c = 0; c < cc.size(); ++c) {
      const int code = finish(cc[c], q);
      guard.reaped(cc[c]);
      BOOST_REQUIRE_MESSAGE(code == 0 || (c_killed[c] && code == -SIGKILL),
                            "round " << round << ": consumer " << c << " ended with " << code);
      killed_running += code == -SIGKILL;
    }
    // Nothing of this round may stay behind (skips of dead producers are passed silently).
    while (auto left = q.try_get()) {
      std::uint64_t tag = 0;
      BOOST_REQUIRE(shmkit::test::check_message(*left, tag));
      BOOST_REQUIRE_MESSAGE(false, "round " << round << ": message " << tag << " left over");
    }

    // Check: no damage, no duplicates, nothing unknown, losses within the bound.
    std::set<std::uint64_t> got;
    for (std::size_t c = 0; c < cc.size(); ++c) {
      BOOST_REQUIRE_MESSAGE(l->bad[c].load() == 0, "round " << round << ": damaged message");
      for (std::uint64_t i = 0; i < l->got_count[c].load(); ++i) {
        const bool fresh = got.insert(l->got[c][i]).second;
        BOOST_REQUIRE_MESSAGE(fresh, "round " << round << ": message received twice");
      }
    }
    std::uint64_t known = 0;
    int killed = 0;
    std::size_t allowed = 0;
    for (int p = 0; p < producers; ++p) {
      const std::uint64_t confirmed = l->confirmed[p].load();
      const std::uint64_t attempted = l->attempting[p].load();
      for (std::uint64_t s = 0; s < attempted; ++s) {
        const bool in = got.count(tag_of(round, p, s)) != 0;
        known += in;
        if (s < confirmed && !in) ++lost_total;
        if (s >= confirmed) ++maybe_total;
      }
      killed += p_killed[p];
    }
    for (int c = 0; c < consumers; ++c) killed += c_killed[c];
    BOOST_REQUIRE_MESSAGE(known == got.size(), "round " << round << ": unknown message");
    // Lost = confirmed puts not received. Only a consumer can lose a confirmed message: the
    // one it was getting (or the run, with batches), or one it got but had not recorded.
    for (int c = 0; c < consumers; ++c)
      if (c_killed[c]) allowed += batches ? 5 : 1;
    std::size_t lost = 0;
    for (int p = 0; p < producers; ++p)
      for (std::uint64_t s = 0; s < l->confirmed[p].load(); ++s)
        lost += got.count(tag_of(round, p, s)) == 0;
    BOOST_REQUIRE_MESSAGE(lost <= allowed, "round " << round << ": lost " << lost
                                                    << " confirmed messages, allowed " << allowed);
    killed_total += killed;
    received_total += got.size();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  BOOST_TEST_MESSAGE("kill -9 rounds: " << rounds << ", killed " << killed_total << ", received "
                                        << received_total << ", lost " << lost_total
                                        << ", in flight at death " << maybe_total << ", " << secs
                                        << " s");
  std::printf(
      "kill -9: %d rounds, %d kills (%d while running), %llu messages received, %d "
      "confirmed lost to killed consumers, %d puts cut short, %.1f s\n",
      rounds, killed_total, killed_running, static_cast<unsigned long long>(received_total),
      lost_total, maybe_total, secs);
  // After all of it the queue is whole: empty, and its heap can give one message the size
  // of all of it (every page a dead process held came back).
  BOOST_TEST(q.empty());
  const std::string whole((1 << 20) - 64, 'w');
  q.put(whole);
  BOOST_TEST((q.get() == whole));
  for (int i = 0; i < 64; ++i) BOOST_TEST(q.try_put(std::string(8, 'f')));
  BOOST_TEST(!q.try_put(std::string(8, 'f')));
  ::munmap(l, sizeof(ledger));
}

// ---------------------------------------------------------------------------------------
// Random kill -9 on a queue of compact slots, whose batches claim a run of up to
// seqw::max_run slots with one word: a killed producer may cost its unconfirmed batch, a
// killed consumer at most the messages of the call it was in (or had not recorded yet);
// nothing is received twice or unknown.

namespace {

constexpr std::uint64_t max_get = 70;  // the most one consumer's call asks for

void produce_raw(shmkit::queue<std::uint64_t>& q, ledger& l, std::uint64_t round, int p,
                 std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uint64_t seq = 0;
  std::vector<std::uint64_t> batch;
  while (seq < per_producer) {
    const std::uint64_t k = std::min<std::uint64_t>(1 + rng() % max_get, per_producer - seq);
    batch.clear();
    for (std::uint64_t j = 0; j < k; ++j) batch.push_back(tag_of(round, p, seq + j));
    l.attempting[p].store(seq + k);
    if (k == 1 && rng() % 2 == 0)
      q.put(batch[0]);
    else
      q.put_many(batch);
    seq += k;
    l.confirmed[p].store(seq);
  }
}

void consume_raw(shmkit::queue<std::uint64_t>& q, ledger& l, int c, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> got;
  for (;;) {
    const unsigned how = rng() % 3;
    if (how == 0)
      got = {q.get()};
    else if (how == 1)
      got = q.get_many(1 + rng() % max_get);
    else
      q.get_many(got, 1 + rng() % max_get);
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (got[i] == sentinel) {
        // Ours; any after it in the batch belong to the others.
        for (std::size_t j = i + 1; j < got.size(); ++j) q.put(got[j]);
        return;
      }
      const std::uint64_t n = l.got_count[c].load(std::memory_order_relaxed);
      l.got[c][n] = got[i];
      l.got_count[c].store(n + 1);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(runs_of_compact_slots_under_kill_9, *boost::unit_test::timeout(240)) {
  shmkit::queue<std::uint64_t> q(64);
  ledger* l = shared_array<ledger>(1);
  const char* seed_env = std::getenv("SHMKIT_TEST_SEED");
  const std::uint64_t seed0 = seed_env ? std::strtoull(seed_env, nullptr, 10) : 20261122;
  std::printf("kill -9 rounds on compact runs: seed %llu\n",
              static_cast<unsigned long long>(seed0));
  std::mt19937_64 rng(seed0);
  int killed_total = 0, lost_total = 0;
  constexpr int rounds = 100;
  for (int round = 0; round < rounds; ++round) {
    new (l) ledger{};
    std::vector<pid_t> pp, cc;
    shmkit::test::children guard;
    for (int p = 0; p < producers; ++p) {
      const std::uint64_t seed = rng();
      pp.push_back(guard.add(spawn([&, p, seed] { produce_raw(q, *l, round, p, seed); })));
    }
    for (int c = 0; c < consumers; ++c) {
      const std::uint64_t seed = rng();
      cc.push_back(guard.add(spawn([&, c, seed] { consume_raw(q, *l, c, seed); })));
    }
    const std::uint64_t mark = rng() % (producers * per_producer);
    wait_until_moved(*l, mark);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 100));
    std::vector<bool> p_killed(producers, false), c_killed(consumer_logs, false);
    const int who = rng() % (producers + consumers);
    kill_party(who, pp, cc, p_killed, c_killed);
    if (who >= producers) {
      const int slot = static_cast<int>(cc.size());
      const std::uint64_t seed = rng();
      cc.push_back(guard.add(spawn([&, slot, seed] { consume_raw(q, *l, slot, seed); })));
    }
    for (int p = 0; p < producers; ++p) {
      const int code = shmkit::test::wait_exit(pp[p], 20s);
      guard.reaped(pp[p]);
      BOOST_REQUIRE_MESSAGE(code == 0 || (p_killed[p] && code == -SIGKILL),
                            "round " << round << ": producer " << p << " ended with " << code);
    }
    int live_consumers = 0;
    for (std::size_t c = 0; c < cc.size(); ++c) live_consumers += !c_killed[c];
    for (int s = 0; s < live_consumers; ++s) q.put(sentinel);
    for (std::size_t c = 0; c < cc.size(); ++c) {
      const int code = shmkit::test::wait_exit(cc[c], 20s);
      guard.reaped(cc[c]);
      BOOST_REQUIRE_MESSAGE(code == 0 || (c_killed[c] && code == -SIGKILL),
                            "round " << round << ": consumer " << c << " ended with " << code);
    }
    while (auto left = q.try_get())
      BOOST_REQUIRE_MESSAGE(false, "round " << round << ": message " << *left << " left over");

    std::set<std::uint64_t> got;
    for (std::size_t c = 0; c < cc.size(); ++c)
      for (std::uint64_t i = 0; i < l->got_count[c].load(); ++i)
        BOOST_REQUIRE_MESSAGE(got.insert(l->got[c][i]).second,
                              "round " << round << ": message received twice");
    std::uint64_t known = 0;
    std::size_t lost = 0, allowed = 0;
    for (int p = 0; p < producers; ++p) {
      for (std::uint64_t s = 0; s < l->attempting[p].load(); ++s) {
        const bool in = got.count(tag_of(round, p, s)) != 0;
        known += in;
        lost += s < l->confirmed[p].load() && !in;
      }
      killed_total += p_killed[p];
    }
    for (int c = 0; c < consumers; ++c) {
      killed_total += c_killed[c];
      if (c_killed[c]) allowed += max_get;
    }
    BOOST_REQUIRE_MESSAGE(known == got.size(), "round " << round << ": unknown message");
    BOOST_REQUIRE_MESSAGE(lost <= allowed, "round " << round << ": lost " << lost
                                                    << " confirmed messages, allowed " << allowed);
    lost_total += static_cast<int>(lost);
  }
  std::printf(
      "kill -9 on compact runs: %d rounds, %d kills, %d confirmed lost to killed consumers\n",
      rounds, killed_total, lost_total);
  // The ring is whole after it: empty, then exactly its capacity.
  BOOST_TEST(q.empty());
  for (std::uint64_t i = 0; i < 64; ++i) BOOST_TEST(q.try_put(i));
  BOOST_TEST(!q.try_put(64));
  BOOST_TEST(q.get_many(100).size() == 64u);  // runs of up to seqw::max_run, one after the other
  ::munmap(l, sizeof(ledger));
}
