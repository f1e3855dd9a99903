// SPDX-License-Identifier: MIT
// The type-erased engine under shmkit::manager, shared_dict and shared_list (lib/manager.cpp):
// a growable segment holding a crash-safe heap, a directory of named containers, hash tables
// and chunked arrays of offsets to immutable byte blobs. The templates in manager.hpp only
// encode and decode; everything that touches shared memory is here.
//
// Concurrency: writers serialise on one robust mutex; readers take no lock at all on their
// fast path (a version word, seqlock style, tells them whether a write overlapped their read,
// and they retry), and fall back to the mutex after a few failed tries or while a write is in
// progress. dict_set of a present key with a same-size value of at most 8 bytes is one atomic
// store without the lock (a "fast set"), shut out while the lock is held or a snapshot reads.
// See lib/manager.cpp for the commit protocol, fast sets and the recovery after a dead writer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmkit/detail/function_ref.hpp"
#include "shmkit/detail/segment.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/naming.hpp"

namespace shmkit::detail {

using bytes_view = std::span<const std::byte>;

// A value to store: its encoded size, and a function that writes exactly that many bytes
// (it may throw; nothing is then changed).
struct value_source {
  std::size_t size;
  function_ref<void(std::span<std::byte>)> fill;
};

// An encoded key and its hash_bytes().
struct key_ref {
  bytes_view data;
  std::uint64_t hash;
};

// A 64-bit hash of bytes, the same in every process and every build of this layout version.
std::uint64_t hash_bytes(bytes_view data) noexcept;
// hash_bytes() of the 8 bytes of `first` (as memcpy puts them in memory) followed by `rest`.
std::uint64_t hash_prefixed(std::uint64_t first, bytes_view rest) noexcept;

// Fault injection for the crash tests: when set, a write calls it at each step of its commit
// (a test makes it end the process there, as kill -9 would). nullptr in normal use.
enum class write_step : int {
  allocated = 1,    // a fresh block was taken from the heap (`busy` is set)
  version_odd,      // readers now back off
  committed,        // the commit point: the journal (or the one store) is written
  applied,          // one of several journaled stores applied
  before_free,      // all applied, the journal retired, nothing freed yet
  freed,            // one unreachable block returned to the heap
  version_even,     // published; `busy` not yet cleared
  fast_store,       // a fast set (no lock) passed its checks: its one store is next
};
extern void (*manager_fault_hook)(write_step step) noexcept;

// Fast sets without a fence (lib/manager.cpp, "the fast-set gate"): a thread switches them on
// after this many fenced fast sets in a row with no write in between; tests lower it to race
// the switch with lock holders and snapshots.
extern std::uint32_t manager_light_after;
// How many fast sets the calling thread made without a fence (a statistic for tests).
std::uint64_t manager_light_sets() noexcept;

enum class container_kind : std::uint32_t { dict = 1, list = 2 };

// What a container holds, as recorded in the manager's directory and checked on every open.
struct container_type {
  container_kind kind;
  std::uint64_t key_hash;    // tag_of<K>().hash; 0 for lists
  std::uint64_t value_hash;  // tag_of<V>().hash, tag_of<T>().hash for lists
  std::string key_name;      // readable spellings, for messages
  std::string value_name;
  std::uint32_t inline_size;  // lists: items of exactly this many bytes (<= 8) live in their
                              // slots instead of blobs; 0 otherwise
};

// Figures about the manager's memory, consistent with each other.
struct manager_stats {
  std::size_t capacity_bytes;  // the segment's size now (it grows)
  std::size_t max_bytes;       // growth limit; 0 when none
  std::size_t free_bytes;      // heap bytes not held by live data (block headers included):
                               // depends only on what the containers hold, not on placement
  std::size_t used_bytes;      // heap bytes held by live data; free + used = the heap's size
  std::size_t containers;
  std::uint64_t recoveries;    // times a writer repaired the heap after a dead writer
};

class manager_core {
 public:
  // Builds the root in a segment just created (growable, payload not yet published).
  manager_core(segment seg, std::size_t max_bytes);
  // Attaches to a published segment, checking its root.
  explicit manager_core(segment seg);
  manager_core(const manager_core&) = delete;
  manager_core& operator=(const manager_core&) = delete;
  ~manager_core();

