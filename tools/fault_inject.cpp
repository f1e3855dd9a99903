// SPDX-License-Identifier: MIT
// Fault injection across the library: for each primitive, several real processes work on it in
// a tight loop while the harness kill -9s one of them after a random delay in microseconds,
// round after round; then it checks what docs/GUARANTEES.md promises for that primitive: no
// survivor hangs (watchdog), no message is delivered twice or torn (checksummed payloads with
// sequence numbers), containers hold exactly the states the ledgers allow, and the loss is at
// most what the dead process was carrying.
//
//   fault_inject [--rounds N] [--seed S] [--only <primitive>] [--max-delay-us U]
//
// Prints per primitive: rounds, faults injected (processes that died of the kill), invariants
// checked (round-level checks made by the harness, and per-operation checks made by the
// workers), failures. Exit status 1 on any failure. Built from the test suite's blocks
// (tests/support.hpp, tests/queue_messages.hpp).
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
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
using shmkit::test::spawn;
using shmkit::test::wait_exit;

namespace {

constexpr int max_parties = 6;
constexpr std::size_t max_log = std::size_t(1) << 16;  // records per party per round
constexpr auto watchdog = 60s;                         // a survivor that takes longer hangs
using u64 = std::uint64_t;
using counter = std::atomic<u64>;
static_assert(counter::is_always_lock_free);

// A T in anonymous shared memory (children forked later see it), value-initialised.
template <class T>
class shared {
 public:
  shared() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("fault_inject: mmap failed");
    p_ = new (p) T{};
  }
  ~shared() { ::munmap(p_, sizeof(T)); }
  shared(const shared&) = delete;
  shared& operator=(const shared&) = delete;
  // Back to the value-initialised state for a new round.
  void reset() { p_ = new (p_) T{}; }
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }

 private:
  T* p_;
};

// What every party of a round reports: calls finished (so the harness kills only parties that
// are running), per-operation checks made, and those that failed. `stop` ends the loops.
struct board {
  counter ops[max_parties];
  counter op_checks[max_parties];
  counter bad[max_parties];
  std::atomic<int> stop;
  std::atomic<int> stop_consumers;
  void checked(int who, bool ok) {
    op_checks[who].fetch_add(1, std::memory_order_relaxed);
    if (!ok) bad[who].fetch_add(1);
  }
  bool stopping() const { return stop.load() != 0; }
};

struct tally {
  // mid_op: kills shown to have landed inside an operation (a put, a lock held, a write or a
  // task in flight, as the ledgers tell).
  u64 rounds = 0, faults = 0, mid_op = 0, checks = 0, op_checks = 0, failures = 0;
};

// The state of one primitive's run: its random source, its counts, and the checks.
struct ctx {
  std::string name;
  std::mt19937_64 rng;
  unsigned max_delay_us;
  tally t;
  int round = 0;
  bool hung = false;  // a hang wedges the primitive: its remaining rounds are skipped

  bool check(bool ok, const std::string& what) {
    ++t.checks;
    if (!ok) {
      ++t.failures;
      fmt::print(stderr, "FAIL {} round {}: {}\n", name, round, what);
    }
    return ok;
  }
  // Adds the workers' per-operation checks of a round.
  void collect(const board& b, int parties) {
    for (int i = 0; i < parties; ++i) {
      t.op_checks += b.op_checks[i].load();
      check(b.bad[i].load() == 0,
            fmt::format("party {}: {} operations saw damaged or impossible data", i,
                        b.bad[i].load()));
    }
  }
  u64 tag(int party, u64 seq) const {
    return (u64(round & 0xffffff) << 40) | (u64(party) << 32) | seq;
  }
};

// The children of one round; whatever is still running when the round ends is killed.
using children = shmkit::test::children;

// Waits for a survivor with the watchdog; records a hang. Returns its outcome (wait_exit's).
int finish(ctx& c, children& kids, pid_t pid, const char* role) {
  const int code = wait_exit(pid, watchdog);
  kids.reaped(pid);
  if (code == -1000) c.hung = true;
  c.check(code == 0, fmt::format("surviving {} (pid {}) ended with {}{}", role, pid, code,
                                 code == -1000 ? " (hung: killed by the watchdog)" : ""));
  return code;
}

// The fault: once every party has finished at least one call (so all are inside their loop),
// waits a random number of microseconds and kills one of `pids` at random with SIGKILL, then
// reaps it. Returns the victim's index, or -1 when the parties never started.
// A party that has not finished a call after a couple of seconds while others work is blocked
// in its first one (an unfair lock or condition can starve it that long): that counts as
// inside its loop too.
int kill_one(ctx& c, children& kids, const std::vector<pid_t>& pids, const board& b) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    std::size_t running = 0;
    u64 total = 0;
    for (std::size_t i = 0; i < pids.size(); ++i) {
      running += b.ops[i].load() != 0;
      total += b.ops[i].load();
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    if (running == pids.size() || (waited > 2s && total > 0)) break;
    if (waited > watchdog) {
      c.check(false, "no party finished a call");
      return -1;
    }
    std::this_thread::sleep_for(50us);
  }
  std::this_thread::sleep_for(std::chrono::microseconds(c.rng() % (c.max_delay_us + 1)));
  const int victim = static_cast<int>(c.rng() % pids.size());
  ::kill(pids[victim], SIGKILL);
  int status = 0;
  ::waitpid(pids[victim], &status, 0);
  kids.reaped(pids[victim]);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ++c.t.faults;
  return victim;
}

