// SPDX-License-Identifier: MIT
// Processes, like Python's multiprocessing.Process: start a function in a child, join it, read
// its exit code, and learn in the parent which exception a failing child raised (the classic
// error-handling example, without the hand-made queue it used to need).
#include <shmkit/shmkit.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

// A worker that checks its input and fails on bad data, as real workers do. (Not static: this
// demo links with ENABLE_EXPORTS, so that a remote traceback names its functions.)
int parse_record(const std::string& record) {
  if (record.empty()) throw std::invalid_argument("empty record");
  return static_cast<int>(std::stoi(record));  // "abc" throws std::invalid_argument too
}

int main() {
  std::printf("parent %d runs on %d CPUs\n", ::getpid(), shmkit::cpu_count());

  //[process_basics
  shmkit::process p([](const std::string& who) { std::printf("hello, %s\n", who.c_str()); },
                    std::string("world"));  // fn and args are copied now, run at start()
  p.start();
  p.join();
  std::printf("%s (pid %d) ended with exit code %d\n", p.name().c_str(), p.pid(), *p.exitcode());

  shmkit::process q([] { return 3; });  // a callable returning int sets the exit code
  q.start();
  q.join();
  std::printf("%s ended with exit code %d\n", q.name().c_str(), *q.exitcode());
  //]

  //[process_errors
  const std::vector<std::string> records = {"17", "", "forty-two"};
  std::vector<shmkit::process> workers;
  for (const std::string& r : records) {
    workers.emplace_back(
        [](const std::string& rec) { std::printf("parsed %d\n", parse_record(rec)); }, r);
    workers.back().start();
  }
  for (std::size_t i = 0; i < workers.size(); ++i) {
    workers[i].join();
    try {
      workers[i].rethrow_if_failed();
      std::printf("record '%s': ok (exit code %d)\n", records[i].c_str(), *workers[i].exitcode());
    } catch (const shmkit::remote_error& e) {
      std::printf("record '%s': child %d failed (exit code %d) with %s: %s\n",
                  records[i].c_str(), e.pid(), *workers[i].exitcode(), e.type_name().c_str(),
                  e.what());
      std::printf("%s", e.traceback().c_str());  // where it was thrown, in the child
    }
  }
  //]

  // A child that will never end on its own: stop it.
  shmkit::process sleeper([] {
    for (;;) ::pause();
  });
  sleeper.start();
  sleeper.terminate();
  sleeper.join();
  std::printf("%s was terminated: exit code %d (-SIGTERM)\n", sleeper.name().c_str(),
              *sleeper.exitcode());
}
