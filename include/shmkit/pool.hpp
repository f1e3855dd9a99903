// SPDX-License-Identifier: MIT
// shmkit::pool: a pool of worker processes, like Python's multiprocessing.Pool, fed by
// shmkit's own shared-memory queues.
//
// Contract
// - Workers are forked when the pool is made, from a single-threaded supervisor process that
//   the pool forks first, before it starts its own result thread; replacements (a worker that
//   died, or retired after maxtasksperchild tasks) are forked by that supervisor, never by the
//   caller's process, so a multithreaded caller is safe. Make the pool from a thread that
//   outlives it (the supervisor is tied to it by the parent-death signal).
// - What can be sent: function pointers, captureless lambdas, and callables whose state the
//   codec can serialize (a member serialize()); arguments and results are codec values. Any
//   other callable is a compile error at the call site that says so.
// - Each worker has its own inbox queue, holding two tasks, or more while many wait: up to
//   about 2 ms of the worker's own reported run time (sixteen before it reported any), and
//   up to 1024 tiny ones; it is refilled as results come back, so the pool always knows which
//   tasks a worker holds. Default map chunks carry at most about 64 KiB of items. The pool
//   keeps one copy of a map's or imap's items and encodes each task's arguments when it
//   sends the task.
// - Errors: an exception escaping f in a worker reaches the caller as shmkit::remote_error
//   (type name and message) from get(), map(), iteration or the error callback, and the pool
//   stays usable. A worker that dies (crash, kill -9, abort) is replaced, and the task it ran
//   fails with shmkit::worker_lost_error (map() then throws it), as do the tiny tasks it had
//   finished in the last 20 microseconds whose results it had not sent yet (workers send
//   those together). Every task runs at most once: tasks it had taken but not started run on
//   the replacement. Items that cannot be encoded (their serialize() throws) fail their task
//   the same way, with what was thrown. If the supervisor itself dies,
//   every pending task fails with worker_lost_error and the pool refuses new work. Nothing
//   waits forever.
// - Callbacks (async_result::then) run in this process on the pool's one result thread, in
//   completion order. A callback that throws is reported on stderr and ignored.
// - Thread-safe: any thread may submit. close() stops new submissions; join() (after close())
//   waits for the work and the workers; terminate() kills the workers at once and fails what
//   is pending; the destructor terminates, like Python's `with Pool() as p:`.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <sys/types.h>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmkit/async_result.hpp"
#include "shmkit/codec.hpp"
#include "shmkit/detail/task.hpp"
#include "shmkit/error.hpp"
#include "shmkit/progress.hpp"  // with_progress(pool.imap(...)), spelled in the Pool contract

