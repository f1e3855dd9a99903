// SPDX-License-Identifier: MIT
// The pool's runtime: supervisor, workers, result thread. See pool.hpp for the contract.
//
// Processes: the caller's process (the parent) forks one supervisor (a daemon shmkit::process)
// before it starts any thread of its own; the supervisor forks the workers and, whenever one
// ends, reports it on the result queue and forks a replacement, so no fork ever happens in the
// possibly multithreaded parent after start. Each worker has an inbox (a shmkit::queue of at
// most `depth` tasks) and all share one result queue back to the parent.
//
// Knowing which task a dead worker held: every worker writes, in its slot of a shared table,
// `getting` before it takes from its inbox and the task's id once it has it, and 0 once its
// result is sent. The supervisor reads that word after reaping the worker and before forking
// the replacement, and sends it with the death report. The parent fails that task; if the
// worker died inside get(), the oldest task the parent gave it (the one get() was taking, which
// the queue may have lost) fails. A task failed this way whose result still arrives (the worker
// finished it just before dying) keeps its failure: results are accepted once.
#include "shmkit/pool.hpp"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <map>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>

#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/shared_object.hpp"
#include "shmkit/process.hpp"
#include "shmkit/queue.hpp"

namespace shmkit::detail {
namespace {

using namespace std::chrono_literals;

struct task_msg {
  std::uint64_t id = 0;  // 0: leave (sentinel)
  std::uint64_t entry = 0;
  std::uint64_t fn_word = 0;
  std::vector<std::byte> payload;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(id, entry, fn_word, payload);
  }
};

enum class msg_kind : std::uint32_t { ok = 1, failed, worker_exit, kick, supervisor_done };

struct result_msg {
  std::uint32_t kind = 0;
  std::int32_t slot = -1;
  std::uint64_t task = 0;   // the task (ok / failed), or what the dead worker held (worker_exit)
  std::int64_t status = 0;  // worker_exit: the wait status
  std::int64_t pid = 0;     // worker_exit: the worker's pid
  std::vector<std::byte> payload;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(kind, slot, task, status, pid, payload);
  }
};

constexpr std::uint64_t getting = ~std::uint64_t(0);
constexpr std::size_t depth = 2;  // tasks queued per worker

struct worker_slot {
  std::atomic<std::int32_t> pid{0};       // written by the supervisor after fork
  std::atomic<std::uint64_t> current{0};  // 0, `getting`, or the id of the task held
};
static_assert(std::atomic<std::int32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct pool_shared {
  std::atomic<std::uint32_t> stopping{0};     // close(): workers that end are not replaced
  std::atomic<std::uint32_t> terminating{0};  // terminate(): kill everything
  std::uint32_t workers = 0;
  explicit pool_shared(std::uint32_t n) : workers(n) {}
  worker_slot* slots() { return reinterpret_cast<worker_slot*>(this + 1); }
};

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    const char* s = ::strsignal(WTERMSIG(status));
    return fmt::format("killed by signal {} ({})", WTERMSIG(status), s ? s : "?");
  }
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  return fmt::format("ended with wait status {}", status);
}

class runtime final : public pool_runtime, public std::enable_shared_from_this<runtime> {
 public:
  explicit runtime(pool_options o) : opts_(std::move(o)) {
    nworkers_ = opts_.processes > 0 ? opts_.processes : cpu_count();
    if (opts_.maxtasksperchild < 0)
      throw std::invalid_argument("shmkit::pool: maxtasksperchild must be >= 0");
    shared_ = shared_object<pool_shared>({object_kind::internal},
                                         sizeof(worker_slot) * nworkers_,
                                         static_cast<std::uint32_t>(nworkers_));
    for (int i = 0; i < nworkers_; ++i) new (&shared_.state()->slots()[i]) worker_slot;
    results_.emplace(1024, queue_options{.heap_bytes = 64u << 20});
    for (int i = 0; i < nworkers_; ++i)
      inboxes_.push_back(std::make_unique<queue<task_msg>>(depth + 2,
                                                            queue_options{.heap_bytes = 16u << 20}));
    slots_.resize(nworkers_);
    supervisor_ = process([this] { supervise(); });
    supervisor_.daemon(true);
    supervisor_.name("shmkit-pool-supervisor");
    supervisor_.start();
  }

