// SPDX-License-Identifier: MIT
#include "shmkit/detail/inspect.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>

#include "shmkit/detail/identity.hpp"
#include "shmkit/naming.hpp"

namespace shmkit::detail {
namespace {

struct registry {
  std::mutex lock;
  std::map<std::uint32_t, inspector_fn> by_kind;
};

registry& inspectors() noexcept {
  static registry r;  // constructed on first use: registrars in other files may run first
  return r;
}

std::int64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// A read-only mapping, unmapped on scope exit.
struct ro_map {
  const std::byte* base = nullptr;
  std::size_t size = 0;
  ro_map(int fd, std::size_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) base = static_cast<const std::byte*>(p);
  }
  ro_map(const ro_map&) = delete;
  ro_map& operator=(const ro_map&) = delete;
  ~ro_map() {
    if (base != nullptr) ::munmap(const_cast<std::byte*>(base), size);
  }
};

struct fd_closer {
  int fd;
  ~fd_closer() { ::close(fd); }
};

header_fields copy_fields(const segment_header& h) {
  header_fields f;
  // acquire: pairs with the release store of `ready` in segment::publish().
  f.ready = h.ready.load(std::memory_order_acquire);
  f.magic = h.magic;
  f.version = h.version;
  f.kind = h.kind;
  f.type_hash = h.type_hash;
  f.total_size = h.total_size;
  f.payload_offset = h.payload_offset;
  f.payload_size = h.payload_size;
  f.creator = h.creator;
  f.created_ns = h.created_ns;
  f.header_size = h.header_size;
  f.pointer_size = h.pointer_size;
  f.type_name.assign(h.type_name, ::strnlen(h.type_name, sizeof h.type_name));
  // relaxed: a value shown to people; mapped_extent() does the acquire load that matters.
  f.mapped_size = h.mapped_size.load(std::memory_order_relaxed);
  return f;
}

// Runs the kind's inspector over a read-only mapping of the whole extent.
void run_inspector(object_report& r, int fd, const segment_header& h) {
  inspector_fn fn = find_inspector(h.kind);
  if (fn == nullptr) return;
  const std::uint64_t extent = mapped_extent(h);  // classify_header() checked it fits the file
  ro_map all(fd, extent);
  if (all.base == nullptr) {
    r.details_problem = fmt::format("cannot map {} bytes: {}", extent, std::strerror(errno));
    return;
  }
  const auto& mapped = *reinterpret_cast<const segment_header*>(all.base);
  try {
    r.details = fn(mapped, {all.base + h.payload_offset, extent - h.payload_offset});
  } catch (const std::exception& e) {
    r.details.clear();
    r.details_problem = e.what();
  } catch (...) {
    r.details.clear();
    r.details_problem = "the inspector threw a non-standard exception";
  }
}

// Judges the header of an open regular file of at least one header's size.
void read_header(object_report& r, int fd) {
  ro_map page(fd, payload_alignment);
  if (page.base == nullptr) {
    r.error_number = errno;
    r.status = object_status::unreadable;
    r.problem = fmt::format("cannot map its header: {}", std::strerror(errno));
    return;
  }
  // Not a SIGBUS risk: shmkit never shrinks a file below its published extent, and the size
  // was checked (a foreign writer truncating the file at this instant is not defended).
  const auto& h = *reinterpret_cast<const segment_header*>(page.base);
  const header_state state = classify_header(h, r.file_size);
  r.header = copy_fields(h);
  r.has_header = state != header_state::foreign;
  r.creator_known = state != header_state::foreign && state != header_state::incompatible &&
                    r.header.creator != 0;
  if (r.creator_known) r.creator_alive = identity_alive(r.header.creator);
  const pid_t creator_pid = identity_pid(r.header.creator);
  switch (state) {
    case header_state::foreign:
      r.status = object_status::foreign;
      r.problem = fmt::format(
          "not a shmkit object: magic {:#x} and ready word {:#x}, expected "
          "{:#x} and {:#x}",
          r.header.magic, r.header.ready, segment_magic, ready_word);
      r.header = {};
      return;
    case header_state::unfinished:
      if (r.header.creator != 0) {
        r.status = r.creator_alive ? object_status::building : object_status::abandoned;
        r.problem =
            r.creator_alive
                ? fmt::format("not published yet: its creator (pid {}) is building it", creator_pid)
                : fmt::format("never finished: its creator (pid {}) died while building it",
                              creator_pid);
      } else if (r.age_ns > abandon_after_ns) {
        r.status = object_status::abandoned;
        r.problem = fmt::format("never finished: its header is still blank after {} s",
                                r.age_ns / 1000000000);
      } else {
        r.status = object_status::building;
        r.problem = "not published yet: its header is still blank";
      }
      return;
    case header_state::incompatible:
      r.status = object_status::incompatible;
      r.problem = fmt::format(
          "made by an incompatible shmkit build: layout version {}, header "
          "{} bytes, pointers {} bytes (this build: {}, {}, {})",
          r.header.version, r.header.header_size, r.header.pointer_size, layout_version,
          sizeof(segment_header), sizeof(void*));
      return;
    case header_state::corrupted:
      r.status = object_status::corrupted;
      r.problem = fmt::format(
          "its header describes a payload of {} bytes at offset "
          "{} in {} bytes (mapped extent {}), but the file holds {}",
          r.header.payload_size, r.header.payload_offset, r.header.total_size, mapped_extent(h),
          r.file_size);
      return;
    case header_state::sound:
      r.status = object_status::ok;
      run_inspector(r, fd, h);
      return;
  }
}

}  // namespace

