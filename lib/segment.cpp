// SPDX-License-Identifier: MIT
#include "shmkit/detail/segment.hpp"

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <fmt/format.h>
#include <optional>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>

#include "shmkit/detail/identity.hpp"
#include "shmkit/error.hpp"

namespace bip = boost::interprocess;

namespace shmkit {

void validate_name(std::string_view name) {
  auto bad = [&](std::string_view why) {
    throw std::invalid_argument(fmt::format("shmkit: invalid name '{}': {}", name, why));
  };
  if (name.empty()) bad("empty (names are 1..200 characters)");
  if (name.size() > 200) bad(fmt::format("{} characters (names are 1..200 characters)", name.size()));
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) bad("names may hold only A-Z a-z 0-9 . _ -");
  }
}

std::string file_name(std::string_view name) {
  validate_name(name);
  return fmt::format("{}{}", name_prefix, name);
}

bool remove(std::string_view name) {
  const std::string file = "/" + file_name(name);
  if (::shm_unlink(file.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  throw error(fmt::format("shmkit: cannot remove '{}': {}", name, std::strerror(errno)));
}

}  // namespace shmkit

namespace shmkit::detail {
namespace {

constexpr std::size_t page_size = 4096;

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

std::string errno_text(int e) { return std::strerror(e); }

std::string what_of(std::string_view name, segment_spec spec) {
  std::string s = kind_name(static_cast<std::uint32_t>(spec.kind));
  if (spec.type.hash != 0) s += fmt::format("<{}>", spec.type.name);
  return name.empty() ? "anonymous " + s : fmt::format("{} '{}'", s, name);
}

std::string shm_free_text() {
  struct statvfs v {};
  if (::statvfs("/dev/shm", &v) != 0) return {};
  return fmt::format(" (/dev/shm has {} bytes free)",
                     static_cast<unsigned long long>(v.f_bavail) * v.f_frsize);
}

// Sizes the file, reserves its pages and maps it. Throws shmkit::error (the caller removes a
// named file it created).
std::byte* size_reserve_map(int fd, std::size_t total, const std::string& what) {
  if (::ftruncate(fd, static_cast<off_t>(total)) != 0)
    throw error(fmt::format("shmkit: cannot size {} to {} bytes: {}", what, total,
                            errno_text(errno)));
  int r;
  do {
    r = ::posix_fallocate(fd, 0, static_cast<off_t>(total));
  } while (r == EINTR);
  if (r != 0)
    throw error(fmt::format("shmkit: cannot reserve {} bytes for {}: {}{}", total, what,
                            errno_text(r), r == ENOSPC ? shm_free_text() : std::string()));
  void* p = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    throw error(fmt::format("shmkit: cannot map {} ({} bytes): {}", what, total,
                            errno_text(errno)));
  return static_cast<std::byte*>(p);
}

void fill_header(std::byte* base, std::size_t total, std::size_t payload, segment_spec spec) {
  auto* h = new (base) segment_header{};
  h->magic = segment_magic;
  h->version = layout_version;
  h->kind = static_cast<std::uint32_t>(spec.kind);
  h->type_hash = spec.type.hash;
  h->total_size = total;
  h->payload_offset = payload_alignment;
  h->payload_size = payload;
  h->creator = process_identity();
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  h->created_ns = static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  h->header_size = sizeof(segment_header);
  h->pointer_size = sizeof(void*);
  const std::size_t n = std::min(spec.type.name.size(), sizeof h->type_name - 1);
  std::memcpy(h->type_name, spec.type.name.data(), n);
  h->type_name[n] = '\0';
  h->mapped_size.store(total, std::memory_order_relaxed);
}

std::size_t total_for(std::size_t payload) {
  if (payload > (std::size_t(1) << 46))
    throw error(fmt::format("shmkit: a segment of {} bytes is beyond any machine", payload));
  return round_up(payload_alignment + payload, page_size);
}

// Anonymous memory is not bounded by /dev/shm's size but by the machine's memory: refuse a
// reservation that cannot succeed instead of letting fallocate push the machine into the OOM
// killer. Small requests skip the check (it reads /proc/meminfo).
void check_memory_available(std::size_t total, const std::string& what) {
  if (total < (std::size_t(64) << 20)) return;
  std::FILE* f = std::fopen("/proc/meminfo", "re");
  if (f == nullptr) return;
  char line[256];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
  std::fclose(f);
  if (kib != 0 && total / 1024 > kib)
    throw error(fmt::format("shmkit: cannot reserve {} bytes for {}: the machine has {} bytes "
                            "of memory available",
                            total, what, kib * 1024));
}

int dup_cloexec(int fd) {
  int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) throw error(fmt::format("shmkit: cannot keep a descriptor: {}", errno_text(errno)));
  return d;
}

struct mapping {
  std::byte* base;
  std::size_t size;
};

// Whether the name `file` (file_name()'s form) still leads to the file of inode `ino`: an
// explicit remove() and a new object of the same name, or a take-over, may have replaced it.
bool name_leads_to(const std::string& file, ino_t ino) noexcept {
  struct stat st {};
  return ::stat(("/dev/shm/" + file).c_str(), &st) == 0 && st.st_ino == ino;
}

// Whether the segment open as `fd` is still unfinished: its ready word unset (read from `h`
// when the caller has the header mapped, else from a mapping of it made here), or the file
// still empty.
bool unfinished(int fd, const segment_header* h) noexcept {
  if (h != nullptr) {
    // acquire: pairs with the release store of `ready` in segment::publish().
    return h->ready.load(std::memory_order_acquire) != ready_word;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  if (st.st_size == 0) return true;
  if (static_cast<std::size_t>(st.st_size) < sizeof(segment_header)) return false;  // foreign
  void* p = ::mmap(nullptr, sizeof(segment_header), PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return false;
  const bool u = unfinished(fd, static_cast<const segment_header*>(p));
  ::munmap(p, sizeof(segment_header));
  return u;
}

// Whether the creator of the unfinished segment open as `fd` is gone: nobody holds its
// creation lock (see segment::create()) and it is still unfinished once we hold the lock
// ourselves. A creator that publishes stores `ready` before it drops the lock, so one that
// finished just now is seen.
bool creation_abandoned(int fd, const segment_header* h) noexcept {
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) return false;  // the creator is at work
  const bool abandoned = unfinished(fd, h);
  ::flock(fd, LOCK_UN);
  return abandoned;
}

constexpr std::string_view never_finished = "was never finished";

// Maps a segment someone else made, waits (bounded) for its creator to publish it, and checks
// its header against `spec`. One mapping of the whole file serves both the check and the use.
mapping check_header(int fd, std::string_view name, segment_spec spec) {
  const std::string what = what_of(name, spec);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto pause = std::chrono::microseconds(50);
  std::optional<std::chrono::steady_clock::time_point> empty_since;
  for (;;) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      throw error(fmt::format("shmkit: cannot stat {}: {}", what, errno_text(errno)));
    const auto file_size = static_cast<std::size_t>(st.st_size);
    if (file_size != 0 && file_size < payload_alignment)
      throw error(fmt::format("shmkit: '{}' is not a shmkit object: {} bytes, smaller than a "
                              "shmkit header (expected {})",
                              name, file_size, what));
    // Empty and unlocked: a creator that died before sizing the file, or one between its
    // exclusive create and its lock (a few instructions): judged only once it has lasted.
    if (file_size == 0 && creation_abandoned(fd, nullptr)) {
      const auto now = std::chrono::steady_clock::now();
      if (!empty_since) empty_since = now;
      if (now - *empty_since > std::chrono::milliseconds(100))
        throw error(fmt::format("shmkit: {} {}: its creator died before sizing it (remove "
                                "it: shmkit::remove(), or `shmkit gc`)",
                                what, never_finished));
    } else {
      empty_since.reset();
    }
    if (file_size >= payload_alignment) {
      void* p = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED)
        throw error(fmt::format("shmkit: cannot map {}: {}", what, errno_text(errno)));
      const auto* h = static_cast<const segment_header*>(p);
      const header_state state = classify_header(*h, file_size);  // acquire load of `ready`
      const std::uint32_t magic = h->magic;
      std::string problem;
      bool wait = false;
      bool ok = false;
      if (state == header_state::foreign) {
        problem = fmt::format("'{}' is not a shmkit object (foreign or corrupted header: magic "
                              "{:#x}, expected {:#x}; expected {})",
                              name, magic, segment_magic, what);
      } else if (state == header_state::unfinished) {
        const std::uint64_t creator = h->creator;
        if (creator != 0 && !identity_alive(creator))
          problem = fmt::format("shmkit: {} {}: its creator (pid {}) died while building it",
                                what, never_finished, identity_pid(creator));
        else if (creation_abandoned(fd, h))
          problem = fmt::format("shmkit: {} {}: its creator died while building it (remove "
                                "it: shmkit::remove(), or `shmkit gc`)",
                                what, never_finished);
        else
          wait = true;
      } else if (state == header_state::incompatible) {
        problem = fmt::format("shmkit: '{}' was made by an incompatible shmkit build (layout "
                              "version {}, header {} bytes; this build expects version {}, "
                              "header {} bytes)",
                              name, h->version, h->header_size, layout_version,
                              sizeof(segment_header));
      } else if (h->kind != static_cast<std::uint32_t>(spec.kind)) {
        problem = fmt::format("shmkit: '{}' holds a {}, not a {}", name, kind_name(h->kind),
                              kind_name(static_cast<std::uint32_t>(spec.kind)));
      } else if (h->type_hash != spec.type.hash) {
        const std::size_t n = ::strnlen(h->type_name, sizeof h->type_name);
        problem = fmt::format("shmkit: {} '{}' has element type {}, not {}",
                              kind_name(h->kind), name, std::string_view(h->type_name, n),
                              spec.type.name);
      } else {
        const std::uint64_t want = mapped_extent(*h);
        struct stat now {};
        if (state == header_state::corrupted && ::fstat(fd, &now) == 0 &&
            static_cast<std::size_t>(now.st_size) > file_size)
          wait = true;  // a grower extended the file after our fstat: map it again
        else if (state == header_state::corrupted)
          problem = fmt::format("shmkit: {} is corrupted: its header describes {} bytes but the "
                                "file holds {}",
                                what, want, file_size);
        else
          ok = true;
      }
      if (ok) return {static_cast<std::byte*>(p), file_size};
      ::munmap(p, file_size);
      if (!problem.empty()) {
        if (problem.rfind("shmkit: ", 0) != 0) problem = "shmkit: " + problem;
        throw error(problem);
      }
      if (!wait) throw error(fmt::format("shmkit: cannot open {}", what));
    }
    if (std::chrono::steady_clock::now() > give_up)
      throw error(fmt::format("shmkit: {} was not finished by its creator within 10 s", what));
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(5000));
  }
}

}  // namespace