  void start_thread() {
    thread_ = std::thread([self = shared_from_this()] { self->result_loop(); });
  }

  ~runtime() override { terminate(); }

  void submit(std::vector<task_request> tasks) override {
    {
      std::lock_guard lk(m_);
      if (closed_ || terminated_)
        throw std::logic_error("shmkit::pool: the pool is closed; no new tasks");
      if (broken_) throw worker_lost_error(broken_why_);
      for (auto& t : tasks) {
        t.payload.shrink_to_fit();
        pending_.push_back(std::move(t));
      }
      outstanding_ += tasks.size();
    }
    kick();
  }

  bool post(std::function<void()> job) override {
    {
      std::lock_guard lk(m_);
      if (thread_done_) return false;
      if (std::this_thread::get_id() == thread_.get_id()) {
        // Already on the result thread: run after the current message, in order.
        posted_.push_back(std::move(job));
        return true;
      }
      posted_.push_back(std::move(job));
    }
    kick();
    return true;
  }

  void close() override {
    std::lock_guard lk(m_);
    closed_ = true;
  }

  void join() override {
    {
      std::unique_lock lk(m_);
      if (!closed_ && !terminated_)
        throw std::logic_error("shmkit::pool: join() before close() or terminate()");
      idle_cv_.wait(lk, [&] { return outstanding_ == 0 || terminated_ || broken_; });
    }
    shutdown_workers();
  }

  void terminate() noexcept override {
    {
      std::lock_guard lk(m_);
      if (finished_) return;
      terminated_ = true;
    }
    auto* sh = shared_.state();
    sh->stopping.store(1);
    sh->terminating.store(1);
    for (int i = 0; i < nworkers_; ++i) {
      const pid_t p = sh->slots()[i].pid.load();
      if (p > 0) ::kill(p, SIGKILL);
    }
    // The supervisor reaps the killed workers, kills any it forked meanwhile, and leaves.
    try {
      if (!supervisor_.join_for(10s)) {
        supervisor_.kill();
        supervisor_.join();
      }
    } catch (...) {
    }
    stop_thread();
    fail_everything(std::make_exception_ptr(
        worker_lost_error("shmkit::pool: the pool was terminated before the task finished")));
    std::lock_guard lk(m_);
    finished_ = true;
    idle_cv_.notify_all();
  }

  int processes() const noexcept override { return nworkers_; }

  std::vector<pid_t> worker_pids() const override {
    std::vector<pid_t> v;
    for (int i = 0; i < nworkers_; ++i) {
      const pid_t p = shared_.state()->slots()[i].pid.load();
      if (p > 0) v.push_back(p);
    }
    return v;
  }

 private:
  // ---- parent side ---------------------------------------------------------------------

  void kick() {
    if (kick_pending_.exchange(true)) return;
    try {
      result_msg k;
      k.kind = static_cast<std::uint32_t>(msg_kind::kick);
      results_->put(k);
    } catch (...) {
      kick_pending_.store(false);
    }
  }

  struct inflight_task {
    std::shared_ptr<task_sink> sink;
    int slot;
  };
  struct slot_book {
    std::deque<std::uint64_t> held;  // ids given to this worker, oldest first
    long assigned = 0;               // tasks given to the worker's current incarnation
  };

  void result_loop() {
    for (;;) {
      std::optional<result_msg> m;
      try {
        m = results_->get_for(250ms);
      } catch (const closed_error&) {
        break;
      }
      if (!m) {
        if (stop_thread_.load()) break;
        check_supervisor();
        dispatch();
        continue;
      }
      handle(std::move(*m));
      // Drain what else is there before dispatching again.
      for (int i = 0; i < 255; ++i) {
        auto more = results_->try_get();
        if (!more) break;
        handle(std::move(*more));
      }
      run_posted();
      if (stop_thread_.load()) break;
      dispatch();
    }
    run_posted();
    std::lock_guard lk(m_);
    thread_done_ = true;
  }

