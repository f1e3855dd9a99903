// SPDX-License-Identifier: MIT
// mpi_pool's runtime: rank 0's result thread and the worker ranks' serving loop. See
// mpi_pool.hpp for the contract.
//
// Protocol, on a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN:
//   task    rank 0 -> worker   a task pack: an 8-byte length, the codec bytes of the pack's
//                              function table (entries and functions as portable addresses
//                              (module, offset), so ASLR may differ between ranks), then per
//                              task a task_record (id, entry and function as indexes into the
//                              table, payload size) and the task's payload as it is
//   result  worker -> rank 0   a result pack: per outcome a result_record (id, kind, pid,
//                              size) and its payload: the result (ok), an encoded
//                              task_failure (failed), or the local pool's worker_lost_error
//                              message as an encoded string (lost)
//   stop    rank 0 -> worker   stop_msg: how many tasks rank 0 sent this rank in all, and
//                              whether to drop those not yet started (terminate)
//   bye     worker -> rank 0   empty: the worker's last message; every send of both sides is
//                              complete, so MPI_Finalize has nothing left to wait for
// Neither side copies a payload to decode it.
//
// Rank 0 keeps a window of tasks on each worker rank: its capacity (local processes x
// tasks_in_flight, gathered when the pool starts), or, for tasks that are short next to the
// trip through MPI, as many as the rank completes in about window_work (its completion rate,
// measured from its result packs), at most max_window tasks, and tasks beyond the capacity
// only while the rank holds less than max_window_bytes of them. Whenever a rank has room,
// what is pending goes to it in one pack (up to pack_bytes): tasks submitted one at a time
// travel together when a group of results opens room for them, and a task submitted while
// the pipe is idle leaves at once, alone (Nagle's coalescing without his delay). A worker
// rank hands each pack to its local shmkit::pool as task batches (one per run of tasks with
// the same entry and function; the local workers run them as rank 0 sent them), whose result
// thread appends the outcomes to the result pack being filled (outbox); the serving thread
// sends what has gathered each time it wakes, and makes every MPI call. Without a local pool
// the rank runs the tasks itself, one after another, probing for stop between bursts of at
// most 100 us. A stop message overtakes queued tasks (it is probed by its own tag before each
// task pack), and its count tells the worker how many tasks it must still receive before it
// may leave; with `drop` (terminate) the rank terminates its local pool, whose tasks then
// fail unsent (without one, it drops the tasks it has not started). The rank says bye once
// every task received has an outcome and every send is complete, after its local pool's
// workers have left. MPI's order between one sender and one receiver on one communicator
// makes `bye` arrive after that worker's last result.
#include "shmkit/mpi_pool.hpp"

// The C API only, not the deprecated C++ bindings mpi.h would otherwise bring in.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <fmt/format.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>

#include "shmkit/detail/throw_trace.hpp"
#include "shmkit/process.hpp"

namespace shmkit::detail {
namespace {

using namespace std::chrono_literals;

constexpr const char* who = "shmkit::mpi_pool";

constexpr int tag_task = 1;
constexpr int tag_result = 2;
constexpr int tag_stop = 3;
constexpr int tag_bye = 4;

// A pack (task or result message) closes once it holds this many bytes; a larger task or
// result travels alone.
constexpr std::size_t pack_bytes = 256 * 1024;
// The window of tasks on a rank (see the head of this file): about this much of its work...
constexpr double window_work_seconds = 2e-3;
// ... at most this many tasks...
constexpr std::size_t max_window = 16384;
// ... and tasks beyond the rank's capacity only while it holds fewer bytes of tasks than this.
constexpr std::size_t max_window_bytes = 16u << 20;
// A rank's completion rate is measured over periods of at least this long, and forgotten
// when the rank has had no task for this long (other tasks may take longer).
constexpr auto rate_period = 200us;
constexpr auto rate_forget = 5ms;

// How a task ended on its worker rank.
enum class outcome_kind : std::uint8_t {
  ok = 0,      // the payload is the result
  failed = 1,  // the task threw: the payload is an encoded task_failure
  lost = 2,    // the local process running it died: the payload is an encoded message
};

// A task in a task pack, followed by its payload. Every rank runs the same program, so the
// records travel as raw bytes.
struct task_record {
  std::uint64_t id = 0;
  std::uint32_t entry = 0;  // index into the pack's function table
  std::uint32_t fn = 0;     // 1 + index into the table; 0: f is not a function pointer
  std::uint64_t bytes = 0;  // of the payload
};
// An outcome in a result pack, followed by its payload.
struct result_record {
  std::uint64_t id = 0;
  std::int64_t pid = 0;     // the process that ran the task; 0: the rank's
  std::uint64_t bytes = 0;  // of the payload
  std::uint64_t kind = 0;   // an outcome_kind
};
static_assert(std::is_trivially_copyable_v<task_record> && sizeof(task_record) == 24);
static_assert(std::is_trivially_copyable_v<result_record> && sizeof(result_record) == 32);

// What a worker rank reports to rank 0 when it starts.
struct rank_info {
  int pid = 0;
  int processes = 1;  // processes running tasks at once
  int capacity = 1;   // tasks (chunks) rank 0 may keep on the rank
};
static_assert(sizeof(rank_info) == 3 * sizeof(int));
// Where the launcher's environment already says, before MPI_Init, which rank this process
// will be and how many ranks share its node: Open MPI's mpirun and MPICH's Hydra say so.
struct launch_env {
  int rank = -1;
  int node_ranks = 0;  // 0: unknown
  int node_rank = -1;
};

std::optional<launch_env> launcher_env() {
  auto number = [](const char* name) -> std::optional<int> {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return std::nullopt;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < 0 || n > INT_MAX) return std::nullopt;
    return static_cast<int>(n);
  };
  static constexpr const char* names[][3] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"PMI_RANK", "MPI_LOCALNRANKS", "MPI_LOCALRANKID"}};
  for (const auto& n : names) {
    auto rank = number(n[0]);
    if (!rank) continue;
    launch_env e;
    e.rank = *rank;
    auto size = number(n[1]);
    auto local = number(n[2]);
    if (size && local && *local < *size) {
      e.node_ranks = *size;
      e.node_rank = *local;
    }
    return e;
  }
  return std::nullopt;
}

// Default size of a worker rank's local pool: the node's CPUs shared among the worker ranks on
// it, and no more than the CPUs this rank may run on (mpirun may have bound it to a few).
int default_local_processes(int worker_ranks_on_node) {
  const int mine = cpu_count();  // the rank's affinity mask
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  const int node = online > 0 ? static_cast<int>(std::min<long>(online, INT_MAX)) : mine;
  return std::max(1, std::min(mine, node / std::max(1, worker_ranks_on_node)));
}

struct stop_msg {
  std::uint64_t tasks_sent = 0;
  bool drop = false;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(tasks_sent, drop);
  }
};

// An MPI call of the pool failed: the pool cannot go on.
class mpi_failure : public error {
 public:
  using error::error;
};

int world_rank() noexcept {
  int r = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

std::string mpi_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(text, static_cast<std::size_t>(len));
}

