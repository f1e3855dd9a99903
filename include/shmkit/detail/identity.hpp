// SPDX-License-Identifier: MIT
// Who holds a claim: a 64-bit identity of a thread or process (its id and the low 32 bits of
// its start time, since ids are reused), and whether that holder still lives.
#pragma once

#include <cstdint>
#include <sys/types.h>

namespace shmkit::detail {

// Identity of the calling thread: (tid << 32) | start-time ticks. Never 0. Cached per thread
// and refreshed after fork(), so the fast path makes no system call.
std::uint64_t self_identity() noexcept;

// Identity of the calling process (pid instead of tid).
std::uint64_t process_identity() noexcept;

// Identity of process or thread `id` now, or 0 when it does not exist or is a zombie.
std::uint64_t identity_of(pid_t id) noexcept;

inline pid_t identity_pid(std::uint64_t identity) noexcept {
  return static_cast<pid_t>(identity >> 32);
}

// False when the holder named by `identity` has exited (a zombie counts as exited) or its id
// was reused by another process. Reads /proc: for slow paths only.
bool identity_alive(std::uint64_t identity) noexcept;

}  // namespace shmkit::detail
