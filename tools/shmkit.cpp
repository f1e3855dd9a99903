// SPDX-License-Identifier: MIT
// The shmkit command: lists, inspects and removes the shmkit objects in /dev/shm.
//
//   shmkit ls [PATTERN...] [--json]          shmkit rm NAME... [--dry-run] [--force]
//   shmkit inspect NAME [--json]             shmkit gc [PATTERN...] [--dry-run] [-v]
//
// Every file is read without trusting it (detail/inspect.hpp): foreign, corrupted or
// unreadable files are reported, never followed. Attached processes are found by reading
// /proc/*/maps. Exit status: 0 success, 1 a named object could not be handled (unknown,
// foreign, not permitted), 2 a usage error.
#include <dirent.h>
#include <fmt/format.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/inspect.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"

namespace sd = shmkit::detail;

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

// --- help ----------------------------------------------------------------------------------

constexpr std::string_view main_help = R"(usage: shmkit <verb> [arguments]

Lists, inspects and removes the shmkit shared-memory objects of this machine (the files
named shmkit.<name> in /dev/shm).

verbs:
  ls [PATTERN...] [--json]           list every object (or those whose name matches a glob)
  inspect NAME [--json]              everything known of one object, header fields included
  rm NAME... [--dry-run] [--force]   remove named objects
  gc [PATTERN...] [--dry-run] [-v]   remove objects whose creator died and that nobody maps
  help [VERB]                        this text, or a verb's

'shmkit VERB --help' explains a verb.
exit status: 0 success; 1 an object could not be handled (unknown name, invalid name,
foreign file, permission denied); 2 usage error.
)";

constexpr std::string_view ls_help = R"(usage: shmkit ls [PATTERN...] [--json]

