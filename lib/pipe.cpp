// SPDX-License-Identifier: MIT
// The slow paths of shmkit::pipe: making and opening pipes, claiming ends, waiting (with
// liveness checks of the peer), streaming long messages, closing, and shmkit::wait().
#include "shmkit/pipe.hpp"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <bit>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <stdexcept>
#include <thread>
#include <unistd.h>

#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/wait_any.hpp"

namespace shmkit::detail {
namespace {

std::atomic<std::uint64_t> forks{0};

// The ends this process holds handles on, and how many handles each: at fork() a child
// inherits a copy of every one of them, and is recorded as a holder of those nobody uses yet.
struct end_registry {
  std::mutex lock;
  std::vector<std::pair<pipe_end_state*, int>> ends;
  std::vector<std::atomic<std::uint64_t>*> pending;  // slots marked in prepare_fork()
  std::uint64_t marker = 0;                           // what they were marked with
  std::vector<pid_t> children_before;                 // this thread's children before fork()
};

end_registry& registry() {
  static end_registry* r = new end_registry;  // never destroyed: fork handlers may run late
  return *r;
}

bool unused(const pipe_end_state* e) noexcept {
  // acquire: pairs with the seq_cst store of owner in claim() / attach_by_name().
  return e->owner.load(std::memory_order_acquire) == 0 &&
         e->closed.load(std::memory_order_acquire) == 0;
}

std::uint64_t monotonic_ms() noexcept;

// Whether the holder recorded as `h` (an identity or a pending marker) may still be alive.
bool holder_alive(std::uint64_t h, std::uint64_t now_ms) noexcept {
  if ((h & pending_holder) != 0) return !pending_expired(h, now_ms);
  return identity_alive(h);
}

// Records `who` as a holder of end `e`: in a free slot, else in the slot of a holder that
// died; otherwise marks the end crowded. Returns the slot, or nullptr.
std::atomic<std::uint64_t>* add_holder(pipe_end_state* e, std::uint64_t who) noexcept {
  // acq_rel: slots are claimed by exchange; the peer reads them with acquire loads.
  for (auto& slot : e->holders) {
    std::uint64_t v = 0;
    if (slot.compare_exchange_strong(v, who, std::memory_order_acq_rel)) return &slot;
  }
  for (auto& slot : e->holders) {
    std::uint64_t v = slot.load(std::memory_order_acquire);
    if (v != 0 && !holder_alive(v, monotonic_ms()) &&
        slot.compare_exchange_strong(v, who, std::memory_order_acq_rel))
      return &slot;
  }
  // seq_cst: rare; read by the peer with an acquire load.
  e->crowded.store(1, std::memory_order_seq_cst);
  return nullptr;
}

void remove_holder(pipe_end_state* e, std::uint64_t who) noexcept {
  for (auto& slot : e->holders) {
    std::uint64_t v = who;
    // acq_rel: as in add_holder().
    if (slot.compare_exchange_strong(v, 0, std::memory_order_acq_rel)) return;
  }
}

std::uint64_t monotonic_ms() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        clock::now().time_since_epoch())
                                        .count());
}

// The children of the calling thread (/proc/self/task/<tid>/children), sorted; empty when the
// kernel does not list them.
std::vector<pid_t> my_children() noexcept {
  std::vector<pid_t> out;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/children", static_cast<int>(::gettid()));
  std::FILE* f = std::fopen(path, "re");
  if (f == nullptr) return out;
  int pid = 0;
  try {
    while (std::fscanf(f, "%d", &pid) == 1) out.push_back(pid);
  } catch (...) {
    out.clear();
  }
  std::fclose(f);
  std::sort(out.begin(), out.end());
  return out;
}

// Puts `id` where a marker of this fork is, in every slot marked in prepare_fork().
void resolve_markers(end_registry& r, std::uint64_t id) noexcept {
  for (auto* slot : r.pending) {
    std::uint64_t v = r.marker;
    // acq_rel: as in add_holder().
    slot->compare_exchange_strong(v, id, std::memory_order_acq_rel);
  }
}

