// SPDX-License-Identifier: MIT
// mpi_pool's runtime: rank 0's result thread and the worker ranks' serving loop. See
// mpi_pool.hpp for the contract.
//
// Protocol, on a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN:
//   task    rank 0 -> worker   frame(task_header, payload): entry and function as portable
//                              addresses (module, offset), so ASLR may differ between ranks
//   result  worker -> rank 0   frame(result_header, payload): the result (ok), an encoded
//                              task_failure (failed), or the local pool's worker_lost_error
//                              message as an encoded string (lost)
//   stop    rank 0 -> worker   stop_msg: how many tasks rank 0 sent this rank in all, and
//                              whether to drop those not yet started (terminate)
//   bye     worker -> rank 0   empty: the worker's last message; every send of both sides is
//                              complete, so MPI_Finalize has nothing left to wait for
// A frame is an 8-byte header length, the codec bytes of the header, then the payload as it
// is, so neither side copies a payload to decode it.
//
// Rank 0 keeps up to each worker rank's capacity of tasks on it (local processes x
// tasks_in_flight, gathered when the pool starts). A worker rank hands each task it receives to
// its local shmkit::pool (apply_async of run_in_local_worker, which runs the task's entry as
// rank 0 sent it) and sends each outcome with MPI_Isend as the local pool's callbacks report
// it; the MPI calls stay on the serving thread, the callbacks only queue outcomes for it.
// Without a local pool the rank runs each task itself before it takes the next. A stop
// message overtakes queued tasks (it is probed by its own tag before each task), and its count
// tells the worker how many task messages it must still receive before it may leave; with
// `drop` (terminate) the rank terminates its local pool, whose tasks then fail unsent. The
// rank says bye once every task received has an outcome and every send is complete, after its
// local pool's workers have left. MPI's order between one sender and one receiver on one
// communicator makes `bye` arrive after that worker's last result.
#include "shmkit/mpi_pool.hpp"

// The C API only, not the deprecated C++ bindings mpi.h would otherwise bring in.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fmt/format.h>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <typeinfo>
#include <unistd.h>
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

struct task_header {
  std::uint64_t id = 0;
  portable_address entry;
  std::optional<portable_address> fn;  // when f is a function pointer
  template <class Ar>
  void serialize(Ar& ar) {
    ar(id, entry, fn);
  }
};

// How a task ended on its worker rank.
enum class outcome_kind : std::uint8_t {
  ok = 0,      // the payload is the result
  failed = 1,  // the task threw: the payload is an encoded task_failure
  lost = 2,    // the local process running it died: the payload is an encoded message
};

struct result_header {
  std::uint64_t id = 0;
  std::uint8_t kind = 0;  // an outcome_kind
  std::int64_t pid = 0;   // the process that ran the task
  template <class Ar>
  void serialize(Ar& ar) {
    ar(id, kind, pid);
  }
};

// What a worker rank reports to rank 0 when it starts.
struct rank_info {
  int pid = 0;
  int processes = 1;  // processes running tasks at once
  int capacity = 1;   // tasks (chunks) rank 0 may keep on the rank
};
static_assert(sizeof(rank_info) == 3 * sizeof(int));

// Runs in a worker of a rank's local pool: the task exactly as rank 0 sent it, its entry and
// function already translated to this program image's addresses (the worker is forked from
// the rank, so they are valid there).
std::tuple<bool, std::int64_t, std::vector<std::byte>> run_in_local_worker(
    std::uint64_t entry, std::uint64_t fn, std::vector<std::byte> payload) {
  std::vector<std::byte> out;
  const bool ok = run_task(reinterpret_cast<task_entry>(static_cast<std::uintptr_t>(entry)), fn,
                           payload, out);
  return {ok, static_cast<std::int64_t>(::getpid()), std::move(out)};
}

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
    throw mpi_failure(fmt::format("shmkit::mpi_pool: {} failed on rank {}: {}", call,
                                  world_rank(), mpi_text(rc)));
}

const char* level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
    default: return "an unknown level";
  }
}

template <class Header>
std::vector<std::byte> frame(const Header& h, std::span<const std::byte> payload) {
  const std::uint64_t hs = encoded_size(h);
  std::vector<std::byte> out(sizeof hs + hs + payload.size());
  std::memcpy(out.data(), &hs, sizeof hs);
  encode_into(h, std::span<std::byte>(out).subspan(sizeof hs, hs));
  if (!payload.empty()) std::memcpy(out.data() + sizeof hs + hs, payload.data(), payload.size());
  return out;
}