std::uint64_t mapped_extent(const segment_header& h) noexcept {
  // acquire: pairs with the release store of `mapped_size` in segment::grow(); the grown
  // pages are backed before their size is published.
  return std::max<std::uint64_t>(h.total_size, h.mapped_size.load(std::memory_order_acquire));
}

header_state classify_header(const segment_header& h, std::size_t file_size) noexcept {
  if (file_size < payload_alignment) return header_state::foreign;
  // acquire: pairs with the release store of `ready` in segment::publish(); every header
  // field read after it was written before it.
  const std::uint32_t ready = h.ready.load(std::memory_order_acquire);
  if ((h.magic != 0 && h.magic != segment_magic) || (ready != 0 && ready != ready_word))
    return header_state::foreign;
  if (ready != ready_word) return header_state::unfinished;
  if (h.version != layout_version || h.header_size != sizeof(segment_header) ||
      h.pointer_size != sizeof(void*))
    return header_state::incompatible;
  if (h.payload_offset != payload_alignment || h.total_size < h.payload_offset ||
      h.payload_size > h.total_size - h.payload_offset || mapped_extent(h) > file_size)
    return header_state::corrupted;
  return header_state::sound;
}

std::string kind_name(std::uint32_t kind) {
  switch (static_cast<object_kind>(kind)) {
    case object_kind::shared_memory: return "shared_memory";
    case object_kind::mutex: return "mutex";
    case object_kind::recursive_mutex: return "recursive_mutex";
    case object_kind::semaphore: return "semaphore";
    case object_kind::bounded_semaphore: return "bounded_semaphore";
    case object_kind::condition_variable: return "condition_variable";
    case object_kind::event: return "event";
    case object_kind::barrier: return "barrier";
    case object_kind::queue: return "queue";
    case object_kind::joinable_queue: return "joinable_queue";
    case object_kind::pipe: return "pipe";
    case object_kind::value: return "value";
    case object_kind::array: return "array";
    case object_kind::manager: return "manager";
    case object_kind::internal: return "internal";
  }
  return fmt::format("unknown kind {}", kind);
}

