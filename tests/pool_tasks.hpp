// SPDX-License-Identifier: MIT
// The tasks the pool tests send (test_pool.cpp, test_mpi_pool.cpp): plain functions and a
// callable with state, each with a result the test can compute serially.
#pragma once

#include <cctype>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>

namespace shmkit::test {

inline long square(long x) { return x * x; }
inline int add(int a, int b) { return a + b; }
inline std::string shout(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s + "!";
}
inline int fail_on_13(int x) {
  if (x == 13) throw std::invalid_argument("thirteen is unlucky");
  return x;
}
inline pid_t my_pid(int) { return ::getpid(); }
inline int slow_identity(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(x));
  return x;
}

// A callable with state the codec can carry.
struct scaler {
  long factor = 1;
  long operator()(long x) const { return x * factor; }
  template <class Ar>
  void serialize(Ar& ar) {
    ar(factor);
  }
};

}  // namespace shmkit::test