Lists every shmkit object in /dev/shm, or those whose name matches one of the shell glob
PATTERNs (quote them: shmkit ls 'jobs-*'). For each: name, kind, element type, file size,
creator pid and whether it is alive, the processes that map it (read from /proc/*/maps), its
creation time, its status (ok, building, abandoned, foreign, incompatible, corrupted,
unreadable) and the details its kind reports (a queue's depth, ...).

  --json   one JSON document: {"directory", "maps_complete", "maps_unreadable", "objects": [...]}
)";

constexpr std::string_view inspect_help = R"(usage: shmkit inspect NAME [--json]

Shows everything 'ls' knows of the object NAME, plus every field of its segment header.
Exits with 1 when there is no such object, or it is foreign, incompatible, corrupted or
unreadable (the report is still printed).

  --json   one JSON object: the 'ls' fields plus "header"
)";

constexpr std::string_view rm_help = R"(usage: shmkit rm NAME... [--dry-run] [--force]

Removes the named objects (shmkit::remove): new opens fail at once; processes that have an
object open keep using its memory until they let go. A file that is not a shmkit object is
left alone unless --force is given.

  --dry-run   say what would be removed, remove nothing
  --force     remove foreign files too
)";

constexpr std::string_view gc_help = R"(usage: shmkit gc [PATTERN...] [--dry-run] [-v]

Removes the objects whose creator is dead and that no process maps, and those whose creator
died while building them; says what it removed and why. Keeps everything else: live creators,
mapped objects, files that are not shmkit objects or cannot be read, other users' objects
(unless run as root), and objects others may map when some processes' maps cannot be read.
PATTERNs (shell globs) restrict it to matching names.

  --dry-run      say what would be removed, remove nothing
  -v, --verbose  also say what was kept and why
)";

// --- arguments -----------------------------------------------------------------------------

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct args {
  std::vector<std::string> positional;
  bool json = false, dry_run = false, force = false, verbose = false, help = false;
};

// Parses the words after the verb; `allowed` lists the flags the verb takes.
args parse(std::string_view verb, int argc, char** argv,
           std::initializer_list<std::string_view> allowed) {
  args a;
  bool options_done = false;
  for (int i = 0; i < argc; ++i) {
    const std::string_view w = argv[i];
    if (options_done || w.empty() || w[0] != '-') {
      a.positional.emplace_back(w);
      continue;
    }
    if (w == "--") {
      options_done = true;
      continue;
    }
    if (w == "-h" || w == "--help") {
      a.help = true;
      continue;
    }
    const bool ok = std::find(allowed.begin(), allowed.end(), w) != allowed.end();
    if (!ok) throw usage_error(fmt::format("shmkit {}: unknown option '{}'", verb, w));
    if (w == "--json")
      a.json = true;
    else if (w == "--dry-run" || w == "-n")
      a.dry_run = true;
    else if (w == "--force" || w == "-f")
      a.force = true;
    else if (w == "--verbose" || w == "-v")
      a.verbose = true;
  }
  return a;
}

// --- JSON ----------------------------------------------------------------------------------

// Appends s as a JSON string: quotes, backslashes and control characters escaped, invalid
// UTF-8 bytes replaced by U+FFFD, so that any file name gives valid JSON.
void json_string(std::string& out, std::string_view s) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default:
          if (c < 0x20 || c == 0x7f)
            out += fmt::format("\\u{:04x}", c);
          else
            out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // A multi-byte sequence: its length from the lead byte, then continuation bytes.
    std::size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
    if (c >= 0xf5) len = 0;
    bool valid = len != 0 && i + len <= s.size();
    for (std::size_t k = 1; valid && k < len; ++k)
      valid = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (valid && len >= 3) {  // overlong forms, surrogates and code points beyond U+10FFFF
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0) || (c == 0xf0 && c1 < 0x90) ||
          (c == 0xf4 && c1 >= 0x90))
        valid = false;
    }
    if (valid) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  out += '"';
}

// Writes JSON incrementally: open/close containers, keys and values, commas in between.
class json_writer {
 public:
  json_writer& open(char bracket) {
    comma();
    out_ += bracket;
    fresh_ = true;
    return *this;
  }
  json_writer& close(char bracket) {
    out_ += bracket;
    fresh_ = false;
    return *this;
  }
  json_writer& key(std::string_view k) {
    comma();
    json_string(out_, k);
    out_ += ':';
    fresh_ = true;
    return *this;
  }
  json_writer& str(std::string_view v) {
    comma();
    json_string(out_, v);
    return *this;
  }
  json_writer& num(std::int64_t v) { return raw(fmt::format("{}", v)); }
  json_writer& unum(std::uint64_t v) { return raw(fmt::format("{}", v)); }
  json_writer& boolean(bool v) { return raw(v ? "true" : "false"); }
  json_writer& null() { return raw("null"); }
  const std::string& text() const { return out_; }

 private:
  json_writer& raw(std::string_view v) {
    comma();
    out_ += v;
    return *this;
  }
  void comma() {
    if (!fresh_) out_ += ',';
    fresh_ = false;
  }
  std::string out_;
  bool fresh_ = true;
};

// --- who maps what -------------------------------------------------------------------------

// The processes that map each shmkit file, from /proc/*/maps (this process excluded).
struct attachments {
  std::map<std::pair<std::string, ino_t>, std::vector<pid_t>> by_file;  // (file, inode)
  int unreadable = 0;  // processes whose maps could not be read (another user's, without root)

  const std::vector<pid_t>* of(const sd::object_report& r) const {
    auto it = by_file.find({r.file, r.inode});
    return it == by_file.end() ? nullptr : &it->second;
  }
};

attachments scan_attachments() {
  attachments a;
  const std::string dir_prefix = fmt::format("{}/{}", sd::shm_directory, shmkit::name_prefix);
  const pid_t self = ::getpid();
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) {
    a.unreadable = -1;
    return a;
  }
  while (const dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || pid <= 0 || pid == self) continue;
    const std::string path = fmt::format("/proc/{}/maps", pid);
    std::FILE* f = std::fopen(path.c_str(), "re");
    if (f == nullptr) {
      if (errno == EACCES || errno == EPERM) ++a.unreadable;
      continue;  // ENOENT: the process ended meanwhile
    }
    char* line = nullptr;
    std::size_t cap = 0;
    ssize_t n;
    bool read_any = false;
    errno = 0;
    while ((n = ::getline(&line, &cap, f)) > 0) {
      read_any = true;
      std::string_view l(line, static_cast<std::size_t>(n));
      if (!l.empty() && l.back() == '\n') l.remove_suffix(1);
      const auto at = l.find(dir_prefix);
      if (at == std::string_view::npos) continue;
      std::string_view file = l.substr(at + sd::shm_directory.size() + 1);
      constexpr std::string_view deleted = " (deleted)";
      if (file.size() >= deleted.size() && file.substr(file.size() - deleted.size()) == deleted)
        continue;  // a removed file: no longer reachable by name
      unsigned long inode = 0;
      // address perms offset dev inode path
      if (std::sscanf(line, "%*s %*s %*s %*s %lu", &inode) != 1) continue;
      auto& pids = a.by_file[{std::string(file), static_cast<ino_t>(inode)}];
      if (pids.empty() || pids.back() != pid) pids.push_back(static_cast<pid_t>(pid));
    }
    // Reading another user's maps without permission fails at the first read, not at open.
    if (!read_any && (errno == EACCES || errno == EPERM)) ++a.unreadable;
    std::free(line);
    std::fclose(f);
  }
  ::closedir(proc);
  for (auto& [key, pids] : a.by_file) std::sort(pids.begin(), pids.end());
  return a;
}