namespace shmkit {

struct pool_options {
  // Worker processes; 0 means cpu_count().
  int processes = 0;
  // Runs once in every worker when it starts (any callable: workers are forked, not sent it).
  // If it throws, the worker prints the message on stderr and ends, and the pool breaks: no
  // worker is started again, and every pending and later task fails with worker_lost_error
  // saying so (a pool of workers that cannot start would otherwise wait for ever).
  std::function<void()> initializer = {};
  // A worker retires and is replaced after this many tasks (chunks); 0 means never.
  long maxtasksperchild = 0;
};

namespace detail {

// Receives the outcome of one task, on the result thread.
class task_sink {
 public:
  virtual ~task_sink() = default;
  // The task's encoded result. May throw (a result that does not decode): the runtime then
  // calls failed() with that exception.
  virtual void succeeded(std::span<const std::byte> result) = 0;
  virtual void failed(std::exception_ptr e) = 0;
};

struct task_request {
  task_entry entry = nullptr;
  std::uint64_t fn_word = 0;
  std::vector<std::byte> payload;
  std::shared_ptr<task_sink> sink;
};

// The error an encoded task_failure reports: remote_error(type name, message, pid, traceback).
// Throws shmkit::error when the bytes do not decode.
inline remote_error remote_error_from(std::span<const std::byte> failure, pid_t pid) {
  auto f = decode<task_failure>(failure);
  return remote_error(std::move(f.type_name), std::move(f.message), pid, std::move(f.traceback));
}

// Hands a task's outcome to its sink on the result thread: `payload` is the result (ok) or an
// encoded task_failure (see remote_error_from). What the sink throws (a result that does not
// decode) fails it instead.
inline void deliver_outcome(task_sink& sink, bool ok, std::span<const std::byte> payload,
                            pid_t pid) {
  try {
    if (ok) {
      sink.succeeded(payload);
    } else {
      sink.failed(std::make_exception_ptr(remote_error_from(payload, pid)));
    }
  } catch (...) {
    sink.failed(std::current_exception());
  }
}

// One task's outcome, as the runtime hands it to the task's batch.
struct task_outcome {
  std::size_t index = 0;             // which task of the batch
  bool ok = false;                   // bytes: the result (true) or an encoded task_failure
  std::span<const std::byte> bytes;  // valid during task_batch::deliver() only
  pid_t pid = 0;                     // the worker that ran it
  std::exception_ptr error;          // set instead: the task was lost or could not be sent
};

// Tasks submitted together (a map's chunks, an imap's items, one apply_async): the runtime
// asks the batch for a task's encoded arguments each time it sends the task, so that nothing
// is encoded or allocated per task ahead of time, and hands it the outcomes, each task's
// exactly once, in completion order, several at a time.
class task_batch {
 public:
  task_batch(task_entry entry, std::uint64_t fn_word, std::size_t tasks) noexcept
      : entry_(entry), fn_word_(fn_word), size_(tasks) {}
  virtual ~task_batch() = default;
  task_batch(const task_batch&) = delete;
  task_batch& operator=(const task_batch&) = delete;

  task_entry entry() const noexcept { return entry_; }
  std::uint64_t fn_word() const noexcept { return fn_word_; }
  std::size_t size() const noexcept { return size_; }

  // Task i's payload into `out`, whose memory it reuses. What it throws fails that task.
  virtual void payload(std::size_t i, std::vector<std::byte>& out) const = 0;
  // Outcomes of some of the tasks, on the result thread or a thread helping it (never two
  // threads at once for results; failures may come from the submitting thread).
  virtual void deliver(std::span<const task_outcome> outcomes) noexcept = 0;

  // The failure an outcome that is not a result reports: its error, or the remote_error its
  // bytes encode (remote_error_from).
  static std::exception_ptr failure_of(const task_outcome& o) noexcept {
    if (o.error) return o.error;
    try {
      return std::make_exception_ptr(remote_error_from(o.bytes, o.pid));
    } catch (...) {
      return std::current_exception();
    }
  }

  // The runtime's own bookkeeping, under its lock: how many tasks of the batch its workers
  // hold, and where it keeps the batch alive meanwhile.
  std::size_t held_tasks = 0;
  std::size_t live_index = 0;

 private:
  task_entry entry_;
  std::uint64_t fn_word_;
  std::size_t size_;
};

// A task_request (the task_runtime interface) as a batch of one: the local pool and the MPI
// pool's rank 0 take a task handed to submit() this way.
class request_batch final : public task_batch {
 public:
  explicit request_batch(task_request t)
      : task_batch(t.entry, t.fn_word, 1), payload_(std::move(t.payload)), sink_(std::move(t.sink)) {}
  void payload(std::size_t, std::vector<std::byte>& out) const override {
    out.assign(payload_.begin(), payload_.end());
  }
  void deliver(std::span<const task_outcome> outcomes) noexcept override {
    for (const task_outcome& o : outcomes) {
      if (o.error)
        sink_->failed(o.error);
      else
        deliver_outcome(*sink_, o.ok, o.bytes, o.pid);
    }
  }

