// SPDX-License-Identifier: MIT
// The manager's engine: a crash-safe heap, a directory of named containers, dict hash tables
// and list chunk arrays, in one growable segment.
//
// Layout of the segment (all links are byte offsets from the segment's base, never pointers):
//
//   header (256 B) | root: lock, version, busy, directory, journal, heap state | heap blocks
//
// Every heap block starts with a 16-byte header {size | kind << 56, size of the block before}
// (boundary tags, so that a free block merges with both neighbours in O(1)). Kinds: free,
// directory, container, table, entry, list_body, chunk, item; a sentinel header ends the heap.
//
// Writes (one robust mutex, `root.lock`):
//   1. Build everything new in fresh blocks, unreachable from the root. Before the first
//      allocation the writer stores its identity in `busy`: the heap may now be half-updated.
//   2. Publish: make `version` odd, apply the few word stores that link the new blocks in
//      (when there are several, they go first into the redo journal, then `journal_count`
//      commits them with one store), free the blocks that became unreachable, make `version`
//      even, clear `busy`.
//   So a container changes in one commit store: readers see the old value or the new one.
// Reads take no lock: read `version` (even), follow offsets checking each against the
// mapping, re-read `version`; if it moved, retry; after a few tries, or while it is odd, take
// the mutex and read under it.
// Fast sets (dict_set of a present key, same value size, at most 8 bytes): no lock, no
// version change, one atomic store of the key's value word, which lives in the dict's table
// at the key's position (values of at most 8 bytes are kept there, not in their entries, so
// that the lines a lookup reads are never written by a fast set). A setter makes its store only
// while its identity sits in its own setter slot and it saw the lock free and no snapshot
// running (stored, fenced, then checked). Whoever shuts fast sets out (the mutex's holder,
// right after locking; a snapshot, after raising its bit in `scanning`) then waits for the
// setter slots to empty, so a fast store never lands on an entry being freed or read under
// the lock; a store validated by `version` is in place (a table that moves changes it). The
// fence is a seq_cst fence, or, while fast sets run undisturbed, none at all: the shutters
// then call heavy_fence() (membarrier) instead; see "the fast-set gate" and fast_set().
// Lock-free readers load a value word of <= 8 bytes as one atomic word.
// Recovery: the mutex's next holder finds `version` odd or `busy` set (its holder died in the
// middle) and repairs before anything else: it re-applies a committed journal, then rebuilds
// the whole heap from what is reachable (mark and sweep), which returns every block the dead
// writer had allocated or was freeing, whatever state the free lists were left in.
#include "shmkit/detail/manager_core.hpp"
#include "shmkit/manager.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <fmt/format.h>
#include <limits>
#include <stdexcept>
#include <utility>
#include <cerrno>
#include <sys/mman.h>

#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/mutex_state.hpp"
#include "shmkit/error.hpp"

namespace shmkit::detail {
namespace {

using u64 = std::uint64_t;
using u32 = std::uint32_t;

constexpr u64 root_magic = 0x52474e4d4b4d4853ull;  // "SHMKMNGR"
// 2: fast-setter and scanner slots in the root; 3: setter slots owned by a thread, and fast
// sets without a fence (`light`), compact dict tables with inline values; 4: hash_bytes()
// seeds from a key's first 8 bytes.
constexpr u32 root_layout = 4;
constexpr std::size_t journal_capacity = 6;
constexpr std::size_t max_name = 200;

// --- blocks --------------------------------------------------------------------------------

enum class block_kind : std::uint8_t {
  free = 0,
  directory = 1,
  container = 2,
  table = 3,
  entry = 4,
  list_body = 5,
  chunk = 6,
  item = 7,
  sentinel = 0x7f,
};

constexpr u64 header_bytes = 16;
constexpr u64 min_block = 32;  // header + the two free-list links
constexpr u64 size_bits = 48;
constexpr u64 size_mask = (u64(1) << size_bits) - 1;
constexpr u64 max_heap = u64(1) << size_bits;

struct block_header {
  u64 word;       // size (header included, a multiple of 16) | slack << 48 | kind << 56
  u64 prev_size;  // size of the block just before; 0 for the first
};
struct free_links {
  u64 next;  // offsets of the neighbours in the free list of this size class; 0 = none
  u64 prev;
};

constexpr u64 block_size_for(u64 payload) {
  return std::max<u64>(min_block, (payload + header_bytes + 15) & ~u64(15));
}
// slack: 16-byte units of the block beyond what was asked for (a remainder too small to split
// off), so that the live figure counts what was asked and does not depend on placement.
constexpr u64 pack_header(u64 size, block_kind k, u64 slack = 0) {
  return size | (slack << 48) | (u64(k) << 56);
}
constexpr u64 slack_bytes(u64 word) { return ((word >> 48) & 0xff) * 16; }

// Size classes: exact 16-byte steps up to 1 KiB, then four classes per power of two.
constexpr u64 small_limit = 1024;
constexpr std::size_t small_bins = small_limit / 16 - 1;  // sizes 32, 48, ..., 1024
constexpr std::size_t bin_count = small_bins + (size_bits - 10) * 4;
constexpr std::size_t bitmap_words = (bin_count + 63) / 64;

constexpr std::size_t bin_of(u64 size) {
  if (size <= small_limit) return static_cast<std::size_t>(size / 16 - 2);
  const unsigned e = 63u - static_cast<unsigned>(std::countl_zero(size));
  return small_bins + (e - 10) * 4 + static_cast<std::size_t>((size >> (e - 2)) & 3);
}
static_assert(bin_of(32) == 0 && bin_of(1024) == small_bins - 1 && bin_of(1040) == small_bins);
static_assert(bin_of(max_heap - 16) < bin_count);

// --- containers ----------------------------------------------------------------------------

struct container_block {
  u32 kind;         // container_kind
  u32 inline_size;  // lists: raw items of this many bytes live in the slots
  u64 body;         // dict: table block; list: list_body block
};
// A dict's table, compact as Python's dict: `capacity` slots (open addressing) that lead to
// positions in two dense arrays kept in insertion order, the entries' offsets and the
// values of at most 8 bytes (inline values). Such a value lives in the table, not in its
// entry, so that a fast set's store (which misses when another process set a value of that
// cache line last) touches no line that a lookup reads: slots, positions and keys stay in
// every reader's cache while values change. In insertion order, keys used in the order they
// were added walk both arrays in order, which the hardware prefetches, and processes setting
// the same keys in that order pay one miss per line of 8 values rather than one per set. The
// price: keys added one after another share a line of values, so processes that each set
// their own such key (a counter per worker) contend for that line (about 40 ns per set
// against 25 ns for keys 8 positions apart, on the 2-CPU machine of docs/BENCHMARKS.md).
struct table_block {  // followed by `capacity` slots, then dense_capacity() entries, values
  u64 capacity;       // a power of two
  u64 count;          // live entries
  u64 tombstones;     // erased slots
  u64 used;           // positions handed out (erased ones hold entry 0); <= dense_capacity
};
// Slot: (position + 1) << 16 | 16 bits of the key's hash; empty and tombstone have 0 there.
constexpr u64 slot_empty = 0;
constexpr u64 slot_tombstone = 1;
constexpr bool slot_live(u64 slot) { return (slot >> 16) != 0; }
constexpr u64 slot_pos(u64 slot) { return (slot >> 16) - 1; }
constexpr u64 slot_pack(u64 pos, u64 hash) { return ((pos + 1) << 16) | (hash >> 48); }
constexpr u64 slot_tag(u64 hash) { return hash >> 48; }
constexpr u64 min_table = 8;
// Positions a table of `cap` slots hands out before it is rebuilt (its load limit).
constexpr u64 dense_capacity(u64 cap) { return cap / 4 * 3; }
constexpr u64 table_payload(u64 cap) {
  return sizeof(table_block) + cap * 8 + dense_capacity(cap) * 16;
}
constexpr u64 slot_offset(u64 table, u64 index) {
  return table + header_bytes + sizeof(table_block) + index * 8;
}
// The entry offset and the value word at position `pos` of a table of `cap` slots.
constexpr u64 dense_entry_offset(u64 table, u64 cap, u64 pos) {
  return slot_offset(table, cap + pos);
}
constexpr u64 dense_value_offset(u64 table, u64 cap, u64 pos) {
  return slot_offset(table, cap + dense_capacity(cap) + pos);
}

// A value of at most 8 bytes lives in its slot's value word (zero-padded), others in the
// entry after the key.
constexpr bool inline_value(u64 value_len) { return value_len <= 8; }
struct entry_block {  // followed by the key, padding to 8, then the value unless inline
  u64 hash;
  u64 key_len;
  u64 value_len;
};
constexpr u64 round8(u64 n) { return (n + 7) & ~u64(7); }
// std::has_single_bit without -mpopcnt is a library call: too slow for every read.
constexpr bool power_of_two(u64 n) { return n != 0 && (n & (n - 1)) == 0; }
constexpr u64 entry_value_at(u64 key_len) { return sizeof(entry_block) + round8(key_len); }
constexpr u64 entry_payload(u64 key_len, u64 value_len) {
  return entry_value_at(key_len) + (inline_value(value_len) ? 0 : round8(value_len));
}

constexpr std::size_t max_chunks = 40;
constexpr u64 first_chunk = 16;
struct list_body_block {
  u64 size;
  u64 chunks[max_chunks];  // chunk k holds first_chunk << k slots
};
struct chunk_pos {
  std::size_t chunk;
  u64 slot;
};
constexpr chunk_pos locate(u64 i) {
  const auto k = static_cast<std::size_t>(std::bit_width(i / first_chunk + 1) - 1);
  return {k, i - first_chunk * ((u64(1) << k) - 1)};
}
constexpr u64 chunk_slots(std::size_t k) { return first_chunk << k; }
static_assert(locate(15).chunk == 0 && locate(16).chunk == 1 && locate(16).slot == 0 &&
              locate(47).slot == 31 && locate(48).chunk == 2);

struct item_block {  // followed by len bytes
  u64 len;
};

struct directory_block {  // followed by `count` records
  u64 count;
  u64 bytes;  // of the records
};
struct dir_record {  // followed by name, key type name, value type name; padded to 8
  u64 root;
  u64 key_hash;
  u64 value_hash;
  u32 kind;
  u32 inline_size;
  u32 record_bytes;
  u32 name_len;
  u32 key_name_len;
  u32 value_name_len;
};
static_assert(sizeof(dir_record) == 48);

// --- the root ------------------------------------------------------------------------------

struct journal_entry {
  u64 where;  // offset of an 8-byte word
  u64 value;
};

struct heap_state {  // touched only by the mutex holder; rebuilt by recovery
  u64 begin;         // first block
  u64 end;           // end of the heap = size of the segment; the sentinel is at end - 16
  u64 max_total;     // growth limit of the segment; 0: none
  u64 free_bytes;  // in free blocks
  u64 live_bytes;  // asked for by live blocks (block_size_for of their payloads)
  u64 recoveries;
  u64 bitmap[bitmap_words];
  u64 bins[bin_count];
};

constexpr std::size_t scanner_slots = 16;
constexpr std::size_t setter_slots = 64;  // one bit each in `setters_owned`
// A thread's own slot for its fast sets (see fast_set), on a cache line of its own so that
// setters in different processes do not share one.
struct setter_slot {
  // Identity of the thread that owns the slot: claimed once (compare-and-swap from 0, or
  // from a dead owner's identity) and kept while it lives. Only the owner stores `active`.
  alignas(64) std::atomic<u64> owner{0};
  // The owner's identity while it is inside a fast set, 0 when idle (or when a drainer took
  // it back from a dead owner).
  std::atomic<u64> active{0};
};

// States of manager_root::light, see fast_set().
enum light_state : u32 {
  light_off = 0,       // every fast set fences (seq_cst); drainers fence normally
  light_on = 1,        // fast setters of registered processes skip the fence; drainers call
                       // heavy_fence() before they look at the setter slots
  light_clearing = 2,  // being switched off: fast sets fence, drainers call heavy_fence()
  light_banning = 3,   // as clearing, then banned: a drainer could not call heavy_fence()
  light_banned = 4,    // off for good in this segment; drainers fence normally
};
// manager_root::light holds a state in its low 3 bits and a generation above them, which each
// switch on raises: a drainer's switch from clearing (or banning) back to off compares the
// whole word it read, so it cannot succeed against the clearing of a later generation (an
// ABA that would let it end a switch whose setters it never fenced).
constexpr u32 light_state_bits = 3;
constexpr u32 state_of(u32 light) { return light & ((1u << light_state_bits) - 1); }
constexpr u32 with_state(u32 light, u32 state) {
  return (light & ~((1u << light_state_bits) - 1)) | state;
}
static_assert(state_of(with_state(light_on + (5u << light_state_bits), light_clearing)) ==
              light_clearing);

struct manager_root {
  // The writers' lock and the word every reader checks: one cache line, since a writer
  // touches both and a reader only reads it.
  mutex_state lock;
  std::atomic<u64> version{0};  // even: stable; odd: a writer is publishing (or died doing so)
  std::atomic<u64> busy{0};     // identity of the writer while the heap may be half-updated
  std::atomic<u64> directory{0};
  u64 magic = root_magic;
  u32 layout = root_layout;
  // A light_state and its generation (see state_of()): whether fast sets may skip their fence
  // (see fast_set). Every fast set reads it; setters turn it on after a quiet spell, drainers
  // turn it off.
  std::atomic<u32> light{light_off};
  // Bit i: the snapshot claiming scanners[i] is running; fast sets stay off meanwhile. Every
  // fast set reads it; only snapshots write it, so its line stays in every reader's cache
  // (the words before it keep their places from layout 1, so that an older build opening
  // this segment reads its layout number and says so).
  std::atomic<u64> scanning{0};
  u64 scanners_checked = 0;  // mutex holder only: when dead scanners were last looked for (ns)
  // Bit i: setters[i] has (or had) an owner; drainers look at those slots only. Set by a
  // thread claiming a free slot, never cleared (a dead owner's slot is taken over as it is).
  std::atomic<u64> setters_owned{0};

