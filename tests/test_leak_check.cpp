// SPDX-License-Identifier: MIT
// tests/leak_check.cmake, the check that runs after the suite, on a directory of its own
// (SHM_DIR) holding files named as tests name their objects: it reports and removes those of
// test processes that have ended, and leaves alone those of test processes still running
// (another suite on the same machine, from another build tree: removing its objects made its
// fresh children fail to open them by name, as test_manager_crash once did).
#define BOOST_TEST_MODULE leak check
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {

struct tmp_dir {
  fs::path path;
  tmp_dir() {
    std::string t = (fs::temp_directory_path() / "shmkit-leak-check-test-XXXXXX").string();
    BOOST_REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~tmp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void touch(const fs::path& p) { std::ofstream(p) << "x"; }

// The pid of a process that has ended (forked, exited, reaped).
pid_t ended_pid() {
  const pid_t c = ::fork();
  BOOST_REQUIRE(c >= 0);
  if (c == 0) std::_Exit(0);
  int status = 0;
  BOOST_REQUIRE(::waitpid(c, &status, 0) == c);
  return c;
}

struct outcome {
  int code;
  std::string output;
};

// Runs the leak check on `dir`.
outcome run_check(const fs::path& dir) {
  const fs::path out = dir.parent_path() / (dir.filename().string() + ".out");
  const std::string cmd = fmt::format("'{}' -DSHM_DIR='{}' -P '{}' >'{}' 2>&1", SHMKIT_CMAKE,
                                      dir.string(), SHMKIT_LEAK_CHECK, out.string());
  const int status = std::system(cmd.c_str());
  std::ifstream f(out);
  std::stringstream s;
  s << f.rdbuf();
  fs::remove(out);
  BOOST_TEST_MESSAGE(cmd << " -> " << status << "\n" << s.str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, s.str()};
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_CASE(objects_of_running_tests_are_left_alone) {
  const tmp_dir d;
  const fs::path mine = d.path / fmt::format("shmkit.test-{}-crash-0", ::getpid());
  const fs::path other = d.path / fmt::format("shmkit.test-{}-obj-3", ::getppid());
  touch(mine);
  touch(other);
  const outcome r = run_check(d.path);
  BOOST_TEST(r.code == 0);
  BOOST_TEST(fs::exists(mine));
  BOOST_TEST(fs::exists(other));
  BOOST_TEST(contains(r.output, "left alone: 2 object(s)"));
}

BOOST_AUTO_TEST_CASE(leftovers_of_ended_tests_are_reported_and_removed) {
  const tmp_dir d;
  const fs::path live = d.path / fmt::format("shmkit.test-{}-crash-0", ::getpid());
  const fs::path dead = d.path / fmt::format("shmkit.test-{}-queue-1", ended_pid());
  const fs::path unnamed = d.path / "shmkit.test-no-pid";  // not a test name: a leak too
  const fs::path foreign = d.path / "shmkit.user-thing";   // not a test object at all
  for (const auto& p : {live, dead, unnamed, foreign}) touch(p);
  const outcome r = run_check(d.path);
  BOOST_TEST(r.code != 0);
  BOOST_TEST(!fs::exists(dead));
  BOOST_TEST(!fs::exists(unnamed));
  BOOST_TEST(fs::exists(live));
  BOOST_TEST(fs::exists(foreign));
  BOOST_TEST(contains(r.output, dead.string()));
  BOOST_TEST(contains(r.output, unnamed.string()));
  BOOST_TEST(!contains(r.output, live.string()));
}

BOOST_AUTO_TEST_CASE(nothing_left_passes) {
  const tmp_dir d;
  const outcome r = run_check(d.path);
  BOOST_TEST(r.code == 0);
  BOOST_TEST(contains(r.output, "no shmkit test objects left"));
}
