// SPDX-License-Identifier: MIT
// The pool's runtime: supervisor, workers, result thread. See pool.hpp for the contract.
//
// Processes: the caller's process (the parent) forks one supervisor (a daemon shmkit::process)
// before it starts any thread of its own; the supervisor forks the workers and, whenever one
// ends, reports it on the result queue and forks a replacement, so no fork ever happens in the
// possibly multithreaded parent after start. Each worker has an inbox (a shmkit::queue of at
// most `depth` fixed task records, with a bulk queue beside it for arguments that do not fit
// a record) and all share one result queue back to the parent.
//
// Per task, the parent does little: tasks are submitted as batches (task_batch) that encode
// a task's arguments only when it is sent, into a reused buffer; the records for one worker
// (copied into their slots as they are, no codec) go with one put_many; the tasks a worker holds are a FIFO of plain records
// (workers answer in order), each batch kept alive once, not per task. Workers take what is
// queued in their inbox (up to half the deepest inbox) at once and send the outcomes of tiny
// tasks packed in one message (held no longer than batch_window), which the parent takes with
// get_many: a stream of tiny tasks costs one claim and one wake-up per batch, not per task.
// How deep an inbox gets is bounded by the run time workers report (depth_locked()).
//
// Knowing which tasks a dead worker held: every worker writes, in its slot of a shared table,
// `getting` before it takes from its inbox and the running task's id once it has it. The
// supervisor reads that word after reaping the worker and before forking the replacement,
// and sends it with the death report. A worker that died running task X: X fails at once.
// It may also have taken more tasks, or held results not yet sent, or died inside get()
// having taken a batch with it (the queue loses at most the messages a killed consumer was
// taking) or nothing: whenever it held tasks, the parent queues a probe behind them. The
// replacement takes the inbox in order and answers the probe at once; results come back in the order they were sent, so when the probe's answer
// arrives, every task queued before it that has no result was lost, and fails. A task failed
// while its result is still on the way keeps its failure: results are accepted once.
#include "shmkit/pool.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <dirent.h>
#include <sys/mman.h>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <map>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>

#include "shmkit/detail/barrier_state.hpp"
#include "shmkit/detail/identity.hpp"
#include "shmkit/detail/shared_object.hpp"
#include "shmkit/process.hpp"
#include "shmkit/queue.hpp"
#include "shmkit/shared_memory.hpp"

