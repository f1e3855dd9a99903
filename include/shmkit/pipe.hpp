// SPDX-License-Identifier: MIT
// Pipes between processes, like Python's multiprocessing.Pipe: a pair of connections that send
// and receive values of T (anything the codec encodes) and raw byte messages of any size.
//
//   auto [a, b] = shmkit::pipe<T>();           // duplex: both ends send and receive
//   auto [rx, tx] = shmkit::pipe<T>(false);    // one-way: rx (first) receives, tx (second) sends
//   tx.send(v);  T v = rx.recv();  rx.poll(10ms);  tx.send_bytes(span);  rx.recv_bytes();
//   std::vector<std::size_t> ready = shmkit::wait({&c1, &c2}, 1s);   // like connection.wait()
//
// Named pipes let an unrelated process take an end:
//
//   auto [mine, spare] = shmkit::pipe<T>(shmkit::create_only, "chat");  // creator; may drop spare
//   shmkit::connection<T> other(shmkit::open_only, "chat", shmkit::pipe_end::second);  // elsewhere
//   shmkit::connection<T> c(shmkit::open_or_create, "chat", shmkit::pipe_end::first);  // rendezvous
//
// Contract:
// - Each direction is one single-producer single-consumer byte ring in one shared segment (a
//   duplex pipe has two). The fast path is wait-free: no compare-and-swap, no system call; a
//   blocked end sleeps in the kernel after a short spin, and a sender makes the wake-up system
//   call only when the receiver sleeps. Where membarrier(2) is available the fast path has no
//   locked instruction either: an end about to sleep pays one membarrier call instead.
//   Default buffer: 64 KiB per direction.
// - Messages are framed. A message larger than half the buffer is streamed through it in
//   pieces and reassembled by the receiver (100 MiB passes through 64 KiB); smaller ones are
//   encoded straight into the buffer and decoded straight out of it (no allocation for
//   trivially copyable T).
// - One process uses an end at a time, and a connection object is not thread-safe (as in
//   Python). An end belongs to the process that uses it: its first send, recv, poll or wait
//   there (or opening it by name) claims it, so a child forked after pipe() takes over the
//   copy it uses. Until some process uses an end, every process holding a copy stands for it:
//   its creator and each child forked meanwhile (recorded at fork(), up to 16 per end; beyond
//   that the end counts as alive until used). A process that forked and then waits on one end
//   no longer stands for its unused copy of the other: it left that to its children. So in
//   `auto [a, b] = pipe(); fork(); child uses b, parent uses a` the parent sees EOF when the
//   child dies, whether before or after its first call on b.
// - EOF: when the peer end is closed, or its process died (or, for an end nobody used yet,
//   every process holding it died or let it go), recv() returns what is still buffered and
//   then throws shmkit::eof_error; send() to such a peer throws eof_error (a peer that died
//   without closing is noticed at the latest when the buffer fills). Blocked calls wake at
//   least every 100 ms to check that the peer lives, so none blocks forever on a dead peer.
//   An end of a named pipe that nobody opened yet counts as alive.
// - kill -9 at any instruction: a frame becomes visible only when complete, so a message
//   half-sent by a process that died is never delivered (a streamed one is discarded by the
//   receiver); the survivor sees EOF.
// - close() and the destructor close the end (the peer sees EOF) when this process uses it.
//   A copy this process never used is only let go: the other processes holding it may still
//   use it (closing the child's end in the parent after fork(), as Python programs do, is
//   harmless); when the last holder lets go, the end closes.
// - Throws: shmkit::eof_error (peer gone), shmkit::closed_error (this handle was closed),
//   shmkit::error (creating or opening failed, a name of another kind or element type, bytes
//   that do not decode as T), std::logic_error (send on a receive-only end or the reverse),
//   std::invalid_argument (bad name or buffer size).
#pragma once

#include <array>
#include <bit>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmkit/codec.hpp"
#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/pipe_state.hpp"
#include "shmkit/detail/shared_object.hpp"
#include "shmkit/detail/spsc_ring.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/detail/wait.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"