  alignas(64) std::atomic<u32> journal_count{0};  // n > 0: the n entries below are committed
  u32 journal_reserved = 0;
  journal_entry journal[journal_capacity]{};

  // Identity of each snapshot in progress (see dict_scan); 0 when the slot is free.
  alignas(64) std::atomic<u64> scanners[scanner_slots]{};
  setter_slot setters[setter_slots]{};

  alignas(64) heap_state heap{};
};
static_assert(std::atomic<u64>::is_always_lock_free);
static_assert(std::atomic<u32>::is_always_lock_free);
static_assert(std::atomic_ref<u64>::is_always_lock_free);
static_assert(std::is_standard_layout_v<manager_root>);
// A fast set reads the lock word, then `light` and `scanning`: two lines, the second one
// written only when a snapshot starts or ends and when light fast sets are switched.
static_assert(offsetof(manager_root, light) / 64 == offsetof(manager_root, scanning) / 64);
static_assert(offsetof(manager_root, setters_owned) / 64 == offsetof(manager_root, scanning) / 64);
static_assert(setter_slots <= 64);

constexpr u64 root_at = payload_alignment;  // the root starts the payload

// A word of shared memory read or written while others may read it without the lock. relaxed:
// ordering comes from `version` (readers) and from the mutex (writers), see the protocol above.
inline u64 load(const u64& w) noexcept {
  return std::atomic_ref<u64>(const_cast<u64&>(w)).load(std::memory_order_relaxed);
}
inline void store(u64& w, u64 v) noexcept {
  std::atomic_ref<u64>(w).store(v, std::memory_order_relaxed);
}

inline void fault_point(write_step step) noexcept {
  if (manager_fault_hook != nullptr) [[unlikely]]
    manager_fault_hook(step);
}

// Thrown by a read that met an offset or length that cannot be right: during an optimistic
// read it means a write overlapped (retry); under the lock it means corruption.
struct torn {};

// Typed access by offset, through the core's view (which never moves).
class space {
 public:
  explicit space(manager_core& core) noexcept : core_(core), base_(core.base()) {}
  std::byte* base() const noexcept { return base_; }
  template <class T>
  T* at(u64 off) const noexcept {
    return reinterpret_cast<T*>(base_ + off);
  }
  manager_root* root() const noexcept { return at<manager_root>(root_at); }
  u64 mapped() const noexcept { return core_.mapped_bytes(); }
  // Throws torn unless [off, off + len) lies inside the mapping past the root.
  void check(u64 off, u64 len) const {
    const u64 m = mapped();
    if (off < heap_floor || off > m || len > m - off) [[unlikely]]
      throw torn{};
  }
  // The block at `off` must be of kind `k` and hold `payload` bytes; returns its size (the
  // whole block then lies inside the mapping).
  u64 check_block(u64 off, block_kind k, u64 payload) const {
    const u64 m = mapped();
    if (off < heap_floor || off > m - header_bytes || off % 16 != 0) [[unlikely]]
      throw torn{};
    const u64 word = load(at<block_header>(off)->word);
    const u64 size = word & size_mask;
    if (static_cast<block_kind>(word >> 56) != k || size < header_bytes + payload ||
        size > m - off) [[unlikely]]
      throw torn{};
    return size;
  }
  manager_core& core() const noexcept { return core_; }
  const segment& seg() const noexcept { return core_.seg(); }

 private:
  // No block starts before the end of the root (the mapping always holds the root).
  static constexpr u64 heap_floor = root_at + sizeof(manager_root);
  manager_core& core_;
  std::byte* base_;  // the core's view never moves
};

block_header* hdr(const space& s, u64 off) { return s.at<block_header>(off); }
u64 size_of(const space& s, u64 off) { return hdr(s, off)->word & size_mask; }
block_kind kind_of(const space& s, u64 off) {
  return static_cast<block_kind>(hdr(s, off)->word >> 56);
}
template <class T>
T* payload(const space& s, u64 off) {
  return s.at<T>(off + header_bytes);
}

// --- the heap (mutex holder only) ----------------------------------------------------------

class heap {
 public:
  explicit heap(const space& s) noexcept : s_(s) {}
  heap_state& st() const noexcept { return s_.root()->heap; }

  // One free block over [begin, end - 16) and the sentinel.
  void init(u64 begin, u64 end) {
    heap_state& h = st();
    h.begin = begin;
    h.end = end;
    h.free_bytes = 0;
    std::fill(std::begin(h.bitmap), std::end(h.bitmap), 0);
    std::fill(std::begin(h.bins), std::end(h.bins), 0);
    const u64 size = end - header_bytes - begin;
    *hdr(s_, begin) = {pack_header(size, block_kind::free), 0};
    *hdr(s_, end - header_bytes) = {pack_header(header_bytes, block_kind::sentinel), size};
    h.free_bytes = size;
    h.live_bytes = 0;
    insert(begin);
  }

  // A block with at least `payload` bytes, or 0 when none is free.
  u64 try_alloc(u64 payload_len, block_kind k) {
    if (payload_len > max_heap) return 0;
    const u64 need = block_size_for(payload_len);
    const u64 b = find(need);
    if (b == 0) return 0;
    take(b, need, k);
    return b;
  }

  void free(u64 off) noexcept {
    heap_state& h = st();
    u64 size = size_of(s_, off);
    h.free_bytes += size;
    h.live_bytes -= size - slack_bytes(hdr(s_, off)->word);
    const u64 next = off + size;
    if (kind_of(s_, next) == block_kind::free) {
      unlink(next);
      size += size_of(s_, next);
    }
    const u64 ps = hdr(s_, off)->prev_size;
    if (ps != 0 && kind_of(s_, off - ps) == block_kind::free) {
      off -= ps;
      unlink(off);
      size += size_of(s_, off);
    }
    hdr(s_, off)->word = pack_header(size, block_kind::free);
    hdr(s_, off + size)->prev_size = size;
    insert(off);
  }

  // Adds [end, new_end) to the heap: the old sentinel becomes a block that is then freed
  // (merging with a free block before it), and a new sentinel ends the heap.
  void extend(u64 new_end) {
    heap_state& h = st();
    const u64 old_sentinel = h.end - header_bytes;
    const u64 size = new_end - h.end;
    hdr(s_, old_sentinel)->word = pack_header(size, block_kind::item);
    *hdr(s_, new_end - header_bytes) = {pack_header(header_bytes, block_kind::sentinel), size};
    h.end = new_end;
    h.live_bytes += size;  // free() below takes it off again
    free(old_sentinel);
  }

  // Rebuilds the heap around the live blocks (sorted by offset, not overlapping): every gap
  // becomes one free block, every boundary tag is rewritten.
  void rebuild(const std::vector<std::pair<u64, u64>>& live) {
    heap_state& h = st();
    std::fill(std::begin(h.bitmap), std::end(h.bitmap), 0);
    std::fill(std::begin(h.bins), std::end(h.bins), 0);
    h.free_bytes = 0;
    h.live_bytes = 0;
    const u64 last = h.end - header_bytes;
    u64 cur = h.begin;
    u64 prev = 0;       // size of the block before `cur`
    u64 prev_off = 0;   // and its offset
    auto gap = [&](u64 to) {
      const u64 n = to - cur;
      if (n == 0) return;
      if (n < min_block) {
        // Cannot happen (every block is at least min_block); absorb it into the block
        // before rather than lose track of it.
        if (prev == 0) throw error("shmkit: manager heap is corrupted: a gap at its start");
        const u64 w = hdr(s_, prev_off)->word;
        prev += n;
        hdr(s_, prev_off)->word =
            pack_header(prev, kind_of(s_, prev_off), (slack_bytes(w) + n) / 16);
        cur = to;
        return;
      }
      *hdr(s_, cur) = {pack_header(n, block_kind::free), prev};
      h.free_bytes += n;
      insert(cur);
      prev = n;
      prev_off = cur;
      cur = to;
    };
    for (const auto& [off, size] : live) {
      gap(off);
      hdr(s_, off)->prev_size = prev;
      h.live_bytes += size - slack_bytes(hdr(s_, off)->word);
      prev = size;
      prev_off = off;
      cur = off + size;
    }
    gap(last);
    *hdr(s_, last) = {pack_header(header_bytes, block_kind::sentinel), prev};
  }


  // Checks the whole heap against `live` (sorted): throws shmkit::error on any mismatch.
  void verify(const std::vector<std::pair<u64, u64>>& live) const;

 private:
  free_links* links(u64 off) const { return payload<free_links>(s_, off); }

  void insert(u64 off) {
    heap_state& h = st();
    const std::size_t b = bin_of(size_of(s_, off));
    const u64 head = h.bins[b];
    *links(off) = {head, 0};
    if (head != 0) links(head)->prev = off;
    h.bins[b] = off;
    h.bitmap[b / 64] |= u64(1) << (b % 64);
  }

  void unlink(u64 off) {
    heap_state& h = st();
    const free_links l = *links(off);
    if (l.prev != 0) {
      links(l.prev)->next = l.next;
    } else {
      const std::size_t b = bin_of(size_of(s_, off));
      h.bins[b] = l.next;
      if (l.next == 0) h.bitmap[b / 64] &= ~(u64(1) << (b % 64));
    }
    if (l.next != 0) links(l.next)->prev = l.prev;
  }

  u64 find(u64 need) const {
    const heap_state& h = st();
    std::size_t b = bin_of(need);
    if (b < small_bins) {
      if (h.bins[b] != 0) return h.bins[b];  // exact size
    } else {
      for (u64 x = h.bins[b]; x != 0; x = links(x)->next)
        if (size_of(s_, x) >= need) return x;
    }
    // Any block of a higher class is big enough.
    for (std::size_t i = b + 1; i < bin_count;) {
      const u64 word = h.bitmap[i / 64] >> (i % 64);
      if (word != 0) return h.bins[i + static_cast<std::size_t>(std::countr_zero(word))];
      i = (i / 64 + 1) * 64;
    }
    return 0;
  }

  void take(u64 off, u64 need, block_kind k) {
    heap_state& h = st();
    unlink(off);
    u64 size = size_of(s_, off);
    if (size - need >= min_block) {
      const u64 rest = off + need;
      *hdr(s_, rest) = {pack_header(size - need, block_kind::free), need};
      hdr(s_, off + size)->prev_size = size - need;
      insert(rest);
      size = need;
    }
    hdr(s_, off)->word = pack_header(size, k, (size - need) / 16);
    h.free_bytes -= size;
    h.live_bytes += need;
  }