template <class Header>
std::pair<Header, std::span<const std::byte>> unframe(std::span<const std::byte> in) {
  std::uint64_t hs = 0;
  if (in.size() < sizeof hs)
    throw error(fmt::format("shmkit::mpi_pool: a message of {} bytes is too short for a frame",
                            in.size()));
  std::memcpy(&hs, in.data(), sizeof hs);
  if (hs > in.size() - sizeof hs)
    throw error(fmt::format("shmkit::mpi_pool: a frame claims a header of {} bytes in a message "
                            "of {}",
                            hs, in.size()));
  return {decode<Header>(in.subspan(sizeof hs, hs)), in.subspan(sizeof hs + hs)};
}

// MPI counts are ints: a message must stay below 2 GiB.
void check_message_size(std::size_t bytes, const char* what) {
  if (bytes > static_cast<std::size_t>(INT_MAX))
    throw error(fmt::format("shmkit::mpi_pool: {} of {} bytes exceeds MPI's limit of {} bytes per "
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
constexpr auto busy_nap = 128us;  // a worker rank waiting for the task that refills it
constexpr auto refill_window = 2ms;  // how long after a result a worker rank expects one
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
// when one dies or calls MPI_Abort): how many of the pool's tasks were unfinished. Installed only where
// SIGTERM had its default action, and put back by finalize().
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
      throw std::invalid_argument(fmt::format(
          "shmkit::mpi_pool: local_processes must be 0 (one per CPU) or more, not {}",
          opts_.local_processes));
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized != 0)
      throw error("shmkit::mpi_pool: MPI is already finalized; make the pool before "
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
      throw error(fmt::format("shmkit::mpi_pool: MPI gives thread support {}; the pool needs "
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
        std::fprintf(stderr, "shmkit::mpi_pool: rank %d cannot start its local pool: %s\n",
                     rank_, e.what());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
        std::_Exit(1);
      }
    }
    rank_info me;
    me.pid = static_cast<int>(::getpid());
    me.processes = local_ ? local_->processes() : 1;
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
    held_.assign(static_cast<std::size_t>(size_), 0);
    sent_.assign(static_cast<std::size_t>(size_), 0);
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
      for (auto& t : tasks) pending_.push_back(std::move(t));
      outstanding_ += tasks.size();
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
  struct inflight_task {
    std::shared_ptr<task_sink> sink;
    int rank = 0;
    MPI_Request send = MPI_REQUEST_NULL;
    std::vector<std::byte> wire;  // the message, alive until its send completes
    std::chrono::steady_clock::time_point sent_at{};
  };
  struct open_send {
    MPI_Request req = MPI_REQUEST_NULL;
    std::vector<std::byte> wire;
  };

  // ---- rank 0 ----------------------------------------------------------------------------

  void result_loop() {
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
          if (!sending_.empty()) d = std::min<std::chrono::microseconds>(d, 50us);
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

  std::optional<task_request> next_pending() {
    std::lock_guard lk(m_);
    if (pending_.empty() || stop_) return std::nullopt;
    task_request t = std::move(pending_.front());
    pending_.pop_front();
    return t;
  }

  // One rank: the task runs here, on the result thread.
  bool run_one_here() {
    auto t = next_pending();
    if (!t) return false;
    std::vector<std::byte> out;
    const bool ok = run_task(t->entry, t->fn_word, t->payload, out);
    deliver_outcome(*t->sink, ok, out, ::getpid());
    finished_one();
    return true;
  }

  bool has_room() const {
    for (int r = 1; r < size_; ++r)
      if (held_[r] < capacity_[r]) return true;
    return false;
  }

  // The worker rank with the least load (tasks held / capacity), if one has room; ties go
  // round the ranks.
  int pick_rank() {
    int best = -1;
    for (int i = 0; i < size_ - 1; ++i) {
      const int r = 1 + (cursor_ + i) % (size_ - 1);
      if (held_[r] < capacity_[r] &&
          (best < 0 || held_[r] * capacity_[best] < held_[best] * capacity_[r]))
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
      auto t = next_pending();
      if (!t) break;
      any = true;
      const std::uint64_t id = next_id_++;
      std::vector<std::byte> wire;
      try {
        task_header h;
        h.id = id;
        h.entry = portable(reinterpret_cast<std::uintptr_t>(t->entry));
        if (t->fn_word != 0) h.fn = portable(t->fn_word);
        wire = frame(h, t->payload);
        check_message_size(wire.size(), "a task");
      } catch (...) {
        // This task cannot be sent (its function is in no module, or it is too large).
        t->sink->failed(std::current_exception());
        finished_one();
        continue;
      }
      auto& f = inflight_.emplace(id, inflight_task{std::move(t->sink), r, MPI_REQUEST_NULL,
                                                    std::move(wire),
                                                    std::chrono::steady_clock::now()})
                    .first->second;
      ++held_[r];
      ++sent_[r];
      check(MPI_Isend(f.wire.data(), static_cast<int>(f.wire.size()), MPI_BYTE, r, tag_task,
                      comm_, &f.send),
            "MPI_Isend");
      sending_.push_back(id);
    }
    return any;
  }

  // Drives the sends not yet known complete (a large task moves only while MPI is called).
  bool test_sends() {
    bool any = false;
    for (auto it = sending_.begin(); it != sending_.end();) {
      auto f = inflight_.find(*it);
      int done = 1;
      if (f != inflight_.end()) check(MPI_Test(&f->second.send, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done != 0) {
        it = sending_.erase(it);
        any = true;
      } else {
        ++it;
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

  void on_result(message& m) {
    auto [h, payload] = unframe<result_header>(m.bytes);
    auto it = inflight_.find(h.id);
    if (it == inflight_.end()) return;  // failed already (terminate)
    inflight_task f = std::move(it->second);
    inflight_.erase(it);
    // The worker has the task, so its send is complete or about to be.
    check(MPI_Wait(&f.send, MPI_STATUS_IGNORE), "MPI_Wait");
    --held_[f.rank];
    // An exponential average over the last few tasks.
    const auto took = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - f.sent_at);
    turnaround_ = (turnaround_ * 7 + took) / 8;
    const pid_t pid = h.pid != 0 ? static_cast<pid_t>(h.pid) : pids_[f.rank];
    switch (static_cast<outcome_kind>(h.kind)) {
      case outcome_kind::ok: deliver_outcome(*f.sink, true, payload, pid); break;
      case outcome_kind::failed: deliver_outcome(*f.sink, false, payload, pid); break;
      case outcome_kind::lost: {
        std::string why;
        try {
          why = decode<std::string>(payload);
        } catch (const std::exception& e) {
          why = e.what();
        }
        f.sink->failed(std::make_exception_ptr(worker_lost_error(
            fmt::format("shmkit::mpi_pool: rank {} (pid {}) lost the task: {}", f.rank,
                        pids_[f.rank], why))));
        break;
      }
      default:
        f.sink->failed(std::make_exception_ptr(error(fmt::format(
            "shmkit::mpi_pool: rank {} sent a result of unknown kind {}", f.rank, h.kind))));
    }
    finished_one();
  }

  void finished_one() {
    std::lock_guard lk(m_);
    if (--outstanding_ == 0) idle_.notify_all();
    // relaxed: read only by the SIGTERM message.
    unfinished_tasks.store(static_cast<long>(outstanding_), std::memory_order_relaxed);
  }

  // Fails every pending and in-flight task with `e`. The sends of those in flight stay open
  // until release_workers() completes them.
  void fail_everything(std::exception_ptr e) {
    std::deque<task_request> pending;
    {
      std::lock_guard lk(m_);
      pending.swap(pending_);
    }
    for (auto& t : pending) {
      t.sink->failed(e);
      finished_one();
    }
    for (auto& [id, f] : inflight_) {
      f.sink->failed(e);
      finished_one();
      orphans_.push_back(open_send{f.send, std::move(f.wire)});
    }
    inflight_.clear();
    sending_.clear();
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
      auto m = try_receive(comm_, MPI_ANY_SOURCE, MPI_ANY_TAG);
      if (!m) {
        std::this_thread::sleep_for(nap.next());
        continue;
      }
      nap.reset();
      if (m->tag == tag_bye)
        ++byes;
      else if (m->tag == tag_result)
        on_result(*m);
    }
    for (auto& o : orphans_) check(MPI_Wait(&o.req, MPI_STATUS_IGNORE), "MPI_Wait");
    orphans_.clear();
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

  struct outcome {
    std::uint64_t id = 0;
    outcome_kind kind = outcome_kind::ok;
    std::int64_t pid = 0;
    std::vector<std::byte> bytes;
  };

  void start_local_pool(int processes) {
    local_.emplace(pool_options{.processes = processes});
  }

  // A task killed the local pool's supervisor, so the pool refuses work (what it held failed
  // with worker_lost_error): the rank makes a new one of the same size, forked now, after
  // MPI_Init (see the constructor for why that works). False when that fails too.
  bool replace_local_pool() noexcept {
    try {
      const int n = local_->processes();
      local_.reset();
      start_local_pool(n);
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shmkit::mpi_pool: rank %d cannot replace its local pool: %s\n",
                   rank_, e.what());
      return false;
    }
  }

  // On the local pool's result thread (or the serving thread): queues an outcome for the
  // serving thread, which sends it.
  void report(outcome o) {
    {
      std::lock_guard lk(done_m_);
      done_.push_back(std::move(o));
    }
    done_cv_.notify_one();
  }

  outcome outcome_of(std::uint64_t id, const std::exception& e) {
    if (dynamic_cast<const worker_lost_error*>(&e) != nullptr)
      return outcome{id, outcome_kind::lost, 0, encode(std::string(e.what()))};
    return outcome{id, outcome_kind::failed, ::getpid(),
                   encode(task_failure{demangle(typeid(e).name()), e.what()})};
  }

  // Hands a task to the local pool; its outcome comes back through report().
  void hand_to_local_pool(std::uint64_t id, std::uint64_t entry, std::uint64_t fn,
                          std::span<const std::byte> payload) {
    for (int attempt = 0;; ++attempt) {
      try {
        if (!local_) throw worker_lost_error("shmkit::mpi_pool: the rank has no local pool left");
        local_
            ->apply_async(&run_in_local_worker, entry, fn,
                          std::vector<std::byte>(payload.begin(), payload.end()))
            .then(
                [this, id](std::tuple<bool, std::int64_t, std::vector<std::byte>> r) {
                  auto& [ok, pid, bytes] = r;
                  report(outcome{id, ok ? outcome_kind::ok : outcome_kind::failed, pid,
                                 std::move(bytes)});
                },
                [this, id](const std::exception& e) { report(outcome_of(id, e)); });
        return;
      } catch (const worker_lost_error& e) {  // the local pool is broken: its supervisor died
        if (attempt == 0 && local_ && replace_local_pool()) continue;
        report(outcome_of(id, e));
        return;
      } catch (const std::exception& e) {
        report(outcome_of(id, e));
        return;
      }
    }
  }

  // Runs the task on this thread (no local pool).
  void run_here(std::uint64_t id, std::uint64_t entry, std::uint64_t fn,
                std::span<const std::byte> payload) {
    std::vector<std::byte> out;
    const bool ok = run_task(reinterpret_cast<task_entry>(static_cast<std::uintptr_t>(entry)), fn,
                             payload, out);
    report(outcome{id, ok ? outcome_kind::ok : outcome_kind::failed, ::getpid(), std::move(out)});
  }

  void send_outcome(outcome& o, std::vector<open_send>& sends) {
    std::vector<std::byte> wire =
        frame(result_header{o.id, static_cast<std::uint8_t>(o.kind), o.pid}, o.bytes);
    if (wire.size() > static_cast<std::size_t>(INT_MAX)) {
      try {
        check_message_size(wire.size(), "a result");
      } catch (const std::exception& e) {
        wire = frame(result_header{o.id, static_cast<std::uint8_t>(outcome_kind::failed), o.pid},
                     encode(task_failure{"shmkit::error", e.what()}));
      }
    }
    sends.push_back(open_send{MPI_REQUEST_NULL, std::move(wire)});
    auto& s = sends.back();
    check(MPI_Isend(s.wire.data(), static_cast<int>(s.wire.size()), MPI_BYTE, 0, tag_result,
                    comm_, &s.req),
          "MPI_Isend");
    last_result_ = std::chrono::steady_clock::now();
  }

  void serve_loop() {
    std::optional<stop_msg> stop;
    std::uint64_t received = 0;
    std::size_t running = 0;  // tasks received whose outcome is not yet sent (or dropped)
    std::vector<open_send> sends;
    std::vector<outcome> done;
    backoff nap;
    for (;;) {
      bool busy = false;
      for (auto it = sends.begin(); it != sends.end();) {
        int complete = 0;
        check(MPI_Test(&it->req, &complete, MPI_STATUS_IGNORE), "MPI_Test");
        it = complete != 0 ? sends.erase(it) : it + 1;
      }
      {
        std::lock_guard lk(done_m_);
        done.swap(done_);
      }
      for (auto& o : done) {
        --running;
        busy = true;
        if (!(stop && stop->drop)) send_outcome(o, sends);
      }
      done.clear();
      if (stop && received == stop->tasks_sent && running == 0) break;
      if (!stop) {
        if (auto s = try_receive(comm_, 0, tag_stop)) {
          stop = decode<stop_msg>(s->bytes);
          // terminate: the local pool kills its workers; what they held fails (not sent).
          if (stop->drop && local_) local_->terminate();
          continue;
        }
      }
      if (auto m = try_receive(comm_, 0, tag_task)) {
        busy = true;
        ++received;
        if (stop && stop->drop) continue;
        ++running;
        auto [h, payload] = unframe<task_header>(m->bytes);
        std::uint64_t entry = 0, fn = 0;
        try {
          entry = local_address(h.entry);
          fn = h.fn ? local_address(*h.fn) : 0;
        } catch (const std::exception& e) {  // the task's module is not loaded here
          report(outcome{h.id, outcome_kind::failed, ::getpid(),
                         encode(task_failure{"shmkit::error", e.what()})});
          continue;
        }
        if (opts_.local_pool)
          hand_to_local_pool(h.id, entry, fn, payload);
        else
          run_here(h.id, entry, fn, payload);
      }
      if (busy) {
        nap.reset();
        continue;
      }
      // Idle: wait for an outcome of the local pool, or the next poll of MPI. Polls come
      // often only while rank 0 may send a task (the rank has room for one and tasks out);
      // a full rank gets none until it sends a result, and each poll preempts a local worker.
      std::unique_lock lk(done_m_);
      const bool expecting = running > 0 && running < capacity_here_ &&
                             std::chrono::steady_clock::now() - last_result_ < refill_window;
      // A large result moves only while this rank calls MPI (rendezvous protocol): nap
      // briefly until its send completes (as rank 0 does for its sends).
      const auto d = nap.next(!sends.empty() ? 50us : expecting ? busy_nap : 1000us);
      if (d > 0us) done_cv_.wait_for(lk, d, [&] { return !done_.empty(); });
    }
    for (auto& s : sends) check(MPI_Wait(&s.req, MPI_STATUS_IGNORE), "MPI_Wait");
    // Every task's outcome is in: the local pool's workers leave (close, join) before the
    // rank says bye, so none outlives the pool.
    if (local_) {
      if (!(stop && stop->drop)) {
        local_->close();
        local_->join();
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
  std::vector<int> pids_;  // by rank
  std::vector<std::size_t> capacity_;  // by rank: tasks it may hold
  int processes_ = 0;                  // processes running tasks, over the worker ranks
  std::size_t capacity_here_ = 1;      // worker ranks: the tasks rank 0 may keep here
  std::chrono::steady_clock::time_point last_result_{};  // worker ranks: last result sent
  std::chrono::microseconds turnaround_{128};  // rank 0: usual dispatch-to-result time
  std::thread thread_;

  // Rank 0. m_ guards pending_, outstanding_ and the flags; the rest belongs to the
  // result thread.
  std::mutex m_;
  std::condition_variable wake_;  // the result thread waits here for work
  std::condition_variable idle_;  // join() waits here for outstanding_ == 0
  std::deque<task_request> pending_;
  posted_jobs posted_;
  std::size_t outstanding_ = 0;
  bool closed_ = false, stop_ = false, drop_ = false, broken_ = false, thread_done_ = false;
  std::string broken_why_;
  std::unordered_map<std::uint64_t, inflight_task> inflight_;
  std::vector<std::uint64_t> sending_;  // ids whose task send may not be complete yet
  std::vector<open_send> orphans_;      // sends of tasks failed before their result came
  std::vector<std::size_t> held_;       // by rank: tasks in flight
  std::vector<std::uint64_t> sent_;     // by rank: tasks sent in all
  std::unordered_map<std::uint64_t, portable_address> portable_;
  std::uint64_t next_id_ = 1;
  int cursor_ = 0;

  // Worker ranks: (module, offset) -> address here.
  std::map<std::pair<std::string, std::uint64_t>, std::uint64_t> local_addresses_;
  std::mutex done_m_;          // guards done_
  std::condition_variable done_cv_;
  std::vector<outcome> done_;  // outcomes not yet sent, from the local pool's callbacks
  // The rank's local pool (none with local_pool = false); declared last, so destroyed first:
  // its callbacks use done_.
  std::optional<pool> local_;
};

}  // namespace

std::shared_ptr<mpi_runtime> mpi_runtime::start(int* argc, char*** argv,
                                                mpi_pool_options options) {
  auto rt = std::make_shared<runtime>(argc, argv, options);
  rt->begin();
  return rt;
}

}  // namespace shmkit::detail