segment::~segment() {
  if (base_ != nullptr) ::munmap(base_, mapped_);
  if (fd_ >= 0) ::close(fd_);
  if (creating_fd_ >= 0) ::close(creating_fd_);
  if (owns_name_ && owner_pid_ == identity_pid(process_identity())) {
    // Remove the name only if it still refers to the file we created: after an explicit
    // remove() somebody else may have made a new object of the same name.
    const std::string file = std::string(name_prefix) + name_;
    if (name_leads_to(file, static_cast<ino_t>(inode_))) ::shm_unlink(("/" + file).c_str());
  }
}

std::string segment::describe() const {
  const std::string kind = base_ ? kind_name(header()->kind) : "segment";
  return named() ? fmt::format("{} '{}'", kind, name_) : "anonymous " + kind;
}

segment segment::create_anonymous(segment_spec spec, std::size_t payload, bool growable) {
  const std::size_t total = total_for(payload);
  const std::string what = what_of({}, spec);
  check_memory_available(total, what);
  int fd = ::memfd_create("shmkit", MFD_CLOEXEC);
  if (fd < 0)
    throw error(fmt::format("shmkit: cannot create {}: {}", what, errno_text(errno)));
  segment s;
  try {
    s.base_ = size_reserve_map(fd, total, what);
  } catch (...) {
    ::close(fd);
    throw;
  }
  s.mapped_ = total;
  fill_header(s.base_, total, payload, spec);
  if (growable)
    s.fd_ = fd;
  else
    ::close(fd);
  return s;
}

