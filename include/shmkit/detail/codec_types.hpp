// SPDX-License-Identifier: MIT
// The codec of each supported type: detail::codec<T> says how many bytes a T takes
// (min_size, fixed, size), how to write it and how to read it back from untrusted bytes.
// The format is described in <shmkit/codec.hpp>.
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "shmkit/detail/codec_io.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/error.hpp"

namespace shmkit::detail {

// Each specialization provides:
//   enabled    true
//   min_size   a lower bound of the encoded size of any value (0 when unknown: user types)
//   fixed      every value encodes to exactly min_size bytes
//   size(v)    the exact encoded size of v
//   write(w,v) / read(r,v)
// The primary template marks a type as unsupported.
template <class T>
struct codec {
  static constexpr bool enabled = false;
};

template <class T>
using codec_of = codec<std::remove_cv_t<T>>;

template <class T>
concept is_encodable = codec_of<T>::enabled;

// --- archives: what a user type's serialize(ar) receives -----------------------------------

class size_archive;
class write_archive;
class read_archive;

template <class T>
concept has_serialize = requires(T& t, size_archive& a) { t.serialize(a); };

// Types that refer to memory of this process although they are trivially copyable.
template <class T>
struct is_view : std::false_type {};
template <class C, class Tr>
struct is_view<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t E>
struct is_view<std::span<T, E>> : std::true_type {};
template <class T>
struct is_view<std::reference_wrapper<T>> : std::true_type {};

// Trivially copyable classes without data (std::monostate, tag types) encode to nothing: their
// one byte of storage holds no value, so copying it would make the encoding depend on garbage.
template <class T>
inline constexpr bool is_empty_value = std::is_empty_v<T> && std::is_trivially_copyable_v<T> &&
                                       !has_serialize<T> && !is_view<T>::value;

// Raw types go as their sizeof(T) bytes, exactly as they lie in memory. bool is not raw (its
// byte is checked on decode), and neither are the standard wrappers whose every bit pattern
// is not a value (optional, variant) or whose members may hold padding (pair, tuple).
template <class T>
struct raw_trait
    : std::bool_constant<std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                         !std::is_member_pointer_v<T> && !std::is_same_v<T, bool> &&
                         !is_view<T>::value && !has_serialize<T> && !std::is_empty_v<T>> {};
template <class T, std::size_t N>
struct raw_trait<T[N]> : raw_trait<std::remove_cv_t<T>> {};
template <class T, std::size_t N>  // std::array<T, 0> has one byte of nothing
struct raw_trait<std::array<T, N>>
    : std::bool_constant<N != 0 && raw_trait<std::remove_cv_t<T>>::value> {};
template <class T>
struct raw_trait<std::optional<T>> : std::false_type {};
template <class... T>
struct raw_trait<std::variant<T...>> : std::false_type {};
template <class... T>
struct raw_trait<std::tuple<T...>> : std::false_type {};
template <class A, class B>
struct raw_trait<std::pair<A, B>> : std::false_type {};

template <class T>
inline constexpr bool is_raw = raw_trait<std::remove_cv_t<T>>::value;

// --- why a type is not encodable, for the static_assert messages -----------------------------

enum class unencodable { no, pointer, view, other };

constexpr unencodable first_problem(std::initializer_list<unencodable> found) {
  for (auto want : {unencodable::pointer, unencodable::view})
    for (auto f : found)
      if (f == want) return want;
  return unencodable::other;
}

template <class T>
struct problem_of {
  static constexpr unencodable value =
      (std::is_pointer_v<T> || std::is_member_pointer_v<T>) ? unencodable::pointer
      : is_view<T>::value                                    ? unencodable::view
      : is_encodable<T>                                      ? unencodable::no
                                                             : unencodable::other;
};
template <template <class...> class W, class... A>
struct problem_of<W<A...>> {
  static constexpr unencodable value =
      is_view<W<A...>>::value ? unencodable::view
      : is_encodable<W<A...>> ? unencodable::no
                              : first_problem({problem_of<std::remove_cv_t<A>>::value...});
};
template <class T, std::size_t N>
struct problem_of<std::array<T, N>> : problem_of<std::remove_cv_t<T>> {};
template <class T, std::size_t N>
struct problem_of<T[N]> : problem_of<std::remove_cv_t<T>> {};

template <class T>
constexpr void require_encodable() {
  constexpr unencodable p = problem_of<std::remove_cv_t<T>>::value;
  static_assert(p != unencodable::pointer,
                "shmkit: a pointer cannot be encoded: its address means nothing in another "
                "process. Encode the value it points to instead (a std::string for a "
                "const char*, a std::vector or std::array for an array, the object for T*).");
  static_assert(p != unencodable::view,
                "shmkit: std::string_view, std::span and std::reference_wrapper refer to this "
                "process's memory and cannot be encoded; encode a std::string or std::vector.");
  static_assert(p != unencodable::other,
                "shmkit: this type is not encodable. Give the class a public member "
                "`template <class Ar> void serialize(Ar& ar) { ar(field1, field2); }` naming "
                "its fields. Built in: trivially copyable types, std::string, std::vector, "
                "std::array, std::map, std::unordered_map, std::set, std::pair, std::tuple, "
                "std::optional and std::variant of encodable types.");
}

class size_archive {
 public:
  static constexpr bool loading = false;
  template <class... Ts>
  void operator()(const Ts&... fields) {
    (add(fields), ...);
  }
  std::size_t size() const noexcept { return n_; }

