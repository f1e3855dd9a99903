// SPDX-License-Identifier: MIT
// Fuzzes opening a segment whose bytes are arbitrary: each input (at most 64 KiB) is written
// as the file /dev/shm/shmkit.fuzz-<pid> and opened as shared_memory and through
// detail::segment::open for a few kinds and element types (and growable, with a refresh).
// Only shmkit::error may be thrown; the file is removed after each input.
//
// Two inputs would make the opener wait (by design) for 10 s, "the creator is still building
// it", and stall the fuzzer; the harness turns them into the nearest input that does not wait:
// - an empty file (a creator between creating and sizing it): skipped;
// - a header whose ready word is 0 and whose creator identity is 0 or a live process: the
//   creator field is overwritten with the identity of a process that cannot exist (pid
//   0x7fffffff, above Linux's PID_MAX_LIMIT), so the opener reports "never finished" at once.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <unistd.h>
#include <vector>

#include "shmkit/detail/segment.hpp"
#include "shmkit/detail/type_tag.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"
#include "shmkit/shared_memory.hpp"

namespace {

constexpr std::size_t max_input = 64 * 1024;
constexpr std::uint64_t dead_identity = (std::uint64_t(0x7fffffff) << 32) | 2;

const std::string& object_name() {
  static const std::string name = "fuzz-" + std::to_string(::getpid());
  return name;
}

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror("fuzz_segment_open: cannot create the segment file");
    std::abort();
  }
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0) {
      std::perror("fuzz_segment_open: cannot write the segment file");
      std::abort();
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

template <class F>
void expect_only_shmkit_errors(F&& f) {
  try {
    f();
  } catch (const shmkit::error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace shmkit;
  if (size == 0 || size > max_input) return 0;
  std::vector<std::uint8_t> bytes(data, data + size);
  if (size >= sizeof(detail::segment_header)) {
    std::uint32_t ready;
    std::memcpy(&ready, bytes.data() + offsetof(detail::segment_header, ready), sizeof ready);
    if (ready == 0)
      std::memcpy(bytes.data() + offsetof(detail::segment_header, creator), &dead_identity,
                  sizeof dead_identity);
  }
  const std::string& name = object_name();
  const std::string path = "/dev/shm/" + std::string(name_prefix) + name;
  write_file(path, bytes.data(), bytes.size());

  expect_only_shmkit_errors([&] {
    shared_memory m(open_only, name);
    // Every byte the handle claims must be mapped (ASan does not see mmap, but a read past
    // the mapping faults).
    volatile std::byte sink{};
    for (std::size_t i = 0; i < m.size(); i += 512) sink = m.data()[i];
    if (m.size() != 0) sink = m.data()[m.size() - 1];
    (void)sink;
  });
  expect_only_shmkit_errors([&] {
    detail::segment s = detail::segment::open(
        name, {detail::object_kind::queue, detail::tag_of<std::string>()});
    (void)s.describe();
  });
  expect_only_shmkit_errors([&] {
    detail::segment s =
        detail::segment::open(name, {detail::object_kind::value, detail::tag_of<int>()});
    (void)s.describe();
  });
  expect_only_shmkit_errors([&] {
    detail::segment s = detail::segment::open(name, {detail::object_kind::manager}, true);
    s.refresh();
    volatile std::byte sink = s.payload()[s.payload_size() == 0 ? 0 : s.payload_size() - 1];
    (void)sink;
  });
  ::unlink(path.c_str());
  return 0;
}