// pthread_atfork handlers. The registry stays locked across fork(), so that no other thread
// changes it meanwhile and the child inherits it consistent. Before the fork, each end nobody
// uses gets a pending slot (counting as alive), which is then given the child's identity, by
// the parent as soon as fork() returns (it finds the new pid among its children) and by the
// child itself: there is no moment at which a waiting peer could see the end without a live
// holder, and a child killed before it ran at all is still known.
void prepare_fork() noexcept {
  end_registry& r = registry();
  r.lock.lock();
  // relaxed: a counter this process (or, after fork, its child) reads back itself.
  forks.fetch_add(1, std::memory_order_relaxed);
  r.pending.clear();
  r.marker = pending_marker(static_cast<std::uint32_t>(::getpid()), monotonic_ms());
  for (auto& [end, handles] : r.ends)
    if (unused(end))
      if (auto* slot = add_holder(end, r.marker)) r.pending.push_back(slot);
  r.children_before.clear();
  if (!r.pending.empty()) r.children_before = my_children();
}

void after_fork_in_parent() noexcept {
  end_registry& r = registry();
  if (!r.pending.empty()) {
    std::vector<pid_t> now = my_children();
    std::vector<pid_t> born;
    std::set_difference(now.begin(), now.end(), r.children_before.begin(),
                        r.children_before.end(), std::back_inserter(born));
    // One new child: it is the one. Its identity, or 0 (a free slot) if it is already dead.
    if (born.size() == 1) resolve_markers(r, identity_of(born.front()));
  }
  r.pending.clear();
  r.lock.unlock();
}

void after_fork_in_child() noexcept {
  end_registry& r = registry();
  // Not process_identity(): its cache may not be refreshed yet in this child.
  // Without /proc (0) the markers stay, alive until they expire.
  if (const std::uint64_t me = identity_of(::getpid()); me != 0) resolve_markers(r, me);
  r.pending.clear();
  r.lock.unlock();
}

[[maybe_unused]] const int fork_hooks_registered = [] {
  ::pthread_atfork(&prepare_fork, &after_fork_in_parent, &after_fork_in_child);
  return 0;
}();

void register_end(pipe_end_state* e) {
  end_registry& r = registry();
  std::lock_guard g(r.lock);
  for (auto& [end, handles] : r.ends)
    if (end == e) {
      ++handles;
      return;
    }
  r.ends.emplace_back(e, 1);
}

// Returns true when this was the last handle on `e` in this process.
bool unregister_end(pipe_end_state* e) noexcept {
  end_registry& r = registry();
  std::lock_guard g(r.lock);
  for (auto it = r.ends.begin(); it != r.ends.end(); ++it)
    if (it->first == e) {
      if (--it->second > 0) return false;
      r.ends.erase(it);
      return true;
    }
  return true;
}

// Whether some process holding a copy of unused end `e` may still use it: a pending child, a
// live holder (`me` only when me_counts), or unknown holders (crowded).
bool holder_may_use(const pipe_end_state* e, std::uint64_t me, bool me_counts) noexcept {
  // acquire (here and below): pairs with the exchanges in add_holder() / remove_holder().
  if (e->crowded.load(std::memory_order_acquire) != 0) return true;
  const std::uint64_t now_ms = monotonic_ms();
  for (const auto& slot : e->holders) {
    const std::uint64_t h = slot.load(std::memory_order_acquire);
    if (h == 0) continue;
    if (h == me ? me_counts : holder_alive(h, now_ms)) return true;
  }
  return false;
}

// known_dead_ when the peer end is unused and every holder of it is gone.
constexpr std::uint64_t no_holder_left = 1;

// How often a blocked call checks that its peer lives.
constexpr auto liveness_slice = std::chrono::milliseconds(100);

// How often a poll with no timeout may ask /proc whether the peer lives.
constexpr auto poll_liveness_every = std::chrono::milliseconds(5);

// Pauses between two looks at an empty ring while the sender streams (see wait_readable()).
constexpr std::uint32_t stream_pace = 8;

// The shortest spin before sleeping, once spinning has kept failing.
constexpr std::chrono::nanoseconds min_spin{500};

// No message is longer than this (a header claiming more is corrupted).
constexpr std::uint64_t max_message_bytes = std::uint64_t(1) << 46;
// A streamed message's declared size is reserved up front only up to this; beyond, the buffer
// grows as pieces arrive, so a corrupted size is a shmkit::error, never a huge allocation.
constexpr std::uint64_t max_stream_reserve = std::uint64_t(1) << 26;

std::size_t ring_size_for(std::size_t requested) {
  if (requested == 0 || requested > max_ring_bytes)
    throw std::invalid_argument(fmt::format(
        "shmkit: a pipe buffer of {} bytes: the size must be 1 .. {} bytes", requested,
        max_ring_bytes));
  return std::max(min_ring_bytes, std::bit_ceil(requested));
}

segment_spec spec_for(type_tag tag) { return {object_kind::pipe, tag}; }

