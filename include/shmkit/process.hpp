// SPDX-License-Identifier: MIT
// shmkit::process: run a callable in a forked child, like Python's multiprocessing.Process,
// with its exit code and any exception that escaped it brought back to the parent.
//
// Contract
// - One parent, one child per object. The object is not thread-safe: like std::thread, one
//   thread at a time calls its members. Different objects may be used from different threads.
// - process(fn, args...) decay-copies fn and args at construction; start() forks and the child
//   calls std::invoke(std::move(fn), std::move(args)...) once, like std::thread (pass
//   std::ref for a reference; the child sees a copy of the parent's memory anyway).
// - The child never returns into the caller's stack: it leaves through _exit() after flushing
//   stdio and the standard streams, so the parent's atexit handlers and static destructors do
//   not run in it. Exit code: the callable's result when it returns exactly `int` (as from
//   main; the kernel keeps the low 8 bits), otherwise 0; 1 when an exception escaped.
// - An escaping exception's dynamic type (demangled) and what() are written into a record in
//   shared memory before the child exits; rethrow_if_failed() throws them as
//   shmkit::remote_error with the child's pid. Non-std exceptions report their type and, for
//   strings and arithmetic values, the value. A message over 3824 bytes or a type name over
//   256 bytes is cut, ending with a marker that gives its full length. traceback() carries the
//   stack of the throw site, from the throw down to the child's entry (taken when the
//   exception is thrown, see detail/throw_trace.hpp for how and for naming frames); it is
//   empty when none was captured, and cut at 4096 bytes.
// - Records: one anonymous shared block of 64 records per parent process, made at its first
//   start() and kept (more blocks chained when more children run at once), so a start() costs
//   no segment of its own; a record is freed when its child is reaped.
// - Progress: start() and the accessors never wait; join() blocks; join_for() sleeps in the
//   kernel (poll on a pidfd, or waitpid polls with sleeps growing to 5 ms without pidfds).
// - Reaping: join(), join_for(), exitcode(), is_alive() and the destructor reap the child with
//   waitpid() on its pid only; no SIGCHLD handler is installed. Another waitpid(-1) in the
//   program, or SIGCHLD set to SIG_IGN, steals the status: join() then throws shmkit::error.
// - The destructor of a started, not yet reaped process waits for it (non-daemon, like
//   Python's interpreter joining non-daemon children at exit) or kills it with SIGKILL and
//   reaps it (daemon). So no path leaves a zombie, and no child outlives a daemon handle.
//   Only the process that called start() waits or kills: a copy of the object in a forked
//   child does nothing.
// - daemon(true) before start(): the child gets the parent-death signal SIGKILL, so it dies
//   with the parent, also when the parent is killed with SIGKILL. Linux sends that signal when
//   the *thread* that called start() ends: start daemons from a thread that lives as long as
//   you want them to.
// - A multithreaded parent: the child holds only the thread that called start(), and any lock
//   another thread held at the fork stays held in it. glibc's malloc, stdio and dynamic loader
//   reset theirs, so a callable may allocate, print and throw; locks of your own (or of a
//   runtime that does not prepare for fork, such as GCC 12's AddressSanitizer allocator) may
//   deadlock the child. The pool never forks from a multithreaded process (see pool.hpp).
// - What survives kill -9 of the parent: a non-daemon child runs on (reparented), as in Python;
//   a daemon child is killed. Kill -9 of the child: exitcode() is -9, and a half-written
//   exception record is never reported (it is published last, with release order).
// - Throws: std::logic_error for calls out of order (start twice, daemon() after start, join
//   or terminate before start, rethrow_if_failed before the child ended); shmkit::error when
//   fork or a system call fails. Destructors do not throw.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <sys/types.h>
#include <tuple>
#include <type_traits>
#include <utility>

#include "shmkit/error.hpp"

namespace shmkit {

// Number of CPUs this process may run on: the size of its affinity mask (what taskset or a
// container's cpuset gives it), or std::thread::hardware_concurrency() when the mask cannot be
// read. At least 1. Does not throw.
int cpu_count() noexcept;

class process;

namespace detail {

struct result_block;  // lib/process.cpp: a shared block of exception records

// The type-erased callable a process runs: fn and its arguments, decay-copied.
struct process_task {
  virtual ~process_task() = default;
  virtual int run() = 0;  // the exit code
};

template <class F, class... Args>
struct process_task_of final : process_task {
  template <class G, class... A>
  explicit process_task_of(G&& g, A&&... a)
      : fn(std::forward<G>(g)), args(std::forward<A>(a)...) {}