  const segment& seg() const noexcept { return seg_; }
  segment& seg() noexcept { return seg_; }

  // The segment as this process sees it: a view that never moves (address space reserved
  // once, the file mapped into it as it grows), so that threads of one process may share a
  // handle while another thread grows the manager.
  std::byte* base() const noexcept { return base_; }
  std::size_t mapped_bytes() const noexcept { return mapped_.load(std::memory_order_acquire); }
  // Maps what other processes grew since. Cheap when nothing grew (one load).
  void refresh() {
    // acquire: pairs with the release store of mapped_size in segment::grow(): the pages are
    // backed before their size is published.
    const auto* h = reinterpret_cast<const segment_header*>(base_);
    if (h->mapped_size.load(std::memory_order_acquire) > mapped_bytes()) [[unlikely]]
      map_published();
  }
  // Grows the file to at least `total` bytes and maps it (the caller holds the writers'
  // lock). Throws shmkit::error when the memory is not there.
  void grow(std::size_t total);

  // The root offset of the container `name`, creating it (empty) when absent. Throws
  // shmkit::error when it exists with another kind or other types (the message names both),
  // or when the memory is full; std::invalid_argument for an empty name or one over 200 bytes.
  std::uint64_t open_container(std::string_view name, const container_type& type);
  std::vector<std::string> container_names();
  manager_stats stats();
  // Walks everything reachable and checks it against the heap: every block reachable exactly
  // once, every other block free, the free figure exact. Throws shmkit::error on a mismatch.
  void verify();

  // --- shared_dict ------------------------------------------------------------------------
  // Calls on_value with the value bytes and returns true, or returns false when absent.
  // on_value may be called more than once (a read that overlapped a write is retried): only
  // the last call counts. Bytes passed to it may be garbage when a retry follows, and
  // on_value may throw then (the throw is absorbed when a retry follows).
  bool dict_find(std::uint64_t root, const key_ref& key, function_ref<void(bytes_view)> on_value);
  bool dict_contains(std::uint64_t root, const key_ref& key);
  void dict_set(std::uint64_t root, const key_ref& key, const value_source& value);
  // fn receives the current value's bytes (nullptr when absent) and returns the new value;
  // it runs under the write lock and may throw (nothing changes then).
  void dict_update(std::uint64_t root, const key_ref& key,
                   function_ref<value_source(const bytes_view*)> fn);
  bool dict_erase(std::uint64_t root, const key_ref& key);
  std::size_t dict_size(std::uint64_t root);
  void dict_clear(std::uint64_t root);
  // A consistent snapshot: restart() discards what visit() collected so far (the pass
  // overlapped a write and starts again), visit() gets each entry.
  void dict_scan(std::uint64_t root, function_ref<void()> restart,
                 function_ref<void(bytes_view key, bytes_view value)> visit);

  // --- shared_list ------------------------------------------------------------------------
  void list_push_back(std::uint64_t root, const value_source& item);
  std::size_t list_size(std::uint64_t root);
  // Throws std::out_of_range (naming `what`) when i >= size.
  void list_at(std::uint64_t root, std::size_t i, function_ref<void(bytes_view)> on_item,
               const std::string& what);
  void list_set(std::uint64_t root, std::size_t i, const value_source& item, const std::string& what);
  // Calls on_item with the last item (under the write lock), then removes it. Throws
  // std::out_of_range on an empty list.
  void list_pop_back(std::uint64_t root, function_ref<void(bytes_view)> on_item,
                     const std::string& what);
  void list_clear(std::uint64_t root);
  void list_scan(std::uint64_t root, function_ref<void()> restart,
                 function_ref<void(bytes_view)> visit);

  // For tests of the recovery: true while a writer's mutation is unfinished.
  bool mutation_in_progress() const noexcept;

 private:
  void map_view(std::size_t reserve);
  void map_published();
  void extend_view(std::size_t want);  // the caller holds map_mutex_ (or is constructing)

  segment seg_;
  std::byte* base_ = nullptr;
  std::size_t reserved_ = 0;
  std::atomic<std::size_t> mapped_{0};
  std::mutex map_mutex_;  // process-local: one thread extends the view at a time
};

}  // namespace shmkit::detail