 private:
  template <class U>
  void add(const U& field) {
    require_encodable<U>();
    if constexpr (is_encodable<U>) n_ += codec_of<U>::size(field);
  }
  std::size_t n_ = 0;
};

class write_archive {
 public:
  static constexpr bool loading = false;
  explicit write_archive(writer& w) noexcept : w_(w) {}
  template <class... Ts>
  void operator()(const Ts&... fields) {
    (add(fields), ...);
  }

 private:
  template <class U>
  void add(const U& field) {
    require_encodable<U>();
    if constexpr (is_encodable<U>) codec_of<U>::write(w_, field);
  }
  writer& w_;
};

class read_archive {
 public:
  static constexpr bool loading = true;
  explicit read_archive(reader& r) noexcept : r_(r) {}
  template <class... Ts>
  void operator()(Ts&... fields) {
    (add(fields), ...);
  }

 private:
  template <class U>
  void add(U& field) {
    require_encodable<U>();
    static_assert(!std::is_const_v<U>, "shmkit: serialize() names a const field, which decode "
                                       "cannot fill; make the field non-const");
    if constexpr (is_encodable<U> && !std::is_const_v<U>) codec_of<U>::read(r_, field);
  }
  reader& r_;
};

// --- helpers shared by the containers --------------------------------------------------------

// How many elements to reserve before any is read: never more memory than 4x the bytes left,
// so a length prefix alone cannot make decode allocate much; past that the container grows
// only as elements actually decode.
template <class E>
std::size_t reserve_hint(std::size_t n, std::size_t bytes_left) noexcept {
  return std::min(n, 4 * bytes_left / sizeof(E) + 1);
}

// A container of elements that may encode to zero bytes (a user type whose serialize() writes
// nothing) could claim any count; such elements are refused on both sides.
template <class Container>
[[noreturn, gnu::cold, gnu::noinline]] void zero_width_element() {
  throw error(fmt::format(
      "shmkit: cannot encode {}: an element encodes to zero bytes, so its count could not be "
      "checked against the input when decoding; give the element type a field to encode",
      readable_type_name<Container>()));
}

template <class Container, class E>
constexpr void require_nonzero_width() {
  static_assert(!(codec_of<E>::fixed && codec_of<E>::min_size == 0),
                "shmkit: a container of a type that always encodes to zero bytes (std::monostate, "
                "an empty class or std::tuple, a std::array of size 0) could claim any count "
                "and cannot be decoded safely; use a count (std::size_t) instead");
}

// Writes one element of a counted container, refusing elements that encode to nothing.
template <class Container, class E, class Fn>
void write_counted_element(writer& w, Fn&& write_one) {
  if constexpr (codec_of<E>::min_size == 0) {
    const std::size_t before = w.written();
    write_one();
    if (w.written() == before) zero_width_element<Container>();
  } else {
    write_one();
  }
}

template <class Container, class E, class Fn>
void read_counted_element(reader& r, Fn&& read_one) {
  if constexpr (codec_of<E>::min_size == 0) {
    const std::size_t before = r.offset();
    read_one();
    if (r.offset() == before)
      r.malformed(name_of<Container>, before, "an element encodes to zero bytes");
  } else {
    read_one();
  }
}

template <class E, class Range>
std::size_t elements_size(const Range& range, std::size_t count) {
  if constexpr (codec_of<E>::fixed) {
    return count * codec_of<E>::min_size;
  } else {
    std::size_t n = 0;
    for (const auto& e : range) n += codec_of<E>::size(e);
    return n;
  }
}

// --- raw and bool ----------------------------------------------------------------------------

template <class T>
  requires is_raw<T>
struct codec<T> {
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = sizeof(T);
  static constexpr bool fixed = true;
  static std::size_t size(const T&) noexcept { return sizeof(T); }
  static void write(writer& w, const T& v) { w.bytes(std::addressof(v), sizeof(T)); }
  static void read(reader& r, T& v) { r.bytes(std::addressof(v), sizeof(T), name_of<T>); }
};

template <>
struct codec<bool> {
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = 1;
  static constexpr bool fixed = true;
  static std::size_t size(bool) noexcept { return 1; }
  static void write(writer& w, bool v) {
    const std::uint8_t b = v ? 1 : 0;
    w.bytes(&b, 1);
  }
  static void read(reader& r, bool& v) {
    const std::size_t at = r.offset();
    const std::uint8_t b = r.byte("bool");
    if (b > 1) [[unlikely]]
      r.malformed("bool", at, fmt::format("a bool is 0 or 1, found {}", b));
    v = b == 1;
  }
};

template <class T>
  requires is_empty_value<T>
struct codec<T> {
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = 0;
  static constexpr bool fixed = true;
  static std::size_t size(const T&) noexcept { return 0; }
  static void write(writer&, const T&) noexcept {}
  static void read(reader&, T&) noexcept {}
};

// --- strings and vectors ---------------------------------------------------------------------

template <class C, class Tr, class A>
  requires is_raw<C>
struct codec<std::basic_string<C, Tr, A>> {
  using T = std::basic_string<C, Tr, A>;
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = length_bytes;
  static constexpr bool fixed = false;
  static std::size_t size(const T& s) noexcept { return length_bytes + s.size() * sizeof(C); }
  static void write(writer& w, const T& s) {
    w.length(s.size());
    w.bytes(s.data(), s.size() * sizeof(C));
  }
  static void read(reader& r, T& s) {
    const std::size_t n = r.length(name_of<T>, sizeof(C));
    const std::byte* p = r.take(n * sizeof(C), name_of<T>);
    if constexpr (std::is_same_v<C, char> || std::is_same_v<C, unsigned char>) {
      s.assign(reinterpret_cast<const C*>(p), n);  // char may alias any bytes
    } else {
      s.resize(n);
      if (n != 0) std::memcpy(s.data(), p, n * sizeof(C));
    }
  }
};

template <class E, class A>
  requires is_encodable<E>
struct codec<std::vector<E, A>> {
  using T = std::vector<E, A>;
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = length_bytes;
  static constexpr bool fixed = false;

