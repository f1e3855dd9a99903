// SPDX-License-Identifier: MIT
// Segments and raw shared memory: naming rules, ownership, permissions, reservation, and every
// way an open can meet the wrong thing (missing, other kind, other type, foreign bytes, an
// older layout, a creator that died half-way).
#define BOOST_TEST_MODULE segment
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <vector>

#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/segment.hpp"
#include "shmkit/error.hpp"
#include "shmkit/shared_memory.hpp"
#include "support.hpp"

namespace sd = shmkit::detail;
using shmkit::test::name_guard;
using shmkit::test::unique_name;

namespace {

bool exists(const std::string& name) {
  return ::access(("/dev/shm/shmkit." + name).c_str(), F_OK) == 0;
}

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const shmkit::error& e) {
    return e.what();
  }
  return "(no shmkit::error thrown)";
}

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// Writes raw bytes as a file in /dev/shm under a shmkit name.
void write_file(const std::string& name, const void* data, std::size_t n) {
  const std::string path = "/dev/shm/shmkit." + name;
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  BOOST_REQUIRE(fd >= 0);
  BOOST_REQUIRE(::write(fd, data, n) == static_cast<ssize_t>(n));
  ::close(fd);
}

}  // namespace

BOOST_AUTO_TEST_CASE(names_are_validated) {
  using shmkit::shared_memory;
  BOOST_CHECK_THROW(shared_memory(shmkit::create_only, "", 16), std::invalid_argument);
  BOOST_CHECK_THROW(shared_memory(shmkit::create_only, std::string(201, 'a'), 16),
                    std::invalid_argument);
  for (const char* bad : {"a/b", "a b", "../x", "x\n", "caf\xc3\xa9", "a:b", "*"}) {
    BOOST_CHECK_THROW(shared_memory(shmkit::create_only, bad, 16), std::invalid_argument);
    BOOST_CHECK_THROW(shared_memory(shmkit::open_only, bad), std::invalid_argument);
    BOOST_CHECK_THROW(shmkit::remove(bad), std::invalid_argument);
  }
  // The longest legal name works; note the name includes the test prefix.
  std::string longest = unique_name("long");
  longest += std::string(200 - longest.size(), 'x');
  name_guard g(longest);
  shared_memory m(shmkit::create_only, longest, 16);
  BOOST_CHECK_EQUAL(m.name(), longest);
  BOOST_CHECK(exists(longest));
}

BOOST_AUTO_TEST_CASE(named_memory_is_shared_by_name) {
  name_guard g(unique_name("shm"));
  shmkit::shared_memory m(shmkit::create_only, g.name, 1 << 20);
  BOOST_CHECK_EQUAL(m.size(), 1u << 20);
  for (std::byte b : m.bytes()) BOOST_REQUIRE(b == std::byte{0});  // starts zeroed
  std::memset(m.data(), 0x5a, m.size());
  pid_t child = shmkit::test::spawn([&] {
    shmkit::shared_memory v(shmkit::open_only, g.name);
    CHILD_CHECK(v.size() == (1u << 20));
    for (std::byte b : v.bytes()) CHILD_CHECK(b == std::byte{0x5a});
    v.data()[0] = std::byte{1};
  });
  BOOST_REQUIRE_EQUAL(shmkit::test::wait_exit(child), 0);
  BOOST_CHECK(m.data()[0] == std::byte{1});
}

BOOST_AUTO_TEST_CASE(anonymous_memory_is_shared_with_children) {
  shmkit::shared_memory m(4096);
  BOOST_CHECK(m.name().empty());
  pid_t child = shmkit::test::spawn([&] { std::memcpy(m.data(), "hello", 6); });
  BOOST_REQUIRE_EQUAL(shmkit::test::wait_exit(child), 0);
  BOOST_CHECK_EQUAL(reinterpret_cast<const char*>(m.data()), "hello");
}

BOOST_AUTO_TEST_CASE(creator_owns_the_name) {
  const std::string name = unique_name("own");
  name_guard g(name);
  {
    shmkit::shared_memory m(shmkit::create_only, name, 64);
    shmkit::shared_memory other(shmkit::open_only, name);
    BOOST_CHECK(exists(name));
  }
  BOOST_CHECK(!exists(name));  // gone with the creating handle

  {
    shmkit::shared_memory m(shmkit::create_only, name, 64);
    m.release_name();
  }
  BOOST_CHECK(exists(name));  // released: outlives its creator
  { shmkit::shared_memory again(shmkit::open_only, name); }
  BOOST_CHECK(shmkit::remove(name));
  BOOST_CHECK(!shmkit::remove(name));
  BOOST_CHECK(!exists(name));
}

