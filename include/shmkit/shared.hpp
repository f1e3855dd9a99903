// SPDX-License-Identifier: MIT
// A single value and a fixed-size array in shared memory, each with its own lock (Python's
// multiprocessing.Value and Array).
//
// Contract
// - T is trivially copyable (it is copied as bytes between processes); alignof(T) <= 64.
// - Made four ways: anonymous (shared with children forked after it), (create_only, name,
//   ...), (open_only, name), (open_or_create, name, ...); the arguments after the name are
//   used only when the call creates the object. Opening a name made with another T throws
//   shmkit::error naming both types. Handles are move-only.
// - value<T>: load(), store(v) and update(fn) each hold get_lock() for the call, or run under
//   it as they are when the calling thread already holds it (so `std::lock_guard
//   g(v.get_lock()); v.store(v.load() + 1);` is one atomic increment, as in Python).
//   Blocking (the lock's contended path sleeps on a futex).
// - array<T>: operator[] and begin()/end() give plain references into the shared memory, with
//   no locking (like a shared_memory block); hold get_lock() around compound updates. The
//   elements start zeroed unless given.
// - kill -9: the lock of a dead holder is taken over by the next locker (owner_died() tells
//   it). A value is never torn: store() writes the spare of two copies and switches copies
//   with one store, so a holder killed in store() or update() leaves the previous value. An
//   array element written through a reference by a killed holder may be half-written: check
//   get_lock().owner_died() if that matters.
// - Throws: shmkit::error from the named constructors (missing name, another kind or element
//   type, no space); std::out_of_range from array::at(); std::system_error when lock() is
//   called by the thread that holds it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "shmkit/detail/mutex_state.hpp"
#include "shmkit/detail/shared_object.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"
#include "shmkit/sync.hpp"

namespace shmkit {
namespace detail {

// Holds a mutex_state for a scope unless the calling thread already holds it. Taking over from
// a dead holder clears owner_died: the state it guards is consistent by construction.
class hold_unless_held {
 public:
  explicit hold_unless_held(mutex_state& m) : m_(m), mine_(!m.held_by_caller()) {
    if (!mine_) return;
    m_.lock();
    if (m_.owner_died()) m_.mark_consistent();
  }
  hold_unless_held(const hold_unless_held&) = delete;
  hold_unless_held& operator=(const hold_unless_held&) = delete;
  ~hold_unless_held() {
    if (mine_) m_.unlock_if_owner();
  }

 private:
  mutex_state& m_;
  bool mine_;
};

template <class T>
struct value_state {
  mutex_state lock;
  // Which of the two copies holds the value. Written by the lock holder only.
  std::atomic<std::uint32_t> current{0};
  std::uint32_t reserved = 0;
  alignas(alignof(T) > 8 ? alignof(T) : 8) std::byte copies[2][sizeof(T)];

  explicit value_state(const T& v) noexcept { std::memcpy(copies[0], &v, sizeof(T)); }
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

template <class T>
struct alignas(64) array_state {
  mutex_state lock;
  std::uint64_t size;
  // The elements follow this struct in the segment (its `extra` bytes).

  array_state(std::uint64_t n, const T* init, std::size_t init_n) noexcept : size(n) {
    if (init_n != 0) std::memcpy(elements(), init, init_n * sizeof(T));
  }
  T* elements() noexcept { return reinterpret_cast<T*>(this + 1); }
};

template <class T>
constexpr segment_spec element_spec(object_kind kind) {
  return {kind, tag_of<T>()};
}

}  // namespace detail

template <class T>
class value {
  static_assert(std::is_trivially_copyable_v<T>,
                "shmkit::value<T> copies T as bytes between processes: T must be trivially "
                "copyable (use a manager's shared_dict for other types)");
  static_assert(alignof(T) <= 64, "shmkit::value<T>: alignof(T) must be at most 64");
  using state = detail::value_state<T>;
  static constexpr detail::segment_spec spec = detail::element_spec<T>(detail::object_kind::value);

 public:
  // Anonymous: shared with children forked after it. Throws shmkit::error when the memory
  // cannot be reserved.
  explicit value(const T& initial = T{}) : obj_(spec, 0, initial), lock_(&obj_.state()->lock) {}
  value(create_only_t, std::string_view name, const T& initial = T{}, permissions perms = {})
      : obj_(create_only, name, spec, 0, perms, initial), lock_(&obj_.state()->lock) {}
  value(open_only_t, std::string_view name)
      : obj_(open_only, name, spec), lock_(&obj_.state()->lock) {}
  value(open_or_create_t, std::string_view name, const T& initial = T{}, permissions perms = {})
      : obj_(open_or_create, name, spec, 0, perms, initial), lock_(&obj_.state()->lock) {}