void check(int rc, const char* call) {
  if (rc != MPI_SUCCESS)
    throw mpi_failure(fmt::format("shmkit::mpi_pool: {} failed on rank {}: {}", call, world_rank(),
                                  mpi_text(rc)));
}

const char* level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
    default:
      return "an unknown level";
  }
}

// Appends a record and its payload to a pack.
template <class Record>
void append_record(std::vector<std::byte>& out, const Record& r,
                   std::span<const std::byte> payload) {
  const std::size_t at = out.size();
  out.resize(at + sizeof r + payload.size());
  std::memcpy(out.data() + at, &r, sizeof r);
  if (!payload.empty()) std::memcpy(out.data() + at + sizeof r, payload.data(), payload.size());
}

// Walks a pack's records from byte `at` on: each record, and where its payload starts.
template <class Record>
class record_reader {
 public:
  record_reader(std::span<const std::byte> in, std::size_t at) : in_(in), at_(at) {}
  bool next(Record& r, std::size_t& payload_at) {
    if (at_ == in_.size()) return false;
    if (in_.size() - at_ < sizeof r)
      throw error(
          fmt::format("shmkit::mpi_pool: a pack of {} bytes ends inside a record at "
                      "byte {}",
                      in_.size(), at_));
    std::memcpy(&r, in_.data() + at_, sizeof r);
    at_ += sizeof r;
    if (r.bytes > in_.size() - at_)
      throw error(
          fmt::format("shmkit::mpi_pool: a record claims a payload of {} bytes with "
                      "{} left in its pack",
                      r.bytes, in_.size() - at_));
    payload_at = at_;
    at_ += r.bytes;
    return true;
  }

 private:
  std::span<const std::byte> in_;
  std::size_t at_;
};

// The function table at the head of a task pack, and where its records start.
std::pair<std::vector<portable_address>, std::size_t> read_table(std::span<const std::byte> in) {
  std::uint64_t hs = 0;
  if (in.size() < sizeof hs || (std::memcpy(&hs, in.data(), sizeof hs), hs > in.size() - sizeof hs))
    throw error(
        fmt::format("shmkit::mpi_pool: a task pack of {} bytes has no function table", in.size()));
  return {decode<std::vector<portable_address>>(in.subspan(sizeof hs, hs)), sizeof hs + hs};
}

// How an exception that ended a task travels: lost (the local pool lost the process that ran
// it) or failed (an encoded task_failure).
std::pair<outcome_kind, std::vector<std::byte>> failure_outcome(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const worker_lost_error& x) {
    return {outcome_kind::lost, encode(std::string(x.what()))};
  } catch (const std::exception& x) {
    return {outcome_kind::failed, encode(task_failure{demangle(typeid(x).name()), x.what()})};
  } catch (...) {
    return {outcome_kind::failed,
            encode(task_failure{current_exception_type_name(), "(not a std::exception)"})};
  }
}

// A task as a worker rank received it: its payload is bytes [at, at + bytes) of its pack.
struct forwarded_task {
  std::uint64_t id = 0;
  std::size_t at = 0;
  std::size_t bytes = 0;
};

// A worker rank's outcomes not yet sent, as result packs: the local pool's result thread (or
// the serving thread) adds, the serving thread takes each pack and sends it as one message.
class outbox {
 public:
  struct pack {
    std::vector<std::byte> bytes;
    std::size_t count = 0;  // outcomes
  };

  void add(std::uint64_t id, outcome_kind kind, std::int64_t pid,
           std::span<const std::byte> payload) {
    {
      std::lock_guard lk(m_);
      add_locked(id, kind, pid, payload);
    }
    cv_.notify_one();
  }
  void add_failure(std::uint64_t id, std::exception_ptr e) {
    auto [kind, bytes] = failure_outcome(std::move(e));
    add(id, kind, kind == outcome_kind::lost ? 0 : ::getpid(), bytes);
  }
  // The local pool's outcomes of tasks[o.index] for each o.
  void add_all(std::span<const task_outcome> outcomes, const std::vector<forwarded_task>& tasks) {
    {
      std::lock_guard lk(m_);
      for (const auto& o : outcomes) {
        const std::uint64_t id = tasks[o.index].id;
        if (o.error) {
          auto [kind, bytes] = failure_outcome(o.error);
          add_locked(id, kind, kind == outcome_kind::lost ? 0 : ::getpid(), bytes);
        } else {
          add_locked(id, o.ok ? outcome_kind::ok : outcome_kind::failed, o.pid, o.bytes);
        }
      }
    }
    cv_.notify_one();
  }
  std::vector<pack> take() {
    std::vector<pack> out;
    std::lock_guard lk(m_);
    out.swap(packs_);
    // relaxed: a hint for ready(); the packs themselves are read under m_.
    ready_.store(false, std::memory_order_relaxed);
    return out;
  }
  // Whether an outcome waits (a hint, without the lock).
  bool ready() const noexcept { return ready_.load(std::memory_order_relaxed); }
  // Waits up to `d` for an outcome.
  void wait_for(std::chrono::microseconds d) {
    std::unique_lock lk(m_);
    cv_.wait_for(lk, d, [&] { return !packs_.empty(); });
  }

 private:
  void add_locked(std::uint64_t id, outcome_kind kind, std::int64_t pid,
                  std::span<const std::byte> payload) {
    std::vector<std::byte> too_large;
    if (payload.size() > static_cast<std::size_t>(INT_MAX) - sizeof(result_record)) {
      kind = outcome_kind::failed;
      too_large = encode(task_failure{
          "shmkit::error",
          fmt::format("shmkit::mpi_pool: a result of {} bytes exceeds MPI's limit of {} bytes "
                      "per message; use a smaller chunksize",
                      payload.size(), INT_MAX)});
      payload = too_large;
    }
    if (packs_.empty() ||
        (packs_.back().count != 0 &&
         packs_.back().bytes.size() + sizeof(result_record) + payload.size() > pack_bytes))
      packs_.emplace_back();
    append_record(packs_.back().bytes,
                  result_record{id, pid, payload.size(), static_cast<std::uint64_t>(kind)},
                  payload);
    ++packs_.back().count;
    // relaxed: a hint for ready(); the packs themselves are read under m_.
    ready_.store(true, std::memory_order_relaxed);
  }

  std::mutex m_;
  std::atomic<bool> ready_{false};  // process-local, not in shared memory
  static_assert(std::atomic<bool>::is_always_lock_free);
  std::condition_variable cv_;
  std::vector<pack> packs_;
};

// Tasks of one task pack with the same entry and function, as a batch for the rank's local
// pool (or the rank itself): the local workers run them as rank 0 sent them (the entry and
// function translated to this program image's addresses, valid in the workers, which are
// forked from the rank), and their outcomes go to the outbox.
class forwarded_batch final : public task_batch {
 public:
  forwarded_batch(task_entry entry, std::uint64_t fn,
                  std::shared_ptr<const std::vector<std::byte>> pack,
                  std::vector<forwarded_task> tasks, std::shared_ptr<outbox> out)
      : task_batch(entry, fn, tasks.size()),
        pack_(std::move(pack)),
        tasks_(std::move(tasks)),
        out_(std::move(out)) {}

