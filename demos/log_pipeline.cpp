// SPDX-License-Identifier: MIT
// A log pipeline: two producer processes stream log lines (std::string, any length) into one
// queue; four analyser processes count them by level and report back. Each producer ends its
// stream; the parent then puts one sentinel per analyser, so every analyser stops after the
// last real line, as in the Python idiom of one None per worker.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <shmkit/queue.hpp>
#include <string>

namespace {

constexpr const char* levels[] = {"INFO", "WARN", "ERROR"};
const std::string sentinel;  // an empty line never occurs in the stream

struct report {
  int analyser;
  std::array<long, 3> by_level;
  long bytes;
};

}  // namespace

int main() {
  constexpr int producers = 2, analysers = 4, lines_each = 5000;

  //[log_pipeline
  shmkit::queue<std::string> lines(256);  // a line of 20 bytes or of 20 KiB: both go through
  shmkit::queue<report> reports(analysers);

  for (int p = 0; p < producers; ++p) {
    if (::fork() == 0) {
      for (int i = 0; i < lines_each; ++i) {
        std::string line = std::string(levels[i % 7 == 0   ? 2
                                              : i % 3 == 0 ? 1
                                                           : 0]) +
                           " producer=" + std::to_string(p) + " seq=" + std::to_string(i);
        if (i % 1000 == 999) line += " stack: " + std::string(20000, '.');  // a long one
        lines.put(line);
      }
      std::_Exit(0);
    }
  }
  for (int a = 0; a < analysers; ++a) {
    if (::fork() == 0) {
      report r{a, {}, 0};
      for (std::string line = lines.get(); line != sentinel; line = lines.get()) {
        for (int l = 0; l < 3; ++l)
          if (line.rfind(levels[l], 0) == 0) r.by_level[l]++;
        r.bytes += static_cast<long>(line.size());
      }
      reports.put(r);
      std::_Exit(0);
    }
  }
  for (int p = 0; p < producers; ++p) ::wait(nullptr);      // the producers are done...
  for (int a = 0; a < analysers; ++a) lines.put(sentinel);  // ...so stop each analyser
  //]

  std::array<long, 3> total{};
  long bytes = 0;
  for (int a = 0; a < analysers; ++a) {
    report r = reports.get();
    std::printf("analyser %d: %ld INFO, %ld WARN, %ld ERROR\n", r.analyser, r.by_level[0],
                r.by_level[1], r.by_level[2]);
    for (int l = 0; l < 3; ++l) total[l] += r.by_level[l];
    bytes += r.bytes;
  }
  while (::wait(nullptr) > 0) {
  }
  std::printf("total: %ld lines (%ld INFO, %ld WARN, %ld ERROR), %ld bytes\n",
              total[0] + total[1] + total[2], total[0], total[1], total[2], bytes);
  return total[0] + total[1] + total[2] == long(producers) * lines_each ? 0 : 1;
}
