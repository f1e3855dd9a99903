// SPDX-License-Identifier: MIT
// Fuzzes the codec's decoding: the first byte picks a type, the rest is decoded as it. Only
// shmkit::error may escape decode, and a value that decodes re-encodes to the same bytes
// (codec.hpp: "Bytes that form a valid value decode to it and re-encode to exactly the same
// bytes"); anything else aborts.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "shmkit/codec.hpp"

namespace {

// A user type with serialize(): its bool and nested fields are checked one by one.
struct record {
  std::int32_t id = 0;
  bool flag = false;
  std::string name;
  std::vector<std::uint16_t> values;
  std::optional<double> weight;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(id, flag, name, values, weight);
  }
};

template <class T>
void round_trip(std::span<const std::byte> in) {
  T v{};
  try {
    v = shmkit::decode<T>(in);
  } catch (const shmkit::error&) {
    return;  // refused: the only exception decode may throw
  }
  const std::vector<std::byte> out = shmkit::encode(v);
  if (out.size() != in.size() || (!in.empty() && std::memcmp(out.data(), in.data(), in.size()) != 0)) {
    std::fprintf(stderr, "fuzz_codec: %zu bytes decoded but re-encoded to %zu different bytes\n",
                 in.size(), out.size());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  switch (data[0] % 6) {
    case 0: round_trip<std::string>(in); break;
    case 1: round_trip<std::vector<int>>(in); break;
    case 2: round_trip<std::map<std::string, std::vector<double>>>(in); break;
    case 3: round_trip<std::variant<int, std::string>>(in); break;
    case 4: round_trip<std::optional<std::pair<int, std::string>>>(in); break;
    case 5: round_trip<record>(in); break;
  }
  return 0;
}
