// SPDX-License-Identifier: MIT
// Raw shared memory, the counterpart of Python's multiprocessing.shared_memory.SharedMemory: a
// block of bytes that several processes map, by name or by inheritance across fork().
//
// Promises: the bytes start zeroed; the pages are reserved at creation, so a full /dev/shm
// throws shmkit::error then, never SIGBUS later; no synchronisation is implied (pair it with
// a shmkit::mutex or an event). Not thread-safe for moves; the bytes themselves are shared.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "shmkit/detail/segment.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"

namespace shmkit {

class shared_memory {
  static constexpr detail::segment_spec spec{detail::object_kind::shared_memory};

 public:
  // Anonymous: shared with children forked after it. Throws shmkit::error when the memory
  // cannot be reserved.
  explicit shared_memory(std::size_t size)
      : seg_(detail::segment::create_anonymous(spec, size)) {
    seg_.publish();
  }
  // Named. Throws shmkit::error if the name exists (create_only) or does not (open_only), if
  // it holds another kind of object, or if the memory cannot be reserved.
  shared_memory(create_only_t, std::string_view name, std::size_t size, permissions perms = {})
      : seg_(detail::segment::create(name, spec, size, perms)) {
    seg_.publish();
  }
  shared_memory(open_only_t, std::string_view name) : seg_(detail::segment::open(name, spec)) {}
  shared_memory(open_or_create_t, std::string_view name, std::size_t size,
                permissions perms = {}) {
    bool created = false;
    seg_ = detail::segment::open_or_create(name, spec, size, created, perms);
    if (created) seg_.publish();
  }

  std::byte* data() const noexcept { return seg_.payload(); }
  std::size_t size() const noexcept { return seg_.payload_size(); }
  std::span<std::byte> bytes() const noexcept { return {data(), size()}; }
  // The name it was made or opened with; empty for anonymous memory.
  const std::string& name() const noexcept { return seg_.name(); }

  // Keeps the name alive after this (creating) handle is destroyed.
  void release_name() noexcept { seg_.release_name(); }

 private:
  detail::segment seg_;
};

}  // namespace shmkit
