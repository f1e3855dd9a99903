// SPDX-License-Identifier: MIT
// The slow paths of shmkit::pipe: making and opening pipes, claiming ends, waiting (with
// liveness checks of the peer), streaming long messages, closing, and shmkit::wait().
#include "shmkit/pipe.hpp"

#include <algorithm>
#include <bit>
#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>
#include <stdexcept>
#include <thread>

#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/wait_any.hpp"

namespace shmkit::detail {
namespace {

std::atomic<std::uint64_t> forks{0};

void count_fork() noexcept {
  // relaxed: a counter this process (or, after fork, its child) reads back itself.
  forks.fetch_add(1, std::memory_order_relaxed);
}

[[maybe_unused]] const int fork_hook_registered = [] {
  ::pthread_atfork(&count_fork, nullptr, nullptr);
  return 0;
}();

// How often a blocked call checks that its peer lives.
constexpr auto liveness_slice = std::chrono::milliseconds(100);

// How often a poll with no timeout may ask /proc whether the peer lives.
constexpr auto poll_liveness_every = std::chrono::milliseconds(5);

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
    std::string who = owner == 0 ? "nobody"
                                 : fmt::format("pid {} ({})", identity_pid(owner),
                                               identity_alive(owner) ? "alive" : "dead");
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
  // relaxed: see count_fork().
  return forks.load(std::memory_order_relaxed);
}

std::pair<connection_base, connection_base> make_pipe(type_tag tag, bool duplex,
                                                      std::size_t buffer) {
  const std::size_t ring = ring_size_for(buffer);
  const std::uint64_t me = process_identity();
  auto seg = std::make_shared<pipe_segment>(spec_for(tag), (duplex ? 2 : 1) * ring, duplex,
                                            ring, me, me);
  return {connection_base(seg, 0), connection_base(seg, 1)};
}

std::pair<connection_base, connection_base> make_pipe(create_only_t, std::string_view name,
                                                      type_tag tag, bool duplex,
                                                      std::size_t buffer, permissions perms) {
  const std::size_t ring = ring_size_for(buffer);
  const std::uint64_t me = process_identity();
  auto seg = std::make_shared<pipe_segment>(create_only, name, spec_for(tag),
                                            (duplex ? 2 : 1) * ring, perms, duplex, ring, me, me);
  return {connection_base(seg, 0), connection_base(seg, 1)};
}

}  // namespace shmkit::detail

