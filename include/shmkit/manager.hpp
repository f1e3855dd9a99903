// SPDX-License-Identifier: MIT
// Shared containers without a server process (Python's multiprocessing.Manager, minus the
// socket): shmkit::manager is one segment, anonymous or named, holding any number of named
// shared_dict<K, V> and shared_list<T> that every attached process reads and writes directly.
//
// Contract
// - Keys, values and items are any codec types (shmkit::encodable), of any length. Keys are
//   compared by their encoded bytes (equal values encode equally; see codec.hpp for the one
//   exception, unordered containers as keys).
// - Producers:consumers: any number of processes and threads. Every call is atomic: a reader
//   sees a container before a write or after it, never between; keys(), values(), items()
//   and to_vector() are snapshots of one moment. A dict's snapshots list its keys in
//   insertion order, as Python's dict does (setting a present key keeps its place; a key
//   erased and set again goes last). update(key, fn) is an atomic read-modify-write.
// - Progress: writers serialise on one robust mutex per manager (all its containers), with one
//   exception: shared_dict::set() of a key already present, when the value's encoding keeps
//   its size and fits in 8 bytes (long, double, any raw type up to 8 bytes), is lock-free:
//   one atomic store into the key's value word in the dict's table, with no locked
//   instruction (see docs/ARCHITECTURE.md), which it makes only while no writer holds the mutex and
//   no snapshot is being read (it takes the mutex instead otherwise). Readers take no lock:
//   they read, check a version word, and retry if a write overlapped; after a few overlaps,
//   or while a write is being published, they wait on the writers' mutex. Many readers never
//   slow each other down. A snapshot (keys(), values(), items()) holds lock-free sets off
//   while it reads (they take the mutex meanwhile).
// - kill -9 at any instruction: a writer killed half-way leaves every container as it was
//   before the call or as it is after it; the next caller of that manager (reader or writer)
//   takes the mutex over, re-applies a committed change, and returns every block the dead
//   writer had allocated to the free memory. A lock-free set killed leaves the old value or
//   the new one. Nobody hangs: waiters check the holder's liveness every 150 ms (and a
//   writer waiting for a lock-free set under way, or a set waiting for a snapshot reader to
//   finish, checks that it still lives).
// - Full memory: the segment grows (doubling; every process maps the growth on its next call)
//   up to manager_options::max_bytes or whatever /dev/shm or the machine holds; past that the
//   call throws shmkit::error and the container is exactly as before.
// - Throws: shmkit::error (no such name, another kind of object, a container opened with
//   other types, full memory); std::out_of_range from get() of a missing key (as
//   std::map::at; try_get() returns nullopt instead), at()/set() past the end and pop_back()
//   on an empty list; std::system_error (resource_deadlock_would_occur) when update()'s fn
//   writes to a container of the same manager; whatever the codec throws for a value.
// - Handles (manager, shared_dict, shared_list) are cheap to copy, keep the segment mapped,
//   and may be used by any number of threads at once: each process maps the manager into
//   address space reserved once (max_bytes, or 256 GiB when unlimited: a manager cannot grow
//   past its reservation), so growth never moves it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmkit/codec.hpp"
#include "shmkit/detail/manager_core.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"

namespace shmkit {

struct manager_options {
  // The segment never grows past this many bytes; 0: it grows while memory lasts.
  std::size_t max_bytes = 0;
  permissions perms{};
};

using detail::manager_stats;

template <class K, class V>
class shared_dict;
template <class T>
class shared_list;

namespace detail {

// Strings of raw characters: encoded as their length (8 bytes), then their characters.
template <class T>
inline constexpr bool is_raw_string = false;
template <class C, class Tr, class A>
inline constexpr bool is_raw_string<std::basic_string<C, Tr, A>> = is_raw<C>;

// A key encoded on the stack (or the heap past 112 bytes), and its hash. Handed on by
// reference (key()): a key_ref copied by value soon after it was built is read back with wider
// loads than the stores that built it, which wait for those stores to reach the cache.
class encoded {
 public:
  template <class T>
  explicit encoded(const T& v) {
    const std::size_t n = encoded_size(v);
    std::byte* p = n <= sizeof small_ ? small_ : (big_ = std::make_unique<std::byte[]>(n)).get();
    encode_into(v, std::span<std::byte>(p, n));
    // A string's encoding is its length, then its characters: hashed from the two as they
    // are, not read back from the buffer just written (see hash_bytes()).
    if constexpr (is_raw_string<T>)
      key_ = {{p, n},
              hash_prefixed(to_little_endian(v.size()), std::as_bytes(std::span(v.data(), v.size())))};
    else
      key_ = {{p, n}, hash_bytes({p, n})};
  }
  encoded(const encoded&) = delete;
  encoded& operator=(const encoded&) = delete;