  const space& s_;
};

void heap::verify(const std::vector<std::pair<u64, u64>>& live) const {
  const heap_state& h = st();
  auto fail = [](std::string what) {
    throw error("shmkit: manager heap check failed: " + what);
  };
  std::size_t li = 0;
  u64 prev = 0, free_sum = 0, free_blocks = 0, live_sum = 0;
  u64 off = h.begin;
  const u64 last = h.end - header_bytes;
  while (off < last) {
    const u64 size = size_of(s_, off);
    if (size < min_block || size % 16 != 0 || off + size > last)
      fail(fmt::format("block at {} has size {}", off, size));
    if (hdr(s_, off)->prev_size != prev)
      fail(fmt::format("block at {} says the block before is {} bytes, not {}", off,
                       hdr(s_, off)->prev_size, prev));
    const bool is_live = li < live.size() && live[li].first == off;
    if (is_live) {
      if (live[li].second != size) fail(fmt::format("live block at {} changed size", off));
      if (kind_of(s_, off) == block_kind::free)
        fail(fmt::format("block at {} is reachable but marked free", off));
      live_sum += size - slack_bytes(hdr(s_, off)->word);
      ++li;
    } else {
      if (kind_of(s_, off) != block_kind::free)
        fail(fmt::format("block at {} ({} bytes, kind {}) is in use but unreachable: a leak", off,
                         size, static_cast<int>(kind_of(s_, off))));
      if (prev != 0 && kind_of(s_, off - prev) == block_kind::free)
        fail(fmt::format("free blocks at {} and {} were not merged", off - prev, off));
      free_sum += size;
      ++free_blocks;
    }
    prev = size;
    off += size;
  }
  if (off != last || kind_of(s_, last) != block_kind::sentinel || hdr(s_, last)->prev_size != prev)
    fail(fmt::format("the heap does not end with its sentinel (walk ended at {}, sentinel at {} "
                     "of kind {} says the block before is {} bytes, not {})",
                     off, last, static_cast<int>(kind_of(s_, last)), hdr(s_, last)->prev_size,
                     prev));
  if (li != live.size()) fail("a reachable block lies outside the heap");
  if (free_sum != h.free_bytes)
    fail(fmt::format("free blocks hold {} bytes but the heap counts {}", free_sum, h.free_bytes));
  if (live_sum != h.live_bytes)
    fail(fmt::format("live blocks hold {} bytes but the heap counts {}", live_sum, h.live_bytes));
  u64 listed = 0;
  for (std::size_t b = 0; b < bin_count; ++b) {
    const bool bit = (h.bitmap[b / 64] >> (b % 64)) & 1;
    if (bit != (h.bins[b] != 0)) fail(fmt::format("size class {} bitmap is wrong", b));
    u64 before = 0;
    for (u64 x = h.bins[b]; x != 0; x = links(x)->next) {
      if (kind_of(s_, x) != block_kind::free || bin_of(size_of(s_, x)) != b ||
          links(x)->prev != before)
        fail(fmt::format("free list {} holds a wrong block at {}", b, x));
      before = x;
      if (++listed > free_blocks) fail("a free list loops");
    }
  }
  if (listed != free_blocks)
    fail(fmt::format("{} free blocks but {} in the free lists", free_blocks, listed));
}

// --- reachability (mark) -------------------------------------------------------------------

// Every block reachable from the root, as (offset, size), sorted. Checks every structure on
// the way; throws torn on anything out of shape.
std::vector<std::pair<u64, u64>> reachable(const space& s) {
  std::vector<std::pair<u64, u64>> live;
  const manager_root* r = s.root();
  const u64 heap_end = r->heap.end - header_bytes;
  auto add = [&](u64 off, block_kind k, u64 payload_len) {
    const u64 size = s.check_block(off, k, payload_len);
    if (off < r->heap.begin || off + size > heap_end) throw torn{};
    live.emplace_back(off, size);
    return size;
  };
  const u64 dir = r->directory.load(std::memory_order_relaxed);
  if (dir != 0) {
    const u64 dsize = add(dir, block_kind::directory, sizeof(directory_block));
    const auto* d = payload<directory_block>(s, dir);
    if (d->bytes > dsize - header_bytes - sizeof(directory_block)) throw torn{};
    u64 at = dir + header_bytes + sizeof(directory_block);
    const u64 end = at + d->bytes;
    for (u64 i = 0; i < d->count; ++i) {
      if (at + sizeof(dir_record) > end) throw torn{};
      const auto* rec = s.at<dir_record>(at);
      if (rec->record_bytes < sizeof(dir_record) || rec->record_bytes > end - at) throw torn{};
      at += rec->record_bytes;
      add(rec->root, block_kind::container, sizeof(container_block));
      const auto* c = payload<container_block>(s, rec->root);
      if (c->kind == static_cast<u32>(container_kind::dict)) {
        const u64 tsize = add(c->body, block_kind::table, sizeof(table_block));
        const auto* t = payload<table_block>(s, c->body);
        const u64 cap = t->capacity;
        if (!power_of_two(cap) || cap > (tsize - header_bytes) / 20 ||
            table_payload(cap) > tsize - header_bytes || t->used > dense_capacity(cap))
          throw torn{};
        const u64* slots = reinterpret_cast<const u64*>(t + 1);
        const u64* entries = slots + cap;
        u64 count = 0;
        for (u64 j = 0; j < cap; ++j) {
          if (!slot_live(slots[j])) continue;
          if (slot_pos(slots[j]) >= t->used || entries[slot_pos(slots[j])] == 0) throw torn{};
          ++count;
        }
        if (count != t->count) throw torn{};
        count = 0;
        for (u64 pos = 0; pos < t->used; ++pos) {
          const u64 e = entries[pos];
          if (e == 0) continue;
          ++count;
          const u64 esize = add(e, block_kind::entry, sizeof(entry_block));
          const auto* en = payload<entry_block>(s, e);
          if (en->key_len > esize || en->value_len > esize ||
              entry_payload(en->key_len, en->value_len) > esize - header_bytes)
            throw torn{};
        }
        if (count != t->count) throw torn{};
      } else if (c->kind == static_cast<u32>(container_kind::list)) {
        add(c->body, block_kind::list_body, sizeof(list_body_block));
        const auto* l = payload<list_body_block>(s, c->body);
        const u64 n = l->size;
        for (std::size_t k = 0; k < max_chunks; ++k) {
          if (l->chunks[k] == 0) {
            if (n > first_chunk * ((u64(1) << k) - 1)) throw torn{};  // items without a chunk
            continue;
          }
          add(l->chunks[k], block_kind::chunk, chunk_slots(k) * 8);
          if (c->inline_size != 0) continue;
          const u64 first = first_chunk * ((u64(1) << k) - 1);
          if (n <= first) continue;
          const u64* slots = payload<u64>(s, l->chunks[k]);
          const u64 upto = std::min(n - first, chunk_slots(k));
          for (u64 j = 0; j < upto; ++j) {
            const u64 isize = add(slots[j], block_kind::item, sizeof(item_block));
            if (payload<item_block>(s, slots[j])->len > isize - header_bytes - sizeof(item_block))
              throw torn{};
          }
        }
      } else {
        throw torn{};
      }
    }
  }
  std::sort(live.begin(), live.end());
  for (std::size_t i = 1; i < live.size(); ++i)
    if (live[i - 1].first + live[i - 1].second > live[i].first) throw torn{};
  return live;
}

// --- the fast-set gate ----------------------------------------------------------------------
//
// Fast sets (fast_set()) store without the lock while the gate is open: the lock free and no
// snapshot running. Whoever closes the gate (the lock's holder, right after locking; a
// snapshot, after raising its bit in `scanning`) is a drainer: it then waits for the fast sets
// under way (drain_setters()), so that no fast store lands after its drain.
//
// The handshake, Dekker-style. A setter stores its identity in its own slot (`active`),
// fences, loads `light`, then the lock word and `scanning`, and stores its value only if the
// gate is open. A drainer closes the gate with a read-modify-write, makes a seq_cst fence,
// loads `light`, calls heavy_fence() when `light` is not off (nor banned), then loads each
// owned slot and waits while it holds a setter. The setter's fence is a seq_cst fence, except
// when its process registered for light fences (register_light_fences()) and it read
// light_on: then it is light_fence() alone, and the set makes no locked instruction. For every
// setter S that stores and every drainer D, either D sees S's slot taken (and waits for S to
// finish), or S's gate loads see D's gate closed:
//   (a) S fenced (seq_cst): fence against fence, as in any Dekker handshake.
//   (b) S light, D read light_on, clearing or banning: D's heavy_fence() ran a full fence F on
//       S's CPU. If S's slot store precedes F, it is visible to D's slot loads, which follow
//       the heavy fence. Otherwise S's loads follow F, which follows D's read-modify-write: S
//       sees the gate closed (or opened again by D when done: then D's writes are visible to
//       S, whose check of `version` afterwards sees them).
//   (c) S light (it read light_on, written by W1), D read light_off or light_banned (written
//       by W0). Either W0 precedes W1 in the modification order of `light`: W1 is a setter's
//       seq_cst switch from off to on, so D's gate RMW < D's load of `light` < W1 <= S's load
//       of `light` < S's gate loads in the seq_cst total order, and S sees the gate closed.
//       Or W1 precedes W0: the first write after W1 was a drainer's switch to clearing or
//       banning (C1), and W0 is, or follows, a switch from there to off or banned (C0) made by
//       a drainer D'' that read C1's value (the switch compares the whole word, whose
//       generation W1 raised: a clearing read before W1 cannot be ended after it), then
//       called heavy_fence() and drained. S read
//       `light` before C1, so (as in (b), with D''s fence) S's slot store was visible to D'''s
//       drain, which waited for S to finish before C0; D read C0 or a later read-modify-write
//       (every write to `light` is one, so C0's release sequence goes on): S's store happens
//       before D's drain.
// So a setter loads `light` before the gate words (the order matters for (c)), all seq_cst
// (plain loads on x86). A drain while light is on costs a heavy_fence() (a system call and an
// interrupt to each CPU running a registered process, about 10 us here), so the first drainer
// to see light on switches it off, and setters switch it on again only after light_after fast
// sets in a row with no write in between (see fast_set()).
// A drainer whose heavy_fence() fails (a process that may not call membarrier, beside others
// that registered) bans light sets for good: it switches `light` to banning, sleeps 10 ms,
// then drains. That one path relies on time (a light setter's slot store leaves its CPU's
// store buffer within nanoseconds) instead of a fence.

// Waits until the thread `id` has left the fast-set slot `word` (it stays there for a few
// loads and one store), or takes the slot back from it when it died there.
void wait_for_setter(std::atomic<u64>& word, u64 id) {
  // acquire: pairs with the release store of 0 that ends a fast set: its value store is
  // visible to us once we see the slot free.
  auto gone = [&] { return word.load(std::memory_order_acquire) != id; };
  if (spin_until(gone)) return;
  for (;;) {
    if (!identity_alive(id)) {
      u64 expected = id;
      // acq_rel: a dead setter's one value store is done or never happens; either is fine.
      // When the CAS fails, the slot's new owner (who took it over) is in it: see the gate.
      word.compare_exchange_strong(expected, 0, std::memory_order_acq_rel,
                                   std::memory_order_acquire);
      return;
    }
    // Alive but descheduled inside its few instructions: sleep in short slices.
    for (int i = 0; i < 100; ++i) {
      std::atomic<u32> never{0};
      futex_wait(&never, 0, clock::now() + std::chrono::milliseconds(1));
      if (gone()) return;
    }
  }
}

// Waits for every owned slot to be idle.
void drain_slots(manager_root* r) {
  // seq_cst: a slot is marked owned (seq_cst) before its first fast set: a bit we miss here
  // was set after this load, and its setter's gate loads see our gate closed.
  u64 owned = r->setters_owned.load(std::memory_order_seq_cst);
  while (owned != 0) {
    const auto i = static_cast<std::size_t>(std::countr_zero(owned));
    owned &= owned - 1;
    std::atomic<u64>& active = r->setters[i].active;
    const u64 id = active.load(std::memory_order_seq_cst);
    if (id != 0) wait_for_setter(active, id);
  }
}

// Waits until no fast set is under way: see the handshake above. The caller has closed the
// gate (it holds the writers' lock, or its bit is up in `scanning`) with a read-modify-write.
void drain_setters(manager_root* r) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  u32 l = r->light.load(std::memory_order_seq_cst);
  if (state_of(l) == light_off || state_of(l) == light_banned) [[likely]] {
    drain_slots(r);
    return;
  }
  // Light sets are (or were just) on: switch them off, since drainers come, and fence them.
  // seq_cst: read-modify-writes only (see (c) above). On failure `l` is what we found.
  if (state_of(l) == light_on &&
      r->light.compare_exchange_strong(l, with_state(l, light_clearing),
                                       std::memory_order_seq_cst))
    l = with_state(l, light_clearing);
  if (heavy_fence()) [[likely]] {
    drain_slots(r);
    // We read `l` (clearing or banning) before our heavy fence and drained after it: every
    // setter that read light_on of this generation before that switch is done (see (c)). The
    // compare-and-swap takes the whole word: a later generation's clearing is not ours.
    if (state_of(l) == light_clearing || state_of(l) == light_banning)
      r->light.compare_exchange_strong(
          l, with_state(l, state_of(l) == light_clearing ? light_off : light_banned),
          std::memory_order_seq_cst);
    return;
  }
  u32 banning = r->light.load(std::memory_order_seq_cst);
  while (!r->light.compare_exchange_weak(banning, with_state(banning, light_banning),
                                         std::memory_order_seq_cst)) {
  }
  banning = with_state(banning, light_banning);
  std::atomic<u32> never{0};
  const time_point until = clock::now() + std::chrono::milliseconds(10);
  while (clock::now() < until) futex_wait(&never, 0, until);
  drain_slots(r);
  r->light.compare_exchange_strong(banning, with_state(banning, light_banned),
                                   std::memory_order_seq_cst);
}

// A scanner killed in its snapshot leaves its bit up, which keeps fast sets off (every set
// then takes the lock, which is correct, only slower). The lock holder clears such bits; it
// looks at most every 100 ms, since liveness is read from /proc.
void reap_dead_scanners(manager_root* r) {
  // relaxed: a hint; the slots below are read with acquire.
  if (r->scanning.load(std::memory_order_relaxed) == 0) return;
  const u64 now = static_cast<u64>(clock::now().time_since_epoch().count());
  if (r->scanners_checked != 0 && now - r->scanners_checked < 100'000'000) return;
  r->scanners_checked = now;
  for (std::size_t i = 0; i < scanner_slots; ++i) {
    const u64 bit = u64(1) << i;
    if ((r->scanning.load(std::memory_order_acquire) & bit) == 0) continue;
    // acquire: pairs with the scanner's claim of its slot (seq_cst). A scanner claims its slot
    // before it raises its bit and drops the bit before it frees the slot: a raised bit names
    // a claimed slot.
    const u64 id = r->scanners[i].load(std::memory_order_acquire);
    if (id == 0 || identity_alive(id)) continue;
    r->scanning.fetch_and(~bit, std::memory_order_seq_cst);
    u64 expected = id;
    r->scanners[i].compare_exchange_strong(expected, 0, std::memory_order_acq_rel,
                                           std::memory_order_relaxed);
  }
}

// --- writers -------------------------------------------------------------------------------

// Holds the writers' mutex for a scope; repairs what a dead writer left before anything else.
// Fast sets are off while it is held: it waits for those under way before anything else.
class write_lock {
 public:
  explicit write_lock(manager_core& core, void (*recover)(manager_core&)) : core_(core) {
    space(core).root()->lock.lock();  // throws system_error if this thread holds it
    try {
      manager_root* r = space(core).root();
      drain_setters(r);  // the lock word is set: see drain_setters
      reap_dead_scanners(r);
      core.refresh();
      // relaxed: we hold the mutex, whose acquire orders us after the last holder that
      // released it; a holder that died released nothing, and then these words are exactly
      // what recovery is for.
      if ((r->version.load(std::memory_order_relaxed) & 1) != 0 ||
          r->busy.load(std::memory_order_relaxed) != 0 ||
          r->journal_count.load(std::memory_order_acquire) != 0)
        recover(core);
      if (r->lock.owner_died()) r->lock.mark_consistent();
    } catch (...) {
      space(core).root()->lock.unlock_if_owner();
      throw;
    }
  }
  write_lock(const write_lock&) = delete;
  write_lock& operator=(const write_lock&) = delete;
  ~write_lock() { space(core_).root()->lock.unlock_if_owner(); }

