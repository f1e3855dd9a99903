// SPDX-License-Identifier: MIT
// Codec cases: encode + decode round trips through the public API (a fresh byte vector and a
// fresh value each time) against hand-written memcpy code producing the same bytes, the
// floor any codec can reach.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness.hpp"
#include "shmkit/codec.hpp"

using namespace shmkit::bench;

namespace {

using bytes = std::vector<std::byte>;

struct record {
  std::int32_t id = 0;
  double score = 0;
  std::string name;
  std::vector<std::int32_t> tags;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(id, score, name, tags);
  }
  friend bool operator==(const record&, const record&) = default;
};

struct point {
  double x, y, z;
  std::int64_t t;
  friend bool operator==(const point&, const point&) = default;
};

// --- hand-written baselines: same bytes, checked decode, no generality ----------------------

void put(bytes& out, std::size_t& at, const void* p, std::size_t n) {
  std::memcpy(out.data() + at, p, n);
  at += n;
}
void get(const bytes& in, std::size_t& at, void* p, std::size_t n) {
  if (n > in.size() - at) throw std::runtime_error("truncated");
  std::memcpy(p, in.data() + at, n);
  at += n;
}
template <class T>
void put_seq(bytes& out, std::size_t& at, const T& seq) {
  const std::uint64_t n = seq.size();
  put(out, at, &n, 8);
  put(out, at, seq.data(), n * sizeof(seq[0]));
}
std::uint64_t get_length(const bytes& in, std::size_t& at, std::size_t element) {
  std::uint64_t n;
  get(in, at, &n, 8);
  if (n > (in.size() - at) / element) throw std::runtime_error("bad length");
  return n;
}
void get_seq(const bytes& in, std::size_t& at, std::vector<std::int32_t>& v) {
  v.resize(get_length(in, at, 4));
  get(in, at, v.data(), v.size() * 4);
}
void get_seq(const bytes& in, std::size_t& at, std::string& s) {
  const std::uint64_t n = get_length(in, at, 1);
  s.assign(reinterpret_cast<const char*>(in.data() + at), n);
  at += n;
}

bytes hand_encode(const std::vector<std::int32_t>& v) {
  bytes out(8 + v.size() * 4);
  std::size_t at = 0;
  put_seq(out, at, v);
  return out;
}
std::vector<std::int32_t> hand_decode_ints(const bytes& in) {
  std::vector<std::int32_t> v;
  std::size_t at = 0;
  get_seq(in, at, v);
  if (at != in.size()) throw std::runtime_error("trailing bytes");
  return v;
}

bytes hand_encode(const std::string& s) {
  bytes out(8 + s.size());
  std::size_t at = 0;
  put_seq(out, at, s);
  return out;
}
std::string hand_decode_string(const bytes& in) {
  std::string s;
  std::size_t at = 0;
  get_seq(in, at, s);
  if (at != in.size()) throw std::runtime_error("trailing bytes");
  return s;
}

bytes hand_encode(const record& r) {
  bytes out(4 + 8 + 8 + r.name.size() + 8 + r.tags.size() * 4);
  std::size_t at = 0;
  put(out, at, &r.id, 4);
  put(out, at, &r.score, 8);
  put_seq(out, at, r.name);
  put_seq(out, at, r.tags);
  return out;
}
record hand_decode_record(const bytes& in) {
  record r;
  std::size_t at = 0;
  get(in, at, &r.id, 4);
  get(in, at, &r.score, 8);
  get_seq(in, at, r.name);
  get_seq(in, at, r.tags);
  if (at != in.size()) throw std::runtime_error("trailing bytes");
  return r;
}

bytes hand_encode(const point& p) {
  const auto* b = reinterpret_cast<const std::byte*>(&p);
  return bytes(b, b + sizeof p);
}
point hand_decode_point(const bytes& in) {
  point p;
  if (in.size() != sizeof p) throw std::runtime_error("size");
  std::memcpy(&p, in.data(), sizeof p);
  return p;
}

// Times ours and theirs in alternating runs (so that neither always runs first on a busy
// machine) and returns the median time per call of each, in nanoseconds.
template <class Ours, class Theirs>
std::pair<double, double> ns_per(long n, Ours&& ours, Theirs&& theirs) {
  std::vector<double> a, b;
  auto time = [n](auto& fn) {
    auto t0 = clock::now();
    for (long i = 0; i < n; ++i) fn();
    return seconds_since(t0) / n * 1e9;
  };
  for (int rep = 0; rep < 7; ++rep) {
    a.push_back(time(ours));
    b.push_back(time(theirs));
  }
  return {median(a), median(b)};
}

volatile std::size_t sink;

template <class T, class HandEncode, class HandDecode>
void round_trip_row(table& t, const char* name, long n, const T& v, HandEncode hand_enc,
                    HandDecode hand_dec) {
  if (shmkit::encode(v) != hand_enc(v)) throw std::logic_error("baseline writes other bytes");
  const auto [ours, hand] = ns_per(
      n,
      [&] {
        const bytes b = shmkit::encode(v);
        sink = sink + (shmkit::decode<T>(b) == v ? 1 : 0);
      },
      [&] {
        const bytes b = hand_enc(v);
        sink = sink + (hand_dec(b) == v ? 1 : 0);
      });
  t.row(name, "ns per encode+decode", better::lower, ours, {{"hand-written memcpy", hand}});
}

}  // namespace

int main() {
  table t("codec");
  pin_to(0);

  std::vector<std::int32_t> ints(1000);
  for (std::size_t i = 0; i < ints.size(); ++i) ints[i] = static_cast<std::int32_t>(i * 37);
  round_trip_row(t, "vector<int32> of 1000", scaled(100000), ints,
                 [](const auto& v) { return hand_encode(v); }, hand_decode_ints);

  record r{42, 3.5, "a record with a name", {1, 2, 3, 4, 5, 6, 7, 8}};
  round_trip_row(t, "struct {int, double, string, vector<int>}", scaled(500000), r,
                 [](const auto& v) { return hand_encode(v); }, hand_decode_record);

  const point p{1, 2, 3, 4};
  round_trip_row(t, "raw struct of 32 bytes", scaled(1000000), p,
                 [](const auto& v) { return hand_encode(v); }, hand_decode_point);

  const std::string big(1 << 20, 'x');
  round_trip_row(t, "std::string of 1 MiB", scaled(1000), big,
                 [](const auto& v) { return hand_encode(v); }, hand_decode_string);
}