// --- formatting ----------------------------------------------------------------------------

std::string human_size(std::uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return v < 10 ? fmt::format("{:.1f} {}", v, units[u]) : fmt::format("{:.0f} {}", v, units[u]);
}

std::string time_text(std::int64_t ns, bool utc) {
  const std::time_t t = static_cast<std::time_t>(ns / 1000000000);
  std::tm tm{};
  if (utc ? ::gmtime_r(&t, &tm) == nullptr : ::localtime_r(&t, &tm) == nullptr) return "?";
  char buf[64];
  std::strftime(buf, sizeof buf, utc ? "%Y-%m-%dT%H:%M:%S" : "%Y-%m-%d %H:%M:%S", &tm);
  return utc ? fmt::format("{}.{:03}Z", buf, (ns / 1000000) % 1000) : std::string(buf);
}

bool has_kind(const sd::object_report& r) {
  return r.has_header && r.status != sd::object_status::incompatible;
}

std::string pid_list(const std::vector<pid_t>& pids, std::string_view sep) {
  std::string s;
  for (pid_t p : pids) s += fmt::format("{}{}", s.empty() ? "" : sep, p);
  return s;
}

std::string creator_text(const sd::object_report& r) {
  if (!r.creator_known) return "-";
  return fmt::format("{} {}", sd::identity_pid(r.header.creator),
                     r.creator_alive ? "alive" : "dead");
}

std::string status_text(const sd::object_report& r) {
  std::string s(sd::status_name(r.status));
  if (!r.problem.empty()) s += ": " + r.problem;
  for (const auto& [k, v] : r.details) s += fmt::format("  {}={}", k, v);
  if (!r.details_problem.empty())
    s += fmt::format("  (details unavailable: {})", r.details_problem);
  return s;
}

std::string processes(std::size_t n) { return fmt::format("{} process{}", n, n == 1 ? "" : "es"); }

// An exception's message without the library's "shmkit: " prefix (the command adds its own).
std::string message_of(const std::exception& e) {
  std::string_view m = e.what();
  constexpr std::string_view prefix = "shmkit: ";
  if (m.substr(0, prefix.size()) == prefix) m.remove_prefix(prefix.size());
  return std::string(m);
}

std::string path_of(const sd::object_report& r) {
  return fmt::format("{}/{}", sd::shm_directory, r.file);
}