int end_index(pipe_end end) {
  const auto e = static_cast<int>(end);
  if (e != 0 && e != 1)
    throw std::invalid_argument(fmt::format("shmkit: pipe end {}: must be first or second", e));
  return e;
}

// What `shmkit` (the command) shows for a pipe: its shape, who holds each end, and how many
// bytes wait in each direction. Reads only, through a read-only mapping.
detail_lines inspect_pipe(const segment_header&, std::span<const std::byte> payload) {
  if (payload.size() < sizeof(pipe_state)) return {{"state", "truncated"}};
  const auto* st = reinterpret_cast<const pipe_state*>(payload.data());
  detail_lines out;
  out.emplace_back("direction", st->duplex ? "duplex" : "one-way (first receives)");
  out.emplace_back("buffer", fmt::format("{} bytes each way", st->ring_bytes));
  for (int e = 0; e < 2; ++e) {
    const pipe_end_state& end = st->ends[e];
    // relaxed: a snapshot for display; nothing is read on the strength of it.
    const std::uint64_t owner = end.owner.load(std::memory_order_relaxed);
    std::string who;
    if (owner != 0) {
      who = fmt::format("used by pid {} ({})", identity_pid(owner),
                        identity_alive(owner) ? "alive" : "dead");
    } else {
      std::vector<std::string> holders;
      for (const auto& slot : end.holders)
        if (const std::uint64_t h = slot.load(std::memory_order_relaxed); h != 0)
          holders.push_back((h & pending_holder) != 0
                                ? fmt::format("a child of pid {}", pending_parent(h))
                                : fmt::format("pid {}{}", identity_pid(h),
                                              identity_alive(h) ? "" : " (dead)"));
      who = holders.empty() ? "unused, held by nobody"
                            : fmt::format("unused, held by {}", fmt::join(holders, ", "));
      if (end.crowded.load(std::memory_order_relaxed) != 0) who += " and more";
    }
    if (end.closed.load(std::memory_order_relaxed) != 0) who += ", closed";
    out.emplace_back(e == 0 ? "end first" : "end second", who);
  }
  for (std::uint32_t k = 0; k < st->ring_count() && k < 2; ++k) {
    const ring_ctl& r = st->rings[k];
    // relaxed: as above.
    const std::uint64_t buffered =
        r.head.load(std::memory_order_relaxed) - r.tail.load(std::memory_order_relaxed);
    out.emplace_back(k == 0 ? "to first" : "to second",
                     fmt::format("{} bytes buffered", buffered));
  }
  return out;
}

const inspector_registrar pipe_inspector(object_kind::pipe, &inspect_pipe);

}  // namespace

std::uint64_t fork_generation() noexcept {
  // relaxed: see prepare_fork().
  return forks.load(std::memory_order_relaxed);
}

std::pair<connection_base, connection_base> make_pipe(type_tag tag, bool duplex,
                                                      std::size_t buffer) {
  const std::size_t ring = ring_size_for(buffer);
  const std::uint64_t me = process_identity();
  auto seg = std::make_shared<pipe_segment>(spec_for(tag), (duplex ? 2 : 1) * ring, duplex,
                                            ring, me);
  return {connection_base(seg, 0), connection_base(seg, 1)};
}

std::pair<connection_base, connection_base> make_pipe(create_only_t, std::string_view name,
                                                      type_tag tag, bool duplex,
                                                      std::size_t buffer, permissions perms) {
  const std::size_t ring = ring_size_for(buffer);
  const std::uint64_t me = process_identity();
  auto seg = std::make_shared<pipe_segment>(create_only, name, spec_for(tag),
                                            (duplex ? 2 : 1) * ring, perms, duplex, ring, me);
  return {connection_base(seg, 0), connection_base(seg, 1)};
}

}  // namespace shmkit::detail