 private:
  std::vector<std::byte> payload_;
  std::shared_ptr<task_sink> sink_;
};

// Jobs posted to a result thread (callbacks attached to results already complete), run there
// in order. A job that throws is reported on stderr and dropped.
class posted_jobs {
 public:
  // False once closed: the caller then runs the job itself.
  bool push(std::function<void()> job) {
    std::lock_guard lk(m_);
    if (closed_) return false;
    jobs_.push_back(std::move(job));
    return true;
  }
  bool empty() const {
    std::lock_guard lk(m_);
    return jobs_.empty();
  }
  // Runs every queued job, those queued meanwhile included. `who` names the pool in reports.
  void run(const char* who) noexcept {
    for (;;) {
      std::function<void()> job;
      {
        std::lock_guard lk(m_);
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      try {
        job();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: a callback threw: %s\n", who, e.what());
      } catch (...) {
        std::fprintf(stderr, "%s: a callback threw\n", who);
      }
    }
  }
  // Refuses new jobs, then runs those queued.
  void close(const char* who) noexcept {
    {
      std::lock_guard lk(m_);
      closed_ = true;
    }
    run(who);
  }

 private:
  mutable std::mutex m_;
  std::deque<std::function<void()>> jobs_;
  bool closed_ = false;
};

// What the pool front end (pool_front) drives: shmkit::pool's runtime (lib/pool.cpp) and
// shmkit::mpi_pool's (lib/mpi_pool.cpp).
class task_runtime : public callback_executor {
 public:
  ~task_runtime() override = default;

  // Queues tasks; their sinks are called on the result thread. Throws std::logic_error after
  // close() or terminate(), shmkit::error when the pool is broken.
  virtual void submit(std::vector<task_request> tasks) = 0;
  // The same for a batch. By default, one task_request per task (each payload encoded now);
  // shmkit::pool's runtime takes the batch as it is.
  virtual void submit_batch(std::shared_ptr<task_batch> batch) {
    class one final : public task_sink {
     public:
      one(std::shared_ptr<task_batch> b, std::size_t i) : b_(std::move(b)), i_(i) {}
      void succeeded(std::span<const std::byte> r) override {
        const task_outcome o{i_, true, r, 0, nullptr};
        b_->deliver({&o, 1});
      }
      void failed(std::exception_ptr e) override {
        const task_outcome o{i_, false, {}, 0, std::move(e)};
        b_->deliver({&o, 1});
      }

     private:
      std::shared_ptr<task_batch> b_;
      std::size_t i_;
    };
    std::vector<task_request> tasks(batch->size());
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      tasks[i].entry = batch->entry();
      tasks[i].fn_word = batch->fn_word();
      batch->payload(i, tasks[i].payload);
      tasks[i].sink = std::make_shared<one>(batch, i);
    }
    submit(std::move(tasks));
  }
  virtual void close() = 0;
  virtual void join() = 0;
  virtual void terminate() noexcept = 0;
  virtual int processes() const noexcept = 0;
};

// The non-template heart of the pool (lib/pool.cpp).
class pool_runtime : public task_runtime {
 public:
  // Forks the supervisor and the workers, then starts the result thread.
  static std::shared_ptr<pool_runtime> start(pool_options options);
  ~pool_runtime() override = default;

