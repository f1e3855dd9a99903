// SPDX-License-Identifier: MIT
// shmkit::manager, shared_dict and shared_list: every call, the four ways of making a manager,
// containers found by name from other processes, wrong types, exact counts under contention
// from real processes, large values, many keys, space that comes back, full memory, growth,
// and snapshots that are one moment.
#define BOOST_TEST_MODULE manager
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/manager.hpp"
#include "shmkit/shared.hpp"
#include "support.hpp"

using shmkit::test::name_guard;
using shmkit::test::spawn;
using shmkit::test::unique_name;
using shmkit::test::wait_all_ok;

namespace {

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const shmkit::error& e) {
    return e.what();
  }
  return "(no shmkit::error thrown)";
}

// Sets manager_light_after for a scope (children forked meanwhile inherit it).
struct light_after_guard {
  explicit light_after_guard(std::uint32_t n) : saved(shmkit::detail::manager_light_after) {
    shmkit::detail::manager_light_after = n;
  }
  ~light_after_guard() { shmkit::detail::manager_light_after = saved; }
  light_after_guard(const light_after_guard&) = delete;
  light_after_guard& operator=(const light_after_guard&) = delete;
  std::uint32_t saved;
};

}  // namespace

BOOST_AUTO_TEST_CASE(dict_calls) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, int>("scores");
  BOOST_TEST(d.size() == 0u);
  BOOST_TEST(d.empty());
  d.set("a", 1);
  d.set("b", 2);
  BOOST_TEST(d.get("a") == 1);
  BOOST_TEST(d.get("b") == 2);
  BOOST_TEST(d.size() == 2u);
  BOOST_TEST(d.contains("a"));
  BOOST_TEST(!d.contains("c"));
  BOOST_TEST(!d.try_get("c").has_value());
  BOOST_TEST(d.try_get("a").value() == 1);
  BOOST_CHECK_THROW(d.get("c"), std::out_of_range);

  d.set("a", 10);  // same size: in place
  BOOST_TEST(d.get("a") == 10);
  BOOST_TEST(d.update("a", [](int& v) { v += 5; }) == 15);
  BOOST_TEST(d.update("new", [](int& v) { v += 7; }) == 7);  // a default int first
  BOOST_TEST(d.size() == 3u);

  BOOST_TEST(d.erase("b"));
  BOOST_TEST(!d.erase("b"));
  BOOST_TEST(!d.contains("b"));
  BOOST_TEST(d.size() == 2u);

  auto keys = d.keys();
  std::sort(keys.begin(), keys.end());
  BOOST_TEST((keys == std::vector<std::string>{"a", "new"}));
  auto values = d.values();
  std::sort(values.begin(), values.end());
  BOOST_TEST((values == std::vector<int>{7, 15}));
  auto items = d.items();
  std::sort(items.begin(), items.end());
  BOOST_TEST((items == std::vector<std::pair<std::string, int>>{{"a", 15}, {"new", 7}}));

  d.clear();
  BOOST_TEST(d.size() == 0u);
  BOOST_TEST(d.keys().empty());
  d.set("again", 3);
  BOOST_TEST(d.get("again") == 3);
  BOOST_TEST(d.name() == "scores");
  mgr.verify();
}

// Snapshots list a dict's keys in insertion order, as Python's dict: a present key set again
// (in place, or with a value of another size, which moves it to the heap) keeps its place, a
// key erased and set again goes last, and the order survives the table's growth.
BOOST_AUTO_TEST_CASE(dict_snapshots_in_insertion_order) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, std::string>("order");
  d.set("c", "1");
  d.set("a", "2");
  d.set("b", "3");
  d.set("a", "two");                    // same key, same place
  d.set("c", std::string(200, 'x'));    // a value out of the table now: same place
  d.update("b", [](std::string& v) { v += "!"; });
  BOOST_TEST((d.keys() == std::vector<std::string>{"c", "a", "b"}));
  BOOST_TEST(d.erase("c"));
  d.set("c", "back");
  BOOST_TEST((d.keys() == std::vector<std::string>{"a", "b", "c"}));
  std::vector<std::string> want{"a", "b", "c"};
  for (int i = 0; i < 5000; ++i) {  // grows the table many times
    want.push_back("k" + std::to_string(i));
    d.set(want.back(), "v");
    if (i % 7 == 0) {
      BOOST_TEST_REQUIRE(d.erase(want[want.size() / 2]));
      want.erase(want.begin() + static_cast<std::ptrdiff_t>(want.size() / 2));
    }
  }
  BOOST_TEST((d.keys() == want));
  const auto items = d.items();
  BOOST_TEST_REQUIRE(items.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) BOOST_TEST(items[i].first == want[i]);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(dict_of_codec_types) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::pair<int, std::string>, std::map<std::string, std::vector<double>>>("m");
  std::map<std::string, std::vector<double>> v{{"x", {1.5, 2.5}}, {"y", {}}};
  d.set({1, "one"}, v);
  BOOST_TEST((d.get({1, "one"}) == v));
  BOOST_TEST(!d.contains({1, "two"}));
  v["z"] = {3};
  d.update({1, "one"}, [](auto& m) { m["z"] = {3}; });
  BOOST_TEST((d.get({1, "one"}) == v));

  // An empty key and an empty value are values like any other.
  auto e = mgr.dict<std::string, std::string>("empty");
  e.set("", "");
  BOOST_TEST(e.contains(""));
  BOOST_TEST(e.get("").empty());
  mgr.verify();
}

