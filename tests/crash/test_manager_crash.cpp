// SPDX-License-Identifier: MIT
// Writers killed in the middle of manager writes. Two parts:
// - at every step of the commit protocol, deterministically (a fault hook ends the writer
//   there, as kill -9 would): the container then holds the old value before the commit point
//   and the new one after it, the heap checks out exactly, nothing leaks;
// - kill -9 of a random writer at random moments, 100 rounds, while two readers read all the
//   time: every value the readers and the parent see passes a checksum that a torn write would
//   break, the heap checks out after every round, and nobody hangs.
#define BOOST_TEST_MODULE manager_crash
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <sys/wait.h>
#include <vector>

#include "shmkit/detail/wait.hpp"
#include "shmkit/manager.hpp"
#include "shmkit/shared.hpp"
#include "support.hpp"

using shmkit::detail::write_step;
using shmkit::test::kill_and_reap;
using shmkit::test::name_guard;
using shmkit::test::spawn;
using shmkit::test::unique_name;
using shmkit::test::wait_all_ok;
using shmkit::test::wait_exit;
using words = std::vector<std::uint64_t>;

namespace {

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 31;
  x *= 0x7fb5d329728ea185ull;
  x ^= x >> 27;
  return x;
}

std::uint64_t key_hash(const std::string& key) {
  return shmkit::detail::hash_bytes(std::as_bytes(std::span(key.data(), key.size())));
}

// A value that proves itself: {hash of its key, sequence, length, filler..., checksum}. A torn
// write (parts of two values, a half-copied value, a value under the wrong key) fails check().
words make_value(const std::string& key, std::uint64_t seq, std::size_t n) {
  n = std::max<std::size_t>(n, 4);
  words v(n);
  v[0] = key_hash(key);
  v[1] = seq;
  v[2] = n;
  std::uint64_t sum = v[0] + v[1] * 3 + v[2] * 5;
  for (std::size_t i = 3; i + 1 < n; ++i) {
    v[i] = mix(seq * 1000003 + i);
    sum += v[i] * (i | 1);
  }
  v[n - 1] = sum;
  return v;
}

bool check(const std::string& key, const words& v) {
  if (v.size() < 4 || v[2] != v.size() || v[0] != key_hash(key)) return false;
  return v == make_value(key, v[1], v.size());
}

// --- every step of the protocol ------------------------------------------------------------

write_step g_die_at{};
int g_skip = 0;  // steps of that kind to let pass before dying

void die_at_step(write_step s) noexcept {
  if (s == g_die_at && g_skip-- == 0) std::_Exit(77);
}

const write_step all_steps[] = {write_step::allocated,   write_step::version_odd,
                                write_step::committed,   write_step::applied,
                                write_step::before_free, write_step::freed,
                                write_step::version_even};

// Runs op in a child that dies at `step` (if op reaches it); returns whether it died there.
template <class Op>
bool run_and_die(write_step step, Op&& op) {
  const pid_t c = spawn([&] {
    g_die_at = step;
    g_skip = 0;
    shmkit::detail::manager_fault_hook = die_at_step;
    op();
    std::_Exit(0);
  });
  const int code = wait_exit(c);
  BOOST_REQUIRE(code == 77 || code == 0);
  return code == 77;
}

}  // namespace