namespace shmkit::detail {
namespace {

using namespace std::chrono_literals;

// What goes through a worker's inbox: a fixed record, copied into its slot as it is (no
// codec, no heap). Arguments of up to inline_args bytes travel in it; larger ones in a
// bulk_msg on the worker's bulk queue, put just before the record.
constexpr std::size_t inline_args = 64;
constexpr std::uint32_t in_bulk = ~std::uint32_t(0);  // task_slot::size: see the bulk queue
struct task_slot {
  std::uint64_t id = 0;  // 0: leave (sentinel); entry 0 with an id: a probe, answered at once
  std::uint64_t entry = 0;
  std::uint64_t fn_word = 0;
  std::uint32_t size = 0;  // bytes of args, or in_bulk
  std::uint32_t unused = 0;
  std::array<std::byte, inline_args> args;
};
static_assert(is_raw_encodable_v<task_slot> && sizeof(task_slot) <= queue_inline_bytes);

// The arguments of task `id` when they do not fit its task_slot.
struct bulk_msg {
  std::uint64_t id = 0;
  std::vector<std::byte> payload;
  std::string blob;  // a large payload's own shared_memory, instead of `payload`
  template <class Ar>
  void serialize(Ar& ar) {
    ar(id, payload, blob);
  }
};

enum class msg_kind : std::uint32_t {
  ok = 1, failed, worker_exit, supervisor_done, probe,
  packed  // the outcomes of several small tasks of one worker, in order
};

// One task's outcome in a packed result_msg: its bytes are the next `size` of the payload.
struct packed_outcome {
  std::uint64_t task = 0;
  std::uint32_t ok = 0;
  std::uint32_t size = 0;
  std::int64_t ns = 0;  // how long it ran
};
static_assert(is_raw_encodable_v<packed_outcome>);

struct result_msg {
  std::uint32_t kind = 0;
  std::int32_t slot = -1;
  std::uint64_t task = 0;   // the task (ok / failed), or what the dead worker held (worker_exit)
  std::int64_t status = 0;  // worker_exit: the wait status; ok / failed: ns the task ran
  std::int64_t pid = 0;     // the worker's pid
  std::vector<std::byte> payload;  // packed: the outcomes' bytes, one after the other
  std::string blob;  // a large result's own shared_memory, instead of `payload`
  std::vector<packed_outcome> packed;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(kind, slot, task, status, pid, payload, blob, packed);
  }
};

constexpr std::uint64_t getting = ~std::uint64_t(0);
// A worker's `current` when its initializer failed: it never took a task, and no replacement
// would do better, so the supervisor stops replacing it and the pool breaks (every task fails
// with the initializer's error instead of waiting for ever for a worker).
constexpr std::uint64_t initializer_failed = ~std::uint64_t(0) - 1;
constexpr std::size_t max_depth = 1024;     // tasks queued per worker, at most
constexpr std::size_t initial_depth = 16;   // the same before the worker reported a run time
constexpr std::size_t inbox_capacity = max_depth + 8;
// Arguments in flight on a bulk queue, at most (more wait for its worker to take some).
constexpr std::size_t bulk_capacity = 64;
// Tasks queued per worker hold about this much of its time at most (see depth_locked()).
constexpr std::chrono::nanoseconds max_queued_work = 2ms;
// dispatch_locked() sends a worker what it gathered for it once it holds this many.
constexpr std::size_t early_flush = 128;
constexpr std::size_t stash_threshold = 256u << 10;  // larger payloads travel beside the queues
// The queues' heaps hold messages larger than a slot, up to the stash threshold; a full heap
// only holds a sender back until the receiver takes (arguments go to a bulk queue with
// try_put, within what its heap holds; inboxes have no heap). They
// are reserved page by page at pool start, which is most of what starting a pool costs, so
// they hold a few of the largest messages, not more.
constexpr std::size_t results_heap = 4 * stash_threshold;
constexpr std::size_t inbox_heap = 2 * stash_threshold;
// A worker sends the results of tiny tasks together, holding them at most this long, in one
// message of up to pack_bytes of results (results larger than pack_limit go alone).
constexpr std::chrono::nanoseconds batch_window = 20us;
constexpr std::size_t pack_bytes = 16 * 1024, pack_limit = 1024;
// How long a thread waiting for a result takes results itself before it sleeps (help()).
constexpr std::chrono::nanoseconds max_help = 100us, min_help = 4us;

struct alignas(16) worker_slot {
  std::atomic<std::int32_t> pid{0};       // written by the supervisor after fork
  std::atomic<std::uint64_t> current{0};  // 0, `getting`, or the id of the task held
};
static_assert(std::atomic<std::int32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct alignas(64) pool_shared {  // the worker slots follow it, aligned
  std::atomic<std::uint32_t> stopping{0};     // close(): workers that end are not replaced
  std::atomic<std::uint32_t> terminating{0};  // terminate(): kill everything
  std::atomic<std::uint32_t> started{0};      // 1 once the first workers are forked
  waitpoint started_wp;
  // Notified after every put on the result queue (and by the parent's kick()): the result
  // thread sleeps here, not inside the queue, so that it never holds a message while another
  // thread of the parent takes the next one (see runtime::help()).
  waitpoint results_wp;
  // Parent threads polling the result queue right now (help()): while one does, senders skip
  // the wake-up, so a tiny task's round trip makes no system call and wakes no result thread.
  std::atomic<std::uint32_t> polling{0};
  std::uint32_t workers = 0;
  explicit pool_shared(std::uint32_t n) : workers(n) {}
  worker_slot* slots() { return reinterpret_cast<worker_slot*>(this + 1); }
};

// A forked worker inherits the caller's signal handlers (a test framework's, say): a crash in
// a task must end the worker, not run the caller's handler in the worker's copy of it.
void reset_signals() {
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGTERM, SIGALRM})
    ::signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

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
    parent_pid_ = ::getpid();
    shared_ = shared_object<pool_shared>({object_kind::internal},
                                         sizeof(worker_slot) * nworkers_,
                                         static_cast<std::uint32_t>(nworkers_));
    for (int i = 0; i < nworkers_; ++i) new (&shared_.state()->slots()[i]) worker_slot;
    results_.emplace(4096, queue_options{.heap_bytes = results_heap});
    for (int i = 0; i < nworkers_; ++i) {
      inboxes_.push_back(std::make_unique<queue<task_slot>>(inbox_capacity,
                                                            queue_options{.heap_bytes = 0}));
      bulk_.push_back(std::make_unique<queue<bulk_msg>>(
          bulk_capacity, queue_options{.heap_bytes = inbox_heap}));
    }
    slots_.resize(nworkers_);
    depth_.resize(nworkers_);
    outbox_.resize(nworkers_);
    supervisor_ = process([this] { supervise(); });
    supervisor_.daemon(true);
    supervisor_.name("shmkit-pool-supervisor");
    supervisor_.start();
    // Like Python's Pool(): the constructor returns with every worker forked and listed.
    auto* sh = shared_.state();
    while (!sh->started_wp.wait_until([&] { return sh->started.load() != 0; },
                                      deadline_after(std::chrono::milliseconds(100))))
      if (!supervisor_.is_alive())
        throw error("shmkit::pool: the supervisor process ended while starting the workers");
  }

  void start_thread() {
    thread_ = std::thread([self = shared_from_this()] { self->result_loop(); });
  }

  ~runtime() override { terminate(); }

  void submit(std::vector<task_request> tasks) override {
    for (auto& t : tasks) submit_batch(std::make_shared<request_batch>(std::move(t)));
  }

  void submit_batch(std::shared_ptr<task_batch> batch) override {
    done_list failures;
    {
      std::lock_guard lk(m_);
      if (closed_ || terminated_)
        throw std::logic_error("shmkit::pool: the pool is closed; no new tasks");
      if (broken_) throw worker_lost_error(broken_why_);
      const std::size_t n = batch->size();
      if (n == 0) return;
      pending_.push_back({std::move(batch), 0, n});
      pending_count_ += n;
      outstanding_ += n;
      // Straight into the workers' inboxes from this thread: no hop through the result thread.
      dispatch_locked(failures);
    }
    finished(failures.deliver());
  }

  bool post(std::function<void()> job) override {
    if (!posted_.push(std::move(job))) return false;
    if (!on_callback_thread()) kick();
    return true;
  }

  bool on_callback_thread() const override {
    return std::this_thread::get_id() == thread_.get_id();
  }

  // A thread about to wait for a result takes results itself while they come quickly: a
  // tiny task's round trip then costs no hand-over between threads and no system call in the
  // parent. Results are only ever taken under token_, so they are handled in queue order
  // (which the death reports and probes rely on), whoever takes them. The spin adapts per
  // thread: halved each time it ends in vain, doubled when it catches the result. A thread
  // whose task has just woken a sleeping worker (woke_sleeper, set by the inbox's put) spins
  // the full max_help whatever its record, as a queue's waiter does (queue_ring::block()):
  // the answer comes after the worker's wake-up latency (tens of microseconds on a virtual
  // machine), and a wait that sleeps through it costs two more wake-ups (the result thread,
  // then this one), which kept a pool of idle workers at ~25 us per apply_async(f).get()
  // instead of ~1.4 us once it had fallen into that state. Likewise a thread that gave up
  // and is back within max_help (its result came soon after it slept, and it has already
  // sent the next task): the spin was nearly enough, and a spin halved again would miss
  // every answer that takes two wake-ups, for good (~20 us round trips after a stream of
  // imap results had worn the budget down to min_help).
  bool help(const std::function<bool()>& done) override {
    if (done()) return true;
    if (on_callback_thread()) return false;
    thread_local std::chrono::nanoseconds budget = max_help;
    thread_local clock::time_point gave_up{};
    const auto start = clock::now();
    if (gave_up != clock::time_point{} && start - gave_up < max_help) budget = max_help;
    gave_up = {};
    const bool woke = woke_sleeper;
    woke_sleeper = false;
    auto* sh = shared_.state();
    sh->polling.fetch_add(1, std::memory_order_seq_cst);
    const auto end = start + (woke ? max_help : budget);
    bool ok = false;
    for (unsigned n = 1;; ++n) {
      if (done()) {
        ok = true;
        break;
      }
      if (!results_->empty() && token_.try_lock()) {
        std::unique_lock tok(token_, std::adopt_lock);
        try {
          take_results();
        } catch (const closed_error&) {
          break;
        }
        continue;
      }
      if (n % 16 == 0 && clock::now() >= end) break;
      cpu_relax();
    }
    // Senders may have skipped the wake-up while we polled: the last poller out hands what
    // is left to the result thread (Dekker with results_sent()).
    if (sh->polling.fetch_sub(1, std::memory_order_seq_cst) == 1 && !results_->empty()) kick();
    budget = ok ? std::min(budget * 2, max_help) : std::max(budget / 2, min_help);
    if (!ok) gave_up = clock::now();
    return ok;
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
    remove_stashes();
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

  // A task given to a worker (and not yet answered), in the order given. Its batch is kept
  // alive by live_ (see hold_locked()).
  struct held_task {
    std::uint64_t id = 0;
    task_batch* batch = nullptr;
    std::size_t index = 0;
    std::uint32_t heap_bytes = 0;  // what its message takes in the inbox's heap (0: a slot)
    bool stashed = false;          // its arguments went in a stash (named in stashes_)
  };
  // The held tasks of one worker, oldest first, in one circular buffer that grows as needed
  // (a std::deque allocates and frees a block every few tasks).
  class held_fifo {
   public:
    bool empty() const noexcept { return n_ == 0; }
    std::size_t size() const noexcept { return n_; }
    held_task& operator[](std::size_t i) noexcept { return buf_[(head_ + i) & (buf_.size() - 1)]; }
    held_task& front() noexcept { return (*this)[0]; }
    void push_back(const held_task& t) {
      if (n_ == buf_.size()) grow();
      (*this)[n_++] = t;
    }
    // Removes task i, the others keeping their order.
    void erase(std::size_t i) noexcept {
      if (i == 0) {
        head_ = (head_ + 1) & (buf_.size() - 1);
      } else {
        for (std::size_t j = i; j + 1 < n_; ++j) (*this)[j] = (*this)[j + 1];
      }
      --n_;
    }
    void clear() noexcept { head_ = n_ = 0; }

   private:
    void grow() {
      std::vector<held_task> b(std::max<std::size_t>(64, buf_.size() * 2));
      for (std::size_t i = 0; i < n_; ++i) b[i] = (*this)[i];
      buf_ = std::move(b);
      head_ = 0;
    }
    std::vector<held_task> buf_;  // a power of two in size
    std::size_t head_ = 0, n_ = 0;
  };
  static constexpr std::size_t npos = ~std::size_t(0);
  struct slot_book {
    held_fifo held;  // oldest first: the worker answers in this order
    long assigned = 0;  // tasks given to the worker's current incarnation
    // Probes sent after a death: probe id -> the held tasks the dead worker had not started.
    std::map<std::uint64_t, std::vector<std::uint64_t>> probes;
    // How long its tasks run (ns), smoothed, from what the worker reports; < 0: not known.
    double task_ns = -1;
    // Bytes of the inbox's heap its held tasks' messages may take (see dispatch_locked()).
    std::size_t heap_bytes = 0;
    // The position of the task with this id, or npos. Answers come in order, so it is nearly
    // always the first.
    std::size_t find(std::uint64_t id) noexcept {
      for (std::size_t i = 0; i < held.size(); ++i)
        if (held[i].id == id) return i;
      return npos;
    }
  };
  // Tasks of a batch not yet given to a worker: indices [next, end).
  struct pending_run {
    std::shared_ptr<task_batch> batch;
    std::size_t next, end;
  };
  // Outcomes to hand to their batches once m_ is released, in order, one call per run of the
  // same batch; `keep` holds each batch alive until then.
  struct done_list {
    std::vector<task_outcome> outcomes;
    std::vector<task_batch*> batches;
    std::vector<std::shared_ptr<task_batch>> keep;
    void add(const std::shared_ptr<task_batch>& b, task_outcome o) {
      if (keep.empty() || keep.back() != b) keep.push_back(b);
      batches.push_back(b.get());
      outcomes.push_back(std::move(o));
    }
    void fail(const std::shared_ptr<task_batch>& b, std::size_t index, std::exception_ptr e) {
      add(b, task_outcome{index, false, {}, 0, std::move(e)});
    }
    // Returns how many were delivered.
    std::size_t deliver() noexcept {
      const std::size_t n = outcomes.size();
      for (std::size_t i = 0; i < n;) {
        std::size_t j = i + 1;
        while (j < n && batches[j] == batches[i]) ++j;
        batches[i]->deliver(std::span<const task_outcome>(outcomes.data() + i, j - i));
        i = j;
      }
      outcomes.clear();
      batches.clear();
      keep.clear();
      return n;
    }
  };

  // While workers hold tasks of a batch, live_ holds it (one reference per batch, not per
  // task: no shared count touched per task). Under m_.
  void hold_locked(const std::shared_ptr<task_batch>& b) {
    if (b->held_tasks++ != 0) return;
    b->live_index = live_.size();
    live_.push_back(b);
  }
  // A task no longer held: its batch, its index, and the batch's owning pointer when it was
  // the last of it that workers held.
  struct unheld {
    task_batch* batch;
    std::size_t index;
    std::shared_ptr<task_batch> last;
  };
  // Task i of worker `book` is no longer held: removes it and its stash.
  unheld unhold_locked(slot_book& book, std::size_t i) {
    held_task t = book.held[i];
    book.held.erase(i);
    book.heap_bytes -= t.heap_bytes;
    if (t.stashed) {
      auto it = stashes_.find(t.id);
      if (it != stashes_.end()) {
        drop_stash(it->second);  // normally gone already: the worker removes it
        stashes_.erase(it);
      }
    }
    task_batch* b = t.batch;
    if (--b->held_tasks != 0) return {b, t.index, nullptr};
    std::shared_ptr<task_batch> last = std::move(live_[b->live_index]);
    if (b->live_index + 1 != live_.size()) {
      live_[b->live_index] = std::move(live_.back());
      live_[b->live_index]->live_index = b->live_index;
    }
    live_.pop_back();
    return {b, t.index, std::move(last)};
  }
  // The owning pointer of an unheld task's batch.
  std::shared_ptr<task_batch> owner_locked(unheld& u) {
    return u.last ? std::move(u.last) : live_[u.batch->live_index];
  }
  // Adds the outcome of an unheld task to `done`, keeping its batch alive until delivered
  // (one reference per run of outcomes of the same batch).
  void add_locked(done_list& done, unheld u, task_outcome o) {
    o.index = u.index;
    if (u.last)
      done.keep.push_back(std::move(u.last));
    else if (done.keep.empty() || done.keep.back().get() != u.batch)
      done.keep.push_back(live_[u.batch->live_index]);
    done.batches.push_back(u.batch);
    done.outcomes.push_back(std::move(o));
  }

  // Parent threads taking results in help() right now.
  std::uint32_t helping() const noexcept { return shared_.state()->polling.load(); }

  // Wakes the result thread (posted callbacks, stop).
  void kick() noexcept { shared_.state()->results_wp.notify_all(); }

  // Puts on the result queue and wakes the result thread if it sleeps (workers, supervisor).
  void send_result(const result_msg& m) {
    results_->put(m);
    results_sent();
  }
  void results_sent() noexcept {
    auto* sh = shared_.state();
    // Dekker with help(): the message is published before `polling` is read; a poller that
    // stops looks at the queue after its decrement. One of the two sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sh->polling.load(std::memory_order_seq_cst) == 0) sh->results_wp.notify_all();
  }

  // Takes what is on the result queue (up to a batch), hands the outcomes to their batches
  // and refills the inboxes. Caller holds token_. Returns whether it took anything. Throws
  // closed_error when the queue is closed and drained.
  bool take_results() {
    // Never waits: a message being written by a process that was just killed (and will
    // never publish it) must not hold up the result thread, which also watches the
    // supervisor. Outcomes of small tasks come packed, so this is not a call per task.
    batch_.clear();
    while (batch_.size() < 256) {
      auto m = results_->try_get();
      if (!m) break;
      batch_.push_back(std::move(*m));
    }
    if (batch_.empty()) return false;
    std::string broke;
    {
      std::lock_guard lk(m_);
      const bool was_broken = broken_;
      for (auto& r : batch_) handle_locked(r, done_);
      dispatch_locked(done_);
      if (broken_ && !was_broken) broke = broken_why_;
    }
    finished(done_.deliver());
    if (!broke.empty()) fail_everything(std::make_exception_ptr(worker_lost_error(broke)));
    return true;
  }

  void result_loop() {
    auto* sh = shared_.state();
    unsigned idle_tries = 0;
    for (;;) {
      bool took = false;
      try {
        // While a waiting thread takes results (help()), leave them to it: it hands the
        // queue back by kick() if it leaves something there.
        std::unique_lock tok(token_, std::defer_lock);
        if (helping() == 0) {
          tok.lock();
          took = take_results();
        }
      } catch (const closed_error&) {
        break;
      }
      posted_.run("shmkit::pool");
      if (stop_thread_.load()) break;
      if (took) {
        idle_tries = 0;
        continue;
      }
      // Something is on the queue but could not be taken (being written, or its writer died:
      // try_get recovers that after a stall): look again shortly.
      if (!results_->empty() && helping() == 0) {
        if (++idle_tries > 64)
          std::this_thread::sleep_for(1ms);
        else
          std::this_thread::yield();
        continue;
      }
      // Sleep until a result is queued or a job posted; look at the supervisor now and then.
      // No spinning while a waiting thread takes results itself (help()).
      const bool helped = helping() > 0;
      const bool woke = sh->results_wp.wait_until(
          [&] {
            return (!results_->empty() && helping() == 0) || !posted_.empty() ||
                   stop_thread_.load();
          },
          deadline_after(helped ? 10ms : 250ms), helped ? 0ns : spin_budget);
      if (helped) continue;
      if (!woke) check_supervisor();
    }
    posted_.close("shmkit::pool");  // later posts run on their caller's thread
  }

  void handle_locked(result_msg& m, done_list& done) {
    switch (static_cast<msg_kind>(m.kind)) {
      case msg_kind::ok:
      case msg_kind::failed: {
        if (m.slot < 0 || m.slot >= nworkers_) return;
        std::exception_ptr error;
        try {
          if (!m.blob.empty()) m.payload = unstash(m.blob);
        } catch (...) {
          error = std::current_exception();
        }
        drop_stash(m.blob);
        answered_locked(m.slot, m.task, m.kind == static_cast<std::uint32_t>(msg_kind::ok),
                        m.payload, m.status, static_cast<pid_t>(m.pid), std::move(error), done);
        break;
      }
      case msg_kind::packed: {
        if (m.slot < 0 || m.slot >= nworkers_) return;
        std::size_t at = 0;
        for (const packed_outcome& p : m.packed) {
          std::span<const std::byte> bytes;
          std::exception_ptr error;
          if (p.size <= m.payload.size() - at) {
            bytes = std::span<const std::byte>(m.payload).subspan(at, p.size);
            at += p.size;
          } else {  // never seen: our own worker wrote it
            error = std::make_exception_ptr(
                shmkit::error(fmt::format("shmkit::pool: worker {} sent a malformed result", m.slot)));
          }
          answered_locked(m.slot, p.task, p.ok != 0, bytes, p.ns, static_cast<pid_t>(m.pid),
                          std::move(error), done);
        }
        break;
      }
      case msg_kind::worker_exit:
        worker_ended_locked(m, done);
        break;
      case msg_kind::probe:
        probe_answered_locked(m);
        break;
      case msg_kind::supervisor_done:
        break;
    }
  }

  // Task `id` of worker `slot` answered: its outcome goes to its batch (bytes stay valid in
  // batch_ until delivered), unless it already failed as lost.
  void answered_locked(int slot, std::uint64_t id, bool ok, std::span<const std::byte> bytes,
                       std::int64_t ran_ns, pid_t pid, std::exception_ptr error, done_list& done) {
    auto& book = slots_[slot];
    const std::size_t i = book.find(id);
    if (i == npos) return;  // already failed as lost
    // How long it ran, for depth_locked().
    const double ns = static_cast<double>(std::max<std::int64_t>(ran_ns, 1));
    book.task_ns = book.task_ns < 0 ? ns : 0.75 * book.task_ns + 0.25 * ns;
    add_locked(done, unhold_locked(book, i), task_outcome{0, ok, bytes, pid, std::move(error)});
  }

  void fail_lost_locked(int slot, std::uint64_t id, const std::string& why, done_list& done) {
    auto& book = slots_[slot];
    const std::size_t i = book.find(id);
    if (i == npos) return;
    add_locked(done, unhold_locked(book, i),
               task_outcome{0, false, {}, 0, std::make_exception_ptr(worker_lost_error(why))});
  }

  void probe_answered_locked(const result_msg& m) {
    if (m.slot < 0 || m.slot >= nworkers_) return;
    auto& book = slots_[m.slot];
    auto it = book.probes.find(m.task);
    if (it == book.probes.end()) return;
    // Every task queued before the probe has been answered by now, unless the dead worker
    // took it: those it took but never started go round again, first, in their order.
    for (auto id = it->second.rbegin(); id != it->second.rend(); ++id) {
      const std::size_t i = book.find(*id);
      if (i == npos) continue;
      unheld u = unhold_locked(book, i);
      pending_.push_front({owner_locked(u), u.index, u.index + 1});
      ++pending_count_;
    }
    book.probes.erase(it);
  }

  void worker_ended_locked(const result_msg& m, done_list& done) {
    if (m.slot < 0 || m.slot >= nworkers_) return;
    if (m.task == initializer_failed && !broken_ && !terminated_) {
      // Not replaced (see initializer_failed): the pool breaks; take_results() fails what is
      // pending once m_ is released.
      broken_ = true;
      broken_why_ = fmt::format("shmkit::pool: the worker initializer failed in worker {} (pid "
                                "{}; its message is on stderr): the pool has no workers",
                                m.slot, m.pid);
    }
    auto& book = slots_[m.slot];
    const std::string why =
        fmt::format("shmkit::pool: worker {} (pid {}) {} while running a task", m.slot, m.pid,
                    describe_status(static_cast<int>(m.status)));
    // Results it sent came before this report, and any it had not sent are lost: the task it
    // ran and those before it that are still held fail now (each may have had effects, and
    // runs at most once). The ones after it were not started; they are still in the inbox
    // (the replacement runs them) or the worker took them (workers take a batch at a time):
    // a probe sorts them out.
    if (m.task != getting && m.task != 0) {
      const std::size_t ran = book.find(m.task);
      if (ran != npos) {
        std::vector<std::uint64_t> lost;
        for (std::size_t i = 0; i <= ran; ++i) lost.push_back(book.held[i].id);
        for (std::uint64_t id : lost) fail_lost_locked(m.slot, id, why, done);
      }
    }
    if (!book.held.empty()) {
      // Ask the replacement what is left in the inbox: see the comment at the top.
      const std::uint64_t probe = next_id_++;
      task_slot msg;
      msg.id = probe;
      bool sent = false;
      try {
        sent = inboxes_[m.slot]->try_put(msg);
      } catch (...) {
      }
      if (sent) {
        std::vector<std::uint64_t> ids;
        for (std::size_t i = 0; i < book.held.size(); ++i) ids.push_back(book.held[i].id);
        book.probes.emplace(probe, std::move(ids));
      }
      else  // cannot ask (the inbox is full): fail the one most likely taken
        fail_lost_locked(m.slot, book.held.front().id, why, done);
    }
    // The replacement inherits the inbox: what is still queued there counts toward it.
    book.assigned = static_cast<long>(book.held.size());
  }

  // Counts finished tasks (their sinks were called) and wakes join().
  void finished(std::size_t n) {
    if (n == 0) return;
    std::lock_guard lk(m_);
    outstanding_ -= n;
    if (outstanding_ == 0) idle_cv_.notify_all();
  }

  // How many tasks worker `book` may hold: two, so it never waits for the next while the
  // parent catches up; more while many tasks wait, so that the round trips to the parent
  // amortise; but no more than about max_queued_work of its tasks' run time (up to max_depth
  // for tiny tasks), so that no worker sits on tasks another could run, and no more than
  // initial_depth before it has reported how long its tasks run.
  std::size_t depth_locked(const slot_book& book) const {
    const std::size_t per = pending_count_ / (static_cast<std::size_t>(nworkers_) * 4);
    std::size_t cap = initial_depth;
    if (book.task_ns > 0)
      cap = static_cast<std::size_t>(std::min<double>(
          static_cast<double>(max_depth),
          std::chrono::duration<double, std::nano>(max_queued_work).count() / book.task_ns));
    return std::clamp<std::size_t>(per, 2, std::max<std::size_t>(cap, 2));
  }

  void pop_pending() noexcept {
    auto& r = pending_.front();
    if (++r.next == r.end) pending_.pop_front();
    --pending_count_;
  }

  // Moves pending tasks into inboxes with room, one task per worker in turn. Tasks whose
  // arguments fit a task_slot (nearly all) are gathered per worker and sent with one
  // put_many; the others go alone, their arguments first on the bulk queue (try_put, within
  // what its heap holds). Tasks that cannot be sent at all become failures (delivered by the
  // caller once the lock is released).
  void dispatch_locked(done_list& failures) {
    if (pending_count_ == 0 || broken_ || terminated_) return;
    const long max = opts_.maxtasksperchild;
    for (int s = 0; s < nworkers_; ++s) depth_[s] = depth_locked(slots_[s]);
    for (bool progress = true; progress && pending_count_ != 0;) {
      progress = false;
      for (int s = 0; s < nworkers_ && pending_count_ != 0; ++s) {
        auto& book = slots_[s];
        if (book.held.size() >= depth_[s] || (max > 0 && book.assigned >= max)) continue;
        // The inbox holds at most the held tasks not yet taken, the probes and a leave
        // message: while that stays within its capacity, a put there never waits.
        if (book.held.size() + book.probes.size() + 2 > inbox_capacity) continue;
        pending_run& run = pending_.front();
        const std::size_t index = run.next;
        auto& bulk = bulk_msg_;
        bulk.blob.clear();
        try {
          if (unsent_.batch == run.batch && unsent_.index == index) {
            bulk.payload.swap(unsent_.payload);  // encoded already, and not sent then
            unsent_.batch.reset();
          } else {
            run.batch->payload(index, bulk.payload);
          }
          if (bulk.payload.size() > stash_threshold) {
            bulk.blob = stash(bulk.payload, "t");
            bulk.payload = {};
          }
        } catch (...) {  // the task cannot be encoded or stashed
          failures.fail(run.batch, index, std::current_exception());
          pop_pending();
          progress = true;
          continue;
        }
        auto& box = outbox_[s];
        // The next record for this worker, after those gathered.
        auto next_record = [&]() -> task_slot& {
          if (box.n == box.slots.size()) box.slots.emplace_back();
          task_slot& t = box.slots[box.n++];
          t.id = next_id_;
          t.entry = reinterpret_cast<std::uintptr_t>(run.batch->entry());
          t.fn_word = run.batch->fn_word();
          return t;
        };
        std::size_t heap = 0;
        if (bulk.blob.empty() && bulk.payload.size() <= inline_args) {
          task_slot& t = next_record();
          t.size = static_cast<std::uint32_t>(bulk.payload.size());
          if (t.size != 0) std::memcpy(t.args.data(), bulk.payload.data(), t.size);
        } else {
          bulk.id = next_id_;
          const std::size_t bytes = encoded_size(bulk);
          heap = bytes <= queue_inline_bytes ? 0 : bytes;
          if (book.heap_bytes != 0 && book.heap_bytes + heap > inbox_heap) {
            // Its held tasks may still fill the heap: keep the bytes for the next round.
            keep_unsent(run.batch, index);
            continue;
          }
          flush_outbox(s, failures);  // what this worker was given before goes first
          bool sent = false;
          try {
            sent = bulk_[s]->try_put(bulk);
          } catch (...) {  // no room for its arguments anywhere
            drop_stash(bulk.blob);
            failures.fail(run.batch, index, std::current_exception());
            pop_pending();
            progress = true;
            continue;
          }
          if (!sent) {  // no room now: try later
            keep_unsent(run.batch, index);
            continue;
          }
          // The one buffer tasks are encoded in keeps its memory up to the stash threshold: a
          // fresh one per large task would fault its pages in every time.
          if (bulk.payload.capacity() > stash_threshold) bulk.payload = {};
          next_record().size = in_bulk;
          flush_outbox(s, failures);  // the record right behind its arguments
        }
        if (!bulk.blob.empty()) stashes_.emplace(next_id_, bulk.blob);
        book.held.push_back({next_id_++, run.batch.get(), index, static_cast<std::uint32_t>(heap),
                             !bulk.blob.empty()});
        hold_locked(run.batch);
        book.heap_bytes += heap;
        ++book.assigned;
        pop_pending();
        progress = true;
        if (box.n == early_flush) flush_outbox(s, failures);  // it starts while we go on
      }
    }
    for (int s = 0; s < nworkers_; ++s) flush_outbox(s, failures);
  }

  // Keeps the encoded arguments of a task that could not be sent now (the first pending),
  // for the next try.
  void keep_unsent(const std::shared_ptr<task_batch>& batch, std::size_t index) {
    if (!bulk_msg_.blob.empty()) {  // its bytes went to a stash: encoded again next time
      drop_stash(bulk_msg_.blob);
      bulk_msg_.blob.clear();
      return;
    }
    unsent_.batch = batch;
    unsent_.index = index;
    unsent_.payload.swap(bulk_msg_.payload);
  }

  // Sends the records gathered for worker s.
  void flush_outbox(int s, done_list& failures) {
    auto& box = outbox_[s];
    if (box.n == 0) return;
    const std::span<const task_slot> records(box.slots.data(), box.n);
    box.n = 0;
    try {
      inboxes_[s]->put_many(records);
    } catch (...) {
      // Not seen (room counted): those tasks fail; any that went in anyway and come back are
      // ignored (each task runs at most once and is answered once).
      const auto e = std::current_exception();
      auto& book = slots_[s];
      for (const task_slot& m : records) {
        const std::size_t i = book.find(m.id);
        if (i == npos) continue;
        add_locked(failures, unhold_locked(book, i), task_outcome{0, false, {}, 0, e});
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
    std::string why;
    {
      std::lock_guard lk(m_);
      if (terminated_ || finished_ || broken_) return;
      broken_ = true;
      broken_why_ = fmt::format("shmkit::pool: the pool's supervisor (pid {}) died; its workers "
                                "are gone",
                                supervisor_.pid());
      why = broken_why_;
    }
    auto* sh = shared_.state();
    for (int i = 0; i < nworkers_; ++i) {
      const pid_t p = sh->slots()[i].pid.load();
      if (p > 0) ::kill(p, SIGKILL);
    }
    fail_everything(std::make_exception_ptr(worker_lost_error(why)));
  }

  // Fails every pending and in-flight task (terminate, broken pool).
  void fail_everything(std::exception_ptr e) {
    done_list failures;
    {
      std::lock_guard lk(m_);
      for (auto& r : pending_)
        for (std::size_t i = r.next; i < r.end; ++i) failures.fail(r.batch, i, e);
      pending_.clear();
      pending_count_ = 0;
      unsent_ = {};
      for (auto& b : slots_) {
        while (!b.held.empty()) {
          add_locked(failures, unhold_locked(b, 0), task_outcome{0, false, {}, 0, e});
        }
        b.heap_bytes = 0;
        b.probes.clear();
      }
    }
    finished(failures.deliver());
  }

  void stop_thread() noexcept {
    if (!thread_.joinable()) return;
    stop_thread_.store(true);
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
          q->put(task_slot{});  // leave
        } catch (...) {
        }
      }
    }
    try {
      supervisor_.join();
    } catch (...) {
    }
    stop_thread();
    remove_stashes();
    std::lock_guard lk(m_);
    finished_ = true;
  }

  // ---- payloads too large for the queues' heaps ------------------------------------------
  // They travel in a named shared_memory of their own, which the receiver opens, copies and
  // removes. Names carry the parent's pid, so that what a killed process left behind is
  // removed when the pool ends.

  std::string stash(std::span<const std::byte> bytes, const char* what) {
    const std::string name = fmt::format("pool-{}-{}-{}-{}", parent_pid_, what, ::getpid(),
                                         stash_counter_.fetch_add(1));
    shared_memory m(create_only, name, bytes.size());
    std::memcpy(m.data(), bytes.data(), bytes.size());
    m.release_name();
    return name;
  }
  static std::vector<std::byte> unstash(const std::string& name) {
    shared_memory m(open_only, name);
    std::vector<std::byte> v(m.data(), m.data() + m.size());
    drop_stash(name);
    return v;
  }
  static void drop_stash(const std::string& name) noexcept {
    if (name.empty()) return;
    try {
      shmkit::remove(name);
    } catch (...) {
    }
  }
  void remove_stashes() noexcept {
    const std::string prefix = fmt::format("shmkit.pool-{}-", parent_pid_);
    if (DIR* d = ::opendir("/dev/shm")) {
      while (dirent* e = ::readdir(d))
        if (std::string_view(e->d_name).starts_with(prefix))
          ::shm_unlink(("/" + std::string(e->d_name)).c_str());
      ::closedir(d);
    }
  }

  // ---- supervisor side (a separate, single-threaded process) --------------------------

  [[noreturn]] void supervise() {
    barrier_leave_all();  // no barrier's party (nor are the workers it forks)
    reset_signals();
    ::signal(SIGPIPE, SIG_IGN);
    // The workers' statuses are ours to collect whatever the caller does with SIGCHLD: a
    // caller that ignores it (or sets SA_NOCLDWAIT), as daemons do, would have its children,
    // our workers, reaped by the kernel, and a dead worker's status (which task it held, how
    // it ended) lost with them.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGCHLD, &dfl, nullptr);
    auto* sh = shared_.state();
    std::map<pid_t, int> children;
    for (int i = 0; i < nworkers_; ++i) children.emplace(spawn_worker(i), i);
    sh->started.store(1);
    sh->started_wp.notify_all();
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
          send_result(m);
        } catch (...) {
        }
      }
      const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      const bool replace = !sh->terminating.load() && (!sh->stopping.load() || !clean) &&
                           m.task != initializer_failed;
      if (replace) children.emplace(spawn_worker(slot), slot);
      if (children.empty()) break;
    }
    result_msg done;
    done.kind = static_cast<std::uint32_t>(msg_kind::supervisor_done);
    try {
      if (!sh->terminating.load()) send_result(done);
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
    barrier_leave_all();  // a task that arrives at a barrier seats this worker again
    reset_signals();
    if (opts_.initializer) {
      auto fail = [&](const char* what) {
        std::fprintf(stderr, "shmkit::pool: worker initializer failed: %s\n", what);
        std::fflush(nullptr);
        // release: pairs with the supervisor's load after waitpid(), as for tasks below.
        ws.current.store(initializer_failed, std::memory_order_release);
        std::_Exit(2);
      };
      try {
        opts_.initializer();
      } catch (const std::exception& e) {
        fail(e.what());
      } catch (...) {
        fail("an exception not derived from std::exception");
      }
    }
    long done = 0;
    const pid_t self = ::getpid();
    const long max = opts_.maxtasksperchild;
    // Buffers are reused from task to task (the payloads' capacity with them): a worker
    // running tiny tasks allocates nothing in the steady state.
    std::vector<task_slot> tasks;
    auto& bulk = *bulk_[slot];
    bulk_msg big;  // the arguments of a task that did not fit its record
    std::optional<bulk_msg> ahead;  // taken off the bulk queue ahead of its record
    std::vector<std::byte> out;
    // Outcomes of small tasks held back, sent together in one message.
    result_msg pack;
    pack.kind = static_cast<std::uint32_t>(msg_kind::packed);
    pack.slot = slot;
    pack.pid = self;
    result_msg single;  // a larger outcome, sent alone
    single.slot = slot;
    single.pid = self;
    auto flush = [&] {
      if (pack.packed.empty()) return;
      results_->put(pack);
      results_sent();
      pack.packed.clear();
      pack.payload.clear();
    };
    try {
      bool after_batch = false;
      for (bool leave = false; !leave;) {
        // release: pairs with the supervisor's load after waitpid(); the order of these
        // stores is what the death report relies on.
        ws.current.store(getting, std::memory_order_release);
        // What is queued for this worker, up to half of the deepest inbox: the rest stays
        // there to run while the parent, seeing these results, tops the inbox up again.
        // Never more than the worker may still run.
        const std::size_t room = max > 0 ? static_cast<std::size_t>(max - done) : max_depth;
        // After a batch, the next task of a caller that waits for each result before it sends
        // the next (apply_async(f).get() in a loop) comes one round trip later: waited for up
        // to max_help before the inbox's own wait (a brief spin, then sleep). Without it,
        // once the round trip had grown past that brief spin (a worker woken from sleep
        // answers after its wake-up latency), every worker slept between tasks and the
        // round trip stayed at the wake-up latency (~23 us on a virtual machine, not ~1 us).
        // The wait spins with the CPU held for a few microseconds (a quick caller's next task
        // comes within one or two), then yields the CPU between looks: on a machine with
        // fewer CPUs than workers and parent, a spinning worker must not keep the parent,
        // which makes the next task, off a CPU (a 100 us spin made ~220 us round trips).
        if (after_batch && !spin_until([&] { return !inbox.empty(); }, spin_budget / 2)) {
          const auto end = clock::now() + max_help;
          while (inbox.empty() && clock::now() < end) std::this_thread::yield();
        }
        after_batch = true;
        inbox.get_many(tasks, std::min(room, max_depth / 2));
        clock::time_point held_since{};
        auto began = clock::now();  // of the next task (one clock read per task)
        for (const task_slot& t : tasks) {
          if (t.id == 0) {  // leave
            leave = true;
            break;
          }
          if (t.entry == 0) {  // a probe: answered in order, behind the results before it
            flush();
            // Arguments on the bulk queue older than the probe belong to records a killed
            // worker took (their tasks go round again once the probe is answered): dropped
            // now, so that they never fill the queue those tasks need. The first newer one,
            // if any, is kept for its record.
            if (ahead && ahead->id < t.id) ahead.reset();
            while (!ahead) {
              std::optional<bulk_msg> m;
              try {
                m = bulk.try_get();
              } catch (const closed_error&) {
                throw;
              } catch (const std::exception&) {  // unreadable: dropped
                continue;
              }
              if (!m) break;
              if (m->id > t.id)
                ahead = std::move(m);
              else
                drop_stash(m->blob);
            }
            result_msg p;
            p.kind = static_cast<std::uint32_t>(msg_kind::probe);
            p.slot = slot;
            p.task = t.id;
            send_result(p);
            began = clock::now();
            continue;
          }
          // Its arguments, fetched before it counts as started: killed meanwhile, this
          // worker leaves the task to its replacement (see the probe above).
          std::span<const std::byte> args;
          std::string unreadable;
          if (t.size == in_bulk) {
            try {
              // Put on the bulk queue just before the record; older ones there were the
              // arguments of records a killed worker took (their tasks went round again).
              if (ahead) {
                big = std::move(*ahead);
                ahead.reset();
              } else {
                bulk.get(big);
              }
              while (big.id < t.id) {
                drop_stash(big.blob);
                bulk.get(big);
              }
              if (big.id != t.id)
                unreadable = fmt::format("shmkit::pool: the arguments of task {} are missing",
                                         t.id);
              else if (!big.blob.empty())
                big.payload = unstash(big.blob);  // its shared_memory
              args = big.payload;
            } catch (const closed_error&) {
              throw;
            } catch (const std::exception& e) {  // unreadable
              unreadable = e.what();
            }
          } else if (t.size <= inline_args) {
            args = std::span<const std::byte>(t.args.data(), t.size);
          } else {
            unreadable = "shmkit::pool: a malformed task record";
          }
          ws.current.store(t.id, std::memory_order_release);
          bool ok = false;
          if (unreadable.empty())
            ok = run_task(reinterpret_cast<task_entry>(static_cast<std::uintptr_t>(t.entry)),
                          t.fn_word, args, out);
          else
            out = encode(task_failure{"shmkit::error", unreadable});
          if (big.payload.capacity() > stash_threshold) big.payload = {};
          const auto now = clock::now();
          const std::int64_t ran =
              std::chrono::duration_cast<std::chrono::nanoseconds>(now - began).count();
          if (out.size() <= pack_limit) {
            if (pack.packed.empty()) held_since = now;
            pack.packed.push_back({t.id, ok ? 1u : 0u, static_cast<std::uint32_t>(out.size()),
                                   ran});
            pack.payload.insert(pack.payload.end(), out.begin(), out.end());
          } else {
            flush();  // the outcomes before it go first
            single.kind = static_cast<std::uint32_t>(ok ? msg_kind::ok : msg_kind::failed);
            single.task = t.id;
            single.status = ran;
            single.blob.clear();
            try {
              if (out.size() > stash_threshold) {
                single.blob = stash(out, "r");
                single.payload.clear();
              } else {
                std::swap(single.payload, out);  // `out` takes the old buffer back
              }
            } catch (const std::exception& e) {  // no shared memory for a large result
              single.kind = static_cast<std::uint32_t>(msg_kind::failed);
              single.payload = encode(task_failure{"shmkit::error", e.what()});
            }
            send_result(single);
            if (single.payload.capacity() > stash_threshold) single.payload = {};
          }
          if (out.capacity() > stash_threshold) out = {};  // keep no large buffer
          // Outcomes wait for company only while tasks are tiny: one that took a while, or
          // outcomes held for a while, go at once.
          if (now - began > batch_window || pack.payload.size() >= pack_bytes ||
              (!pack.packed.empty() && now - held_since > batch_window))
            flush();
          began = now;
          if (max > 0 && ++done >= max) {
            leave = true;
            break;
          }
        }
        flush();
      }
    } catch (...) {
      // Closed queues (the pool is ending), or results that cannot be sent: this worker
      // leaves; what it held is reported lost (see worker_ended_locked).
    }
    ws.current.store(0, std::memory_order_release);
    std::fflush(nullptr);
    std::_Exit(0);
  }

  pool_options opts_;
  int nworkers_ = 1;
  pid_t parent_pid_ = 0;
  std::atomic<std::uint64_t> stash_counter_{0};
  shared_object<pool_shared> shared_;
  std::optional<queue<result_msg>> results_;
  std::vector<std::unique_ptr<queue<task_slot>>> inboxes_;
  std::vector<std::unique_ptr<queue<bulk_msg>>> bulk_;
  process supervisor_;
  std::thread thread_;

  // Parent state, all guarded by m_. Sinks are called with m_ released.
  std::mutex m_;
  std::condition_variable idle_cv_;
  std::deque<pending_run> pending_;
  std::size_t pending_count_ = 0;  // tasks in pending_
  posted_jobs posted_;
  std::size_t outstanding_ = 0;
  bool closed_ = false, terminated_ = false, broken_ = false, finished_ = false;
  std::string broken_why_;
  std::vector<slot_book> slots_;
  std::uint64_t next_id_ = 1;
  // dispatch_locked()'s scratch: per worker, its depth and the messages gathered for it.
  struct outbox {
    std::vector<task_slot> slots;
    std::size_t n = 0;
  };
  std::vector<std::size_t> depth_;
  std::vector<outbox> outbox_;
  bulk_msg bulk_msg_;  // the task being encoded
  // The batches workers hold tasks of (see hold_locked()), and the stashes held tasks'
  // arguments went in, by task id.
  std::vector<std::shared_ptr<task_batch>> live_;
  std::unordered_map<std::uint64_t, std::string> stashes_;
  // The encoded arguments of the first pending task, which could not be sent last time.
  struct {
    std::shared_ptr<task_batch> batch;
    std::size_t index = 0;
    std::vector<std::byte> payload;
  } unsent_;
  // Whoever takes from the result queue holds token_ (the result thread, or a waiting
  // thread in help()); batch_ and done_ are its scratch space.
  std::mutex token_;
  std::vector<result_msg> batch_;
  done_list done_;
  std::atomic<bool> stop_thread_{false};
};

}  // namespace

std::shared_ptr<pool_runtime> pool_runtime::start(pool_options options) {
  auto rt = std::make_shared<runtime>(std::move(options));
  rt->start_thread();
  return rt;
}

}  // namespace shmkit::detail