  void payload(std::size_t i, std::vector<std::byte>& out) const override {
    const auto& t = tasks_[i];
    out.assign(pack_->begin() + static_cast<std::ptrdiff_t>(t.at),
               pack_->begin() + static_cast<std::ptrdiff_t>(t.at + t.bytes));
  }
  void deliver(std::span<const task_outcome> outcomes) noexcept override {
    try {
      out_->add_all(outcomes, tasks_);
    } catch (const std::exception& e) {  // out of memory: the rank cannot keep its promise
      std::fprintf(stderr, "shmkit::mpi_pool: cannot keep a task's outcome: %s\n", e.what());
      std::fflush(stderr);
      std::abort();
    }
  }
  const std::vector<forwarded_task>& tasks() const noexcept { return tasks_; }

 private:
  std::shared_ptr<const std::vector<std::byte>> pack_;
  std::vector<forwarded_task> tasks_;
  std::shared_ptr<outbox> out_;
};

// A worker rank's local shmkit::pool, driven through its runtime (it takes the forwarded
// batches as they are); terminated when dropped, as shmkit::pool's destructor does.
struct local_pool {
  explicit local_pool(int processes)
      : rt(pool_runtime::start(pool_options{.processes = processes})) {}
  ~local_pool() { rt->terminate(); }
  local_pool(const local_pool&) = delete;
  local_pool& operator=(const local_pool&) = delete;
  std::shared_ptr<pool_runtime> rt;
};
// MPI counts are ints: a message must stay below 2 GiB.
void check_message_size(std::size_t bytes, const char* what) {
  if (bytes > static_cast<std::size_t>(INT_MAX))
    throw error(
        fmt::format("shmkit::mpi_pool: {} of {} bytes exceeds MPI's limit of {} bytes per "
                    "message; use a smaller chunksize",
                    what, bytes, INT_MAX));
}

struct message {
  int source = -1;
  int tag = -1;
  std::vector<std::byte> bytes;
};

// The next message from `source` with `tag`, if one has arrived.
std::optional<message> try_receive(MPI_Comm comm, int source, int tag) {
  int flag = 0;
  MPI_Message handle;
  MPI_Status status;
  check(MPI_Improbe(source, tag, comm, &flag, &handle, &status), "MPI_Improbe");
  if (flag == 0) return std::nullopt;
  int count = 0;
  check(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count");
  message m{status.MPI_SOURCE, status.MPI_TAG, std::vector<std::byte>(count)};
  check(MPI_Mrecv(m.bytes.data(), count, MPI_BYTE, &handle, MPI_STATUS_IGNORE), "MPI_Mrecv");
  return m;
}

// Polling for MPI messages without a blocking receive (Open MPI's spins a core at 100%): a
// few polls back to back, then naps that double from 16 us up to 1 ms, the most the first task
// after an idle spell waits (mpi4py.futures backs off to 1 ms the same way). While a message is
// expected soon the naps stop growing earlier (see the callers): it waits less, while the polls
// (each of which may preempt a local worker) stay few next to the work.
constexpr auto busy_nap = 128us;     // a worker rank waiting for the task that refills it
constexpr auto empty_nap = 32us;     // ... while it has none (its local pool waits too)
constexpr auto refill_window = 2ms;  // how long after a result a worker rank expects one
// Linux lets a thread's timed sleeps overshoot by its timer slack, 50 us by default: more
// than the naps above. The polling threads ask for 1 us while they poll (restored after).
class precise_naps {
 public:
  precise_naps() noexcept : old_(::prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)) {
    ::prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  }
  ~precise_naps() {
    if (old_ > 0) ::prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(old_), 0, 0, 0);
  }
  precise_naps(const precise_naps&) = delete;
  precise_naps& operator=(const precise_naps&) = delete;

 private:
  int old_;
};

class backoff {
 public:
  void reset() noexcept {
    polls_ = 0;
    nap_ = 16us;
  }
  std::chrono::microseconds next(std::chrono::microseconds most = 1000us) noexcept {
    if (++polls_ <= 64) return 0us;
    const auto d = std::min(nap_, most);
    nap_ = std::min<std::chrono::microseconds>(nap_ * 2, 1000us);
    return d;
  }

 private:
  int polls_ = 0;
  std::chrono::microseconds nap_ = 16us;
};

// What rank 0 prints when mpirun stops the job (it sends SIGTERM, then SIGKILL, to every rank
// when one dies or calls MPI_Abort): how many of the pool's tasks were unfinished. Installed only
// where SIGTERM had its default action, and put back by finalize().
std::atomic<long> unfinished_tasks{0};
static_assert(std::atomic<long>::is_always_lock_free);