namespace shmkit {

using detail::clock;
using detail::frame_header;
using detail::ring_reader;

connection_base::connection_base(std::shared_ptr<detail::pipe_segment> seg, int end) {
  bind(std::move(seg), end);
}

connection_base::connection_base(open_only_t, std::string_view name, pipe_end end,
                                 detail::type_tag tag) {
  const int e = detail::end_index(end);
  bind(std::make_shared<detail::pipe_segment>(open_only, name, detail::spec_for(tag)), e);
  attach_by_name();
}

connection_base::connection_base(open_or_create_t, std::string_view name, pipe_end end,
                                 detail::type_tag tag, bool duplex, std::size_t buffer,
                                 permissions perms) {
  const int e = detail::end_index(end);
  const std::size_t ring = detail::ring_size_for(buffer);
  bind(std::make_shared<detail::pipe_segment>(open_or_create, name, detail::spec_for(tag),
                                              (duplex ? 2 : 1) * ring, perms, duplex, ring,
                                              std::uint64_t{0}, std::uint64_t{0}),
       e);
  attach_by_name();
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
  for (;;) {
    if (self_->closed.load(std::memory_order_acquire) != 0)
      throw error(fmt::format("shmkit: cannot open end {} of {}: it was closed", end_,
                              describe()));
    std::uint64_t owner = self_->owner.load(std::memory_order_acquire);
    if (owner != 0 && owner != me && self_->used.load(std::memory_order_acquire) != 0) {
      if (detail::identity_alive(owner))
        throw error(fmt::format("shmkit: cannot open end {} of {}: process {} uses it", end_,
                                describe(), detail::identity_pid(owner)));
      throw error(fmt::format("shmkit: cannot open end {} of {}: process {} used it and died",
                              end_, describe(), detail::identity_pid(owner)));
    }
    // Free, or held but never used (the creator's spare end): take it. Two openers racing
    // for one end: exactly one wins the exchange, the other re-reads and finds it in use.
    // acq_rel: pairs with the release of any earlier owner change.
    self_->used.store(1, std::memory_order_seq_cst);
    if (self_->owner.compare_exchange_strong(owner, me, std::memory_order_acq_rel)) break;
  }
  user_ = me;
}

void connection_base::claim() {
  if (!seg_) throw closed_error("shmkit: the connection is closed");
  if (self_->closed.load(std::memory_order_acquire) != 0)
    throw closed_error(fmt::format("shmkit: end {} of {} was closed", end_, describe()));
  const std::uint64_t me = detail::process_identity();
  // seq_cst: ownership changes are rare; the peer reads owner only on its slow paths.
  self_->owner.store(me, std::memory_order_seq_cst);
  self_->used.store(1, std::memory_order_seq_cst);
  // Another process may have used the end since this handle last did (we are a child that
  // inherited the handle): take the positions from shared memory.
  if (rx_.valid()) rx_.resync();
  if (tx_.valid()) tx_.resync();
  user_ = me;
}

bool connection_base::peer_gone() noexcept {
  // acquire: pairs with the seq_cst store of `closed` in the peer's close(); everything the
  // peer sent before closing is visible once this reads 1.
  if (peer_->closed.load(std::memory_order_acquire) != 0) return true;
  if (known_dead_ == 0) return false;
  // acquire: pairs with the store of owner in claim() / attach_by_name().
  if (peer_->owner.load(std::memory_order_acquire) == known_dead_) return true;
  known_dead_ = 0;  // another process took the end over
  return false;
}

bool connection_base::peer_dead() noexcept {
  // acquire: pairs with the peer's store of owner in claim() / attach_by_name().
  const std::uint64_t owner = peer_->owner.load(std::memory_order_acquire);
  if (owner == 0 || owner == detail::process_identity()) return false;
  if (owner == known_dead_) return true;
  last_alive_check_ = clock::now();
  if (detail::identity_alive(owner)) return false;
  known_dead_ = owner;
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
    // relaxed: a scheduling hint; nothing is read on the strength of it.
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
  if (spin_first(ready)) return data_or_eof();
  for (;;) {
    const auto slice_end = clock::now() + detail::liveness_slice;
    const auto until = deadline ? std::min(*deadline, slice_end) : slice_end;
    if (rx_.ctl()->readable.wait_until(ready, until, std::chrono::nanoseconds::zero()))
      return data_or_eof();
    if (peer_dead()) return data_or_eof();
    if (deadline && clock::now() >= *deadline) return readiness::timeout;
  }
}

void connection_base::wait_writable(std::size_t bytes) {
  auto ready = [&] { return peer_gone() || tx_.can_reserve(bytes); };
  tx_.announce_need(bytes);
  bool room = spin_first(ready);
  for (;;) {
    if (room) {
      if (peer_gone()) throw_peer_gone(true);
      return;
    }
    room = tx_.ctl()->writable.wait_until(ready, clock::now() + detail::liveness_slice,
                                          std::chrono::nanoseconds::zero());
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
  // acquire: pairs with the store of owner in claim() / attach_by_name().
  std::uint64_t owner = self_->owner.load(std::memory_order_acquire);
  if (owner == me) {
    const bool may_live_elsewhere =
        seg_->seg().named() || detail::fork_generation() != fork_gen_;
    if (user_ == me || !may_live_elsewhere) {
      // seq_cst: release pairs with the peer's acquire load in peer_gone() (what we sent
      // is visible before the EOF), and the waitpoint protocol wants the state changed before
      // the notify below bumps `seq`.
      self_->closed.store(1, std::memory_order_seq_cst);
      if (tx_.valid()) tx_.ctl()->readable.notify_all();  // a peer waiting to receive
      if (rx_.valid()) rx_.ctl()->writable.notify_all();  // a peer waiting for room
    } else {
      // A copy never used here that another process may take: let it go, do not close it.
      // acq_rel: pairs with the acquire loads of owner in attach_by_name() and peer_dead().
      self_->owner.compare_exchange_strong(owner, 0, std::memory_order_acq_rel);
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
  const char* why = peer_->closed.load(std::memory_order_acquire) != 0
                        ? "closed"
                        : "lost its process";
  throw eof_error(fmt::format("shmkit: {} on end {} of {}: the other end {} (pid {}){}",
                              sending ? "send" : "recv", end_, describe(), why,
                              detail::identity_pid(owner),
                              sending ? "" : " and nothing is left to read"));
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
    bool got = collect(false);
    if (!got && futex_wait_any(words, until) == wait_any_result::unsupported) {
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
