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
// - Each worker has its own inbox queue, holding two tasks, or up to sixteen while many small
//   ones wait; it is refilled as results come back, so the pool always knows which tasks a
//   worker holds. Default map chunks carry at most about 64 KiB of items.
// - Errors: an exception escaping f in a worker reaches the caller as shmkit::remote_error
//   (type name and message) from get(), map(), iteration or the error callback, and the pool
//   stays usable. A worker that dies (crash, kill -9, abort) is replaced, and the task it ran
//   fails with shmkit::worker_lost_error (map() then throws it), as do the tiny tasks it had
//   finished in the last 20 microseconds whose results it had not sent yet (workers send
//   those together). Every task runs at most once: tasks it had taken but not started run on
//   the replacement. If the supervisor itself dies,
//   every pending task fails with worker_lost_error and the pool refuses new work. Nothing
//   waits forever.
// - Callbacks (async_result::then) run in this process on the pool's one result thread, in
//   completion order. A callback that throws is reported on stderr and ignored.
// - Thread-safe: any thread may submit. close() stops new submissions; join() (after close())
//   waits for the work and the workers; terminate() kills the workers at once and fails what
//   is pending; the destructor terminates, like Python's `with Pool() as p:`.
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
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

namespace shmkit {

struct pool_options {
  // Worker processes; 0 means cpu_count().
  int processes = 0;
  // Runs once in every worker when it starts (any callable: workers are forked, not sent it).
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

// Hands a task's outcome to its sink on the result thread: `payload` is the result (ok) or an
// encoded task_failure, which becomes remote_error(type name, message, pid, traceback). What the sink
// throws (a result that does not decode) fails it instead.
inline void deliver_outcome(task_sink& sink, bool ok, std::span<const std::byte> payload,
                            pid_t pid) {
  try {
    if (ok) {
      sink.succeeded(payload);
    } else {
      auto f = decode<task_failure>(payload);
      sink.failed(std::make_exception_ptr(
          remote_error(std::move(f.type_name), std::move(f.message), pid, std::move(f.traceback))));
    }
  } catch (...) {
    sink.failed(std::current_exception());
  }
}

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

template <class Items>
auto to_chunks(const Items& items, std::size_t chunksize) {
  using Item = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
  std::vector<std::vector<Item>> chunks;
  if constexpr (std::ranges::random_access_range<const Items>) {
    // Whole slices at once (one copy, a memcpy for trivially copyable items).
    const std::size_t n = std::ranges::size(items);
    chunks.reserve(n / chunksize + 1);
    auto first = std::ranges::begin(items);
    for (std::size_t at = 0; at < n; at += chunksize) {
      const auto k = static_cast<std::ranges::range_difference_t<const Items>>(
          std::min(chunksize, n - at));
      chunks.emplace_back(first, first + k);
      first += k;
    }
  } else {
    std::vector<Item> cur;
    cur.reserve(chunksize);
    for (auto&& x : items) {
      cur.push_back(x);
      if (cur.size() == chunksize) {
        chunks.push_back(std::move(cur));
        cur = {};
        cur.reserve(chunksize);
      }
    }
    if (!cur.empty()) chunks.push_back(std::move(cur));
  }
  return chunks;
}

template <class F>
constexpr void check_sendable() {
  static_assert(sendable_callable<F>,
                "shmkit::pool: f must be a function pointer, a captureless lambda, or a callable "
                "whose state the codec can serialize (give it a member `template <class Ar> void "
                "serialize(Ar& ar)`); a lambda that captures cannot be sent to another process");
}

// Results of a chunked map gathered on the result thread, in submission order.
template <class R>
struct map_collector {
  std::vector<std::vector<R>> chunks;
  std::size_t left = 0;
  std::shared_ptr<async_state<std::vector<R>>> state;
};

template <class R>
class map_chunk_sink final : public task_sink {
 public:
  map_chunk_sink(std::shared_ptr<map_collector<R>> c, std::size_t index)
      : c_(std::move(c)), index_(index) {}
  void succeeded(std::span<const std::byte> bytes) override {
    c_->chunks[index_] = decode<std::vector<R>>(bytes);
    if (--c_->left == 0) {
      std::vector<R> all;
      std::size_t n = 0;
      for (auto& ch : c_->chunks) n += ch.size();
      all.reserve(n);
      for (auto& ch : c_->chunks)
        for (auto& r : ch) all.push_back(std::move(r));
      c_->state->set_value(std::move(all));
    }
  }
  void failed(std::exception_ptr e) override { c_->state->set_error(std::move(e)); }