// The fields ls and inspect share, as members of the JSON object being written.
void json_fields(json_writer& j, const sd::object_report& r, const attachments& att) {
  j.key("name").str(r.name);
  j.key("file").str(path_of(r));
  j.key("status").str(sd::status_name(r.status));
  j.key("problem").str(r.problem);
  if (has_kind(r)) {
    j.key("kind").str(sd::kind_name(r.header.kind));
    j.key("type").str(r.header.type_name);
    j.key("payload_size").unum(r.header.payload_size);
  } else {
    j.key("kind").null();
    j.key("type").null();
    j.key("payload_size").null();
  }
  if (r.stat_known) {
    j.key("size").unum(r.file_size);
    j.key("mode").str(fmt::format("{:04o}", r.mode));
    j.key("owner_uid").unum(r.owner);
  } else {
    j.key("size").null();
    j.key("mode").null();
    j.key("owner_uid").null();
  }
  j.key("creator").open('{');
  if (r.creator_known) {
    j.key("pid").num(sd::identity_pid(r.header.creator));
    j.key("alive").boolean(r.creator_alive);
  } else {
    j.key("pid").null();
    j.key("alive").null();
  }
  j.close('}');
  const auto* pids = att.of(r);
  j.key("attached").open('{');
  j.key("count").unum(pids ? pids->size() : 0);
  j.key("pids").open('[');
  if (pids)
    for (pid_t p : *pids) j.num(p);
  j.close(']');
  j.close('}');
  if (has_kind(r) && r.header.created_ns > 0) {
    j.key("created").str(time_text(r.header.created_ns, true));
    j.key("created_ns").num(r.header.created_ns);
  } else {
    j.key("created").null();
    j.key("created_ns").null();
  }
  j.key("details").open('{');
  for (const auto& [k, v] : r.details) j.key(k).str(v);
  j.close('}');
  if (r.details_problem.empty())
    j.key("details_problem").null();
  else
    j.key("details_problem").str(r.details_problem);
}

// Left-aligned columns, widths from the longest cell.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (std::size_t i = 0; i + 1 < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i)
      line += i + 1 < row.size() ? fmt::format("{:<{}}  ", row[i], width[i]) : row[i];
    std::puts(line.c_str());
  }
}

// Every report in /dev/shm whose name matches one of the patterns (all when none given).
std::vector<sd::object_report> reports(const std::vector<std::string>& patterns) {
  std::vector<sd::object_report> out;
  for (const std::string& file : sd::shm_file_names()) {
    const std::string name = file.substr(shmkit::name_prefix.size());
    bool match = patterns.empty();
    for (const auto& p : patterns) match = match || ::fnmatch(p.c_str(), name.c_str(), 0) == 0;
    if (!match) continue;
    sd::object_report r = sd::inspect_file(file);
    if (r.status != sd::object_status::missing) out.push_back(std::move(r));  // gone meanwhile
  }
  return out;
}

std::string unreadable_note(const attachments& att) {
  if (att.unreadable < 0) return "/proc could not be read: attached processes are unknown";
  return fmt::format(
      "the memory maps of {} could not be read (not permitted): attached "
      "processes are those of the others",
      processes(static_cast<std::size_t>(att.unreadable)));
}

// --- verbs ---------------------------------------------------------------------------------

int cmd_ls(const args& a) {
  const auto all = reports(a.positional);
  const attachments att = scan_attachments();
  if (a.json) {
    json_writer j;
    j.open('{');
    j.key("directory").str(sd::shm_directory);
    j.key("maps_complete").boolean(att.unreadable == 0);
    j.key("maps_unreadable").num(att.unreadable);
    j.key("objects").open('[');
    for (const auto& r : all) {
      j.open('{');
      json_fields(j, r, att);
      j.close('}');
    }
    j.close(']').close('}');
    std::puts(j.text().c_str());
    return exit_ok;
  }
  if (all.empty()) {
    std::printf("no shmkit objects in %s%s\n", std::string(sd::shm_directory).c_str(),
                a.positional.empty() ? "" : " match");
    return exit_ok;
  }
  std::vector<std::vector<std::string>> rows{
      {"NAME", "KIND", "TYPE", "SIZE", "CREATOR", "ATTACHED", "CREATED", "STATUS"}};
  for (const auto& r : all) {
    const auto* pids = att.of(r);
    const std::string attached =
        pids ? fmt::format("{} ({})", pids->size(), pid_list(*pids, ",")) : "0";
    rows.push_back({r.name, has_kind(r) ? sd::kind_name(r.header.kind) : "-",
                    has_kind(r) ? r.header.type_name : "-",
                    r.stat_known ? human_size(r.file_size) : "-", creator_text(r), attached,
                    has_kind(r) ? time_text(r.header.created_ns, false) : "-", status_text(r)});
  }
  print_table(rows);
  if (att.unreadable != 0) std::printf("note: %s\n", unreadable_note(att).c_str());
  return exit_ok;
}