  virtual std::vector<pid_t> worker_pids() const = 0;
};

// About how many bytes of items a default chunk carries at most.
inline constexpr std::size_t default_chunk_bytes = 64 * 1024;

// Python's default, chunks of n / (4 * workers) rounded up, but no larger than about
// default_chunk_bytes of items: a chunk that stays in cache on its way through the codec and the
// queues costs a fraction of one that streams through memory and faults in fresh pages, and
// many chunks keep every worker busy while the next ones are encoded.
inline std::size_t default_chunksize(std::size_t n, int workers, std::size_t item_bytes) {
  if (n == 0) return 1;
  const std::size_t parts = static_cast<std::size_t>(std::max(workers, 1)) * 4;
  const std::size_t python = n / parts + (n % parts != 0 ? 1 : 0);
  const std::size_t cap = default_chunk_bytes / std::max<std::size_t>(item_bytes, 1);
  return std::clamp<std::size_t>(python, 1, std::max<std::size_t>(cap, 1));
}

// Whether F may be sent, failing the compilation with the reason when not. Callers test it in
// `if constexpr`, so that nothing else is compiled for a refused F: the assertion's message
// is then the one error, not the first of pages from the codec's insides.
template <class F>
constexpr bool check_sendable() {
  static_assert(sendable_callable<F>,
                "shmkit::pool: f must be a function pointer, a captureless lambda, or a callable "
                "whose state the codec can serialize (give it a member `template <class Ar> void "
                "serialize(Ar& ar)`); a lambda that captures cannot be sent to another process");
  return sendable_callable<F>;
}

// The items of a map or imap, copied once, in blocks of whole chunks of about
// default_chunk_bytes (a memcpy each for a contiguous range of raw items): memory the
// allocator reuses from map to map, where one large vector would be mapped fresh, and fault
// in page by page, every time.
template <class Item>
class item_blocks {
 public:
  template <class Items>
  item_blocks(const Items& items, std::size_t chunksize)
      : n_(std::ranges::size(items)),
        per_(std::max<std::size_t>(1, default_chunk_bytes /
                                          std::max<std::size_t>(1, chunksize * sizeof(Item))) *
             chunksize) {
    blocks_.reserve(n_ / per_ + 1);
    if constexpr (std::ranges::random_access_range<const Items>) {
      auto first = std::ranges::begin(items);
      for (std::size_t at = 0; at < n_; at += per_) {
        const auto k =
            static_cast<std::ranges::range_difference_t<const Items>>(std::min(per_, n_ - at));
        blocks_.emplace_back(first, first + k);
        first += k;
      }
    } else {
      for (auto&& x : items) {
        if (blocks_.empty() || blocks_.back().size() == per_) {
          blocks_.emplace_back();
          blocks_.back().reserve(std::min(per_, n_ - (blocks_.size() - 1) * per_));
        }
        blocks_.back().push_back(x);
      }
    }
  }
  std::size_t size() const noexcept { return n_; }
  // The k items from item `first`, all in one block (blocks hold whole chunks).
  auto at(std::size_t first) const noexcept {
    return blocks_[first / per_].begin() + static_cast<std::ptrdiff_t>(first % per_);
  }

 private:
  std::size_t n_, per_;
  std::vector<std::vector<Item>> blocks_;
};

// Writes into `out` (reusing its memory) the bytes of tuple<State, std::vector<Item>> holding
// the k items from `first`, which map_entry and starmap_entry decode, without building the
// vector.
template <class Item, class State, class It>
void encode_chunk(const State& state, It first, std::size_t k, std::vector<std::byte>& out) {
  using Vec = std::vector<Item>;
  require_nonzero_width<Vec, Item>();
  std::size_t bytes = encoded_size(state) + length_bytes;
  if constexpr (codec_of<Item>::fixed) {
    bytes += k * codec_of<Item>::min_size;
  } else {
    auto it = first;
    for (std::size_t j = 0; j < k; ++j, ++it) bytes += codec_of<Item>::size(*it);
  }
  out.resize(bytes);
  writer w(out.data(), out.data() + bytes, name_of<std::tuple<State, Vec>>);
  codec_of<State>::write(w, state);
  w.length(k);
  if constexpr (is_raw<Item> && std::contiguous_iterator<It>) {
    w.bytes(std::to_address(first), k * sizeof(Item));
  } else {
    for (std::size_t j = 0; j < k; ++j, ++first) {
      const Item& e = *first;
      write_counted_element<Vec, Item>(w, [&] { codec_of<Item>::write(w, e); });
    }
  }
}

// A map's or imap's tasks: chunk i holds items [i * chunksize, (i + 1) * chunksize). Outcomes
// go to Target::deliver (map_target or stream_state).
template <class F, class Item, class Target>
class chunk_batch final : public task_batch {
 public:
  template <class Items>
  chunk_batch(task_entry entry, const F& f, const Items& items, std::size_t chunksize,
              std::shared_ptr<Target> target)
      : task_batch(entry, word_of(f), (std::ranges::size(items) + chunksize - 1) / chunksize),
        state_(state_of(f)),
        items_(items, chunksize),
        chunksize_(chunksize),
        target_(std::move(target)) {}
  void payload(std::size_t i, std::vector<std::byte>& out) const override {
    const std::size_t first = i * chunksize_;
    encode_chunk<Item>(state_, items_.at(first), std::min(chunksize_, items_.size() - first),
                       out);
  }
  void deliver(std::span<const task_outcome> outcomes) noexcept override {
    target_->deliver(outcomes);
  }

