// SPDX-License-Identifier: MIT
// The codec: round trips of every supported type, the byte format, exact sizes, every way
// bytes can be wrong (truncated, trailing, malformed, garbage) and the compile-time refusals.
#define BOOST_TEST_MODULE codec
#include <boost/test/unit_test.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

#include "shmkit/codec.hpp"

namespace {

using bytes = std::vector<std::byte>;

enum class color : std::uint8_t { red, green, blue };

// Trivially copyable and without padding: goes raw.
struct point {
  std::int32_t x;
  std::int32_t y;
  double z;
  friend bool operator==(const point&, const point&) = default;
};

struct person {
  std::string name;
  int age = 0;
  std::vector<double> scores;
  std::optional<bool> admin;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(name, age, scores, admin);
  }
  friend bool operator==(const person&, const person&) = default;
};

// A user type holding user types, containers and a raw struct.
struct team {
  std::string title;
  std::vector<person> members;
  std::map<std::string, person> by_role;
  std::variant<int, person> lead;
  point where{};
  template <class Ar>
  void serialize(Ar& ar) {
    ar(title, members, by_role, lead, where);
  }
  friend bool operator==(const team&, const team&) = default;
};

// Trivially copyable, but its serialize() wins, so the bool is checked on decode.
struct flags {
  std::int32_t n = 0;
  bool on = false;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(n, on);
  }
  friend bool operator==(const flags&, const flags&) = default;
};

// Encodes to nothing.
struct empty_tag {
  template <class Ar>
  void serialize(Ar&) {}
  friend bool operator==(const empty_tag&, const empty_tag&) = default;
};

// --- compile-time facts ---------------------------------------------------------------------

static_assert(shmkit::encodable<int>);
static_assert(shmkit::encodable<const int>);
static_assert(shmkit::encodable<point>);
static_assert(shmkit::encodable<person>);
static_assert(shmkit::encodable<team>);
static_assert(shmkit::encodable<std::map<std::string, std::vector<std::optional<person>>>>);
static_assert(!shmkit::encodable<int*>);
static_assert(!shmkit::encodable<const char*>);
static_assert(!shmkit::encodable<int point::*>);
static_assert(!shmkit::encodable<void (*)()>);
static_assert(!shmkit::encodable<std::vector<int*>>);
static_assert(!shmkit::encodable<std::array<int*, 2>>);
static_assert(!shmkit::encodable<std::pair<int, const char*>>);
static_assert(!shmkit::encodable<std::string_view>);
static_assert(!shmkit::encodable<std::span<int>>);
static_assert(!shmkit::encodable<std::vector<std::string_view>>);
static_assert(!shmkit::encodable<std::reference_wrapper<int>>);
static_assert(!shmkit::encodable<std::vector<int&>*>);

static_assert(shmkit::is_raw_encodable_v<int>);
static_assert(shmkit::is_raw_encodable_v<point>);
static_assert(shmkit::is_raw_encodable_v<color>);
static_assert(shmkit::is_raw_encodable_v<std::array<point, 4>>);
static_assert(shmkit::is_raw_encodable_v<int[3]>);
static_assert(!shmkit::is_raw_encodable_v<bool>);
static_assert(!shmkit::is_raw_encodable_v<std::array<bool, 4>>);
static_assert(!shmkit::is_raw_encodable_v<std::optional<int>>);
static_assert(!shmkit::is_raw_encodable_v<std::variant<int, float>>);
static_assert(!shmkit::is_raw_encodable_v<std::pair<int, int>>);
static_assert(!shmkit::is_raw_encodable_v<std::string>);
static_assert(!shmkit::is_raw_encodable_v<flags>);
static_assert(!shmkit::is_raw_encodable_v<int*>);
static_assert(!shmkit::is_raw_encodable_v<std::monostate>);  // one byte of nothing
static_assert(!shmkit::is_raw_encodable_v<std::array<int, 0>>);

// --- helpers ----------------------------------------------------------------------------------

