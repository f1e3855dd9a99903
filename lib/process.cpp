// SPDX-License-Identifier: MIT
// shmkit::process: fork, reap, and the shared records that carry a child's exception home.
#include "shmkit/process.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <iostream>
#ifdef __GLIBCXX__
#include <ext/stdio_sync_filebuf.h>
#endif
#include <new>
#include <optional>
#include <poll.h>
#include <sched.h>
#include <stdexcept>
#include <string_view>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <typeinfo>
#include <unistd.h>

#include "shmkit/detail/barrier_state.hpp"
#include "shmkit/detail/segment.hpp"
#include "shmkit/detail/throw_trace.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/error.hpp"

namespace shmkit {

int cpu_count() noexcept {
  // Masks larger than cpu_set_t (over 1024 CPUs) need a bigger buffer: grow on EINVAL.
  for (int n = CPU_SETSIZE; n <= (1 << 16); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) break;
    const std::size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set);
    const int r = ::sched_getaffinity(0, size, set);
    const int e = errno;
    const int count = r == 0 ? CPU_COUNT_S(size, set) : 0;
    CPU_FREE(set);
    if (r == 0 && count > 0) return count;
    if (r == 0 || e != EINVAL) break;
  }
  const unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

namespace detail {

// One child's exception, written by the child, read by the parent after reaping it. Lives in
// shared memory: no pointers, lengths instead of terminators, one atomic published last.
struct alignas(64) result_record {
  static constexpr std::size_t type_capacity = 256;
  static constexpr std::size_t message_capacity = 4096 - 16 - type_capacity;
  static constexpr std::size_t trace_capacity = 4096;

  // 0 until the child finished writing the fields below, then 1. The parent resets it (by
  // constructing the record anew) before each fork.
  std::atomic<std::uint32_t> written;
  std::uint32_t type_len;
  std::uint32_t message_len;
  std::uint32_t trace_len;
  char type_name[type_capacity];
  char message[message_capacity];
  char trace[trace_capacity];  // the stack of the throw (detail/throw_trace.hpp), or empty
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<result_record>);
static_assert(sizeof(result_record) == 8192);

// A block of records in one anonymous segment, made lazily by the first start() of each
// process and kept for the life of the program: one memfd and mapping serves 64 children at
// a time instead of one per child. The bitmap of claimed records is private to the process
// that made the block (a forked child that starts processes of its own makes its own chain).
struct result_block {
  static constexpr unsigned slots = 64;

  explicit result_block(pid_t o)
      : owner(o),
        seg(segment::create_anonymous({object_kind::internal, tag_of<result_record>()},
                                      slots * sizeof(result_record))) {
    seg.publish();
  }

  result_record* record(unsigned i) const noexcept {
    return reinterpret_cast<result_record*>(seg.payload()) + i;
  }
  void release(unsigned i) noexcept {
    // release: pairs with the acquire CAS in claim(); our last read of the record happens
    // before the next claimer rebuilds it.
    used.fetch_and(~(std::uint64_t{1} << i), std::memory_order_release);
  }