segment segment::create(std::string_view name, segment_spec spec, std::size_t payload,
                        permissions perms, bool growable) {
  const std::string file = file_name(name);
  const std::string what = what_of(name, spec);
  const std::size_t total = total_for(payload);
  bip::permissions p;
  p.set_permissions(perms.mode());
  std::optional<bip::shared_memory_object> shm;
  try {
    shm.emplace(bip::create_only, file.c_str(), bip::read_write, p);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error)
      throw error(fmt::format("shmkit: cannot create {}: the name already exists", what));
    throw error(fmt::format("shmkit: cannot create {}: {}", what, e.what()));
  }
  const int fd = shm->get_mapping_handle().handle;
  segment s;
  // The creation lock, held until publish(): an opener that finds the object unfinished and
  // the lock free knows its creator died (check_header()), and open_or_create takes the name
  // over (take_over_abandoned()). A taker may have judged this file abandoned between our
  // exclusive create and the lock: then the name no longer leads to our file, and we step
  // aside as if it had existed.
  struct stat mine {};
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || ::fstat(fd, &mine) != 0 ||
      !name_leads_to(file, mine.st_ino))
    throw error(fmt::format("shmkit: cannot create {}: the name already exists", what));
  try {
    s.creating_fd_ = dup_cloexec(fd);
    s.base_ = size_reserve_map(fd, total, what);
    if (growable) s.fd_ = dup_cloexec(fd);
  } catch (...) {
    if (s.base_) ::munmap(s.base_, total);
    s.base_ = nullptr;
    bip::shared_memory_object::remove(file.c_str());
    throw;
  }
  s.mapped_ = total;
  s.name_ = std::string(name);
  s.owns_name_ = true;
  s.owner_pid_ = identity_pid(process_identity());
  s.inode_ = mine.st_ino;
  fill_header(s.base_, total, payload, spec);
  return s;
}

segment segment::open(std::string_view name, segment_spec spec, bool growable) {
  const std::string file = file_name(name);
  const std::string what = what_of(name, spec);
  std::optional<bip::shared_memory_object> shm;
  try {
    shm.emplace(bip::open_only, file.c_str(), bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error)
      throw error(fmt::format("shmkit: cannot open {}: no object of that name", what));
    throw error(fmt::format("shmkit: cannot open {}: {}", what, e.what()));
  }
  const int fd = shm->get_mapping_handle().handle;
  const mapping m = check_header(fd, name, spec);
  segment s;
  s.base_ = m.base;
  s.mapped_ = m.size;
  s.name_ = std::string(name);
  if (growable) s.fd_ = dup_cloexec(fd);
  return s;
}