bytes from(std::initializer_list<int> v) {
  bytes b;
  for (int x : v) b.push_back(static_cast<std::byte>(x));
  return b;
}

bytes le64(std::uint64_t n) {
  bytes b(8);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<std::byte>(n >> (8 * i));
  return b;
}

bytes cat(bytes a, const bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

template <class T>
std::string what_of(const bytes& b) {
  try {
    (void)shmkit::decode<T>(b);
  } catch (const shmkit::error& e) {
    return e.what();
  }
  return "(decoded)";
}

// Decoding `in` as T either throws shmkit::error or gives a value that encodes to `in`.
// Anything else (another exception, a crash, a different encoding) is a failure.
enum class outcome { threw, decoded, failed };

template <class T>
outcome decode_garbage(const bytes& in, std::string& why) {
  try {
    T v = shmkit::decode<T>(in);
    if (shmkit::encode(v) != in) {
      why = "decoded, but re-encodes to other bytes";
      return outcome::failed;
    }
    if (shmkit::encoded_size(v) != in.size()) {
      why = "decoded, but encoded_size differs";
      return outcome::failed;
    }
    return outcome::decoded;
  } catch (const shmkit::error&) {
    return outcome::threw;
  } catch (const std::exception& e) {
    why = std::string("threw a non-shmkit exception: ") + e.what();
    return outcome::failed;
  }
}

// --- sample values ----------------------------------------------------------------------------

person alice() { return {"alice", 31, {1.5, -2.25, 1e300}, true}; }
person bob() { return {"bob", 0, {}, std::nullopt}; }

template <class T>
std::vector<T> samples();

template <>
std::vector<int> samples() { return {0, 1, -1, std::numeric_limits<int>::max(), 0x01020304}; }
template <>
std::vector<double> samples() { return {0.0, -0.0, 3.5, -1e-300, std::numeric_limits<double>::infinity()}; }
template <>
std::vector<char> samples() { return {'\0', 'a', '\xff'}; }
template <>
std::vector<bool> samples() { return {false, true}; }
template <>
std::vector<color> samples() { return {color::red, color::blue}; }
template <>
std::vector<point> samples() { return {{}, {1, -2, 3.25}}; }
template <>
std::vector<std::string> samples() {
  return {"", "a", "hello, world", std::string("nul\0inside", 10), std::string(1000, 'x')};
}
template <>
std::vector<std::wstring> samples() { return {L"", L"wide \u00e9"}; }
template <>
std::vector<std::vector<int>> samples() { return {{}, {7}, {1, 2, 3, -4}}; }
template <>
std::vector<std::vector<std::string>> samples() { return {{}, {""}, {"a", "", "ccc"}}; }
template <>
std::vector<std::vector<bool>> samples() { return {{}, {true}, {true, false, false, true, true}}; }
template <>
std::vector<std::vector<point>> samples() { return {{}, {{1, 2, 3}, {4, 5, 6}}}; }
template <>
std::vector<std::vector<std::vector<std::string>>> samples() { return {{}, {{}, {"x"}, {"y", "zz"}}}; }
template <>
std::vector<std::array<int, 3>> samples() { return {{1, 2, 3}}; }
template <>
std::vector<std::array<std::string, 2>> samples() { return {{"", ""}, {"left", "right"}}; }
template <>
std::vector<std::array<bool, 3>> samples() { return {{true, false, true}}; }
template <>
std::vector<std::map<std::string, int>> samples() { return {{}, {{"a", 1}, {"b", 2}, {"", -3}}}; }
template <>
std::vector<std::multimap<int, std::string>> samples() { return {{}, {{1, "x"}, {1, "y"}, {0, "z"}}}; }
template <>
std::vector<std::unordered_map<int, std::string>> samples() { return {{}, {{5, "five"}, {-1, ""}, {9, "nine"}}}; }
template <>
std::vector<std::unordered_map<std::string, std::vector<int>>> samples() {
  return {{}, {{"k", {1, 2}}, {"", {}}, {"zz", {3}}}};
}
template <>
std::vector<std::set<int>> samples() { return {{}, {3, 1, 2}}; }
template <>
std::vector<std::multiset<std::string>> samples() { return {{}, {"b", "a", "b"}}; }
template <>
std::vector<std::unordered_set<std::string>> samples() { return {{}, {"x", "y", "", "w"}}; }
template <>
std::vector<std::pair<int, std::string>> samples() { return {{0, ""}, {-5, "five"}}; }
template <>
std::vector<std::tuple<int, std::string, double>> samples() { return {{}, {1, "one", 1.0}}; }
template <>
std::vector<std::tuple<>> samples() { return {{}}; }
template <>
std::vector<std::monostate> samples() { return {{}}; }
template <>
std::vector<std::array<std::string, 0>> samples() { return {{}}; }
template <>
std::vector<std::array<int, 0>> samples() { return {{}}; }
template <>
std::vector<std::optional<int>> samples() { return {std::nullopt, 0, 42}; }
template <>
std::vector<std::optional<std::string>> samples() { return {std::nullopt, "", "text"}; }
template <>
std::vector<std::variant<int, std::string>> samples() { return {0, 7, "", "str"}; }
template <>
std::vector<std::variant<std::monostate, person, std::vector<int>>> samples() {
  return {std::monostate{}, alice(), std::vector<int>{1, 2}};
}
template <>
std::vector<person> samples() { return {person{}, alice(), bob()}; }
template <>
std::vector<team> samples() {
  team t{"core", {alice(), bob()}, {{"lead", alice()}, {"ops", bob()}}, bob(), {1, 2, 3}};
  return {team{}, t};
}
template <>
std::vector<flags> samples() { return {{}, {-7, true}}; }
template <>
std::vector<empty_tag> samples() { return {{}}; }
template <>
std::vector<std::map<std::string, std::vector<double>>> samples() {
  return {{}, {{"a", {}}, {"b", {1.0, 2.0}}}};
}
template <>
std::vector<std::vector<std::optional<std::variant<int, std::string>>>> samples() {
  return {{}, {std::nullopt, 3, std::string("s")}};
}
template <>
std::vector<std::optional<std::pair<int, std::string>>> samples() {
  return {std::nullopt, std::pair<int, std::string>{1, "x"}};
}
template <>
std::vector<std::vector<empty_tag>> samples() { return {{}}; }

using all_types = std::tuple<
    int, double, char, bool, color, point, std::string, std::wstring, std::vector<int>,
    std::vector<std::string>, std::vector<bool>, std::vector<point>,
    std::vector<std::vector<std::string>>, std::array<int, 3>,
    std::array<std::string, 2>, std::array<bool, 3>, std::map<std::string, int>,
    std::multimap<int, std::string>, std::unordered_map<int, std::string>,
    std::unordered_map<std::string, std::vector<int>>, std::set<int>,
    std::multiset<std::string>, std::unordered_set<std::string>, std::pair<int, std::string>,
    std::tuple<int, std::string, double>, std::tuple<>, std::monostate,
    std::array<std::string, 0>, std::array<int, 0>, std::optional<int>,
    std::optional<std::string>, std::variant<int, std::string>,
    std::variant<std::monostate, person, std::vector<int>>, person, team, flags, empty_tag,
    std::map<std::string, std::vector<double>>,
    std::vector<std::optional<std::variant<int, std::string>>>,
    std::optional<std::pair<int, std::string>>, std::vector<empty_tag>>;

}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(round_trip_sizes_truncations_and_trailing_bytes, T, all_types) {
  for (const T& v : samples<T>()) {
    const bytes b = shmkit::encode(v);
    BOOST_TEST(shmkit::encoded_size(v) == b.size());
    BOOST_TEST((shmkit::decode<T>(b) == v));
    BOOST_TEST((shmkit::encode(shmkit::decode<T>(b)) == b));

    // encode_into writes exactly encoded_size bytes and nothing past them.
    bytes out(b.size() + 3, std::byte{0xee});
    shmkit::encode_into(v, std::span(out));
    BOOST_TEST((bytes(out.begin(), out.begin() + b.size()) == b));
    BOOST_TEST((out[b.size()] == std::byte{0xee} && out.back() == std::byte{0xee}));
    if (!b.empty()) {
      bytes small(b.size() - 1);
      BOOST_CHECK_THROW(shmkit::encode_into(v, std::span(small)), shmkit::error);
    }

    // decode_into overwrites whatever the target held.
    for (const T& other : samples<T>()) {
      T target = other;
      shmkit::decode_into(b, target);
      BOOST_TEST((target == v));
    }

    // Every proper prefix is too short; any extra byte is too long.
    for (std::size_t k = 0; k < b.size(); ++k)
      BOOST_CHECK_THROW(shmkit::decode<T>(std::span(b.data(), k)), shmkit::error);
    BOOST_CHECK_THROW(shmkit::decode<T>(cat(b, from({0}))), shmkit::error);
    BOOST_CHECK_THROW(shmkit::decode<T>(cat(b, le64(0))), shmkit::error);
  }
}

