// SPDX-License-Identifier: MIT
// The codec: values to bytes and back, for everything that crosses a process boundary
// (queue and pipe messages, pool tasks and results, manager keys and values).
//
// Contract
// - Pure functions of their arguments: no shared state, safe from any number of threads and
//   processes at once. Nothing here lives in shared memory.
// - Supported (shmkit::encodable<T>): trivially copyable types, bool, std::basic_string,
//   std::vector, std::array, C arrays, std::map, std::multimap, std::set, std::multiset,
//   std::unordered_map, std::unordered_set, std::pair, std::tuple, std::optional,
//   std::variant, nested freely, and classes with a public member
//       template <class Ar> void serialize(Ar& ar) { ar(field1, field2); }
//   (one function encodes, sizes and decodes; `Ar::loading` tells which when it matters; the
//   same form cereal uses). A serialize member wins over raw copying. Pointers,
//   std::string_view, std::span and std::reference_wrapper are refused at compile time with a
//   message saying what to do instead. A derived class inherits its base's serialize(); give
//   it its own, starting with ar(static_cast<Base&>(*this), ...).
// - Format (deterministic: equal values give equal bytes):
//     raw T        its sizeof(T) bytes as they lie in memory (host byte order and layout:
//                  both ends must be the same build; padding bytes go along as they are)
//     empty class  nothing (std::monostate, tag types: their byte holds no value)
//     bool         one byte, 0 or 1
//     length       8-byte little-endian unsigned count (of elements, not bytes)
//     string       length, then the characters
//     vector       length, then each element (one memcpy when the element is raw)
//     array, T[N]  the N elements (no length)
//     pair, tuple  the members in order (no padding)
//     optional     one byte 0 or 1, then the value if 1
//     variant      one byte alternative index, then the alternative
//     map, set     length, then the entries (key then value) in the container's order
//     unordered    length, then the entries in the byte order of their encoded keys
//     user types   the fields named by serialize(), in order
//   A container of elements that encode to nothing could claim any count: refused (a
//   static_assert for types that always do, shmkit::error for a serialize() that wrote nothing).
// - decode throws shmkit::error, never reads out of bounds, when the bytes are too few, too
//   many (decode must consume the whole span), or not a value: a bool not 0/1, an optional
//   flag not 0/1, a variant index out of range, keys out of order or repeated. A length
//   prefix is checked against the bytes left before anything is sized by it, and no container
//   reserves more than 4x the bytes left before its elements actually decode. Bytes that form
//   a valid value decode to it and re-encode to exactly the same bytes.
// - Raw types are trusted as bytes: a trivially copyable struct is copied verbatim, so one
//   that holds a pointer, or a member not every bit pattern is valid for (bool, std::optional,
//   an enum without a fixed underlying type), must not be decoded from untrusted bytes. Give
//   such a struct a serialize() member to have each field checked.
// - encode_into throws shmkit::error when `out` is too small; otherwise only std::bad_alloc
//   and what a user's serialize() throws escape.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "shmkit/detail/codec_io.hpp"
#include "shmkit/detail/codec_types.hpp"
#include "shmkit/error.hpp"

namespace shmkit {

// True for every type the codec supports.
template <class T>
concept encodable = detail::is_encodable<T>;

// Types that go as exactly their sizeof(T) bytes, with no length or flag: trivially copyable,
// not a pointer, not bool, no serialize() member, not optional/variant/pair/tuple.
template <class T>
inline constexpr bool is_raw_encodable_v = detail::is_raw<T>;

// The exact number of bytes encode(v) returns. Throws what v's serialize() throws.
template <class T>
std::size_t encoded_size(const T& v) {
  detail::require_encodable<T>();
  if constexpr (encodable<T>) return detail::codec_of<T>::size(v);
  return 0;
}

// Writes exactly encoded_size(v) bytes at the start of `out`. No allocation for raw types
// (nor for others, except sorting unordered containers). Throws shmkit::error when `out` is
// shorter than encoded_size(v).
template <class T>
void encode_into(const T& v, std::span<std::byte> out) {
  detail::require_encodable<T>();
  if constexpr (is_raw_encodable_v<T>) {
    if (out.size() < sizeof(T)) [[unlikely]]
      throw error(fmt::format("shmkit: cannot encode {}: the output holds {} bytes, {} needed",
                              detail::readable_type_name<T>(), out.size(), sizeof(T)));
    std::memcpy(out.data(), std::addressof(v), sizeof(T));
  } else if constexpr (encodable<T>) {
    detail::writer w(out.data(), out.data() + out.size(), detail::name_of<T>);
    detail::codec_of<T>::write(w, v);
  }
}

// The bytes of v. Throws std::bad_alloc, or shmkit::error when a serialize() member does not
// write what it sized.
template <class T>
std::vector<std::byte> encode(const T& v) {
  detail::require_encodable<T>();
  if constexpr (is_raw_encodable_v<T>) {
    const auto* p = reinterpret_cast<const std::byte*>(std::addressof(v));
    return std::vector<std::byte>(p, p + sizeof(T));
  } else if constexpr (!encodable<T>) {
    return {};
  } else {
    std::vector<std::byte> out(detail::codec_of<T>::size(v));
    detail::writer w(out.data(), out.data() + out.size(), detail::name_of<T>);
    detail::codec_of<T>::write(w, v);
    if (w.written() != out.size()) [[unlikely]]
      throw error(fmt::format("shmkit: cannot encode {}: serialize() sized {} bytes but wrote {}; "
                              "it must name the same fields every time",
                              detail::readable_type_name<T>(), out.size(), w.written()));
    return out;
  }
}

// Replaces `out` with the value `in` encodes; `in` must hold exactly one value. Throws
// shmkit::error (naming the type and what was wrong) on truncated, trailing or malformed
// bytes; `out` is then valid but unspecified. Containers in `out` are cleared and refilled,
// so their capacity is reused.
template <class T>
void decode_into(std::span<const std::byte> in, T& out) {
  detail::require_encodable<T>();
  static_assert(!std::is_const_v<T>, "shmkit::decode_into needs a non-const object to fill");
  if constexpr (is_raw_encodable_v<T>) {
    if (in.size() != sizeof(T)) [[unlikely]]
      throw error(fmt::format("shmkit: cannot decode {}: expected exactly {} bytes, found {}",
                              detail::readable_type_name<T>(), sizeof(T), in.size()));
    std::memcpy(std::addressof(out), in.data(), sizeof(T));
  } else if constexpr (encodable<T>) {
    detail::reader r(in.data(), in.data() + in.size(), detail::name_of<T>);
    detail::codec_of<T>::read(r, out);
    if (r.left() != 0) [[unlikely]]
      r.trailing();
  }
}

// The value `in` encodes. Throws like decode_into.
template <class T>
T decode(std::span<const std::byte> in) {
  detail::require_encodable<T>();
  static_assert(std::is_default_constructible_v<T>,
                "shmkit::decode<T> needs a default-constructible T (it fills a T{}); use "
                "decode_into to fill an object you construct yourself");
  if constexpr (std::is_default_constructible_v<T>) {
    T v{};
    decode_into(in, v);
    return v;
  } else {
    __builtin_unreachable();  // the static_assert above has failed
  }
}

}  // namespace shmkit
