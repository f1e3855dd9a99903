// SPDX-License-Identifier: MIT
// The base of every synchronization handle: the shared_object that owns its segment (made in
// one of the four ways), or nothing for a view of a state embedded in another object's
// segment, and a pointer to the state either way. Move-only. Public: name(), release_name(),
// state(); the rest is for the handles built on it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "shmkit/detail/segment.hpp"
#include "shmkit/detail/shared_object.hpp"
#include "shmkit/naming.hpp"

namespace shmkit::detail {

template <class State>
class sync_handle {
 public:
  // The name it was made or opened with; empty when anonymous or a view.
  const std::string& name() const noexcept { return obj_.seg().name(); }
  // Keeps the name after this creating handle is destroyed (shmkit::remove() removes it).
  void release_name() noexcept { obj_.seg().release_name(); }
  // The shared state (library use).
  State* state() const noexcept { return state_; }

 protected:
  // A view of a state owned by someone else (it must outlive the handle).
  explicit sync_handle(State* view) noexcept : state_(view) {}

  template <class... Args>
  sync_handle(object_kind kind, std::size_t extra, Args&&... args)
      : obj_(segment_spec{kind}, extra, std::forward<Args>(args)...), state_(obj_.state()) {}

  template <class... Args>
  sync_handle(create_only_t, std::string_view name, object_kind kind, std::size_t extra,
              permissions perms, Args&&... args)
      : obj_(create_only, name, segment_spec{kind}, extra, perms, std::forward<Args>(args)...),
        state_(obj_.state()) {}

  sync_handle(open_only_t, std::string_view name, object_kind kind)
      : obj_(open_only, name, segment_spec{kind}), state_(obj_.state()) {}

  template <class... Args>
  sync_handle(open_or_create_t, std::string_view name, object_kind kind, std::size_t extra,
              permissions perms, Args&&... args)
      : obj_(open_or_create, name, segment_spec{kind}, extra, perms, std::forward<Args>(args)...),
        state_(obj_.state()) {}

  sync_handle(sync_handle&& other) noexcept
      : obj_(std::move(other.obj_)), state_(std::exchange(other.state_, nullptr)) {}
  sync_handle& operator=(sync_handle&& other) noexcept {
    obj_ = std::move(other.obj_);
    state_ = std::exchange(other.state_, nullptr);
    return *this;
  }

  ~sync_handle() = default;

  State* operator->() const noexcept { return state_; }

  // The bytes after the state in its own segment (0 for a view).
  std::size_t extra_size() const noexcept { return obj_.valid() ? obj_.extra_size() : 0; }

  // "mutex 'jobs'", "anonymous mutex", or "mutex embedded in another object", for messages.
  std::string describe(std::string_view kind) const {
    if (!obj_.valid()) return std::string(kind) + " embedded in another object";
    return obj_.seg().describe();
  }

 private:
  shared_object<State> obj_;
  State* state_ = nullptr;
};

}  // namespace shmkit::detail