  bytes_view bytes() const noexcept { return key_.data; }
  const key_ref& key() const noexcept { return key_; }

 private:
  alignas(8) std::byte small_[112];
  std::unique_ptr<std::byte[]> big_;
  key_ref key_;
};

// The value_source that encodes v (which must outlive it).
template <class T>
struct source_of {
  const T& v;
  void operator()(std::span<std::byte> out) const { encode_into(v, out); }
};

}  // namespace detail

// One shared-memory segment of named containers. Made four ways, like every shmkit object;
// `bytes` is the initial size (it grows), used only when the call creates the segment.
class manager {
 public:
  static constexpr std::size_t default_bytes = std::size_t(1) << 20;

  // Anonymous: shared with children forked after it.
  manager() : manager(default_bytes) {}
  explicit manager(std::size_t bytes, manager_options opts = {});
  // Named. Throws shmkit::error if the name exists (create_only) or does not (open_only), or
  // holds another kind of object, or the memory cannot be reserved.
  manager(create_only_t, std::string_view name, std::size_t bytes = default_bytes,
          permissions perms = {});
  manager(create_only_t, std::string_view name, std::size_t bytes, manager_options opts);
  manager(open_only_t, std::string_view name);
  manager(open_or_create_t, std::string_view name, std::size_t bytes = default_bytes,
          permissions perms = {});
  manager(open_or_create_t, std::string_view name, std::size_t bytes, manager_options opts);

  // The dict called `name`, created empty if absent. Throws shmkit::error when `name` holds
  // another container kind or other key/value types (the message names both), or when the
  // memory is full; std::invalid_argument for an empty name or one over 200 bytes.
  template <encodable K, encodable V>
  shared_dict<K, V> dict(std::string_view name);
  // The list called `name`, created empty if absent. Throws as dict().
  template <encodable T>
  shared_list<T> list(std::string_view name);

  // Names of the containers, in creation order.
  std::vector<std::string> names() const { return core_->container_names(); }
  // Memory figures, consistent with each other.
  manager_stats stats() const { return core_->stats(); }
  // Bytes in free blocks right now (stats().free_bytes).
  std::size_t free_bytes() const { return stats().free_bytes; }
  // Checks every container against the heap (each block reachable once, everything else
  // free, the free figure exact); throws shmkit::error on a mismatch. Diagnostic: holds the
  // writers' lock for a walk of the whole segment.
  void verify() const { core_->verify(); }

  // The name it was made or opened with; empty for an anonymous manager.
  const std::string& name() const noexcept { return core_->seg().name(); }
  // Keeps the name after this creating handle (and every handle copied from it) is gone.
  void release_name() noexcept { core_->seg().release_name(); }

 private:
  std::shared_ptr<detail::manager_core> core_;
};

// A hash map in a manager: set/get/try_get/contains/erase/size/clear/keys/values/items and
// update. See the contract at the top of this file.
template <class K, class V>
class shared_dict {
 public:
  using key_type = K;
  using mapped_type = V;

  // Inserts or replaces. Lock-free when the key is present and the value's encoding keeps its
  // size of at most 8 bytes (see the contract above). Throws shmkit::error when the memory is
  // full (nothing changes).
  void set(const K& key, const V& value) {
    const detail::encoded k(key);
    const detail::source_of<V> fill{value};
    core_->dict_set(root_, k.key(), {encoded_size(value), fill});
  }

  // The value of `key`; throws std::out_of_range when absent (as std::map::at).
  V get(const K& key) const {
    V out{};
    if (!find(key, out))
      throw std::out_of_range(fmt::format("shmkit: {}: no such key", what_));
    return out;
  }
  std::optional<V> try_get(const K& key) const {
    V out{};
    if (!find(key, out)) return std::nullopt;
    return out;
  }
  bool contains(const K& key) const {
    const detail::encoded k(key);
    return core_->dict_contains(root_, k.key());
  }
  // Removes `key`; returns whether it was there.
  bool erase(const K& key) {
    const detail::encoded k(key);
    return core_->dict_erase(root_, k.key());
  }
  std::size_t size() const { return core_->dict_size(root_); }
  bool empty() const { return size() == 0; }
  void clear() { core_->dict_clear(root_); }

  // Atomically: v = get(key), or V{} when absent; fn(v); set(key, v). Returns the new value.
  // fn runs under the manager's writers' lock: keep it short, and do not write to this
  // manager's containers from it. If fn throws, nothing changes.
  template <class F>
  V update(const K& key, F&& fn) {
    const detail::encoded k(key);
    V cur{};
    const detail::source_of<V> fill{cur};
    core_->dict_update(root_, k.key(), [&](const detail::bytes_view* old) {
      if (old != nullptr) decode_into(*old, cur);
      fn(cur);
      return detail::value_source{encoded_size(cur), fill};
    });
    return cur;
  }