  static std::size_t size(const T& v) { return length_bytes + elements_size<E>(v, v.size()); }

  static void write(writer& w, const T& v) {
    require_nonzero_width<T, E>();
    w.length(v.size());
    if constexpr (is_raw<E>) {
      w.bytes(v.data(), v.size() * sizeof(E));
    } else {
      for (const E& e : v) write_counted_element<T, E>(w, [&] { codec_of<E>::write(w, e); });
    }
  }

  static void read(reader& r, T& v) {
    require_nonzero_width<T, E>();
    const std::size_t n = r.length(name_of<T>, codec_of<E>::min_size);
    if constexpr (is_raw<E>) {
      const std::byte* p = r.take(n * sizeof(E), name_of<T>);
      v.resize(n);
      if (n != 0) std::memcpy(v.data(), p, n * sizeof(E));
    } else {
      v.clear();
      v.reserve(reserve_hint<E>(n, r.left()));
      for (std::size_t i = 0; i < n; ++i)
        read_counted_element<T, E>(r, [&] { codec_of<E>::read(r, v.emplace_back()); });
    }
  }
};

template <class A>
struct codec<std::vector<bool, A>> {
  using T = std::vector<bool, A>;
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = length_bytes;
  static constexpr bool fixed = false;
  static std::size_t size(const T& v) noexcept { return length_bytes + v.size(); }
  static void write(writer& w, const T& v) {
    w.length(v.size());
    for (bool b : v) codec<bool>::write(w, b);
  }
  static void read(reader& r, T& v) {
    const std::size_t n = r.length(name_of<T>, 1);
    v.clear();
    v.reserve(n);  // n bits, and n bytes are there
    for (std::size_t i = 0; i < n; ++i) {
      bool b;
      codec<bool>::read(r, b);
      v.push_back(b);
    }
  }
};

// --- fixed-size arrays of non-raw elements: the elements one after the other -----------------

template <class T, class E, std::size_t N>
struct fixed_array_codec {
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = N * codec_of<E>::min_size;
  static constexpr bool fixed = codec_of<E>::fixed;
  static std::size_t size(const T& a) { return elements_size<E>(a, N); }
  static void write(writer& w, const T& a) {
    for (const auto& e : a) codec_of<E>::write(w, e);
  }
  static void read(reader& r, T& a) {
    for (auto& e : a) codec_of<E>::read(r, e);
  }
};

template <class E, std::size_t N>
  requires(is_encodable<E> && !is_raw<std::array<E, N>>)
struct codec<std::array<E, N>> : fixed_array_codec<std::array<E, N>, E, N> {};

template <class E, std::size_t N>
  requires(is_encodable<E> && !is_raw<E[N]>)
struct codec<E[N]> : fixed_array_codec<E[N], E, N> {};

// --- pair, tuple, optional, variant ----------------------------------------------------------

template <class... Ts>
struct product_codec {
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = (std::size_t{0} + ... + codec_of<Ts>::min_size);
  static constexpr bool fixed = (true && ... && codec_of<Ts>::fixed);
};

template <class A, class B>
  requires(is_encodable<A> && is_encodable<B>)
struct codec<std::pair<A, B>> : product_codec<A, B> {
  using T = std::pair<A, B>;
  static std::size_t size(const T& p) {
    return codec_of<A>::size(p.first) + codec_of<B>::size(p.second);
  }
  static void write(writer& w, const T& p) {
    codec_of<A>::write(w, p.first);
    codec_of<B>::write(w, p.second);
  }
  static void read(reader& r, T& p) {
    codec_of<A>::read(r, p.first);
    codec_of<B>::read(r, p.second);
  }
};

template <class... Ts>
  requires(is_encodable<Ts> && ...)
struct codec<std::tuple<Ts...>> : product_codec<Ts...> {
  using T = std::tuple<Ts...>;
  static std::size_t size(const T& t) {
    return std::apply([](const Ts&... x) { return (std::size_t{0} + ... + codec_of<Ts>::size(x)); },
                      t);
  }
  static void write(writer& w, const T& t) {
    std::apply([&](const Ts&... x) { (codec_of<Ts>::write(w, x), ...); }, t);
  }
  static void read(reader& r, T& t) {
    std::apply([&](Ts&... x) { (codec_of<Ts>::read(r, x), ...); }, t);
  }
};

// A flag byte, 0 (empty) or 1, then the value when there is one.
template <class E>
  requires is_encodable<E>
struct codec<std::optional<E>> {
  using T = std::optional<E>;
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = 1;
  static constexpr bool fixed = false;
  static std::size_t size(const T& o) { return 1 + (o ? codec_of<E>::size(*o) : 0); }
  static void write(writer& w, const T& o) {
    const std::uint8_t flag = o ? 1 : 0;
    w.bytes(&flag, 1);
    if (o) codec_of<E>::write(w, *o);
  }
  static void read(reader& r, T& o) {
    const std::size_t at = r.offset();
    const std::uint8_t flag = r.byte(name_of<T>);
    if (flag == 0) {
      o.reset();
    } else if (flag == 1) {
      if (!o) o.emplace();
      codec_of<E>::read(r, *o);
    } else [[unlikely]] {
      r.malformed(name_of<T>, at,
                  fmt::format("the presence flag of an optional is 0 or 1, found {}", flag));
    }
  }
};

// The index of the alternative as one byte, then the alternative.
template <class... Ts>
  requires(is_encodable<Ts> && ...)
struct codec<std::variant<Ts...>> {
  using T = std::variant<Ts...>;
  static_assert(sizeof...(Ts) <= 255, "shmkit: a variant of more than 255 alternatives");
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = 1 + std::min({codec_of<Ts>::min_size...});
  static constexpr bool fixed = false;