namespace shmkit {

// Bytes of each direction's buffer unless told otherwise.
inline constexpr std::size_t default_pipe_buffer = 64 * 1024;

// The two ends of a pipe. In a one-way pipe `first` receives and `second` sends.
enum class pipe_end : std::uint8_t { first = 0, second = 1 };

class connection_base;

namespace detail {
using pipe_segment = shared_object<pipe_state>;
struct adopt_t {
  explicit adopt_t() = default;
};
// How many times this process has forked (counted before each fork, so a child inherits the
// new count): a handle made before a fork may have a copy in another process.
std::uint64_t fork_generation() noexcept;
std::pair<connection_base, connection_base> make_pipe(type_tag tag, bool duplex,
                                                      std::size_t buffer);
std::pair<connection_base, connection_base> make_pipe(create_only_t, std::string_view name,
                                                      type_tag tag, bool duplex,
                                                      std::size_t buffer, permissions perms);
std::vector<std::size_t> wait_connections(std::span<connection_base* const> conns,
                                          std::optional<time_point> deadline);
}  // namespace detail

// What every connection<T> shares: the handle on one end, byte messages, poll and close.
// shmkit::wait() takes pointers to it, so connections of different T can be waited on together.
class connection_base {
 public:
  // An empty handle: closed() is true and every call but close() throws closed_error.
  connection_base() noexcept = default;
  connection_base(connection_base&& other) noexcept { swap(other); }
  connection_base& operator=(connection_base&& other) noexcept {
    connection_base tmp(std::move(other));
    swap(tmp);
    return *this;
  }
  connection_base(const connection_base&) = delete;
  connection_base& operator=(const connection_base&) = delete;
  // close(). Does not throw.
  ~connection_base() { close(); }

  // Sends one message of raw bytes, of any size. Blocks while the buffer is full. Throws
  // eof_error when the peer is gone, closed_error on a closed handle, std::logic_error on a
  // receive-only end.
  void send_bytes(std::span<const std::byte> bytes);

  // Receives one message as raw bytes (whatever send() or send_bytes() sent). Blocks while
  // nothing is buffered; throws eof_error once the peer is gone and everything was read.
  std::vector<std::byte> recv_bytes();

  // Receives one message into `out` and returns its size. When the message is longer than
  // `out`, throws shmkit::error and leaves the message in the pipe (read it with recv_bytes()).
  std::size_t recv_bytes_into(std::span<std::byte> out);

  // True when recv() would not block: a message is buffered, or the peer is gone (recv()
  // then throws eof_error). Waits up to `timeout` for that (zero: just looks).
  template <class Rep, class Period>
  bool poll(std::chrono::duration<Rep, Period> timeout) {
    return poll_until(detail::deadline_after(timeout));
  }
  bool poll() { return poll_until(detail::clock::now()); }
  // Waits until `deadline`; nullopt waits without limit.
  bool poll_until(std::optional<detail::time_point> deadline);

  // Closes this end (see the header comment for when the peer sees EOF) and empties the
  // handle. Idempotent. Does not throw.
  void close() noexcept;

  bool closed() const noexcept { return seg_ == nullptr; }
  bool readable() const noexcept { return rx_.valid(); }
  bool writable() const noexcept { return tx_.valid(); }
  bool duplex() const noexcept;
  pipe_end end() const noexcept { return static_cast<pipe_end>(end_); }
  // Bytes of each direction's buffer.
  std::size_t buffer_size() const noexcept;
  // The pipe's name; empty for an anonymous pipe.
  const std::string& name() const noexcept;
  // Keeps the name after the creating process lets go of the pipe.
  void release_name() noexcept;

 protected:
  // Opens end `end` of the named pipe `name`, which must hold elements tagged `tag`.
  connection_base(open_only_t, std::string_view name, pipe_end end, detail::type_tag tag);
  connection_base(open_or_create_t, std::string_view name, pipe_end end, detail::type_tag tag,
                  bool duplex, std::size_t buffer, permissions perms);