// Checks a NAME argument; prints why it is invalid and returns false.
bool valid_name_arg(std::string_view verb, const std::string& name) {
  try {
    shmkit::validate_name(name);
    return true;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "shmkit %s: %s\n", std::string(verb).c_str(), message_of(e).c_str());
    return false;
  }
}

bool is_problem(sd::object_status s) {
  return s != sd::object_status::ok && s != sd::object_status::building &&
         s != sd::object_status::abandoned;
}

std::string permission_hint(const sd::object_report& r) {
  if (!r.stat_known) return {};
  return fmt::format(" (owned by uid {}, mode {:04o}; you are uid {})", r.owner, r.mode,
                     ::geteuid());
}

int cmd_inspect(const args& a) {
  if (a.positional.size() != 1)
    throw usage_error("shmkit inspect: give exactly one NAME (see shmkit inspect --help)");
  const std::string& name = a.positional[0];
  if (!valid_name_arg("inspect", name)) return exit_failed;
  const sd::object_report r = sd::inspect_file(fmt::format("{}{}", shmkit::name_prefix, name));
  if (r.status == sd::object_status::missing) {
    std::fprintf(stderr, "shmkit inspect: no object named '%s' (%s)\n", name.c_str(),
                 path_of(r).c_str());
    return exit_failed;
  }
  const attachments att = scan_attachments();
  const auto* pids = att.of(r);
  const auto& h = r.header;
  if (a.json) {
    json_writer j;
    j.open('{');
    json_fields(j, r, att);
    j.key("maps_complete").boolean(att.unreadable == 0);
    j.key("header");
    if (r.has_header) {
      j.open('{');
      j.key("ready").unum(h.ready).key("magic").unum(h.magic).key("version").unum(h.version);
      j.key("kind").unum(h.kind).key("type_hash").str(fmt::format("{:#018x}", h.type_hash));
      j.key("total_size").unum(h.total_size).key("payload_offset").unum(h.payload_offset);
      j.key("payload_size").unum(h.payload_size);
      j.key("creator").str(fmt::format("{:#018x}", h.creator));
      j.key("created_ns").num(h.created_ns).key("header_size").unum(h.header_size);
      j.key("pointer_size").unum(h.pointer_size).key("type_name").str(h.type_name);
      j.key("mapped_size").unum(h.mapped_size);
      j.close('}');
    } else {
      j.null();
    }
    j.close('}');
    std::puts(j.text().c_str());
  } else {
    std::vector<std::vector<std::string>> rows{
        {"name", r.name}, {"file", path_of(r)}, {"status", std::string(sd::status_name(r.status))}};
    if (!r.problem.empty()) rows.push_back({"problem", r.problem});
    if (has_kind(r)) {
      rows.push_back({"kind", sd::kind_name(h.kind)});
      rows.push_back({"element type", h.type_name});
    }
    if (r.stat_known) {
      rows.push_back({"size", fmt::format("{} bytes ({})", r.file_size, human_size(r.file_size))});
      rows.push_back({"owner", fmt::format("uid {}, mode {:04o}", r.owner, r.mode)});
    }
    if (r.creator_known)
      rows.push_back({"creator", fmt::format("pid {}, {}", sd::identity_pid(h.creator),
                                             r.creator_alive ? "alive" : "dead")});
    rows.push_back(
        {"attached", pids ? fmt::format("{}: {}", processes(pids->size()), pid_list(*pids, " "))
                          : "no process maps it"});
    if (has_kind(r))
      rows.push_back({"created", fmt::format("{} (local time)", time_text(h.created_ns, false))});
    for (const auto& [k, v] : r.details) rows.push_back({k, v});
    if (!r.details_problem.empty())
      rows.push_back({"details", "unavailable: " + r.details_problem});
    if (r.has_header) {
      rows.push_back({"header", ""});
      auto field = [&](std::string_view k, std::string v) {
        rows.push_back({fmt::format("  {}", k), std::move(v)});
      };
      field("ready", fmt::format("{:#010x} ({})", h.ready,
                                 h.ready == sd::ready_word ? "published" : "not published"));
      field("magic", fmt::format("{:#010x}", h.magic));
      field("version", fmt::format("{}", h.version));
      field("kind", fmt::format("{} ({})", h.kind, sd::kind_name(h.kind)));
      field("type_hash", fmt::format("{:#018x}", h.type_hash));
      field("total_size", fmt::format("{}", h.total_size));
      field("payload_offset", fmt::format("{}", h.payload_offset));
      field("payload_size", fmt::format("{}", h.payload_size));
      field("creator", fmt::format("{:#018x} (pid {}, start ticks {})", h.creator,
                                   sd::identity_pid(h.creator), h.creator & 0xffffffffu));
      field("created_ns", fmt::format("{}", h.created_ns));
      field("header_size", fmt::format("{}", h.header_size));
      field("pointer_size", fmt::format("{}", h.pointer_size));
      field("type_name", h.type_name);
      field("mapped_size", fmt::format("{}", h.mapped_size));
    }
    print_table(rows);
    if (att.unreadable != 0) std::printf("note: %s\n", unreadable_note(att).c_str());
  }
  if (!is_problem(r.status)) return exit_ok;
  std::fprintf(stderr, "shmkit inspect: '%s' is %s: %s%s\n", name.c_str(),
               std::string(sd::status_name(r.status)).c_str(), r.problem.c_str(),
               r.status == sd::object_status::unreadable ? permission_hint(r).c_str() : "");
  return exit_failed;
}

