// SPDX-License-Identifier: MIT
// bench/report, run on rows these tests write (the shape bench/harness.hpp emits, sweeps
// included, plus lines that are not rows): the Markdown it writes and the charts gnuplot
// draws. Skipped when gnuplot is not installed (the report itself installs it; a test must
// not).
#define BOOST_TEST_MODULE bench report
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

struct tmp_dir {
  fs::path path;
  tmp_dir() {
    std::string t = (fs::temp_directory_path() / "shmkit-report-test-XXXXXX").string();
    BOOST_REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~tmp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

bool is_png(const fs::path& p) { return read(p).rfind("\x89PNG\r\n", 0) == 0; }

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// Runs bench/report --from rows --out dir; returns the exit status, stderr in `err`.
int report(const fs::path& rows, const fs::path& out, std::string& err) {
  const fs::path err_file = out / "stderr.txt";
  const std::string cmd =
      fmt::format("'{}/bench/report' --no-install --from '{}' --out '{}' >/dev/null 2>'{}'",
                  SHMKIT_SOURCE_DIR, rows.string(), out.string(), err_file.string());
  const int status = std::system(cmd.c_str());
  err = read(err_file);
  BOOST_TEST_MESSAGE(cmd << " -> " << status << "\n" << err);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string row(std::string_view suite, std::string_view name, std::string_view unit, bool lower,
                double shmkit, std::string_view baseline, double value) {
  const double ratio = lower ? value / shmkit : shmkit / value;
  return fmt::format(
      R"({{"suite":"{}","case":"{}","unit":"{}","better":"{}","shmkit":{},"baseline":"{}",)"
      R"("baseline_value":{},"ratio":{}}})"
      "\n",
      suite, name, unit, lower ? "lower" : "higher", shmkit, baseline, value, ratio);
}

boost::test_tools::assertion_result gnuplot_installed(boost::unit_test::test_unit_id) {
  boost::test_tools::assertion_result r(have_gnuplot());
  r.message() << "gnuplot is not installed (bench/report installs it when run)";
  return r;
}

}  // namespace

BOOST_AUTO_TEST_CASE(sweeps_tables_and_charts, *boost::unit_test::precondition(gnuplot_installed)) {
  tmp_dir dir;
  std::string rows;
  for (const char* payload : {"8B", "64B", "1KiB", "64KiB", "1MiB"}) {
    const double bytes = std::string(payload) == "8B"      ? 8
                         : std::string(payload) == "64B"   ? 64
                         : std::string(payload) == "1KiB"  ? 1024
                         : std::string(payload) == "64KiB" ? 65536
                                                           : 1048576;
    const std::string lat = fmt::format("queue ping-pong p50 | payload={}", payload);
    rows +=
        row("queue", lat, "us per round trip", true, 0.5 + bytes / 4e3, "pipe(2)", 8 + bytes / 1e3);
    rows += row("queue", lat, "us per round trip", true, 0.5 + bytes / 4e3, "mq_send(3)",
                5 + bytes / 2e3);
    rows += row("queue", fmt::format("queue throughput | msg={}", payload), "MB/s", false,
                bytes * 10, "pipe(2)", bytes * 3);
  }
  for (int w = 1; w <= 3; ++w)
    rows += row("pool", fmt::format("pool map | workers={}", w), "tasks/s", false, 900.0 * w,
                "python multiprocessing.Pool", 200.0 * w);
  rows += row("pool", R"(odd \"case\" with | a bar, no sweep)", "ops/s", false, 4, "a|b", 2);
  rows += "not json at all\n[1, 2]\n";
  const fs::path jsonl = dir.path / "rows.jsonl";
  std::ofstream(jsonl) << rows;
  const fs::path out = dir.path / "docs";
  fs::create_directories(out / "img");
  std::ofstream(out / "img" / "bench-stale.png") << "old chart";
  std::ofstream(out / "img" / "logo.png") << "not the report's";

  std::string err;
  BOOST_REQUIRE_EQUAL(report(jsonl, out, err), 0);
  BOOST_TEST(contains(err, "skipped, not a row"));
  const std::string md = read(out / "BENCHMARKS.md");
  BOOST_TEST(contains(md, "## Machine"));
  BOOST_TEST(contains(md, "| kernel | Linux"));
  BOOST_TEST(contains(md, "| CPU |"));
  BOOST_TEST(contains(md, "## queue"));
  BOOST_TEST(contains(md, "## pool"));
  BOOST_TEST(contains(md, "| case | unit | shmkit | baseline | figure | ratio |"));
  // The bar of a case name is escaped, so the table keeps its six columns.
  BOOST_TEST(contains(md,
                      "| queue ping-pong p50 \\| payload=64B | us per round trip (lower is "
                      "better) | 0.516 | pipe(2) | 8.06 | 15.6x |"));
  BOOST_TEST(contains(md, "| odd \"case\" with \\| a bar, no sweep |"));
  BOOST_TEST(contains(md, "| a\\|b | 2.00 | 2x |"));
  for (const char* chart : {"headline", "latency", "throughput", "speedup"}) {
    const fs::path png = out / "img" / fmt::format("bench-{}.png", chart);
    BOOST_TEST(is_png(png), png);
    BOOST_TEST(contains(md, fmt::format("(img/bench-{}.png)", chart)));
  }
  BOOST_TEST(!fs::exists(out / "img" / "bench-stale.png"));
  BOOST_TEST(fs::exists(out / "img" / "logo.png"));
}

BOOST_AUTO_TEST_CASE(rows_without_sweeps_give_tables_and_headline,
                     *boost::unit_test::precondition(gnuplot_installed)) {
  tmp_dir dir;
  const fs::path jsonl = dir.path / "rows.jsonl";
  std::ofstream(jsonl) << row("foundation", "wait-layer ping-pong round trip, pinned",
                              "us per round trip", true, 0.6, "pipe(2)", 9)
                       << row("foundation", "segment create+open+remove (4 KiB)", "cycles/s", false,
                              6500, "boost::interprocess shm object", 14700)
                       << R"({"suite":"foundation","case":"no baseline","unit":"x",)"
                          R"("better":"higher","shmkit":3,"baseline":"","baseline_value":null,)"
                          R"("ratio":0})"
                       << "\n";
  std::string err;
  BOOST_REQUIRE_EQUAL(report(jsonl, dir.path, err), 0);
  const std::string md = read(dir.path / "BENCHMARKS.md");
  BOOST_TEST(contains(md, "| 0.600 | pipe(2) | 9.00 | 15x |"));
  BOOST_TEST(contains(md, "| 6500 | boost::interprocess shm object | 14700 | 0.442x |"));
  BOOST_TEST(contains(md, "| no baseline | x (higher is better) | 3.00 | — | — | n/a |"));
  BOOST_TEST(!contains(md, "## Sweeps"));
  BOOST_TEST(is_png(dir.path / "img" / "bench-headline.png"));
}

BOOST_AUTO_TEST_CASE(no_rows_is_an_error, *boost::unit_test::precondition(gnuplot_installed)) {
  tmp_dir dir;
  const fs::path jsonl = dir.path / "rows.jsonl";
  std::ofstream(jsonl) << "\n";
  std::string err;
  BOOST_TEST(report(jsonl, dir.path, err) == 1);
  BOOST_TEST(contains(err, "no benchmark rows"));
  BOOST_TEST(!fs::exists(dir.path / "BENCHMARKS.md"));
}