// Lets the survivors run on past the dead process for a moment, then stops them.
void run_on_then_stop(ctx& c, board& b) {
  std::this_thread::sleep_for(std::chrono::microseconds(500 + c.rng() % 3000));
  b.stop.store(1);
}

// The common round of peers: `parties` processes run body(i, seed) until stopped; one is
// killed at a random moment, the others run on, are stopped and must end. Returns the victim,
// or -1 when the round could not be judged (parties never started, or a survivor hung).
template <class Body>
int kill_among_peers(ctx& c, board& b, int parties, const char* role, Body body) {
  children kids;
  std::vector<pid_t> pids;
  for (int i = 0; i < parties; ++i)
    pids.push_back(kids.add(spawn([&, i, s = c.rng()] { body(i, s); })));
  const int victim = kill_one(c, kids, pids, b);
  if (victim < 0) return -1;
  run_on_then_stop(c, b);
  for (int i = 0; i < parties; ++i)
    if (i != victim) finish(c, kids, pids[i], role);
  return c.hung ? -1 : victim;
}

// ---------------------------------------------------------------------------------------------
// Messages (queue, pipe, condition_variable mailbox): producers record the sequence number they
// are putting (attempting) and those whose put returned (confirmed); consumers log what they
// got. The check: nothing damaged, nothing twice, nothing unknown, confirmed messages lost only
// to a killed consumer (at most the one it was carrying).

struct message_log {
  counter count;
  u64 tags[max_log];
};

struct message_ledger {
  board b;
  counter attempting[max_parties];
  counter confirmed[max_parties];
  message_log got[max_parties];

  void record(int consumer, u64 tag) {
    message_log& l = got[consumer];
    const u64 n = l.count.load(std::memory_order_relaxed);
    if (n < max_log) l.tags[n] = tag;
    l.count.store(n + 1);  // seq_cst: the harness reads it after the process ended
  }
};

void check_delivery(ctx& c, const message_ledger& l, int producers, int consumers, int victim,
                    u64 carried = 1) {
  std::set<u64> got;
  bool twice = false, overflow = false;
  for (int k = producers; k < producers + consumers; ++k) {
    const u64 n = l.got[k].count.load();
    overflow |= n > max_log;
    for (u64 i = 0; i < std::min<u64>(n, max_log); ++i)
      twice |= !got.insert(l.got[k].tags[i]).second;
  }
  c.check(!overflow, "a consumer's log overflowed");
  c.check(!twice, "a message was delivered twice");
  u64 known = 0, lost = 0;
  for (int p = 0; p < producers; ++p) {
    for (u64 s = 0; s < l.attempting[p].load(); ++s) {
      const bool in = got.count(c.tag(p, s)) != 0;
      known += in;
      if (s < l.confirmed[p].load() && !in) ++lost;
    }
  }
  c.check(known == got.size(),
          fmt::format("{} messages received that no producer attempted", got.size() - known));
  const bool consumer_died = victim >= producers;
  c.t.mid_op += consumer_died ? lost : l.attempting[victim].load() != l.confirmed[victim].load();
  c.check(lost <= (consumer_died ? carried : 0u),
          fmt::format("{} confirmed messages lost (a consumer was {}killed)", lost,
                      consumer_died ? "" : "not "));
}

// --- queue ----------------------------------------------------------------------------------

// In batch rounds a third of the calls are put_many / get_many of up to this many messages; a
// process killed in one may take the whole batch it claimed (docs/GUARANTEES.md).
constexpr u64 max_batch = 5;

void queue_producer(shmkit::queue<std::string>& q, message_ledger& l, ctx& c, int p, u64 seed,
                    bool batches) {
  std::mt19937_64 rng(seed);
  for (u64 seq = 0; !l.b.stopping();) {
    if (seq + max_batch >= max_log / 2) {  // enough for one round; idle until stopped
      std::this_thread::sleep_for(100us);
      continue;
    }
    const u64 k = batches && rng() % 3 == 0 ? 1 + rng() % max_batch : 1;
    std::vector<std::string> ms;
    for (u64 j = 0; j < k; ++j)
      ms.push_back(make_message(c.tag(p, seq + j), mixed_size(rng, 100000)));
    l.attempting[p].store(seq + k);
    if (k > 1)
      q.put_many(ms);
    else
      shmkit::test::put_some_way(q, ms[0], rng());
    seq += k;
    l.confirmed[p].store(seq);
    l.b.ops[p].fetch_add(1);
  }
}

constexpr u64 sentinel = ~u64(0);

void queue_consumer(shmkit::queue<std::string>& q, message_ledger& l, int k, u64 seed,
                    bool batches) {
  std::mt19937_64 rng(seed);
  for (bool done = false; !done;) {
    std::vector<std::string> ms;
    if (batches && rng() % 3 == 0)
      ms = q.get_many(1 + rng() % max_batch);
    else
      ms.push_back(shmkit::test::get_some_way(q, rng()));
    for (const auto& m : ms) {
      u64 tag = 0;
      l.b.checked(k, check_message(m, tag));
      if (tag != sentinel)
        l.record(k, tag);
      else if (!done)
        done = true;  // ours; another one in the same batch is another consumer's
      else
        q.put(m);
    }
    l.b.ops[k].fetch_add(1);
  }
}

