// SPDX-License-Identifier: MIT
// What every shmkit test shares: names unique to the test process, an RAII remover, and
// children forked to play a part and reported back by exit code, each with a watchdog.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <csignal>
#include <vector>

#include <fmt/format.h>

#include "shmkit/naming.hpp"

namespace shmkit::test {

// "test-<pid>-<tag>-<n>": unique per test process, and recognised by the leak check that runs
// after the suite (tests/leak_check.cmake).
inline std::string unique_name(std::string_view tag = "obj") {
  static std::atomic<int> counter{0};
  return fmt::format("test-{}-{}-{}", ::getpid(), tag, counter.fetch_add(1));
}

// Removes a name when the scope ends, whatever happened in between.
struct name_guard {
  std::string name;
  explicit name_guard(std::string n) : name(std::move(n)) {}
  name_guard(const name_guard&) = delete;
  name_guard& operator=(const name_guard&) = delete;
  ~name_guard() {
    try {
      shmkit::remove(name);
    } catch (...) {
    }
  }
  operator const std::string&() const { return name; }
};

// Inside a child: a failed check prints and exits with code 3 (a Boost.Test assertion in a
// forked child would be lost with the child).
#define CHILD_CHECK(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "child %d: check failed: %s (%s:%d)\n", (int)::getpid(), #cond, \
                   __FILE__, __LINE__);                                                \
      std::_Exit(3);                                                                   \
    }                                                                                  \
  } while (0)

// Forks a child that runs fn and exits: 0 when fn returns, 1 when it throws (the message goes
// to stderr). The child never returns into the test framework.
inline pid_t spawn(const std::function<void()>& fn) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    int code = 0;
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: exception: %s\n", (int)::getpid(), e.what());
      code = 1;
    } catch (...) {
      code = 1;
    }
    std::fflush(nullptr);
    std::_Exit(code);
  }
  return pid;
}

// The outcome of a child: its exit status, -N after signal N, or -1000 when it did not end
// within the timeout (it is then killed and reaped).
inline int wait_exit(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return -WTERMSIG(status);
      return -999;
    }
    if (r < 0) return -998;
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      std::fprintf(stderr, "watchdog: child %d did not finish in time, killed\n", (int)pid);
      return -1000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Waits for all; returns true when every child exited with 0.
inline bool wait_all_ok(const std::vector<pid_t>& pids,
                        std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  bool ok = true;
  for (pid_t p : pids) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    int code = wait_exit(p, std::max(left, std::chrono::milliseconds(1)));
    if (code != 0) {
      std::fprintf(stderr, "child %d ended with %d\n", (int)p, code);
      ok = false;
    }
  }
  return ok;
}

// Kills and reaps a child (SIGKILL), ignoring one that already ended.
inline void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

}  // namespace shmkit::test