 private:
  manager_core& core_;
};

// One mutation. Allocations are undone when it is destroyed uncommitted (an exception: out of
// memory, a value's encoder throwing); commit() publishes it.
class txn {
 public:
  explicit txn(manager_core& core) noexcept : s_(core) {}
  txn(const txn&) = delete;
  txn& operator=(const txn&) = delete;
  ~txn() {
    if (committed_) return;
    heap h(s_);
    for (std::size_t i = 0; i < fresh_count_; ++i) h.free(fresh_[i]);
    for (u64 off : fresh_more_) h.free(off);
    if (busy_) s_.root()->busy.store(0, std::memory_order_release);  // after the frees
  }

  const space& sp() const noexcept { return s_; }

  // A fresh block; grows the segment when no free block fits. Throws shmkit::error when the
  // memory is full (the mutation then leaves everything as it was).
  u64 alloc(u64 payload_len, block_kind k) {
    mark_busy();
    heap h(s_);
    u64 off = h.try_alloc(payload_len, k);
    if (off == 0) {
      grow_for(block_size_for(payload_len));
      off = heap(s_).try_alloc(payload_len, k);
      if (off == 0) throw error(fmt::format("shmkit: {} is full", s_.seg().describe()));
    }
    if (fresh_count_ < fresh_.size())
      fresh_[fresh_count_++] = off;
    else
      fresh_more_.push_back(off);
    fault_point(write_step::allocated);
    return off;
  }

  // A word store to make at commit.
  void stage(u64 where, u64 value) {
    if (staged_ == journal_capacity) throw std::logic_error("shmkit: manager journal overflow");
    journal_[staged_++] = {where, value};
  }
  // A block (and what hangs from it) to free once the commit made it unreachable.
  void retire(u64 off, block_kind k = block_kind::free, u32 inline_size = 0) {
    if (retired_ == retire_.size()) throw std::logic_error("shmkit: manager retire overflow");
    retire_[retired_++] = {off, k, inline_size};
  }

  void commit() noexcept {
    manager_root* r = s_.root();
    if (retired_ != 0) mark_busy();
    const u64 v = r->version.load(std::memory_order_relaxed);
    r->version.store(v + 1, std::memory_order_relaxed);
    // release fence: the odd version is ordered before every store below; pairs with the
    // acquire fence readers place before re-reading `version`.
    std::atomic_thread_fence(std::memory_order_release);
    fault_point(write_step::version_odd);
    if (staged_ == 1) {
      store(*s_.at<u64>(journal_[0].where), journal_[0].value);
      fault_point(write_step::committed);
    } else if (staged_ > 1) {
      for (std::size_t i = 0; i < staged_; ++i) r->journal[i] = journal_[i];
      // release: the entries above are written before the commit; pairs with the acquire
      // load of journal_count in recovery.
      r->journal_count.store(static_cast<u32>(staged_), std::memory_order_release);
      fault_point(write_step::committed);
      for (std::size_t i = 0; i < staged_; ++i) {
        store(*s_.at<u64>(journal_[i].where), journal_[i].value);
        if (i == 0) fault_point(write_step::applied);
      }
      // release: the stores above are done before the journal is retired.
      r->journal_count.store(0, std::memory_order_release);
    }
    fault_point(write_step::before_free);
    for (std::size_t i = 0; i < retired_; ++i) free_tree(retire_[i]);
    // release: pairs with the acquire load of `version` that starts a read: a reader that
    // sees v + 2 sees every store above.
    r->version.store(v + 2, std::memory_order_release);
    fault_point(write_step::version_even);
    if (busy_) r->busy.store(0, std::memory_order_release);
    committed_ = true;
  }

  // An 8-byte store that commits on its own (a value overwritten in place): readers still
  // see the version move, so that snapshots stay consistent.
  void commit_word(u64 where, u64 value) noexcept {
    stage(where, value);
    commit();
  }

 private:
  struct retired {
    u64 off;
    block_kind kind;
    u32 inline_size;
  };

  void mark_busy() noexcept {
    if (busy_) return;
    s_.root()->busy.store(self_identity(), std::memory_order_relaxed);
    // release fence: `busy` is set before any store to the heap below, so that a writer
    // killed in the middle is always noticed (pairs with the next holder's mutex acquire).
    std::atomic_thread_fence(std::memory_order_release);
    busy_ = true;
  }

  // Frees a block, and for a table or list body everything hanging from it.
  void free_tree(const retired& x) noexcept {
    if (x.kind == block_kind::table) {
      const auto* t = payload<table_block>(s_, x.off);
      for (u64 pos = 0; pos < t->used; ++pos) {
        const u64 e = *s_.at<u64>(dense_entry_offset(x.off, t->capacity, pos));
        if (e != 0) release(e);
      }
    } else if (x.kind == block_kind::list_body) {
      for (std::size_t k = 0; k < max_chunks; ++k) {
        const auto* l = payload<list_body_block>(s_, x.off);
        const u64 chunk = l->chunks[k], size = l->size;
        if (chunk == 0) continue;
        if (x.inline_size == 0) {
          const u64 first = first_chunk * ((u64(1) << k) - 1);
          for (u64 j = 0; first + j < size && j < chunk_slots(k); ++j)
            release(payload<u64>(s_, chunk)[j]);
        }
        release(chunk);
      }
    }
    release(x.off);
  }

  void release(u64 off) noexcept {
    heap(s_).free(off);
    if (freed_one_) return;
    freed_one_ = true;
    fault_point(write_step::freed);
  }

  void grow_for(u64 need);