void run_queue(ctx& c, int rounds) {
  // Small enough that producers often wait for room and large messages wait for heap.
  shmkit::queue<std::string> q(64, shmkit::queue_options{.heap_bytes = 1 << 20});
  shared<message_ledger> l;
  constexpr int producers = 2, consumers = 2;
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    const bool batches = c.round % 4 == 3;
    children kids;
    std::vector<pid_t> pids;
    for (int p = 0; p < producers; ++p)
      pids.push_back(
          kids.add(spawn([&, p, s = c.rng()] { queue_producer(q, *l, c, p, s, batches); })));
    for (int k = producers; k < producers + consumers; ++k)
      pids.push_back(
          kids.add(spawn([&, k, s = c.rng()] { queue_consumer(q, *l, k, s, batches); })));
    const int victim = kill_one(c, kids, pids, l->b);
    if (victim < 0) break;
    run_on_then_stop(c, l->b);
    for (int p = 0; p < producers; ++p)
      if (p != victim) finish(c, kids, pids[p], "producer");
    if (c.hung) break;
    for (int k = producers; k < producers + consumers; ++k)
      if (k != victim) q.put(make_message(sentinel, 0));
    for (int k = producers; k < producers + consumers; ++k)
      if (k != victim) finish(c, kids, pids[k], "consumer");
    if (c.hung) break;
    // Whatever is left must be a whole message the producers attempted, never seen before.
    while (auto m = q.try_get()) {
      u64 tag = 0;
      c.check(check_message(*m, tag) && tag != sentinel,
              "a damaged message or a sentinel left over");
      l->record(producers + consumers, tag);  // a pseudo-consumer: the harness
    }
    c.check(q.empty(), "the queue is not empty after draining");
    c.collect(l->b, producers + consumers);
    check_delivery(c, *l, producers, consumers + 1, victim, batches ? max_batch : 1);
  }
  // After every kill the queue is whole: a message as large as its heap still goes through.
  if (!c.hung) {
    const std::string big((1 << 20) - 64, 'w');
    c.check(q.put_for(big, 30s), "a heap-sized message does not fit after the rounds");
    auto back = q.get_for(30s);
    c.check(back && *back == big, "the heap-sized message did not come back whole");
  }
}

// --- pipe -----------------------------------------------------------------------------------

struct pipe_ledger : message_ledger {
  std::atomic<int> eof[max_parties];
};

void run_pipe(ctx& c, int rounds) {
  shared<pipe_ledger> l;
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    // A small buffer, so large messages stream in pieces and the kill often lands in one.
    auto [rx, tx] = shmkit::pipe<std::string>(false, 16 * 1024);
    children kids;
    std::vector<pid_t> pids;
    pids.push_back(kids.add(spawn([&, s = c.rng()] {  // party 0: the sender
      std::mt19937_64 rng(s);
      try {
        for (u64 seq = 0; !l->b.stopping() && seq < max_log; ++seq) {
          const std::string m = make_message(c.tag(0, seq), mixed_size(rng, 100000));
          l->attempting[0].store(seq + 1);
          if (rng() % 4 == 0) {
            const std::vector<std::byte> bytes = shmkit::encode(m);
            tx.send_bytes(bytes);
          } else
            tx.send(m);
          l->confirmed[0].store(seq + 1);
          l->b.ops[0].fetch_add(1);
        }
      } catch (const shmkit::eof_error&) {
        l->eof[0].store(1);
      }
      tx.close();
    })));
    pids.push_back(kids.add(spawn([&] {  // party 1: the receiver
      try {
        for (u64 seq = 0;; ++seq) {
          const std::string m = rx.recv();
          u64 tag = 0;
          l->b.checked(1, check_message(m, tag) && tag == c.tag(0, seq));  // whole and in order
          l->record(1, tag);
          l->b.ops[1].fetch_add(1);
        }
      } catch (const shmkit::eof_error&) {
        l->eof[1].store(1);
      }
    })));
    rx.close();  // this process never used its copies
    tx.close();
    const int victim = kill_one(c, kids, pids, l->b);
    if (victim < 0) break;
    run_on_then_stop(c, l->b);
    const int survivor = 1 - victim;
    finish(c, kids, pids[survivor], survivor == 0 ? "sender" : "receiver");
    if (c.hung) break;
    c.collect(l->b, 2);
    const u64 got = l->got[1].count.load();
    if (victim == 0) {
      // The receiver got every complete message in order, then EOF; a half-sent one never.
      c.check(l->eof[1].load() == 1, "the receiver did not see EOF after the sender died");
      c.check(got >= l->confirmed[0].load() && got <= l->attempting[0].load(),
              fmt::format("received {}, but the sender had confirmed {} and attempted {}", got,
                          l->confirmed[0].load(), l->attempting[0].load()));
    } else {
      // The sender stopped or saw EOF; the receiver's log is a prefix of what was sent.
      c.check(got <= l->confirmed[0].load(), "the receiver logged messages never sent");
    }
    if (victim == 0) check_delivery(c, *l, 1, 1, victim);
  }
}

// --- mutex ----------------------------------------------------------------------------------

// Two counters that the critical section moves one after the other: a holder killed between
// them leaves a == b + 1, which the next owner (told by owner_died()) repairs.
struct mutex_ledger {
  board b;
  u64 a, b2;
  counter done[max_parties];
  counter repairs;
};

// Three ways to lock; a caller that only polls try_lock() takes the lock over from a dead
// holder too (it looks at the holder every try_lock_liveness).
void lock_somehow(shmkit::mutex& m, std::mt19937_64& rng) {
  switch (rng() % 3) {
    case 0:
      while (!m.try_lock()) std::this_thread::yield();
      return;
    case 1:
      while (!m.try_lock_for(5ms)) {
      }
      return;
    default:
      m.lock();
  }
}

// Takes over after a dead holder: the pair is consistent or one step short.
void repair_if_needed(shmkit::mutex& m, mutex_ledger& l, board& b, int who) {
  if (!m.owner_died()) return;
  b.checked(who, l.a == l.b2 || l.a == l.b2 + 1);
  l.b2 = l.a;
  l.repairs.fetch_add(1);
  m.mark_consistent();
}

