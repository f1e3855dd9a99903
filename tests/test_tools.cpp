// SPDX-License-Identifier: MIT
// The shmkit command, run as a real program against objects these tests make: ls (text and
// JSON), inspect, rm, gc, foreign, corrupted and unreadable files, errors and exit codes; and
// the inspector registry it consults.
#define BOOST_TEST_MODULE shmkit command
// property_tree still includes the old <boost/bind.hpp>; keep its placeholders quiet.
#define BOOST_BIND_GLOBAL_PLACEHOLDERS
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/property_tree/json_parser.hpp>
#include <boost/property_tree/ptree.hpp>
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

#include "shmkit/detail/inspect.hpp"
#include "shmkit/detail/segment.hpp"
#include "shmkit/shared_memory.hpp"
#include "support.hpp"

namespace pt = boost::property_tree;
namespace sd = shmkit::detail;
using namespace shmkit::test;

namespace {

struct result {
  int code = -1;
  std::string out, err;
};

std::string slurp(FILE* f) {
  std::string s;
  std::rewind(f);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

constexpr uid_t nobody = 65534;

// Runs the built shmkit command with `args`, stdout and stderr captured apart; as_nobody
// drops to uid/gid 65534 first (the caller must be root). Exit code 125: the drop failed.
result run_cli(const std::vector<std::string>& args, bool as_nobody = false) {
  FILE* out = std::tmpfile();
  FILE* err = std::tmpfile();
  BOOST_REQUIRE(out && err);
  std::vector<char*> argv;
  std::string prog = SHMKIT_CLI;
  argv.push_back(prog.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(::fileno(out), 1);
    ::dup2(::fileno(err), 2);
    if (as_nobody &&
        (::setgroups(0, nullptr) != 0 || ::setgid(nobody) != 0 || ::setuid(nobody) != 0))
      std::_Exit(125);
    ::execv(argv[0], argv.data());
    std::_Exit(127);
  }
  result r;
  r.code = wait_exit(pid, std::chrono::seconds(60));
  r.out = slurp(out);
  r.err = slurp(err);
  std::fclose(out);
  std::fclose(err);
  BOOST_TEST_MESSAGE("shmkit " << (args.empty() ? "" : args[0]) << " -> " << r.code << "\n"
                               << r.out << r.err);
  return r;
}

pt::ptree parse_json(const std::string& text) {
  std::istringstream in(text);
  pt::ptree tree;
  pt::read_json(in, tree);  // throws on invalid JSON
  return tree;
}

// The object called `name` in an `ls --json` document (throws when absent).
pt::ptree find_object(const pt::ptree& doc, const std::string& name) {
  for (const auto& [key, obj] : doc.get_child("objects"))
    if (obj.get<std::string>("name") == name) return obj;
  throw std::runtime_error("ls --json does not list " + name);
}

std::string shm_path(const std::string& name) { return "/dev/shm/shmkit." + name; }
bool exists(const std::string& name) { return ::access(shm_path(name).c_str(), F_OK) == 0; }
bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// A raw file in /dev/shm, unlinked at scope exit whatever its name holds.
struct raw_file {
  std::string path;
  raw_file(const std::string& file_name, const std::string& bytes) : path("/dev/shm/" + file_name) {
    std::ofstream f(path, std::ios::binary);
    f << bytes;
  }
  ~raw_file() { ::unlink(path.c_str()); }
};

// Creates a named shared_memory in a child that keeps the name and exits; returns once the
// child is reaped (its creator is then dead).
void create_in_dead_child(const std::string& name) {
  const pid_t child = spawn([&] {
    shmkit::shared_memory m(shmkit::create_only, name, 1000);
    m.release_name();
  });
  BOOST_REQUIRE_EQUAL(wait_exit(child), 0);
}

}  // namespace

BOOST_AUTO_TEST_CASE(help_and_usage_errors) {
  auto r = run_cli({"--help"});
  BOOST_TEST(r.code == 0);
  BOOST_TEST(contains(r.out, "usage: shmkit <verb>"));
  for (std::string verb : {"ls", "inspect", "rm", "gc"}) {
    auto h = run_cli({verb, "--help"});
    BOOST_TEST(h.code == 0);
    BOOST_TEST(contains(h.out, "usage: shmkit " + verb));
    auto h2 = run_cli({"help", verb});
    BOOST_TEST(h2.out == h.out);
  }
  BOOST_TEST(run_cli({}).code == 2);
  BOOST_TEST(run_cli({"frobnicate"}).code == 2);
  auto bad = run_cli({"ls", "--frob"});
  BOOST_TEST(bad.code == 2);
  BOOST_TEST(contains(bad.err, "unknown option '--frob'"));
  BOOST_TEST(run_cli({"inspect"}).code == 2);
  BOOST_TEST(run_cli({"rm"}).code == 2);
}

BOOST_AUTO_TEST_CASE(ls_and_inspect_a_live_object) {
  name_guard name(unique_name("ls"));
  shmkit::shared_memory m(shmkit::create_only, name.name, 10000);
  struct stat st {};
  BOOST_REQUIRE(::stat(shm_path(name).c_str(), &st) == 0);
  const std::string me = std::to_string(::getpid());

  auto ls = run_cli({"ls", name});
  BOOST_TEST(ls.code == 0);
  BOOST_TEST(contains(ls.out, name.name));
  BOOST_TEST(contains(ls.out, "shared_memory"));
  BOOST_TEST(contains(ls.out, me + " alive"));
  BOOST_TEST(contains(ls.out, "1 (" + me + ")"));  // attached: this process maps it
  BOOST_TEST(contains(ls.out, "ok"));

  auto js = run_cli({"ls", "--json", name});
  BOOST_TEST(js.code == 0);
  const auto obj = find_object(parse_json(js.out), name);
  BOOST_TEST(obj.get<std::string>("kind") == "shared_memory");
  BOOST_TEST(obj.get<std::string>("type") == "none");
  BOOST_TEST(obj.get<std::string>("status") == "ok");
  BOOST_TEST(obj.get<std::uint64_t>("size") == static_cast<std::uint64_t>(st.st_size));
  BOOST_TEST(obj.get<std::uint64_t>("payload_size") == 10000u);
  BOOST_TEST(obj.get<std::string>("mode") == "0600");
  BOOST_TEST(obj.get<pid_t>("creator.pid") == ::getpid());
  BOOST_TEST(obj.get<bool>("creator.alive"));
  BOOST_TEST(obj.get<int>("attached.count") == 1);
  BOOST_TEST(obj.get_child("attached.pids").front().second.get_value<pid_t>() == ::getpid());
  BOOST_TEST(!obj.get<std::string>("created").empty());

  // Without a pattern, ls lists it among everything else.
  BOOST_TEST(
      find_object(parse_json(run_cli({"ls", "--json"}).out), name).get<std::string>("status") ==
      "ok");

  auto in = run_cli({"inspect", name});
  BOOST_TEST(in.code == 0);
  BOOST_TEST(contains(in.out, "payload_size"));
  BOOST_TEST(contains(in.out, "10000"));
  BOOST_TEST(contains(in.out, "(published)"));
  BOOST_TEST(contains(in.out, "pid " + me + ", alive"));

  auto ij = run_cli({"inspect", "--json", name});
  BOOST_TEST(ij.code == 0);
  const auto doc = parse_json(ij.out);
  BOOST_TEST(doc.get<std::string>("name") == name.name);
  BOOST_TEST(doc.get<std::uint32_t>("header.magic") == sd::segment_magic);
  BOOST_TEST(doc.get<std::uint32_t>("header.ready") == sd::ready_word);
  BOOST_TEST(doc.get<std::uint64_t>("header.payload_size") == 10000u);
  BOOST_TEST(doc.get<std::uint32_t>("header.kind") ==
             static_cast<std::uint32_t>(sd::object_kind::shared_memory));
}

BOOST_AUTO_TEST_CASE(unknown_and_invalid_names_fail) {
  const std::string missing = unique_name("missing");
  for (std::string verb : {"inspect", "rm"}) {
    auto r = run_cli({verb, missing});
    BOOST_TEST(r.code == 1);
    BOOST_TEST(contains(r.err, "no object named '" + missing + "'"));
    auto bad = run_cli({verb, "no/such name"});
    BOOST_TEST(bad.code == 1);
    BOOST_TEST(contains(bad.err, "invalid name"));
  }
  // ls of a pattern that matches nothing succeeds with nothing listed.
  auto ls = run_cli({"ls", "--json", missing});
  BOOST_TEST(ls.code == 0);
  BOOST_TEST(parse_json(ls.out).get_child("objects").empty());
}

BOOST_AUTO_TEST_CASE(foreign_files_are_reported_and_kept) {
  const std::string name = unique_name("foreign");
  const std::string small = unique_name("tiny");
  raw_file f("shmkit." + name, std::string(4096, 'x'));
  raw_file g("shmkit." + small, "0123456789");

  auto js = run_cli({"ls", "--json", name, small});
  BOOST_TEST(js.code == 0);
  const auto doc = parse_json(js.out);
  const auto obj = find_object(doc, name);
  BOOST_TEST(obj.get<std::string>("status") == "foreign");
  BOOST_TEST(contains(obj.get<std::string>("problem"), "magic"));
  BOOST_TEST(obj.get<std::string>("kind") == "null");  // ptree reads JSON null as "null"
  BOOST_TEST(contains(find_object(doc, small).get<std::string>("problem"),
                      "smaller than a shmkit header"));
  BOOST_TEST(contains(run_cli({"ls", name}).out, "foreign"));

  auto in = run_cli({"inspect", name});
  BOOST_TEST(in.code == 1);
  BOOST_TEST(contains(in.err, "is foreign: not a shmkit object"));

  auto rm = run_cli({"rm", name});
  BOOST_TEST(rm.code == 1);
  BOOST_TEST(contains(rm.err, "--force"));
  BOOST_TEST(exists(name));

  auto gc = run_cli({"gc", "-v", name});
  BOOST_TEST(gc.code == 0);
  BOOST_TEST(contains(gc.out, "kept '" + name + "': foreign"));
  BOOST_TEST(exists(name));

  BOOST_TEST(run_cli({"rm", "--force", "--dry-run", name}).code == 0);
  BOOST_TEST(exists(name));
  auto forced = run_cli({"rm", "--force", name, small});
  BOOST_TEST(forced.code == 0);
  BOOST_TEST(!exists(name));
  BOOST_TEST(!exists(small));
}

BOOST_AUTO_TEST_CASE(json_escapes_any_file_name) {
  // Not a valid shmkit name: quote, backslash, control character, invalid UTF-8, and UTF-8.
  const std::string odd = unique_name("odd") + "\"q\\b\x01\xff\xc3\xa9";
  raw_file f("shmkit." + odd, std::string(300, '\0'));
  auto js = run_cli({"ls", "--json", odd.substr(0, odd.find("-odd-") + 5) + "*"});
  BOOST_TEST(js.code == 0);
  const auto doc = parse_json(js.out);
  // 0xff, invalid UTF-8, comes back as U+FFFD; the rest as it was.
  const std::string shown = odd.substr(0, odd.size() - 3) + "\xef\xbf\xbd\xc3\xa9";
  const auto obj = find_object(doc, shown);
  BOOST_TEST(obj.get<std::string>("status") == "foreign");
  BOOST_TEST(contains(obj.get<std::string>("problem"), "does not hold a valid shmkit name"));
}

BOOST_AUTO_TEST_CASE(corrupted_header_is_reported) {
  name_guard name(unique_name("corrupt"));
  shmkit::shared_memory m(shmkit::create_only, name.name, 1000);
  {
    const int fd = ::open(shm_path(name).c_str(), O_RDWR);
    BOOST_REQUIRE(fd >= 0);
    const std::uint64_t huge = std::uint64_t(1) << 40;
    BOOST_REQUIRE(::pwrite(fd, &huge, sizeof huge, offsetof(sd::segment_header, payload_size)) ==
                  static_cast<ssize_t>(sizeof huge));
    ::close(fd);
  }
  auto js = run_cli({"ls", "--json", name});
  BOOST_TEST(find_object(parse_json(js.out), name).get<std::string>("status") == "corrupted");
  auto in = run_cli({"inspect", name});
  BOOST_TEST(in.code == 1);
  BOOST_TEST(contains(in.err, "corrupted"));
  BOOST_TEST(contains(in.out, std::to_string(std::uint64_t(1) << 40)));
  auto gc = run_cli({"gc", "-v", name});
  BOOST_TEST(contains(gc.out, "kept '" + name.name + "': corrupted"));
  BOOST_TEST(exists(name));
}

BOOST_AUTO_TEST_CASE(rm_removes_and_dry_run_keeps) {
  name_guard a(unique_name("rm"));
  name_guard b(unique_name("rm"));
  create_in_dead_child(a);
  create_in_dead_child(b);
  auto dry = run_cli({"rm", "--dry-run", a, b});
  BOOST_TEST(dry.code == 0);
  BOOST_TEST(contains(dry.out, "would remove shared_memory '" + a.name + "'"));
  BOOST_TEST(exists(a));
  BOOST_TEST(exists(b));
  auto rm = run_cli({"rm", a, b});
  BOOST_TEST(rm.code == 0);
  BOOST_TEST(contains(rm.out, "removed shared_memory '" + b.name + "'"));
  BOOST_TEST(!exists(a));
  BOOST_TEST(!exists(b));
  // Again: both unknown now, and the exit status says so.
  BOOST_TEST(run_cli({"rm", a, b}).code == 1);
}

BOOST_AUTO_TEST_CASE(gc_removes_only_dead_and_unmapped) {
  name_guard dead(unique_name("gc-dead"));
  name_guard live(unique_name("gc-live"));
  name_guard mapped(unique_name("gc-mapped"));
  create_in_dead_child(dead);
  create_in_dead_child(mapped);

  // A creator that lives on without mapping its object.
  int to_child[2], from_child[2];
  BOOST_REQUIRE(::pipe2(to_child, O_CLOEXEC) == 0 && ::pipe2(from_child, O_CLOEXEC) == 0);
  const pid_t keeper = spawn([&] {
    {
      shmkit::shared_memory m(shmkit::create_only, live.name, 1000);
      m.release_name();
    }
    ::close(to_child[1]);
    char c = 'r';
    CHILD_CHECK(::write(from_child[1], &c, 1) == 1);
    CHILD_CHECK(::read(to_child[0], &c, 1) >= 0);  // until the parent says or dies
  });
  char c;
  BOOST_REQUIRE(::read(from_child[0], &c, 1) == 1);

  std::optional<shmkit::shared_memory> user(std::in_place, shmkit::open_only, mapped.name);
  const std::string pattern = dead.name.substr(0, dead.name.find("-gc-")) + "-gc-*";

  auto dry = run_cli({"gc", "--dry-run", "-v", pattern});
  BOOST_TEST(dry.code == 0);
  BOOST_TEST(contains(dry.out, "would remove '" + dead.name + "': its creator (pid"));
  BOOST_TEST(contains(dry.out, "is dead and no process maps it"));
  BOOST_TEST(contains(dry.out, "kept '" + live.name + "': its creator (pid " +
                                   std::to_string(keeper) + ") is alive"));
  BOOST_TEST(contains(
      dry.out, "kept '" + mapped.name + "': mapped by 1 process: " + std::to_string(::getpid())));
  BOOST_TEST(exists(dead));

  auto gc = run_cli({"gc", pattern});
  BOOST_TEST(gc.code == 0);
  BOOST_TEST(contains(gc.out, "removed '" + dead.name + "'"));
  BOOST_TEST(!contains(gc.out, "kept '"));  // only with -v
  BOOST_TEST(!exists(dead));
  BOOST_TEST(exists(live));
  BOOST_TEST(exists(mapped));

  // Once the creator dies and the last user lets go, gc takes the rest.
  ::close(to_child[1]);
  BOOST_TEST(wait_exit(keeper) == 0);
  user.reset();
  auto rest = run_cli({"gc", pattern});
  BOOST_TEST(contains(rest.out, "removed '" + live.name + "'"));
  BOOST_TEST(contains(rest.out, "removed '" + mapped.name + "'"));
  BOOST_TEST(!exists(live));
  BOOST_TEST(!exists(mapped));
  for (int fd : {to_child[0], from_child[0], from_child[1]}) ::close(fd);
}

BOOST_AUTO_TEST_CASE(unfinished_segments_are_building_then_abandoned) {
  name_guard mine(unique_name("building"));
  name_guard orphan(unique_name("abandoned"));
  auto unpublished = sd::segment::create(mine.name, {sd::object_kind::queue}, 100);
  const pid_t child = spawn([&] {
    auto s = sd::segment::create(orphan.name, {sd::object_kind::queue}, 100);
    s.release_name();  // dies before publish()
  });
  BOOST_REQUIRE_EQUAL(wait_exit(child), 0);

  const auto doc = parse_json(run_cli({"ls", "--json", mine, orphan}).out);
  BOOST_TEST(find_object(doc, mine).get<std::string>("status") == "building");
  BOOST_TEST(find_object(doc, orphan).get<std::string>("status") == "abandoned");
  auto gc = run_cli({"gc", "-v", mine, orphan});
  BOOST_TEST(contains(gc.out, "removed '" + orphan.name + "': never finished: its creator"));
  BOOST_TEST(contains(gc.out, "kept '" + mine.name + "'"));
  BOOST_TEST(!exists(orphan));
  BOOST_TEST(exists(mine));
}

BOOST_AUTO_TEST_CASE(permission_problems_fail_clearly) {
  name_guard name(unique_name("perm"));
  const bool root = ::geteuid() == 0;
  // As root, another user meets a 0600 object; otherwise the owner meets a 0000 one.
  shmkit::shared_memory m(shmkit::create_only, name.name, 1000,
                          shmkit::permissions(root ? 0600 : 0));
  auto in = run_cli({"inspect", name}, root);
  if (in.code == 125) {
    BOOST_TEST_MESSAGE("cannot switch to uid 65534 here: permission case not run");
    return;
  }
  BOOST_TEST(in.code == 1);
  BOOST_TEST(contains(in.err, "is unreadable"));
  BOOST_TEST(contains(in.err, "Permission denied"));
  BOOST_TEST(contains(in.err, "mode 0" + std::string(root ? "600" : "000")));
  auto ls = run_cli({"ls", "--json", name}, root);
  BOOST_TEST(ls.code == 0);
  BOOST_TEST(find_object(parse_json(ls.out), name).get<std::string>("status") == "unreadable");
  if (root) {  // removing another user's object in the sticky /dev/shm is not permitted
    auto rm = run_cli({"rm", name}, true);
    BOOST_TEST(rm.code == 1);
    BOOST_TEST(contains(rm.err, "cannot remove"));
    BOOST_TEST(contains(rm.err, "owned by uid 0"));
    BOOST_TEST(exists(name));
  }
}

namespace {

// A test kind's inspector: the payload's first word, and the sizes it was given.
sd::detail_lines first_word(const sd::segment_header& h, std::span<const std::byte> payload) {
  std::uint64_t v = 0;
  if (payload.size() < sizeof v) throw std::runtime_error("payload too small");
  std::memcpy(&v, payload.data(), sizeof v);
  return {{"first", std::to_string(v)},
          {"payload", std::to_string(h.payload_size)},
          {"span", std::to_string(payload.size())}};
}

sd::detail_lines throwing(const sd::segment_header&, std::span<const std::byte>) {
  throw std::runtime_error("inspector failed on purpose");
}

}  // namespace

BOOST_AUTO_TEST_CASE(inspector_registry_adds_details) {
  name_guard name(unique_name("registry"));
  auto seg = sd::segment::create(name.name, {sd::object_kind::internal}, 512);
  const std::uint64_t v = 424242;
  std::memcpy(seg.payload(), &v, sizeof v);
  seg.publish();
  const std::string file = "shmkit." + name.name;

  const sd::inspector_fn before = sd::register_inspector(sd::object_kind::internal, &first_word);
  auto r = sd::inspect_file(file);
  BOOST_TEST(sd::status_name(r.status) == "ok");
  BOOST_TEST(r.creator_alive);
  BOOST_REQUIRE_EQUAL(r.details.size(), 3u);
  BOOST_TEST(r.details[0].second == "424242");
  BOOST_TEST(r.details[1].second == "512");
  BOOST_TEST(r.details[2].second == std::to_string(seg.mapped_bytes() - sd::payload_alignment));

  BOOST_TEST(sd::register_inspector(sd::object_kind::internal, &throwing) == &first_word);
  r = sd::inspect_file(file);
  BOOST_TEST(sd::status_name(r.status) == "ok");
  BOOST_TEST(r.details.empty());
  BOOST_TEST(r.details_problem == "inspector failed on purpose");

  sd::register_inspector(sd::object_kind::internal, before);
  r = sd::inspect_file(file);
  BOOST_TEST(r.details.empty());
  BOOST_TEST(r.details_problem.empty());
}