  space s_;
  // Filled up to their counts only (a write should not pay for clearing them).
  std::array<u64, 4> fresh_;
  std::size_t fresh_count_ = 0;
  std::vector<u64> fresh_more_;
  std::array<journal_entry, journal_capacity> journal_;
  std::size_t staged_ = 0;
  std::array<retired, 4> retire_;
  std::size_t retired_ = 0;
  bool busy_ = false;
  bool committed_ = false;
  bool freed_one_ = false;
};

constexpr u64 page = 4096;

void txn::grow_for(u64 need) {
  const segment& seg = s_.seg();
  heap_state& h = s_.root()->heap;
  const u64 cur = h.end;
  const u64 free_now = h.free_bytes;
  const u64 max_total = h.max_total;
  const u64 least = (cur + need + header_bytes + page - 1) / page * page;
  auto full = [&](const std::string& why) {
    return error(fmt::format("shmkit: {} is full: {} more bytes are needed, {} of its {} are "
                             "free, and it cannot grow: {}",
                             seg.describe(), need, free_now, cur, why));
  };
  if (least > max_heap) throw full("the request is beyond any machine");
  if (max_total != 0 && least > max_total)
    throw full(fmt::format("its limit is {} bytes (manager_options::max_bytes)", max_total));
  u64 target = std::max(least, cur * 2);
  if (max_total != 0) target = std::min(target, max_total);
  try {
    s_.core().grow(target);
  } catch (const error& e) {
    if (target == least) throw full(e.what());
    try {
      target = least;
      s_.core().grow(target);
    } catch (const error& e2) {
      throw full(e2.what());
    }
  }
  heap(s_).extend(target);  // the mapping may have moved: heap re-reads the root
}

void recover(manager_core& core) {
  space s(core);
  manager_root* r = s.root();
  heap_state& h = r->heap;
  // A heap that lies about its own bounds cannot be repaired.
  if (h.begin != (root_at + sizeof(manager_root) + 63) / 64 * 64 || h.end > s.mapped() ||
      h.end % page != 0 || h.end < h.begin + min_block + header_bytes)
    throw error(fmt::format("shmkit: {} is corrupted: its heap bounds are [{}, {})",
                            core.seg().describe(), h.begin, h.end));
  u64 v = r->version.load(std::memory_order_relaxed);
  if ((v & 1) == 0) {
    r->version.store(++v, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);  // as in txn::commit
  }
  // acquire: pairs with the release store in txn::commit: the entries are complete.
  const u32 n = r->journal_count.load(std::memory_order_acquire);
  if (n > journal_capacity)
    throw error(fmt::format("shmkit: {} is corrupted: its journal holds {} entries",
                            core.seg().describe(), n));
  for (u32 i = 0; i < n; ++i) {
    const journal_entry e = r->journal[i];
    if (e.where % 8 != 0 || e.where < root_at || e.where + 8 > h.end)
      throw error(fmt::format("shmkit: {} is corrupted: a journal entry points at {}",
                              core.seg().describe(), e.where));
    store(*s.at<u64>(e.where), e.value);
  }
  r->journal_count.store(0, std::memory_order_release);
  std::vector<std::pair<u64, u64>> live;
  try {
    live = reachable(s);
  } catch (const torn&) {
    throw error(fmt::format("shmkit: {} is corrupted: its containers do not hold together",
                            core.seg().describe()));
  }
  heap(s).rebuild(live);
  ++h.recoveries;
  r->version.store(v + 1, std::memory_order_release);  // as in txn::commit
  r->busy.store(0, std::memory_order_release);
}

// --- readers -------------------------------------------------------------------------------

constexpr int optimistic_tries = 4;

// Runs pass(space) without the lock until a run does not overlap a write, or under the lock.
template <class Pass>
auto read(manager_core& core, Pass&& pass) {
  const segment& seg = core.seg();
  for (int attempt = 0; attempt < optimistic_tries; ++attempt) {
    core.refresh();
    space s(core);
    const manager_root* r = s.root();
    // acquire: pairs with the release store of an even version in txn::commit: everything
    // published before it is visible to the pass.
    const u64 v = r->version.load(std::memory_order_acquire);
    if ((v & 1) != 0) break;  // a writer is publishing, or died doing so: go through the lock
    try {
      auto result = pass(s);
      // acquire fence: the pass's loads happen before the re-read below; pairs with the
      // release fence after the odd version store in txn::commit.
      std::atomic_thread_fence(std::memory_order_acquire);
      if (r->version.load(std::memory_order_relaxed) == v) return result;
    } catch (const torn&) {
      // An offset that cannot be right: a write overlapped, or the segment grew.
    } catch (...) {
      std::atomic_thread_fence(std::memory_order_acquire);
      if (r->version.load(std::memory_order_relaxed) == v) throw;  // a genuine error
    }
  }
  write_lock lock(core, recover);
  try {
    return pass(space(core));
  } catch (const torn&) {
    throw error(fmt::format("shmkit: {} is corrupted: a container holds an offset outside "
                            "its memory",
                            seg.describe()));
  }
}

// Runs op(txn&) under the writers' lock; op commits.
template <class Op>
auto write(manager_core& core, Op&& op) {
  write_lock lock(core, recover);
  try {
    txn t(core);
    return op(t);
  } catch (const torn&) {
    throw error(fmt::format("shmkit: {} is corrupted: a container holds an offset outside "
                            "its memory",
                            core.seg().describe()));
  }
}

// --- dict ----------------------------------------------------------------------------------

// A container block never moves and is never freed, and its offset was checked when the
// handle was made (open_container): no check here.
const container_block* container_at(const space& s, u64 root) {
  return payload<container_block>(s, root);
}

struct probe_result {
  u64 table;   // block offset
  u64 index;   // the key's slot, or where it would go (first tombstone or empty slot met)
  u64 entry;   // 0 when absent
  bool reuses_tombstone;
  bytes_view value;  // the value when present (in the table when inline)
  u64 pos = 0;       // the key's position when present
};

// A dict's current table, checked.
struct table_view {
  u64 table;  // block offset
  const table_block* header;
  u64 cap;
  const u64* slots;
  const u64* entries() const noexcept { return slots + cap; }
  // The value word of position `pos`.
  const u64* value(u64 pos) const noexcept {
    return slots + cap + dense_capacity(cap) + pos;
  }
  // The entry at the position a live slot names; throws torn when it cannot be right.
  u64 entry_of(u64 slot) const {
    const u64 pos = slot_pos(slot);
    if (pos >= dense_capacity(cap)) throw torn{};
    const u64 e = load(entries()[pos]);
    if (e == 0) throw torn{};
    return e;
  }
};

table_view table_of(const space& s, u64 root) {
  const u64 table = load(container_at(s, root)->body);
  const u64 size = s.check_block(table, block_kind::table, sizeof(table_block));
  const auto* t = payload<table_block>(s, table);
  const u64 cap = load(t->capacity);
  // Against the block's own size, which check_block bounded: cap * 20 could overflow.
  if (!power_of_two(cap) || cap > (size - header_bytes) / 20 ||
      table_payload(cap) > size - header_bytes)
    throw torn{};
  return {table, t, cap, reinterpret_cast<const u64*>(t + 1)};
}

// Where the value of the entry `en` at position `pos` lies: the position's value word when
// inline.
bytes_view value_of(const table_view& tv, u64 pos, const entry_block* en, u64 key_len,
                    u64 value_len) {
  const std::byte* at = inline_value(value_len)
                            ? reinterpret_cast<const std::byte*>(tv.value(pos))
                            : reinterpret_cast<const std::byte*>(en) + entry_value_at(key_len);
  return {at, static_cast<std::size_t>(value_len)};
}

// memcmp(a, b, n) == 0, without a library call for the short keys most dicts have.
inline bool same_bytes(const std::byte* a, const std::byte* b, u64 n) noexcept {
  if (n >= 8 && n <= 16) {
    u64 a0, b0, a1, b1;
    std::memcpy(&a0, a, 8);
    std::memcpy(&b0, b, 8);
    std::memcpy(&a1, a + n - 8, 8);
    std::memcpy(&b1, b + n - 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
  }
  return n == 0 || std::memcmp(a, b, n) == 0;
}

// `to_write`: the caller means to write the key's value (see the prefetch below).
probe_result probe(const space& s, u64 root, const key_ref& key, bool to_write = false) {
  const table_view tv = table_of(s, root);
  const auto [table, t, cap, slots] = tv;
  const u64 mask = cap - 1;
  const u64 tag = slot_tag(key.hash);
  u64 insert_at = ~u64(0);
  u64 i = key.hash & mask;
  for (u64 n = 0; n < cap; ++n, i = (i + 1) & mask) {
    const u64 slot = load(slots[i]);
    if (slot == slot_empty) {
      if (insert_at == ~u64(0)) return {table, i, 0, false, {}};
      return {table, insert_at, 0, true, {}};
    }
    if (slot == slot_tombstone) {
      if (insert_at == ~u64(0)) insert_at = i;
      continue;
    }
    if ((slot & 0xffff) != tag) continue;
    // Most likely the key's: start fetching its inline value word while the key is compared
    // (for writing only when it will be written: readers in several processes share it).
    const u64 e = tv.entry_of(slot);
    const u64 pos = slot_pos(slot);
    if (to_write)
      __builtin_prefetch(tv.value(pos), 1);
    else
      __builtin_prefetch(tv.value(pos), 0);
    const u64 esize = s.check_block(e, block_kind::entry, sizeof(entry_block));
    const auto* en = payload<entry_block>(s, e);
    const u64 key_len = load(en->key_len);
    if (load(en->hash) != key.hash || key_len != key.data.size()) continue;
    const u64 value_len = load(en->value_len);
    // key_len is the caller's, so small: no overflow below.
    if (value_len > esize || entry_payload(key_len, value_len) > esize - header_bytes)
      throw torn{};
    if (!same_bytes(reinterpret_cast<const std::byte*>(en + 1), key.data.data(), key_len))
      continue;
    return {table, i, e, false, value_of(tv, pos, en, key_len, value_len), pos};
  }
  if (insert_at != ~u64(0)) return {table, insert_at, 0, true, {}};
  throw torn{};  // a full table without tombstones: never built so
}

// --- fast sets -----------------------------------------------------------------------------

// What a thread keeps about its fast sets (process-local).
struct setter_thread {
  std::size_t slot = setter_slots;  // its slot in the root it used last (checked each time)
  u64 light_for = 0;    // self_identity() when it registered for light fences (0: not yet);
                        // a forked child has another identity, so it registers again
  u64 quiet_version = 1;  // `version` during its last fenced fast sets (odd: none)
  u32 quiet_sets = 0;     // fenced fast sets in a row at that version
  u32 claim_later = 0;    // fast sets to go before it tries again to claim a slot
  u64 light_sets = 0;     // statistic: fast sets made without a fence
};
thread_local setter_thread setter_tls;

// This thread's own setter slot in `r`: found or claimed (compare-and-swap of the owner from
// 0, or else from a dead owner's identity, which reads /proc); nullptr when all are owned by
// live threads. The search starts at a place drawn from the identity, so a thread tends to
// own the same slot in every manager and finds it at once. Owners never go back to 0, so the
// first slot met that is free or ours is ours if we own one.
[[gnu::noinline]] setter_slot* claim_setter_slot(manager_root* r, u64 me) {
  setter_thread& st = setter_tls;
  if (st.claim_later != 0) {
    --st.claim_later;
    return nullptr;
  }
  const std::size_t first = static_cast<std::size_t>((me >> 32) * 0x9e3779b97f4a7c15ull >> 58);
  for (std::size_t n = 0; n < setter_slots; ++n) {
    const std::size_t i = (first + n) % setter_slots;
    std::atomic<u64>& owner = r->setters[i].owner;
    u64 o = owner.load(std::memory_order_relaxed);  // relaxed: confirmed by the CAS below
    // seq_cst: claimed, then marked owned (seq_cst, see drain_slots()) before the first set.
    if (o == 0 && owner.compare_exchange_strong(o, me, std::memory_order_seq_cst,
                                                std::memory_order_relaxed)) {
      r->setters_owned.fetch_or(u64(1) << i, std::memory_order_seq_cst);
      o = me;
    }
    if (o == me) {
      st.slot = i;
      return &r->setters[i];
    }
  }
  for (std::size_t n = 0; n < setter_slots; ++n) {
    const std::size_t i = (first + n) % setter_slots;
    std::atomic<u64>& owner = r->setters[i].owner;
    u64 o = owner.load(std::memory_order_relaxed);  // relaxed: confirmed by the CAS below
    // seq_cst: as above; the slot's bit is up already. Its `active` may still hold the dead
    // owner: drainers take it back, or our first set overwrites it (see wait_for_setter()).
    if (!identity_alive(o) &&
        owner.compare_exchange_strong(o, me, std::memory_order_seq_cst,
                                      std::memory_order_relaxed)) {
      r->setters_owned.fetch_or(u64(1) << i, std::memory_order_seq_cst);
      st.slot = i;
      return &r->setters[i];
    }
  }
  st.claim_later = 4096;  // all taken by live threads: take the lock meanwhile
  return nullptr;
}

setter_slot* own_setter_slot(manager_root* r, u64 me) {
  const std::size_t i = setter_tls.slot;
  // relaxed: only this thread stores its identity there, and nobody replaces it while we live.
  if (i < setter_slots && r->setters[i].owner.load(std::memory_order_relaxed) == me) [[likely]]
    return &r->setters[i];
  return claim_setter_slot(r, me);
}

// After light_after fenced fast sets in a row with no write in between: registers this process
// for light fences (once) and switches light sets on, unless drainers switched them off for
// good. seq_cst: the switch W1 of case (c) in the handshake above.
[[gnu::noinline]] void switch_light_on(manager_root* r, u64 me) {
  setter_thread& st = setter_tls;
  if (st.light_for != me) {
    if (!register_light_fences()) return;
    st.light_for = me;
  }
  // From off only, to the next generation's on (see state_of()).
  u32 l = r->light.load(std::memory_order_seq_cst);
  if (state_of(l) != light_off) return;
  r->light.compare_exchange_strong(l, with_state(l + (1u << light_state_bits), light_on),
                                   std::memory_order_seq_cst);
}

}  // namespace

std::uint32_t manager_light_after = 4096;
std::uint64_t manager_light_sets() noexcept { return setter_tls.light_sets; }

namespace {

// set() of a key already present whose value keeps its size of at most 8 bytes, without the
// lock: one atomic store into the key's value word (in the table). Returns false when it
// cannot (the key is absent, the size changes, a writer holds the lock, a snapshot is
// running, no setter slot is free): the caller then takes the writers' lock.
//
// Why it is safe: the entry is found by an optimistic probe validated by `version` (as a read
// is), and the store is made only while this thread's identity sits in its setter slot and
// the gate is open: the lock free and no snapshot running, both checked after the slot was
// taken (the handshake under "the fast-set gate"). Whoever closes the gate (a lock holder, a
// scanner) then waits for the slots to empty (drain_setters), so no fast store lands while
// the lock is held or a snapshot reads: an entry is never freed, moved or read for a
// read-modify-write under a fast store. Killed at any instruction, a fast setter leaves the
// old value or the new one (one aligned 8-byte store), and at most its slot busy, which the
// next drainer takes back (identity_alive), and its slot owned, which another thread takes
// over. Fast sets do not move `version`: a lock-free reader loads the value word atomically,
// and what version validates (the entry's place and size) fast sets do not change.
bool fast_set(manager_core& core, u64 root, const key_ref& key, const value_source& value) {
  if (value.size > 8) return false;
  std::byte bytes[8]{};
  value.fill({bytes, value.size});  // may throw: nothing has changed
  u64 word;
  std::memcpy(&word, bytes, 8);
  const u64 me = self_identity();
  setter_thread& st = setter_tls;
  for (int attempt = 0; attempt < 2; ++attempt) {
    core.refresh();
    const space s(core);
    manager_root* r = s.root();
    // acquire: pairs with the release store of an even version in txn::commit, as in read().
    const u64 v = r->version.load(std::memory_order_acquire);
    if ((v & 1) != 0) return false;
    u64 where;
    try {
      const probe_result p = probe(s, root, key, true);
      // Unvalidated yet: a wrong answer here only sends us to the lock.
      if (p.entry == 0 || p.value.size() != value.size) return false;
      where = static_cast<u64>(p.value.data() - s.base());
    } catch (const torn&) {
      continue;
    }
    setter_slot* slot = own_setter_slot(r, me);
    if (slot == nullptr) return false;
    // relaxed: ordered before the gate loads by the fence below (seq_cst, or light against the
    // drainers' heavy_fence()): the store half of the handshake.
    slot->active.store(me, std::memory_order_relaxed);
    light_fence();
    // seq_cst, all the gate loads: the load half of the handshake; `light` first.
    const bool light =
        st.light_for == me && state_of(r->light.load(std::memory_order_seq_cst)) == light_on;
    if (!light) std::atomic_thread_fence(std::memory_order_seq_cst);
    const bool closed = r->lock.owner.load(std::memory_order_seq_cst) != 0 ||
                        r->scanning.load(std::memory_order_seq_cst) != 0;
    // acquire fence: the probe's loads happen before the re-read of `version`, as in read().
    std::atomic_thread_fence(std::memory_order_acquire);
    const bool moved = r->version.load(std::memory_order_relaxed) != v;
    const bool ok = !closed && !moved && where % 8 == 0;
    // release: the store stays after the checks above (a gate seen closed stores nothing).
    if (ok) {
      fault_point(write_step::fast_store);
      std::atomic_ref<u64>(*s.at<u64>(where)).store(word, std::memory_order_release);
    }
    // release: pairs with the acquire load in wait_for_setter(): a drainer that sees the slot
    // free sees the value store.
    slot->active.store(0, std::memory_order_release);
    if (ok) {
      if (light) {
        ++st.light_sets;
      } else if (v != st.quiet_version) {
        st.quiet_version = v;
        st.quiet_sets = 1;
      } else if (++st.quiet_sets >= manager_light_after) {
        st.quiet_sets = 0;
        switch_light_on(r, me);
      }
      return true;
    }
    st.quiet_sets = 0;
    if (closed) return false;
  }
  return false;
}

// The value of entry `p` into `word` when it is small (a fast set may store it any time, so
// it is loaded as one atomic word), else a view of it in place.
bytes_view stable_value(const space& s, const probe_result& p, u64& word) {
  if (p.value.size() > 8) return p.value;
  const u64 at = static_cast<u64>(p.value.data() - s.base());
  if (at % 8 != 0) throw torn{};
  // relaxed: the word is self-contained (no other data is published with it); a lock-free
  // read is validated by `version` as every read is.
  word = std::atomic_ref<u64>(*s.at<u64>(at)).load(std::memory_order_relaxed);
  return {reinterpret_cast<const std::byte*>(&word), p.value.size()};
}

// The value of the entry `e` at position `pos` (a snapshot's pass).
bytes_view entry_value(const space& s, const table_view& tv, u64 pos, u64 e) {
  const u64 esize = size_of(s, e);
  const auto* en = payload<entry_block>(s, e);
  const u64 key_len = load(en->key_len);
  const u64 value_len = load(en->value_len);
  if (key_len > esize || value_len > esize ||
      entry_payload(key_len, value_len) > esize - header_bytes)
    throw torn{};
  return value_of(tv, pos, en, key_len, value_len);
}

bytes_view entry_key(const space& s, u64 e) {
  const auto* en = payload<entry_block>(s, e);
  return {reinterpret_cast<const std::byte*>(en + 1), static_cast<std::size_t>(load(en->key_len))};
}

// The word an inline value is stored as (zero-padded). Throws what value.fill throws.
u64 inline_word(const value_source& value) {
  std::byte bytes[8]{};
  value.fill({bytes, value.size});
  u64 w;
  std::memcpy(&w, bytes, 8);
  return w;
}

// A new entry block holding the key, and the value unless it is inline (then `word` receives
// it, for the slot's value word). Throws what the allocation or value.fill throw.
u64 make_entry(txn& t, const key_ref& key, const value_source& value, u64& word) {
  word = 0;
  if (inline_value(value.size)) word = inline_word(value);
  const u64 e = t.alloc(entry_payload(key.data.size(), value.size), block_kind::entry);
  const space& s = t.sp();
  auto* en = payload<entry_block>(s, e);
  *en = {key.hash, key.data.size(), value.size};
  if (!key.data.empty()) std::memcpy(en + 1, key.data.data(), key.data.size());
  if (!inline_value(value.size)) {
    std::byte* v = reinterpret_cast<std::byte*>(en) + entry_value_at(key.data.size());
    std::memset(v, 0, round8(value.size));
    value.fill({v, value.size});
  }
  return e;
}

// Appends entry `e` (value word `word`) to a table being built: its next position, and a slot.
void table_append(const space& s, u64 table, u64 e, u64 hash, u64 word) {
  auto* nt = payload<table_block>(s, table);
  const u64 cap = nt->capacity;
  u64* slots = reinterpret_cast<u64*>(nt + 1);
  const u64 pos = nt->used++;
  slots[cap + pos] = e;
  slots[cap + dense_capacity(cap) + pos] = word;
  u64 i = hash & (cap - 1);
  while (slots[i] != slot_empty) i = (i + 1) & (cap - 1);
  slots[i] = slot_pack(pos, hash);
  ++nt->count;
}

// A new table of `cap` slots holding the live entries of `old` (0: none) and their inline
// values, in their order.
u64 make_table(txn& t, u64 cap, u64 old) {
  const u64 table = t.alloc(table_payload(cap), block_kind::table);
  const space& s = t.sp();
  auto* nt = payload<table_block>(s, table);
  *nt = {cap, 0, 0, 0};
  std::memset(nt + 1, 0, table_payload(cap) - sizeof(table_block));
  if (old != 0) {
    const auto* ot = payload<table_block>(s, old);
    const u64* oentries = reinterpret_cast<const u64*>(ot + 1) + ot->capacity;
    const u64* ovalues = oentries + dense_capacity(ot->capacity);
    for (u64 pos = 0; pos < ot->used; ++pos) {
      const u64 e = oentries[pos];
      if (e != 0) table_append(s, table, e, payload<entry_block>(s, e)->hash, ovalues[pos]);
    }
  }
  return table;
}

// Inserts or replaces key's value; `p` is the probe made under the same lock.
void dict_store(txn& t, u64 root, const key_ref& key, const probe_result& p, const value_source& value) {
  const space& s = t.sp();
  if (p.entry != 0) {
    const bytes_view old = p.value;
    if (inline_value(old.size()) && value.size == old.size()) {
      // Same inline size: overwrite the value word in place, one store.
      const u64 where = static_cast<u64>(old.data() - s.base());
      t.commit_word(where, inline_word(value));
      return;
    }
    // Another size: a new entry at the same position (the slot stays).
    u64 word;
    const u64 e = make_entry(t, key, value, word);
    const u64 cap = payload<table_block>(s, p.table)->capacity;
    t.stage(dense_entry_offset(p.table, cap, p.pos), e);
    if (inline_value(value.size)) t.stage(dense_value_offset(p.table, cap, p.pos), word);
    t.retire(p.entry);
    t.commit();
    return;
  }
  const auto* tb = payload<table_block>(s, p.table);
  const u64 cap = tb->capacity, count = tb->count, tombs = tb->tombstones, used = tb->used;
  if ((count + tombs + 1) * 4 > cap * 3 || used == dense_capacity(cap)) {
    // Too full: a new table (bigger unless tombstones were the problem) with the new entry.
    u64 ncap = std::max(min_table, cap);
    while ((count + 1) * 2 > ncap) ncap *= 2;
    u64 word;
    const u64 e = make_entry(t, key, value, word);
    const u64 table = make_table(t, ncap, p.table);
    table_append(t.sp(), table, e, key.hash, word);
    t.stage(root + header_bytes + offsetof(container_block, body), table);
    t.retire(p.table);  // the table only: its entries live on in the new one
    t.commit();
    return;
  }
  u64 word;
  const u64 e = make_entry(t, key, value, word);
  const u64 tb_at = p.table + header_bytes;
  // Position `used` is reachable from no slot until the commit below: written directly.
  store(*s.at<u64>(dense_entry_offset(p.table, cap, used)), e);
  store(*s.at<u64>(dense_value_offset(p.table, cap, used)), word);
  t.stage(slot_offset(p.table, p.index), slot_pack(used, key.hash));
  t.stage(tb_at + offsetof(table_block, used), used + 1);
  t.stage(tb_at + offsetof(table_block, count), count + 1);
  if (p.reuses_tombstone) t.stage(tb_at + offsetof(table_block, tombstones), tombs - 1);
  t.commit();
}

// A list's inline item size: written once when the list is made.
u32 load_inline(const space& s, u64 root) {
  const u32 n = container_at(s, root)->inline_size;
  if (n > 8) throw torn{};
  return n;
}

u64 list_body_of(const space& s, u64 root) {
  const u64 body = load(container_at(s, root)->body);
  s.check_block(body, block_kind::list_body, sizeof(list_body_block));
  return body;
}

// The slot of item i (< size) in a list body; checks the chunk.
const u64* list_slot(const space& s, u64 body, u64 i) {
  const chunk_pos pos = locate(i);
  if (pos.chunk >= max_chunks) throw torn{};
  const u64 chunk = load(payload<list_body_block>(s, body)->chunks[pos.chunk]);
  s.check_block(chunk, block_kind::chunk, chunk_slots(pos.chunk) * 8);
  return payload<u64>(s, chunk) + pos.slot;
}

bytes_view list_item(const space& s, u32 inline_size, const u64* slot) {
  if (inline_size != 0) return {reinterpret_cast<const std::byte*>(slot), inline_size};
  const u64 item = load(*slot);
  const u64 isize = s.check_block(item, block_kind::item, sizeof(item_block));
  const auto* it = payload<item_block>(s, item);
  const u64 len = load(it->len);
  if (len > isize - header_bytes - sizeof(item_block)) throw torn{};
  return {reinterpret_cast<const std::byte*>(it + 1), static_cast<std::size_t>(len)};
}

// The slot word for a new item: the bytes themselves (inline) or a new item block.
u64 make_item(txn& t, u32 inline_size, const value_source& item) {
  if (inline_size != 0) {
    if (item.size != inline_size)
      throw std::logic_error("shmkit: a list item of the wrong size for its inline slots");
    std::byte word[8]{};
    item.fill({word, item.size});
    u64 w;
    std::memcpy(&w, word, 8);
    return w;
  }
  const u64 off = t.alloc(sizeof(item_block) + item.size, block_kind::item);
  auto* it = payload<item_block>(t.sp(), off);
  it->len = item.size;
  item.fill({reinterpret_cast<std::byte*>(it + 1), item.size});
  return off;
}

u64 make_list_body(txn& t) {
  const u64 body = t.alloc(sizeof(list_body_block), block_kind::list_body);
  *payload<list_body_block>(t.sp(), body) = {};
  return body;
}

[[noreturn]] void out_of_range(const std::string& what, std::size_t i, std::size_t n) {
  throw std::out_of_range(
      fmt::format("shmkit: {}: index {} is out of range (size {})", what, i, n));
}

// --- directory -----------------------------------------------------------------------------

struct record_view {
  const dir_record* rec;
  std::string_view name, key_name, value_name;
};

template <class Fn>
void for_each_record(const space& s, Fn&& fn) {
  const u64 dir = s.root()->directory.load(std::memory_order_relaxed);
  if (dir == 0) return;
  const auto* d = payload<directory_block>(s, dir);
  u64 at = dir + header_bytes + sizeof(directory_block);
  for (u64 i = 0; i < d->count; ++i) {
    const auto* rec = s.at<dir_record>(at);
    const char* text = reinterpret_cast<const char*>(rec + 1);
    fn(record_view{rec, {text, rec->name_len}, {text + rec->name_len, rec->key_name_len},
                   {text + rec->name_len + rec->key_name_len, rec->value_name_len}});
    at += rec->record_bytes;
  }
}

std::string describe_type(container_kind kind, std::string_view key, std::string_view value) {
  if (kind == container_kind::dict) return fmt::format("shared_dict<{}, {}>", key, value);
  return fmt::format("shared_list<{}>", value);
}

}  // namespace

void (*manager_fault_hook)(write_step) noexcept = nullptr;

// --- hashing -------------------------------------------------------------------------------

// wyhash (Wang Yi, public domain; final version 4): one or two 64x64->128-bit multiplies for
// a short key, 16 bytes per step for a long one; passes SMHasher. It is part of the layout:
// every process must hash alike, so it never changes within a layout version.
namespace {
constexpr u64 wy_secret[4] = {0x2d358dccaa6c78a5ull, 0x8bb84b93962eacc9ull,
                              0x4b33a62ed433d4a3ull, 0x4d5a2da51de1aa47ull};
__extension__ typedef unsigned __int128 u128;  // GCC and Clang on 64-bit targets
inline void wy_mum(u64& a, u64& b) noexcept {
  const u128 r = static_cast<u128>(a) * b;
  a = static_cast<u64>(r);
  b = static_cast<u64>(r >> 64);
}
inline u64 wy_mix(u64 a, u64 b) noexcept {
  wy_mum(a, b);
  return a ^ b;
}
inline u64 wy_r8(const std::byte* p) noexcept {
  u64 v;
  std::memcpy(&v, p, 8);
  return v;
}
inline u64 wy_r4(const std::byte* p) noexcept {
  u32 v;
  std::memcpy(&v, p, 4);
  return v;
}
inline u64 wy_r3(const std::byte* p, std::size_t k) noexcept {
  return (u64(p[0]) << 16) | (u64(p[k >> 1]) << 8) | u64(p[k - 1]);
}
// The seed after wyhash's first step, for seed 0.
const u64 wy_seed = wy_mix(wy_secret[0], wy_secret[1]);
}  // namespace

namespace {
// wyhash of the `len` bytes at p from `seed`, with `total` (the whole key's length) mixed in
// at the end.
u64 wy_hash(const std::byte* p, std::size_t len, u64 seed, u64 total) noexcept {
  u64 a, b;
  if (len <= 16) [[likely]] {
    if (len >= 4) {
      a = (wy_r4(p) << 32) | wy_r4(p + ((len >> 3) << 2));
      b = (wy_r4(p + len - 4) << 32) | wy_r4(p + len - 4 - ((len >> 3) << 2));
    } else if (len > 0) {
      a = wy_r3(p, len);
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    std::size_t i = len;
    if (i > 48) {
      u64 see1 = seed, see2 = seed;
      do {
        seed = wy_mix(wy_r8(p) ^ wy_secret[1], wy_r8(p + 8) ^ seed);
        see1 = wy_mix(wy_r8(p + 16) ^ wy_secret[2], wy_r8(p + 24) ^ see1);
        see2 = wy_mix(wy_r8(p + 32) ^ wy_secret[3], wy_r8(p + 40) ^ see2);
        p += 48;
        i -= 48;
      } while (i > 48);
      seed ^= see1 ^ see2;
    }
    while (i > 16) {
      seed = wy_mix(wy_r8(p) ^ wy_secret[1], wy_r8(p + 8) ^ seed);
      i -= 16;
      p += 16;
    }
    a = wy_r8(p + i - 16);
    b = wy_r8(p + i - 8);
  }
  a ^= wy_secret[1];
  b ^= seed;
  wy_mum(a, b);
  return wy_mix(a ^ wy_secret[0] ^ total, b ^ wy_secret[1]);
}

// The seed for the bytes after a key's first 8 bytes, read as the word w.
inline u64 wy_seed_after(u64 w) noexcept { return wy_mix(w ^ wy_secret[2], wy_seed ^ wy_secret[3]); }
}  // namespace

// A key of 8 bytes or more: its first 8 bytes make the seed for wyhash of the rest. So a key
// made of a word and bytes (an encoded string: its length, then its characters) is hashed from
// the two as they are (hash_prefixed()), without reading back the buffer it was just encoded
// into: a load that spans two recent stores (the length's and the characters') cannot take
// its bytes from the store buffer and waits for both to reach the cache (measured: a quarter
// of a dict set of a short string key).
std::uint64_t hash_bytes(bytes_view data) noexcept {
  const std::byte* p = data.data();
  const std::size_t len = data.size();
  if (len >= 8) return wy_hash(p + 8, len - 8, wy_seed_after(wy_r8(p)), len);
  return wy_hash(p, len, wy_seed, len);
}

std::uint64_t hash_prefixed(std::uint64_t first, bytes_view rest) noexcept {
  return wy_hash(rest.data(), rest.size(), wy_seed_after(first), 8 + rest.size());
}


// --- manager_core --------------------------------------------------------------------------

// Address space a manager's view reserves when it has no max_bytes: it cannot grow past
// this. Only address space: nothing is committed until the file grows into it.
constexpr u64 default_reserve = u64(256) << 30;

manager_core::manager_core(segment seg, std::size_t max_bytes) : seg_(std::move(seg)) {
  const u64 end = seg_.mapped_bytes();
  const u64 begin = (root_at + sizeof(manager_root) + 63) / 64 * 64;
  if (end < begin + 4 * page)
    throw std::logic_error("shmkit: manager segment too small for its root");
  // A limit is a whole number of pages, and never below the first size.
  const u64 max_total = max_bytes == 0 ? 0 : std::max<u64>(max_bytes / page * page, end);
  map_view(max_total != 0 ? max_total : std::max(default_reserve, end));
  space s(*this);
  auto* r = new (s.root()) manager_root{};
  r->heap.max_total = max_total;
  heap(s).init(begin, end);
  seg_.publish();
}

manager_core::manager_core(segment seg) : seg_(std::move(seg)) {
  if (seg_.mapped_bytes() < root_at + sizeof(manager_root))
    throw error(fmt::format("shmkit: {} is too small to hold a manager", seg_.describe()));
  const auto* r = reinterpret_cast<const manager_root*>(seg_.base() + root_at);
  if (r->magic != root_magic || r->layout != root_layout)
    throw error(fmt::format("shmkit: {} was made by an incompatible shmkit build (manager "
                            "layout {}, this build reads layout {})",
                            seg_.describe(), r->layout, root_layout));
  const u64 max_total = r->heap.max_total;  // written once, before the segment was published
  const u64 now = seg_.mapped_bytes();
  map_view(std::max<u64>(max_total != 0 ? max_total : default_reserve, now));
}

manager_core::~manager_core() {
  if (base_ != nullptr) ::munmap(base_, reserved_);
}

void manager_core::map_view(std::size_t reserve) {
  // Where address space is limited (ulimit -v, valgrind), settle for less, down to the size
  // the segment has now: growth past the reservation then fails like a full /dev/shm.
  const std::size_t least = (seg_.mapped_bytes() + page - 1) / page * page;
  reserved_ = std::max((reserve + page - 1) / page * page, least);
  void* p = MAP_FAILED;
  for (;;) {
    p = ::mmap(nullptr, reserved_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
               0);
    if (p != MAP_FAILED || reserved_ == least) break;
    reserved_ = std::max(reserved_ / 4 / page * page, least);
  }
  if (p == MAP_FAILED)
    throw error(fmt::format("shmkit: cannot reserve {} bytes of address space for {}: {}",
                            reserved_, seg_.describe(), std::strerror(errno)));
  base_ = static_cast<std::byte*>(p);
  try {
    extend_view(seg_.mapped_bytes());
  } catch (...) {
    ::munmap(base_, reserved_);
    base_ = nullptr;
    throw;
  }
}

void manager_core::extend_view(std::size_t want) {
  const std::size_t have = mapped_.load(std::memory_order_relaxed);
  if (want <= have) return;
  if (want > reserved_)
    throw error(fmt::format("shmkit: {} cannot grow to {} bytes: its view reserved {} bytes of "
                            "address space (give manager_options::max_bytes to reserve more)",
                            seg_.describe(), want, reserved_));
  void* p = ::mmap(base_ + have, want - have, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                   seg_.fd(), static_cast<off_t>(have));
  if (p == MAP_FAILED)
    throw error(fmt::format("shmkit: cannot map {} at {} bytes: {}", seg_.describe(), want,
                            std::strerror(errno)));
  // release: pairs with the acquire load in mapped_bytes(): the pages are mapped before
  // another thread of this process is told it may use them.
  mapped_.store(want, std::memory_order_release);
}

void manager_core::map_published() {
  const auto* h = reinterpret_cast<const segment_header*>(base_);
  std::lock_guard g(map_mutex_);
  extend_view(h->mapped_size.load(std::memory_order_acquire));  // as in refresh()
}

void manager_core::grow(std::size_t total) {
  total = (total + page - 1) / page * page;
  if (total > reserved_)
    throw error(fmt::format("its view reserved {} bytes of address space (give "
                            "manager_options::max_bytes to reserve more)",
                            reserved_));
  seg_.refresh();  // the segment's own mapping, so that the size it publishes only grows
  seg_.grow(total);
  std::lock_guard g(map_mutex_);
  extend_view(total);
}

bool manager_core::mutation_in_progress() const noexcept {
  const auto* r = reinterpret_cast<const manager_root*>(base_ + root_at);
  return (r->version.load(std::memory_order_acquire) & 1) != 0 ||
         r->busy.load(std::memory_order_acquire) != 0;
}

std::uint64_t manager_core::open_container(std::string_view name, const container_type& type) {
  if (name.empty() || name.size() > max_name)
    throw std::invalid_argument(fmt::format(
        "shmkit: container name '{}' in {}: names are 1..{} bytes", name, seg_.describe(),
        max_name));
  const std::string want = describe_type(type.kind, type.key_name, type.value_name);
  auto matches = [&](const record_view& rv) -> bool {
    if (rv.name != name) return false;
    if (rv.rec->kind != static_cast<u32>(type.kind) || rv.rec->key_hash != type.key_hash ||
        rv.rec->value_hash != type.value_hash || rv.rec->inline_size != type.inline_size)
      throw error(fmt::format("shmkit: {}: '{}' is a {}, not a {}", seg_.describe(), name,
                              describe_type(static_cast<container_kind>(rv.rec->kind),
                                            rv.key_name, rv.value_name),
                              want));
    return true;
  };
  return write(*this, [&](txn& t) -> u64 {
    u64 found = 0;
    for_each_record(t.sp(), [&](const record_view& rv) {
      if (found == 0 && matches(rv)) found = rv.rec->root;
    });
    if (found != 0) {
      t.sp().check_block(found, block_kind::container, sizeof(container_block));
      return found;
    }

    // A new container: its block, its empty body, and a new directory with one more record.
    const u64 root = t.alloc(sizeof(container_block), block_kind::container);
    const u64 body = type.kind == container_kind::dict ? make_table(t, min_table, 0)
                                                       : make_list_body(t);
    *payload<container_block>(t.sp(), root) = {static_cast<u32>(type.kind), type.inline_size,
                                               body};
    auto clip = [](std::string_view s) { return s.substr(0, 1000); };
    const std::string_view kn = clip(type.key_name), vn = clip(type.value_name);
    const u64 rec_bytes = round8(sizeof(dir_record) + name.size() + kn.size() + vn.size());
    const u64 old = t.sp().root()->directory.load(std::memory_order_relaxed);
    const u64 old_bytes = old ? payload<directory_block>(t.sp(), old)->bytes : 0;
    const u64 old_count = old ? payload<directory_block>(t.sp(), old)->count : 0;
    const u64 dir = t.alloc(sizeof(directory_block) + old_bytes + rec_bytes,
                            block_kind::directory);
    const space& s = t.sp();
    auto* d = payload<directory_block>(s, dir);
    *d = {old_count + 1, old_bytes + rec_bytes};
    auto* recs = reinterpret_cast<std::byte*>(d + 1);
    if (old != 0) std::memcpy(recs, payload<directory_block>(s, old) + 1, old_bytes);
    auto* rec = reinterpret_cast<dir_record*>(recs + old_bytes);
    std::memset(rec, 0, rec_bytes);
    *rec = {root,
            type.key_hash,
            type.value_hash,
            static_cast<u32>(type.kind),
            type.inline_size,
            static_cast<u32>(rec_bytes),
            static_cast<u32>(name.size()),
            static_cast<u32>(kn.size()),
            static_cast<u32>(vn.size())};
    char* text = reinterpret_cast<char*>(rec + 1);
    std::memcpy(text, name.data(), name.size());
    std::memcpy(text + name.size(), kn.data(), kn.size());
    std::memcpy(text + name.size() + kn.size(), vn.data(), vn.size());
    t.stage(root_at + offsetof(manager_root, directory), dir);
    if (old != 0) t.retire(old);
    t.commit();
    return root;
  });
}

std::vector<std::string> manager_core::container_names() {
  return write(*this, [&](txn& t) {
    std::vector<std::string> names;
    for_each_record(t.sp(), [&](const record_view& rv) { names.emplace_back(rv.name); });
    return names;
  });
}

manager_stats manager_core::stats() {
  return write(*this, [&](txn& t) {
    const heap_state& h = t.sp().root()->heap;
    std::size_t n = 0;
    for_each_record(t.sp(), [&](const record_view&) { ++n; });
    const u64 heap_bytes = h.end - header_bytes - h.begin;
    return manager_stats{h.end, h.max_total, heap_bytes - h.live_bytes, h.live_bytes, n,
                         h.recoveries};
  });
}

void manager_core::verify() {
  write(*this, [&](txn& t) {
    std::vector<std::pair<u64, u64>> live;
    try {
      live = reachable(t.sp());
    } catch (const torn&) {
      throw error(fmt::format("shmkit: manager heap check failed: the containers of {} do not "
                              "hold together",
                              seg_.describe()));
    }
    heap(t.sp()).verify(live);
    return 0;
  });
}

// --- dict ----------------------------------------------------------------------------------

bool manager_core::dict_find(std::uint64_t root, const key_ref& key,
                             function_ref<void(bytes_view)> on_value) {
  return read(*this, [&](const space& s) {
    const probe_result p = probe(s, root, key);
    if (p.entry == 0) return false;
    u64 word;
    on_value(stable_value(s, p, word));
    return true;
  });
}

bool manager_core::dict_contains(std::uint64_t root, const key_ref& key) {
  return read(*this, [&](const space& s) { return probe(s, root, key).entry != 0; });
}

void manager_core::dict_set(std::uint64_t root, const key_ref& key, const value_source& value) {
  if (fast_set(*this, root, key, value)) return;
  write(*this, [&](txn& t) {
    dict_store(t, root, key, probe(t.sp(), root, key, true), value);
    return 0;
  });
}

void manager_core::dict_update(std::uint64_t root, const key_ref& key,
                               function_ref<value_source(const bytes_view*)> fn) {
  write(*this, [&](txn& t) {
    const probe_result p = probe(t.sp(), root, key, true);
    value_source v = [&] {
      if (p.entry == 0) return fn(nullptr);
      return fn(&p.value);
    }();
    dict_store(t, root, key, p, v);
    return 0;
  });
}

bool manager_core::dict_erase(std::uint64_t root, const key_ref& key) {
  return write(*this, [&](txn& t) {
    const probe_result p = probe(t.sp(), root, key);
    if (p.entry == 0) return false;
    const auto* tb = payload<table_block>(t.sp(), p.table);
    const u64 tb_at = p.table + header_bytes;
    const u64 count = tb->count, tombs = tb->tombstones;
    t.stage(slot_offset(p.table, p.index), slot_tombstone);
    t.stage(tb_at + offsetof(table_block, count), count - 1);
    t.stage(tb_at + offsetof(table_block, tombstones), tombs + 1);
    t.stage(dense_entry_offset(p.table, tb->capacity, p.pos), 0);
    t.retire(p.entry);
    t.commit();
    return true;
  });
}

std::size_t manager_core::dict_size(std::uint64_t root) {
  return read(*this, [&](const space& s) {
    return static_cast<std::size_t>(load(table_of(s, root).header->count));
  });
}

void manager_core::dict_clear(std::uint64_t root) {
  write(*this, [&](txn& t) {
    const u64 old = payload<container_block>(t.sp(), root)->body;
    if (payload<table_block>(t.sp(), old)->count == 0 &&
        payload<table_block>(t.sp(), old)->tombstones == 0)
      return 0;
    const u64 table = make_table(t, min_table, 0);
    t.stage(root + header_bytes + offsetof(container_block, body), table);
    t.retire(old, block_kind::table);
    t.commit();
    return 0;
  });
}

namespace {

thread_local std::size_t scanner_hint = 0;

// A snapshot's claim on a scanner slot and its bit in `scanning`, which keep fast sets off
// while it reads; claimed() is false when all slots are taken (the snapshot then reads under
// the lock instead). Killed while claimed: see reap_dead_scanners.
class scan_claim {
 public:
  explicit scan_claim(manager_root* r) : r_(r) {
    const u64 me = self_identity();
    for (std::size_t n = 0; n < scanner_slots; ++n) {
      const std::size_t i = (scanner_hint + n) % scanner_slots;
      u64 idle = 0;
      // seq_cst: claimed before the bit is raised (see reap_dead_scanners).
      if (r->scanners[i].compare_exchange_strong(idle, me, std::memory_order_seq_cst,
                                                 std::memory_order_relaxed)) {
        index_ = i;
        scanner_hint = i;
        // seq_cst: the store half of the handshake with fast_set(), see drain_setters().
        r->scanning.fetch_or(u64(1) << i, std::memory_order_seq_cst);
        drain_setters(r);
        return;
      }
    }
  }
  scan_claim(const scan_claim&) = delete;
  scan_claim& operator=(const scan_claim&) = delete;
  ~scan_claim() {
    if (!claimed()) return;
    // release: the snapshot's loads are done before fast sets may store again.
    r_->scanning.fetch_and(~(u64(1) << index_), std::memory_order_release);
    r_->scanners[index_].store(0, std::memory_order_release);
  }
  bool claimed() const noexcept { return index_ < scanner_slots; }