extern "C" void on_sigterm(int) {
  // Async-signal-safe: write(2), signal() and raise() only; the number is formatted by hand.
  static const char head[] =
      "shmkit::mpi_pool: rank 0 got SIGTERM, so the MPI job is ending (mpirun stops every rank "
      "when one dies, calls MPI_Abort or mpirun is interrupted: see its message); unfinished "
      "pool tasks: ";
  char digits[24];
  int n = 0;
  // relaxed: a best-effort figure for the message; no other data is read through it.
  unsigned long v = static_cast<unsigned long>(unfinished_tasks.load(std::memory_order_relaxed));
  do {
    digits[sizeof digits - 1 - n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && n < static_cast<int>(sizeof digits) - 1);
  [[maybe_unused]] ssize_t w = ::write(2, head, sizeof head - 1);
  w = ::write(2, digits + sizeof digits - n, static_cast<std::size_t>(n));
  w = ::write(2, "\n", 1);
  ::signal(SIGTERM, SIG_DFL);
  ::raise(SIGTERM);
}

class runtime final : public mpi_runtime, public std::enable_shared_from_this<runtime> {
 public:
  runtime(int* argc, char*** argv, mpi_pool_options o) : opts_(o) {
    if (opts_.tasks_in_flight < 1)
      throw std::invalid_argument(fmt::format(
          "shmkit::mpi_pool: tasks_in_flight must be at least 1, not {}", opts_.tasks_in_flight));
    if (opts_.local_processes < 0)
      throw std::invalid_argument(
          fmt::format("shmkit::mpi_pool: local_processes must be 0 (one per CPU) or more, not {}",
                      opts_.local_processes));
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized != 0)
      throw error(
          "shmkit::mpi_pool: MPI is already finalized; make the pool before "
          "MPI_Finalize");
    if (initialized == 0) {
      // The local pool is forked here, before MPI_Init, when the launcher says this is a
      // worker rank: MPI has then started no thread (Open MPI starts progress threads in
      // MPI_Init) and registered no memory for RDMA (pages registered with verbs or UCX are
      // MADV_DONTFORK: a child forked later finds holes in its heap, which is why Open MPI
      // warns about fork, MCA parameter mpi_warn_on_fork). Replacement workers are forked
      // later by the pool's supervisor, which was forked here and never initializes MPI, so
      // no fork ever happens in an MPI process and the warning never applies.
      if (opts_.local_pool) {
        if (auto env = launcher_env(); env && env->rank != 0) {
          if (opts_.local_processes > 0) {
            start_local_pool(opts_.local_processes);
          } else if (env->node_ranks > 0) {
            // Rank 0 shares this node for sure when every lower rank does (by-slot mapping,
            // mpirun's default); on a node where it only may, it counts as a worker rank.
            const bool root_here = env->node_rank == env->rank;
            start_local_pool(default_local_processes(env->node_ranks - (root_here ? 1 : 0)));
          }
        }
      }
      check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &level_), "MPI_Init_thread");
      owns_mpi_ = true;
    } else {
      check(MPI_Query_thread(&level_), "MPI_Query_thread");
    }
    if (level_ < MPI_THREAD_SERIALIZED) {
      if (owns_mpi_) MPI_Finalize();
      throw error(
          fmt::format("shmkit::mpi_pool: MPI gives thread support {}; the pool needs "
                      "MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE, since its result "
                      "thread makes the MPI calls",
                      level_name(level_)));
    }
    check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    // The worker ranks on this node (collective: every rank takes part).
    MPI_Comm node = MPI_COMM_NULL;
    check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
          "MPI_Comm_split_type");
    int node_size = 1, root_here = 0;
    const int i_am_root = rank_ == 0 ? 1 : 0;
    check(MPI_Comm_size(node, &node_size), "MPI_Comm_size");
    check(MPI_Allreduce(&i_am_root, &root_here, 1, MPI_INT, MPI_MAX, node), "MPI_Allreduce");
    check(MPI_Comm_free(&node), "MPI_Comm_free");
    if (rank_ == 0) {
      local_.reset();  // (a launcher environment that named another rank was wrong)
    } else if (opts_.local_pool && !local_) {
      // MPI was initialized already (by the program, or a launcher whose environment we do
      // not read): the local pool is forked now, from a process that has MPI's threads. That
      // is safe for the pool (its supervisor and workers run only shmkit code and the tasks,
      // never MPI, and glibc's fork resets malloc's and stdio's locks); verified with Open MPI
      // 4.1 over its shared-memory (vader) and TCP transports, which print nothing. On an
      // RDMA network Open MPI may warn once about the fork (mpi_warn_on_fork): the warning is
      // right there, since a worker that touches a registered page dies (and its task fails
      // with worker_lost_error), so the pool leaves it on; make the pool before MPI_Init to
      // avoid it.
      try {
        start_local_pool(opts_.local_processes > 0
                             ? opts_.local_processes
                             : default_local_processes(node_size - root_here));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shmkit::mpi_pool: rank %d cannot start its local pool: %s\n", rank_,
                     e.what());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
        std::_Exit(1);
      }
    }
    rank_info me;
    me.pid = static_cast<int>(::getpid());
    me.processes = local_ ? local_->rt->processes() : 1;
    me.capacity = me.processes * opts_.tasks_in_flight;
    capacity_here_ = static_cast<std::size_t>(me.capacity);
    std::vector<rank_info> all(static_cast<std::size_t>(size_));
    check(MPI_Gather(&me, 3, MPI_INT, all.data(), 3, MPI_INT, 0, comm_), "MPI_Gather");
    for (const auto& r : all) {
      pids_.push_back(r.pid);
      capacity_.push_back(static_cast<std::size_t>(std::max(1, r.capacity)));
      processes_ += r.processes;
    }
    if (size_ > 1) processes_ -= all[0].processes;  // rank 0 only dispatches
    const auto n = static_cast<std::size_t>(size_);
    held_.assign(n, 0);
    held_bytes_.assign(n, 0);
    sent_.assign(n, 0);
    window_ = capacity_;
    rate_.assign(n, 0);
    period_start_.assign(n, {});
    last_done_.assign(n, {});
    period_count_.assign(n, 0);
  }

  ~runtime() override { finalize(); }

  // Rank 0: the result thread. Other ranks: serve until released.
  void begin() {
    if (rank_ != 0) {
      posted_.close(who);
      serve();
      return;
    }
    if (size_ > 1) {
      struct sigaction old {};
      if (::sigaction(SIGTERM, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
        struct sigaction sa {};
        sa.sa_handler = &on_sigterm;
        sigemptyset(&sa.sa_mask);
        sigterm_installed_ = ::sigaction(SIGTERM, &sa, nullptr) == 0;
      }
    }
    thread_ = std::thread([self = shared_from_this()] { self->result_loop(); });
  }

  void submit(std::vector<task_request> tasks) override {
    for (auto& t : tasks) submit_batch(std::make_shared<request_batch>(std::move(t)));
  }

  // The batch waits as it is: each task's payload is encoded when its pack is made.
  void submit_batch(std::shared_ptr<task_batch> batch) override {
    if (rank_ != 0)
      throw std::logic_error(fmt::format(
          "shmkit::mpi_pool: tasks are submitted on rank 0 only, and this is rank {}, a "
          "worker; put the work under `if (pool.is_root())`",
          rank_));
    {
      std::lock_guard lk(m_);
      if (closed_ || stop_)
        throw std::logic_error("shmkit::mpi_pool: the pool is closed; no new tasks");
      if (broken_) throw worker_lost_error(broken_why_);
      const std::size_t n = batch->size();
      if (n == 0) return;
      pending_.push_back(pending_batch{std::move(batch), 0});
      pending_tasks_ += n;
      outstanding_ += n;
      // relaxed: read only by the SIGTERM message.
      unfinished_tasks.store(static_cast<long>(outstanding_), std::memory_order_relaxed);
    }
    wake_.notify_one();
  }
  bool post(std::function<void()> job) override {
    if (!posted_.push(std::move(job))) return false;
    { std::lock_guard lk(m_); }  // the result thread checks posted_ under m_ before it sleeps
    wake_.notify_one();
    return true;
  }

  void close() override {
    std::lock_guard lk(m_);
    closed_ = true;
  }

  void join() override {
    if (rank_ != 0) return;
    {
      std::unique_lock lk(m_);
      if (!closed_ && !stop_)
        throw std::logic_error("shmkit::mpi_pool: join() before close() or terminate()");
      idle_.wait(lk, [&] { return outstanding_ == 0 || broken_ || thread_done_; });
      stop_ = true;
    }
    wake_.notify_one();
    stop_thread();
  }

  void terminate() noexcept override {
    if (rank_ != 0) return;
    {
      std::lock_guard lk(m_);
      stop_ = true;
      drop_ = true;
    }
    wake_.notify_one();
    stop_thread();
  }

  int processes() const noexcept override { return std::max(1, processes_); }
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  std::vector<pid_t> worker_pids() const override {
    if (rank_ != 0) return {};
    return std::vector<pid_t>(pids_.begin() + 1, pids_.end());
  }

  void finalize() noexcept override {
    if (finalized_) return;
    finalized_ = true;
    terminate();
    if (sigterm_installed_) ::signal(SIGTERM, SIG_DFL);
    bool broken;
    std::string why;
    {
      std::lock_guard lk(m_);
      broken = broken_;
      why = broken_why_;
    }
    if (broken) {
      // A rank may be gone: MPI_Finalize could wait for it forever.
      std::fprintf(stderr, "%s\nshmkit::mpi_pool: aborting the MPI job (rank %d)\n", why.c_str(),
                   rank_);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
      std::_Exit(1);
    }
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }

 private:
  struct pending_batch {
    std::shared_ptr<task_batch> batch;
    std::size_t next = 0;  // its first task not yet sent
  };
  struct inflight_task {
    std::shared_ptr<task_batch> batch;
    std::size_t index = 0;
    int rank = 0;
    std::size_t bytes = 0;  // of its record and payload
    std::chrono::steady_clock::time_point sent_at{};
  };
  struct open_send {
    MPI_Request req = MPI_REQUEST_NULL;
    std::vector<std::byte> wire;  // the message, alive until its send completes
  };

  // ---- rank 0 ----------------------------------------------------------------------------

  void result_loop() {
    precise_naps precise;
    backoff nap;
    try {
      for (;;) {
        posted_.run(who);
        {
          std::lock_guard lk(m_);
          if (stop_) break;
        }
        bool busy = size_ > 1 ? dispatch() : run_one_here();
        if (size_ > 1) {
          busy |= receive_results();
          busy |= test_sends();
        }
        if (busy) {
          nap.reset();
          continue;
        }
        // Pending tasks wake this thread only when a rank has room for one; otherwise it
        // waits for results, napping.
        const bool room = size_ == 1 || has_room();
        std::unique_lock lk(m_);
        auto woken = [&] { return (room && !pending_.empty()) || !posted_.empty() || stop_; };
        if (inflight_.empty()) {
          wake_.wait(lk, woken);
        } else {
          // Naps up to an eighth of a task's usual turnaround (dispatch to result), 16 us
          // to 1 ms: short tasks get their results (and ranks their next tasks) soon, long
          // ones are not interrupted by thousands of polls.
          auto d = nap.next(std::clamp<std::chrono::microseconds>(turnaround_ / 8, 16us, 1000us));
          if (!sends_.empty()) d = std::min<std::chrono::microseconds>(d, 50us);
          if (d > 0us) wake_.wait_for(lk, d, woken);
        }
      }
      bool drop;
      {
        std::lock_guard lk(m_);
        drop = drop_;
      }
      if (drop)
        fail_everything(std::make_exception_ptr(worker_lost_error(
            "shmkit::mpi_pool: the pool was terminated before the task finished")));
      if (size_ > 1) release_workers(drop);
    } catch (const std::exception& e) {
      break_pool(e.what());
    }
    posted_.close(who);
    std::lock_guard lk(m_);
    thread_done_ = true;
    idle_.notify_all();
  }

  // The batch whose tasks go next and its first unsent task; none once stopping.
  std::optional<pending_batch> peek_pending() {
    std::lock_guard lk(m_);
    if (pending_.empty() || stop_) return std::nullopt;
    return pending_.front();
  }
  // The head batch's tasks before `next` are sent (or failed).
  void consumed_pending(std::size_t next) {
    std::lock_guard lk(m_);
    if (pending_.empty()) return;  // failed meanwhile (fail_everything)
    auto& p = pending_.front();
    pending_tasks_ -= next - p.next;
    p.next = next;
    if (p.next >= p.batch->size()) pending_.pop_front();
  }

  // Fails tasks [first, last) of `b` with `e`.
  void fail_tasks(task_batch& b, std::size_t first, std::size_t last, std::exception_ptr e) {
    std::vector<task_outcome> out;
    while (first < last) {
      const std::size_t n = std::min<std::size_t>(last - first, 1024);
      out.clear();
      for (std::size_t i = first; i < first + n; ++i)
        out.push_back(task_outcome{i, false, {}, 0, e});
      b.deliver(out);
      finished(n);
      first += n;
    }
  }

  // One rank: the task runs here, on the result thread.
  bool run_one_here() {
    auto p = peek_pending();
    if (!p) return false;
    consumed_pending(p->next + 1);
    task_batch& b = *p->batch;
    std::vector<std::byte> out;
    try {
      b.payload(p->next, scratch_);
    } catch (...) {
      fail_tasks(b, p->next, p->next + 1, std::current_exception());
      return true;
    }
    const bool ok = run_task(b.entry(), b.fn_word(), scratch_, out);
    const task_outcome o{p->next, ok, out, ::getpid(), nullptr};
    b.deliver({&o, 1});
    finished(1);
    return true;
  }

  bool has_room() const {
    for (int r = 1; r < size_; ++r)
      if (held_[r] < window_[r]) return true;
    return false;
  }

  // The worker rank with the least load (tasks held / window), if one has room; ties go
  // round the ranks.
  int pick_rank() {
    int best = -1;
    for (int i = 0; i < size_ - 1; ++i) {
      const int r = 1 + (cursor_ + i) % (size_ - 1);
      if (held_[r] < window_[r] &&
          (best < 0 || held_[r] * window_[best] < held_[best] * window_[r]))
        best = r;
    }
    if (best > 0) cursor_ = best % (size_ - 1);
    return best;
  }

  const portable_address& portable(std::uint64_t address) {
    auto it = portable_.find(address);
    if (it == portable_.end()) it = portable_.emplace(address, to_portable(address)).first;
    return it->second;
  }

  bool dispatch() {
    bool any = false;
    for (int r = pick_rank(); r > 0; r = pick_rank()) {
      if (!send_pack(r)) break;
      any = true;
    }
    return any;
  }

  // Sends rank r what is pending, up to its room, in one task pack. False when nothing was
  // pending.
  bool send_pack(int r) {
    const auto now = std::chrono::steady_clock::now();
    if (held_[r] == 0 && now - last_done_[r] > rate_forget) {
      // Idle for a while: what it learned of the tasks' cost may not hold for the next ones.
      rate_[r] = 0;
      window_[r] = capacity_[r];
      period_start_[r] = now;
      period_count_[r] = 0;
    }
    // Room up to the window, but beyond the capacity no more than a fair share of what is
    // pending: a short burst of tasks is spread over the ranks even when a rank's window
    // (learned from tiny tasks) would take it all.
    std::size_t share;
    {
      std::lock_guard lk(m_);
      share = (pending_tasks_ + static_cast<std::size_t>(size_ - 2)) /
              static_cast<std::size_t>(size_ - 1);
    }
    const std::size_t free_capacity = capacity_[r] > held_[r] ? capacity_[r] - held_[r] : 0;
    const std::size_t room =
        std::max<std::size_t>(1, std::min(window_[r] - held_[r], std::max(share, free_capacity)));
    std::vector<std::uint64_t> table_addresses;
    std::vector<portable_address> table;
    auto index_of = [&](std::uint64_t address) -> std::uint32_t {
      auto it = std::find(table_addresses.begin(), table_addresses.end(), address);
      if (it != table_addresses.end())
        return static_cast<std::uint32_t>(it - table_addresses.begin());
      table.push_back(portable(address));  // throws when the address is in no module
      table_addresses.push_back(address);
      return static_cast<std::uint32_t>(table.size() - 1);
    };
    std::vector<std::byte> body;
    std::size_t packed = 0;
    bool consumed = false;
    auto full = [&] {
      return packed == room || body.size() >= pack_bytes ||
             (held_[r] + packed >= capacity_[r] &&
              held_bytes_[r] + body.size() >= max_window_bytes);
    };
    while (!full()) {
      auto p = peek_pending();
      if (!p) break;
      task_batch& b = *p->batch;
      std::size_t i = p->next;
      std::uint32_t entry = 0, fn = 0;
      try {
        entry = index_of(reinterpret_cast<std::uintptr_t>(b.entry()));
        fn = b.fn_word() != 0 ? 1 + index_of(b.fn_word()) : 0;
      } catch (...) {  // the function is in no module: no task of the batch can be sent
        consumed_pending(b.size());
        fail_tasks(b, i, b.size(), std::current_exception());
        consumed = true;
        continue;
      }
      for (; i < b.size() && !full(); ++i) {
        try {
          b.payload(i, scratch_);
          check_message_size(scratch_.size() + sizeof(task_record) + 4096, "a task");
        } catch (
            ...) {  // this task cannot be sent: its arguments do not encode, or it is too large
          fail_tasks(b, i, i + 1, std::current_exception());
          continue;
        }
        if (!body.empty() && body.size() + scratch_.size() > static_cast<std::size_t>(INT_MAX) / 2)
          break;  // a large task travels in a pack of its own
        const std::uint64_t id = next_id_++;
        append_record(body, task_record{id, entry, fn, scratch_.size()}, scratch_);
        inflight_.emplace(
            id, inflight_task{p->batch, i, r, sizeof(task_record) + scratch_.size(), now});
        ++packed;
      }
      consumed = consumed || i != p->next;
      consumed_pending(i);
      if (i < b.size()) break;  // full
    }
    if (packed == 0) return consumed;
    std::vector<std::byte> head = encode(table);
    const std::uint64_t hs = head.size();
    std::vector<std::byte> wire(sizeof hs + hs + body.size());
    std::memcpy(wire.data(), &hs, sizeof hs);
    std::memcpy(wire.data() + sizeof hs, head.data(), hs);
    std::memcpy(wire.data() + sizeof hs + hs, body.data(), body.size());
    held_[r] += packed;
    held_bytes_[r] += body.size();
    sent_[r] += packed;
    sends_.push_back(open_send{MPI_REQUEST_NULL, std::move(wire)});
    auto& s = sends_.back();
    check(MPI_Isend(s.wire.data(), static_cast<int>(s.wire.size()), MPI_BYTE, r, tag_task, comm_,
                    &s.req),
          "MPI_Isend");
    return true;
  }

  // Drives the sends not yet known complete (a large pack moves only while MPI is called).
  bool test_sends() {
    bool any = false;
    for (std::size_t i = 0; i < sends_.size();) {
      int done = 0;
      check(MPI_Test(&sends_[i].req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done != 0) {
        if (i + 1 != sends_.size()) sends_[i] = std::move(sends_.back());
        sends_.pop_back();
        any = true;
      } else {
        ++i;
      }
    }
    return any;
  }

  bool receive_results() {
    bool any = false;
    for (int i = 0; i < 256; ++i) {
      auto m = try_receive(comm_, MPI_ANY_SOURCE, tag_result);
      if (!m) break;
      any = true;
      on_result(*m);
    }
    return any;
  }

  // A result pack: each outcome to its batch, runs of one batch's outcomes together.
  void on_result(message& m) {
    const auto now = std::chrono::steady_clock::now();
    const int rank = m.source;
    std::span<const std::byte> bytes(m.bytes);
    record_reader<result_record> reader(bytes, 0);
    result_record rec;
    std::size_t at = 0, n = 0;
    std::shared_ptr<task_batch> batch;
    outcomes_.clear();
    auto flush = [&] {
      if (batch && !outcomes_.empty()) batch->deliver(outcomes_);
      outcomes_.clear();
    };
    while (reader.next(rec, at)) {
      auto it = inflight_.find(rec.id);
      if (it == inflight_.end()) continue;  // failed already (terminate)
      inflight_task f = std::move(it->second);
      inflight_.erase(it);
      ++n;
      --held_[f.rank];
      held_bytes_[f.rank] -= f.bytes;
      // An exponential average over the last few tasks.
      const auto took = std::chrono::duration_cast<std::chrono::microseconds>(now - f.sent_at);
      turnaround_ = (turnaround_ * 7 + took) / 8;
      if (f.batch != batch) {
        flush();
        batch = std::move(f.batch);
      }
      const pid_t pid = rec.pid != 0 ? static_cast<pid_t>(rec.pid) : pids_[f.rank];
      const auto payload = bytes.subspan(at, rec.bytes);
      switch (static_cast<outcome_kind>(rec.kind)) {
        case outcome_kind::ok:
          outcomes_.push_back(task_outcome{f.index, true, payload, pid, nullptr});
          break;
        case outcome_kind::failed:
          outcomes_.push_back(task_outcome{f.index, false, payload, pid, nullptr});
          break;
        case outcome_kind::lost: {
          std::string why;
          try {
            why = decode<std::string>(payload);
          } catch (const std::exception& e) {
            why = e.what();
          }
          outcomes_.push_back(
              task_outcome{f.index,
                           false,
                           {},
                           pid,
                           std::make_exception_ptr(worker_lost_error(
                               fmt::format("shmkit::mpi_pool: rank {} (pid {}) lost the task: {}",
                                           f.rank, pids_[f.rank], why)))});
          break;
        }
        default:
          outcomes_.push_back(task_outcome{
              f.index,
              false,
              {},
              pid,
              std::make_exception_ptr(
                  error(fmt::format("shmkit::mpi_pool: rank {} sent a result of unknown kind {}",
                                    f.rank, rec.kind)))});
      }
    }
    flush();
    if (rank > 0 && rank < size_) note_completed(rank, n, now);
    finished(n);
  }

  // Rank r completed n tasks: its completion rate, and so its window (see the head of the
  // file).
  void note_completed(int r, std::size_t n, std::chrono::steady_clock::time_point now) {
    last_done_[r] = now;
    period_count_[r] += n;
    const double dt = std::chrono::duration<double>(now - period_start_[r]).count();
    if (dt < std::chrono::duration<double>(rate_period).count()) return;
    const double rate = static_cast<double>(period_count_[r]) / dt;
    rate_[r] = rate_[r] == 0 ? rate : (rate_[r] * 3 + rate) / 4;
    period_start_[r] = now;
    period_count_[r] = 0;
    const double w = std::min(rate_[r] * window_work_seconds, static_cast<double>(max_window));
    window_[r] = std::max(capacity_[r], static_cast<std::size_t>(w));
  }

  void finished(std::size_t n) {
    if (n == 0) return;
    std::lock_guard lk(m_);
    outstanding_ -= n;
    if (outstanding_ == 0) idle_.notify_all();
    // relaxed: read only by the SIGTERM message.
    unfinished_tasks.store(static_cast<long>(outstanding_), std::memory_order_relaxed);
  }

  // Fails every pending and in-flight task with `e`. The sends of those in flight stay open
  // until release_workers() completes them.
  void fail_everything(std::exception_ptr e) {
    std::deque<pending_batch> pending;
    {
      std::lock_guard lk(m_);
      pending.swap(pending_);
      pending_tasks_ = 0;
    }
    for (auto& p : pending) fail_tasks(*p.batch, p.next, p.batch->size(), e);
    for (auto& [id, f] : inflight_) fail_tasks(*f.batch, f.index, f.index + 1, e);
    inflight_.clear();
    std::fill(held_.begin(), held_.end(), 0);
    std::fill(held_bytes_.begin(), held_bytes_.end(), 0);
  }

  // Tells every worker rank to leave, then takes every message they still send until each
  // says bye: afterwards no send of either side is open.
  void release_workers(bool drop) {
    for (int r = 1; r < size_; ++r) {
      const auto bytes = encode(stop_msg{sent_[r], drop});
      check(MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, r, tag_stop, comm_),
            "MPI_Send");
    }
    backoff nap;
    for (int byes = 0; byes < size_ - 1;) {
      posted_.run(who);
      test_sends();
      auto m = try_receive(comm_, MPI_ANY_SOURCE, MPI_ANY_TAG);
      if (!m) {
        std::this_thread::sleep_for(nap.next(!sends_.empty() ? 50us : 1000us));
        continue;
      }
      nap.reset();
      if (m->tag == tag_bye)
        ++byes;
      else if (m->tag == tag_result)
        on_result(*m);
    }
    for (auto& s : sends_) check(MPI_Wait(&s.req, MPI_STATUS_IGNORE), "MPI_Wait");
    sends_.clear();
  }

  void break_pool(const std::string& why) noexcept {
    try {
      {
        std::lock_guard lk(m_);
        broken_ = true;
        broken_why_ = why;
      }
      fail_everything(std::make_exception_ptr(worker_lost_error(why)));
    } catch (...) {
    }
  }

  void stop_thread() noexcept {
    if (!thread_.joinable()) return;
    if (std::this_thread::get_id() == thread_.get_id()) return;  // from a callback: it ends soon
    thread_.join();
  }

  // ---- worker ranks ----------------------------------------------------------------------

  std::uint64_t local_address(const portable_address& a) {
    auto key = std::make_pair(a.module, a.offset);
    auto it = local_addresses_.find(key);
    if (it == local_addresses_.end())
      it = local_addresses_.emplace(std::move(key), from_portable(a)).first;
    return it->second;
  }

  void serve() noexcept {
    precise_naps precise;
    try {
      serve_loop();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\nshmkit::mpi_pool: rank %d cannot go on; aborting the MPI job\n",
                   e.what(), rank_);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
      std::_Exit(1);
    }
  }

  void start_local_pool(int processes) { local_.emplace(processes); }

  // A task killed the local pool's supervisor, so the pool refuses work (what it held failed
  // with worker_lost_error): the rank makes a new one of the same size, forked now, after
  // MPI_Init (see the constructor for why that works). False when that fails too.
  bool replace_local_pool() noexcept {
    try {
      const int n = local_->rt->processes();
      local_.reset();
      start_local_pool(n);
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shmkit::mpi_pool: rank %d cannot replace its local pool: %s\n", rank_,
                   e.what());
      return false;
    }
  }

  // Fails every task of `b` with `e` (to rank 0).
  void fail_forwarded(const forwarded_batch& b, std::exception_ptr e) {
    for (const auto& t : b.tasks()) outbox_->add_failure(t.id, e);
  }

  // Hands a batch to the local pool; its outcomes come back through the outbox.
  void hand_to_local_pool(const std::shared_ptr<forwarded_batch>& b) {
    for (int attempt = 0;; ++attempt) {
      try {
        if (!local_) throw worker_lost_error("shmkit::mpi_pool: the rank has no local pool left");
        local_->rt->submit_batch(b);
        return;
      } catch (const worker_lost_error&) {  // the local pool is broken: its supervisor died
        if (attempt == 0 && local_ && replace_local_pool()) continue;
        fail_forwarded(*b, std::current_exception());
        return;
      } catch (...) {
        fail_forwarded(*b, std::current_exception());
        return;
      }
    }
  }

  // A task pack: its tasks to the local pool (or the rank's queue), in batches of the same
  // entry and function. Returns how many tasks it held.
  std::size_t take_pack(message& m, bool drop) {
    auto pack = std::make_shared<const std::vector<std::byte>>(std::move(m.bytes));
    const std::span<const std::byte> bytes(*pack);
    auto [table, start] = read_table(bytes);
    // The table's addresses here, translated when first used.
    std::vector<std::optional<std::uint64_t>> here(table.size());
    auto address = [&](std::uint32_t i) {
      if (i >= table.size())
        throw error(fmt::format("shmkit::mpi_pool: a task names function {} of a table of {}", i,
                                table.size()));
      if (!here[i]) here[i] = local_address(table[i]);
      return *here[i];
    };
    record_reader<task_record> reader(bytes, start);
    task_record rec;
    std::size_t at = 0, n = 0;
    std::uint64_t entry = 0, fn = 0;
    std::vector<forwarded_task> run;  // tasks of the same entry and fn, in a row
    auto flush = [&] {
      if (run.empty()) return;
      auto b = std::make_shared<forwarded_batch>(
          reinterpret_cast<task_entry>(static_cast<std::uintptr_t>(entry)), fn, pack,
          std::move(run), outbox_);
      run = {};
      if (local_)
        hand_to_local_pool(b);
      else
        queued_.push_back(pending_batch{std::move(b), 0});
    };
    while (reader.next(rec, at)) {
      ++n;
      if (drop) continue;
      std::uint64_t e = 0, f = 0;
      try {
        e = address(rec.entry);
        f = rec.fn != 0 ? address(rec.fn - 1) : 0;
      } catch (const std::exception& x) {  // the task's module is not loaded here
        outbox_->add(rec.id, outcome_kind::failed, ::getpid(),
                     encode(task_failure{"shmkit::error", x.what()}));
        continue;
      }
      if (!run.empty() && (e != entry || f != fn)) flush();
      entry = e;
      fn = f;
      run.push_back(forwarded_task{rec.id, at, rec.bytes});
    }
    flush();
    return n;
  }

  // No local pool: runs queued tasks on this thread, one after another, for up to 100 us.
  void run_queued() {
    const auto until = std::chrono::steady_clock::now() + 100us;
    std::vector<std::byte> in, out;
    do {
      auto& q = queued_.front();
      auto& b = static_cast<forwarded_batch&>(*q.batch);
      const auto& t = b.tasks()[q.next];
      b.payload(q.next, in);
      const bool ok = run_task(b.entry(), b.fn_word(), in, out);
      outbox_->add(t.id, ok ? outcome_kind::ok : outcome_kind::failed, ::getpid(), out);
      if (++q.next == b.size()) queued_.pop_front();
    } while (!queued_.empty() && std::chrono::steady_clock::now() < until);
  }

  // The tasks queued and not started (no local pool): dropped.
  std::size_t drop_queued() {
    std::size_t n = 0;
    for (auto& q : queued_) n += q.batch->size() - q.next;
    queued_.clear();
    return n;
  }

  void serve_loop() {
    std::optional<stop_msg> stop;
    std::uint64_t received = 0;
    std::size_t running = 0;  // tasks received whose outcome is not yet sent (or dropped)
    std::vector<open_send> sends;
    backoff nap;
    bool helped = false;  // this idle spell has helped the local pool already
    for (;;) {
      bool busy = false;
      for (auto it = sends.begin(); it != sends.end();) {
        int complete = 0;
        check(MPI_Test(&it->req, &complete, MPI_STATUS_IGNORE), "MPI_Test");
        it = complete != 0 ? sends.erase(it) : it + 1;
      }
      for (auto& p : outbox_->take()) {
        running -= p.count;
        busy = true;
        if (stop && stop->drop) continue;
        sends.push_back(open_send{MPI_REQUEST_NULL, std::move(p.bytes)});
        auto& s = sends.back();
        check(MPI_Isend(s.wire.data(), static_cast<int>(s.wire.size()), MPI_BYTE, 0, tag_result,
                        comm_, &s.req),
              "MPI_Isend");
        last_result_ = std::chrono::steady_clock::now();
      }
      if (stop && received == stop->tasks_sent && running == 0) break;
      if (!stop) {
        if (auto s = try_receive(comm_, 0, tag_stop)) {
          stop = decode<stop_msg>(s->bytes);
          if (stop->drop) {
            // terminate: the local pool kills its workers; what they held fails (not sent).
            if (local_) local_->rt->terminate();
            running -= drop_queued();
          }
          continue;
        }
      }
      for (int i = 0; i < 16; ++i) {
        auto m = try_receive(comm_, 0, tag_task);
        if (!m) break;
        busy = true;
        const bool drop = stop && stop->drop;
        const std::size_t n = take_pack(*m, drop);
        received += n;
        if (!drop) running += n;
      }
      if (!queued_.empty()) {
        run_queued();
        busy = true;
      }
      if (busy) {
        nap.reset();
        helped = false;
        continue;
      }
      // Newly idle with tasks in the local pool: take its results off its queue on this
      // thread for a while (pool_runtime::help, whose spin shrinks while it finds none), which
      // saves the hand-over through its result thread. Once per idle spell: long tasks are
      // not slowed by a spinning neighbour.
      if (local_ && running > 0 && !helped) {
        helped = true;
        if (local_->rt->help([&] { return outbox_->ready(); })) {
          nap.reset();
          continue;
        }
      }
      // Idle: wait for an outcome of the local pool, or the next poll of MPI. Polls come
      // often only while rank 0 is about to send a task: a result went out lately and the
      // rank holds less than its capacity (with more, rank 0 refills it as results reach
      // it, and an outcome wakes this thread anyway); each poll preempts a local worker.
      const bool expecting = running < capacity_here_ &&
                             std::chrono::steady_clock::now() - last_result_ < refill_window;
      // A large result moves only while this rank calls MPI (rendezvous protocol): nap
      // briefly until its send completes (as rank 0 does for its sends).
      // With tasks in the local pool, each poll preempts a worker, for a refill that is not
      // urgent yet: polls come more often only once the rank has none.
      const auto d = nap.next(!sends.empty() ? 50us
                              : expecting    ? (running == 0 ? empty_nap : busy_nap)
                                             : 1000us);
      if (d > 0us) outbox_->wait_for(d);
    }
    for (auto& s : sends) check(MPI_Wait(&s.req, MPI_STATUS_IGNORE), "MPI_Wait");
    // Every task's outcome is in: the local pool's workers leave (close, join) before the
    // rank says bye, so none outlives the pool.
    if (local_) {
      if (!(stop && stop->drop)) {
        local_->rt->close();
        local_->rt->join();
      }
      local_.reset();
    }
    check(MPI_Send(nullptr, 0, MPI_BYTE, 0, tag_bye, comm_), "MPI_Send");
  }

  mpi_pool_options opts_;
  int level_ = MPI_THREAD_SINGLE;
  bool owns_mpi_ = false;
  bool finalized_ = false;
  bool sigterm_installed_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> pids_;              // by rank
  std::vector<std::size_t> capacity_;  // by rank: tasks it may hold at least
  int processes_ = 0;                  // processes running tasks, over the worker ranks
  std::size_t capacity_here_ = 1;      // worker ranks: the tasks rank 0 may keep here at least
  std::chrono::steady_clock::time_point last_result_{};  // worker ranks: last result sent
  std::chrono::microseconds turnaround_{128};            // rank 0: usual dispatch-to-result time
  std::thread thread_;

  // Rank 0. m_ guards pending_, outstanding_ and the flags; the rest belongs to the
  // result thread.
  std::mutex m_;
  std::condition_variable wake_;  // the result thread waits here for work
  std::condition_variable idle_;  // join() waits here for outstanding_ == 0
  std::deque<pending_batch> pending_;
  std::size_t pending_tasks_ = 0;  // tasks of pending_ not yet sent
  posted_jobs posted_;
  std::size_t outstanding_ = 0;
  bool closed_ = false, stop_ = false, drop_ = false, broken_ = false, thread_done_ = false;
  std::string broken_why_;
  std::unordered_map<std::uint64_t, inflight_task> inflight_;
  std::vector<open_send> sends_;  // task packs whose send may not be complete yet
  // By rank: tasks in flight, their bytes, tasks sent in all, the window (tasks it may hold
  // now), its completion rate (tasks/s; 0: not known), the period it is measured over, and
  // when it last completed a task.
  std::vector<std::size_t> held_, held_bytes_, window_;
  std::vector<std::uint64_t> sent_;
  std::vector<double> rate_;
  std::vector<std::chrono::steady_clock::time_point> period_start_, last_done_;
  std::vector<std::size_t> period_count_;
  std::unordered_map<std::uint64_t, portable_address> portable_;
  std::uint64_t next_id_ = 1;
  int cursor_ = 0;
  std::vector<std::byte> scratch_;      // a task's payload while its pack is made
  std::vector<task_outcome> outcomes_;  // a result pack's outcomes while they are delivered

  // Worker ranks: (module, offset) -> address here.
  std::map<std::pair<std::string, std::uint64_t>, std::uint64_t> local_addresses_;
  std::shared_ptr<outbox> outbox_ = std::make_shared<outbox>();
  std::deque<pending_batch> queued_;  // tasks to run here (no local pool)
  // The rank's local pool (none with local_pool = false); declared last, so destroyed first:
  // its batches hold the outbox (shared, so it would outlive the rank's runtime anyway).
  std::optional<local_pool> local_;
};

}  // namespace

std::shared_ptr<mpi_runtime> mpi_runtime::start(int* argc, char*** argv, mpi_pool_options options) {
  auto rt = std::make_shared<runtime>(argc, argv, options);
  rt->begin();
  return rt;
}

}  // namespace shmkit::detail