 private:
  state_t<F> state_;
  item_blocks<Item> items_;
  std::size_t chunksize_;
  std::shared_ptr<Target> target_;
};

// A map's results gathered, in order, into its async_state.
template <class R>
class map_target {
 public:
  map_target(std::size_t chunks, std::shared_ptr<async_state<std::vector<R>>> state)
      : chunks_(chunks), left_(chunks), state_(std::move(state)) {}

  void deliver(std::span<const task_outcome> outcomes) noexcept {
    std::exception_ptr error;
    bool complete = false;
    {
      std::lock_guard lk(m_);
      for (const task_outcome& o : outcomes) {
        if (o.ok && !o.error) {
          try {
            decode_into(o.bytes, chunks_[o.index]);
            --left_;
            continue;
          } catch (...) {
            error = std::current_exception();
          }
        } else {
          error = task_batch::failure_of(o);
        }
        break;  // the first failure decides
      }
      complete = !error && left_ == 0;
    }
    if (error) {
      state_->set_error(std::move(error));
    } else if (complete) {
      std::vector<R> all;
      try {
        std::size_t n = 0;
        for (auto& ch : chunks_) n += ch.size();
        all.reserve(n);
        for (auto& ch : chunks_)
          for (auto& r : ch) all.push_back(std::move(r));
      } catch (...) {
        state_->set_error(std::current_exception());
        return;
      }
      state_->set_value(std::move(all));
    }
  }

 private:
  std::mutex m_;
  std::vector<std::vector<R>> chunks_;
  std::size_t left_;
  std::shared_ptr<async_state<std::vector<R>>> state_;
};

// apply_async's one task: its payload encoded at submission, its result into an async_state.
template <class R>
class single_batch final : public task_batch {
 public:
  single_batch(task_entry entry, std::uint64_t fn_word, std::vector<std::byte> payload,
               std::shared_ptr<async_state<R>> state)
      : task_batch(entry, fn_word, 1), payload_(std::move(payload)), state_(std::move(state)) {}
  void payload(std::size_t, std::vector<std::byte>& out) const override {
    out.assign(payload_.begin(), payload_.end());
  }
  void deliver(std::span<const task_outcome> outcomes) noexcept override {
    for (const task_outcome& o : outcomes) {
      if (!o.ok || o.error) {
        state_->set_error(failure_of(o));
        continue;
      }
      try {
        if constexpr (std::is_void_v<R>) {
          if (!o.bytes.empty()) throw error("shmkit: a task of void result sent back bytes");
          state_->set_value(true);
        } else {
          state_->set_value(decode<R>(o.bytes));
        }
      } catch (...) {
        state_->set_error(std::current_exception());
      }
    }
  }

 private:
  std::vector<std::byte> payload_;
  std::shared_ptr<async_state<R>> state_;
};

// The shared state of an imap / imap_unordered range: results as they arrive. The consumer
// takes every result there at once and then iterates them without locking; deliveries come
// several at a time, with one lock and one notification.
template <class R>
class stream_state {
 public:
  stream_state(std::size_t items, std::size_t chunksize, bool ordered,
               std::weak_ptr<callback_executor> exec = {})
      : ordered_(ordered),
        items_(items),
        chunksize_(chunksize),
        chunks_((items + chunksize - 1) / chunksize),
        chunks_left_(chunks_),
        exec_(std::move(exec)) {
    if (ordered_) {
      placed_.resize(items_);
      arrived_.resize(chunks_, 0);
    }
  }