BOOST_AUTO_TEST_CASE(raw_types_are_their_memory) {
  const point p{1, -2, 3.25};
  const bytes b = shmkit::encode(p);
  BOOST_TEST(b.size() == sizeof(point));
  BOOST_TEST(std::memcmp(b.data(), &p, sizeof p) == 0);
  BOOST_TEST(shmkit::encoded_size(p) == sizeof(point));
  std::array<std::byte, sizeof(int)> out{};
  shmkit::encode_into(0x01020304, std::span(out));
  BOOST_TEST((bytes(out.begin(), out.end()) == shmkit::encode(0x01020304)));
  BOOST_CHECK_THROW(shmkit::decode<int>(from({1, 2, 3})), shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<int>(from({1, 2, 3, 4, 5})), shmkit::error);
  std::array<std::byte, 3> small{};
  BOOST_CHECK_THROW(shmkit::encode_into(7, std::span(small)), shmkit::error);
}

BOOST_AUTO_TEST_CASE(byte_format) {
  BOOST_TEST((shmkit::encode(std::string("ab")) == cat(le64(2), from({'a', 'b'}))));
  BOOST_TEST((shmkit::encode(std::vector<std::uint16_t>{1, 0x0302}) ==
              cat(le64(2), from({1, 0, 2, 3}))));
  BOOST_TEST((shmkit::encode(true) == from({1})));
  BOOST_TEST((shmkit::encode(std::optional<std::uint8_t>{}) == from({0})));
  BOOST_TEST((shmkit::encode(std::optional<std::uint8_t>{9}) == from({1, 9})));
  BOOST_TEST((shmkit::encode(std::variant<std::uint8_t, bool>{true}) == from({1, 1})));
  BOOST_TEST((shmkit::encode(std::pair<std::uint8_t, std::int32_t>{1, 2}) ==
              from({1, 2, 0, 0, 0})));
  BOOST_TEST((shmkit::encode(std::array<bool, 2>{true, false}) == from({1, 0})));
  BOOST_TEST((shmkit::encode(std::map<std::uint8_t, bool>{{2, true}, {1, false}}) ==
              cat(le64(2), from({1, 0, 2, 1}))));
  BOOST_TEST((shmkit::encode(flags{3, true}) == from({3, 0, 0, 0, 1})));
  BOOST_TEST(shmkit::encode(empty_tag{}).empty());
  BOOST_TEST(shmkit::encode(std::monostate{}).empty());
  BOOST_TEST((shmkit::encode(std::variant<std::monostate, int>{}) == from({0})));
  BOOST_TEST(shmkit::encode(std::array<int, 0>{}).empty());
}