// For each kind of write and each step: before the commit point the old state, after it the
// new one; the heap checks out and the free figure is exactly what it is with no crash.
BOOST_AUTO_TEST_CASE(death_at_every_step) {
  struct scenario {
    const char* what;
    std::function<void(shmkit::manager&)> prepare;  // the state before
    std::function<void(shmkit::manager&)> op;       // the write the child dies in
    std::function<bool(shmkit::manager&)> is_old;   // the state is exactly the old one
    std::function<bool(shmkit::manager&)> is_new;   // ... exactly the new one
  };
  auto dict = [](shmkit::manager& m) { return m.dict<std::string, words>("d"); };
  auto list = [](shmkit::manager& m) { return m.list<words>("l"); };
  auto small = [](shmkit::manager& m) { return m.dict<std::string, long>("s"); };
  // The dict holds n whole values, and k0 with sequence k0_seq (nullopt: no k0).
  auto holds = [&](shmkit::manager& m, std::size_t n, std::optional<std::uint64_t> k0_seq) {
    auto d = dict(m);
    const auto items = d.items();
    if (d.size() != n || items.size() != n) return false;
    for (auto& [k, v] : items)
      if (!check(k, v)) return false;
    auto v = d.try_get("k0");
    return k0_seq ? (v && (*v)[1] == *k0_seq) : !v;
  };
  const auto none = std::nullopt;
  auto fill = [&](shmkit::manager& m, int n) {
    for (int i = 0; i < n; ++i) {
      const std::string k = "k" + std::to_string(i);
      dict(m).set(k, make_value(k, 1, 50));
    }
  };
  const std::vector<scenario> scenarios = {
      {"insert a new key", [&](auto& m) { fill(m, 3); },
       [&](auto& m) { dict(m).set("new", make_value("new", 1, 60)); },
       [&](auto& m) { return holds(m, 3, 1) && !dict(m).contains("new"); },
       [&](auto& m) { return holds(m, 4, 1) && check("new", dict(m).get("new")); }},
      {"replace a value", [&](auto& m) { fill(m, 3); },
       [&](auto& m) { dict(m).set("k0", make_value("k0", 2, 500)); },
       [&](auto& m) { return holds(m, 3, 1); }, [&](auto& m) { return holds(m, 3, 2); }},
      {"update a value", [&](auto& m) { fill(m, 3); },
       [&](auto& m) { dict(m).update("k0", [](words& v) { v = make_value("k0", v[1] + 1, 9); }); },
       [&](auto& m) { return holds(m, 3, 1); }, [&](auto& m) { return holds(m, 3, 2); }},
      {"update in place", [&](auto& m) { small(m).set("c", 41); },
       [&](auto& m) { small(m).update("c", [](long& v) { ++v; }); },
       [&](auto& m) { return small(m).get("c") == 41; },
       [&](auto& m) { return small(m).get("c") == 42; }},
      {"erase", [&](auto& m) { fill(m, 3); }, [&](auto& m) { dict(m).erase("k0"); },
       [&](auto& m) { return holds(m, 3, 1); }, [&](auto& m) { return holds(m, 2, none); }},
      {"grow the table", [&](auto& m) { fill(m, 5); },
       [&](auto& m) { dict(m).set("k5", make_value("k5", 1, 50)); },  // the 6th of 8 slots
       [&](auto& m) { return holds(m, 5, 1); }, [&](auto& m) { return holds(m, 6, 1); }},
      {"clear", [&](auto& m) { fill(m, 40); }, [&](auto& m) { dict(m).clear(); },
       [&](auto& m) { return holds(m, 40, 1); }, [&](auto& m) { return holds(m, 0, none); }},
      {"push_back into a new chunk",
       [&](auto& m) {
         for (int i = 0; i < 16; ++i) list(m).push_back(make_value("l", i, 30));
       },
       [&](auto& m) { list(m).push_back(make_value("l", 16, 30)); },
       [&](auto& m) { return list(m).size() == 16; },
       [&](auto& m) { return list(m).size() == 17 && check("l", list(m).at(16)); }},
      {"pop_back", [&](auto& m) { list(m).push_back(make_value("l", 0, 30)); },
       [&](auto& m) { list(m).pop_back(); }, [&](auto& m) { return list(m).size() == 1; },
       [&](auto& m) { return list(m).size() == 0; }},
      {"list clear",
       [&](auto& m) {
         for (int i = 0; i < 100; ++i) list(m).push_back(make_value("l", i, 30));
       },
       [&](auto& m) { list(m).clear(); }, [&](auto& m) { return list(m).size() == 100; },
       [&](auto& m) { return list(m).size() == 0; }},
      {"grow the segment", [&](auto& m) { fill(m, 2); },
       [&](auto& m) { dict(m).set("big", make_value("big", 1, 200000)); },
       [&](auto& m) { return holds(m, 2, 1) && !dict(m).contains("big"); },
       [&](auto& m) { return holds(m, 3, 1) && check("big", dict(m).get("big")); }},
  };

  for (const scenario& sc : scenarios) {
    // The free figure after the write when nothing dies.
    std::size_t free_new = 0;
    {
      shmkit::manager ref(64 * 1024);
      sc.prepare(ref);
      sc.op(ref);
      free_new = ref.free_bytes();
    }
    for (write_step step : all_steps) {
      BOOST_TEST_CONTEXT(sc.what << ", death at step " << static_cast<int>(step)) {
        shmkit::manager m(64 * 1024);
        sc.prepare(m);
        const std::size_t free_old = m.free_bytes();
        const bool died = run_and_die(step, [&] { sc.op(m); });
        // The next caller repairs whatever the writer left.
        m.verify();
        const bool committed = died ? step >= write_step::committed : true;
        if (committed) {
          BOOST_TEST(sc.is_new(m));
          BOOST_TEST(m.free_bytes() == free_new);
        } else {
          BOOST_TEST(sc.is_old(m));
          // Growth that happened before the death is kept; otherwise exactly as before.
          if (m.stats().capacity_bytes == 64 * 1024) BOOST_TEST(m.free_bytes() == free_old);
        }
        // A death before the publication ends needs a repair (after it, only when the write
        // had touched the heap).
        const auto repairs = m.stats().recoveries;
        BOOST_TEST(repairs <= 1u);
        if (died && step < write_step::version_even) BOOST_TEST(repairs == 1u);
        // And it goes on working.
        auto after = m.dict<std::string, std::string>("after");
        after.set("x", std::string(1000, 'x'));
        BOOST_TEST(after.get("x").size() == 1000u);
        m.verify();
      }
    }
  }
}