void run_mutex(ctx& c, int rounds) {
  shmkit::mutex m;
  shared<mutex_ledger> l;
  constexpr int parties = 3;
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    const int victim = kill_among_peers(c, l->b, parties, "locker", [&](int i, u64 s) {
      std::mt19937_64 rng(s);
      while (!l->b.stopping()) {
        lock_somehow(m, rng);
        repair_if_needed(m, *l, l->b, i);
        l->b.checked(i, l->a == l->b2);
        ++l->a;
        for (unsigned spin = rng() % 64; spin > 0; --spin)
          std::atomic_signal_fence(std::memory_order_seq_cst);
        ++l->b2;
        l->done[i].fetch_add(1);
        m.unlock();
        l->b.ops[i].fetch_add(1);
      }
    });
    if (victim < 0) break;
    // The harness locks last: it must get the lock, and the count must add up.
    const bool got = m.try_lock_for(watchdog);
    if (!c.check(got, "the mutex cannot be locked after the round")) {
      c.hung = true;
      break;
    }
    repair_if_needed(m, *l, l->b, victim);
    c.t.mid_op += l->repairs.load();
    u64 done = 0;
    for (int i = 0; i < parties; ++i) done += l->done[i].load();
    c.check(l->a == l->b2, "the pair is inconsistent after repair");
    c.check(l->a >= done && l->a <= done + 1,
            fmt::format("{} critical sections done but the counter says {}", done, l->a));
    m.unlock();
    c.collect(l->b, parties);
  }
}

// --- condition_variable ---------------------------------------------------------------------

// A mailbox of fixed-size checksummed items under a mutex, with not_full / not_empty
// conditions. An item is published by one store of `tail`, taken by one store of `head`.
constexpr u64 mailbox_slots = 8;
struct item {
  u64 tag;
  u64 words[5];
  u64 sum;
};
item make_item(u64 tag) {
  item it{tag, {}, 0};
  u64 s = tag;
  for (u64& w : it.words) s = w = mix(s + 1);
  it.sum = mix(s ^ tag);
  return it;
}
bool item_ok(const item& it) {
  const item want = make_item(it.tag);
  return std::memcmp(&want, &it, sizeof it) == 0;
}
struct mailbox_ledger : message_ledger {
  u64 head, tail;
  item items[mailbox_slots];
};

void run_condition(ctx& c, int rounds) {
  shmkit::mutex m;
  shmkit::condition_variable not_full, not_empty;
  shared<mailbox_ledger> l;
  constexpr int producers = 2, consumers = 2;
  auto lock = [&](std::unique_lock<shmkit::mutex>& lk, int who) {
    lk.lock();
    if (m.owner_died()) {  // every change is one store: only check the bounds
      l->b.checked(who, l->tail - l->head <= mailbox_slots);
      m.mark_consistent();
    }
  };
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    children kids;
    std::vector<pid_t> pids;
    for (int p = 0; p < producers; ++p)
      pids.push_back(kids.add(spawn([&, p] {
        std::unique_lock<shmkit::mutex> lk(m, std::defer_lock);
        for (u64 seq = 0;; ++seq) {
          while (seq >= max_log / 2 && !l->b.stopping())  // enough for a round: idle till stopped
            std::this_thread::sleep_for(100us);
          lock(lk, p);
          not_full.wait(lk, [&] { return l->tail - l->head < mailbox_slots || l->b.stopping(); });
          if (l->b.stopping()) return;
          l->attempting[p].store(seq + 1);
          l->items[l->tail % mailbox_slots] = make_item(c.tag(p, seq));
          ++l->tail;
          l->confirmed[p].store(seq + 1);
          lk.unlock();
          not_empty.notify_one();
          l->b.ops[p].fetch_add(1);
        }
      })));
    for (int k = producers; k < producers + consumers; ++k)
      pids.push_back(kids.add(spawn([&, k] {
        std::unique_lock<shmkit::mutex> lk(m, std::defer_lock);
        for (;;) {
          lock(lk, k);
          not_empty.wait(lk, [&] { return l->tail != l->head || l->b.stop_consumers.load(); });
          if (l->tail == l->head) return;  // stopped and drained
          const item it = l->items[l->head % mailbox_slots];
          ++l->head;
          lk.unlock();
          not_full.notify_one();
          l->b.checked(k, item_ok(it));
          l->record(k, it.tag);
          l->b.ops[k].fetch_add(1);
        }
      })));
    const int victim = kill_one(c, kids, pids, l->b);
    if (victim < 0) break;
    std::this_thread::sleep_for(std::chrono::microseconds(500 + c.rng() % 3000));
    // Stop flags change under the mutex, so no waiter misses them.
    auto raise = [&](std::atomic<int>& flag) {
      std::unique_lock<shmkit::mutex> lk(m, std::defer_lock);
      if (!c.check(lk.try_lock_for(watchdog), "the harness cannot lock the mailbox")) {
        c.hung = true;
        return;
      }
      if (m.owner_died()) m.mark_consistent();
      flag.store(1);
      lk.unlock();
      not_full.notify_all();
      not_empty.notify_all();
    };
    raise(l->b.stop);
    if (c.hung) break;
    for (int p = 0; p < producers; ++p)
      if (p != victim) finish(c, kids, pids[p], "producer");
    raise(l->b.stop_consumers);
    for (int k = producers; k < producers + consumers; ++k)
      if (k != victim) finish(c, kids, pids[k], "consumer");
    if (c.hung) break;
    // A dead consumer may leave items behind; they count as received by the harness.
    bool whole = true;
    for (; l->head != l->tail; ++l->head) {
      whole &= item_ok(l->items[l->head % mailbox_slots]);
      l->record(producers + consumers, l->items[l->head % mailbox_slots].tag);
    }
    c.check(whole, "an item left in the mailbox is damaged");
    c.collect(l->b, producers + consumers);
    check_delivery(c, *l, producers, consumers + 1, victim);
  }
}

