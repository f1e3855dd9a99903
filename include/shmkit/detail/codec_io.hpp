// SPDX-License-Identifier: MIT
// The codec's byte cursors: a writer that fills a buffer sized in advance, a reader that
// checks every read against the bytes left, and the errors both throw.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "shmkit/detail/type_tag.hpp"
#include "shmkit/error.hpp"

namespace shmkit::detail {

// A type's name as a reader of an error message would write it: std::string, not
// std::__cxx11::basic_string<char>. Error paths only.
inline std::string readable_type_name(std::string_view raw) {
  std::string s(raw);
  auto replace_all = [&s](std::string_view from, std::string_view to) {
    for (auto at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
      s.replace(at, from.size(), to);
  };
  replace_all("std::__cxx11::", "std::");
  replace_all(" >", ">");
  for (std::string_view c : {"char", "wchar_t"}) {
    const std::string full = fmt::format(
        "std::basic_string<{0}, std::char_traits<{0}>, std::allocator<{0}>>", c);
    const std::string nice = c == "char" ? "std::string" : "std::wstring";
    replace_all(full, nice);
    replace_all(fmt::format("std::basic_string<{}>", c), nice);
  }
  return s;
}


// The compiler's spelling of T, computed once at compile time (type_name<T>() called at run
// time would search __PRETTY_FUNCTION__ on every call).
template <class T>
inline constexpr std::string_view name_of = type_name<T>();

template <class T>
std::string readable_type_name() {
  return readable_type_name(name_of<T>);
}

// Lengths and counts go as 8-byte little-endian unsigned integers.
inline constexpr std::size_t length_bytes = sizeof(std::uint64_t);

inline std::uint64_t to_little_endian(std::uint64_t v) noexcept {
  if constexpr (std::endian::native == std::endian::big) return __builtin_bswap64(v);
  return v;
}

// Writes into a buffer whose size was computed beforehand with the same codec. Every write is
// still checked, so a user serialize() that writes more than it sized throws instead of
// overrunning.
class writer {
 public:
  writer(std::byte* begin, std::byte* end, std::string_view top) noexcept
      : p_(begin), begin_(begin), end_(end), top_(top) {}

  void bytes(const void* src, std::size_t n) {
    if (n > static_cast<std::size_t>(end_ - p_)) [[unlikely]]
      overflow(n);
    if (n != 0) std::memcpy(p_, src, n);
    p_ += n;
  }

  void length(std::size_t n) {
    const std::uint64_t le = to_little_endian(n);
    bytes(&le, sizeof le);
  }

  std::size_t written() const noexcept { return static_cast<std::size_t>(p_ - begin_); }
  std::size_t capacity() const noexcept { return static_cast<std::size_t>(end_ - begin_); }

 private:
  [[noreturn, gnu::cold, gnu::noinline]] void overflow(std::size_t n) const {
    throw error(fmt::format(
        "shmkit: cannot encode {}: the output holds {} bytes, but the encoding needs more "
        "({} written, {} more asked for); give encode_into at least encoded_size(value) bytes "
        "and make serialize() write the same fields every time",
        readable_type_name(top_), capacity(), written(), n));
  }

  std::byte* p_;
  std::byte* begin_;
  std::byte* end_;
  std::string_view top_;  // the type passed to encode, for messages
};

// Reads from untrusted bytes. Every read is checked against the bytes left; every failure
// throws shmkit::error naming the type being decoded, the part that failed and the offset.
class reader {
 public:
  reader(const std::byte* begin, const std::byte* end, std::string_view top) noexcept
      : p_(begin), begin_(begin), end_(end), top_(top) {}

  std::size_t left() const noexcept { return static_cast<std::size_t>(end_ - p_); }
  std::size_t offset() const noexcept { return static_cast<std::size_t>(p_ - begin_); }
  const std::byte* position() const noexcept { return p_; }

  // Consumes n bytes and returns where they start. `what` names the type being read.
  const std::byte* take(std::size_t n, std::string_view what) {
    if (n > left()) [[unlikely]]
      truncated(what, n);
    const std::byte* at = p_;
    p_ += n;
    return at;
  }

  void bytes(void* dst, std::size_t n, std::string_view what) {
    const std::byte* src = take(n, what);
    if (n != 0) std::memcpy(dst, src, n);
  }

  std::uint8_t byte(std::string_view what) {
    return static_cast<std::uint8_t>(*take(1, what));
  }

  // Reads a length prefix and checks that `n` elements of at least `min_element` bytes each
  // fit in what is left, so that nothing is ever sized by a length the input cannot back.
  std::size_t length(std::string_view what, std::size_t min_element) {
    const std::size_t at = offset();
    std::uint64_t le;
    bytes(&le, sizeof le, what);
    const std::uint64_t n = to_little_endian(le);
    if (min_element != 0 && n > left() / min_element) [[unlikely]]
      bad_length(what, at, n, min_element);
    return static_cast<std::size_t>(n);
  }

  // A value the bytes cannot stand for: a bool of 7, a variant index past the end, ...
  [[noreturn, gnu::cold, gnu::noinline]] void malformed(std::string_view what, std::size_t at,
                                                        std::string_view problem) const {
    fail(what, fmt::format("{} (at byte {} of {})", problem, at, end_ - begin_));
  }

  // Bytes left after the value.
  [[noreturn, gnu::cold, gnu::noinline]] void trailing() const {
    throw error(fmt::format("shmkit: cannot decode {}: {} trailing bytes after the value, which "
                            "ends at byte {} of {}",
                            readable_type_name(top_), left(), offset(), end_ - begin_));
  }

 private:
  [[noreturn, gnu::cold, gnu::noinline]] void fail(std::string_view what,
                                                   const std::string& problem) const {
    if (what == top_)
      throw error(fmt::format("shmkit: cannot decode {}: {}", readable_type_name(top_), problem));
    throw error(fmt::format("shmkit: cannot decode {}: in its {}: {}", readable_type_name(top_),
                            readable_type_name(what), problem));
  }

  [[noreturn, gnu::cold, gnu::noinline]] void truncated(std::string_view what,
                                                        std::size_t n) const {
    fail(what, fmt::format("truncated: needs {} more bytes at byte {}, {} left", n, offset(),
                           left()));
  }

  [[noreturn, gnu::cold, gnu::noinline]] void bad_length(std::string_view what, std::size_t at,
                                                         std::uint64_t n,
                                                         std::size_t min_element) const {
    fail(what, fmt::format("{} bytes left, length prefix at byte {} says {} elements of at least "
                           "{} bytes each",
                           left(), at, n, min_element));
  }

  const std::byte* p_;
  const std::byte* begin_;
  const std::byte* end_;
  std::string_view top_;  // the type passed to decode, for messages
};

}  // namespace shmkit::detail