namespace shmkit {

using detail::clock;
using detail::frame_header;
using detail::ring_reader;

// Every constructor registers the end last, once nothing can throw any more: a registered
// end must be unregistered by close(), which runs only for a constructed handle.
connection_base::connection_base(std::shared_ptr<detail::pipe_segment> seg, int end) {
  bind(std::move(seg), end);
  detail::register_end(self_);
}

connection_base::connection_base(open_only_t, std::string_view name, pipe_end end,
                                 detail::type_tag tag) {
  const int e = detail::end_index(end);
  bind(std::make_shared<detail::pipe_segment>(open_only, name, detail::spec_for(tag)), e);
  attach_by_name();
  detail::register_end(self_);
}

connection_base::connection_base(open_or_create_t, std::string_view name, pipe_end end,
                                 detail::type_tag tag, bool duplex, std::size_t buffer,
                                 permissions perms) {
  const int e = detail::end_index(end);
  const std::size_t ring = detail::ring_size_for(buffer);
  bind(std::make_shared<detail::pipe_segment>(open_or_create, name, detail::spec_for(tag),
                                              (duplex ? 2 : 1) * ring, perms, duplex, ring,
                                              std::uint64_t{0}),
       e);
  attach_by_name();
  detail::register_end(self_);
}

void connection_base::bind(std::shared_ptr<detail::pipe_segment> seg, int end) {
  detail::pipe_state* st = seg->state();
  const std::uint64_t ring = st->ring_bytes;
  if (st->duplex > 1 || ring < detail::min_ring_bytes || ring > detail::max_ring_bytes ||
      !std::has_single_bit(ring) || seg->extra_size() < st->ring_count() * ring)
    throw error(fmt::format("shmkit: {} is corrupted: its header describes {} ring(s) of {} "
                            "bytes in a payload of {} bytes",
                            seg->seg().describe(), st->ring_count(), ring, seg->extra_size()));
  self_ = &st->ends[end];
  peer_ = &st->ends[1 - end];
  std::byte* data = seg->extra();
  // rings[k] carries what end k receives; a one-way pipe has only rings[0] (end 0 receives).
  if (st->duplex || end == 0)
    rx_ = detail::ring_reader(&st->rings[end], data + end * ring, ring);
  if (st->duplex || end == 1)
    tx_ = detail::ring_writer(&st->rings[1 - end], data + (1 - end) * ring, ring);
  end_ = static_cast<std::uint8_t>(end);
  fork_gen_ = detail::fork_generation();
  seg_ = std::move(seg);
}

void connection_base::attach_by_name() {
  const std::uint64_t me = detail::process_identity();
  if (self_->closed.load(std::memory_order_acquire) != 0)
    throw error(fmt::format("shmkit: cannot open end {} of {}: it was closed", end_, describe()));
  // Only an end nobody uses yet may be taken (the creator's spare end, held but unused, is
  // fine). Two openers racing for one end: exactly one wins the exchange.
  // acq_rel: pairs with the acquire loads of owner in the peer's peer_dead().
  std::uint64_t owner = 0;
  if (!self_->owner.compare_exchange_strong(owner, me, std::memory_order_acq_rel) &&
      owner != me) {
    if (detail::identity_alive(owner))
      throw error(fmt::format("shmkit: cannot open end {} of {}: process {} uses it", end_,
                              describe(), detail::identity_pid(owner)));
    throw error(fmt::format("shmkit: cannot open end {} of {}: process {} used it and died",
                            end_, describe(), detail::identity_pid(owner)));
  }
  user_ = me;
  use_light_fences();
}

void connection_base::use_light_fences() noexcept {
  // The peer's sleepers always wait with heavy = true (wait_readable(), wait_writable(),
  // shmkit::wait()), so the light publication of the rings depends only on this process.
  const bool light = detail::register_light_fences();
  if (rx_.valid()) rx_.set_light(light);
  if (tx_.valid()) tx_.set_light(light);
}

void connection_base::claim() {
  if (!seg_) throw closed_error("shmkit: the connection is closed");
  if (self_->closed.load(std::memory_order_acquire) != 0)
    throw closed_error(fmt::format("shmkit: end {} of {} was closed", end_, describe()));
  const std::uint64_t me = detail::process_identity();
  // seq_cst: ownership changes are rare; the peer reads owner (acquire) on its slow paths.
  self_->owner.store(me, std::memory_order_seq_cst);
  // Another process may have used the end since this handle last did (we are a child that
  // inherited the handle): take the positions from shared memory.
  if (rx_.valid()) rx_.resync();
  if (tx_.valid()) tx_.resync();
  user_ = me;
  use_light_fences();
}

bool connection_base::peer_gone() noexcept {
  // acquire: pairs with the seq_cst store of `closed` in the peer's close(); everything the
  // peer sent before closing is visible once this reads 1.
  if (peer_->closed.load(std::memory_order_acquire) != 0) return true;
  if (known_dead_ == 0) return false;
  // acquire: pairs with the store of owner in claim() / attach_by_name().
  const std::uint64_t owner = peer_->owner.load(std::memory_order_acquire);
  if (owner == known_dead_ || (owner == 0 && known_dead_ == detail::no_holder_left))
    return true;
  known_dead_ = 0;  // another process took the end over
  return false;
}

bool connection_base::peer_dead() noexcept {
  const std::uint64_t me = detail::process_identity();
  // acquire: pairs with the peer's store of owner in claim() / attach_by_name().
  const std::uint64_t owner = peer_->owner.load(std::memory_order_acquire);
  if (owner == me) return false;
  if (owner != 0 && owner == known_dead_) return true;
  last_alive_check_ = clock::now();
  if (owner != 0) {
    if (detail::identity_alive(owner)) return false;
    known_dead_ = owner;
    return true;
  }
  // Nobody uses the peer end yet: it lives while a process holding a copy may still use it.
  // This process counts as a holder only if it has not forked since the handle was made: a
  // process that forks and then waits on one end has left the other end to its children.
  if (detail::holder_may_use(peer_, me, detail::fork_generation() == fork_gen_)) return false;
  // A named end may still be opened by some process to come.
  if (seg_->seg().named()) return false;
  known_dead_ = detail::no_holder_left;
  return true;
}

bool connection_base::peer_dead_throttled() noexcept {
  if (clock::now() - last_alive_check_ < detail::poll_liveness_every) return peer_gone();
  return peer_dead();
}

void connection_base::check_peer_now_and_then() {
  if (clock::now() - last_alive_check_ < detail::liveness_slice) return;
  if (peer_dead()) throw_peer_gone(true);
}

bool connection_base::ready_now(bool check_alive) {
  return rx_.has_data() || peer_gone() || (check_alive && peer_dead_throttled());
}

// Spins briefly for `ready` before the caller sleeps, and learns from it: a spin that catches
// the peer doubles the next one (up to spin_budget), one that fails halves it (down to
// min_spin), so a slow peer costs little CPU and a quick one is caught without a system call.
// No spin at all while the peer last waited on this very CPU: spinning would only keep it off.
template <class Pred>
bool connection_base::spin_first(Pred&& ready) {
  const int cpu = ::sched_getcpu();
  if (cpu >= 0) {
    // relaxed: a scheduling hint; nothing is read on the strength of it. Stored only when it
    // changed: a store takes the line from the peer, whose every send reads `closed` there.
    if (self_->cpu.load(std::memory_order_relaxed) != static_cast<std::uint32_t>(cpu))
      self_->cpu.store(static_cast<std::uint32_t>(cpu), std::memory_order_relaxed);
    if (peer_->cpu.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(cpu))
      return ready();
  }
  const bool caught = detail::spin_until(ready, spin_);
  spin_ = caught ? std::min(spin_ * 2, detail::spin_budget) : std::max(spin_ / 2, detail::min_spin);
  return caught;
}

connection_base::readiness connection_base::wait_readable(
    std::optional<detail::time_point> deadline) {
  // After the peer closed or died, data may still be buffered: that comes first.
  auto data_or_eof = [&] { return rx_.has_data() ? readiness::data : readiness::eof; };
  if (rx_.has_data()) return readiness::data;
  if (peer_gone()) return data_or_eof();
  if (deadline && clock::now() >= *deadline)
    return peer_dead_throttled() ? data_or_eof() : readiness::timeout;
  auto ready = [&] { return rx_.has_data() || peer_gone(); };
  // The spin looks at head every pace_ pauses (see learn_pace()).
  int looks = 0;
  auto paced = [&] {
    for (std::uint32_t i = 1; i < pace_; ++i) detail::cpu_relax();
    ++looks;
    return ready();
  };
  if (spin_first(paced)) {
    learn_pace(looks);
    return data_or_eof();
  }
  pace_ = 1;
  if (peer_dead_throttled()) return data_or_eof();
  for (;;) {
    const auto slice_end = clock::now() + detail::liveness_slice;
    const auto until = deadline ? std::min(*deadline, slice_end) : slice_end;
    // heavy: the sender may publish with a light fence (see detail/spsc_ring.hpp).
    if (rx_.ctl()->readable.wait_until(ready, until, std::chrono::nanoseconds::zero(), true))
      return data_or_eof();
    if (peer_dead()) return data_or_eof();
    if (deadline && clock::now() >= *deadline) return readiness::timeout;
  }
}

// While the sender streams, a receiver that looks at an empty ring at every pause takes the
// line of head from the sender at each message it publishes (and the data lines while the
// sender still writes them): both sides then pay a cache miss per message. So when a wait
// ends at the first or second look (the sender publishes about as fast as we read) and this
// end sent nothing since its previous wait (it only consumes), the next waits look only every
// stream_pace pauses, letting a batch of frames gather between two looks. As soon as a paced
// wait finds a single frame (a sender slower than our pace), or this end answers between two
// waits (request and reply: its latency counts), it looks at every pause again.
void connection_base::learn_pace(int looks) noexcept {
  const bool only_consumes = sends_ == sends_at_wait_;
  sends_at_wait_ = sends_;
  if (pace_ == 1) {
    if (looks <= 2 && only_consumes) pace_ = detail::stream_pace;
  } else if (!only_consumes || !rx_.several_frames()) {
    pace_ = 1;
  }
}

void connection_base::wait_writable(std::size_t bytes) {
  auto ready = [&] { return peer_gone() || tx_.can_reserve(bytes); };
  tx_.announce_need(bytes);
  bool room = spin_first(ready);
  if (!room && peer_dead_throttled()) throw_peer_gone(true);
  for (;;) {
    if (room) {
      if (peer_gone()) throw_peer_gone(true);
      return;
    }
    // heavy: the receiver may release room with a light fence (see detail/spsc_ring.hpp).
    room = tx_.ctl()->writable.wait_until(ready, clock::now() + detail::liveness_slice,
                                          std::chrono::nanoseconds::zero(), true);
    if (!room && peer_dead()) throw_peer_gone(true);
  }
}

std::byte* connection_base::reserve_frame_slow(std::size_t bytes) {
  for (;;) {
    wait_writable(bytes);
    if (std::byte* p = tx_.try_reserve(bytes)) return p;
  }
}

bool connection_base::poll_until(std::optional<detail::time_point> deadline) {
  begin_recv();
  return wait_readable(deadline) != readiness::timeout;
}

void connection_base::send_bytes(std::span<const std::byte> bytes) {
  begin_send();
  if (bytes.size() > max_whole_payload()) {
    send_stream(bytes);
    return;
  }
  const std::size_t n = detail::frame_bytes(bytes.size());
  std::byte* p = reserve_frame(n);
  put_header(p, bytes.size(), detail::frame_whole);
  if (!bytes.empty()) std::memcpy(p + sizeof(frame_header), bytes.data(), bytes.size());
  tx_.commit(n);
}

void connection_base::send_stream(std::span<const std::byte> bytes) {
  // Pieces of up to half the ring: the receiver copies one out while we copy the next in
  // (double buffering, with as few hand-overs as that allows); we wait for room only while
  // less than an eighth of the ring is free.
  const std::size_t cap = tx_.capacity();
  const std::size_t max_piece = detail::max_frame_bytes(cap);
  const std::size_t min_piece_payload = cap / 8;
  const std::uint64_t total = bytes.size();
  std::size_t sent = 0;
  for (bool first = true; first || sent < total; first = false) {
    const std::size_t prefix = first ? sizeof(std::uint64_t) : 0;
    const std::size_t rest = total - sent;
    const std::size_t min_bytes = detail::frame_bytes(prefix + std::min(rest, min_piece_payload));
    const std::size_t max_bytes =
        std::max(min_bytes, std::min(detail::frame_bytes(prefix + rest), max_piece));
    std::span<std::byte> room = tx_.try_reserve_some(min_bytes, max_bytes);
    while (room.empty()) {
      wait_writable(min_bytes);
      room = tx_.try_reserve_some(min_bytes, max_bytes);
    }
    const std::size_t take = std::min(rest, room.size() - sizeof(frame_header) - prefix);
    std::byte* p = room.data();
    put_header(p, prefix + take, first ? detail::frame_first : detail::frame_more);
    p += sizeof(frame_header);
    if (first) std::memcpy(p, &total, sizeof total);
    if (take != 0) std::memcpy(p + prefix, bytes.data() + sent, take);
    tx_.commit(detail::frame_bytes(prefix + take));
    sent += take;
    if (sent < total && peer_gone()) throw_peer_gone(true);
  }
}

const frame_header* connection_base::next_frame() {
  for (;;) {
    const frame_header* h = rx_.peek();
    if (h == nullptr) {
      if (wait_readable(std::nullopt) == readiness::eof) throw_peer_gone(false);
      continue;
    }
    if (h == &ring_reader::bad) throw_corrupted();
    if (h->kind == detail::frame_whole || h->kind == detail::frame_first) return h;
    if (h->kind != detail::frame_more) throw_corrupted();
    // A later piece of a message whose start went with a receiver that died: skip it.
    rx_.consume(detail::frame_bytes(h->size));
  }
}

template <class Sink>
const frame_header* connection_base::read_stream(const frame_header* h, Sink&& sink) {
  std::uint64_t total = 0;
  if (h->size < sizeof total) throw_corrupted();
  std::memcpy(&total, ring_reader::payload(h), sizeof total);
  std::uint64_t got = h->size - sizeof total;
  if (total > detail::max_message_bytes || got > total) throw_corrupted();
  sink(total, std::span<const std::byte>(ring_reader::payload(h) + sizeof total, got));
  rx_.consume(detail::frame_bytes(h->size));
  while (got < total) {
    const frame_header* p = rx_.peek();
    if (p == nullptr) {
      // The sender died or closed mid-message: the pieces read so far are dropped.
      if (wait_readable(std::nullopt) == readiness::eof) throw_peer_gone(false);
      continue;
    }
    if (p == &ring_reader::bad) throw_corrupted();
    if (p->kind == detail::frame_whole || p->kind == detail::frame_first)
      return p;  // its sender died mid-message and another process took over the end
    if (p->kind != detail::frame_more || p->size > total - got) throw_corrupted();
    sink(total, std::span<const std::byte>(ring_reader::payload(p), p->size));
    got += p->size;
    rx_.consume(detail::frame_bytes(p->size));
  }
  return nullptr;
}

std::vector<std::byte> connection_base::assemble(const frame_header* h) {
  for (;;) {
    if (h->kind == detail::frame_whole) {
      std::vector<std::byte> out(ring_reader::payload(h), ring_reader::payload(h) + h->size);
      rx_.consume(detail::frame_bytes(h->size));
      return out;
    }
    std::vector<std::byte> out;
    h = read_stream(h, [&](std::uint64_t total, std::span<const std::byte> piece) {
      if (out.capacity() == 0) out.reserve(std::min(total, detail::max_stream_reserve));
      out.insert(out.end(), piece.begin(), piece.end());
    });
    if (h == nullptr) return out;
  }
}

std::vector<std::byte> connection_base::recv_bytes() {
  begin_recv();
  return assemble(next_frame());
}

std::size_t connection_base::recv_bytes_into(std::span<std::byte> out) {
  begin_recv();
  const frame_header* h = next_frame();
  for (;;) {
    std::uint64_t size = h->size;
    if (h->kind == detail::frame_first && h->size >= sizeof size)
      std::memcpy(&size, ring_reader::payload(h), sizeof size);
    if (size > out.size())
      throw error(fmt::format("shmkit: recv_bytes_into on {}: the message holds {} bytes, the "
                              "buffer only {} (the message stays in the pipe)",
                              describe(), size, out.size()));
    if (h->kind == detail::frame_whole) {
      if (size != 0) std::memcpy(out.data(), ring_reader::payload(h), size);
      rx_.consume(detail::frame_bytes(h->size));
      return size;
    }
    std::size_t at = 0;
    h = read_stream(h, [&](std::uint64_t, std::span<const std::byte> piece) {
      if (!piece.empty()) std::memcpy(out.data() + at, piece.data(), piece.size());
      at += piece.size();
    });
    if (h == nullptr) return at;
  }
}

void connection_base::close() noexcept {
  if (!seg_) return;
  const std::uint64_t me = detail::process_identity();
  const bool last_here = detail::unregister_end(self_);
  // acquire: pairs with the store of owner in claim() / attach_by_name().
  if (self_->owner.load(std::memory_order_acquire) == me) {
    // This process uses the end: close it for good. seq_cst: release pairs with the peer's
    // acquire load in peer_gone() (what we sent is visible before the EOF), and the waitpoint
    // protocol wants the state changed before the notify below bumps `seq`.
    self_->closed.store(1, std::memory_order_seq_cst);
    if (tx_.valid()) tx_.ctl()->readable.notify_all();  // a peer waiting to receive
    if (rx_.valid()) rx_.ctl()->writable.notify_all();  // a peer waiting for room
  } else if (last_here) {
    // A copy this process never used: it stops holding it. Whoever else holds one may still
    // use it. If none does (and no process can open it by name), nobody ever can: close it,
    // so that the peer sees EOF at once. (Only holders add holders, by forking, so no new
    // one can appear once none lives.)
    detail::remove_holder(self_, me);
    if (!seg_->seg().named() && !detail::holder_may_use(self_, me, false)) {
      self_->closed.store(1, std::memory_order_seq_cst);  // seq_cst: as above
      if (tx_.valid()) tx_.ctl()->readable.notify_all();
      if (rx_.valid()) rx_.ctl()->writable.notify_all();
    }
  }
  seg_.reset();
  self_ = peer_ = nullptr;
  rx_ = {};
  tx_ = {};
  user_ = 0;
}

bool connection_base::duplex() const noexcept { return seg_ && seg_->state()->duplex != 0; }

std::size_t connection_base::buffer_size() const noexcept {
  return seg_ ? seg_->state()->ring_bytes : 0;
}

const std::string& connection_base::name() const noexcept {
  static const std::string none;
  return seg_ ? seg_->seg().name() : none;
}

void connection_base::release_name() noexcept {
  if (seg_) seg_->seg().release_name();
}

std::string connection_base::describe() const {
  return seg_ ? seg_->seg().describe() : std::string("a closed connection");
}

void connection_base::throw_wrong_direction(bool sending) const {
  throw std::logic_error(fmt::format("shmkit: {} on end {} of one-way {}, which only {}",
                                     sending ? "send" : "recv", end_, describe(),
                                     sending ? "receives" : "sends"));
}

void connection_base::throw_peer_gone(bool sending) const {
  const std::uint64_t owner = peer_->owner.load(std::memory_order_acquire);
  std::string why;
  if (peer_->closed.load(std::memory_order_acquire) != 0)
    why = fmt::format("was closed (pid {})", detail::identity_pid(owner));
  else if (owner != 0)
    why = fmt::format("lost its process (pid {})", detail::identity_pid(owner));
  else
    why = "was never used, and every process holding it let it go or died";
  throw eof_error(fmt::format("shmkit: {} on end {} of {}: the other end {}{}",
                              sending ? "send" : "recv", end_, describe(), why,
                              sending ? "" : ", and nothing is left to read"));
}

void connection_base::throw_corrupted() const {
  throw error(fmt::format("shmkit: {} is corrupted: a message frame breaks the frame rules",
                          describe()));
}

}  // namespace shmkit