BOOST_AUTO_TEST_CASE(large_values) {
  std::string s(1 << 20, '\0');
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 7 + i / 251);
  const bytes b = shmkit::encode(s);
  BOOST_TEST(b.size() == s.size() + 8);
  BOOST_TEST((shmkit::decode<std::string>(b) == s));
  for (std::size_t k : {std::size_t{0}, std::size_t{7}, std::size_t{8}, b.size() / 2, b.size() - 1})
    BOOST_CHECK_THROW(shmkit::decode<std::string>(std::span(b.data(), k)), shmkit::error);

  std::vector<int> v(1 << 18);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int>(i * 2654435761u);
  BOOST_TEST((shmkit::decode<std::vector<int>>(shmkit::encode(v)) == v));

  std::vector<std::string> many(10000, "x");
  BOOST_TEST((shmkit::decode<std::vector<std::string>>(shmkit::encode(many)) == many));
}

BOOST_AUTO_TEST_CASE(malformed_values_throw) {
  BOOST_CHECK_THROW(shmkit::decode<bool>(from({2})), shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<std::vector<bool>>(cat(le64(2), from({1, 7}))), shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<std::optional<int>>(from({2, 0, 0, 0, 0})), shmkit::error);
  BOOST_CHECK_THROW((shmkit::decode<std::variant<int, std::string>>(from({2, 0, 0, 0, 0}))),
                    shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<flags>(from({1, 0, 0, 0, 2})), shmkit::error);

  // A sequence of pairs has the same layout as a map: craft disordered and repeated keys.
  using kv = std::vector<std::pair<int, int>>;
  const bytes ordered = shmkit::encode(kv{{1, 0}, {2, 0}});
  const bytes disordered = shmkit::encode(kv{{2, 0}, {1, 0}});
  const bytes repeated = shmkit::encode(kv{{1, 0}, {1, 5}});
  BOOST_TEST((shmkit::decode<std::map<int, int>>(ordered) == std::map<int, int>{{1, 0}, {2, 0}}));
  BOOST_CHECK_THROW((shmkit::decode<std::map<int, int>>(disordered)), shmkit::error);
  BOOST_CHECK_THROW((shmkit::decode<std::map<int, int>>(repeated)), shmkit::error);
  BOOST_CHECK_THROW((shmkit::decode<std::unordered_map<int, int>>(disordered)), shmkit::error);
  BOOST_CHECK_THROW((shmkit::decode<std::unordered_map<int, int>>(repeated)), shmkit::error);
  BOOST_TEST((shmkit::decode<std::multimap<int, int>>(repeated).size() == 2));
  BOOST_CHECK_THROW((shmkit::decode<std::multimap<int, int>>(disordered)), shmkit::error);
  const bytes set_repeated = shmkit::encode(std::vector<int>{4, 4});
  BOOST_CHECK_THROW(shmkit::decode<std::set<int>>(set_repeated), shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<std::unordered_set<int>>(set_repeated), shmkit::error);
  BOOST_TEST(shmkit::decode<std::multiset<int>>(set_repeated).size() == 2);
}