  static std::size_t size(const T& v) {
    if (v.valueless_by_exception()) valueless();
    return 1 + std::visit([](const auto& x) { return codec_of<std::remove_cvref_t<decltype(x)>>::size(x); }, v);
  }
  static void write(writer& w, const T& v) {
    if (v.valueless_by_exception()) valueless();
    const std::uint8_t index = static_cast<std::uint8_t>(v.index());
    w.bytes(&index, 1);
    std::visit([&w](const auto& x) { codec_of<std::remove_cvref_t<decltype(x)>>::write(w, x); }, v);
  }
  static void read(reader& r, T& v) {
    const std::size_t at = r.offset();
    const std::uint8_t index = r.byte(name_of<T>);
    if (index >= sizeof...(Ts)) [[unlikely]]
      r.malformed(name_of<T>, at,
                  fmt::format("alternative index {} of a variant of {}", index, sizeof...(Ts)));
    read_alternative(r, v, index, std::index_sequence_for<Ts...>{});
  }

 private:
  template <std::size_t I>
  static void read_at(reader& r, T& v) {
    using E = std::variant_alternative_t<I, T>;
    if (v.index() == I)
      codec_of<E>::read(r, std::get<I>(v));  // reuse what the alternative already holds
    else
      codec_of<E>::read(r, v.template emplace<I>());
  }
  template <std::size_t... I>
  static void read_alternative(reader& r, T& v, std::size_t index, std::index_sequence<I...>) {
    using fn = void (*)(reader&, T&);
    static constexpr fn table[] = {&read_at<I>...};
    table[index](r, v);
  }
  [[noreturn, gnu::cold, gnu::noinline]] static void valueless() {
    throw error(fmt::format("shmkit: cannot encode {}: the variant is valueless by exception",
                            readable_type_name<T>()));
  }
};

// --- associative containers: a count, then the entries ----------------------------------------
// Each value has exactly one encoding, and decode insists on it. Ordered containers write in
// their own order: keys strictly increasing (non-decreasing for multi containers). Unordered
// containers write in the byte order of the encoded keys (memcmp, then shorter first): strictly
// increasing, which needs no operator< of the key and no particular hash.

template <class M>
inline constexpr bool is_map_like = requires { typename M::mapped_type; };

// Lexicographic order of two encoded keys.
inline bool bytes_less(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  const int c = std::memcmp(a.data(), b.data(), std::min(a.size(), b.size()));
  return c != 0 ? c < 0 : a.size() < b.size();
}

template <class M, bool Multi>
struct associative_codec {
  using K = typename M::key_type;
  using entry = typename M::value_type;
  static constexpr bool ordered = requires { typename M::key_compare; };

  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = length_bytes;
  static constexpr bool fixed = false;