// --- random kill -9 while others read -------------------------------------------------------

namespace {

// One writer: random writes of every kind, forever, counting each finished call.
void writer(const std::string& name, std::uint64_t seed, std::atomic_ref<std::uint64_t> done) {
  shmkit::manager m(shmkit::open_only, name);
  auto d = m.dict<std::string, words>("state");
  auto l = m.list<words>("log");
  auto n = m.dict<std::string, long>("counters");
  std::mt19937_64 rng(seed);
  auto len = [&] {
    const auto r = rng() % 1000;
    if (r < 5) return 20000 + rng() % 60000;  // ~0.2-0.6 MB: forces growth now and then
    return 4 + rng() % 200;
  };
  for (;;) {
    const auto op = rng() % 1000;
    const std::string key = "k" + std::to_string(rng() % (1 + rng() % 300));
    if (op < 350) {
      d.set(key, make_value(key, rng() % 1000000, len()));
    } else if (op < 550) {
      const std::size_t n_new = len();
      d.update(key, [&](words& v) { v = make_value(key, v.empty() ? 0 : v[1] + 1, n_new); });
    } else if (op < 680) {
      d.erase(key);
    } else if (op < 683) {
      d.clear();
    } else if (op < 800) {
      n.update(key, [](long& c) { ++c; });
    } else if (op < 900) {
      l.push_back(make_value("log", rng() % 1000000, len() % 300));
    } else if (op < 960) {
      if (!l.empty()) l.pop_back();
    } else if (op < 997) {
      const std::size_t size = l.size();
      if (size != 0) l.set(rng() % size, make_value("log", rng() % 1000000, len() % 300));
    } else {
      l.clear();
    }
    done.fetch_add(1, std::memory_order_relaxed);
  }
}

// Everything a reader can see must be whole.
void check_all(shmkit::manager& m, bool in_child) {
  auto d = m.dict<std::string, words>("state");
  auto l = m.list<words>("log");
  auto n = m.dict<std::string, long>("counters");
  auto ok = [&](bool c) {
    if (in_child) {
      CHILD_CHECK(c);
    } else {
      BOOST_REQUIRE(c);
    }
  };
  const auto items = d.items();
  std::set<std::string> keys;
  for (const auto& [k, v] : items) {
    ok(check(k, v));
    ok(keys.insert(k).second);
  }
  ok(items.size() <= 300);
  for (const auto& v : l.to_vector()) ok(check("log", v));
  for (const auto& [k, c] : n.items()) ok(c > 0);
  if (auto v = d.try_get("k0")) ok(check("k0", *v));
  if (l.size() > 0) {
    try {
      ok(check("log", l.at(0)));
    } catch (const std::out_of_range&) {  // emptied meanwhile: fine
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(kill_writers_while_others_read) {
  const name_guard g(unique_name("crash"));
  shmkit::manager m(shmkit::create_only, g.name, 64 * 1024);  // small: it grows as they go
  m.dict<std::string, words>("state");
  m.list<words>("log");
  m.dict<std::string, long>("counters");
  // counters[0]: the writer's finished calls; [1], [2]: the readers' passes; [3]: stop.
  shmkit::array<std::uint64_t> shared(4);
  auto counter = [&](std::size_t i) { return std::atomic_ref<std::uint64_t>(shared[i]); };

  std::vector<pid_t> readers;
  // Whatever happens to this test, the readers stop and are reaped.
  struct stopper {
    std::function<void()> fn;
    ~stopper() { fn(); }
  } stop_readers{[&] {
    counter(3).store(1);
    for (pid_t r : readers) kill_and_reap(r);
  }};
  for (std::size_t r = 1; r <= 2; ++r)
    readers.push_back(spawn([&, r] {
      shmkit::manager mm(shmkit::open_only, g.name);
      while (counter(3).load() == 0) {
        check_all(mm, true);
        counter(r).fetch_add(1);
      }
    }));

  std::mt19937_64 rng(12345);
  constexpr int rounds = 100;
  for (int round = 0; round < rounds; ++round) {
    const std::uint64_t start = counter(0).load();
    const pid_t w = spawn([&] { writer(g.name, rng(), counter(0)); });
    // Let it get going (its first calls may wait for the repair of the previous round), then
    // kill it at a random moment. A writer that ended on its own (an exception, its message
    // on stderr) fails the test at once, saying so, rather than after the minute it is given.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (counter(0).load() < start + 20 && std::chrono::steady_clock::now() < give_up) {
      int status = 0;
      if (::waitpid(w, &status, WNOHANG) == w)
        BOOST_FAIL("round " << round << ": the writer ended after " << counter(0).load() - start
                            << " calls (" << (WIFEXITED(status) ? "exit code " : "signal ")
                            << (WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status))
                            << ")");
      ::usleep(200);
    }
    BOOST_REQUIRE_MESSAGE(counter(0).load() >= start + 20,
                          "round " << round << ": the writer made " << counter(0).load() - start
                                   << " calls in 60 s");
    ::usleep(static_cast<useconds_t>(rng() % 5000));
    kill_and_reap(w);
    // The parent reads too, and checks the heap (which repairs it first if the writer died in
    // the middle).
    check_all(m, false);
    m.verify();
  }
  // The readers read through all of it.
  const std::uint64_t r1 = counter(1).load(), r2 = counter(2).load();
  counter(3).store(1);
  BOOST_TEST(wait_all_ok(readers, std::chrono::seconds(120)));
  readers.clear();
  const auto st = m.stats();
  BOOST_TEST_MESSAGE("writer calls " << counter(0).load() << ", reader passes " << r1 << " + "
                                     << r2 << ", repairs after a dead writer " << st.recoveries
                                     << ", segment " << st.capacity_bytes << " bytes");
  BOOST_TEST(r1 > 0u);
  BOOST_TEST(r2 > 0u);
  BOOST_TEST(st.recoveries > 0u);  // some kills did land in the middle of a write
  m.verify();
}

// --- fast sets killed ------------------------------------------------------------------------

namespace {

// Fast setter w owns keys f{w}.0 .. f{w}.15 and sets them in order to round 1, 2, 3, ...: at
// every moment its keys read r+1, ..., r+1, r, ..., r (a killed setter leaves its key old or
// new, so that stays true). Each value also names its key, so a store that landed in the
// wrong place shows. Every 16 sets it also inserts or erases keys of the same dict under the
// lock (the table grows, fills with tombstones, is rebuilt while the others set).
constexpr int fast_writers = 4;
constexpr int fast_keys = 16;

std::string fast_key(int w, int j) { return "f" + std::to_string(w) + "." + std::to_string(j); }
long fast_value(int w, int j, long r) { return (long(w) << 48) | (long(j) << 40) | r; }

// The rounds of setter w's keys in `get`'s view, or nullopt when one is malformed.
template <class Get>
std::optional<std::vector<long>> fast_rounds(int w, Get&& get) {
  std::vector<long> r(fast_keys);
  for (int j = 0; j < fast_keys; ++j) {
    const long v = get(fast_key(w, j));
    if ((v >> 40) != (fast_value(w, j, 0) >> 40)) return std::nullopt;
    r[static_cast<std::size_t>(j)] = v & ((long(1) << 40) - 1);
  }
  return r;
}

bool fast_invariant(const std::vector<long>& r) {
  for (std::size_t j = 1; j < r.size(); ++j)
    if (r[j] > r[j - 1]) return false;
  return r.front() - r.back() <= 1;
}

void fast_writer(const std::string& name, int w, std::uint64_t seed,
                 std::atomic_ref<std::uint64_t> progress, std::atomic_ref<std::uint64_t> light) {
  shmkit::manager m(shmkit::open_only, name);
  auto d = m.dict<std::string, long>("fast");
  std::mt19937_64 rng(seed);
  // Carry on from where the killed one stopped: finish its round, then go on.
  const auto r = fast_rounds(w, [&](const std::string& k) { return d.get(k); });
  CHILD_CHECK(r && fast_invariant(*r));
  long round = r->front();
  int j = 0;
  while (j < fast_keys && (*r)[static_cast<std::size_t>(j)] == round) ++j;
  if (j == fast_keys) {
    ++round;
    j = 0;
  }
  for (long n = 0;; ++n) {
    d.set(fast_key(w, j), fast_value(w, j, round));
    if (++j == fast_keys) {
      j = 0;
      ++round;
    }
    if (n % 16 == 0) {
      const std::string k = "g" + std::to_string(w) + "." + std::to_string(rng() % 300);
      if (rng() % 3 == 0)
        d.erase(k);
      else
        d.set(k, static_cast<long>(n));
    }
    progress.fetch_add(1);
    light.store(shmkit::detail::manager_light_sets());
  }
}

}  // namespace

namespace {

// Four fast setters, one of them killed at a random moment in each of `rounds` rounds (and,
// every few rounds, a snapshot reader killed in the middle of its snapshots), while a reader
// checks snapshots and gets all along: no snapshot mixes two moments, no value is torn or
// lands under another key, and nobody hangs (a setter's slot and a snapshot's claim left by
// the dead are taken back, a dead setter's slot is taken over). `light_after`: how soon
// setters switch to fast sets without a fence; returns how many sets were made so (as far as
// the setters reported before they were killed).
std::uint64_t kill_fast_setters_rounds(int rounds, std::uint32_t light_after) {
  const std::uint32_t saved_light_after = shmkit::detail::manager_light_after;
  shmkit::detail::manager_light_after = light_after;  // the children inherit it
  struct restore {
    std::uint32_t n;
    ~restore() { shmkit::detail::manager_light_after = n; }
  } restore_light_after{saved_light_after};
  const name_guard g(unique_name("fastcrash"));
  shmkit::manager m(shmkit::create_only, g.name, 64 * 1024);
  auto d = m.dict<std::string, long>("fast");
  for (int w = 0; w < fast_writers; ++w)
    for (int j = 0; j < fast_keys; ++j) d.set(fast_key(w, j), fast_value(w, j, 0));
  // shared[w]: setter w's calls; [4]: the reader's passes; [5]: stop; [6 + w]: setter w's
  // sets without a fence; [10]: those of the setters killed so far.
  shmkit::array<std::uint64_t> shared(11);
  auto counter = [&](std::size_t i) { return std::atomic_ref<std::uint64_t>(shared[i]); };
  std::vector<pid_t> setters(fast_writers), others;
  struct stopper {
    std::function<void()> fn;
    ~stopper() { fn(); }
  } stop_all{[&] {
    counter(5).store(1);
    for (pid_t p : setters) kill_and_reap(p);
    for (pid_t p : others) kill_and_reap(p);
  }};
  std::mt19937_64 rng(6789);
  auto start_setter = [&](int w) {
    const std::uint64_t seed = rng();
    setters[static_cast<std::size_t>(w)] = spawn(
        [&, w, seed] {
          fast_writer(g.name, w, seed, counter(static_cast<std::size_t>(w)),
                      counter(6 + static_cast<std::size_t>(w)));
        });
  };
  for (int w = 0; w < fast_writers; ++w) start_setter(w);
  auto snapshot_ok = [&](shmkit::shared_dict<std::string, long>& dd) {
    std::map<std::string, long> snap;
    for (auto& [k, v] : dd.items()) snap[k] = v;
    for (int w = 0; w < fast_writers; ++w) {
      const auto r = fast_rounds(w, [&](const std::string& k) { return snap.at(k); });
      if (!r || !fast_invariant(*r)) return false;
    }
    return true;
  };
  others.push_back(spawn([&] {
    shmkit::manager mm(shmkit::open_only, g.name);
    auto dd = mm.dict<std::string, long>("fast");
    std::vector<long> last(fast_keys * fast_writers, 0);
    while (counter(5).load() == 0) {
      CHILD_CHECK(snapshot_ok(dd));
      for (int w = 0; w < fast_writers; ++w) {
        const auto r = fast_rounds(w, [&](const std::string& k) { return dd.get(k); });
        CHILD_CHECK(r.has_value());
        for (int j = 0; r && j < fast_keys; ++j) {  // a key's round never goes back
          long& l = last[static_cast<std::size_t>(w * fast_keys + j)];
          CHILD_CHECK((*r)[static_cast<std::size_t>(j)] >= l);
          l = (*r)[static_cast<std::size_t>(j)];
        }
      }
      counter(4).fetch_add(1);
    }
  }));
  for (int round = 0; round < rounds; ++round) {
    const int w = static_cast<int>(rng() % fast_writers);
    const std::uint64_t start = counter(static_cast<std::size_t>(w)).load();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (counter(static_cast<std::size_t>(w)).load() < start + 50 &&
           std::chrono::steady_clock::now() < give_up)
      ::usleep(200);
    BOOST_REQUIRE_MESSAGE(counter(static_cast<std::size_t>(w)).load() >= start + 50,
                          "round " << round << ": setter " << w << " hung");
    if (round % 5 == 0) {  // a snapshot reader killed in the middle of its snapshots
      const pid_t s = spawn([&] {
        shmkit::manager mm(shmkit::open_only, g.name);
        auto dd = mm.dict<std::string, long>("fast");
        for (;;) dd.items();
      });
      ::usleep(static_cast<useconds_t>(1000 + rng() % 3000));
      kill_and_reap(s);
    }
    ::usleep(static_cast<useconds_t>(rng() % 2000));
    kill_and_reap(setters[static_cast<std::size_t>(w)]);
    counter(10).fetch_add(counter(6 + static_cast<std::size_t>(w)).exchange(0));
    BOOST_REQUIRE(snapshot_ok(d));
    start_setter(w);
  }
  const std::uint64_t passes = counter(4).load();
  counter(5).store(1);
  for (pid_t p : setters) kill_and_reap(p);
  setters.clear();
  BOOST_TEST(wait_all_ok(others, std::chrono::seconds(120)));
  others.clear();
  BOOST_TEST(passes > 0u);
  BOOST_TEST(snapshot_ok(d));
  m.verify();
  std::uint64_t light = counter(10).load();
  for (int w = 0; w < fast_writers; ++w) light += counter(6 + static_cast<std::size_t>(w)).load();
  return light;
}

}  // namespace

BOOST_AUTO_TEST_CASE(kill_fast_setters) {
  kill_fast_setters_rounds(100, shmkit::detail::manager_light_after);
}

// The same with setters that switch to fast sets without a fence after two quiet sets: setters
// killed in light sets (their slots left busy and owned by the dead, taken back and taken
// over), while every lock holder and snapshot switches light sets off again.
BOOST_AUTO_TEST_CASE(kill_light_fast_setters) {
  const std::uint64_t light = kill_fast_setters_rounds(60, 1);
  BOOST_TEST_MESSAGE("fast sets without a fence: " << light);
  if (shmkit::detail::register_light_fences())
    BOOST_TEST(light > 0u);  // the light path did run
}

namespace {

std::atomic<int>* g_fast_phase = nullptr;  // in shared memory: 1 paused, 2 go on

void pause_before_fast_store(write_step s) noexcept {
  if (s != write_step::fast_store) return;
  g_fast_phase->store(1);
  while (g_fast_phase->load() != 2) ::usleep(500);
}

}  // namespace

// A fast set paused between its checks and its store: a writer that erases the key and
// inserts another (which would reuse the freed entry's block) must wait for that store, so
// that it lands in the erased entry before the erase, never in the new key's entry.
BOOST_AUTO_TEST_CASE(lock_holders_wait_for_a_fast_store_under_way) {
  shmkit::manager m;
  auto d = m.dict<std::string, long>("d");
  d.set("a", 1);
  shmkit::array<int> words(2);  // [0]: the setter's phase; [1]: the eraser is done
  g_fast_phase = reinterpret_cast<std::atomic<int>*>(&words[0]);
  static_assert(sizeof(std::atomic<int>) == sizeof(int));
  const pid_t setter = spawn([&] {
    shmkit::detail::manager_fault_hook = pause_before_fast_store;
    d.set("a", 2);
  });
  while (g_fast_phase->load() != 1) ::usleep(500);
  const pid_t eraser = spawn([&] {
    d.erase("a");
    d.set("b", 3);
    std::atomic_ref<int>(words[1]).store(1);
  });
  ::usleep(100 * 1000);
  // It cannot be done: the store it waits for is not made yet.
  BOOST_TEST(std::atomic_ref<int>(words[1]).load() == 0);
  g_fast_phase->store(2);
  BOOST_TEST(wait_all_ok({setter, eraser}));
  BOOST_TEST(!d.contains("a"));
  BOOST_TEST(d.get("b") == 3);
  m.verify();
}