// --- barrier --------------------------------------------------------------------------------

// Before phase k a party counts itself into arrivals[k % 4]; after the phase it checks that
// exactly every party has (nobody can be 4 phases ahead). When a party dies the survivors must
// throw broken_barrier_error, not hang.
struct barrier_ledger {
  board b;
  counter arrivals[4];
  counter arrived[max_parties];  // phases each party entered (ops: phases it left)
  std::atomic<int> broke[max_parties];
};

void run_barrier(ctx& c, int rounds) {
  shared<barrier_ledger> l;
  constexpr int parties = 3;
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    shmkit::barrier bar(parties);
    children kids;
    std::vector<pid_t> pids;
    for (int i = 0; i < parties; ++i)
      pids.push_back(kids.add(spawn([&, i] {
        try {
          for (u64 phase = 0;; ++phase) {
            l->arrivals[phase % 4].fetch_add(1);
            l->arrived[i].fetch_add(1);
            bar.arrive_and_wait();
            l->b.checked(i, l->arrivals[phase % 4].load() == parties * (phase / 4 + 1));
            l->b.ops[i].fetch_add(1);
          }
        } catch (const shmkit::broken_barrier_error&) {
          l->broke[i].store(1);
        }
      })));
    const int victim = kill_one(c, kids, pids, l->b);
    if (victim < 0) break;
    c.t.mid_op += l->arrived[victim].load() > l->b.ops[victim].load();  // killed while waiting
    u64 lo = ~u64(0), hi = 0;
    for (int i = 0; i < parties; ++i) {
      if (i == victim) continue;
      finish(c, kids, pids[i], "party");
      c.check(l->broke[i].load() == 1, fmt::format("party {} did not see the barrier broken", i));
      lo = std::min(lo, l->b.ops[i].load());
      hi = std::max(hi, l->b.ops[i].load());
    }
    if (c.hung) break;
    c.check(bar.broken(), "the barrier is not broken after a party died");
    c.check(hi - lo <= 1, fmt::format("survivors passed {} and {} phases", lo, hi));
    c.collect(l->b, parties);
  }
}

// --- manager dict ---------------------------------------------------------------------------

// Writer w owns keys "w<w>.<j>"; before each write it records the version it writes (0:
// absent) as attempting, after it as confirmed. The dict must then hold the confirmed version
// of every key, or for the killed writer's one key in flight either version. A shared counter
// moved by update() by all must equal the confirmed increments, plus at most the one in flight.
constexpr int dict_keys = 16;
struct dict_ledger {
  board b;
  counter attempt[max_parties][dict_keys];
  counter confirmed[max_parties][dict_keys];
  counter inc_attempt[max_parties];
  counter inc_confirmed[max_parties];
};

// The manager repairs what a dead writer left, then checks every block against its containers.
void check_heap(ctx& c, const shmkit::manager& mgr) {
  try {
    mgr.verify();
    c.check(true, "");
  } catch (const std::exception& e) {
    c.check(false, fmt::format("the manager's heap: {}", e.what()));
  }
}

std::string dict_key(int w, int j) { return fmt::format("w{}.{}", w, j); }
u64 dict_tag(int w, int j, u64 version) { return (u64(w) << 48) | (u64(j) << 40) | version; }

std::size_t value_size(std::mt19937_64& rng) {
  return rng() % 500 == 0 ? 20000 + rng() % 40000 : rng() % 300;  // rarely large: the heap grows
}

void dict_writer(shmkit::manager& mgr, dict_ledger& l, int w, u64 seed) {
  std::mt19937_64 rng(seed);
  auto d = mgr.dict<std::string, std::string>("state");
  auto n = mgr.dict<std::string, long>("counters");
  u64 version = 0;
  while (!l.b.stopping()) {
    const int j = static_cast<int>(rng() % dict_keys);
    const auto op = rng() % 100;
    if (op < 50) {
      l.attempt[w][j].store(++version);
      d.set(dict_key(w, j), make_message(dict_tag(w, j, version), value_size(rng)));
      l.confirmed[w][j].store(version);
    } else if (op < 62) {
      l.attempt[w][j].store(0);
      d.erase(dict_key(w, j));
      l.confirmed[w][j].store(0);
    } else if (op < 77) {
      l.inc_attempt[w].fetch_add(1);
      n.update("total", [](long& v) { ++v; });
      l.inc_confirmed[w].fetch_add(1);
    } else if (op < 97) {
      // Anyone's key: whole, and holding a version of that very key.
      const int o = static_cast<int>(rng() % 3);
      if (auto v = d.try_get(dict_key(o, j))) {
        u64 tag = 0;
        l.b.checked(w, check_message(*v, tag) && (tag >> 40) == (dict_tag(o, j, 0) >> 40));
      }
    } else {
      for (const auto& [k, v] : d.items()) {
        u64 tag = 0;
        l.b.checked(
            w, check_message(v, tag) && dict_key(int(tag >> 48), int((tag >> 40) & 0xff)) == k);
      }
    }
    l.b.ops[w].fetch_add(1);
  }
}