  static const K& key_of(const entry& e) noexcept {
    if constexpr (is_map_like<M>)
      return e.first;
    else
      return e;
  }

  // An entry is a std::pair<const K, V> for maps, a K for sets: both have a codec.
  static std::size_t size(const M& m) { return length_bytes + elements_size<entry>(m, m.size()); }

  static void write(writer& w, const M& m) {
    require_nonzero_width<M, entry>();
    w.length(m.size());
    if constexpr (ordered) {
      for (const entry& e : m)
        write_counted_element<M, entry>(w, [&] {
          codec_of<K>::write(w, key_of(e));
          write_mapped(w, e);
        });
    } else {
      // Encode the keys into one scratch buffer, sort the entries by those bytes, then copy
      // each key's bytes followed by its value.
      struct keyed {
        const entry* e;
        std::size_t at, size;
      };
      std::vector<keyed> order;
      order.reserve(m.size());
      std::size_t total = 0;
      for (const entry& e : m) {
        const std::size_t n = codec_of<K>::size(key_of(e));
        order.push_back({&e, total, n});
        total += n;
      }
      std::vector<std::byte> keys(total);
      writer kw(keys.data(), keys.data() + keys.size(), name_of<M>);
      for (const keyed& k : order) codec_of<K>::write(kw, key_of(*k.e));
      auto bytes_of = [&keys](const keyed& k) {
        return std::span<const std::byte>(keys.data() + k.at, k.size);
      };
      std::sort(order.begin(), order.end(), [&](const keyed& a, const keyed& b) {
        return bytes_less(bytes_of(a), bytes_of(b));
      });
      for (const keyed& k : order)
        write_counted_element<M, entry>(w, [&] {
          w.bytes(keys.data() + k.at, k.size);
          write_mapped(w, *k.e);
        });
    }
  }