  void handle(result_msg&& m) {
    switch (static_cast<msg_kind>(m.kind)) {
      case msg_kind::ok:
      case msg_kind::failed:
        complete(m);
        break;
      case msg_kind::worker_exit:
        worker_ended(m);
        break;
      case msg_kind::kick:
        kick_pending_.store(false);
        break;
      case msg_kind::supervisor_done:
        break;
    }
  }

  void complete(result_msg& m) {
    auto it = inflight_.find(m.task);
    if (it == inflight_.end()) return;  // already failed as lost
    auto sink = std::move(it->second.sink);
    forget(it->second.slot, m.task);
    inflight_.erase(it);
    deliver(*sink, m.kind == static_cast<std::uint32_t>(msg_kind::ok), m.payload, m.pid);
    finished_one();
  }

  static void deliver(task_sink& sink, bool ok, std::span<const std::byte> payload, pid_t pid) {
    try {
      if (ok) {
        sink.succeeded(payload);
      } else {
        auto f = decode<task_failure>(payload);
        sink.failed(std::make_exception_ptr(remote_error(f.type_name, f.message, pid)));
      }
    } catch (...) {
      sink.failed(std::current_exception());
    }
  }

  void worker_ended(const result_msg& m) {
    if (m.slot < 0 || m.slot >= nworkers_) return;
    auto& book = slots_[m.slot];
    std::optional<std::uint64_t> lost;
    if (m.task == getting) {
      if (!book.held.empty()) lost = book.held.front();
    } else if (m.task != 0) {
      lost = m.task;
    }
    const bool clean = WIFEXITED(m.status) && WEXITSTATUS(m.status) == 0;
    if (lost) {
      auto it = inflight_.find(*lost);
      if (it != inflight_.end()) {
        auto sink = std::move(it->second.sink);
        forget(m.slot, *lost);
        inflight_.erase(it);
        sink->failed(std::make_exception_ptr(worker_lost_error(fmt::format(
            "shmkit::pool: worker {} (pid {}) {} while running a task", m.slot, m.pid,
            describe_status(static_cast<int>(m.status))))));
        finished_one();
      }
    } else if (!clean && m.task == 0) {
      // Died between tasks: it held nothing; what is in its inbox goes to the replacement.
    }
    // The replacement inherits the inbox: what is still queued there counts toward it.
    book.assigned = static_cast<long>(book.held.size());
  }

  void forget(int slot, std::uint64_t id) {
    auto& held = slots_[slot].held;
    for (auto it = held.begin(); it != held.end(); ++it)
      if (*it == id) {
        held.erase(it);
        return;
      }
  }

  void finished_one() {
    std::lock_guard lk(m_);
    if (--outstanding_ == 0) idle_cv_.notify_all();
  }

  void dispatch() {
    std::unique_lock lk(m_);
    if (pending_.empty() || broken_ || terminated_) return;
    const long max = opts_.maxtasksperchild;
    for (bool progress = true; progress && !pending_.empty();) {
      progress = false;
      for (int s = 0; s < nworkers_ && !pending_.empty(); ++s) {
        auto& book = slots_[s];
        if (book.held.size() >= depth || (max > 0 && book.assigned >= max)) continue;
        task_request t = std::move(pending_.front());
        pending_.pop_front();
        const std::uint64_t id = next_id_++;
        task_msg msg{id, reinterpret_cast<std::uintptr_t>(t.entry), t.fn_word,
                     std::move(t.payload)};
        lk.unlock();
        bool sent = false;
        std::exception_ptr err;
        try {
          sent = inboxes_[s]->try_put(msg);
        } catch (...) {
          err = std::current_exception();
        }
        lk.lock();
        if (err) {
          // The task itself cannot be sent (e.g. larger than the inbox's heap).
          lk.unlock();
          t.sink->failed(err);
          finished_one();
          lk.lock();
          progress = true;
          continue;
        }
        if (!sent) {  // the inbox is full after all: put it back, try later
          t.payload = std::move(msg.payload);
          pending_.push_front(std::move(t));
          continue;
        }
        inflight_.emplace(id, inflight_task{std::move(t.sink), s});
        book.held.push_back(id);
        ++book.assigned;
        progress = true;
      }
    }
  }

