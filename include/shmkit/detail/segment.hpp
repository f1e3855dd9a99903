// SPDX-License-Identifier: MIT
// A segment: one shared-memory region with a self-describing header, named (a file in
// /dev/shm, created and opened through Boost.Interprocess) or anonymous (a memfd, shared with
// children forked after it). Every shmkit object lives in one.
//
// Promises: pages are reserved at creation, so a full /dev/shm is a shmkit::error then and
// never a SIGBUS later; an opener sees the payload only after the creator published it (the
// header's ready word, written last with release order) and only when magic, layout version,
// kind and element type all match; otherwise shmkit::error names what was expected and found.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "shmkit/detail/type_tag.hpp"
#include "shmkit/naming.hpp"

namespace shmkit::detail {

enum class object_kind : std::uint32_t {
  shared_memory = 1,
  mutex,
  recursive_mutex,
  semaphore,
  bounded_semaphore,
  condition_variable,
  event,
  barrier,
  queue,
  joinable_queue,
  pipe,
  value,
  array,
  manager,
  internal,  // helper segments of the library itself (pool runtime, process results)
};

// "queue", "mutex", ...; "unknown kind N" for anything else.
std::string kind_name(std::uint32_t kind);

inline constexpr std::uint32_t segment_magic = 0x4b4d4853;  // "SHMK" little-endian
inline constexpr std::uint32_t ready_word = 0x59444552;     // "REDY"
// The version of everything in a segment, the protocols between processes included: two builds
// of different versions refuse each other's objects (segment::open says "incompatible")
// instead of misreading them. 2: queues claim runs of slots, pipes publish with light fences,
// dicts take lock-free fast sets. 3: barrier seats of processes attached but not yet arrived,
// a creation lock held on named segments until they are published.
inline constexpr std::uint32_t layout_version = 3;
inline constexpr std::size_t payload_alignment = 256;

struct segment_header {
  std::atomic<std::uint32_t> ready;  // 0 while the creator builds; ready_word once published
  std::uint32_t magic;
  std::uint32_t version;
  std::uint32_t kind;
  std::uint64_t type_hash;
  std::uint64_t total_size;      // header + payload, as mapped by the creator
  std::uint64_t payload_offset;  // from the start of the segment
  std::uint64_t payload_size;
  std::uint64_t creator;         // identity (pid << 32 | start ticks) of the creating process
  std::int64_t created_ns;       // CLOCK_REALTIME at creation
  std::uint32_t header_size;     // sizeof(segment_header) of the build that made it
  std::uint32_t pointer_size;
  char type_name[96];            // the element type's spelling, NUL-terminated, for messages
  // Growth of a growable segment: the size every process should map (header + payload).
  std::atomic<std::uint64_t> mapped_size;
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(segment_header) <= payload_alignment);

// What a header says about its segment, judged without trusting it: by check_header() when
// opening, and by the shmkit command (detail/inspect.hpp). `file_size` is the file's size.
enum class header_state {
  sound,         // published, this layout, sizes that fit the file
  unfinished,    // the ready word is not written yet (being built, or its creator died)
  foreign,       // not a shmkit segment: smaller than a header, wrong magic or ready word
  incompatible,  // a shmkit segment of another layout version, header size or pointer size
  corrupted,     // a shmkit header whose sizes do not fit the file
};
header_state classify_header(const segment_header& h, std::size_t file_size) noexcept;
// The bytes a process maps: header + payload, growth included (total_size or mapped_size).
std::uint64_t mapped_extent(const segment_header& h) noexcept;

// What an opener expects to find.
struct segment_spec {
  object_kind kind;
  type_tag type = untyped;
};

class segment {
 public:
  segment() noexcept = default;
  segment(segment&& other) noexcept { swap(other); }
  segment& operator=(segment&& other) noexcept {
    segment tmp(std::move(other));
    swap(tmp);
    return *this;
  }
  segment(const segment&) = delete;
  segment& operator=(const segment&) = delete;
  // Unmaps; the creating process removes the name unless release_name() was called.
  ~segment();

  // Anonymous: a memfd, inherited by children forked afterwards.
  static segment create_anonymous(segment_spec spec, std::size_t payload, bool growable = false);
  // Named. create throws shmkit::error if the name exists; open if it does not.
  static segment create(std::string_view name, segment_spec spec, std::size_t payload,
                        permissions perms = {}, bool growable = false);
  static segment open(std::string_view name, segment_spec spec, bool growable = false);
  // Opens the name if it exists, or creates it; `created` tells which.
  static segment open_or_create(std::string_view name, segment_spec spec, std::size_t payload,
                                bool& created, permissions perms = {}, bool growable = false);

  // Marks the payload built: openers waiting for it proceed. Creator only, once.
  void publish() noexcept;

  std::byte* payload() const noexcept { return base_ + header()->payload_offset; }
  std::size_t payload_size() const noexcept { return header()->payload_size; }
  segment_header* header() const noexcept { return reinterpret_cast<segment_header*>(base_); }
  std::byte* base() const noexcept { return base_; }
  std::size_t mapped_bytes() const noexcept { return mapped_; }
  // Growable segments: the descriptor kept for growth (-1 otherwise), for an owner that maps
  // the file itself (the manager keeps a view that never moves).
  int fd() const noexcept { return fd_; }

  bool valid() const noexcept { return base_ != nullptr; }
  bool named() const noexcept { return !name_.empty(); }
  const std::string& name() const noexcept { return name_; }
  // "queue 'jobs'" or "anonymous queue": how messages refer to this object.
  std::string describe() const;

  // The creating handle stops removing the name when destroyed.
  void release_name() noexcept { owns_name_ = false; }
  bool owns_name() const noexcept { return owns_name_; }

  // Growable segments only: make the whole file at least `total` bytes (reserving the pages)
  // and map it. Throws shmkit::error when the space is not there; the old mapping then stays.
  // The caller serialises growth (it holds the object's lock).
  void grow(std::size_t total);
  // Growable segments only: map again if another process grew the file. Returns true when
  // the mapping moved (pointers into the old mapping are then stale).
  bool refresh();

 private:
  void swap(segment& other) noexcept {
    std::swap(base_, other.base_);
    std::swap(mapped_, other.mapped_);
    std::swap(fd_, other.fd_);
    std::swap(name_, other.name_);
    std::swap(owns_name_, other.owns_name_);
    std::swap(owner_pid_, other.owner_pid_);
    std::swap(inode_, other.inode_);
    std::swap(creating_fd_, other.creating_fd_);
  }
  void remap(std::size_t total);

  std::byte* base_ = nullptr;
  std::size_t mapped_ = 0;
  int fd_ = -1;  // kept open only for growable segments
  std::string name_;
  bool owns_name_ = false;
  int owner_pid_ = 0;  // the process whose destructor may remove the name
  unsigned long inode_ = 0;  // of the file created, so that only that file is removed
  // A named segment being created: a descriptor holding the file's creation lock (flock)
  // until publish(), so that openers tell a creator at work from one that died (-1 after).
  int creating_fd_ = -1;
};

}  // namespace shmkit::detail