  void deliver(std::span<const task_outcome> outcomes) noexcept {
    {
      std::lock_guard lk(m_);
      for (const task_outcome& o : outcomes) {
        std::exception_ptr e;
        if (o.ok && !o.error) {
          try {
            decode_into(o.bytes, scratch_);
            if (ordered_) {
              const std::size_t first = o.index * chunksize_;
              const std::size_t k = std::min(chunksize_, items_ - first);
              if (scratch_.size() != k)
                throw error(fmt::format("shmkit::pool: a chunk of {} items came back with {} "
                                        "results",
                                        k, scratch_.size()));
              for (std::size_t j = 0; j < k; ++j) placed_[first + j].emplace(std::move(scratch_[j]));
            } else {
              ready_.insert(ready_.end(), std::make_move_iterator(scratch_.begin()),
                            std::make_move_iterator(scratch_.end()));
            }
          } catch (...) {
            e = std::current_exception();
          }
        } else {
          e = task_batch::failure_of(o);
        }
        if (ordered_) arrived_[o.index] = e ? failed_chunk : arrived_chunk;
        if (e) errors_.emplace_back(o.index, std::move(e));
        --chunks_left_;
      }
      scratch_.clear();
      // release: pairs with the acquire loads of the thread helping in wait().
      arrivals_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
  }

  // The next result, or nullopt at the end. Throws a task's failure where it stands in order
  // (ordered) or once the results that arrived before it are taken (unordered).
  std::optional<R> next() {
    for (;;) {
      if (ordered_) {
        // placed_[pos_, avail_) arrived, as seen under m_; nobody writes them any more.
        if (pos_ < avail_) {
          std::optional<R> r(std::move(*placed_[pos_]));
          placed_[pos_++].reset();
          return r;
        }
        std::unique_lock lk(m_);
        if (next_chunk_ == chunks_) return std::nullopt;
        wait(lk, [&] { return arrived_[next_chunk_] != 0; });
        if (arrived_[next_chunk_] == failed_chunk) {
          std::exception_ptr e;
          for (auto it = errors_.begin(); it != errors_.end(); ++it)
            if (it->first == next_chunk_) {
              e = it->second;
              errors_.erase(it);
              break;
            }
          ++next_chunk_;
          pos_ = avail_ = std::min(items_, next_chunk_ * chunksize_);
          std::rethrow_exception(e);
        }
        while (next_chunk_ < chunks_ && arrived_[next_chunk_] == arrived_chunk) ++next_chunk_;
        avail_ = std::min(items_, next_chunk_ * chunksize_);
      } else {
        if (pos_ < taken_.size()) return std::optional<R>(std::move(taken_[pos_++]));
        std::unique_lock lk(m_);
        wait(lk, [&] { return !ready_.empty() || !errors_.empty() || chunks_left_ == 0; });
        if (!errors_.empty()) {
          auto e = errors_.front().second;
          errors_.erase(errors_.begin());
          std::rethrow_exception(e);
        }
        if (ready_.empty()) return std::nullopt;
        taken_.clear();
        std::swap(taken_, ready_);
        pos_ = 0;
      }
    }
  }

  std::size_t size() const noexcept { return items_; }

 private:
  static constexpr std::uint8_t arrived_chunk = 1, failed_chunk = 2;

  // Waits for pred() under lk; first helps the pool take results in, as in async_state.
  template <class Pred>
  void wait(std::unique_lock<std::mutex>& lk, Pred pred) {
    if (pred()) return;
    const std::uint64_t seen = arrivals_.load(std::memory_order_acquire);
    lk.unlock();
    help_executor(exec_, [&] { return arrivals_.load(std::memory_order_acquire) != seen; });
    lk.lock();
    cv_.wait(lk, pred);
  }

  std::mutex m_;
  std::condition_variable cv_;
  const bool ordered_;
  const std::size_t items_, chunksize_, chunks_;
  std::size_t chunks_left_;
  std::vector<R> scratch_;  // one chunk's results, decoded
  // ordered: each item's result in place, and per chunk 0, arrived_chunk or failed_chunk
  std::vector<std::optional<R>> placed_;
  std::vector<std::uint8_t> arrived_;
  std::size_t next_chunk_ = 0, avail_ = 0;
  // unordered: results not yet taken by the consumer, and those it took
  std::vector<R> ready_, taken_;
  std::size_t pos_ = 0;
  std::vector<std::pair<std::size_t, std::exception_ptr>> errors_;
  std::weak_ptr<callback_executor> exec_;
  std::atomic<std::uint64_t> arrivals_{0};
};
}  // namespace detail

// The lazy range imap() and imap_unordered() return: single pass, usable in range-for.
// Iterating blocks until the next result is there; a failed task throws from the increment
// that reaches it. size() is the number of items submitted.
template <class R>
class result_stream {
 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    using reference = R&;
    using pointer = R*;