  int run() override {
    return std::apply(
        [this](auto&&... a) -> int {
          if constexpr (std::is_same_v<std::invoke_result_t<F, Args...>, int>) {
            return std::invoke(std::move(fn), std::move(a)...);
          } else {
            std::invoke(std::move(fn), std::move(a)...);
            return 0;
          }
        },
        std::move(args));
  }

  F fn;
  std::tuple<Args...> args;
};

// For tests: false makes join_for() poll waitpid(WNOHANG) instead of waiting on a pidfd.
void set_pidfd_enabled(bool enabled) noexcept;

}  // namespace detail

class process {
 public:
  // An empty process (a target for moves); start() on it throws std::logic_error.
  process() noexcept;

  // Takes copies of fn and args now; nothing runs until start(). Throws what the copies throw.
  template <class F, class... Args>
    requires(!std::is_same_v<std::remove_cvref_t<F>, process>)
  explicit process(F&& fn, Args&&... args)
      : task_(std::make_unique<detail::process_task_of<std::decay_t<F>, std::decay_t<Args>...>>(
            std::forward<F>(fn), std::forward<Args>(args)...)),
        name_(next_name()) {
    static_assert(std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>,
                  "shmkit::process: fn must be callable with (rvalue copies of) args, as for "
                  "std::thread; wrap arguments meant by reference in std::ref");
  }

  process(process&& other) noexcept;
  // Settles the process held now first (as the destructor does), then takes other's.
  process& operator=(process&& other) noexcept;
  process(const process&) = delete;
  process& operator=(const process&) = delete;
  // Started and not reaped: waits for the child (non-daemon) or kills and reaps it (daemon).
  ~process();

  // Forks the child. Throws std::logic_error when called twice or on an empty process,
  // shmkit::error when fork() fails (the object then stays startable).
  void start();

  // Blocks until the child ends and reaps it. Throws std::logic_error before start().
  void join();
  // Waits at most d; true when the child ended (and was reaped). Throws as join().
  template <class Rep, class Period>
  bool join_for(const std::chrono::duration<Rep, Period>& d) {
    return join_until(std::chrono::steady_clock::now() +
                      std::chrono::ceil<std::chrono::steady_clock::duration>(d));
  }
  bool join_until(std::chrono::steady_clock::time_point deadline);

  // nullopt before start() and while the child runs; its exit status once it ended; -N when
  // signal N ended it. Reaps the child when it has ended. Throws shmkit::error when the status
  // was taken by someone else.
  std::optional<int> exitcode();
  // Started and not yet ended. Does not throw except as exitcode().
  bool is_alive();
  // The child's pid; 0 before start(). Still valid after the child was reaped.
  pid_t pid() const noexcept { return pid_; }

  // "process-N" by default (N counts processes made by this program, from 1); settable.
  const std::string& name() const noexcept { return name_; }
  void name(std::string n) { name_ = std::move(n); }

  // SIGTERM / SIGKILL to the child; nothing once it was reaped. Throws std::logic_error
  // before start(), shmkit::error when kill(2) fails.
  void terminate();
  void kill();

  // Whether the child dies with its parent. Set before start(); after it, std::logic_error.
  void daemon(bool d);
  bool daemon() const noexcept { return daemon_; }

  // Throws shmkit::remote_error(type name, what(), pid) when an exception escaped the child's
  // callable; returns when it did not. std::logic_error when called before the child ended.
  void rethrow_if_failed();

 private:
  static std::string next_name();  // "process-N"
  bool reap(bool block);  // true once reaped
  void settle() noexcept;  // destructor work
  void swap(process& o) noexcept;
  void release_slot() noexcept;
  bool owned_here() const noexcept;
  void require_started(const char* what) const;

  std::unique_ptr<detail::process_task> task_;
  std::string name_;
  pid_t pid_ = 0;
  pid_t parent_ = 0;  // the process that called start(): the only one that reaps
  bool daemon_ = false;
  bool started_ = false;
  bool reaped_ = false;
  bool lost_ = false;  // waitpid said ECHILD: the status went elsewhere
  int code_ = 0;       // once reaped: exit status, or -signal
  int pidfd_ = -1;     // opened by join_until when pidfds work; closed when reaped
  detail::result_block* block_ = nullptr;  // the exception record, until reaped
  unsigned slot_ = 0;
  std::unique_ptr<remote_error> failure_;  // what the child reported, once reaped
};

}  // namespace shmkit