void run_dict(ctx& c, int rounds) {
  shmkit::manager mgr(64 * 1024);  // small: it grows during the rounds
  auto d = mgr.dict<std::string, std::string>("state");
  auto n = mgr.dict<std::string, long>("counters");
  shared<dict_ledger> l;
  constexpr int writers = 3;
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    d.clear();
    n.clear();
    const int victim = kill_among_peers(c, l->b, writers, "writer",
                                        [&](int w, u64 s) { dict_writer(mgr, *l, w, s); });
    if (victim < 0) break;
    check_heap(c, mgr);
    for (int w = 0; w < writers; ++w)
      for (int j = 0; j < dict_keys; ++j) {
        u64 have = 0;
        if (auto v = d.try_get(dict_key(w, j))) {
          u64 tag = 0;
          c.check(check_message(*v, tag) && (tag >> 40) == (dict_tag(w, j, 0) >> 40),
                  fmt::format("key {} holds a damaged value", dict_key(w, j)));
          have = tag & 0xffffffffffull;
        }
        const u64 conf = l->confirmed[w][j].load(), att = l->attempt[w][j].load();
        c.check(have == conf || (w == victim && have == att),
                fmt::format("key {} holds version {}; confirmed {}, attempted {}", dict_key(w, j),
                            have, conf, att));
      }
    bool in_write = l->inc_attempt[victim].load() != l->inc_confirmed[victim].load();
    for (int j = 0; j < dict_keys; ++j)
      in_write |= l->attempt[victim][j].load() != l->confirmed[victim][j].load();
    c.t.mid_op += in_write;
    u64 conf = 0, att = 0;
    for (int w = 0; w < writers; ++w) {
      conf += l->inc_confirmed[w].load();
      att += l->inc_attempt[w].load();
    }
    const u64 total = static_cast<u64>(n.try_get("total").value_or(0));
    c.check(total >= conf && total <= att,
            fmt::format("counter {} outside [{}, {}]", total, conf, att));
    c.check(d.size() <= writers * dict_keys, "more keys than were ever written");
    c.collect(l->b, writers);
  }
}

// --- manager list ---------------------------------------------------------------------------

// Workers push their own tagged items and pop whatever is last, logging what they popped. The
// list must then hold exactly the confirmed pushes minus the logged pops, each party's items in
// push order, plus possibly the killed worker's push in flight, minus possibly its pop in flight.
struct list_ledger {
  board b;
  counter pushing[max_parties];  // pushes started
  counter pushed[max_parties];   // pushes returned
  counter popping[max_parties];  // 1 while a pop is in flight (until it is logged)
  message_log popped[max_parties];
};

void list_worker(shmkit::manager& mgr, list_ledger& l, int w, u64 seed) {
  std::mt19937_64 rng(seed);
  auto lst = mgr.list<std::string>("items");
  while (!l.b.stopping()) {
    const auto op = rng() % 100;
    if (op < 50 && l.pushing[w].load() < max_log) {
      const u64 seq = l.pushing[w].load();
      l.pushing[w].store(seq + 1);
      lst.push_back(make_message((u64(w) << 32) | seq, value_size(rng)));
      l.pushed[w].store(seq + 1);
    } else if (op < 85 && l.popped[w].count.load() < max_log) {
      l.popping[w].store(1);
      try {
        const std::string v = lst.pop_back();
        u64 tag = 0;
        l.b.checked(w, check_message(v, tag));
        const u64 n = l.popped[w].count.load();
        l.popped[w].tags[n] = tag;
        l.popped[w].count.store(n + 1);
      } catch (const std::out_of_range&) {  // empty at that moment
      }
      l.popping[w].store(0);
    } else if (op < 98) {
      const std::size_t size = lst.size();
      if (size > 0) try {
          u64 tag = 0;
          l.b.checked(w, check_message(lst.at(rng() % size), tag));
        } catch (const std::out_of_range&) {  // shrank meanwhile
        }
    } else {
      for (const auto& v : lst.to_vector()) {
        u64 tag = 0;
        l.b.checked(w, check_message(v, tag));
      }
    }
    l.b.ops[w].fetch_add(1);
  }
}

void run_list(ctx& c, int rounds) {
  shmkit::manager mgr(64 * 1024);
  auto lst = mgr.list<std::string>("items");
  shared<list_ledger> l;
  constexpr int workers = 3;
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    l.reset();
    lst.clear();
    const int victim = kill_among_peers(c, l->b, workers, "worker",
                                        [&](int w, u64 s) { list_worker(mgr, *l, w, s); });
    if (victim < 0) break;
    check_heap(c, mgr);
    // What the list holds: whole, each item once, each party's items in push order.
    std::set<u64> in_list;
    bool whole = true, once = true, ordered = true;
    std::map<int, u64> last_seq;
    for (const auto& v : lst.to_vector()) {
      u64 tag = 0;
      whole &= check_message(v, tag);
      once &= in_list.insert(tag).second;
      const int w = static_cast<int>(tag >> 32);
      const u64 seq = tag & 0xffffffffu;
      if (last_seq.count(w)) ordered &= seq > last_seq[w];
      last_seq[w] = seq;
    }
    c.check(whole, "the list holds a damaged item");
    c.check(once, "the list holds an item twice");
    c.check(ordered, "a party's items are out of push order");
    std::set<u64> popped;
    bool pop_once = true;
    for (int w = 0; w < workers; ++w)
      for (u64 i = 0; i < l->popped[w].count.load(); ++i)
        pop_once &=
            popped.insert(l->popped[w].tags[i]).second && !in_list.count(l->popped[w].tags[i]);
    c.check(pop_once, "an item was popped twice, or popped and still in the list");
    u64 missing = 0, unknown = in_list.size() + popped.size();
    for (int w = 0; w < workers; ++w)
      for (u64 s = 0; s < l->pushing[w].load(); ++s) {
        const u64 tag = (u64(w) << 32) | s;
        const bool seen = in_list.count(tag) || popped.count(tag);
        unknown -= seen;
        if (!seen && s < l->pushed[w].load()) ++missing;
      }
    c.check(unknown == 0, fmt::format("{} items nobody pushed", unknown));
    const u64 allowed = l->popping[victim].load();  // a pop the victim made but never logged
    c.t.mid_op += allowed || l->pushing[victim].load() != l->pushed[victim].load();
    c.check(missing <= allowed,
            fmt::format("{} pushed items missing, {} allowed", missing, allowed));
    c.collect(l->b, workers);
  }
}