    iterator() = default;
    explicit iterator(detail::stream_state<R>* s) : s_(s) { advance(); }
    R& operator*() const { return *cur_; }
    R* operator->() const { return &*cur_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      return !it.cur_.has_value();
    }

   private:
    void advance() {
      cur_.reset();
      cur_ = s_->next();
    }
    detail::stream_state<R>* s_ = nullptr;
    mutable std::optional<R> cur_;
  };

  explicit result_stream(std::shared_ptr<detail::stream_state<R>> s) : s_(std::move(s)) {}
  iterator begin() { return iterator(s_.get()); }
  std::default_sentinel_t end() { return {}; }
  std::size_t size() const noexcept { return s_->size(); }

 private:
  std::shared_ptr<detail::stream_state<R>> s_;
};

namespace detail {

// The pool API over a runtime: one implementation of map, imap, apply_async, ... for
// shmkit::pool (Runtime = pool_runtime) and shmkit::mpi_pool (mpi_runtime, mpi_pool.hpp).
template <std::derived_from<task_runtime> Runtime>
class pool_front {
 public:
  // f(x) for each x of items, in order. Throws remote_error / worker_lost_error for the first
  // failed chunk; the pool stays usable.
  template <class F, std::ranges::sized_range Items>
  auto map(F f, const Items& items, std::size_t chunksize = 0) {
    if constexpr (detail::check_sendable<std::decay_t<F>>())
      return map_async(std::move(f), items, chunksize).get();
  }

  template <class F, std::ranges::sized_range Items>
  auto map_async(F f, const Items& items, std::size_t chunksize = 0) {
    using Fd = std::decay_t<F>;
    if constexpr (detail::check_sendable<Fd>()) {
      using Item = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
      using R = detail::map_result_t<Fd, Item>;
      return chunked<R, Item>(f, items, chunksize, &detail::map_entry<Fd, Item>);
    }
  }

  // f(std::get<I>(t)...) for each tuple t of items, in order.
  template <class F, std::ranges::sized_range Items>
  auto starmap(F f, const Items& items, std::size_t chunksize = 0) {
    if constexpr (detail::check_sendable<std::decay_t<F>>())
      return starmap_async(std::move(f), items, chunksize).get();
  }
  template <class F, std::ranges::sized_range Items>
  auto starmap_async(F f, const Items& items, std::size_t chunksize = 0) {
    using Fd = std::decay_t<F>;
    if constexpr (detail::check_sendable<Fd>()) {
      using Tuple = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
      using R = detail::starmap_result_t<Fd, Tuple>;
      return chunked<R, Tuple>(f, items, chunksize, &detail::starmap_entry<Fd, Tuple>);
    }
  }

  // Lazy, ordered: results in the order of items, each as soon as it and those before it are
  // done. chunksize defaults to 1, as in Python.
  template <class F, std::ranges::sized_range Items>
  auto imap(F f, const Items& items, std::size_t chunksize = 1) {
    return stream(std::move(f), items, chunksize, true);
  }
  // Lazy, in completion order.
  template <class F, std::ranges::sized_range Items>
  auto imap_unordered(F f, const Items& items, std::size_t chunksize = 1) {
    return stream(std::move(f), items, chunksize, false);
  }

  // f(args...) in a worker, waiting for the result.
  template <class F, class... Args>
  auto apply(F f, Args&&... args) {
    if constexpr (detail::check_sendable<std::decay_t<F>>())
      return apply_async(std::move(f), std::forward<Args>(args)...).get();
  }

