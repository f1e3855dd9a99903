// SPDX-License-Identifier: MIT
// shmkit::process and cpu_count(): exit codes, remote exceptions, waiting with and without a
// timeout, signals, daemons, the destructor, reaping at scale, and the affinity mask.
#define BOOST_TEST_MODULE test_process
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <iostream>
#include <memory>
#include <sched.h>
#include <set>
#include <signal.h>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "shmkit/detail/identity.hpp"
#include "shmkit/error.hpp"
#include "shmkit/process.hpp"
#include "support.hpp"

namespace utf = boost::unit_test;
using namespace std::chrono_literals;
using shmkit::process;
using shmkit::test::spawn;
using shmkit::test::wait_exit;

namespace user_space {
struct parse_failure : std::exception {
  const char* what() const noexcept override { return "line 7: unexpected token"; }
};
struct not_an_exception {
  int code;
};
}  // namespace user_space

// Named, exported functions (the test program links with ENABLE_EXPORTS) for the traceback
// tests: dladdr names them in a child's traceback.
extern "C" [[gnu::noinline]] void shmkit_test_throw_deep(int depth) {
  if (depth > 0) {
    shmkit_test_throw_deep(depth - 1);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // no tail call: keep every frame
    return;
  }
  throw std::runtime_error("deep");
}
extern "C" [[gnu::noinline]] void shmkit_test_throw_other() {
  throw std::logic_error("other");
}

// How many times `what` occurs in `text`.
static int occurrences(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

namespace {

// A page of anonymous shared memory, seen by every child forked after it.
template <class T>
struct shared {
  T* p;
  shared() : p(new (map()) T{}) {}
  ~shared() { ::munmap(p, 4096); }
  T* operator->() const { return p; }
  T& operator*() const { return *p; }
  static void* map() {
    static_assert(sizeof(T) <= 4096);
    void* m = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("mmap failed");
    return m;
  }
};

// A pipe whose ends close with the scope.
struct test_pipe {
  int fd[2] = {-1, -1};
  test_pipe() {
    if (::pipe2(fd, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  }
  ~test_pipe() { close_both(); }
  void close_write() {
    if (fd[1] >= 0) ::close(fd[1]);
    fd[1] = -1;
  }
  void close_both() {
    for (int& f : fd)
      if (f >= 0) ::close(f), f = -1;
  }
  // Blocks until one byte or EOF; true for a byte.
  bool read_byte() const {
    char c;
    ssize_t n;
    do n = ::read(fd[0], &c, 1);
    while (n < 0 && errno == EINTR);
    return n == 1;
  }
  void write_byte() const {
    char c = 'x';
    while (::write(fd[1], &c, 1) < 0 && errno == EINTR) {
    }
  }
};

int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

// Names in /dev/shm that start with `prefix`.
std::vector<std::string> shm_entries_with(std::string_view prefix) {
  std::vector<std::string> found;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d))
      if (std::string_view(e->d_name).starts_with(prefix)) found.emplace_back(e->d_name);
    ::closedir(d);
  }
  return found;
}

// Children of this process that are zombies (state Z in /proc/<pid>/stat).
std::vector<int> zombie_children() {
  std::vector<int> z;
  const pid_t self = ::getpid();
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return z;
  while (dirent* e = ::readdir(d)) {
    const int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    char path[64], buf[512];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    std::FILE* f = std::fopen(path, "r");
    if (f == nullptr) continue;
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char* r = std::strrchr(buf, ')');
    char state = 0;
    int ppid = 0;
    if (r != nullptr && std::sscanf(r + 1, " %c %d", &state, &ppid) == 2 && ppid == self &&
        state == 'Z')
      z.push_back(pid);
  }
  ::closedir(d);
  return z;
}

// Starts a child that reports through a pipe and then blocks in pause(); returns once the
// report arrived, so the child is at (or about to enter) the system call.
process start_paused(bool daemon = false) {
  test_pipe ready;
  process p([&ready] {
    ready.write_byte();
    for (;;) ::pause();
  });
  p.daemon(daemon);
  p.start();
  BOOST_REQUIRE(ready.read_byte());
  return p;
}

// Makes this test process the reaper of orphaned descendants for the scope, so that a child
// of a killed child is reparented here and can be waited for.
struct subreaper_scope {
  subreaper_scope() { BOOST_REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }
  ~subreaper_scope() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
};

// Runs body in a forked helper whose stdout is a pipe; returns all it wrote there.
std::string stdout_of(const std::function<void()>& body) {
  test_pipe out;
  pid_t helper = spawn([&] {
    CHILD_CHECK(::dup2(out.fd[1], STDOUT_FILENO) == STDOUT_FILENO);
    out.close_both();
    body();
  });
  out.close_write();
  std::string got;
  char c;
  while (::read(out.fd[0], &c, 1) == 1) got += c;
  BOOST_TEST(wait_exit(helper) == 0);
  return got;
}

// The exit code, or -1000 while there is none (BOOST_TEST cannot print an optional).
int code_of(process& p) { return p.exitcode().value_or(-1000); }

// Runs fn, expecting a remote_error; returns it.
template <class F>
shmkit::remote_error expect_remote(F&& fn) {
  try {
    fn();
  } catch (const shmkit::remote_error& e) {
    return e;
  }
  BOOST_FAIL("no shmkit::remote_error was thrown");
  throw std::logic_error("unreachable");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(exit_codes, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(returning_gives_zero) {
  process p([] {});
  BOOST_TEST(!p.exitcode().has_value());  // not started
  BOOST_TEST(p.pid() == 0);
  p.start();
  BOOST_TEST(p.pid() > 0);
  p.join();
  BOOST_TEST(code_of(p) == 0);
  BOOST_TEST(!p.is_alive());
  BOOST_CHECK_NO_THROW(p.rethrow_if_failed());
}

BOOST_AUTO_TEST_CASE(int_result_is_the_exit_code) {
  process p([] { return 3; });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 3);
  BOOST_CHECK_NO_THROW(p.rethrow_if_failed());
}

BOOST_AUTO_TEST_CASE(non_int_result_is_ignored) {
  process p([] { return 3L; });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 0);
}

BOOST_AUTO_TEST_CASE(exit_inside_callable) {
  process p([] { std::_Exit(5); });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 5);
  BOOST_CHECK_NO_THROW(p.rethrow_if_failed());  // no exception escaped
}

