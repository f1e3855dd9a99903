// SPDX-License-Identifier: MIT
// shmkit::with_progress(range): iterate a range (typically pool.imap or imap_unordered) while a
// progress bar with the rate and the time left is drawn on stderr, like tqdm.
//
// On a terminal the bar is redrawn in place at most ten times a second; otherwise (a log file,
// CI) a plain line is written every few seconds and once at the end. The total comes from the
// range's size() when it has one. Not thread-safe: one thread iterates.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <iterator>
#include <optional>
#include <ranges>
#include <string>
#include <unistd.h>
#include <utility>

#include <fmt/format.h>

namespace shmkit {

namespace detail {

class progress_printer {
 public:
  progress_printer(std::optional<std::size_t> total, std::string label)
      : total_(total), label_(std::move(label)), tty_(::isatty(STDERR_FILENO) == 1),
        start_(clock::now()), last_(start_) {}

  void tick() {
    ++done_;
    const auto now = clock::now();
    const auto gap = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
    if (now - last_ >= gap) {
      last_ = now;
      draw(false);
    }
  }
  void finish() {
    if (finished_) return;
    finished_ = true;
    draw(true);
  }

 private:
  using clock = std::chrono::steady_clock;
  static std::string hms(double s) {
    if (s < 0 || s != s || s > 360000) return "--:--";
    const long t = static_cast<long>(s + 0.5);
    return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                     : fmt::format("{:02}:{:02}", t / 60, t % 60);
  }
  void draw(bool last) {
    const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0;
    std::string line = label_.empty() ? std::string() : label_ + ": ";
    if (total_ && *total_ > 0) {
      const double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(*total_));
      constexpr int width = 30;
      const int fill = static_cast<int>(frac * width);
      const double left = rate > 0 ? static_cast<double>(*total_ - std::min(done_, *total_)) / rate : -1;
      line += fmt::format("{:3.0f}% [{}{}] {}/{} {:.1f}/s elapsed {} left {}", frac * 100,
                          std::string(fill, '#'), std::string(width - fill, '.'), done_, *total_,
                          rate, hms(elapsed), hms(left));
    } else {
      line += fmt::format("{} done {:.1f}/s elapsed {}", done_, rate, hms(elapsed));
    }
    if (tty_)
      std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), last ? "\n" : "");
    else
      std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }

  std::optional<std::size_t> total_;
  std::string label_;
  bool tty_;
  clock::time_point start_, last_;
  std::size_t done_ = 0;
  bool finished_ = false;
};

}  // namespace detail

template <std::ranges::input_range Range>
class progress_view {
 public:
  progress_view(Range&& r, std::string label)
      : r_(std::forward<Range>(r)), printer_(total_of(r_), std::move(label)) {}

  class iterator {
   public:
    using inner = std::ranges::iterator_t<std::remove_reference_t<Range>>;
    using value_type = std::iter_value_t<inner>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    iterator(inner it, detail::progress_printer* p) : it_(std::move(it)), p_(p) {}
    decltype(auto) operator*() const { return *it_; }
    iterator& operator++() {
      ++it_;
      p_->tick();
      return *this;
    }
    void operator++(int) { ++*this; }
    template <class Sentinel>
    friend bool operator==(const iterator& a, const Sentinel& s) {
      const bool end = a.it_ == s.s;
      if (end) a.p_->finish();
      return end;
    }

   private:
    mutable inner it_;
    detail::progress_printer* p_ = nullptr;
  };
  struct sentinel {
    std::ranges::sentinel_t<std::remove_reference_t<Range>> s;
  };

  iterator begin() { return iterator(std::ranges::begin(r_), &printer_); }
  sentinel end() { return sentinel{std::ranges::end(r_)}; }

 private:
  template <class R>
  static std::optional<std::size_t> total_of(R& r) {
    if constexpr (requires { r.size(); })
      return static_cast<std::size_t>(r.size());
    else
      return std::nullopt;
  }
  Range r_;
  detail::progress_printer printer_;
};

// Wraps a range so that iterating it draws progress on stderr. The range is moved in (or held
// by reference when an lvalue is passed).
template <std::ranges::input_range Range>
progress_view<Range> with_progress(Range&& r, std::string label = {}) {
  return progress_view<Range>(std::forward<Range>(r), std::move(label));
}

}  // namespace shmkit