  const pid_t owner;
  segment seg;
  std::atomic<std::uint64_t> used{0};         // bit i: record i is claimed (process-local)
  std::atomic<result_block*> next{nullptr};   // chain; blocks are never freed
  result_block* inherited = nullptr;          // the parent's chain, kept reachable after fork
};

namespace {

std::atomic<result_block*> chain_head{nullptr};
std::atomic<bool> pidfd_enabled{true};
std::atomic<unsigned long> process_counter{0};

// The chain of this process, made on first use. Lock-free, so a fork while another thread
// makes a block leaves nothing locked in the child.
result_block* own_chain(pid_t self) {
  // acquire: pairs with the release CAS below; the block's fields are built before it.
  result_block* head = chain_head.load(std::memory_order_acquire);
  while (head == nullptr || head->owner != self) {
    auto* fresh = new result_block(self);
    fresh->inherited = head;
    if (chain_head.compare_exchange_strong(head, fresh, std::memory_order_acq_rel,
                                           std::memory_order_acquire))
      return fresh;
    delete fresh;  // another thread installed one: use it (head was reloaded)
  }
  return head;
}

std::pair<result_block*, unsigned> claim(pid_t self) {
  result_block* b = own_chain(self);
  for (;;) {
    std::uint64_t u = b->used.load(std::memory_order_relaxed);
    while (u != ~std::uint64_t{0}) {
      const unsigned i = static_cast<unsigned>(std::countr_one(u));
      // acquire: pairs with the release fetch_and in result_block::release(). A failed CAS
      // reloads u and tries the next free bit; bits only flip between claimed and free, so
      // ABA is harmless (a bit freed and claimed again is simply busy).
      if (b->used.compare_exchange_weak(u, u | (std::uint64_t{1} << i),
                                        std::memory_order_acquire, std::memory_order_relaxed))
        return {b, i};
    }
    // acquire: pairs with the release CAS that appended the block.
    result_block* n = b->next.load(std::memory_order_acquire);
    if (n == nullptr) {
      auto* fresh = new result_block(self);
      if (b->next.compare_exchange_strong(n, fresh, std::memory_order_acq_rel,
                                          std::memory_order_acquire))
        n = fresh;
      else
        delete fresh;  // another thread appended one: n holds it
    }
    b = n;
  }
}

// Copies s into dst[cap]; a longer s is cut and ends with a marker giving its full length.
std::uint32_t put_bounded(char* dst, std::size_t cap, std::string_view s) noexcept {
  if (s.size() <= cap) {
    std::memcpy(dst, s.data(), s.size());
    return static_cast<std::uint32_t>(s.size());
  }
  char marker[64];
  const int m = std::snprintf(marker, sizeof marker, "... [cut: %zu bytes in all]", s.size());
  const std::size_t keep = cap - static_cast<std::size_t>(m);
  std::memcpy(dst, s.data(), keep);
  std::memcpy(dst + keep, marker, static_cast<std::size_t>(m));
  return static_cast<std::uint32_t>(cap);
}

// The text of a non-std exception in flight: its value for strings and arithmetic types.
std::string non_std_message(const std::string& type) {
  auto with = [&](const auto& v) {
    return fmt::format("exception of type {} (not derived from std::exception): {}", type, v);
  };
  try {
    throw;
  } catch (const char* s) {
    return with(s);
  } catch (const std::string& s) {
    return with(s);
  } catch (std::string_view s) {
    return with(s);
  } catch (bool v) {
    return with(v);
  } catch (char v) {
    return with(v);
  } catch (int v) {
    return with(v);
  } catch (unsigned v) {
    return with(v);
  } catch (long v) {
    return with(v);
  } catch (unsigned long v) {
    return with(v);
  } catch (long long v) {
    return with(v);
  } catch (unsigned long long v) {
    return with(v);
  } catch (short v) {
    return with(v);
  } catch (unsigned short v) {
    return with(v);
  } catch (double v) {
    return with(v);
  } catch (float v) {
    return with(v);
  } catch (...) {
    return fmt::format("exception of type {} (not derived from std::exception)", type);
  }
}

// A message longer than the record holds travels whole in a shared-memory object of its own,
// named after the parent (the process that started the child) and the child, which the parent
// reads and removes when it reaps the child (take_spilled_message()); the record keeps the
// cut text too, for a parent that cannot read the object. Plain write()s: no mapping, so a
// full /dev/shm fails the write (the cut text is then all there is), never raises SIGBUS.
std::string spill_name(pid_t parent, pid_t child) {
  return fmt::format("/shmkit.process-message-{}-{}", parent, child);
}

bool spill_message(pid_t parent, std::string_view message) noexcept {
  try {
    const std::string name = spill_name(parent, ::getpid());
    int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {  // left by an earlier child of this pid: not ours to keep
      ::shm_unlink(name.c_str());
      fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    }
    if (fd < 0) return false;
    std::size_t done = 0;
    while (done < message.size()) {
      const ssize_t n = ::write(fd, message.data() + done, message.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    if (done == message.size()) return true;
    ::shm_unlink(name.c_str());
  } catch (...) {
  }
  return false;
}

// The parent's side: the whole message of `child`, `len` bytes, or nullopt; the object is
// removed either way.
std::optional<std::string> take_spilled_message(pid_t child, std::size_t len) {
  const std::string name = spill_name(::getpid(), child);
  const int fd = ::shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  ::shm_unlink(name.c_str());
  if (fd < 0) return std::nullopt;
  std::optional<std::string> text;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && static_cast<std::size_t>(st.st_size) == len) {
    std::string s(len, '\0');
    std::size_t done = 0;
    while (done < len) {
      const ssize_t n = ::pread(fd, s.data() + done, len - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    if (done == len) text = std::move(s);
  }
  ::close(fd);
  return text;
}

void write_record(result_record* r, pid_t parent, std::string_view type,
                  std::string_view message, std::string_view trace = {}) noexcept {
  r->type_len = put_bounded(r->type_name, result_record::type_capacity, type);
  r->message_len = put_bounded(r->message, result_record::message_capacity, message);
  // Longer than the record: message_len says the whole length when the object holds it.
  if (message.size() > result_record::message_capacity && message.size() <= UINT32_MAX &&
      spill_message(parent, message))
    r->message_len = static_cast<std::uint32_t>(message.size());
  r->trace_len = put_bounded(r->trace, result_record::trace_capacity, trace);
  // release: pairs with the acquire load in process::reap(); the fields above are complete
  // before the parent can see written == 1 (a child killed before this line reports nothing).
  r->written.store(1, std::memory_order_release);
}

void flush_standard_streams() noexcept {
  try {
    std::cout.flush();
    std::clog.flush();
    std::cerr.flush();
  } catch (...) {
  }
  std::fflush(nullptr);
}

// Whether std::cout, std::clog and std::cerr keep buffers of their own, i.e. are not the
// libstdc++ write-through buffers onto stdio that sync_with_stdio(true) gives. Asked in the
// parent: a child flushing iostreams touches a dozen cold pages of code and data (about 40 us
// of page faults on these machines, a fifth of a fork), so it does so only when needed.
bool iostreams_buffer_apart() noexcept {
#ifdef __GLIBCXX__
  auto apart = [](std::ostream& os) {
    std::streambuf* b = os.rdbuf();
    return b != nullptr && typeid(*b) != typeid(__gnu_cxx::stdio_sync_filebuf<char>);
  };
  return apart(std::cout) || apart(std::clog) || apart(std::cerr);
#else
  return true;
#endif
}

// The child's side of start(): never returns.
[[noreturn]] void run_child(process_task& task, result_record* rec, bool daemon, pid_t parent,
                            bool flush_iostreams) noexcept {
  if (daemon) {
    // The parent-death signal, then the race: a parent that died before prctl() took effect
    // left us reparented already, and no signal will come.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::raise(SIGKILL);
  }
  enable_throw_traces();
  int code = 0;
  try {
    code = task.run();
  } catch (const std::exception& e) {
    code = 1;
    try {
      write_record(rec, parent, demangle(typeid(e).name()), e.what(), last_throw_trace());
    } catch (...) {
      write_record(rec, parent, "std::exception", "(the exception's text could not be recorded)");
    }
  } catch (...) {
    code = 1;
    try {
      const std::string type = current_exception_type_name();
      write_record(rec, parent, type, non_std_message(type), last_throw_trace());
    } catch (...) {
      write_record(rec, parent, "unknown", "(a non-std exception that could not be recorded)");
    }
  }
  // Ending normally: not a barrier party that died (the handles copied at fork are still in
  // this memory, never destroyed).
  barrier_leave_all();
  if (flush_iostreams) {
    flush_standard_streams();
  } else {
    std::fflush(nullptr);  // the iostreams write through to stdio
  }
  ::_exit(code);
}

}  // namespace

void set_pidfd_enabled(bool enabled) noexcept {
  pidfd_enabled.store(enabled, std::memory_order_relaxed);  // a switch read on its own
}

}  // namespace detail

// --- process ----------------------------------------------------------------------------

process::process() noexcept = default;

std::string process::next_name() {
  // relaxed: a counter; nothing else is published with it.
  return fmt::format("process-{}",
                     detail::process_counter.fetch_add(1, std::memory_order_relaxed) + 1);
}

process::process(process&& o) noexcept { swap(o); }

void process::swap(process& o) noexcept {
  std::swap(task_, o.task_);
  std::swap(name_, o.name_);
  std::swap(pid_, o.pid_);
  std::swap(parent_, o.parent_);
  std::swap(daemon_, o.daemon_);
  std::swap(started_, o.started_);
  std::swap(reaped_, o.reaped_);
  std::swap(lost_, o.lost_);
  std::swap(code_, o.code_);
  std::swap(pidfd_, o.pidfd_);
  std::swap(block_, o.block_);
  std::swap(slot_, o.slot_);
  std::swap(failure_, o.failure_);
}

process& process::operator=(process&& o) noexcept {
  if (this != &o) {
    process old(std::move(o));
    swap(old);  // old now holds what this held, and settles it on leaving
  }
  return *this;
}

process::~process() { settle(); }

bool process::owned_here() const noexcept { return started_ && parent_ == ::getpid(); }

void process::require_started(const char* what) const {
  if (!started_)
    throw std::logic_error(
        fmt::format("shmkit: {} on process '{}', which was not started", what, name_));
}

void process::release_slot() noexcept {
  if (block_ != nullptr) {
    block_->release(slot_);
    block_ = nullptr;
  }
  if (pidfd_ >= 0) {
    ::close(pidfd_);
    pidfd_ = -1;
  }
}

void process::settle() noexcept {
  if (!started_ || reaped_) return;
  if (!owned_here()) {
    // A copy inherited by a forked child: not ours to wait for or kill. The pidfd is a
    // descriptor of this process too, so close it; the record belongs to the parent's chain.
    if (pidfd_ >= 0) ::close(pidfd_);
    pidfd_ = -1;
    block_ = nullptr;
    return;
  }
  if (daemon_) ::kill(pid_, SIGKILL);
  try {
    reap(true);
  } catch (...) {
    // reap() throws only for an errno waitpid never gives for our own child.
  }
}

void process::start() {
  if (started_)
    throw std::logic_error(
        fmt::format("shmkit: process '{}' was started already (pid {})", name_, pid_));
  if (!task_)
    throw std::logic_error(
        "shmkit: start() on an empty process (default-constructed or moved from)");
  const pid_t self = ::getpid();
  auto [block, slot] = detail::claim(self);
  detail::result_record* rec = new (block->record(slot)) detail::result_record;
  // relaxed: the child inherits this store through fork(); nothing else is published by it.
  rec->written.store(0, std::memory_order_relaxed);
  // Anything buffered now would be written twice, by us and by the child's copy.
  detail::flush_standard_streams();
  const bool flush_iostreams = detail::iostreams_buffer_apart();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    block->release(slot);
    throw error(fmt::format("shmkit: cannot start process '{}': fork failed: {}", name_,
                            std::strerror(e)));
  }
  if (pid == 0) detail::run_child(*task_, rec, daemon_, self, flush_iostreams);
  pid_ = pid;
  parent_ = self;
  started_ = true;
  block_ = block;
  slot_ = slot;
}

bool process::reap(bool block) {
  if (reaped_) return true;
  if (parent_ != ::getpid())
    throw std::logic_error(fmt::format(
        "shmkit: process '{}' (pid {}) was started by process {}; only it can wait for it",
        name_, pid_, parent_));
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  if (r < 0) {
    if (errno != ECHILD)
      throw error(fmt::format("shmkit: cannot wait for process '{}' (pid {}): {}", name_,
                              pid_, std::strerror(errno)));
    lost_ = true;  // SIGCHLD ignored, or a waitpid(-1) elsewhere took the status
  } else if (WIFEXITED(status)) {
    code_ = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    code_ = -WTERMSIG(status);
  }
  reaped_ = true;
  if (block_ != nullptr) {
    const detail::result_record* rec = block_->record(slot_);
    // acquire: pairs with the release store in write_record() in the child.
    if (rec->written.load(std::memory_order_acquire) == 1) {
      try {
        auto field = [](const char* text, std::uint32_t len, std::size_t cap) {
          return std::string(text, std::min<std::size_t>(len, cap));
        };
        std::string message = field(rec->message, rec->message_len, sizeof rec->message);
        if (rec->message_len > sizeof rec->message)  // spilled whole (see spill_message())
          if (auto whole = detail::take_spilled_message(pid_, rec->message_len))
            message = std::move(*whole);
        failure_ = std::make_unique<remote_error>(
            field(rec->type_name, rec->type_len, sizeof rec->type_name), std::move(message),
            pid_, field(rec->trace, rec->trace_len, sizeof rec->trace));
      } catch (...) {
        // Out of memory while copying: report what can be reported without allocating more.
        failure_.reset();
      }
    } else if (code_ != 0) {
      // Killed (or ended) while spilling a long message, before publishing the record: the
      // object, if any, is nobody else's to remove.
      ::shm_unlink(detail::spill_name(::getpid(), pid_).c_str());
    }
  }
  release_slot();
  return true;
}

void process::join() {
  require_started("join()");
  reap(true);
  if (lost_)
    throw error(fmt::format("shmkit: the exit status of process '{}' (pid {}) was taken by "
                            "someone else (SIGCHLD ignored, or waitpid(-1) elsewhere)",
                            name_, pid_));
}

bool process::join_until(std::chrono::steady_clock::time_point deadline) {
  require_started("join_for()");
  using clock = std::chrono::steady_clock;
  auto sleep = std::chrono::microseconds(50);
  for (;;) {
    if (reap(false)) {
      join();  // reports a lost status as join() does
      return true;
    }
    const auto left = deadline - clock::now();
    if (left <= clock::duration::zero()) return false;
#ifdef SYS_pidfd_open
    if (pidfd_ < 0 && detail::pidfd_enabled.load(std::memory_order_relaxed)) {
      const long fd = ::syscall(SYS_pidfd_open, pid_, 0);
      if (fd >= 0)
        pidfd_ = static_cast<int>(fd);
      else if (errno == ENOSYS || errno == EPERM)
        detail::pidfd_enabled.store(false, std::memory_order_relaxed);  // a plain switch
    }
    if (pidfd_ >= 0 && detail::pidfd_enabled.load(std::memory_order_relaxed)) {
      // The pidfd reads ready once the child has ended; then waitpid() above reaps it.
      pollfd p{pidfd_, POLLIN, 0};
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      if (::ppoll(&p, 1, &ts, nullptr) < 0 && errno != EINTR)
        throw error(fmt::format("shmkit: cannot wait for process '{}' (pid {}): {}", name_,
                                pid_, std::strerror(errno)));
      continue;
    }
#endif
    // No pidfd: poll waitpid with sleeps growing from 50 us to 5 ms.
    std::this_thread::sleep_for(std::min<clock::duration>(sleep, left));
    sleep = std::min<std::chrono::microseconds>(sleep * 2, std::chrono::milliseconds(5));
  }
}

std::optional<int> process::exitcode() {
  if (!started_) return std::nullopt;
  if (!reaped_ && !reap(false)) return std::nullopt;
  if (lost_)
    throw error(fmt::format("shmkit: the exit status of process '{}' (pid {}) was taken by "
                            "someone else (SIGCHLD ignored, or waitpid(-1) elsewhere)",
                            name_, pid_));
  return code_;
}

bool process::is_alive() { return started_ && !exitcode().has_value(); }

void process::terminate() {
  require_started("terminate()");
  if (!reaped_ && ::kill(pid_, SIGTERM) != 0)
    throw error(fmt::format("shmkit: cannot send SIGTERM to process '{}' (pid {}): {}", name_,
                            pid_, std::strerror(errno)));
}

void process::kill() {
  require_started("kill()");
  if (!reaped_ && ::kill(pid_, SIGKILL) != 0)
    throw error(fmt::format("shmkit: cannot send SIGKILL to process '{}' (pid {}): {}", name_,
                            pid_, std::strerror(errno)));
}

void process::daemon(bool d) {
  if (started_)
    throw std::logic_error(fmt::format(
        "shmkit: daemon() on process '{}' after start(): set it before starting", name_));
  daemon_ = d;
}

void process::rethrow_if_failed() {
  require_started("rethrow_if_failed()");
  if (!exitcode().has_value())
    throw std::logic_error(fmt::format(
        "shmkit: rethrow_if_failed() on process '{}' (pid {}), which is still running: join() "
        "first",
        name_, pid_));
  if (failure_) throw *failure_;
}

}  // namespace shmkit
