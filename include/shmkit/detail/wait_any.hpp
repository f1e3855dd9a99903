// SPDX-License-Identifier: MIT
// Part of the wait layer (see wait.hpp): sleeping on several futex words at once, for
// shmkit::wait() over many connections. futex_waitv (Linux 5.16+) where the kernel has it;
// callers fall back to sleep-polling where it does not.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>

#include "shmkit/detail/wait.hpp"

namespace shmkit::detail {

// One word to watch and the value it must still hold for the caller to sleep.
struct wait_word {
  std::atomic<std::uint32_t>* word;
  std::uint32_t expected;
};

enum class wait_any_result {
  woken,        // a word changed or was woken (or a signal came): re-check
  timed_out,    // `until` passed
  unsupported,  // no futex_waitv here (ENOSYS) or too many words: poll instead
};

// The largest number of words one call takes (the kernel's FUTEX_WAITV_MAX).
inline constexpr std::size_t wait_any_max = 128;

// Sleeps while every word still holds its expected value, until one is woken or `until`
// (nullopt: no limit). Process-shared words (never FUTEX_PRIVATE). Spurious returns possible.
wait_any_result futex_wait_any(std::span<const wait_word> words,
                               std::optional<time_point> until) noexcept;

// For tests: makes futex_wait_any() answer `unsupported`, as on a kernel without futex_waitv,
// so that callers' polling fallback can be exercised. Off again with false.
void simulate_missing_futex_waitv(bool missing) noexcept;

}  // namespace shmkit::detail