  // Before a send: claims the end for this process, throws when the peer is known gone.
  void begin_send() {
    if (user_ != detail::process_identity()) [[unlikely]]
      claim();
    if (!tx_.valid()) [[unlikely]]
      throw_wrong_direction(true);
    // relaxed: advisory (a peer that closes a moment later is caught by the next send); no
    // data is read on the strength of this load.
    if (peer_->closed.load(std::memory_order_relaxed) != 0 || known_dead_ != 0) [[unlikely]]
      if (peer_gone()) throw_peer_gone(true);
    if ((++sends_ & 4095u) == 0) [[unlikely]]
      check_peer_now_and_then();
  }
  void begin_recv() {
    if (user_ != detail::process_identity()) [[unlikely]]
      claim();
    if (!rx_.valid()) [[unlikely]]
      throw_wrong_direction(false);
  }

  // Room for one frame of `bytes` bytes, waiting while the buffer is full (throws eof_error).
  std::byte* reserve_frame(std::size_t bytes) {
    if (std::byte* p = tx_.try_reserve(bytes)) [[likely]]
      return p;
    return reserve_frame_slow(bytes);
  }
  static void put_header(std::byte* at, std::size_t payload, std::uint32_t kind) noexcept {
    const detail::frame_header h{static_cast<std::uint32_t>(payload), kind};
    std::memcpy(at, &h, sizeof h);
  }
  // The largest payload sent as one frame; longer messages are streamed.
  std::size_t max_whole_payload() const noexcept {
    return detail::max_frame_bytes(tx_.capacity()) - sizeof(detail::frame_header);
  }
  // Streams a message that is too long for one frame. begin_send() done.
  void send_stream(std::span<const std::byte> bytes);

  // Calls f with the next message's bytes (in the buffer itself when the message came as one
  // frame) and returns what f returns; the message is consumed even when f throws.
  template <class F>
  decltype(auto) take_message(F&& f) {
    const detail::frame_header* h = next_frame();
    if (h->kind == detail::frame_whole) {
      struct release {
        detail::ring_reader& r;
        std::size_t n;
        ~release() { r.consume(n); }
      } guard{rx_, detail::frame_bytes(h->size)};
      return f(std::span<const std::byte>(detail::ring_reader::payload(h), h->size));
    }
    const std::vector<std::byte> m = assemble(h);
    return f(std::span<const std::byte>(m));
  }

  detail::ring_reader rx_;
  detail::ring_writer tx_;

 private:
  friend std::pair<connection_base, connection_base> detail::make_pipe(detail::type_tag, bool,
                                                                       std::size_t);
  friend std::pair<connection_base, connection_base> detail::make_pipe(
      create_only_t, std::string_view, detail::type_tag, bool, std::size_t, permissions);
  friend std::vector<std::size_t> detail::wait_connections(std::span<connection_base* const>,
                                                           std::optional<detail::time_point>);

  enum class readiness { data, eof, timeout };

  connection_base(std::shared_ptr<detail::pipe_segment> seg, int end);
  void bind(std::shared_ptr<detail::pipe_segment> seg, int end);
  void attach_by_name();

  void claim();
  // Lets the rings publish with light fences when this process can (see spsc_ring.hpp).
  void use_light_fences() noexcept;
  // The peer closed, or its process is already known to be dead (no system call).
  bool peer_gone() noexcept;
  // Whether the peer's process died (reads /proc; remembers a death it finds).
  bool peer_dead() noexcept;
  // peer_dead(), at most once per few milliseconds (for polls with no timeout).
  bool peer_dead_throttled() noexcept;
  void check_peer_now_and_then();
  bool ready_now(bool check_alive);
  template <class Pred>
  bool spin_first(Pred&& ready);
  readiness wait_readable(std::optional<detail::time_point> deadline);
  void learn_pace(int looks) noexcept;
  void wait_writable(std::size_t bytes);
  std::byte* reserve_frame_slow(std::size_t bytes);
  const detail::frame_header* next_frame();
  std::vector<std::byte> assemble(const detail::frame_header* first);
  // Reads a streamed message whose first frame is `first`, handing each piece to
  // sink(total, piece). Returns nullptr when complete, or the unconsumed frame that cut it
  // short (a new message from a process that took over the dead sender's end).
  template <class Sink>
  const detail::frame_header* read_stream(const detail::frame_header* first, Sink&& sink);
  std::string describe() const;
  [[noreturn]] void throw_wrong_direction(bool sending) const;
  [[noreturn]] void throw_peer_gone(bool sending) const;
  [[noreturn]] void throw_corrupted() const;