BOOST_AUTO_TEST_CASE(memory_lives_on_while_attached) {
  const std::string name = unique_name("live");
  name_guard g(name);
  auto creator = std::make_unique<shmkit::shared_memory>(shmkit::create_only, name, 64);
  shmkit::shared_memory reader(shmkit::open_only, name);
  creator->data()[3] = std::byte{7};
  creator.reset();
  BOOST_CHECK(!exists(name));
  BOOST_CHECK(reader.data()[3] == std::byte{7});
  BOOST_CHECK_THROW(shmkit::shared_memory(shmkit::open_only, name), shmkit::error);
}

BOOST_AUTO_TEST_CASE(a_child_does_not_remove_the_parents_name) {
  name_guard g(unique_name("fork"));
  shmkit::shared_memory m(shmkit::create_only, g.name, 64);
  pid_t child = shmkit::test::spawn([&] {
    // The child holds a copy of the creating handle; destroying it must not unlink.
    shmkit::shared_memory moved(std::move(m));
  });
  BOOST_REQUIRE_EQUAL(shmkit::test::wait_exit(child), 0);
  BOOST_CHECK(exists(g.name));
}

BOOST_AUTO_TEST_CASE(remove_after_recreate_spares_the_new_object) {
  const std::string name = unique_name("re");
  name_guard g(name);
  shmkit::shared_memory first(shmkit::create_only, name, 64);
  BOOST_CHECK(shmkit::remove(name));
  {
    shmkit::shared_memory second(shmkit::create_only, name, 64);
    second.release_name();
  }
  // Destroying `first` must not remove the second object's name.
  { auto gone = std::move(first); }
  BOOST_CHECK(exists(name));
}

BOOST_AUTO_TEST_CASE(open_or_create) {
  name_guard g(unique_name("ooc"));
  shmkit::shared_memory a(shmkit::open_or_create, g.name, 128);
  a.data()[0] = std::byte{42};
  shmkit::shared_memory b(shmkit::open_or_create, g.name, 999);  // opens: size is a's
  BOOST_CHECK_EQUAL(b.size(), 128u);
  BOOST_CHECK(b.data()[0] == std::byte{42});
  BOOST_CHECK_THROW(shmkit::shared_memory(shmkit::create_only, g.name, 16), shmkit::error);
}

BOOST_AUTO_TEST_CASE(permissions_default_to_owner_only) {
  name_guard a(unique_name("perm"));
  name_guard b(unique_name("perm"));
  shmkit::shared_memory m(shmkit::create_only, a.name, 64);
  shmkit::shared_memory n(shmkit::create_only, b.name, 64, shmkit::permissions(0640));
  struct stat st {};
  BOOST_REQUIRE_EQUAL(::stat(("/dev/shm/shmkit." + a.name).c_str(), &st), 0);
  BOOST_CHECK_EQUAL(st.st_mode & 0777, 0600u);
  BOOST_REQUIRE_EQUAL(::stat(("/dev/shm/shmkit." + b.name).c_str(), &st), 0);
  BOOST_CHECK_EQUAL(st.st_mode & 0777, 0640u);
}

BOOST_AUTO_TEST_CASE(open_missing_names_the_object) {
  const std::string name = unique_name("missing");
  auto msg = message_of([&] { shmkit::shared_memory m(shmkit::open_only, name); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, name));
  BOOST_CHECK(contains(msg, "no object of that name"));
}

BOOST_AUTO_TEST_CASE(open_other_kind_or_type_is_an_error) {
  name_guard g(unique_name("kind"));
  auto seg = sd::segment::create(g.name, {sd::object_kind::queue, sd::tag_of<int>()}, 64);
  seg.publish();
  auto msg = message_of([&] { shmkit::shared_memory m(shmkit::open_only, g.name); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "holds a queue, not a shared_memory"));

  msg = message_of(
      [&] { sd::segment::open(g.name, {sd::object_kind::queue, sd::tag_of<double>()}); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "element type int, not double"));
  BOOST_CHECK_NO_THROW(sd::segment::open(g.name, {sd::object_kind::queue, sd::tag_of<int>()}));
}