int cmd_rm(const args& a) {
  if (a.positional.empty())
    throw usage_error("shmkit rm: give at least one NAME (see shmkit rm --help)");
  int status = exit_ok;
  for (const std::string& name : a.positional) {
    if (!valid_name_arg("rm", name)) {
      status = exit_failed;
      continue;
    }
    const sd::object_report r = sd::inspect_file(fmt::format("{}{}", shmkit::name_prefix, name));
    if (r.status == sd::object_status::missing) {
      std::fprintf(stderr, "shmkit rm: no object named '%s' (%s)\n", name.c_str(),
                   path_of(r).c_str());
      status = exit_failed;
      continue;
    }
    if (r.status == sd::object_status::foreign && !a.force) {
      std::fprintf(stderr, "shmkit rm: '%s' is not removed: %s (--force removes it anyway)\n",
                   name.c_str(), r.problem.c_str());
      status = exit_failed;
      continue;
    }
    const std::string what = has_kind(r)
                                 ? fmt::format("{} '{}'", sd::kind_name(r.header.kind), name)
                                 : fmt::format("'{}' ({})", name, sd::status_name(r.status));
    if (a.dry_run) {
      std::printf("would remove %s\n", what.c_str());
      continue;
    }
    try {
      if (shmkit::remove(name)) {
        std::printf("removed %s\n", what.c_str());
      } else {
        std::fprintf(stderr, "shmkit rm: no object named '%s' (removed meanwhile)\n", name.c_str());
        status = exit_failed;
      }
    } catch (const shmkit::error& e) {  // a name that exists but may not be removed
      std::fprintf(stderr, "shmkit rm: %s%s\n", message_of(e).c_str(), permission_hint(r).c_str());
      status = exit_failed;
    }
  }
  return status;
}

// Whether gc removes an object, and why (or why not).
struct gc_verdict {
  bool remove;
  std::string why;
};