 private:
  std::shared_ptr<map_collector<R>> c_;
  std::size_t index_;
};

template <class R>
class value_sink final : public task_sink {
 public:
  explicit value_sink(std::shared_ptr<async_state<R>> s) : s_(std::move(s)) {}
  void succeeded(std::span<const std::byte> bytes) override {
    if constexpr (std::is_void_v<R>) {
      if (!bytes.empty()) throw error("shmkit: a task of void result sent back bytes");
      s_->set_value(true);
    } else {
      s_->set_value(decode<R>(bytes));
    }
  }
  void failed(std::exception_ptr e) override { s_->set_error(std::move(e)); }

 private:
  std::shared_ptr<async_state<R>> s_;
};

// The shared state of an imap / imap_unordered range: chunk results as they arrive.
template <class R>
class stream_state {
 public:
  stream_state(std::size_t chunks, std::size_t items, bool ordered,
               std::weak_ptr<callback_executor> exec = {})
      : ordered_(ordered),
        slots_(ordered ? chunks : 0),
        chunks_left_(chunks),
        items_(items),
        exec_(std::move(exec)) {}

  void deliver(std::size_t index, std::vector<R>&& results) {
    std::lock_guard lk(m_);
    if (ordered_)
      slots_[index].emplace(std::move(results));
    else
      for (auto& r : results) ready_.push_back(std::move(r));
    arrived();
  }
  void fail(std::size_t index, std::exception_ptr e) {
    std::lock_guard lk(m_);
    if (ordered_)
      slots_[index].emplace(std::vector<R>{}), errors_.emplace_back(index, e);
    else
      errors_.emplace_back(0, e);
    arrived();
  }

  // The next result, or nullopt at the end. Throws a task's failure where it stands in order
  // (ordered) or as soon as it is known (unordered).
  std::optional<R> next() {
    std::unique_lock lk(m_);
    for (;;) {
      if (ordered_) {
        while (pos_ < current_.size()) {
          return std::optional<R>(std::move(current_[pos_++]));
        }
        if (next_chunk_ == slots_.size()) return std::nullopt;
        wait(lk, [&] { return slots_[next_chunk_].has_value(); });
        for (auto it = errors_.begin(); it != errors_.end(); ++it)
          if (it->first == next_chunk_) {
            auto e = it->second;
            errors_.erase(it);
            ++next_chunk_;
            std::rethrow_exception(e);
          }
        current_ = std::move(*slots_[next_chunk_]);
        slots_[next_chunk_].reset();
        ++next_chunk_;
        pos_ = 0;
      } else {
        wait(lk, [&] { return !ready_.empty() || !errors_.empty() || chunks_left_ == 0; });
        if (!errors_.empty()) {
          auto e = errors_.front().second;
          errors_.erase(errors_.begin());
          std::rethrow_exception(e);
        }
        if (ready_.empty()) return std::nullopt;
        R r = std::move(ready_.front());
        ready_.pop_front();
        return std::optional<R>(std::move(r));
      }
    }
  }

  std::size_t size() const noexcept { return items_; }

 private:
  void arrived() {
    --chunks_left_;
    // release: pairs with the acquire load of the thread helping in wait().
    arrivals_.fetch_add(1, std::memory_order_release);
    cv_.notify_all();
  }
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
  std::vector<std::optional<std::vector<R>>> slots_;  // ordered: per chunk
  std::deque<R> ready_;                               // unordered
  std::vector<std::pair<std::size_t, std::exception_ptr>> errors_;
  std::size_t chunks_left_;
  std::size_t items_;
  std::size_t next_chunk_ = 0;
  std::vector<R> current_;
  std::size_t pos_ = 0;
  std::weak_ptr<callback_executor> exec_;
  std::atomic<std::uint64_t> arrivals_{0};
};

template <class R>
class stream_chunk_sink final : public task_sink {
 public:
  stream_chunk_sink(std::shared_ptr<stream_state<R>> s, std::size_t index)
      : s_(std::move(s)), index_(index) {}
  void succeeded(std::span<const std::byte> bytes) override {
    s_->deliver(index_, decode<std::vector<R>>(bytes));
  }
  void failed(std::exception_ptr e) override { s_->fail(index_, std::move(e)); }

 private:
  std::shared_ptr<stream_state<R>> s_;
  std::size_t index_;
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
    return map_async(std::move(f), items, chunksize).get();
  }

  template <class F, std::ranges::sized_range Items>
  auto map_async(F f, const Items& items, std::size_t chunksize = 0) {
    using Fd = std::decay_t<F>;
    detail::check_sendable<Fd>();
    using Item = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
    using R = detail::map_result_t<Fd, Item>;
    return chunked<R, Item>(f, items, chunksize, &detail::map_entry<Fd, Item>);
  }

