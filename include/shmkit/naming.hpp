// SPDX-License-Identifier: MIT
// Names, creation tags and permissions shared by every shmkit object, and shmkit::remove().
//
// A named object lives in /dev/shm as "shmkit.<name>". Names are 1..200 characters of
// [A-Za-z0-9._-]; anything else throws std::invalid_argument before any system call.
#pragma once

#include <string>
#include <string_view>
#include <sys/types.h>

namespace shmkit {

// Creation tags, as in Boost.Interprocess.
struct create_only_t {
  explicit constexpr create_only_t() = default;
};
struct open_only_t {
  explicit constexpr open_only_t() = default;
};
struct open_or_create_t {
  explicit constexpr open_or_create_t() = default;
};
inline constexpr create_only_t create_only{};
inline constexpr open_only_t open_only{};
inline constexpr open_or_create_t open_or_create{};

// Access mode of a named segment's file. The default, 0600, lets only the owner open it.
class permissions {
 public:
  constexpr permissions() noexcept = default;
  constexpr explicit permissions(mode_t mode) noexcept : mode_(mode & 0777) {}
  constexpr mode_t mode() const noexcept { return mode_; }
  // Everybody may read and write (0666), like Boost.Interprocess's set_unrestricted().
  static constexpr permissions unrestricted() noexcept { return permissions(0666); }

 private:
  mode_t mode_ = 0600;
};

// The prefix of every shmkit file in /dev/shm.
inline constexpr std::string_view name_prefix = "shmkit.";

// Throws std::invalid_argument unless `name` is 1..200 characters of [A-Za-z0-9._-].
void validate_name(std::string_view name);

// The file name (without "/dev/shm/") that holds the object called `name`.
std::string file_name(std::string_view name);

// Removes the name of a named object. Processes that have it open keep using it; new opens
// fail. Returns false when no such name exists. Throws std::invalid_argument for a bad name
// and shmkit::error when the name exists but cannot be removed (permissions).
bool remove(std::string_view name);

}  // namespace shmkit