namespace {
// Removes the name `file` if it still leads to a segment whose creator died before publishing
// it. Under the creation lock, taken exclusively, so that of several processes doing this at
// once one removes it and the others then find the new object (or none); and only if the name
// still leads to the file we judged.
void take_over_abandoned(const std::string& file) noexcept {
  const int fd = ::shm_open(("/" + file).c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return;
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
    struct stat mine {};
    if (::fstat(fd, &mine) == 0 && unfinished(fd, nullptr) && name_leads_to(file, mine.st_ino))
      ::shm_unlink(("/" + file).c_str());
    ::flock(fd, LOCK_UN);
  }
  ::close(fd);
}
}  // namespace

segment segment::open_or_create(std::string_view name, segment_spec spec, std::size_t payload,
                                bool& created, permissions perms, bool growable) {
  validate_name(name);
  // Another process may create or remove the name between our two attempts: retry a few times.
  for (int attempt = 0;; ++attempt) {
    try {
      segment s = create(name, spec, payload, perms, growable);
      created = true;
      return s;
    } catch (const error&) {
      if (attempt >= 8) throw;
    }
    try {
      segment s = open(name, spec, growable);
      created = false;
      return s;
    } catch (const error& e) {
      const std::string_view why = e.what();
      if (attempt >= 8) throw;
      if (why.find(never_finished) != std::string_view::npos)
        take_over_abandoned(file_name(name));  // then create it again
      else if (why.find("no object of that name") == std::string_view::npos)
        throw;
    }
  }
}

void segment::publish() noexcept {
  // release: pairs with the acquire load of `ready` in check_header(); the header and the
  // payload built before this are visible to every opener that sees ready_word.
  header()->ready.store(ready_word, std::memory_order_release);
  if (creating_fd_ >= 0) {  // after the store: an opener that takes the lock sees it ready
    ::flock(creating_fd_, LOCK_UN);
    ::close(creating_fd_);
    creating_fd_ = -1;
  }
}

void segment::grow(std::size_t total) {
  if (fd_ < 0) throw std::logic_error("shmkit: grow() on a segment that is not growable");
  total = round_up(total, page_size);
  if (total <= mapped_) {
    // Mapped already: this process opened the file after a grower that died had extended it
    // (an open maps the whole file). Still publish the size, or the others never map it.
    if (header()->mapped_size.load(std::memory_order_relaxed) < total)
      header()->mapped_size.store(total, std::memory_order_release);  // as below
    return;
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0)
    throw error(fmt::format("shmkit: cannot stat {}: {}", describe(), errno_text(errno)));
  const auto old_file = static_cast<std::size_t>(st.st_size);
  if (total > old_file) {
    if (::ftruncate(fd_, static_cast<off_t>(total)) != 0)
      throw error(fmt::format("shmkit: cannot grow {} to {} bytes: {}", describe(), total,
                              errno_text(errno)));
    int r;
    do {
      r = ::posix_fallocate(fd_, 0, static_cast<off_t>(total));
    } while (r == EINTR);
    if (r != 0) {
      (void)!::ftruncate(fd_, static_cast<off_t>(old_file));
      throw error(fmt::format("shmkit: cannot grow {} to {} bytes: {}{}", describe(), total,
                              errno_text(r), r == ENOSPC ? shm_free_text() : std::string()));
    }
  }
  remap(total);
  // release: pairs with the acquire load in refresh(); the new size is backed before others
  // learn of it.
  header()->mapped_size.store(total, std::memory_order_release);
}

bool segment::refresh() {
  if (fd_ < 0 || base_ == nullptr) return false;
  const std::size_t want = header()->mapped_size.load(std::memory_order_acquire);
  if (want <= mapped_) return false;
  remap(want);
  return true;
}

void segment::remap(std::size_t total) {
  void* p = ::mremap(base_, mapped_, total, MREMAP_MAYMOVE);
  if (p == MAP_FAILED)
    throw error(fmt::format("shmkit: cannot map {} at {} bytes: {}", describe(), total,
                            errno_text(errno)));
  base_ = static_cast<std::byte*>(p);
  mapped_ = total;
}

}  // namespace shmkit::detail

namespace shmkit::detail {

void throw_payload_too_small(const segment& s, std::size_t want) {
  throw error(fmt::format("shmkit: {} is corrupted: its payload holds {} bytes, fewer than the "
                          "{} its state needs",
                          s.describe(), s.payload_size(), want));
}

}  // namespace shmkit::detail