BOOST_AUTO_TEST_CASE(error_messages_name_the_type_and_the_problem) {
  const std::string m1 = what_of<std::vector<int>>(cat(le64(4000), bytes(12)));
  BOOST_TEST_MESSAGE(m1);
  BOOST_TEST(m1.find("cannot decode std::vector<int>") != std::string::npos);
  BOOST_TEST(m1.find("12 bytes left") != std::string::npos);
  BOOST_TEST(m1.find("length prefix") != std::string::npos);
  BOOST_TEST(m1.find("4000") != std::string::npos);

  using nested = std::map<std::string, std::vector<double>>;
  const std::string m2 = what_of<nested>(cat(cat(cat(le64(1), le64(1)), from({'k'})), le64(99)));
  BOOST_TEST_MESSAGE(m2);
  BOOST_TEST(m2.find("std::map<std::string, std::vector<double>>") != std::string::npos);
  BOOST_TEST(m2.find("in its std::vector<double>") != std::string::npos);

  const std::string m3 = what_of<int>(from({1}));
  BOOST_TEST(m3.find("expected exactly 4 bytes, found 1") != std::string::npos);
  const std::string m4 = what_of<std::string>(cat(le64(0), from({1, 2})));
  BOOST_TEST(m4.find("2 trailing bytes") != std::string::npos);
  const std::string m5 = what_of<bool>(from({9}));
  BOOST_TEST(m5.find("found 9") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(length_prefixes_are_checked_before_allocating) {
  for (std::uint64_t n : {std::uint64_t{1} << 62, ~std::uint64_t{0}, std::uint64_t{1} << 32}) {
    BOOST_CHECK_THROW(shmkit::decode<std::string>(le64(n)), shmkit::error);
    BOOST_CHECK_THROW(shmkit::decode<std::vector<std::string>>(le64(n)), shmkit::error);
    BOOST_CHECK_THROW(shmkit::decode<std::vector<person>>(le64(n)), shmkit::error);
    BOOST_CHECK_THROW((shmkit::decode<std::map<int, std::string>>(le64(n))), shmkit::error);
    BOOST_CHECK_THROW((shmkit::decode<std::unordered_map<int, int>>(le64(n))), shmkit::error);
  }
}

namespace {
// Records the largest single allocation.
inline std::size_t largest_allocation = 0;
template <class T>
struct tracking_allocator {
  using value_type = T;
  tracking_allocator() = default;
  template <class U>
  tracking_allocator(const tracking_allocator<U>&) {}
  T* allocate(std::size_t n) {
    largest_allocation = std::max(largest_allocation, n * sizeof(T));
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) { std::allocator<T>().deallocate(p, n); }
  friend bool operator==(const tracking_allocator&, const tracking_allocator&) = default;
};
}  // namespace

BOOST_AUTO_TEST_CASE(memory_reserved_ahead_is_bounded_by_the_input) {
  // 1000 optional 4 KiB arrays claimed, each at least 1 byte: the claim fits in the input, but
  // reserving for it up front would take 4 MiB for a 1 KiB input whose first flag is bad.
  using big = std::array<char, 4096>;
  using vec = std::vector<std::optional<big>, tracking_allocator<std::optional<big>>>;
  bytes in = cat(le64(1000), bytes(1000, std::byte{0}));
  in[8] = std::byte{7};
  largest_allocation = 0;
  BOOST_CHECK_THROW(shmkit::decode<vec>(in), shmkit::error);
  BOOST_TEST(largest_allocation <= 4 * in.size() + sizeof(std::optional<big>));

  // Valid input of the same shape decodes: the vector grows as its elements arrive.
  in[8] = std::byte{0};
  BOOST_TEST(shmkit::decode<vec>(in).size() == 1000u);
}

BOOST_AUTO_TEST_CASE(elements_that_encode_to_nothing_are_refused) {
  BOOST_TEST(shmkit::encode(std::vector<empty_tag>{}).size() == 8u);
  BOOST_CHECK_THROW(shmkit::encode(std::vector<empty_tag>(3)), shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<std::vector<empty_tag>>(le64(3)), shmkit::error);
  BOOST_CHECK_THROW(shmkit::decode<std::vector<empty_tag>>(le64(~std::uint64_t{0})),
                    shmkit::error);
  // Inside an optional or a struct they are fine: something else bounds them.
  std::optional<empty_tag> o = empty_tag{};
  BOOST_TEST((shmkit::decode<std::optional<empty_tag>>(shmkit::encode(o)) == o));
}

BOOST_AUTO_TEST_CASE(unordered_containers_encode_deterministically) {
  std::unordered_map<std::string, int> a, b;
  for (int i = 0; i < 200; ++i) a[std::to_string(i)] = i;
  b.reserve(1000);
  for (int i = 199; i >= 0; --i) b[std::to_string(i)] = i;
  BOOST_TEST((shmkit::encode(a) == shmkit::encode(b)));
  std::unordered_set<int> s1{1, 2, 3, 4}, s2{4, 3, 2, 1};
  BOOST_TEST((shmkit::encode(s1) == shmkit::encode(s2)));
}

namespace {
// Keeps a derived field out of the bytes and rebuilds it after decoding; extends a base.
struct base_part {
  std::string label;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(label);
  }
};
struct indexed : base_part {
  std::vector<int> items;
  std::size_t sum = 0;  // derived from items, not encoded
  template <class Ar>
  void serialize(Ar& ar) {
    ar(static_cast<base_part&>(*this), items);
    if constexpr (Ar::loading) {
      sum = 0;
      for (int i : items) sum += static_cast<std::size_t>(i);
    }
  }
};
}  // namespace

BOOST_AUTO_TEST_CASE(serialize_can_tell_loading_and_call_its_base) {
  indexed v;
  v.label = "l";
  v.items = {1, 2, 3};
  const bytes b = shmkit::encode(v);
  BOOST_TEST(b.size() == 8 + 1 + 8 + 3 * sizeof(int));
  const indexed d = shmkit::decode<indexed>(b);
  BOOST_TEST(d.label == "l");
  BOOST_TEST((d.items == std::vector<int>{1, 2, 3}));
  BOOST_TEST(d.sum == 6u);
}

BOOST_AUTO_TEST_CASE(decode_into_reuses_capacity) {
  std::vector<int> v;
  v.reserve(100);
  const int* before = v.data();
  shmkit::decode_into(shmkit::encode(std::vector<int>{1, 2, 3}), v);
  BOOST_TEST(v.data() == before);
  BOOST_TEST((v == std::vector<int>{1, 2, 3}));
}

// --- garbage: random bytes, truncations and mutations of valid encodings ---------------------

namespace {

using rng_t = std::mt19937_64;

template <class T>
struct gen;

template <class T>
T random_value(rng_t& g, int depth = 0) {
  return gen<T>::make(g, depth);
}

std::size_t small_count(rng_t& g, int depth) {
  return depth > 2 ? 0 : std::uniform_int_distribution<std::size_t>(0, 4)(g);
}

template <>
struct gen<int> {
  static int make(rng_t& g, int) {
    return g() % 3 == 0 ? static_cast<int>(g() % 5) : static_cast<int>(g());
  }
};
template <>
struct gen<bool> {
  static bool make(rng_t& g, int) { return g() & 1; }
};
template <>
struct gen<double> {
  static double make(rng_t& g, int) {
    std::uint64_t bits = g();  // any bit pattern, NaNs included: raw bytes go back unchanged
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return g() % 2 ? d : static_cast<double>(g() % 100);
  }
};
template <>
struct gen<std::string> {
  static std::string make(rng_t& g, int depth) {
    std::string s(small_count(g, depth) * (g() % 3), '\0');
    for (char& c : s) c = static_cast<char>(g());
    return s;
  }
};
template <class E>
struct gen<std::vector<E>> {
  static std::vector<E> make(rng_t& g, int depth) {
    std::vector<E> v(small_count(g, depth));
    for (E& e : v) e = random_value<E>(g, depth + 1);
    return v;
  }
};
template <class M>
struct map_gen {
  static M make(rng_t& g, int depth) {
    M m;
    for (std::size_t n = small_count(g, depth); n > 0; --n)
      m[random_value<typename M::key_type>(g, depth + 1)] =
          random_value<typename M::mapped_type>(g, depth + 1);
    return m;
  }
};
template <class K, class V>
struct gen<std::map<K, V>> : map_gen<std::map<K, V>> {};
template <class K, class V>
struct gen<std::unordered_map<K, V>> : map_gen<std::unordered_map<K, V>> {};
template <class A, class B>
struct gen<std::pair<A, B>> {
  static std::pair<A, B> make(rng_t& g, int depth) {
    return {random_value<A>(g, depth + 1), random_value<B>(g, depth + 1)};
  }
};
template <class E>
struct gen<std::optional<E>> {
  static std::optional<E> make(rng_t& g, int depth) {
    if (g() % 3 == 0) return std::nullopt;
    return random_value<E>(g, depth + 1);
  }
};
template <>
struct gen<std::variant<int, std::string>> {
  static std::variant<int, std::string> make(rng_t& g, int depth) {
    if (g() % 2) return random_value<int>(g, depth + 1);
    return random_value<std::string>(g, depth + 1);
  }
};
template <>
struct gen<person> {
  static person make(rng_t& g, int depth) {
    return {random_value<std::string>(g, depth + 1), random_value<int>(g, depth + 1),
            random_value<std::vector<double>>(g, depth + 1),
            random_value<std::optional<bool>>(g, depth + 1)};
  }
};

bytes random_bytes(rng_t& g, std::size_t max_len) {
  bytes b(std::uniform_int_distribution<std::size_t>(0, max_len)(g));
  for (auto& x : b) x = static_cast<std::byte>(g() % 4 == 0 ? g() % 3 : g());
  return b;
}

// One of: random bytes, a valid encoding, a truncated one, or one with a few bytes mutated,
// inserted, removed or a length field rewritten to a small number.
template <class T>
bytes garbage(rng_t& g) {
  const int kind = static_cast<int>(g() % 5);
  if (kind == 0) return random_bytes(g, 64);
  bytes b = shmkit::encode(random_value<T>(g));
  if (kind == 1) return b;
  if (kind == 2) {
    b.resize(b.empty() ? 0 : g() % b.size());
    return b;
  }
  for (int m = 1 + static_cast<int>(g() % 3); m > 0; --m) {
    const std::size_t at = b.empty() ? 0 : g() % b.size();
    switch (g() % 5) {
      case 0:
        if (!b.empty()) b[at] ^= static_cast<std::byte>(1u << (g() % 8));
        break;
      case 1:
        if (!b.empty()) b[at] = static_cast<std::byte>(g() % 4 == 0 ? 0xff : g() % 3);
        break;
      case 2:
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), static_cast<std::byte>(g()));
        break;
      case 3:
        if (!b.empty()) b.erase(b.begin() + static_cast<std::ptrdiff_t>(at));
        break;
      case 4:
        if (b.size() >= at + 8) {
          const bytes n = le64(g() % 6);
          std::copy(n.begin(), n.end(), b.begin() + static_cast<std::ptrdiff_t>(at));
        }
        break;
    }
  }
  return b;
}