BOOST_AUTO_TEST_CASE(foreign_and_corrupted_files_are_errors) {
  // Too small to hold a header.
  name_guard small(unique_name("small"));
  write_file(small.name, "hello", 5);
  auto msg = message_of([&] { shmkit::shared_memory m(shmkit::open_only, small.name); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "not a shmkit object"));

  // Random bytes.
  name_guard junk(unique_name("junk"));
  std::vector<unsigned char> bytes(8192);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 7 + 3);
  write_file(junk.name, bytes.data(), bytes.size());
  msg = message_of([&] { shmkit::shared_memory m(shmkit::open_only, junk.name); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "not a shmkit object"));

  // A valid object whose header is then damaged in several ways.
  name_guard g(unique_name("bad"));
  shmkit::shared_memory m(shmkit::create_only, g.name, 4096);
  auto* h = reinterpret_cast<sd::segment_header*>(m.data() - sd::payload_alignment);

  const auto version = h->version;
  h->version = version + 1;  // a segment from another layout version
  msg = message_of([&] { shmkit::shared_memory x(shmkit::open_only, g.name); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "incompatible shmkit build"));
  h->version = version;

  const auto size = h->payload_size;
  h->payload_size = 1ull << 40;  // claims more than the file holds
  msg = message_of([&] { shmkit::shared_memory x(shmkit::open_only, g.name); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "corrupted"));
  h->payload_size = size;

  h->magic = 0xdeadbeef;
  msg = message_of([&] { shmkit::shared_memory x(shmkit::open_only, g.name); });
  BOOST_CHECK(contains(msg, "not a shmkit object"));
  h->magic = sd::segment_magic;
  BOOST_CHECK_NO_THROW(shmkit::shared_memory(shmkit::open_only, g.name));
}

BOOST_AUTO_TEST_CASE(a_creator_that_died_while_building_is_reported) {
  const std::string name = unique_name("half");
  name_guard g(name);
  pid_t child = shmkit::test::spawn([&] {
    auto seg = sd::segment::create(name, {sd::object_kind::event}, 64);
    seg.release_name();
    std::_Exit(0);  // dies before publish()
  });
  BOOST_REQUIRE_EQUAL(shmkit::test::wait_exit(child), 0);
  auto msg = message_of([&] { sd::segment::open(name, {sd::object_kind::event}); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "died while building it"));
}

// A creator killed before it wrote anything (an empty file), or after it sized the file but
// before its header (all zeros): open_only says so at once (well within the 10 s an opener
// waits for a live creator), and open_or_create takes the name over and makes the object.
BOOST_AUTO_TEST_CASE(open_or_create_takes_over_a_name_whose_creator_died_early) {
  for (std::size_t bytes : {std::size_t(0), std::size_t(8192)}) {
    const std::string name = unique_name("abandoned");
    name_guard g(name);
    std::vector<unsigned char> zeros(bytes);
    write_file(name, zeros.data(), zeros.size());  // no creation lock held: its creator is gone
    const auto t0 = std::chrono::steady_clock::now();
    auto msg = message_of([&] { shmkit::shared_memory m(shmkit::open_only, name); });
    BOOST_TEST_MESSAGE(msg);
    BOOST_CHECK(contains(msg, "was never finished"));
    BOOST_CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(9));
    shmkit::shared_memory made(shmkit::open_or_create, name, 100);
    BOOST_CHECK_EQUAL(made.size(), 100u);
    std::memcpy(made.data(), "fresh", 6);
    shmkit::shared_memory again(shmkit::open_only, name);
    BOOST_CHECK(std::memcmp(again.data(), "fresh", 6) == 0);
  }
}