// --- pool -----------------------------------------------------------------------------------

// How many times each task of a round ran, counted by the workers in shared memory made before
// the pool (so every worker, replacements included, has it). A task's input is
// (random << 10 | slot); each round uses its own 256 slots of 1024, since tasks of a map that
// threw worker_lost_error still run on after it. Every task must run at most once.
constexpr std::size_t pool_slots = 1024;
using run_counts = std::array<counter, pool_slots>;
counter* pool_runs = nullptr;

std::uint64_t pool_expected(std::uint64_t x) {
  std::uint64_t h = x;
  for (int i = 0; i < 100000; ++i) h = mix(h + i);  // a few hundred microseconds of work
  return h;
}
std::uint64_t pool_task(std::uint64_t x) {
  pool_runs[x % pool_slots].fetch_add(1);
  return pool_expected(x);
}
std::vector<std::uint64_t> pool_inputs(ctx& c, std::size_t first_slot, std::size_t n) {
  std::vector<std::uint64_t> in(n);
  const std::size_t base = (c.round % 4) * 256;
  for (std::size_t i = 0; i < n; ++i) in[i] = (c.rng() << 10) | (base + first_slot + i);
  for (std::size_t i = 0; i < n; ++i) pool_runs[base + first_slot + i].store(0);
  return in;
}
// The tasks of `in` ran at most once each; those in `returned` exactly once.
void check_runs(ctx& c, const std::vector<std::uint64_t>& in, const std::vector<bool>& returned) {
  int twice = 0, unrun = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const u64 runs = pool_runs[in[i] % pool_slots].load();
    twice += runs > 1;
    unrun += returned[i] && runs != 1;
  }
  c.check(twice == 0, fmt::format("{} tasks ran more than once", twice));
  c.check(unrun == 0, fmt::format("{} results came back from tasks that never ran", unrun));
}

