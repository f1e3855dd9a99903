// SPDX-License-Identifier: MIT
// How a call travels to a worker process and its result comes back: the pool's task format,
// shared by shmkit::pool (forked workers) and shmkit::mpi_pool (MPI ranks).
//
// A task is (entry, fn_word, payload). `entry` is the address of a function template
// instantiated for the callable's type and argument types; it decodes the payload, rebuilds the
// callable, calls it and encodes the result. `fn_word` carries a plain function pointer. Both
// are addresses in the program's image: valid as they are in forked workers, and translated to
// (module, offset) pairs for other processes of the same program (MPI ranks; see
// portable_address). The callable's state, if any, and the arguments travel in the payload as
// codec bytes.
//
// What may be sent: function pointers, captureless lambdas (empty, default-constructible), and
// callables whose state the codec can serialize (a member serialize()). Anything else is a
// compile error at the call site that says so.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmkit/codec.hpp"

namespace shmkit::detail {

template <class F>
concept function_pointer =
    std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

// A captureless lambda or another empty functor: nothing to send, rebuilt by F{}.
template <class F>
concept stateless_callable = std::is_class_v<F> && std::is_empty_v<F> &&
                             std::is_default_constructible_v<F> &&
                             std::is_trivially_copyable_v<F>;

// A callable with state travels as its encoding and is rebuilt by decoding it, which needs a
// default-constructible type: a lambda that captures is neither (and its captures, references
// included, are not the codec's to judge), so it is refused at compile time.
template <class F>
concept sendable_callable =
    function_pointer<F> || stateless_callable<F> ||
    (std::is_class_v<F> && encodable<F> && std::is_default_constructible_v<F>);

// What of a callable travels in the payload: nothing, or the callable itself.
struct no_state {};

template <class F>
using state_t = std::conditional_t<function_pointer<F> || stateless_callable<F>, no_state, F>;

template <class F>
state_t<F> state_of(const F& f) {
  if constexpr (function_pointer<F> || stateless_callable<F>)
    return {};
  else
    return f;
}

template <class F>
std::uint64_t word_of(const F& f) {
  if constexpr (function_pointer<F>)
    return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(f));
  else
    return 0;
}

template <class F>
F rebuild(std::uint64_t fn_word, state_t<F>&& state) {
  if constexpr (function_pointer<F>)
    return reinterpret_cast<F>(static_cast<std::uintptr_t>(fn_word));
  else if constexpr (stateless_callable<F>)
    return F{};
  else
    return std::move(state);
}

// Runs in the worker: decodes `in`, calls, writes the encoded result to `out`. Exceptions of the
// callable propagate to the caller (the worker loop), which reports them.
using task_entry = void (*)(std::uint64_t fn_word, std::span<const std::byte> in,
                            std::vector<std::byte>& out);

template <class R>
void put_result(std::vector<std::byte>& out, R&& r) {
  out.resize(encoded_size(r));
  encode_into(r, std::span<std::byte>(out));
}

// f(args...) once.
template <class F, class... Args>
void apply_entry(std::uint64_t fn_word, std::span<const std::byte> in,
                 std::vector<std::byte>& out) {
  auto [state, args] = decode<std::tuple<state_t<F>, std::tuple<Args...>>>(in);
  F f = rebuild<F>(fn_word, std::move(state));
  using R = std::invoke_result_t<F&, Args&...>;
  if constexpr (std::is_void_v<R>) {
    std::apply(f, args);
    out.clear();
  } else {
    put_result(out, std::apply(f, args));
  }
}

// Gives a vector used by one task back to the thread's spare, emptied, keeping its capacity
// up to 64 KiB.
template <class T>
void give_back(std::vector<T>& v, std::vector<T>& spare) noexcept {
  if (v.capacity() * sizeof(T) > 64 * 1024) return;
  v.clear();
  v.swap(spare);
}

// f(item) for each item of a chunk; the result is the vector of results. The chunk and the
// results reuse the memory of the thread's previous chunk, so a stream of small chunks
// allocates nothing; no argument or result outlives its task. (The vectors are locals lent
// the memory, not thread_locals: the compiler keeps a local's bounds in registers across the
// calls of f.)
template <class F, class Item>
void map_entry(std::uint64_t fn_word, std::span<const std::byte> in,
               std::vector<std::byte>& out) {
  using R = std::invoke_result_t<F&, Item&>;
  thread_local std::vector<Item> spare_items;
  thread_local std::vector<R> spare_results;
  std::tuple<state_t<F>, std::vector<Item>> args;
  std::vector<R> results;
  auto& items = std::get<1>(args);
  items.swap(spare_items);
  results.swap(spare_results);
  struct returner {
    std::vector<Item>& items;
    std::vector<R>& results;
    ~returner() {
      give_back(items, spare_items);
      give_back(results, spare_results);
    }
  } at_exit{items, results};
  decode_into(in, args);
  F f = rebuild<F>(fn_word, std::move(std::get<0>(args)));
  results.reserve(items.size());
  for (auto& item : items) results.push_back(std::invoke(f, item));
  put_result(out, results);
}

// std::apply(f, tuple) for each tuple of a chunk.
template <class F, class Tuple>
void starmap_entry(std::uint64_t fn_word, std::span<const std::byte> in,
                   std::vector<std::byte>& out) {
  auto [state, items] = decode<std::tuple<state_t<F>, std::vector<Tuple>>>(in);
  F f = rebuild<F>(fn_word, std::move(state));
  using R = decltype(std::apply(f, items.front()));
  std::vector<R> results;
  results.reserve(items.size());
  for (auto& t : items) results.push_back(std::apply(f, t));
  put_result(out, results);
}

template <class F, class... Args>
using apply_result_t = std::invoke_result_t<F&, std::decay_t<Args>&...>;

template <class F, class Item>
using map_result_t = std::invoke_result_t<F&, Item&>;

template <class F, class Tuple>
using starmap_result_t = decltype(std::apply(std::declval<F&>(), std::declval<Tuple&>()));

// The error a failed task reports: dynamic type name and message of what escaped the callable,
// and the stack of its throw site when one was captured (detail/throw_trace.hpp).
struct task_failure {
  std::string type_name;
  std::string message;
  std::string traceback = {};
  template <class Ar>
  void serialize(Ar& ar) {
    ar(type_name, message, traceback);
  }
};

// Runs a task and captures an escaping exception as a task_failure. Returns true on success
// (`out` holds the result), false on failure (`out` holds an encoded task_failure).
bool run_task(task_entry entry, std::uint64_t fn_word, std::span<const std::byte> in,
              std::vector<std::byte>& out) noexcept;

// An address in the program image as (module path, offset), valid in another process running
// the same program where ASLR placed the modules elsewhere. Throws shmkit::error when the
// address is in no loaded module.
struct portable_address {
  std::string module;  // "" for the main executable
  std::uint64_t offset = 0;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(module, offset);
  }
};
portable_address to_portable(std::uint64_t address);
std::uint64_t from_portable(const portable_address& a);

}  // namespace shmkit::detail
