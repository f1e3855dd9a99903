// SPDX-License-Identifier: MIT
// shmkit error types: one base, shmkit::error, and one subclass per failure a caller may
// want to tell apart. Misuse keeps the standard meanings (std::invalid_argument for bad
// arguments, std::logic_error for calls out of order).
#pragma once

#include <stdexcept>
#include <string>
#include <sys/types.h>

namespace shmkit {

// Base of every failure shmkit reports: a missing or mismatched object, a full segment, a
// system call that failed, bytes that do not decode.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// put() on a closed queue; get() on a closed queue that is drained.
class closed_error : public error {
 public:
  using error::error;
};

// recv() on a connection whose peer closed or died, once everything buffered was read;
// send() to such a peer.
class eof_error : public error {
 public:
  using error::error;
};

// A barrier broke: a party died, timed out or called abort() while others waited.
class broken_barrier_error : public error {
 public:
  using error::error;
};

// A task or child process ended with an exception. what() holds the original message,
// type_name() the original dynamic type, pid() the process it was thrown in (0 when unknown),
// traceback() a stack trace of the throw site when one was captured (may be empty).
class remote_error : public error {
 public:
  remote_error(std::string type_name, std::string message, pid_t pid = 0,
               std::string traceback = {})
      : error(std::move(message)),
        type_name_(std::move(type_name)),
        pid_(pid),
        traceback_(std::move(traceback)) {}

  const std::string& type_name() const noexcept { return type_name_; }
  pid_t pid() const noexcept { return pid_; }
  const std::string& traceback() const noexcept { return traceback_; }

 private:
  std::string type_name_;
  pid_t pid_;
  std::string traceback_;
};

// A pool worker died (crash, kill -9, abort) while it held the task.
class worker_lost_error : public error {
 public:
  using error::error;
};

}  // namespace shmkit