// A worker killed under a map: the map returns every result right, or throws
// worker_lost_error; it never hangs (checked from this thread while another one maps).
void pool_map_round(ctx& c, shmkit::pool& pool, std::chrono::microseconds busy) {
  const std::vector<std::uint64_t> in = pool_inputs(c, 0, 120);
  std::vector<std::uint64_t> out;
  std::atomic<int> outcome{-1};  // 0 results, 1 worker_lost_error, 2 anything else
  std::string other;
  std::thread mapper([&] {
    try {
      out = pool.map(pool_task, in, 1);
      outcome.store(0);
    } catch (const shmkit::worker_lost_error&) {
      outcome.store(1);
    } catch (const std::exception& e) {
      other = e.what();
      outcome.store(2);
    }
  });
  const auto limit = std::min<u64>(c.max_delay_us, static_cast<u64>(busy.count()));
  std::this_thread::sleep_for(std::chrono::microseconds(c.rng() % (limit + 1)));
  const std::vector<pid_t> live = pool.worker_pids();
  if (!live.empty() && ::kill(live[c.rng() % live.size()], SIGKILL) == 0) ++c.t.faults;
  const auto end = std::chrono::steady_clock::now() + watchdog;
  while (outcome.load() < 0 && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(1ms);
  if (outcome.load() < 0) {  // the mapping thread cannot be taken back: report and leave
    c.check(false, "pool.map hangs after a worker was killed");
    fmt::print("pool: FAILED (hang), round {}\n", c.round);
    std::fflush(nullptr);
    std::_Exit(1);
  }
  mapper.join();
  c.t.mid_op += outcome.load() == 1;
  c.check(outcome.load() != 2, fmt::format("pool.map threw {}", other));
  if (outcome.load() == 0) {
    bool right = out.size() == in.size();
    for (std::size_t i = 0; right && i < in.size(); ++i) right = out[i] == pool_expected(in[i]);
    c.check(right, "a map under a kill returned wrong results");
    c.t.op_checks += in.size();
  }
  check_runs(c, in, std::vector<bool>(in.size(), outcome.load() == 0));
}

void run_pool(ctx& c, int rounds) {
  constexpr int workers = 3;
  shared<run_counts> runs;
  pool_runs = runs->data();
  shmkit::pool pool(workers);
  // How long a round's tasks run after they were submitted, measured on the round before, so
  // that the kill lands while they run.
  std::chrono::microseconds busy{10000};
  for (c.round = 0; c.round < rounds && !c.hung; ++c.round, ++c.t.rounds) {
    if (c.round % 2 == 1) {
      pool_map_round(c, pool, busy);
      continue;
    }
    // Tasks in flight, then a worker killed at a random moment among them.
    const std::vector<std::uint64_t> xs = pool_inputs(c, 0, 120);
    std::vector<shmkit::async_result<std::uint64_t>> rs;
    for (std::uint64_t x : xs) rs.push_back(pool.apply_async(pool_task, x));
    std::vector<bool> returned(xs.size(), false);
    const auto t0 = std::chrono::steady_clock::now();
    const auto limit = std::min<u64>(c.max_delay_us, static_cast<u64>(busy.count()));
    std::this_thread::sleep_for(std::chrono::microseconds(c.rng() % (limit + 1)));
    std::vector<pid_t> live;
    const auto end = std::chrono::steady_clock::now() + watchdog;
    while ((live = pool.worker_pids()).empty() && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(1ms);
    if (!c.check(!live.empty(), "the pool has no live worker")) break;
    if (::kill(live[c.rng() % live.size()], SIGKILL) == 0) ++c.t.faults;
    int lost = 0, wrong = 0, late = 0;
    for (std::size_t i = 0; i < rs.size(); ++i) {
      try {
        auto v = rs[i].get_for(watchdog);
        returned[i] = v.has_value();
        if (!v)
          ++late;
        else if (*v != pool_expected(xs[i]))
          ++wrong;
      } catch (const shmkit::worker_lost_error&) {
        ++lost;
      }
      ++c.t.op_checks;
    }
    busy = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                                 t0);
    if (!c.check(late == 0, fmt::format("{} tasks never finished", late))) c.hung = true;
    c.check(wrong == 0, fmt::format("{} tasks returned a wrong result", wrong));
    // Lost: the task the worker ran, and tiny tasks it had finished in the last 20 us without
    // sending their results (pool.hpp); these take hundreds of microseconds, so at most one.
    c.check(lost <= 1, fmt::format("{} tasks lost to one kill", lost));
    check_runs(c, xs, returned);
    c.t.mid_op += lost > 0;
    if (c.hung) break;
    // And the pool goes on: a map after the kill is whole and right.
    try {
      const std::vector<std::uint64_t> in = pool_inputs(c, 128, 40);
      const auto out = pool.map(pool_task, in);
      bool right = out.size() == in.size();
      for (std::size_t i = 0; right && i < in.size(); ++i) right = out[i] == pool_expected(in[i]);
      c.check(right, "a map after the kill returned wrong results");
      check_runs(c, in, std::vector<bool>(in.size(), true));
    } catch (const shmkit::worker_lost_error&) {
      // The replacement may be starting while the next worker dies: only with a kill in flight.
      c.check(false, "a map after the kill lost a task though nobody was killed");
    }
  }
}

// ---------------------------------------------------------------------------------------------

struct scenario {
  const char* name;
  void (*run)(ctx&, int);
};

constexpr scenario scenarios[] = {
    {"mutex", run_mutex},       {"condition_variable", run_condition},
    {"barrier", run_barrier},   {"queue", run_queue},
    {"pipe", run_pipe},         {"manager_dict", run_dict},
    {"manager_list", run_list}, {"pool", run_pool},
};

int usage(const char* argv0) {
  std::string names;
  for (const auto& s : scenarios) names += std::string(names.empty() ? "" : "|") + s.name;
  fmt::print(stderr,
             "usage: {} [--rounds N] [--seed S] [--only {}] [--max-delay-us U]\n"
             "  kill -9 one of several processes working on each primitive, N rounds each,\n"
             "  and check the primitive's guarantees after each kill.\n",
             argv0, names);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 20;
  u64 seed = 20261122;
  unsigned max_delay_us = 20000;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--rounds" && (v = next()))
      rounds = std::atoi(v);
    else if (a == "--seed" && (v = next()))
      seed = std::strtoull(v, nullptr, 10);
    else if (a == "--only" && (v = next()))
      only = v;
    else if (a == "--max-delay-us" && (v = next()))
      max_delay_us = static_cast<unsigned>(std::atoi(v));
    else
      return usage(argv[0]);
  }
  bool known = only.empty();
  for (const auto& s : scenarios) known |= only == s.name;
  if (!known || rounds <= 0) return usage(argv[0]);

  fmt::print("fault_inject: {} rounds per primitive, seed {}, kill delay 0..{} us\n", rounds, seed,
             max_delay_us);
  fmt::print("{:<20} {:>7} {:>7} {:>7} {:>9} {:>12} {:>9} {:>8}\n", "primitive", "rounds", "faults",
             "mid-op", "checks", "op checks", "failures", "seconds");
  std::fflush(stdout);
  u64 failures = 0;
  tally all;
  for (std::size_t k = 0; k < std::size(scenarios); ++k) {
    const scenario& s = scenarios[k];
    if (!only.empty() && only != s.name) continue;
    ctx c{s.name, std::mt19937_64(seed + k), max_delay_us, {}, 0, false};
    const auto t0 = std::chrono::steady_clock::now();
    try {
      s.run(c, rounds);
    } catch (const std::exception& e) {
      c.check(false, fmt::format("the harness caught: {}", e.what()));
    }
    if (c.hung) c.check(false, "stopped after a hang; remaining rounds skipped");
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("{:<20} {:>7} {:>7} {:>7} {:>9} {:>12} {:>9} {:>8.1f}\n", s.name, c.t.rounds,
               c.t.faults, c.t.mid_op, c.t.checks, c.t.op_checks, c.t.failures, secs);
    std::fflush(stdout);
    failures += c.t.failures;
    all.rounds += c.t.rounds;
    all.faults += c.t.faults;
    all.mid_op += c.t.mid_op;
    all.checks += c.t.checks;
    all.op_checks += c.t.op_checks;
  }
  fmt::print("{:<20} {:>7} {:>7} {:>7} {:>9} {:>12} {:>9}\n", "total", all.rounds, all.faults,
             all.mid_op, all.checks, all.op_checks, failures);
  return failures == 0 ? 0 : 1;
}