namespace shmkit::detail {

std::vector<std::size_t> wait_connections(std::span<connection_base* const> conns,
                                          std::optional<time_point> deadline) {
  for (connection_base* c : conns) {
    if (c == nullptr) throw std::invalid_argument("shmkit::wait: a null connection");
    if (c->closed()) throw std::invalid_argument("shmkit::wait: a closed connection");
    if (!c->readable())
      throw std::invalid_argument(
          fmt::format("shmkit::wait: end {} of {} only sends", c->end_, c->describe()));
    c->begin_recv();
  }
  std::vector<std::size_t> ready;
  auto collect = [&](bool check_alive) {
    ready.clear();
    for (std::size_t i = 0; i < conns.size(); ++i)
      if (conns[i]->ready_now(check_alive)) ready.push_back(i);
    return !ready.empty();
  };
  if (collect(false)) return ready;
  if (deadline && clock::now() >= *deadline) {
    collect(true);
    return ready;
  }
  if (spin_until([&] { return collect(false); })) return ready;

  std::vector<wait_word> words(conns.size());
  auto next_check = clock::now() + liveness_slice;
  auto backoff = std::chrono::microseconds(50);
  for (;;) {
    const auto until = deadline ? std::min(*deadline, next_check) : next_check;
    // The waitpoint protocol over several words at once: count ourselves as a waiter on each
    // ring's `readable`, read each `seq`, re-check, then sleep on all of them. A sender that
    // publishes after our re-check sees us counted and bumps `seq`, so the kernel either
    // refuses to sleep (a value changed) or wakes us.
    for (std::size_t i = 0; i < conns.size(); ++i) {
      waitpoint& wp = conns[i]->rx_.ctl()->readable;
      wp.waiters.fetch_add(1, std::memory_order_seq_cst);
      words[i] = {&wp.seq, wp.seq.load(std::memory_order_seq_cst)};
    }
    // The senders may publish with a light fence (see detail/spsc_ring.hpp): one heavy fence
    // covers every ring; without it, sleep in short slices.
    const time_point sleep_until =
        heavy_fence() ? until : *waitpoint::bounded_sleep(until);
    bool got = collect(false);
    if (!got && futex_wait_any(words, sleep_until) == wait_any_result::unsupported) {
      // No futex_waitv: poll, sleeping a little longer each time.
      const auto left = until - clock::now();
      if (left > left.zero())
        std::this_thread::sleep_for(std::min<clock::duration>(backoff, left));
      backoff = std::min(backoff * 2, std::chrono::microseconds(10000));
    }
    for (std::size_t i = 0; i < conns.size(); ++i)
      conns[i]->rx_.ctl()->readable.waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (got || collect(false)) return ready;
    const auto now = clock::now();
    if (now >= next_check || (deadline && now >= *deadline)) {
      if (collect(true)) return ready;
      next_check = now + liveness_slice;
    }
    if (deadline && now >= *deadline) return {};
  }
}

}  // namespace shmkit::detail