// Many processes at once on one name with open_or_create, some of them killed while they may
// be creating it: the survivors all end up on one object, and nobody waits out the 10 s.
BOOST_AUTO_TEST_CASE(open_or_create_races_with_creators_killed) {
  for (int round = 0; round < 20; ++round) {
    const std::string name = unique_name("race");
    name_guard g(name);
    std::vector<pid_t> victims, survivors;
    for (int i = 0; i < 3; ++i)
      victims.push_back(shmkit::test::spawn([&] {
        shmkit::shared_memory m(shmkit::open_or_create, name, 1 << 20);
        m.release_name();
        ::pause();
      }));
    ::usleep(static_cast<useconds_t>(round * 50));
    for (pid_t v : victims) ::kill(v, SIGKILL);
    for (int i = 0; i < 3; ++i)
      survivors.push_back(shmkit::test::spawn([&] {
        shmkit::shared_memory m(shmkit::open_or_create, name, 1 << 20);
        m.release_name();
        auto* counter = reinterpret_cast<std::atomic<int>*>(m.data());
        counter->fetch_add(1);
      }));
    for (pid_t v : victims) shmkit::test::wait_exit(v);
    for (pid_t s : survivors) BOOST_CHECK_EQUAL(shmkit::test::wait_exit(s, std::chrono::seconds(60)), 0);
    shmkit::shared_memory m(shmkit::open_only, name);
    BOOST_CHECK_EQUAL(reinterpret_cast<std::atomic<int>*>(m.data())->load(), 3);
  }
}

BOOST_AUTO_TEST_CASE(an_opener_waits_for_the_creator_to_publish) {
  const std::string name = unique_name("slow");
  name_guard g(name);
  auto seg = sd::segment::create(name, {sd::object_kind::event}, 64);
  pid_t child = shmkit::test::spawn([&] {
    auto s = sd::segment::open(name, {sd::object_kind::event});
    CHILD_CHECK(std::memcmp(s.payload(), "built", 6) == 0);
  });
  ::usleep(100000);
  std::memcpy(seg.payload(), "built", 6);
  seg.publish();
  BOOST_CHECK_EQUAL(shmkit::test::wait_exit(child), 0);
}

BOOST_AUTO_TEST_CASE(more_than_dev_shm_holds_is_an_error_at_once) {
  struct statvfs v {};
  BOOST_REQUIRE_EQUAL(::statvfs("/dev/shm", &v), 0);
  const std::size_t free_bytes = static_cast<std::size_t>(v.f_bavail) * v.f_frsize;
  const std::size_t too_much = free_bytes + (std::size_t(1) << 30);
  const std::string name = unique_name("huge");
  name_guard g(name);
  auto msg = message_of([&] { shmkit::shared_memory m(shmkit::create_only, name, too_much); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "cannot reserve"));
  BOOST_CHECK(!exists(name));  // nothing left behind

  // Anonymous memory is bounded by the machine's memory instead.
  msg = message_of([&] { shmkit::shared_memory m(std::size_t(1) << 45); });
  BOOST_TEST_MESSAGE(msg);
  BOOST_CHECK(contains(msg, "cannot reserve"));
}

BOOST_AUTO_TEST_CASE(header_records_the_creator) {
  name_guard g(unique_name("hdr"));
  auto seg = sd::segment::create(g.name, {sd::object_kind::array, sd::tag_of<double>()}, 100);
  seg.publish();
  auto* h = seg.header();
  BOOST_CHECK_EQUAL(h->magic, sd::segment_magic);
  BOOST_CHECK_EQUAL(h->version, sd::layout_version);
  BOOST_CHECK_EQUAL(sd::identity_pid(h->creator), ::getpid());
  BOOST_CHECK_EQUAL(std::string(h->type_name), "double");
  BOOST_CHECK_EQUAL(h->payload_size, 100u);
  BOOST_CHECK_EQUAL(seg.describe(), "array '" + g.name + "'");
}

BOOST_AUTO_TEST_CASE(growable_segments_grow_for_every_process) {
  name_guard g(unique_name("grow"));
  auto seg = sd::segment::create(g.name, {sd::object_kind::internal}, 4096, {}, true);
  seg.publish();
  auto other = sd::segment::open(g.name, {sd::object_kind::internal}, true);
  seg.grow(1 << 20);
  std::memset(seg.base() + 500000, 9, 10);
  BOOST_CHECK(other.refresh());
  BOOST_CHECK_EQUAL(other.mapped_bytes(), std::size_t(1) << 20);
  BOOST_CHECK_EQUAL(static_cast<int>(other.base()[500005]), 9);
  BOOST_CHECK(!other.refresh());
}
