// SPDX-License-Identifier: MIT
// The handle every shmkit object is built on: a segment whose payload starts with one State
// struct (plus `extra` bytes after it), made in one of the three ways of naming and lifetime:
// anonymous, create_only, open_only, open_or_create.
//
// State lives in shared memory: standard layout, no pointers, every atomic lock-free. Its
// constructor runs once, in the creating process, before the segment is published; its
// destructor never runs (the memory simply goes away with the last mapping).
#pragma once

#include <cstddef>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "shmkit/detail/segment.hpp"
#include "shmkit/naming.hpp"

namespace shmkit::detail {

template <class State>
class shared_object {
  static_assert(std::is_standard_layout_v<State>, "shared state must be standard layout");
  static_assert(alignof(State) <= payload_alignment);

 public:
  shared_object() noexcept = default;

  template <class... Args>
  shared_object(segment_spec spec, std::size_t extra, Args&&... args)
      : seg_(segment::create_anonymous(spec, sizeof(State) + extra)) {
    build(std::forward<Args>(args)...);
  }

  template <class... Args>
  shared_object(create_only_t, std::string_view name, segment_spec spec, std::size_t extra,
                permissions perms, Args&&... args)
      : seg_(segment::create(name, spec, sizeof(State) + extra, perms)) {
    build(std::forward<Args>(args)...);
  }

  shared_object(open_only_t, std::string_view name, segment_spec spec)
      : seg_(segment::open(name, spec)) {
    if (seg_.payload_size() < sizeof(State))
      throw_too_small();
  }

  template <class... Args>
  shared_object(open_or_create_t, std::string_view name, segment_spec spec, std::size_t extra,
                permissions perms, Args&&... args) {
    bool created = false;
    seg_ = segment::open_or_create(name, spec, sizeof(State) + extra, created, perms);
    if (created)
      build(std::forward<Args>(args)...);
    else if (seg_.payload_size() < sizeof(State))
      throw_too_small();
  }

  State* state() const noexcept { return reinterpret_cast<State*>(seg_.payload()); }
  // The bytes after the State struct.
  std::byte* extra() const noexcept { return seg_.payload() + sizeof(State); }
  std::size_t extra_size() const noexcept { return seg_.payload_size() - sizeof(State); }

  segment& seg() noexcept { return seg_; }
  const segment& seg() const noexcept { return seg_; }
  bool valid() const noexcept { return seg_.valid(); }

 private:
  template <class... Args>
  void build(Args&&... args) {
    new (seg_.payload()) State(std::forward<Args>(args)...);
    seg_.publish();
  }
  [[noreturn]] void throw_too_small() const;

  segment seg_;
};

[[noreturn]] void throw_payload_too_small(const segment& s, std::size_t want);

template <class State>
void shared_object<State>::throw_too_small() const {
  throw_payload_too_small(seg_, sizeof(State));
}

}  // namespace shmkit::detail