 private:
  manager_root* r_;
  std::size_t index_ = scanner_slots;
};

}  // namespace

void manager_core::dict_scan(std::uint64_t root, function_ref<void()> restart,
                             function_ref<void(bytes_view, bytes_view)> visit) {
  // Fast sets store without moving `version`: a snapshot shuts them out while it reads (or
  // reads under the lock, which shuts them out too).
  const scan_claim claim(space(*this).root());
  auto pass = [&](const space& s) {
    restart();
    const table_view tv = table_of(s, root);
    const u64 used = load(tv.header->used);
    if (used > dense_capacity(tv.cap)) throw torn{};
    for (u64 pos = 0; pos < used; ++pos) {  // in insertion order
      const u64 e = load(tv.entries()[pos]);
      if (e == 0) continue;
      const u64 esize = s.check_block(e, block_kind::entry, sizeof(entry_block));
      const bytes_view k = entry_key(s, e);
      if (k.size() > esize) throw torn{};
      visit(k, entry_value(s, tv, pos, e));
    }
    return 0;
  };
  if (claim.claimed()) {
    read(*this, pass);
  } else {
    write(*this, [&](txn& t) { return pass(t.sp()); });
  }
}

// --- list ----------------------------------------------------------------------------------

void manager_core::list_push_back(std::uint64_t root, const value_source& item) {
  write(*this, [&](txn& t) {
    const u32 inl = payload<container_block>(t.sp(), root)->inline_size;
    const u64 body = list_body_of(t.sp(), root);
    const u64 n = payload<list_body_block>(t.sp(), body)->size;
    const chunk_pos pos = locate(n);
    if (pos.chunk >= max_chunks)
      throw error(fmt::format("shmkit: a list in {} cannot hold more than {} items",
                              seg_.describe(), n));
    const u64 word = make_item(t, inl, item);
    u64 chunk = payload<list_body_block>(t.sp(), body)->chunks[pos.chunk];
    const u64 body_at = body + header_bytes;
    if (chunk == 0) {
      chunk = t.alloc(chunk_slots(pos.chunk) * 8, block_kind::chunk);
      t.stage(body_at + offsetof(list_body_block, chunks) + pos.chunk * 8, chunk);
    }
    // The slot lies past `size`: no reader looks at it and recovery ignores it, so it is
    // written now, and the commit is the one store of the new size (with the new chunk's
    // offset, if any, beside it in the journal).
    store(*t.sp().at<u64>(chunk + header_bytes + pos.slot * 8), word);
    t.stage(body_at + offsetof(list_body_block, size), n + 1);
    t.commit();
    return 0;
  });
}

std::size_t manager_core::list_size(std::uint64_t root) {
  return read(*this, [&](const space& s) {
    return static_cast<std::size_t>(load(payload<list_body_block>(s, list_body_of(s, root))->size));
  });
}

void manager_core::list_at(std::uint64_t root, std::size_t i,
                           function_ref<void(bytes_view)> on_item, const std::string& what) {
  read(*this, [&](const space& s) {
    const u32 inl = load_inline(s, root);
    const u64 body = list_body_of(s, root);
    const u64 n = load(payload<list_body_block>(s, body)->size);
    if (i >= n) out_of_range(what, i, n);
    on_item(list_item(s, inl, list_slot(s, body, i)));
    return 0;
  });
}

void manager_core::list_set(std::uint64_t root, std::size_t i, const value_source& item,
                            const std::string& what) {
  write(*this, [&](txn& t) {
    const u32 inl = payload<container_block>(t.sp(), root)->inline_size;
    const u64 body = list_body_of(t.sp(), root);
    const u64 n = payload<list_body_block>(t.sp(), body)->size;
    if (i >= n) out_of_range(what, i, n);
    const u64 where = static_cast<u64>(reinterpret_cast<const std::byte*>(
                                           list_slot(t.sp(), body, i)) -
                                       t.sp().base());
    const u64 old = *t.sp().at<u64>(where);
    const u64 word = make_item(t, inl, item);
    t.stage(where, word);
    if (inl == 0) t.retire(old);
    t.commit();
    return 0;
  });
}

void manager_core::list_pop_back(std::uint64_t root, function_ref<void(bytes_view)> on_item,
                                 const std::string& what) {
  write(*this, [&](txn& t) {
    const u32 inl = payload<container_block>(t.sp(), root)->inline_size;
    const u64 body = list_body_of(t.sp(), root);
    const u64 n = payload<list_body_block>(t.sp(), body)->size;
    if (n == 0)
      throw std::out_of_range(fmt::format("shmkit: {}: pop_back() on an empty list", what));
    const u64* slot = list_slot(t.sp(), body, n - 1);
    on_item(list_item(t.sp(), inl, slot));
    const u64 old = *slot;
    t.stage(body + header_bytes + offsetof(list_body_block, size), n - 1);
    if (inl == 0) t.retire(old);
    t.commit();
    return 0;
  });
}

void manager_core::list_clear(std::uint64_t root) {
  write(*this, [&](txn& t) {
    const u32 inl = payload<container_block>(t.sp(), root)->inline_size;
    const u64 old = list_body_of(t.sp(), root);
    if (payload<list_body_block>(t.sp(), old)->size == 0) return 0;
    const u64 body = make_list_body(t);
    t.stage(root + header_bytes + offsetof(container_block, body), body);
    t.retire(old, block_kind::list_body, inl);
    t.commit();
    return 0;
  });
}

void manager_core::list_scan(std::uint64_t root, function_ref<void()> restart,
                             function_ref<void(bytes_view)> visit) {
  read(*this, [&](const space& s) {
    restart();
    const u32 inl = load_inline(s, root);
    const u64 body = list_body_of(s, root);
    const u64 n = load(payload<list_body_block>(s, body)->size);
    for (u64 i = 0; i < n;) {
      const chunk_pos pos = locate(i);
      const u64* slot = list_slot(s, body, i);
      const u64 upto = std::min(n - i, chunk_slots(pos.chunk) - pos.slot);
      for (u64 j = 0; j < upto; ++j) visit(list_item(s, inl, slot + j));
      i += upto;
    }
    return 0;
  });
}

// --- the shmkit command's view ------------------------------------------------------------

namespace {

// What `shmkit inspect` shows for a manager: memory, a writer holding the lock or caught half
// way, and each container with its types and size. Reads a read-only mapping without any lock,
// checking every offset against it; the figures of a manager being written may be mixed.
detail_lines inspect_manager(const segment_header&, std::span<const std::byte> payload) {
  auto at = [&](u64 off, u64 len) -> const std::byte* {
    if (off < root_at || off - root_at > payload.size() || len > payload.size() - (off - root_at))
      throw std::runtime_error(fmt::format("an offset ({}) outside the segment", off));
    return payload.data() + (off - root_at);
  };
  auto word = [&](u64 off) {
    u64 w;
    std::memcpy(&w, at(off, 8), 8);
    return w;
  };
  const auto* r = reinterpret_cast<const manager_root*>(at(root_at, sizeof(manager_root)));
  if (r->magic != root_magic || r->layout != root_layout)
    return {{"state", fmt::format("manager layout {} (this build reads {})", r->layout,
                                  root_layout)}};
  detail_lines lines;
  const heap_state& h = r->heap;
  const u64 heap_bytes = h.end > h.begin + header_bytes ? h.end - header_bytes - h.begin : 0;
  lines.emplace_back("memory", fmt::format("{} bytes, {} free{}", h.end,
                                           heap_bytes - std::min(heap_bytes, h.live_bytes),
                                           h.max_total != 0
                                               ? fmt::format(", grows up to {}", h.max_total)
                                               : std::string(", grows")));
  const u64 owner = r->lock.owner.load(std::memory_order_relaxed);
  if (owner != 0)
    lines.emplace_back("writer", fmt::format("pid {} holds the lock{}", identity_pid(owner),
                                             identity_alive(owner) ? "" : " (dead)"));
  // relaxed: a report of the moment, ordered with nothing (as the lock word above).
  const u64 owned = r->setters_owned.load(std::memory_order_relaxed);
  if (owned != 0) {
    const u32 light = state_of(r->light.load(std::memory_order_relaxed));
    lines.emplace_back(
        "fast sets",
        fmt::format("{}, {} setter slot{} owned",
                    light == light_on                                  ? "without a fence"
                    : light == light_banned || light == light_banning ? "fenced for good"
                                                                       : "fenced",
                    std::popcount(owned), std::popcount(owned) == 1 ? "" : "s"));
  }
  if ((r->version.load(std::memory_order_relaxed) & 1) != 0 ||
      r->busy.load(std::memory_order_relaxed) != 0)
    lines.emplace_back("write in progress",
                       "yes: the next caller finishes or undoes it");
  if (h.recoveries != 0)
    lines.emplace_back("repairs", fmt::format("{} after dead writers", h.recoveries));
  const u64 dir = r->directory.load(std::memory_order_relaxed);
  if (dir == 0) {
    lines.emplace_back("containers", "none");
    return lines;
  }
  const auto* d = reinterpret_cast<const directory_block*>(
      at(dir + header_bytes, sizeof(directory_block)));
  lines.emplace_back("containers", std::to_string(d->count));
  u64 rec_at = dir + header_bytes + sizeof(directory_block);
  for (u64 i = 0; i < d->count && i < 10000; ++i) {
    const auto* rec = reinterpret_cast<const dir_record*>(at(rec_at, sizeof(dir_record)));
    const char* text = reinterpret_cast<const char*>(
        at(rec_at + sizeof(dir_record),
           u64(rec->name_len) + rec->key_name_len + rec->value_name_len));
    const std::string_view name(text, rec->name_len);
    const std::string_view key(text + rec->name_len, rec->key_name_len);
    const std::string_view value(text + rec->name_len + rec->key_name_len, rec->value_name_len);
    const auto kind = static_cast<container_kind>(rec->kind);
    const u64 body = word(rec->root + header_bytes + offsetof(container_block, body));
    const u64 n = kind == container_kind::dict
                      ? word(body + header_bytes + offsetof(table_block, count))
                      : word(body + header_bytes + offsetof(list_body_block, size));
    lines.emplace_back(fmt::format("  {}", name),
                       fmt::format("{}, {} {}", describe_type(kind, key, value), n,
                                   kind == container_kind::dict ? "entries" : "items"));
    rec_at += std::max<u64>(rec->record_bytes, sizeof(dir_record));
  }
  return lines;
}

const inspector_registrar manager_inspector(object_kind::manager, &inspect_manager);

}  // namespace

}  // namespace shmkit::detail

// --- shmkit::manager -----------------------------------------------------------------------

namespace shmkit {
namespace {

constexpr detail::segment_spec manager_spec{detail::object_kind::manager};
constexpr std::size_t min_manager_bytes = 64 * 1024;

std::size_t initial_bytes(std::size_t bytes) { return std::max(bytes, min_manager_bytes); }

}  // namespace

manager::manager(std::size_t bytes, manager_options opts)
    : core_(std::make_shared<detail::manager_core>(
          detail::segment::create_anonymous(manager_spec, initial_bytes(bytes), true),
          opts.max_bytes)) {}

manager::manager(create_only_t, std::string_view name, std::size_t bytes, permissions perms)
    : manager(create_only, name, bytes, manager_options{0, perms}) {}

manager::manager(create_only_t, std::string_view name, std::size_t bytes, manager_options opts)
    : core_(std::make_shared<detail::manager_core>(
          detail::segment::create(name, manager_spec, initial_bytes(bytes), opts.perms, true),
          opts.max_bytes)) {}

manager::manager(open_only_t, std::string_view name)
    : core_(std::make_shared<detail::manager_core>(
          detail::segment::open(name, manager_spec, true))) {}

manager::manager(open_or_create_t, std::string_view name, std::size_t bytes, permissions perms)
    : manager(open_or_create, name, bytes, manager_options{0, perms}) {}

manager::manager(open_or_create_t, std::string_view name, std::size_t bytes,
                 manager_options opts) {
  bool created = false;
  detail::segment seg = detail::segment::open_or_create(name, manager_spec, initial_bytes(bytes),
                                                        created, opts.perms, true);
  core_ = created ? std::make_shared<detail::manager_core>(std::move(seg), opts.max_bytes)
                  : std::make_shared<detail::manager_core>(std::move(seg));
}

}  // namespace shmkit
