// SPDX-License-Identifier: MIT
// What the synchronization tests share: plain data placed in anonymous shared memory (seen by
// children forked afterwards), and bounded waits for a flag another process raises.
#pragma once

#include <atomic>
#include <chrono>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "shmkit/shared_memory.hpp"
#include "support.hpp"

namespace shmkit::test {

// A T in anonymous shared memory, value-initialised, shared with children forked later.
template <class T>
class in_shm {
  static_assert(std::is_trivially_destructible_v<T>);

 public:
  in_shm() : mem_(sizeof(T)), p_(new (mem_.data()) T{}) {}
  T* operator->() const noexcept { return p_; }
  T& operator*() const noexcept { return *p_; }
  T* get() const noexcept { return p_; }

 private:
  shmkit::shared_memory mem_;
  T* p_;
};

// Polls until pred() holds; false after `limit` (a watchdog, never a timing assertion).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Waits until `flag` reaches at least `value`.
inline bool reaches(const std::atomic<int>& flag, int value,
                    std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  return eventually([&] { return flag.load() >= value; }, limit);
}

// A child's body that never returns (until it is killed).
[[noreturn]] inline void park_forever() {
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

// The children of one test: each is killed and reaped at the end of the scope unless it was
// already waited for, so a failing test leaves no process behind.
class children {
 public:
  children() = default;
  children(const children&) = delete;
  children& operator=(const children&) = delete;
  ~children() {
    for (pid_t p : pids_) kill_and_reap(p);
  }

  pid_t spawn(const std::function<void()>& fn) {
    pids_.push_back(shmkit::test::spawn(fn));
    return pids_.back();
  }
  // Waits for one child (watchdog: `limit`) and returns its outcome as wait_exit does.
  int wait(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(120)) {
    std::erase(pids_, pid);
    return wait_exit(pid, limit);
  }
  // Kills one child and reaps it.
  void kill(pid_t pid) {
    std::erase(pids_, pid);
    kill_and_reap(pid);
  }
  // Waits for all remaining children; true when each exited with 0.
  bool all_ok(std::chrono::milliseconds limit = std::chrono::seconds(120)) {
    std::vector<pid_t> ps;
    ps.swap(pids_);
    return wait_all_ok(ps, limit);
  }

 private:
  std::vector<pid_t> pids_;
};

}  // namespace shmkit::test