inspector_fn register_inspector(object_kind kind, inspector_fn fn) noexcept {
  registry& reg = inspectors();
  std::lock_guard<std::mutex> guard(reg.lock);
  const auto k = static_cast<std::uint32_t>(kind);
  inspector_fn old = nullptr;
  if (auto it = reg.by_kind.find(k); it != reg.by_kind.end()) {
    old = it->second;
    reg.by_kind.erase(it);
  }
  // std::map may throw bad_alloc here; a registrar failing that early cannot do better.
  if (fn != nullptr) reg.by_kind.emplace(k, fn);
  return old;
}

inspector_fn find_inspector(std::uint32_t kind) noexcept {
  registry& reg = inspectors();
  std::lock_guard<std::mutex> guard(reg.lock);
  auto it = reg.by_kind.find(kind);
  return it == reg.by_kind.end() ? nullptr : it->second;
}

std::string_view status_name(object_status s) noexcept {
  switch (s) {
    case object_status::ok:
      return "ok";
    case object_status::building:
      return "building";
    case object_status::abandoned:
      return "abandoned";
    case object_status::foreign:
      return "foreign";
    case object_status::incompatible:
      return "incompatible";
    case object_status::corrupted:
      return "corrupted";
    case object_status::unreadable:
      return "unreadable";
    case object_status::missing:
      return "missing";
  }
  return "unknown";
}

object_report inspect_file(std::string_view file_name) {
  object_report r;
  r.file = std::string(file_name);
  if (r.file.rfind(name_prefix, 0) == 0) r.name = r.file.substr(name_prefix.size());
  const std::string path = fmt::format("{}/{}", shm_directory, r.file);
  int fd;
  // O_NOFOLLOW: a symbolic link is not ours to follow; O_NONBLOCK: a FIFO must not block us.
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    r.error_number = errno;
    struct stat lst {};
    if (errno != ENOENT && ::lstat(path.c_str(), &lst) == 0) {  // needs no read permission
      r.stat_known = true;
      r.file_size = static_cast<std::uint64_t>(lst.st_size);
      r.mode = lst.st_mode & 07777;
      r.owner = lst.st_uid;
      r.inode = lst.st_ino;
    }
    if (r.error_number == ENOENT) {
      r.status = object_status::missing;
      r.problem = "no such object";
    } else if (r.error_number == ELOOP) {
      r.status = object_status::foreign;
      r.problem = "not a shmkit object: a symbolic link";
    } else {
      r.status = object_status::unreadable;
      r.problem = fmt::format("cannot open {}: {}", path, std::strerror(r.error_number));
    }
    return r;
  }
  fd_closer closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    r.error_number = errno;
    r.status = object_status::unreadable;
    r.problem = fmt::format("cannot stat {}: {}", path, std::strerror(errno));
    return r;
  }
  r.stat_known = true;
  r.file_size = static_cast<std::uint64_t>(st.st_size);
  r.mode = st.st_mode & 07777;
  r.owner = st.st_uid;
  r.inode = st.st_ino;
  r.age_ns =
      now_ns() - (static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
  if (!S_ISREG(st.st_mode)) {
    r.status = object_status::foreign;
    r.problem = "not a shmkit object: not a regular file";
    return r;
  }
  try {
    validate_name(r.name);
  } catch (const std::invalid_argument&) {
    r.status = object_status::foreign;
    r.problem = "not a shmkit object: its file name does not hold a valid shmkit name";
    return r;
  }
  if (r.file_size == 0) {
    const bool old = r.age_ns > abandon_after_ns;
    r.status = old ? object_status::abandoned : object_status::building;
    r.problem = old ? fmt::format("never finished: an empty file for {} s", r.age_ns / 1000000000)
                    : "not sized yet: an empty file (its creator may be making it)";
    return r;
  }
  if (r.file_size < payload_alignment) {
    r.status = object_status::foreign;
    r.problem = fmt::format("not a shmkit object: {} bytes, smaller than a shmkit header ({})",
                            r.file_size, payload_alignment);
    return r;
  }
  read_header(r, fd);
  return r;
}

std::vector<std::string> shm_file_names() {
  std::vector<std::string> names;
  const std::string dir(shm_directory);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n.size() > name_prefix.size() && n.substr(0, name_prefix.size()) == name_prefix)
      names.emplace_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace shmkit::detail