  void swap(connection_base& o) noexcept {
    std::swap(seg_, o.seg_);
    std::swap(rx_, o.rx_);
    std::swap(tx_, o.tx_);
    std::swap(self_, o.self_);
    std::swap(peer_, o.peer_);
    std::swap(user_, o.user_);
    std::swap(fork_gen_, o.fork_gen_);
    std::swap(sends_, o.sends_);
    std::swap(last_alive_check_, o.last_alive_check_);
    std::swap(known_dead_, o.known_dead_);
    std::swap(spin_, o.spin_);
    std::swap(pace_, o.pace_);
    std::swap(sends_at_wait_, o.sends_at_wait_);
    std::swap(end_, o.end_);
  }

  std::shared_ptr<detail::pipe_segment> seg_;  // shared by the two ends made together
  detail::pipe_end_state* self_ = nullptr;
  detail::pipe_end_state* peer_ = nullptr;
  std::uint64_t user_ = 0;      // the process that claimed the end through this handle
  std::uint64_t fork_gen_ = 0;  // detail::fork_generation() when the handle was made
  std::uint32_t sends_ = 0;
  detail::time_point last_alive_check_{};
  std::uint64_t known_dead_ = 0;  // the peer owner found dead, so that is not asked again
  std::chrono::nanoseconds spin_ = detail::spin_budget;  // adapted: see spin_first()
  std::uint32_t pace_ = 1;  // pauses per look at an empty ring: see learn_pace()
  std::uint32_t sends_at_wait_ = 0;  // sends_ when a wait for data last ended
  std::uint8_t end_ = 0;
};

// One end of a pipe carrying values of T. Move-only handle; see the header comment.
template <class T>
class connection : public connection_base {
  static_assert(encodable<T>, "shmkit::connection<T>: T must be a type the codec encodes");

 public:
  using value_type = T;

  connection() noexcept = default;
  // Opens one end of the named pipe made by pipe<T>(create_only, name, ...) or by
  // open_or_create. Throws shmkit::error when the name is missing, holds something other than
  // a pipe of T, or the end is in use by another live process or was closed.
  connection(open_only_t, std::string_view name, pipe_end end)
      : connection_base(open_only, name, end, detail::tag_of<T>()) {}
  // Opens end `end` of the named pipe, creating the pipe first when the name is free (duplex
  // and buffer apply then). Two processes that each take one end this way meet.
  connection(open_or_create_t, std::string_view name, pipe_end end, bool duplex = true,
             std::size_t buffer = default_pipe_buffer, permissions perms = {})
      : connection_base(open_or_create, name, end, detail::tag_of<T>(), duplex, buffer, perms) {}

  connection(detail::adopt_t, connection_base&& base) noexcept
      : connection_base(std::move(base)) {}

  // Sends one value. Blocks while the buffer is full; throws eof_error when the peer is gone,
  // closed_error on a closed handle, std::logic_error on a receive-only end.
  void send(const T& v) {
    begin_send();
    if constexpr (is_raw_encodable_v<T>) {
      if (sizeof(T) <= max_whole_payload()) [[likely]] {
        constexpr std::size_t n = detail::frame_bytes(sizeof(T));
        std::byte* p = reserve_frame(n);
        put_header(p, sizeof(T), detail::frame_whole);
        std::memcpy(p + sizeof(detail::frame_header), &v, sizeof(T));  // the raw encoding
        tx_.commit(n);
        return;
      }
      send_stream(std::as_bytes(std::span<const T, 1>(&v, 1)));
    } else {
      const std::size_t size = encoded_size(v);
      if (size <= max_whole_payload()) {
        const std::size_t n = detail::frame_bytes(size);
        std::byte* p = reserve_frame(n);
        encode_into(v, std::span<std::byte>(p + sizeof(detail::frame_header), size));
        put_header(p, size, detail::frame_whole);
        tx_.commit(n);
        return;
      }
      const std::vector<std::byte> bytes = encode(v);
      send_stream(bytes);
    }
  }