// A string key is hashed from its length and characters as they are (hash_prefixed), any
// other key from its encoding (hash_bytes): the two must agree, or a key set through one
// path would not be found through the other (a std::string and the same bytes in a
// std::vector<char> encode alike). Lengths around every branch of the hash: 0..130.
BOOST_AUTO_TEST_CASE(string_keys_hash_as_their_encoding) {
  namespace sd = shmkit::detail;
  for (std::size_t n = 0; n <= 130; ++n) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s.push_back(static_cast<char>('a' + (i * 7 + n) % 26));
    const sd::encoded k(s);
    BOOST_TEST_REQUIRE(k.bytes().size() == n + 8);
    BOOST_TEST(k.key().hash == sd::hash_bytes(k.bytes()), "length " << n);
    const sd::encoded as_vector(std::vector<char>(s.begin(), s.end()));
    BOOST_TEST(as_vector.key().hash == k.key().hash, "length " << n);
  }
  // Through the dict: keys of every length found again, and absent keys absent.
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, int>("lengths");
  for (int n = 0; n <= 130; ++n) d.set(std::string(static_cast<std::size_t>(n), 'k'), n);
  for (int n = 0; n <= 130; ++n) BOOST_TEST(d.get(std::string(static_cast<std::size_t>(n), 'k')) == n);
  BOOST_TEST(!d.contains(std::string(131, 'k')));
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(list_calls) {
  shmkit::manager mgr;
  auto ints = mgr.list<int>("ints");  // raw items live in the slots
  auto strs = mgr.list<std::string>("strs");
  BOOST_TEST(ints.empty());
  for (int i = 0; i < 1000; ++i) {
    ints.push_back(i);
    strs.push_back(std::string(static_cast<std::size_t>(i % 50), 'a' + static_cast<char>(i % 26)));
  }
  BOOST_TEST(ints.size() == 1000u);
  BOOST_TEST(strs.size() == 1000u);
  BOOST_TEST(ints.at(0) == 0);
  BOOST_TEST(ints.at(999) == 999);
  BOOST_TEST(strs.at(77) == std::string(27, 'a' + 77 % 26));
  BOOST_CHECK_THROW(ints.at(1000), std::out_of_range);
  BOOST_CHECK_THROW(strs.set(1000, "x"), std::out_of_range);

  ints.set(5, -5);
  strs.set(5, "five");
  BOOST_TEST(ints.at(5) == -5);
  BOOST_TEST(strs.at(5) == "five");

  BOOST_TEST(ints.pop_back() == 999);
  BOOST_TEST(strs.pop_back() == std::string(999 % 50, 'a' + 999 % 26));
  BOOST_TEST(ints.size() == 999u);

  const auto v = ints.to_vector();
  BOOST_TEST(v.size() == 999u);
  BOOST_TEST(v[5] == -5);
  BOOST_TEST(v[998] == 998);
  BOOST_TEST(strs.to_vector().size() == 999u);

  ints.clear();
  strs.clear();
  BOOST_TEST(ints.size() == 0u);
  BOOST_CHECK_THROW(ints.pop_back(), std::out_of_range);
  ints.push_back(42);
  BOOST_TEST(ints.to_vector() == std::vector<int>{42});
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(four_ways_and_names) {
  const name_guard g(unique_name("mgr"));
  {
    shmkit::manager a(shmkit::create_only, g.name, 1 << 16);
    a.dict<std::string, int>("d").set("x", 1);
    BOOST_CHECK_THROW(shmkit::manager(shmkit::create_only, g.name), shmkit::error);
    shmkit::manager b(shmkit::open_only, g.name);
    BOOST_TEST((b.dict<std::string, int>("d").get("x") == 1));
    shmkit::manager c(shmkit::open_or_create, g.name);
    BOOST_TEST((c.dict<std::string, int>("d").get("x") == 1));
    BOOST_TEST((c.names() == std::vector<std::string>{"d"}));
    BOOST_TEST(a.name() == g.name);
  }
  // The creator's handle is gone: so is the name.
  BOOST_CHECK_THROW(shmkit::manager(shmkit::open_only, g.name), shmkit::error);
  {
    shmkit::manager d(shmkit::open_or_create, g.name);
    BOOST_TEST(d.names().empty());
  }
  // Other kinds under the name are refused with a message naming both.
  shmkit::value<int> v(shmkit::create_only, g.name + "v", 1);
  const name_guard gv(g.name + "v");
  const std::string msg = error_of([&] { shmkit::manager m(shmkit::open_only, g.name + "v"); });
  BOOST_TEST(contains(msg, "value"));
  BOOST_TEST(contains(msg, "manager"));
}

BOOST_AUTO_TEST_CASE(wrong_types_throw) {
  shmkit::manager mgr;
  mgr.dict<std::string, int>("d").set("a", 1);
  mgr.list<int>("l").push_back(1);
  const std::string m1 = error_of([&] { mgr.dict<std::string, long>("d"); });
  BOOST_TEST(contains(m1, "shared_dict<std::string, int>"), m1);
  BOOST_TEST(contains(m1, "shared_dict<std::string, long"), m1);
  const std::string m2 = error_of([&] { mgr.list<int>("d"); });
  BOOST_TEST(contains(m2, "shared_dict<std::string, int>"), m2);
  BOOST_TEST(contains(m2, "shared_list<int>"), m2);
  const std::string m3 = error_of([&] { mgr.list<std::string>("l"); });
  BOOST_TEST(contains(m3, "shared_list<int>"), m3);
  const std::string m4 = error_of([&] { mgr.dict<int, int>("l"); });
  BOOST_TEST(contains(m4, "shared_list<int>"), m4);
  BOOST_CHECK_THROW((mgr.dict<int, int>("")), std::invalid_argument);
  BOOST_CHECK_THROW((mgr.dict<int, int>(std::string(201, 'x'))), std::invalid_argument);
  // Nothing was created by the failed calls.
  BOOST_TEST(mgr.names().size() == 2u);
  BOOST_TEST((mgr.dict<std::string, int>("d").get("a") == 1));

  // The same check in another process, by name.
  const name_guard g(unique_name("types"));
  shmkit::manager named(shmkit::create_only, g.name);
  named.dict<int, std::string>("x");
  const pid_t c = spawn([&] {
    shmkit::manager m(shmkit::open_only, g.name);
    bool threw = false;
    try {
      m.dict<int, int>("x");
    } catch (const shmkit::error&) {
      threw = true;
    }
    CHILD_CHECK(threw);
  });
  BOOST_TEST(wait_all_ok({c}));
}

BOOST_AUTO_TEST_CASE(containers_found_by_name_from_other_processes) {
  const name_guard g(unique_name("byname"));
  shmkit::manager mgr(shmkit::create_only, g.name);
  const pid_t c = spawn([&] {
    shmkit::manager m(shmkit::open_only, g.name);
    m.dict<std::string, std::string>("made by child").set("who", "child");
    m.list<std::string>("log").push_back("child was here");
  });
  BOOST_TEST(wait_all_ok({c}));
  BOOST_TEST((mgr.dict<std::string, std::string>("made by child").get("who") == "child"));
  BOOST_TEST(mgr.list<std::string>("log").at(0) == "child was here");
}

BOOST_AUTO_TEST_CASE(four_processes_update_exactly) {
  shmkit::manager mgr;  // anonymous: the children inherit it
  auto d = mgr.dict<std::string, long>("counts");
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p)
    kids.push_back(spawn([&] {
      for (int i = 0; i < 10000; ++i) d.update("k", [](long& v) { ++v; });
    }));
  BOOST_TEST(wait_all_ok(kids));
  BOOST_TEST(d.get("k") == 40000);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(four_processes_append_every_item_once) {
  const name_guard g(unique_name("append"));
  shmkit::manager mgr(shmkit::create_only, g.name, 1 << 16);  // small: it grows meanwhile
  auto ints = mgr.list<long>("ints");
  auto strs = mgr.list<std::string>("strs");
  std::vector<pid_t> kids;
  for (long p = 0; p < 4; ++p)
    kids.push_back(spawn([&, p] {
      shmkit::manager m(shmkit::open_only, g.name);  // a fresh attach, by name
      auto li = m.list<long>("ints");
      auto ls = m.list<std::string>("strs");
      for (long i = 0; i < 10000; ++i) {
        li.push_back(p * 1000000 + i);
        if (i % 4 == 0) ls.push_back(std::to_string(p * 1000000 + i));
      }
    }));
  BOOST_TEST(wait_all_ok(kids));
  const auto v = ints.to_vector();
  BOOST_TEST(v.size() == 40000u);
  std::set<long> seen(v.begin(), v.end());
  BOOST_TEST(seen.size() == 40000u);
  for (long p = 0; p < 4; ++p) {
    BOOST_TEST(seen.count(p * 1000000) == 1u);
    BOOST_TEST(seen.count(p * 1000000 + 9999) == 1u);
  }
  // Each process's items appear in its own order.
  long last[4] = {-1, -1, -1, -1};
  for (long x : v) {
    BOOST_TEST(x % 1000000 > last[x / 1000000]);
    last[x / 1000000] = x % 1000000;
  }
  const auto s = strs.to_vector();
  BOOST_TEST(s.size() == 10000u);
  BOOST_TEST(std::set<std::string>(s.begin(), s.end()).size() == 10000u);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(one_mib_strings) {
  const name_guard g(unique_name("big"));
  shmkit::manager mgr(shmkit::create_only, g.name, 1 << 16);
  auto d = mgr.dict<std::string, std::string>("big");
  const std::size_t mib = 1 << 20;
  for (int i = 0; i < 8; ++i) d.set("v" + std::to_string(i), std::string(mib, 'a' + i));
  // Keys of 1 MiB too.
  d.set(std::string(mib, 'k'), "a big key");
  const pid_t c = spawn([&] {
    shmkit::manager m(shmkit::open_only, g.name);
    auto dd = m.dict<std::string, std::string>("big");
    for (int i = 0; i < 8; ++i) {
      const std::string v = dd.get("v" + std::to_string(i));
      CHILD_CHECK(v.size() == mib);
      CHILD_CHECK(v == std::string(mib, 'a' + i));
    }
    CHILD_CHECK(dd.get(std::string(mib, 'k')) == "a big key");
    dd.set("from child", std::string(mib, 'c'));
  });
  BOOST_TEST(wait_all_ok({c}));
  BOOST_TEST(d.get("from child") == std::string(mib, 'c'));
  BOOST_TEST(mgr.stats().capacity_bytes >= 10 * mib);
  // Replacing big values does not pile up memory.
  const std::size_t free_before = mgr.free_bytes();
  for (int r = 0; r < 5; ++r)
    for (int i = 0; i < 8; ++i) d.set("v" + std::to_string(i), std::string(mib, 'A' + i));
  BOOST_TEST(mgr.free_bytes() == free_before);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(hundred_thousand_small_keys) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, int>("many");
  constexpr int n = 100000;
  for (int i = 0; i < n; ++i) d.set("key" + std::to_string(i), i);
  BOOST_TEST(d.size() == static_cast<std::size_t>(n));
  const pid_t c = spawn([&] {
    for (int i = 0; i < n; ++i) CHILD_CHECK(d.get("key" + std::to_string(i)) == i);
    CHILD_CHECK(!d.contains("key" + std::to_string(n)));
  });
  BOOST_TEST(wait_all_ok({c}));
  const auto keys = d.keys();
  BOOST_TEST(keys.size() == static_cast<std::size_t>(n));
  BOOST_TEST(std::set<std::string>(keys.begin(), keys.end()).size() == keys.size());
  long sum = 0;
  for (int v : d.values()) sum += v;
  BOOST_TEST(sum == static_cast<long>(n) * (n - 1) / 2);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(erase_and_reinsert_cycles_do_not_leak) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, std::string>("cycle");
  auto l = mgr.list<std::string>("cycle list");
  auto fill = [&] {
    for (int i = 0; i < 2000; ++i) {
      d.set("k" + std::to_string(i), std::string(static_cast<std::size_t>(i % 300), 'x'));
      l.push_back(std::string(static_cast<std::size_t>(i % 100), 'y'));
    }
  };
  fill();
  const std::size_t before = mgr.free_bytes();
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 2000; ++i) BOOST_REQUIRE(d.erase("k" + std::to_string(i)));
    while (!l.empty()) l.pop_back();
    BOOST_TEST(d.size() == 0u);
    fill();
    BOOST_TEST(mgr.free_bytes() == before);
  }
  // clear() gives back everything the contents took, and refilling takes the same again.
  d.clear();
  l.clear();
  fill();
  BOOST_TEST(mgr.free_bytes() == before);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(full_memory_throws_and_changes_nothing) {
  const std::size_t limit = 1 << 20;
  shmkit::manager mgr(64 * 1024, shmkit::manager_options{.max_bytes = limit});
  auto d = mgr.dict<int, std::string>("fill");
  auto l = mgr.list<std::string>("fill list");
  int i = 0;
  std::string msg;
  for (;; ++i) {
    const auto snapshot = d.items();
    const auto stats = mgr.stats();
    try {
      d.set(i, std::string(10000, 'a' + i % 26));
    } catch (const shmkit::error& e) {
      msg = e.what();
      auto now = d.items();
      BOOST_TEST((now == snapshot));
      BOOST_TEST(mgr.stats().free_bytes == stats.free_bytes);
      break;
    }
    BOOST_REQUIRE(i < 10000);
  }
  BOOST_TEST(contains(msg, "full"), msg);
  BOOST_TEST(contains(msg, "max_bytes"), msg);
  BOOST_TEST(i > 50);  // it grew before it refused
  BOOST_TEST(mgr.stats().capacity_bytes == limit);
  // Replacing with a bigger value, updating, pushing: all refuse and change nothing.
  const auto snapshot = d.items();
  BOOST_CHECK_THROW(d.set(0, std::string(limit, 'z')), shmkit::error);
  BOOST_CHECK_THROW(d.update(1, [&](std::string& s) { s.assign(limit, 'z'); }), shmkit::error);
  BOOST_CHECK_THROW(l.push_back(std::string(limit, 'z')), shmkit::error);
  BOOST_TEST((d.items() == snapshot));
  BOOST_TEST(l.size() == 0u);
  mgr.verify();
  // Erasing makes room again.
  d.erase(0);
  d.erase(1);
  d.set(100000, std::string(10000, 'n'));
  BOOST_TEST(d.get(100000).size() == 10000u);
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(growth_is_seen_by_processes_attached_before) {
  const name_guard g(unique_name("grow"));
  shmkit::manager mgr(shmkit::create_only, g.name, 1 << 16);
  auto d = mgr.dict<int, std::string>("g");
  d.set(-1, "small");
  shmkit::value<int> phase(0);
  const pid_t c = spawn([&] {
    shmkit::manager m(shmkit::open_only, g.name);  // attached at the small size
    auto dd = m.dict<int, std::string>("g");
    CHILD_CHECK(dd.get(-1) == "small");
    phase.store(1);
    while (phase.load() != 2) ::usleep(1000);
    for (int i = 0; i < 64; ++i) CHILD_CHECK(dd.get(i) == std::string(100000, 'a' + i % 26));
    dd.set(1000, std::string(4 << 20, 'q'));  // and grows it again from here
  });
  while (phase.load() != 1) ::usleep(1000);
  for (int i = 0; i < 64; ++i) d.set(i, std::string(100000, 'a' + i % 26));
  phase.store(2);
  BOOST_TEST(wait_all_ok({c}));
  BOOST_TEST(d.get(1000).size() == std::size_t(4) << 20);
  mgr.verify();
}

// An anonymous manager grows through the descriptor its children inherited: children forked
// before the growth see it, and grow it themselves.
BOOST_AUTO_TEST_CASE(anonymous_growth_reaches_children_forked_before) {
  shmkit::manager mgr(1 << 16);
  auto d = mgr.dict<int, std::string>("g");
  shmkit::value<int> phase(0);
  const pid_t c = spawn([&] {
    while (phase.load() != 1) ::usleep(1000);
    for (int i = 0; i < 32; ++i) CHILD_CHECK(d.get(i) == std::string(100000, 'p'));
    d.set(-1, std::string(2 << 20, 'c'));
  });
  for (int i = 0; i < 32; ++i) d.set(i, std::string(100000, 'p'));
  phase.store(1);
  BOOST_TEST(wait_all_ok({c}));
  BOOST_TEST(d.get(-1).size() == std::size_t(2) << 20);
  mgr.verify();
}

// A grower that died after extending the file but before publishing the new size leaves a
// file bigger than the size every process maps. A process that opens it then maps all of it;
// when it grows the manager within that mapping, the others must still learn the new size.
BOOST_AUTO_TEST_CASE(growth_after_a_grower_died_half_way) {
  const name_guard g(unique_name("halfgrow"));
  shmkit::manager a(shmkit::create_only, g.name, 1 << 16);
  auto da = a.dict<int, std::string>("d");
  da.set(0, "before");
  {
    // What the dead grower left: the file extended, the published size unchanged.
    const std::string path = "/dev/shm/shmkit." + g.name;
    BOOST_REQUIRE(::truncate(path.c_str(), 8 << 20) == 0);
  }
  const pid_t c = spawn([&] {
    shmkit::manager b(shmkit::open_only, g.name);  // maps the whole 8 MiB file
    b.dict<int, std::string>("d").set(1, std::string(3 << 20, 'b'));
  });
  BOOST_TEST(wait_all_ok({c}));
  BOOST_TEST(da.get(1).size() == std::size_t(3) << 20);  // `a` must map the growth
  da.set(2, std::string(3 << 20, 'a'));
  BOOST_TEST(da.get(0) == "before");
  a.verify();
}

// Threads of one process share a handle while one of them grows the manager many times over:
// the view never moves under the others.
BOOST_AUTO_TEST_CASE(threads_share_a_handle_while_it_grows) {
  shmkit::manager mgr(1 << 16);
  auto d = mgr.dict<int, std::string>("t");
  auto counts = mgr.dict<std::string, long>("c");
  d.set(0, "zero");
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back([&] {
      while (!stop.load()) {
        if (d.get(0) != "zero") std::abort();
        for (const auto& [k, v] : d.items())
          if (k != 0 && v != std::string(static_cast<std::size_t>(k) * 1000, 'g')) std::abort();
        counts.update("reads", [](long& n) { ++n; });
        reads.fetch_add(1);
      }
    });
  for (int i = 1; i <= 64; ++i) d.set(i, std::string(static_cast<std::size_t>(i) * 1000, 'g'));
  while (reads.load() < 100) std::this_thread::yield();
  stop.store(true);
  for (auto& t : readers) t.join();
  BOOST_TEST(mgr.stats().capacity_bytes > std::size_t(1) << 21);
  BOOST_TEST(counts.get("reads") == reads.load());
  mgr.verify();
}

BOOST_AUTO_TEST_CASE(update_that_throws_changes_nothing) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, std::vector<int>>("u");
  d.set("a", {1, 2, 3});
  BOOST_CHECK_THROW(d.update("a",
                             [](std::vector<int>& v) {
                               v.push_back(4);
                               throw std::runtime_error("no");
                             }),
                    std::runtime_error);
  BOOST_CHECK_THROW(d.update("b", [](std::vector<int>&) { throw std::runtime_error("no"); }),
                    std::runtime_error);
  BOOST_TEST((d.get("a") == std::vector<int>{1, 2, 3}));
  BOOST_TEST(!d.contains("b"));
  // Reading inside fn works; writing to the same manager is refused instead of deadlocking.
  auto other = mgr.dict<std::string, int>("other");
  other.set("x", 5);
  d.update("a", [&](std::vector<int>& v) { v.push_back(other.get("x")); });
  BOOST_TEST((d.get("a") == std::vector<int>{1, 2, 3, 5}));
  BOOST_CHECK_THROW(d.update("a", [&](std::vector<int>&) { other.set("y", 1); }),
                    std::system_error);
  BOOST_TEST(!other.contains("y"));
  mgr.verify();
}

// Readers take no lock: while a writer holds the writers' lock (parked inside update()'s fn),
// other processes read everything, and see the value from before the update.
BOOST_AUTO_TEST_CASE(reads_do_not_wait_for_a_writer) {
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, long>("r");
  auto l = mgr.list<long>("rl");
  d.set("k", 1);
  d.set("other", 2);
  l.push_back(3);
  shmkit::value<int> phase(0);
  const pid_t writer = spawn([&] {
    d.update("k", [&](long& v) {
      phase.store(1);
      while (phase.load() != 2) ::usleep(1000);  // holds the writers' lock meanwhile
      v = 100;
    });
  });
  while (phase.load() != 1) ::usleep(1000);
  const pid_t reader = spawn([&] {
    for (int i = 0; i < 10000; ++i) {
      CHILD_CHECK(d.get("k") == 1);
      CHILD_CHECK(d.get("other") == 2);
      CHILD_CHECK(d.size() == 2);
      CHILD_CHECK(l.at(0) == 3);
      CHILD_CHECK(d.items().size() == 2);
    }
  });
  const bool read_ok = wait_all_ok({reader});
  phase.store(2);
  BOOST_TEST(read_ok);
  BOOST_TEST(wait_all_ok({writer}));
  BOOST_TEST(d.get("k") == 100);
}

// A writer sets k0, k1, ..., k{n-1} to round r, then to r + 1, ...: at every moment the values
// read r+1, ..., r+1, r, ..., r in key order. A snapshot that mixed two moments would break
// that (a later key ahead of an earlier one, or a spread over 1).
BOOST_AUTO_TEST_CASE(snapshots_are_one_moment) {
  shmkit::manager mgr;
  auto d = mgr.dict<int, long>("snap");
  auto l = mgr.list<long>("snap list");
  constexpr int n = 64;
  for (int k = 0; k < n; ++k) {
    d.set(k, 0);
    l.push_back(0);
  }
  shmkit::value<int> stop(0);
  const pid_t writer = spawn([&] {
    for (long r = 1; stop.load() == 0; ++r)
      for (int k = 0; k < n; ++k) {
        d.set(k, r);
        l.set(static_cast<std::size_t>(k), r);
      }
  });
  std::vector<pid_t> readers;
  for (int p = 0; p < 2; ++p)
    readers.push_back(spawn([&] {
      for (int i = 0; i < 3000; ++i) {
        auto items = d.items();
        CHILD_CHECK(items.size() == static_cast<std::size_t>(n));
        std::sort(items.begin(), items.end());
        for (int k = 1; k < n; ++k) CHILD_CHECK(items[k].second <= items[k - 1].second);
        CHILD_CHECK(items[0].second - items[n - 1].second <= 1);
        const auto v = l.to_vector();
        CHILD_CHECK(v.size() == static_cast<std::size_t>(n));
        for (int k = 1; k < n; ++k) CHILD_CHECK(v[k] <= v[k - 1]);
        CHILD_CHECK(v[0] - v[n - 1] <= 1);
      }
    }));
  const bool ok = wait_all_ok(readers);
  stop.store(1);
  BOOST_TEST(ok);
  BOOST_TEST(wait_all_ok({writer}));
  mgr.verify();
}

// Fast sets (an existing key, a value of the same size up to 8 bytes: no lock) racing
// everything that takes the lock or reads a snapshot. Two setters each set their k1 then their
// k2 to 1, 2, 3, ...; a churner inserts and erases other keys of the same dict (the table
// grows, fills with tombstones, is rebuilt) and erases and re-inserts a key a third setter
// sets; two snapshot readers check that no snapshot shows a moment that never was (k2 ahead of
// k1, or k1 more than one step ahead), and gets never see a value go back. `light_after`: how
// soon setters switch to fast sets without a fence (see lib/manager.cpp); returns how many
// sets the two setters made so.
namespace {

std::uint64_t race_fast_sets(std::uint32_t light_after) {
  const light_after_guard light(light_after);
  shmkit::manager mgr(64 * 1024);  // small: the churn makes it grow
  auto d = mgr.dict<std::string, long>("fast");
  constexpr int setters = 2;
  constexpr long min_rounds = 20000;
  auto k1 = [](int w) { return "k1." + std::to_string(w); };
  auto k2 = [](int w) { return "k2." + std::to_string(w); };
  for (int w = 0; w < setters; ++w) {
    d.set(k1(w), 0);
    d.set(k2(w), 0);
  }
  d.set("toggled", 0);
  // The leak check at the end compares the bytes in use with the churn keys gone. A hash table
  // does not shrink, so let it grow to what the churn may need first (up to its 3000 keys
  // live at once; 4500 make sure); then fill the free space with ballast, so that the churn
  // still makes the segment grow while the others race.
  for (int i = 0; i < 4500; ++i) d.set("churn." + std::to_string(i), 0);
  for (int i = 0; i < 4500; ++i) d.erase("churn." + std::to_string(i));
  auto ballast = mgr.dict<int, std::string>("ballast");
  for (int i = 0; mgr.free_bytes() > 8 * 1024; ++i) ballast.set(i, std::string(200, 'b'));
  const std::size_t used_before = mgr.stats().used_bytes;
  const std::size_t capacity_before = mgr.stats().capacity_bytes;
  shmkit::value<int> stop(0);
  shmkit::array<long> done(setters);
  shmkit::array<std::uint64_t> light_sets(setters);
  std::vector<pid_t> kids;
  for (int w = 0; w < setters; ++w)
    kids.push_back(spawn([&, w] {
      long r = 1;
      for (; r <= min_rounds || stop.load() == 0; ++r) {
        d.set(k1(w), r);
        d.set(k2(w), r);
      }
      done[static_cast<std::size_t>(w)] = r - 1;
      light_sets[static_cast<std::size_t>(w)] = shmkit::detail::manager_light_sets();
    }));
  const pid_t toggler = spawn([&] {
    for (long r = 1; stop.load() == 0; ++r) d.set("toggled", r);
  });
  const pid_t churner = spawn([&] {
    // At least 5000 rounds, whatever the readers' pace: enough that the table is rebuilt and
    // the segment grows during the race.
    for (int i = 0; i < 5000 || stop.load() == 0; ++i) {
      d.set("churn." + std::to_string(i % 3000), i);
      if (i % 3 == 2) d.erase("churn." + std::to_string((i + 1500) % 3000));
      if (i % 50 == 0) {
        d.erase("toggled");
        d.set("toggled", -1);
      }
    }
  });
  std::vector<pid_t> readers;
  for (int p = 0; p < 2; ++p)
    readers.push_back(spawn([&] {
      std::vector<long> last(setters, 0);
      for (int i = 0; i < 1500; ++i) {
        std::map<std::string, long> m;
        for (auto& [k, v] : d.items()) m[k] = v;
        for (int w = 0; w < setters; ++w) {
          const long a = m.at(k1(w)), b = m.at(k2(w));
          CHILD_CHECK(b <= a);
          CHILD_CHECK(a - b <= 1);
          const long g = d.get(k2(w));
          CHILD_CHECK(g >= last[w]);
          last[w] = g;
        }
      }
    }));
  const bool readers_ok = wait_all_ok(readers);
  stop.store(1);
  const bool setters_ok = wait_all_ok(kids);
  BOOST_TEST(setters_ok);
  BOOST_TEST(readers_ok);
  BOOST_TEST(wait_all_ok({toggler, churner}));
  for (int w = 0; w < setters; ++w) {
    const long n = done[static_cast<std::size_t>(w)];
    BOOST_TEST(n >= min_rounds);
    BOOST_TEST(d.get(k1(w)) == n);
    BOOST_TEST(d.get(k2(w)) == n);
  }
  mgr.verify();
  BOOST_TEST(mgr.stats().capacity_bytes > capacity_before);  // it grew during the race
  // Nothing leaked: with the churn keys gone, the bytes in use are as before.
  for (int i = 0; i < 3000; ++i) d.erase("churn." + std::to_string(i));
  d.set("toggled", 0);
  BOOST_TEST(mgr.stats().used_bytes == used_before);
  mgr.verify();
  return light_sets[0] + light_sets[1];
}

}  // namespace

BOOST_AUTO_TEST_CASE(fast_sets_race_erase_growth_and_snapshots) {
  race_fast_sets(shmkit::detail::manager_light_after);
}

// The same race with setters that switch to fast sets without a fence after two sets in a row
// with no write in between, so that the switch itself (on by a setter, off by every lock
// holder and snapshot, each then calling membarrier) races everything too.
BOOST_AUTO_TEST_CASE(light_fast_sets_race_erase_growth_and_snapshots) {
  const std::uint64_t light = race_fast_sets(1);
  if (shmkit::detail::register_light_fences())
    BOOST_TEST(light > 0u, "light sets: " << light);  // the light path did run
  else
    BOOST_TEST_MESSAGE("no membarrier here: fast sets always fenced");
}

namespace {

// Setter w's chain: keys c{w}.0 .. c{w}.63, set in order to round 1, 2, 3, ...; at every
// moment they read r+1, ..., r+1, r, ..., r, and each value names its key (a store landing
// under another key shows).
constexpr int chain_keys = 64;
std::string chain_key(int w, int j) { return "c" + std::to_string(w) + "." + std::to_string(j); }
long chain_value(int w, int j, long r) { return (long(w) << 48) | (long(j) << 40) | r; }

// Whether setter w's chain in `get`'s view is one moment of the setter's sequence.
template <class Get>
bool chain_ok(int w, Get&& get) {
  long first = 0, prev = 0;
  for (int j = 0; j < chain_keys; ++j) {
    const long v = get(chain_key(w, j));
    if ((v >> 40) != (chain_value(w, j, 0) >> 40)) return false;
    const long r = v & ((long(1) << 40) - 1);
    if (j == 0) first = r;
    if (j > 0 && r > prev) return false;
    prev = r;
  }
  return first - prev <= 1;
}

}  // namespace

// Fast sets without a fence (switched on after two quiet sets, switched off by every lock
// holder and snapshot) racing snapshots, a churner that inserts and erases keys (the table
// grows and is rebuilt, entries are freed) and updates under the lock: every snapshot is one
// moment of each setter's chain, no value lands under another key, gets never go back.
BOOST_AUTO_TEST_CASE(light_fast_sets_never_land_in_a_snapshot) {
  const light_after_guard light(1);
  shmkit::manager mgr;
  auto d = mgr.dict<std::string, long>("chain");
  constexpr int setters = 2;
  for (int w = 0; w < setters; ++w)
    for (int j = 0; j < chain_keys; ++j) d.set(chain_key(w, j), chain_value(w, j, 0));
  d.set("counter", 0);
  shmkit::value<int> stop(0);
  shmkit::array<std::uint64_t> light_sets(setters);
  std::vector<pid_t> kids;
  for (int w = 0; w < setters; ++w)
    kids.push_back(spawn([&, w] {
      for (long r = 1; stop.load() == 0; ++r)
        for (int j = 0; j < chain_keys; ++j) d.set(chain_key(w, j), chain_value(w, j, r));
      light_sets[static_cast<std::size_t>(w)] = shmkit::detail::manager_light_sets();
    }));
  kids.push_back(spawn([&] {  // the churner
    for (int i = 0; stop.load() == 0; ++i) {
      d.set("x." + std::to_string(i % 2000), i);
      if (i % 3 == 2) d.erase("x." + std::to_string((i + 1000) % 2000));
      if (i % 7 == 0) d.update("counter", [](long& v) { ++v; });
    }
  }));
  std::vector<pid_t> readers;
  for (int p = 0; p < 2; ++p)
    readers.push_back(spawn([&] {
      std::vector<long> last(setters, 0);
      for (int i = 0; i < 600; ++i) {
        std::map<std::string, long> m;
        for (auto& [k, v] : d.items()) m[k] = v;
        for (int w = 0; w < setters; ++w) {
          CHILD_CHECK(chain_ok(w, [&](const std::string& k) { return m.at(k); }));
          const long g = d.get(chain_key(w, chain_keys - 1)) & ((long(1) << 40) - 1);
          CHILD_CHECK(g >= last[w]);
          last[w] = g;
        }
      }
    }));
  const bool readers_ok = wait_all_ok(readers);
  stop.store(1);
  BOOST_TEST(wait_all_ok(kids));
  BOOST_TEST(readers_ok);
  for (int w = 0; w < setters; ++w)
    BOOST_TEST(chain_ok(w, [&](const std::string& k) { return d.get(k); }));
  mgr.verify();
  const std::uint64_t n = light_sets[0] + light_sets[1];
  BOOST_TEST_MESSAGE("fast sets without a fence: " << n);
  if (shmkit::detail::register_light_fences())
    BOOST_TEST(n > 0u, "light sets: " << n);  // the light path did run
  else
    BOOST_TEST_MESSAGE("no membarrier here: fast sets always fenced");
}

// What the shmkit command shows for a manager: its containers, their types and sizes.
BOOST_AUTO_TEST_CASE(inspected_by_the_shmkit_command) {
  const name_guard g(unique_name("inspect"));
  shmkit::manager mgr(shmkit::create_only, g.name);
  auto d = mgr.dict<std::string, int>("scores");
  d.set("a", 1);
  d.set("b", 2);
  d.set("a", 3);  // a fast set: this thread claims a setter slot
  mgr.list<double>("samples").push_back(1.5);
  const auto report = shmkit::detail::inspect_file("shmkit." + g.name);
  BOOST_TEST(report.details_problem == "");
  std::map<std::string, std::string> lines(report.details.begin(), report.details.end());
  BOOST_TEST(lines["containers"] == "2");
  BOOST_TEST(lines["  scores"] == "shared_dict<std::string, int>, 2 entries");
  BOOST_TEST(lines["  samples"] == "shared_list<double>, 1 items");
  BOOST_TEST(contains(lines["memory"], "free"));
  BOOST_TEST(lines["fast sets"] == "fenced, 1 setter slot owned");
}

BOOST_AUTO_TEST_CASE(stats_are_consistent) {
  shmkit::manager mgr(1 << 20);
  const auto s0 = mgr.stats();
  BOOST_TEST(s0.containers == 0u);
  BOOST_TEST(s0.free_bytes + s0.used_bytes < s0.capacity_bytes);  // the root is neither
  auto d = mgr.dict<int, int>("s");
  for (int i = 0; i < 100; ++i) d.set(i, i);
  const auto s1 = mgr.stats();
  BOOST_TEST(s1.containers == 1u);
  BOOST_TEST(s1.free_bytes + s1.used_bytes == s0.free_bytes + s0.used_bytes);
  BOOST_TEST(s1.free_bytes < s0.free_bytes);
  BOOST_TEST(s1.recoveries == 0u);
}