  static void read(reader& r, M& m) {
    require_nonzero_width<M, entry>();
    const std::size_t n = r.length(name_of<M>, codec_of<entry>::min_size);
    m.clear();
    if constexpr (!ordered) m.reserve(reserve_hint<entry>(n, r.left()));
    const K* prev = nullptr;                // ordered: the last key (nodes do not move)
    std::span<const std::byte> prev_bytes;  // unordered: the last key's bytes in the input
    for (std::size_t i = 0; i < n; ++i) {
      read_counted_element<M, entry>(r, [&] {
        const std::size_t at = r.offset();
        const std::byte* key_begin = r.position();
        K k{};
        codec_of<K>::read(r, k);
        typename M::iterator it;
        if constexpr (ordered) {
          if (prev != nullptr &&
              (Multi ? m.key_comp()(k, *prev) : !m.key_comp()(*prev, k))) [[unlikely]]
            r.malformed(name_of<M>, at,
                        Multi ? "keys out of order" : "keys out of order or repeated");
          it = emplace(m, std::move(k));
          prev = &key_of(*it);
        } else {
          const std::span<const std::byte> key_bytes(key_begin, r.position());
          if (i != 0 && !bytes_less(prev_bytes, key_bytes)) [[unlikely]]
            r.malformed(name_of<M>, at, "keys out of order or repeated");
          prev_bytes = key_bytes;
          const std::size_t before = m.size();
          it = emplace(m, std::move(k));
          if (m.size() == before) [[unlikely]]  // equal keys with different bytes
            r.malformed(name_of<M>, at, "a key repeated");
        }
        if constexpr (is_map_like<M>) codec_of<typename M::mapped_type>::read(r, it->second);
      });
    }
  }

 private:
  static void write_mapped(writer& w, const entry& e) {
    if constexpr (is_map_like<M>) codec_of<typename M::mapped_type>::write(w, e.second);
  }
  static typename M::iterator emplace(M& m, K&& k) {
    if constexpr (is_map_like<M>)
      return m.emplace_hint(m.end(), std::piecewise_construct,
                            std::forward_as_tuple(std::move(k)), std::forward_as_tuple());
    else
      return m.emplace_hint(m.end(), std::move(k));
  }
};

template <class K, class V, class C, class A>
  requires(is_encodable<K> && is_encodable<V>)
struct codec<std::map<K, V, C, A>> : associative_codec<std::map<K, V, C, A>, false> {};
template <class K, class V, class C, class A>
  requires(is_encodable<K> && is_encodable<V>)
struct codec<std::multimap<K, V, C, A>> : associative_codec<std::multimap<K, V, C, A>, true> {};
template <class K, class C, class A>
  requires is_encodable<K>
struct codec<std::set<K, C, A>> : associative_codec<std::set<K, C, A>, false> {};
template <class K, class C, class A>
  requires is_encodable<K>
struct codec<std::multiset<K, C, A>> : associative_codec<std::multiset<K, C, A>, true> {};
template <class K, class V, class H, class E, class A>
  requires(is_encodable<K> && is_encodable<V>)
struct codec<std::unordered_map<K, V, H, E, A>>
    : associative_codec<std::unordered_map<K, V, H, E, A>, false> {};
template <class K, class H, class E, class A>
  requires is_encodable<K>
struct codec<std::unordered_set<K, H, E, A>>
    : associative_codec<std::unordered_set<K, H, E, A>, false> {};

// --- user types: their serialize(ar) lists the fields, which go one after the other ----------

template <class T>
  requires has_serialize<T>
struct codec<T> {
  static constexpr bool enabled = true;
  static constexpr std::size_t min_size = 0;  // not known without a value
  static constexpr bool fixed = false;
  // serialize() is a non-const member so that one function serves both directions; encoding
  // only reads the fields it is handed.
  static std::size_t size(const T& v) {
    size_archive a;
    const_cast<T&>(v).serialize(a);
    return a.size();
  }
  static void write(writer& w, const T& v) {
    write_archive a(w);
    const_cast<T&>(v).serialize(a);
  }
  static void read(reader& r, T& v) {
    read_archive a(r);
    v.serialize(a);
  }
};

}  // namespace shmkit::detail
