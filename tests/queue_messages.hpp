// SPDX-License-Identifier: MIT
// Messages that prove themselves: a tag, a size and bytes derived from both, so a consumer
// checks every message it gets is whole and untorn without knowing anything else. Shared by
// the queue's crash, stress and thread tests.
#pragma once

#include <sys/wait.h>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace shmkit::test {

struct message_header {
  std::uint64_t tag;
  std::uint64_t size;      // bytes after the header
  std::uint64_t checksum;  // of those bytes
};

inline std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

inline void fill_body(char* p, std::uint64_t tag, std::size_t n) {
  std::uint64_t state = mix(tag + 0x9e3779b97f4a7c15ull);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    state = mix(state + i);
    std::memcpy(p + i, &state, 8);
  }
  state = mix(state + i);
  std::memcpy(p + i, &state, n - i);
}

inline std::uint64_t checksum(const char* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
  }
  for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  return h;
}

inline std::string make_message(std::uint64_t tag, std::size_t body) {
  std::string s(sizeof(message_header) + body, '\0');
  fill_body(s.data() + sizeof(message_header), tag, body);
  message_header h{tag, body, checksum(s.data() + sizeof(message_header), body)};
  std::memcpy(s.data(), &h, sizeof h);
  return s;
}

// The tag of an intact message; false when anything about it is wrong (then `tag` is
// whatever could be read).
inline bool check_message(const std::string& s, std::uint64_t& tag) {
  if (s.size() < sizeof(message_header)) return false;
  message_header h;
  std::memcpy(&h, s.data(), sizeof h);
  tag = h.tag;
  if (h.size != s.size() - sizeof h) return false;
  const char* body = s.data() + sizeof h;
  if (checksum(body, h.size) != h.checksum) return false;
  std::string expect(h.size, '\0');
  fill_body(expect.data(), h.tag, h.size);
  return std::memcmp(expect.data(), body, h.size) == 0;
}

// Body sizes for mixed traffic: mostly inline, some a few KiB, a few large.
inline std::size_t mixed_size(std::mt19937_64& rng, std::size_t large_max) {
  const unsigned r = rng() % 100;
  if (r < 70) return rng() % 72;               // fits a slot with the header
  if (r < 95) return 100 + rng() % 4000;       // out of line, small
  return 16384 + rng() % (large_max - 16384);  // out of line, large
}

// Puts m into q one of three ways, chosen by `way` (mod 4): polling try_put, repeating
// put_for, or blocking put (twice as often), so that every path meets what a kill leaves.
template <class Q, class M>
void put_some_way(Q& q, const M& m, std::uint64_t way) {
  switch (way % 4) {
    case 0:
      while (!q.try_put(m)) std::this_thread::yield();
      break;
    case 1:
      while (!q.put_for(m, std::chrono::milliseconds(2))) {
      }
      break;
    default:
      q.put(m);
  }
}

// Gets one message from q the same three ways.
template <class Q>
auto get_some_way(Q& q, std::uint64_t way) {
  decltype(q.try_get()) m;
  switch (way % 4) {
    case 0:
      while (!(m = q.try_get())) std::this_thread::yield();
      break;
    case 1:
      while (!(m = q.get_for(std::chrono::milliseconds(2)))) {
      }
      break;
    default:
      m = q.get();
  }
  return std::move(*m);
}

// Children of one test step: whichever the step did not reap (a check failed and threw
// first) are killed and reaped when it ends, so none is left blocked on a queue.
struct children {
  std::vector<pid_t> pids;
  pid_t add(pid_t p) {
    pids.push_back(p);
    return p;
  }
  void reaped(pid_t p) {
    for (pid_t& q : pids)
      if (q == p) q = 0;
  }
  ~children() {
    for (pid_t p : pids) {
      if (p <= 0) continue;
      ::kill(p, SIGKILL);
      int status;
      ::waitpid(p, &status, 0);
    }
  }
};

}  // namespace shmkit::test
