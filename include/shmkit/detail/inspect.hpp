// SPDX-License-Identifier: MIT
// Looking at a named object from outside, for the shmkit command: what its file in /dev/shm
// holds, read without trusting a byte of it, and a registry through which each kind adds the
// details only it understands (a queue's depth, a manager's containers).
//
// Promises: inspect_file() never throws for what it finds (a missing, unreadable, foreign or
// corrupted file becomes a status and a problem text), never waits for a creator, and never
// writes to the object: it maps the file read-only. It throws std::bad_alloc only.
//
// How a kind adds its details: in its own lib/<kind>.cpp, at namespace scope,
//
//   namespace {
//   shmkit::detail::detail_lines inspect_queue(const shmkit::detail::segment_header& h,
//                                              std::span<const std::byte> payload) {
//     if (payload.size() < sizeof(queue_state)) return {{"state", "truncated"}};
//     const auto* s = reinterpret_cast<const queue_state*>(payload.data());
//     return {{"capacity", std::to_string(s->capacity)}, {"depth", ...}};
//   }
//   const shmkit::detail::inspector_registrar queue_inspector(
//       shmkit::detail::object_kind::queue, &inspect_queue);
//   }  // namespace
//
// The shmkit command links the whole library (WHOLE_ARCHIVE), so every registrar runs.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmkit/detail/segment.hpp"

namespace shmkit::detail {

// Where named segments live (glibc's shm_open directory).
inline constexpr std::string_view shm_directory = "/dev/shm";

// Key/value lines that a kind's inspector adds, in display order: {"depth", "12"}.
using detail_lines = std::vector<std::pair<std::string, std::string>>;

// A kind's inspector. Called only for a published, sound header of that kind. `payload` spans
// from the payload offset to the end of the mapped extent (growth included; the header's
// payload_size is what was asked for at creation). The mapping is read-only and other
// processes may be using the object right now: load atomics (relaxed or acquire), take no
// lock, write nothing (a write is a SIGSEGV), and check every offset or count read from the
// payload against payload.size(). It may throw: the command then shows the message instead.
using inspector_fn = detail_lines (*)(const segment_header& header,
                                      std::span<const std::byte> payload);

// Makes fn the inspector of `kind` (nullptr removes it); returns the one it replaces.
// Thread-safe; may run during static initialisation.
inspector_fn register_inspector(object_kind kind, inspector_fn fn) noexcept;
inspector_fn find_inspector(std::uint32_t kind) noexcept;

// Registers an inspector at static-initialisation time (see the example above).
struct inspector_registrar {
  inspector_registrar(object_kind kind, inspector_fn fn) noexcept { register_inspector(kind, fn); }
};

enum class object_status {
  ok,            // a published shmkit object of this build's layout
  building,      // its creator is still building it (or only just created the file)
  abandoned,     // never finished: its creator died first, or left an empty file long ago
  foreign,       // not a shmkit object (wrong magic, too small, not a regular file, bad name)
  incompatible,  // made by a shmkit build of another layout
  corrupted,     // a shmkit header whose sizes do not fit the file
  unreadable,    // cannot be opened or read (permissions: EACCES)
  missing,       // no such file
};
std::string_view status_name(object_status s) noexcept;

// The header's fields, copied as read.
struct header_fields {
  std::uint32_t ready = 0;
  std::uint32_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t kind = 0;
  std::uint64_t type_hash = 0;
  std::uint64_t total_size = 0;
  std::uint64_t payload_offset = 0;
  std::uint64_t payload_size = 0;
  std::uint64_t creator = 0;
  std::int64_t created_ns = 0;
  std::uint32_t header_size = 0;
  std::uint32_t pointer_size = 0;
  std::string type_name;
  std::uint64_t mapped_size = 0;
};

struct object_report {
  std::string file;  // the file name in shm_directory: "shmkit.jobs"
  std::string name;  // the object's name: the file name without the prefix
  object_status status = object_status::missing;
  std::string problem;      // why the status is not ok, for people; empty when ok
  int error_number = 0;     // errno when the file could not be opened or read
  bool stat_known = false;  // the four fields below were read (fstat)
  std::uint64_t file_size = 0;
  std::uint32_t mode = 0;  // permission bits
  uid_t owner = 0;
  ino_t inode = 0;
  std::int64_t age_ns = 0;  // since the file was last modified
  bool has_header = false;  // `header` holds the file's first bytes (not for foreign files)
  header_fields header;
  bool creator_known = false;   // the header names its creator (ok, building, abandoned, corrupted)
  bool creator_alive = false;   // identity_alive(header.creator)
  detail_lines details;         // from the kind's inspector (status ok only)
  std::string details_problem;  // what the inspector threw, if it did
};

// An empty file or an unwritten header older than this is taken as abandoned (check_header
// gives up waiting for a creator after the same time).
inline constexpr std::int64_t abandon_after_ns = 10'000'000'000;

// Reads shm_directory/<file_name>. See the promises above.
object_report inspect_file(std::string_view file_name);

// The names of every file in shm_directory that starts with name_prefix, sorted.
std::vector<std::string> shm_file_names();

}  // namespace shmkit::detail