gc_verdict judge(const sd::object_report& r, const attachments& att) {
  using st = sd::object_status;
  if (r.status == st::foreign || r.status == st::incompatible || r.status == st::corrupted ||
      r.status == st::unreadable)
    return {false, fmt::format("{}: {} (gc removes only objects it can read; see shmkit rm)",
                               sd::status_name(r.status), r.problem)};
  if (const auto* pids = att.of(r))
    return {false, fmt::format("mapped by {}: {}", processes(pids->size()), pid_list(*pids, " "))};
  const uid_t me = ::geteuid();
  if (me != 0 && r.owner != me) return {false, fmt::format("owned by uid {}, not you", r.owner)};
  if (att.unreadable != 0 && (r.mode & 077) != 0)
    return {false,
            fmt::format("others may map it (mode {:04o}) and {}", r.mode, unreadable_note(att))};
  if (r.creator_known && r.creator_alive)
    return {false,
            fmt::format("its creator (pid {}) is alive", sd::identity_pid(r.header.creator))};
  if (r.status == st::building) return {false, r.problem};
  if (r.status == st::abandoned) return {true, r.problem + ", and no process maps it"};
  if (!r.creator_known) return {false, "its creator is not recorded"};
  return {true, fmt::format("its creator (pid {}) is dead and no process maps it",
                            sd::identity_pid(r.header.creator))};
}

int cmd_gc(const args& a) {
  const auto all = reports(a.positional);
  const attachments att = scan_attachments();
  int removed = 0, kept = 0, status = exit_ok;
  for (const auto& r : all) {
    const gc_verdict v = judge(r, att);
    if (!v.remove) {
      ++kept;
      if (a.verbose) std::printf("kept '%s': %s\n", r.name.c_str(), v.why.c_str());
      continue;
    }
    if (a.dry_run) {
      ++removed;
      std::printf("would remove '%s': %s\n", r.name.c_str(), v.why.c_str());
      continue;
    }
    try {
      if (shmkit::remove(r.name)) {
        ++removed;
        std::printf("removed '%s': %s\n", r.name.c_str(), v.why.c_str());
      }
    } catch (const shmkit::error& e) {
      std::fprintf(stderr, "shmkit gc: %s%s\n", message_of(e).c_str(), permission_hint(r).c_str());
      status = exit_failed;
    }
  }
  std::printf("gc: %s %d, kept %d\n", a.dry_run ? "would remove" : "removed", removed, kept);
  return status;
}

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(main_help.data(), stderr);
    return exit_usage;
  }
  const std::string_view verb = argv[1];
  struct verb_entry {
    std::string_view name;
    std::string_view help;
    int (*fn)(const args&);
    std::initializer_list<std::string_view> flags;
  };
  static const verb_entry verbs[] = {
      {"ls", ls_help, &cmd_ls, {"--json"}},
      {"inspect", inspect_help, &cmd_inspect, {"--json"}},
      {"rm", rm_help, &cmd_rm, {"--dry-run", "-n", "--force", "-f"}},
      {"gc", gc_help, &cmd_gc, {"--dry-run", "-n", "--verbose", "-v"}},
  };
  if (verb == "-h" || verb == "--help" || verb == "help") {
    if (verb == "help" && argc > 2) {
      for (const auto& v : verbs)
        if (v.name == argv[2]) {
          std::fputs(v.help.data(), stdout);
          return exit_ok;
        }
      throw usage_error(fmt::format("shmkit help: no verb '{}'", argv[2]));
    }
    std::fputs(main_help.data(), stdout);
    return exit_ok;
  }
  for (const auto& v : verbs) {
    if (v.name != verb) continue;
    const args a = parse(verb, argc - 2, argv + 2, v.flags);
    if (a.help) {
      std::fputs(v.help.data(), stdout);
      return exit_ok;
    }
    return v.fn(a);
  }
  throw usage_error(fmt::format("shmkit: unknown verb '{}' (see shmkit --help)", verb));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return exit_usage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shmkit: %s\n", message_of(e).c_str());
    return exit_failed;
  }
}