BOOST_AUTO_TEST_CASE(killed_by_signal_is_negative) {
  process p([] { ::raise(SIGKILL); });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == -9);
  BOOST_CHECK_NO_THROW(p.rethrow_if_failed());
}

BOOST_AUTO_TEST_CASE(arguments_are_copied_at_construction) {
  shared<std::array<char, 64>> out;
  std::string word = "before";
  auto task = [&out](std::string w, std::unique_ptr<int> n) {
    std::snprintf(out->data(), out->size(), "%s %d", w.c_str(), *n);
  };
  process p(task, word, std::make_unique<int>(42));
  word = "after";
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 0);
  BOOST_TEST(std::string(out->data()) == "before 42");
}

BOOST_AUTO_TEST_CASE(reference_arguments_through_std_ref) {
  shared<std::atomic<int>> seen;
  int value = 7;
  process p([&seen](int& v) { seen->store(v); }, std::ref(value));
  value = 8;  // std::ref: the child reads the variable at start(), not at construction
  p.start();
  p.join();
  BOOST_TEST(seen->load() == 8);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(remote_exceptions, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(runtime_error_comes_back) {
  process p([] { throw std::runtime_error("disk on fire"); });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 1);
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  BOOST_TEST(e.type_name() == "std::runtime_error");
  BOOST_TEST(std::string(e.what()) == "disk on fire");
  BOOST_TEST(e.pid() == p.pid());
  BOOST_TEST(e.traceback().rfind("Traceback of the throw", 0) == 0, e.traceback());
  // It stays reported.
  BOOST_CHECK_THROW(p.rethrow_if_failed(), shmkit::remote_error);
  BOOST_CHECK_THROW(p.rethrow_if_failed(), shmkit::error);
}

BOOST_AUTO_TEST_CASE(out_of_range_comes_back) {
  process p([] {
    std::vector<int> v(3);
    return v.at(10);
  });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 1);
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  BOOST_TEST(e.type_name() == "std::out_of_range");
  BOOST_TEST(std::string(e.what()).find("vector") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(traceback_runs_from_the_throw_site) {
  process p([] { shmkit_test_throw_deep(3); });
  p.start();
  p.join();
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  const std::string& t = e.traceback();
  BOOST_TEST_MESSAGE(t);
  // The throw site first, then the three recursive calls, each named (the throw site itself
  // may sit in the function's unnamed .cold part); the frames of the parent's stack before
  // fork() (this test, Boost.Test, main) are not part of it.
  const std::size_t first = t.find("  #0 ");
  BOOST_REQUIRE_MESSAGE(first != std::string::npos, t);
  BOOST_TEST(t.substr(first, t.find('\n', first) - first).find("test_process") !=
                 std::string::npos,
             t);
  BOOST_TEST(occurrences(t, "shmkit_test_throw_deep") >= 3, t);
  BOOST_TEST(t.find("unit_test_main") == std::string::npos, t);
}

BOOST_AUTO_TEST_CASE(traceback_of_a_library_throw_names_the_library) {
  process p([] {
    std::vector<int> v(3);
    return v.at(10);
  });
  p.start();
  p.join();
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  // The throw happens inside libstdc++: its own throws are traced too.
  const std::string& t = e.traceback();
  BOOST_TEST(t.find("  #0 ") != std::string::npos, t);
  BOOST_TEST(t.find("libstdc++") < t.find("  #1 "), t);
}

BOOST_AUTO_TEST_CASE(traceback_is_of_the_exception_that_escaped) {
  // One exception thrown and caught inside the child, then another escapes: the trace is the
  // second's. A rethrow (`throw;`) keeps the trace of the original throw.
  process caught_then_other([] {
    try {
      shmkit_test_throw_deep(1);
    } catch (const std::exception&) {
    }
    shmkit_test_throw_other();
  });
  process rethrown([] {
    try {
      shmkit_test_throw_deep(1);
    } catch (...) {
      try {
        shmkit_test_throw_other();
      } catch (...) {
      }
      throw;
    }
  });
  caught_then_other.start();
  rethrown.start();
  caught_then_other.join();
  rethrown.join();
  auto a = expect_remote([&] { caught_then_other.rethrow_if_failed(); });
  BOOST_TEST(a.type_name() == "std::logic_error");
  BOOST_TEST(a.traceback().find("shmkit_test_throw_other") != std::string::npos, a.traceback());
  BOOST_TEST(a.traceback().find("shmkit_test_throw_deep") == std::string::npos, a.traceback());
  auto b = expect_remote([&] { rethrown.rethrow_if_failed(); });
  BOOST_TEST(b.type_name() == "std::runtime_error");
  BOOST_TEST(occurrences(b.traceback(), "shmkit_test_throw_deep") >= 1, b.traceback());
  BOOST_TEST(b.traceback().find("shmkit_test_throw_other") == std::string::npos, b.traceback());
}

// Messages longer than the child's record (a few KiB) come back whole, through an object of
// their own that the parent removes; a child killed while it writes one leaves nothing.
BOOST_AUTO_TEST_CASE(long_messages_come_back_whole) {
  for (std::size_t n : {std::size_t(3000), std::size_t(5000), std::size_t(100000),
                        std::size_t(1) << 20}) {
    std::string text(n, 'x');
    for (std::size_t i = 0; i < n; i += 97) text[i] = static_cast<char>('a' + (i / 97) % 26);
    process p([&text] { throw std::runtime_error(text); });
    p.start();
    p.join();
    auto e = expect_remote([&] { p.rethrow_if_failed(); });
    BOOST_TEST(std::string(e.what()) == text, "length " << n);
  }
  BOOST_TEST(shm_entries_with("shmkit.process-message-").empty());
}

BOOST_AUTO_TEST_CASE(user_exception_comes_back) {
  process p([] { throw user_space::parse_failure(); });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 1);
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  BOOST_TEST(e.type_name() == "user_space::parse_failure");
  BOOST_TEST(std::string(e.what()) == "line 7: unexpected token");
}

BOOST_AUTO_TEST_CASE(thrown_int_is_reported) {
  process p([] { throw 42; });
  p.start();
  p.join();
  BOOST_TEST(code_of(p) == 1);
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  BOOST_TEST(e.type_name() == "int");
  BOOST_TEST(std::string(e.what()).find("42") != std::string::npos);
  BOOST_TEST(std::string(e.what()).find("not derived from std::exception") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(thrown_string_and_class_are_reported) {
  process s([] { throw "plain text"; });
  process c([] { throw user_space::not_an_exception{9}; });
  s.start();
  c.start();
  s.join();
  c.join();
  auto es = expect_remote([&] { s.rethrow_if_failed(); });
  BOOST_TEST(es.type_name() == "char const*");
  BOOST_TEST(std::string(es.what()).find("plain text") != std::string::npos);
  auto ec = expect_remote([&] { c.rethrow_if_failed(); });
  BOOST_TEST(ec.type_name() == "user_space::not_an_exception");
  BOOST_TEST(std::string(ec.what()).find("not derived from std::exception") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(killed_child_reports_no_exception) {
  process p = start_paused();
  p.kill();
  p.join();
  BOOST_TEST(code_of(p) == -9);
  BOOST_CHECK_NO_THROW(p.rethrow_if_failed());
}

// More children alive at once than one block of records holds, each failing with its own
// message: every message reaches its own process.
BOOST_AUTO_TEST_CASE(many_alive_at_once_keep_their_own_records) {
  test_pipe gate;
  std::vector<process> ps;
  for (int i = 0; i < 150; ++i) {
    ps.emplace_back([&gate](int k) {
      gate.close_write();  // our copy of the write end: EOF comes when the parent closes its
      gate.read_byte();    // all alive together until the gate closes
      if (k % 3 == 0) throw std::invalid_argument(fmt::format("child {}", k));
      return k % 3;
    }, i);
    ps.back().start();
  }
  gate.close_write();  // EOF for every child
  for (int i = 0; i < 150; ++i) {
    ps[i].join();
    if (i % 3 == 0) {
      BOOST_TEST(code_of(ps[i]) == 1);
      auto e = expect_remote([&] { ps[i].rethrow_if_failed(); });
      BOOST_TEST(e.type_name() == "std::invalid_argument");
      BOOST_TEST(std::string(e.what()) == fmt::format("child {}", i));
    } else {
      BOOST_TEST(code_of(ps[i]) == i % 3);
      BOOST_CHECK_NO_THROW(ps[i].rethrow_if_failed());
    }
  }
}

// GCC 12's AddressSanitizer runtime is not fork-safe: its allocator takes no locks around
// fork(), so a child forked while another thread is inside it deadlocks at its first
// allocation (its exception's, anybody's). glibc's malloc and loader are fork-safe, so the
// test below runs in every build but that one.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool fork_safe_allocator = false;
#else
constexpr bool fork_safe_allocator = true;
#endif

// Threads starting processes at once claim distinct records. (Daemons: should a child ever
// hang, it dies with this test program instead of holding ctest's output pipe open.)
BOOST_AUTO_TEST_CASE(threads_start_concurrently, *utf::enable_if<fork_safe_allocator>()) {
  std::atomic<int> wrong{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([t, &wrong] {
      for (int i = 0; i < 15; ++i) {
        const std::string msg = fmt::format("thread {} task {}", t, i);
        process p([msg] { throw std::runtime_error(msg); });
        p.daemon(true);
        p.start();
        p.join();
        try {
          p.rethrow_if_failed();
          ++wrong;
        } catch (const shmkit::remote_error& e) {
          if (e.what() != msg) ++wrong;
        }
      }
    });
  for (auto& t : ts) t.join();
  BOOST_TEST(wrong.load() == 0);
}

// A child that starts processes of its own gets their exceptions, and its own exception
// still reaches its parent.
BOOST_AUTO_TEST_CASE(grandchildren) {
  process p([] {
    process inner([] { throw std::domain_error("from the grandchild"); });
    inner.start();
    inner.join();
    try {
      inner.rethrow_if_failed();
    } catch (const shmkit::remote_error& e) {
      throw std::runtime_error(fmt::format("child saw {}: {}", e.type_name(), e.what()));
    }
  });
  p.start();
  p.join();
  auto e = expect_remote([&] { p.rethrow_if_failed(); });
  BOOST_TEST(std::string(e.what()) == "child saw std::domain_error: from the grandchild");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(waiting, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(join_for_times_out_then_join_works) {
  for (bool pidfd : {true, false}) {
    shmkit::detail::set_pidfd_enabled(pidfd);
    test_pipe gate;
    process p([&] { gate.read_byte(); });
    p.start();
    // The child cannot end before the gate opens.
    BOOST_TEST(!p.join_for(50ms));
    BOOST_TEST(p.is_alive());
    BOOST_TEST(!p.exitcode().has_value());
    BOOST_CHECK_THROW(p.rethrow_if_failed(), std::logic_error);
    gate.write_byte();
    p.join();
    BOOST_TEST(code_of(p) == 0);
    BOOST_TEST(!p.is_alive());
  }
  shmkit::detail::set_pidfd_enabled(true);
}

BOOST_AUTO_TEST_CASE(join_for_sees_the_end) {
  for (bool pidfd : {true, false}) {
    shmkit::detail::set_pidfd_enabled(pidfd);
    test_pipe gate;
    process p([&] {
      gate.read_byte();
      return 4;
    });
    p.start();
    BOOST_TEST(!p.join_for(1ms));
    gate.write_byte();
    BOOST_TEST(p.join_for(60s));
    BOOST_TEST(code_of(p) == 4);
    BOOST_TEST(p.join_for(0s));  // already reaped
  }
  shmkit::detail::set_pidfd_enabled(true);
}

BOOST_AUTO_TEST_CASE(terminate_ends_a_child_in_pause) {
  process p = start_paused();
  BOOST_TEST(p.is_alive());
  p.terminate();
  BOOST_TEST(p.join_for(60s));
  BOOST_TEST(code_of(p) == -SIGTERM);
  BOOST_CHECK_NO_THROW(p.terminate());  // reaped: nothing to do
  BOOST_CHECK_NO_THROW(p.kill());
}

BOOST_AUTO_TEST_CASE(kill_ends_a_child_in_read) {
  test_pipe ready, never;
  process p([&] {
    ready.write_byte();
    never.read_byte();
  });
  p.start();
  BOOST_TEST(ready.read_byte());
  p.kill();
  p.join();
  BOOST_TEST(code_of(p) == -SIGKILL);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(lifetime, *utf::timeout(120))

BOOST_AUTO_TEST_CASE(calls_out_of_order_throw) {
  process p([] {});
  BOOST_CHECK_THROW(p.join(), std::logic_error);
  BOOST_CHECK_THROW(p.join_for(1ms), std::logic_error);
  BOOST_CHECK_THROW(p.terminate(), std::logic_error);
  BOOST_CHECK_THROW(p.kill(), std::logic_error);
  BOOST_CHECK_THROW(p.rethrow_if_failed(), std::logic_error);
  BOOST_TEST(!p.is_alive());
  p.daemon(true);
  p.daemon(false);
  p.start();
  BOOST_CHECK_THROW(p.start(), std::logic_error);
  BOOST_CHECK_THROW(p.daemon(true), std::logic_error);
  p.join();
  BOOST_CHECK_THROW(p.start(), std::logic_error);

  process empty;
  BOOST_CHECK_THROW(empty.start(), std::logic_error);
}

BOOST_AUTO_TEST_CASE(names) {
  process a([] {}), b([] {});
  BOOST_TEST(a.name().rfind("process-", 0) == 0u);
  const int na = std::stoi(a.name().substr(8)), nb = std::stoi(b.name().substr(8));
  BOOST_TEST(nb == na + 1);
  a.name("worker");
  BOOST_TEST(a.name() == "worker");
  a.start();
  BOOST_CHECK_EXCEPTION(a.start(), std::logic_error, [](const std::logic_error& e) {
    return std::string(e.what()).find("'worker'") != std::string::npos;
  });
  a.join();
}

BOOST_AUTO_TEST_CASE(destructor_joins) {
  shared<std::atomic<int>> done;
  pid_t pid = 0;
  {
    process p([&] {
      std::this_thread::sleep_for(200ms);
      done->store(1);
    });
    p.start();
    pid = p.pid();
  }  // waits here
  BOOST_TEST(done->load() == 1);
  int st;
  const pid_t r = ::waitpid(pid, &st, WNOHANG);
  const int e = errno;
  BOOST_TEST(r == -1);  // already reaped by the destructor
  BOOST_TEST(e == ECHILD);
}

BOOST_AUTO_TEST_CASE(parent_exception_leaves_no_zombie) {
  shared<std::atomic<int>> done;
  try {
    process p([&] {
      std::this_thread::sleep_for(100ms);
      done->store(1);
    });
    p.start();
    throw std::runtime_error("parent gives up");
  } catch (const std::runtime_error&) {
  }
  BOOST_TEST(done->load() == 1);  // unwinding joined the child
  BOOST_TEST(zombie_children().empty());
}

BOOST_AUTO_TEST_CASE(destructor_kills_a_daemon) {
  pid_t pid = 0;
  {
    process p = start_paused(true);
    BOOST_TEST(p.daemon());
    pid = p.pid();
  }  // kills and reaps
  int st;
  const pid_t r = ::waitpid(pid, &st, WNOHANG);
  const int e = errno;
  BOOST_TEST(r == -1);
  BOOST_TEST(e == ECHILD);
  BOOST_TEST(zombie_children().empty());
}

BOOST_AUTO_TEST_CASE(moves) {
  process a([] { return 6; });
  process b(std::move(a));
  BOOST_CHECK_THROW(a.start(), std::logic_error);  // moved from: empty
  b.start();
  process c;
  c = std::move(b);
  BOOST_TEST(c.pid() > 0);
  BOOST_TEST(b.pid() == 0);
  c.join();
  BOOST_TEST(code_of(c) == 6);

  // Assigning over a running process settles it first (joins it).
  shared<std::atomic<int>> done;
  process d([&] {
    std::this_thread::sleep_for(100ms);
    done->store(1);
  });
  d.start();
  d = process([] {});
  BOOST_TEST(done->load() == 1);
  BOOST_TEST(zombie_children().empty());
}

// An intermediate parent starts a daemon child and is then killed with SIGKILL: the daemon
// dies too. This test process becomes a child subreaper for the duration, so the orphaned
// daemon is reparented here and its end can be observed and reaped.
BOOST_AUTO_TEST_CASE(daemon_dies_with_a_killed_parent) {
  subreaper_scope reaper;
  struct cell {
    std::atomic<int> daemon_pid{0};
    std::atomic<std::uint64_t> identity{0};
  };
  shared<cell> c;
  pid_t middle = spawn([&] {
    process d([&] {
      c->identity.store(shmkit::detail::process_identity());
      c->daemon_pid.store(::getpid());
      for (;;) ::pause();
    });
    d.daemon(true);
    d.start();
    for (;;) ::pause();
  });
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (c->daemon_pid.load() == 0 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(1ms);
  const pid_t daemon = c->daemon_pid.load();
  BOOST_REQUIRE(daemon > 0);
  BOOST_TEST(shmkit::detail::identity_alive(c->identity.load()));
  ::kill(middle, SIGKILL);
  BOOST_TEST(wait_exit(middle) == -SIGKILL);
  // The daemon is reparented to us and must end by SIGKILL (the watchdog gives up after 30 s).
  BOOST_TEST(wait_exit(daemon, 30s) == -SIGKILL);
  BOOST_TEST(!shmkit::detail::identity_alive(c->identity.load()));
}

// A non-daemon child outlives a parent killed with SIGKILL (as in Python).
BOOST_AUTO_TEST_CASE(non_daemon_survives_a_killed_parent) {
  subreaper_scope reaper;
  shared<std::atomic<int>> child_pid;
  test_pipe gate;
  pid_t middle = spawn([&] {
    process d([&] {
      child_pid->store(::getpid());
      gate.read_byte();
      return 7;
    });
    d.start();
    for (;;) ::pause();
  });
  while (child_pid->load() == 0) std::this_thread::sleep_for(1ms);
  ::kill(middle, SIGKILL);
  BOOST_TEST(wait_exit(middle) == -SIGKILL);
  gate.write_byte();
  BOOST_TEST(wait_exit(child_pid->load(), 60s) == 7);
}

BOOST_AUTO_TEST_CASE(stdio_is_flushed_not_duplicated) {
  const std::string got = stdout_of([] {
    static char buf[4096];
    std::setvbuf(stdout, buf, _IOFBF, sizeof buf);
    std::printf("A");  // still buffered at start()
    process p([] { std::printf("B"); });  // buffered in the child, flushed before _exit
    p.start();
    p.join();
    std::printf("C");
    std::fflush(stdout);
  });
  BOOST_TEST(got == "ABC");
}

// With sync_with_stdio(false) std::cout buffers apart from stdio: both sides flush it too.
BOOST_AUTO_TEST_CASE(iostreams_apart_from_stdio_are_flushed) {
  const std::string got = stdout_of([] {
    std::ios::sync_with_stdio(false);
    std::cout << "A";  // in cout's own buffer at start()
    process p([] { std::cout << "B"; });
    p.start();
    p.join();
    std::cout << "C" << std::flush;
  });
  BOOST_TEST(got == "ABC");
}

BOOST_AUTO_TEST_CASE(child_runs_no_atexit_handlers) {
  static shared<std::atomic<int>> ran;
  pid_t helper = spawn([&] {
    std::atexit([] { ran->fetch_add(1); });
    process p([] {});
    p.start();
    p.join();
    CHILD_CHECK(code_of(p) == 0);
    CHILD_CHECK(ran->load() == 0);
  });
  BOOST_TEST(wait_exit(helper) == 0);  // spawn() leaves with _Exit: no handler there either
  BOOST_TEST(ran->load() == 0);
}

BOOST_AUTO_TEST_CASE(status_taken_elsewhere_is_an_error) {
  pid_t helper = spawn([] {
    ::signal(SIGCHLD, SIG_IGN);  // the kernel reaps children itself
    process p([] {});
    p.start();
    bool threw = false;
    try {
      p.join();
    } catch (const shmkit::error& e) {
      threw = std::string(e.what()).find("taken by someone else") != std::string::npos;
    }
    CHILD_CHECK(threw);
    bool exitcode_threw = false;
    try {
      (void)p.exitcode();
    } catch (const shmkit::error&) {
      exitcode_threw = true;
    }
    CHILD_CHECK(exitcode_threw);
  });
  BOOST_TEST(wait_exit(helper) == 0);
}

BOOST_AUTO_TEST_CASE(two_hundred_leave_no_zombie_and_no_descriptor) {
  // One start first, so that the lazily made record block is not counted as a leak.
  process warm([] {});
  warm.start();
  warm.join();
  const int fds_before = open_fds();
  for (int i = 0; i < 200; ++i) {
    process p([i] {
      if (i % 7 == 0) throw std::runtime_error("x");
      return i % 5;
    });
    p.start();
    if (i % 2 == 0) {
      p.join();
    } else {
      BOOST_TEST(p.join_for(60s));  // the pidfd path
    }
    BOOST_TEST(code_of(p) == (i % 7 == 0 ? 1 : i % 5));
  }
  BOOST_TEST(open_fds() == fds_before);
  BOOST_TEST(zombie_children().empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cpus, *utf::timeout(60))

BOOST_AUTO_TEST_CASE(cpu_count_matches_the_mask) {
  cpu_set_t set;
  CPU_ZERO(&set);
  BOOST_REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  BOOST_TEST(shmkit::cpu_count() == CPU_COUNT(&set));

  int first = 0;
  while (!CPU_ISSET(first, &set)) ++first;
  pid_t c = spawn([first] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    CHILD_CHECK(::sched_setaffinity(0, sizeof one, &one) == 0);
    CHILD_CHECK(shmkit::cpu_count() == 1);
  });
  BOOST_TEST(wait_exit(c) == 0);
}

BOOST_AUTO_TEST_SUITE_END()
