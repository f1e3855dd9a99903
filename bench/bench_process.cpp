// SPDX-License-Identifier: MIT
// Process start+join of an empty callable: shmkit::process against raw fork()+waitpid() (the
// floor), posix_spawn of /bin/true + waitpid(), raw fork()+waitpid() plus a fresh anonymous
// segment per child (what a record per process would cost, the design shmkit avoids), and
// Python's multiprocessing.Process(...).start(); join() (fork start method) when python3 is here.
#include <cmath>
#include <cstdio>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.hpp"
#include "shmkit/detail/segment.hpp"
#include "shmkit/process.hpp"

extern char** environ;

using namespace shmkit::bench;

namespace {

void wait_for(pid_t pid) {
  int st;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

void shmkit_start_join() {
  shmkit::process p([] {});
  p.start();
  p.join();
}

void fork_waitpid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  wait_for(pid);
}

void fork_waitpid_fresh_segment() {
  namespace sd = shmkit::detail;
  sd::segment s = sd::segment::create_anonymous({sd::object_kind::internal}, 4096);
  s.publish();
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  wait_for(pid);
}

void spawn_true() {
  pid_t pid;
  char arg0[] = "true";
  char* argv[] = {arg0, nullptr};
  if (::posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) return;
  wait_for(pid);
}

double python_us(long n) {
  const std::string cmd = fmt::format("python3 {}/bench_process.py {} 2>/dev/null",
                                      SHMKIT_BENCH_DIR, n);
  std::FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return NAN;
  double v = NAN;
  if (std::fscanf(f, "%lf", &v) != 1) v = NAN;
  if (::pclose(f) != 0) v = NAN;
  return v;
}

}  // namespace

int main() {
  table t("process");
  const long n = scaled(3000);
  shmkit_start_join();  // the first start makes the record block: keep it out of the figures
  // One sample of each case per round, in a rotating order, and the median of each case's
  // samples: on a shared, loaded machine a burst of load then hits every case alike and the
  // median ignores it.
  using case_fn = void (*)();
  const case_fn cases[] = {shmkit_start_join, fork_waitpid, fork_waitpid_fresh_segment,
                           spawn_true};
  constexpr int count = sizeof cases / sizeof cases[0];
  std::vector<double> samples[count];
  for (long i = 0; i < n; ++i) {
    for (int k = 0; k < count; ++k) {
      const int c = static_cast<int>((i + k) % count);
      const auto t0 = clock::now();
      cases[c]();
      samples[c].push_back(seconds_since(t0) * 1e6);
    }
  }
  const double py = python_us(std::max(1L, n / 6));
  t.row("start+join, empty callable (median)", "us per process", better::lower,
        median(samples[0]),
        {{"fork()+waitpid()", median(samples[1])},
         {"fork()+waitpid()+fresh segment", median(samples[2])},
         {"posix_spawn(/bin/true)+waitpid()", median(samples[3])},
         {"python3 multiprocessing (fork)", py}});
}