template <class T>
void fuzz(std::uint64_t seed) {
  rng_t g(seed);
  int failures = 0, decoded = 0;
  for (int i = 0; i < 10000; ++i) {
    const bytes in = garbage<T>(g);
    std::string why;
    const outcome o = decode_garbage<T>(in, why);
    decoded += o == outcome::decoded;
    if (o == outcome::failed && ++failures <= 3)
      BOOST_ERROR("seed " << seed << " input " << i << " (" << in.size() << " bytes): " << why);
  }
  BOOST_TEST(failures == 0);
  BOOST_TEST_MESSAGE(shmkit::detail::readable_type_name<T>() << ": " << decoded
                                                             << " of 10000 inputs decoded");
  BOOST_TEST(decoded > 0);  // the mutations do reach valid values
}

}  // namespace

using fuzz_types = std::tuple<std::string, std::vector<int>,
                              std::map<std::string, std::vector<double>>,
                              std::variant<int, std::string>,
                              std::optional<std::pair<int, std::string>>, person,
                              std::unordered_map<std::string, int>>;

BOOST_AUTO_TEST_CASE_TEMPLATE(garbage_throws_or_decodes_to_a_value_with_the_same_bytes, T,
                              fuzz_types) {
  fuzz<T>(0x5eed0000u + sizeof(T));
}