  // The value now. Blocks while another thread holds get_lock().
  T load() const {
    detail::hold_unless_held h(st()->lock);
    return current();
  }
  void store(const T& v) {
    detail::hold_unless_held h(st()->lock);
    put(v);
  }
  // Applies fn(T&) to a copy of the value under the lock, stores it, returns it. If fn
  // throws, the value is unchanged.
  template <class F>
  T update(F&& fn) {
    detail::hold_unless_held h(st()->lock);
    T v = current();
    fn(v);
    put(v);
    return v;
  }

  // The lock of this value (Python's get_lock()): hold it to make several calls one step.
  mutex& get_lock() const noexcept { return lock_; }

  const std::string& name() const noexcept { return obj_.seg().name(); }
  void release_name() noexcept { obj_.seg().release_name(); }

 private:
  state* st() const noexcept { return obj_.state(); }
  T current() const noexcept {
    // acquire: pairs with the release store in put(); the lock orders live holders, this
    // also orders a holder that took over from a dead one after its last put().
    const std::uint32_t i = st()->current.load(std::memory_order_acquire);
    T v;
    std::memcpy(&v, st()->copies[i & 1], sizeof(T));
    return v;
  }
  void put(const T& v) noexcept {
    const std::uint32_t spare = 1 - (st()->current.load(std::memory_order_relaxed) & 1);
    std::memcpy(st()->copies[spare], &v, sizeof(T));
    // release: the copy is complete before it becomes current, even for a holder killed
    // right after this store.
    st()->current.store(spare, std::memory_order_release);
  }

  detail::shared_object<state> obj_;
  mutable mutex lock_;
};

template <class T>
class array {
  static_assert(std::is_trivially_copyable_v<T>,
                "shmkit::array<T> copies T as bytes between processes: T must be trivially "
                "copyable (use a manager's shared_list for other types)");
  static_assert(alignof(T) <= 64, "shmkit::array<T>: alignof(T) must be at most 64");
  using state = detail::array_state<T>;
  static constexpr detail::segment_spec spec = detail::element_spec<T>(detail::object_kind::array);

 public:
  // Anonymous, n zeroed elements, or a copy of `init`.
  explicit array(std::size_t n) : obj_(spec, bytes_for(n), n, nullptr, 0) { bind(); }
  array(std::initializer_list<T> init)
      : obj_(spec, bytes_for(init.size()), init.size(), init.begin(), init.size()) {
    bind();
  }
  // Named, n zeroed elements. open_or_create throws shmkit::error when the existing array
  // does not have n elements.
  array(create_only_t, std::string_view name, std::size_t n, permissions perms = {})
      : obj_(create_only, name, spec, bytes_for(n), perms, n, nullptr, 0) {
    bind();
  }
  array(open_only_t, std::string_view name) : obj_(open_only, name, spec) { bind(); }
  array(open_or_create_t, std::string_view name, std::size_t n, permissions perms = {})
      : obj_(open_or_create, name, spec, bytes_for(n), perms, n, nullptr, 0) {
    bind();
    if (size_ != n)
      throw error(fmt::format("shmkit: {} holds {} elements, not {}", obj_.seg().describe(),
                              size_, n));
  }

  std::size_t size() const noexcept { return size_; }
  T& operator[](std::size_t i) const noexcept { return data_[i]; }
  // Throws std::out_of_range when i >= size().
  T& at(std::size_t i) const {
    if (i >= size_)
      throw std::out_of_range(fmt::format("shmkit: {}: index {} is out of range (size {})",
                                          obj_.seg().describe(), i, size_));
    return data_[i];
  }
  T* data() const noexcept { return data_; }
  T* begin() const noexcept { return data_; }
  T* end() const noexcept { return data_ + size_; }
  std::span<T> span() const noexcept { return {data_, size_}; }

  // The lock of this array (Python's get_lock()).
  mutex& get_lock() const noexcept { return *lock_; }

  const std::string& name() const noexcept { return obj_.seg().name(); }
  void release_name() noexcept { obj_.seg().release_name(); }

 private:
  static std::size_t bytes_for(std::size_t n) {
    if (n > (std::size_t(1) << 46) / sizeof(T))
      throw std::invalid_argument(fmt::format("shmkit: an array of {} elements is too big", n));
    return n * sizeof(T);
  }
  void bind() {
    state* s = obj_.state();
    size_ = static_cast<std::size_t>(s->size);
    if (obj_.extra_size() < size_ * sizeof(T))
      throw error(fmt::format("shmkit: {} is corrupted: it says it holds {} elements but has "
                              "room for {}",
                              obj_.seg().describe(), size_, obj_.extra_size() / sizeof(T)));
    data_ = s->elements();
    lock_ = std::make_unique<mutex>(&s->lock);
  }

  detail::shared_object<state> obj_;
  std::size_t size_ = 0;
  T* data_ = nullptr;
  std::unique_ptr<mutex> lock_;
};

}  // namespace shmkit