  // Snapshots of one moment.
  std::vector<K> keys() const {
    std::vector<K> out;
    core_->dict_scan(
        root_, [&] { out.clear(); },
        [&](detail::bytes_view k, detail::bytes_view) { out.push_back(decode<K>(k)); });
    return out;
  }
  std::vector<V> values() const {
    std::vector<V> out;
    core_->dict_scan(
        root_, [&] { out.clear(); },
        [&](detail::bytes_view, detail::bytes_view v) { out.push_back(decode<V>(v)); });
    return out;
  }
  std::vector<std::pair<K, V>> items() const {
    std::vector<std::pair<K, V>> out;
    core_->dict_scan(
        root_, [&] { out.clear(); },
        [&](detail::bytes_view k, detail::bytes_view v) {
          out.emplace_back(decode<K>(k), decode<V>(v));
        });
    return out;
  }

  const std::string& name() const noexcept { return name_; }

 private:
  friend class manager;
  shared_dict(std::shared_ptr<detail::manager_core> core, std::uint64_t root, std::string name)
      : core_(std::move(core)), root_(root), name_(std::move(name)) {
    what_ = fmt::format("shared_dict '{}' in {}", name_, core_->seg().describe());
  }

  bool find(const K& key, V& out) const {
    const detail::encoded k(key);
    return core_->dict_find(root_, k.key(), [&](detail::bytes_view b) { decode_into(b, out); });
  }

  std::shared_ptr<detail::manager_core> core_;
  std::uint64_t root_;
  std::string name_;
  std::string what_;
};

// A vector in a manager: push_back/at/set/size/pop_back/to_vector/clear. See the contract at
// the top of this file. Items of raw types up to 8 bytes live in the list's slots themselves.
template <class T>
class shared_list {
 public:
  using value_type = T;

  // Throws shmkit::error when the memory is full (nothing changes).
  void push_back(const T& item) {
    const detail::source_of<T> fill{item};
    core_->list_push_back(root_, {encoded_size(item), fill});
  }
  // The item at i; throws std::out_of_range when i >= size().
  T at(std::size_t i) const {
    T out{};
    core_->list_at(root_, i, [&](detail::bytes_view b) { decode_into(b, out); }, what_);
    return out;
  }
  // Replaces the item at i; throws std::out_of_range when i >= size().
  void set(std::size_t i, const T& item) {
    const detail::source_of<T> fill{item};
    core_->list_set(root_, i, {encoded_size(item), fill}, what_);
  }
  std::size_t size() const { return core_->list_size(root_); }
  bool empty() const { return size() == 0; }
  // Removes the last item and returns it (like Python's list.pop()); throws
  // std::out_of_range on an empty list.
  T pop_back() {
    T out{};
    core_->list_pop_back(root_, [&](detail::bytes_view b) { decode_into(b, out); }, what_);
    return out;
  }
  void clear() { core_->list_clear(root_); }
  // A snapshot of one moment.
  std::vector<T> to_vector() const {
    std::vector<T> out;
    core_->list_scan(
        root_, [&] { out.clear(); }, [&](detail::bytes_view b) { out.push_back(decode<T>(b)); });
    return out;
  }

  const std::string& name() const noexcept { return name_; }

 private:
  friend class manager;
  shared_list(std::shared_ptr<detail::manager_core> core, std::uint64_t root, std::string name)
      : core_(std::move(core)), root_(root), name_(std::move(name)) {
    what_ = fmt::format("shared_list '{}' in {}", name_, core_->seg().describe());
  }

  std::shared_ptr<detail::manager_core> core_;
  std::uint64_t root_;
  std::string name_;
  std::string what_;
};

template <encodable K, encodable V>
shared_dict<K, V> manager::dict(std::string_view name) {
  const detail::container_type type{detail::container_kind::dict,
                                    detail::tag_of<K>().hash,
                                    detail::tag_of<V>().hash,
                                    detail::readable_type_name<K>(),
                                    detail::readable_type_name<V>(),
                                    0};
  return shared_dict<K, V>(core_, core_->open_container(name, type), std::string(name));
}

template <encodable T>
shared_list<T> manager::list(std::string_view name) {
  constexpr std::uint32_t inline_size =
      is_raw_encodable_v<T> && sizeof(T) <= 8 ? static_cast<std::uint32_t>(sizeof(T)) : 0;
  const detail::container_type type{detail::container_kind::list, 0,
                                    detail::tag_of<T>().hash,   {},
                                    detail::readable_type_name<T>(), inline_size};
  return shared_list<T>(core_, core_->open_container(name, type), std::string(name));
}

}  // namespace shmkit
