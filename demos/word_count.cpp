// SPDX-License-Identifier: MIT
// Word count: worker processes split a text between them and count its words into one
// shared_dict with update(), an atomic read-modify-write, so no count is ever lost. The
// parent then prints the most frequent words.
#include <shmkit/shmkit.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>
#include <vector>

namespace {

const char* const text[] = {
    "It was the best of times, it was the worst of times,",
    "it was the age of wisdom, it was the age of foolishness,",
    "it was the epoch of belief, it was the epoch of incredulity,",
    "it was the season of Light, it was the season of Darkness,",
    "it was the spring of hope, it was the winter of despair,",
    "we had everything before us, we had nothing before us,",
    "we were all going direct to Heaven, we were all going direct the other way",
};

std::vector<std::string> words_of(const std::string& line) {
  std::vector<std::string> out;
  std::string w;
  for (char c : line + " ") {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!w.empty()) {
      out.push_back(w);
      w.clear();
    }
  }
  return out;
}

}  // namespace

int main() {
  constexpr int workers = 3;
  //[word_count
  shmkit::manager mgr;
  auto counts = mgr.dict<std::string, int>("word counts");

  std::vector<shmkit::process> procs;
  for (int w = 0; w < workers; ++w)
    procs.emplace_back([&counts, w] {  // worker w takes every workers-th line
      for (std::size_t i = static_cast<std::size_t>(w); i < std::size(text); i += workers)
        for (const std::string& word : words_of(text[i]))
          counts.update(word, [](int& n) { ++n; });  // atomic, inserts 0 first if absent
    });
  for (auto& p : procs) p.start();
  for (auto& p : procs) p.join();

  auto items = counts.items();  // a snapshot, as a std::vector of pairs
  std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::printf("%zu distinct words; the most frequent:\n", items.size());
  for (std::size_t i = 0; i < 8 && i < items.size(); ++i)
    std::printf("  %-8s %d\n", items[i].first.c_str(), items[i].second);
  //]
  int total = 0;
  for (const auto& [w, n] : items) total += n;
  int expected = 0;
  for (const char* line : text) expected += static_cast<int>(words_of(line).size());
  std::printf("%d words counted, %d in the text\n", total, expected);
  return total == expected ? 0 : 1;
}