  void run_posted() {
    for (;;) {
      std::function<void()> job;
      {
        std::lock_guard lk(m_);
        if (posted_.empty()) return;
        job = std::move(posted_.front());
        posted_.pop_front();
      }
      try {
        job();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shmkit::pool: a callback threw: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "shmkit::pool: a callback threw\n");
      }
    }
  }

  void check_supervisor() {
    bool dead = false;
    try {
      dead = !supervisor_.is_alive();
    } catch (...) {
      dead = true;
    }
    if (!dead) return;
    {
      std::lock_guard lk(m_);
      if (terminated_ || finished_ || broken_) return;
      broken_ = true;
      broken_why_ = fmt::format("shmkit::pool: the pool's supervisor (pid {}) died; its workers "
                                "are gone",
                                supervisor_.pid());
    }
    auto* sh = shared_.state();
    for (int i = 0; i < nworkers_; ++i) {
      const pid_t p = sh->slots()[i].pid.load();
      if (p > 0) ::kill(p, SIGKILL);
    }
    fail_everything(std::make_exception_ptr(worker_lost_error(broken_why_)));
  }

  // Fails every pending and in-flight task (terminate, broken pool). Called from the result
  // thread or after it stopped.
  void fail_everything(std::exception_ptr e) {
    std::deque<task_request> pending;
    {
      std::lock_guard lk(m_);
      pending.swap(pending_);
    }
    auto inflight = std::move(inflight_);
    inflight_.clear();
    for (auto& b : slots_) b.held.clear();
    for (auto& t : pending) {
      t.sink->failed(e);
      finished_one();
    }
    for (auto& [id, t] : inflight) {
      t.sink->failed(e);
      finished_one();
    }
  }

  void stop_thread() noexcept {
    if (!thread_.joinable()) return;
    stop_thread_.store(true);
    kick_pending_.store(false);
    kick();
    if (std::this_thread::get_id() == thread_.get_id())
      thread_.detach();
    else
      thread_.join();
  }

  void shutdown_workers() {
    {
      std::lock_guard lk(m_);
      if (finished_) return;
    }
    shared_.state()->stopping.store(1);
    if (!broken_ && !terminated_) {
      for (auto& q : inboxes_) {
        try {
          q->put(task_msg{});  // leave
        } catch (...) {
        }
      }
    }
    try {
      supervisor_.join();
    } catch (...) {
    }
    stop_thread();
    std::lock_guard lk(m_);
    finished_ = true;
  }

  // ---- supervisor side (a separate, single-threaded process) --------------------------

  [[noreturn]] void supervise() {
    ::signal(SIGPIPE, SIG_IGN);
    auto* sh = shared_.state();
    std::map<pid_t, int> children;
    for (int i = 0; i < nworkers_; ++i) children.emplace(spawn_worker(i), i);
    for (;;) {
      if (sh->terminating.load()) {
        for (auto& [p, s] : children) ::kill(p, SIGKILL);
      }
      int status = 0;
      const pid_t p = ::waitpid(-1, &status, 0);
      if (p < 0) {
        if (errno == EINTR) continue;
        break;  // no children left
      }
      auto it = children.find(p);
      if (it == children.end()) continue;
      const int slot = it->second;
      children.erase(it);
      auto& ws = sh->slots()[slot];
      result_msg m;
      m.kind = static_cast<std::uint32_t>(msg_kind::worker_exit);
      m.slot = slot;
      m.task = ws.current.load();
      m.status = status;
      m.pid = p;
      ws.pid.store(0);
      ws.current.store(0);
      if (!sh->terminating.load()) {
        try {
          results_->put(m);
        } catch (...) {
        }
      }
      const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      const bool replace = !sh->terminating.load() && (!sh->stopping.load() || !clean);
      if (replace) children.emplace(spawn_worker(slot), slot);
      if (children.empty()) break;
    }
    result_msg done;
    done.kind = static_cast<std::uint32_t>(msg_kind::supervisor_done);
    try {
      if (!sh->terminating.load()) results_->put(done);
    } catch (...) {
    }
    std::fflush(nullptr);
    std::_Exit(0);
  }

  pid_t spawn_worker(int slot) {
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    pid_t p;
    do {
      p = ::fork();
    } while (p < 0 && (errno == EAGAIN || errno == EINTR) && (::usleep(10000), true));
    if (p == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) std::_Exit(0);  // the supervisor died before prctl
      work(slot);
    }
    shared_.state()->slots()[slot].pid.store(p);
    return p;
  }

  [[noreturn]] void work(int slot) {
    auto& ws = shared_.state()->slots()[slot];
    auto& inbox = *inboxes_[slot];
    if (opts_.initializer) {
      try {
        opts_.initializer();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shmkit::pool: worker initializer failed: %s\n", e.what());
        std::fflush(nullptr);
        std::_Exit(2);
      }
    }
    long done = 0;
    std::vector<std::byte> out;
    for (;;) {
      // release: pairs with the supervisor's load after waitpid(); the order of these stores
      // is what the death report relies on.
      ws.current.store(getting, std::memory_order_release);
      task_msg t;
      try {
        t = inbox.get();
      } catch (...) {
        break;
      }
      if (t.id == 0) break;
      ws.current.store(t.id, std::memory_order_release);
      result_msg r;
      r.slot = slot;
      r.task = t.id;
      r.pid = ::getpid();
      const bool ok = run_task(reinterpret_cast<task_entry>(static_cast<std::uintptr_t>(t.entry)),
                               t.fn_word, t.payload, out);
      r.kind = static_cast<std::uint32_t>(ok ? msg_kind::ok : msg_kind::failed);
      r.payload = std::move(out);
      out = {};
      try {
        results_->put(r);
      } catch (const closed_error&) {
        break;
      } catch (const std::exception& e) {
        // The result cannot travel (too large for the result queue): report that instead.
        r.kind = static_cast<std::uint32_t>(msg_kind::failed);
        r.payload = encode(task_failure{"shmkit::error", e.what()});
        try {
          results_->put(r);
        } catch (...) {
          break;
        }
      }
      ws.current.store(0, std::memory_order_release);
      if (opts_.maxtasksperchild > 0 && ++done >= opts_.maxtasksperchild) break;
    }
    ws.current.store(0, std::memory_order_release);
    std::fflush(nullptr);
    std::_Exit(0);
  }

  pool_options opts_;
  int nworkers_ = 1;
  shared_object<pool_shared> shared_;
  std::optional<queue<result_msg>> results_;
  std::vector<std::unique_ptr<queue<task_msg>>> inboxes_;
  process supervisor_;
  std::thread thread_;

  // Parent state. m_ guards pending_, posted_, outstanding_ and the flags; inflight_ and
  // slots_ belong to the result thread (and to terminate() once it stopped).
  std::mutex m_;
  std::condition_variable idle_cv_;
  std::deque<task_request> pending_;
  std::deque<std::function<void()>> posted_;
  std::size_t outstanding_ = 0;
  bool closed_ = false, terminated_ = false, broken_ = false, finished_ = false;
  bool thread_done_ = false;
  std::string broken_why_;
  std::unordered_map<std::uint64_t, inflight_task> inflight_;
  std::vector<slot_book> slots_;
  std::uint64_t next_id_ = 1;
  std::atomic<bool> kick_pending_{false};
  std::atomic<bool> stop_thread_{false};
};

}  // namespace

std::shared_ptr<pool_runtime> pool_runtime::start(pool_options options) {
  auto rt = std::make_shared<runtime>(std::move(options));
  rt->start_thread();
  return rt;
}

}  // namespace shmkit::detail
