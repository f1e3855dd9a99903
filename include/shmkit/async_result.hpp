// SPDX-License-Identifier: MIT
// shmkit::async_result<R>: the future of a task submitted to a pool (apply_async, map_async),
// like Python's AsyncResult.
//
// Thread-safe: any thread may wait on or query a result. get() rethrows a task's failure as
// shmkit::remote_error (the task threw) or shmkit::worker_lost_error (its worker died).
// then(callback, error_callback) runs the callbacks once, in the submitting process, on the
// pool's result thread, in completion order; attached after the pool is gone, they run at once
// on the calling thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

namespace shmkit {

template <class R>
class async_result;

namespace detail {

// Where completion callbacks run: the pool's result thread. post() returns false when the
// executor has stopped (the callback must then run elsewhere).
class callback_executor {
 public:
  virtual ~callback_executor() = default;
  virtual bool post(std::function<void()> job) = 0;
  // Whether this thread is the one callbacks run on (then they run at once, in order).
  virtual bool on_callback_thread() const { return true; }
  // Lends the result thread's work to a thread about to wait: for a short while, as long as
  // done() is false, it takes results off the pool's queue and hands them out itself, which
  // saves the hand-over from the result thread to the waiter. Returns done()'s last value.
  // The default lends nothing.
  virtual bool help(const std::function<bool()>& done) { return done(); }
};

// Lets the calling thread help `exec` until done() holds or its help ends.
inline bool help_executor(const std::weak_ptr<callback_executor>& exec,
                          const std::function<bool()>& done) {
  if (auto e = exec.lock()) return e->help(done);
  return done();
}

template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, bool, R>;

template <class R>
class async_state : public std::enable_shared_from_this<async_state<R>> {
 public:
  explicit async_state(std::weak_ptr<callback_executor> exec = {}) : exec_(std::move(exec)) {}

  void set_value(stored_t<R> v) {
    std::unique_lock lk(m_);
    if (done_) return;  // a late result for a task already failed (its worker was lost)
    value_.emplace(std::move(v));
    finish(lk);
  }
  void set_error(std::exception_ptr e) {
    std::unique_lock lk(m_);
    if (done_) return;
    error_ = std::move(e);
    finish(lk);
  }

  bool ready() const {
    std::lock_guard lk(m_);
    return done_;
  }
  bool successful() const {
    std::lock_guard lk(m_);
    if (!done_) throw std::logic_error("shmkit: async_result::successful() before it is ready");
    return !error_;
  }
  void wait() const {
    if (done_flag_.load(std::memory_order_acquire) || help()) return;
    std::unique_lock lk(m_);
    cv_.wait(lk, [&] { return done_; });
  }
  template <class Clock, class Duration>
  bool wait_until(std::chrono::time_point<Clock, Duration> t) const {
    if (done_flag_.load(std::memory_order_acquire) || help()) return true;
    std::unique_lock lk(m_);
    return cv_.wait_until(lk, t, [&] { return done_; });
  }
  // Precondition: ready(). Throws the failure, or returns a copy of the value.
  stored_t<R> value() const {
    std::lock_guard lk(m_);
    if (error_) std::rethrow_exception(error_);
    return *value_;
  }
  // Moves the value out: for the single consumer of map()/apply().
  stored_t<R> take() {
    std::lock_guard lk(m_);
    if (error_) std::rethrow_exception(error_);
    return std::move(*value_);
  }

  void on_done(std::function<void(const async_state&)> fn) {
    std::unique_lock lk(m_);
    if (!done_) {
      callbacks_.push_back(std::move(fn));
      return;
    }
    lk.unlock();
    run_callback(std::move(fn));
  }

 private:
  bool help() const {
    return help_executor(exec_, [this] { return done_flag_.load(std::memory_order_acquire); });
  }
  void finish(std::unique_lock<std::mutex>& lk) {
    done_ = true;
    // release: pairs with the acquire loads in wait() and help(), which then read the value
    // under m_ (or after it, in the same thread that set it).
    done_flag_.store(true, std::memory_order_release);
    auto cbs = std::move(callbacks_);
    lk.unlock();
    cv_.notify_all();
    // Callbacks attached before completion run right here on the result thread; completed by
    // a thread that helped it, they are posted to it, to keep their one thread and order.
    auto exec = exec_.lock();
    if (!cbs.empty() && exec && !exec->on_callback_thread()) {
      for (auto& cb : cbs) run_callback(std::move(cb));
      return;
    }
    for (auto& cb : cbs) cb(*this);
  }
  void run_callback(std::function<void(const async_state&)> fn) {
    if (auto exec = exec_.lock()) {
      // Keep the state alive until the callback ran: the job owns a copy of the callback and
      // refers to *this through the shared_ptr held by async_result.
      auto job = [fn, self = this->shared_from_this()]() { fn(*self); };
      if (exec->post(job)) return;
    }
    fn(*this);
  }
  template <class>
  friend class shmkit::async_result;

  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> done_flag_{false};  // done_, readable without m_
  std::optional<stored_t<R>> value_;
  std::exception_ptr error_;
  std::vector<std::function<void(const async_state&)>> callbacks_;
  std::weak_ptr<callback_executor> exec_;
};

template <class R>
std::shared_ptr<async_state<R>> make_async_state(std::weak_ptr<callback_executor> exec) {
  return std::make_shared<async_state<R>>(std::move(exec));
}

}  // namespace detail

template <class R>
class async_result {
 public:
  using value_type = R;

  explicit async_result(std::shared_ptr<detail::async_state<R>> s) : s_(std::move(s)) {}

  // Waits for the result. Throws shmkit::remote_error or shmkit::worker_lost_error.
  R get() const {
    s_->wait();
    if constexpr (std::is_void_v<R>)
      (void)s_->value();
    else
      return s_->value();
  }

  // The result within `d`, or nullopt (for R = void: true) if not ready by then. Throws like
  // get() when the task failed.
  template <class Rep, class Period>
  auto get_for(std::chrono::duration<Rep, Period> d) const {
    const bool done = s_->wait_until(std::chrono::steady_clock::now() + d);
    if constexpr (std::is_void_v<R>) {
      if (done) (void)s_->value();
      return done;
    } else {
      return done ? std::optional<R>(s_->value()) : std::nullopt;
    }
  }

  void wait() const { s_->wait(); }
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) const {
    return s_->wait_until(std::chrono::steady_clock::now() + d);
  }
  bool ready() const { return s_->ready(); }
  // Whether the task completed without error. Throws std::logic_error if not ready yet.
  bool successful() const { return s_->successful(); }

  // Registers callbacks: `callback(R)` (or `callback()` for void) on success, and
  // `error_callback(const std::exception&)` on failure. Returns *this for chaining.
  template <class Callback, class ErrorCallback = std::nullptr_t>
  async_result& then(Callback callback, ErrorCallback error_callback = nullptr) {
    s_->on_done([cb = std::move(callback), ecb = std::move(error_callback)](
                    const detail::async_state<R>& st) mutable {
      std::optional<detail::stored_t<R>> v;
      try {
        v.emplace(st.value());
      } catch (const std::exception& e) {
        if constexpr (!std::is_same_v<ErrorCallback, std::nullptr_t>) ecb(e);
        return;
      }
      if constexpr (std::is_void_v<R>)
        cb();
      else
        cb(std::move(*v));
    });
    return *this;
  }

 private:
  std::shared_ptr<detail::async_state<R>> s_;
};

}  // namespace shmkit
