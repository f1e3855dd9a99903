// SPDX-License-Identifier: MIT
// The interposer of the C++ runtime's __cxa_throw (see include/shmkit/detail/throw_trace.hpp).
// Kept apart from everything that includes <cxxabi.h>: the compiler knows __cxa_throw as a
// builtin with untyped pointers, and this definition must match that one.
#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>

#include "shmkit/detail/throw_trace.hpp"

// Referenced by enable_throw_traces(), so that a static link takes this file in even where a
// shared library on the link line (a sanitizer's runtime) defines __cxa_throw already.
extern "C" const int shmkit_throw_hook_anchor = 1;

namespace {

using cxa_throw_fn = void (*)(void*, void*, void (*)(void*));

cxa_throw_fn runtime_throw() noexcept {
  static const cxa_throw_fn fn =
      reinterpret_cast<cxa_throw_fn>(::dlsym(RTLD_NEXT, "__cxa_throw"));
  return fn;
}

}  // namespace

// Every `throw` expression calls this. Record the stack when capture is on, then hand over to
// the C++ runtime's own __cxa_throw, which never returns. Weak: where the runtime is linked in
// statically (-static, -static-libstdc++), its own definition wins the link and throws are not
// traced, instead of the link failing on a duplicate symbol.
extern "C" [[gnu::weak, noreturn]] void __cxa_throw(void* object, void* type, void (*destroy)(void*)) {
  shmkit::detail::note_throw(object);
  const cxa_throw_fn real = runtime_throw();
  if (real == nullptr) {
    std::fputs("shmkit: the C++ runtime's __cxa_throw was not found (a static executable?)\n",
               stderr);
    std::abort();
  }
  real(object, type, destroy);
  __builtin_unreachable();
}