  template <class F, class... Args>
  auto apply_async(F f, Args&&... args) {
    using Fd = std::decay_t<F>;
    if constexpr (detail::check_sendable<Fd>()) {
      using R = detail::apply_result_t<Fd, Args...>;
      static_assert(std::is_void_v<R> || encodable<R>,
                    "shmkit::pool: the result type of f must be a codec type");
      auto state = detail::make_async_state<R>(rt_);
      auto payload = encode(std::tuple<detail::state_t<Fd>, std::tuple<std::decay_t<Args>...>>(
          detail::state_of(f), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)));
      rt_->submit_batch(std::make_shared<detail::single_batch<R>>(
          &detail::apply_entry<Fd, std::decay_t<Args>...>, detail::word_of(f),
          std::move(payload), state));
      return async_result<R>(std::move(state));
    }
  }

  // No new tasks; the workers leave once the queued ones are done (see join()).
  void close() { rt_->close(); }
  // After close(): waits for every task and every worker. Throws std::logic_error before.
  void join() { rt_->join(); }
  // Kills the workers now; pending tasks fail with worker_lost_error.
  void terminate() noexcept { rt_->terminate(); }

  int processes() const noexcept { return rt_->processes(); }

 protected:
  explicit pool_front(std::shared_ptr<Runtime> rt) : rt_(std::move(rt)) {}
  pool_front(pool_front&&) noexcept = default;
  pool_front& operator=(pool_front&&) noexcept = default;
  ~pool_front() = default;

  std::shared_ptr<Runtime> rt_;

 private:
  template <class R, class Item, class F, class Items>
  async_result<std::vector<R>> chunked(const F& f, const Items& items, std::size_t chunksize,
                                       detail::task_entry entry) {
    static_assert(encodable<R>, "shmkit::pool: the result type of f must be a codec type");
    static_assert(encodable<Item>, "shmkit::pool: the items must be codec types");
    const std::size_t n = std::ranges::size(items);
    if (chunksize == 0) chunksize = detail::default_chunksize(n, processes(), sizeof(Item));
    auto state = detail::make_async_state<std::vector<R>>(rt_);
    async_result<std::vector<R>> result(state);
    if (n == 0) {
      state->set_value({});
      return result;
    }
    auto target = std::make_shared<detail::map_target<R>>((n + chunksize - 1) / chunksize, state);
    rt_->submit_batch(std::make_shared<detail::chunk_batch<F, Item, detail::map_target<R>>>(
        entry, f, items, chunksize, std::move(target)));
    return result;
  }

  template <class F, class Items>
  auto stream(F f, const Items& items, std::size_t chunksize, bool ordered) {
    using Fd = std::decay_t<F>;
    if constexpr (detail::check_sendable<Fd>()) {
      using Item = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
      using R = detail::map_result_t<Fd, Item>;
      static_assert(encodable<R>, "shmkit::pool: the result type of f must be a codec type");
      if (chunksize == 0) chunksize = 1;
      const std::size_t n = std::ranges::size(items);
      auto s = std::make_shared<detail::stream_state<R>>(n, chunksize, ordered, rt_);
      if (n != 0)
        rt_->submit_batch(
            std::make_shared<detail::chunk_batch<Fd, Item, detail::stream_state<R>>>(
                &detail::map_entry<Fd, Item>, f, items, chunksize, s));
      return result_stream<R>(std::move(s));
    }
  }
};

}  // namespace detail

class pool : public detail::pool_front<detail::pool_runtime> {
 public:
  // `processes` workers (0: cpu_count()).
  explicit pool(int processes = 0) : pool(pool_options{.processes = processes}) {}
  explicit pool(pool_options options)
      : pool_front(detail::pool_runtime::start(std::move(options))) {}
  pool(pool&&) noexcept = default;
  pool& operator=(pool&&) noexcept = default;
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;
  // terminate(), like leaving Python's `with Pool() as p:`.
  ~pool() {
    if (rt_) rt_->terminate();
  }

  // The live workers' process ids at this moment (they change as workers are replaced;
  // while a dead worker's replacement starts, fewer than `processes` are listed).
  std::vector<pid_t> worker_pids() const { return rt_->worker_pids(); }
};

}  // namespace shmkit