  // f(std::get<I>(t)...) for each tuple t of items, in order.
  template <class F, std::ranges::sized_range Items>
  auto starmap(F f, const Items& items, std::size_t chunksize = 0) {
    return starmap_async(std::move(f), items, chunksize).get();
  }
  template <class F, std::ranges::sized_range Items>
  auto starmap_async(F f, const Items& items, std::size_t chunksize = 0) {
    using Fd = std::decay_t<F>;
    detail::check_sendable<Fd>();
    using Tuple = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
    using R = detail::starmap_result_t<Fd, Tuple>;
    return chunked<R, Tuple>(f, items, chunksize, &detail::starmap_entry<Fd, Tuple>);
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
    return apply_async(std::move(f), std::forward<Args>(args)...).get();
  }

  template <class F, class... Args>
  auto apply_async(F f, Args&&... args) {
    using Fd = std::decay_t<F>;
    detail::check_sendable<Fd>();
    using R = detail::apply_result_t<Fd, Args...>;
    static_assert(std::is_void_v<R> || encodable<R>,
                  "shmkit::pool: the result type of f must be a codec type");
    auto state = detail::make_async_state<R>(rt_);
    detail::task_request t;
    t.entry = &detail::apply_entry<Fd, std::decay_t<Args>...>;
    t.fn_word = detail::word_of(f);
    t.payload = encode(std::tuple<detail::state_t<Fd>, std::tuple<std::decay_t<Args>...>>(
        detail::state_of(f), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)));
    t.sink = std::make_shared<detail::value_sink<R>>(state);
    std::vector<detail::task_request> v;
    v.push_back(std::move(t));
    rt_->submit(std::move(v));
    return async_result<R>(std::move(state));
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
  // One task per chunk: the callable's state and the chunk's items as the payload, and the
  // sink make_sink(i) gives for chunk i.
  template <class F, class Item, class MakeSink>
  static std::vector<detail::task_request> chunk_tasks(const F& f,
                                                       std::vector<std::vector<Item>>& chunks,
                                                       detail::task_entry entry,
                                                       MakeSink make_sink) {
    using Fd = std::decay_t<F>;
    std::vector<detail::task_request> tasks;
    tasks.reserve(chunks.size());
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      detail::task_request t;
      t.entry = entry;
      t.fn_word = detail::word_of(f);
      t.payload = encode(std::tuple<detail::state_t<Fd>, std::vector<Item>>(detail::state_of(f),
                                                                           std::move(chunks[i])));
      t.sink = make_sink(i);
      tasks.push_back(std::move(t));
    }
    return tasks;
  }

  template <class R, class Item, class F, class Items>
  async_result<std::vector<R>> chunked(const F& f, const Items& items, std::size_t chunksize,
                                       detail::task_entry entry) {
    static_assert(encodable<R>, "shmkit::pool: the result type of f must be a codec type");
    static_assert(encodable<Item>, "shmkit::pool: the items must be codec types");
    const std::size_t n = std::ranges::size(items);
    if (chunksize == 0) chunksize = detail::default_chunksize(n, processes(), sizeof(Item));
    auto chunks = detail::to_chunks(items, chunksize);
    auto c = std::make_shared<detail::map_collector<R>>();
    c->chunks.resize(chunks.size());
    c->left = chunks.size();
    c->state = detail::make_async_state<std::vector<R>>(rt_);
    async_result<std::vector<R>> result(c->state);
    if (chunks.empty()) {
      c->state->set_value({});
      return result;
    }
    rt_->submit(chunk_tasks(f, chunks, entry, [&](std::size_t i) {
      return std::make_shared<detail::map_chunk_sink<R>>(c, i);
    }));
    return result;
  }

  template <class F, class Items>
  auto stream(F f, const Items& items, std::size_t chunksize, bool ordered) {
    using Fd = std::decay_t<F>;
    detail::check_sendable<Fd>();
    using Item = std::remove_cvref_t<std::ranges::range_value_t<Items>>;
    using R = detail::map_result_t<Fd, Item>;
    static_assert(encodable<R>, "shmkit::pool: the result type of f must be a codec type");
    if (chunksize == 0) chunksize = 1;
    auto chunks = detail::to_chunks(items, chunksize);
    auto s = std::make_shared<detail::stream_state<R>>(chunks.size(), std::ranges::size(items),
                                                       ordered, rt_);
    if (!chunks.empty())
      rt_->submit(chunk_tasks(f, chunks, &detail::map_entry<Fd, Item>, [&](std::size_t i) {
        return std::make_shared<detail::stream_chunk_sink<R>>(s, i);
      }));
    return result_stream<R>(std::move(s));
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
