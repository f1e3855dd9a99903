// SPDX-License-Identifier: MIT
// A non-owning reference to a callable (the C++26 std::function_ref, minimal): lets compiled
// library code call back into a template without std::function's allocation. The callable
// must outlive the reference; pass a named object or a temporary that lives for the call.
#pragma once

#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace shmkit::detail {

template <class Sig>
class function_ref;

template <class R, class... A>
class function_ref<R(A...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, function_ref> &&
             std::is_invocable_r_v<R, F&, A...>)
  function_ref(F&& f) noexcept  // NOLINT: implicit, like std::function_ref
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, A... a) -> R {
          return std::invoke(*static_cast<std::remove_reference_t<F>*>(o), std::forward<A>(a)...);
        }) {}

  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

}  // namespace shmkit::detail
