// SPDX-License-Identifier: MIT
// A stable tag for a C++ type, written into a segment's header so that opening an object with
// another element type is an error, not garbage: the compiler's spelling of the type, its size
// and alignment, hashed.
#pragma once

#include <cstdint>
#include <string_view>

namespace shmkit::detail {

template <class T>
constexpr std::string_view type_name() noexcept {
  std::string_view p = __PRETTY_FUNCTION__;
  // GCC: "... [with T = int; std::string_view = ...]"; Clang: "... [T = int]".
  auto start = p.find("T = ");
  if (start == std::string_view::npos) return p;
  start += 4;
  auto end = p.find_first_of(";]", start);
  return p.substr(start, end - start);
}

constexpr std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 0xcbf29ce484222325ull) noexcept {
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

struct type_tag {
  std::uint64_t hash = 0;
  std::string_view name;  // for messages only
};

template <class T>
constexpr type_tag tag_of() noexcept {
  constexpr std::string_view n = type_name<T>();
  return {fnv1a(n) ^ (sizeof(T) * 0x9e3779b97f4a7c15ull) ^
              (static_cast<std::uint64_t>(alignof(T)) << 56),
          n};
}

// The tag of objects that have no element type (mutex, event, shared_memory, ...).
inline constexpr type_tag untyped{0, "none"};

}  // namespace shmkit::detail