  // Receives one value. Blocks while nothing is buffered; throws eof_error once the peer is
  // gone and everything was read, shmkit::error when the message does not decode as T (the
  // message is consumed).
  T recv() {
    begin_recv();
    if constexpr (is_raw_encodable_v<T>) {
      const detail::frame_header* h = rx_.peek();
      if (h != nullptr && h->kind == detail::frame_whole && h->size == sizeof(T)) [[likely]] {
        std::array<std::byte, sizeof(T)> raw;
        std::memcpy(raw.data(), detail::ring_reader::payload(h), sizeof(T));
        rx_.consume(detail::frame_bytes(sizeof(T)));
        return std::bit_cast<T>(raw);
      }
    }
    return take_message([](std::span<const std::byte> b) { return decode<T>(b); });
  }
};

// An anonymous pipe, shared with children forked after it: (first, second). Duplex: both ends
// send and receive; one-way (duplex = false): first receives, second sends. `buffer` bytes per
// direction (rounded up to a power of two, 1 KiB .. 1 GiB). Throws shmkit::error when the
// memory cannot be reserved, std::invalid_argument for a buffer size out of range.
template <class T>
std::pair<connection<T>, connection<T>> pipe(bool duplex = true,
                                             std::size_t buffer = default_pipe_buffer) {
  auto [a, b] = detail::make_pipe(detail::tag_of<T>(), duplex, buffer);
  return {connection<T>(detail::adopt_t{}, std::move(a)),
          connection<T>(detail::adopt_t{}, std::move(b))};
}

// A named pipe: both ends, held by the creator. Another process (of the same user, unless
// `perms` allow more) takes an end with connection<T>(open_only, name, end); the creator keeps
// the end it uses and may drop the other (a spare end it never used is let go, not closed).
// The name goes when the creator's last handle on the pipe goes, unless release_name().
// Throws shmkit::error when the name exists or the memory cannot be reserved.
template <class T>
std::pair<connection<T>, connection<T>> pipe(create_only_t, std::string_view name,
                                             bool duplex = true,
                                             std::size_t buffer = default_pipe_buffer,
                                             permissions perms = {}) {
  auto [a, b] = detail::make_pipe(create_only, name, detail::tag_of<T>(), duplex, buffer, perms);
  return {connection<T>(detail::adopt_t{}, std::move(a)),
          connection<T>(detail::adopt_t{}, std::move(b))};
}

// Like multiprocessing.connection.wait(): the indices (in `conns`) of the connections that are
// ready to recv() (a message buffered, or the peer gone), waiting up to `timeout` while none is;
// empty on timeout. Sleeps in the kernel (futex_waitv; sleep-polling on kernels without it),
// never spins after a short start. Counts as a use of each end (it claims them). Throws
// std::invalid_argument for a null, closed or send-only connection.
template <class Rep, class Period>
std::vector<std::size_t> wait(std::initializer_list<connection_base*> conns,
                              std::chrono::duration<Rep, Period> timeout) {
  return detail::wait_connections(std::span<connection_base* const>(conns.begin(), conns.size()),
                                  detail::deadline_after(timeout));
}
// Without a timeout: waits until one is ready.
inline std::vector<std::size_t> wait(std::initializer_list<connection_base*> conns) {
  return detail::wait_connections(std::span<connection_base* const>(conns.begin(), conns.size()),
                                  std::nullopt);
}
// Any range of pointers to connections (std::vector<connection<T>*>, ...).
template <class Range, class Rep, class Period>
  requires requires(const Range& r) {
    { *std::begin(r) } -> std::convertible_to<connection_base*>;
  }
std::vector<std::size_t> wait(const Range& conns, std::chrono::duration<Rep, Period> timeout) {
  std::vector<connection_base*> v;
  for (auto* c : conns) v.push_back(c);
  return detail::wait_connections(v, detail::deadline_after(timeout));
}
template <class Range>
  requires requires(const Range& r) {
    { *std::begin(r) } -> std::convertible_to<connection_base*>;
  }
std::vector<std::size_t> wait(const Range& conns) {
  std::vector<connection_base*> v;
  for (auto* c : conns) v.push_back(c);
  return detail::wait_connections(v, std::nullopt);
}

}  // namespace shmkit
