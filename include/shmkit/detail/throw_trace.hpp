// SPDX-License-Identifier: MIT
// The stack of the last `throw` on this thread, for the remote traceback of a failed child
// process or pool task (shmkit::remote_error::traceback(), like the traceback Python prints
// for an exception raised in a worker).
//
// By the time a catch block runs, the throw site is unwound, so the trace must be taken when
// the exception is thrown. lib/throw_hook.cpp interposes the C++ runtime's __cxa_throw (the
// function every `throw` expression calls): when capture is enabled it records the return
// addresses of the throwing stack in thread-local storage, then calls the runtime's own. A
// rethrow (`throw;`) keeps the trace of the original throw. Capture is off in every process
// until enable_throw_traces() (shmkit turns it on in the children it forks to run user code),
// so a program pays one relaxed load per throw elsewhere.
//
// Names come from the dynamic symbol table (dladdr): functions of shared libraries are named;
// those of an executable are named when it exports its symbols (link with -rdynamic, or CMake's
// ENABLE_EXPORTS), and are otherwise given as "module + offset", which `addr2line -f -C -e
// module offset` turns into a function and a source line.
//
// Limits: where the C++ runtime is linked in statically (-static, -static-libstdc++) its own
// __cxa_throw wins (ours is weak) and no traces are taken; neither are they for exceptions
// raised by foreign runtimes that bypass __cxa_throw.
#pragma once

#include <string>

namespace shmkit::detail {

// A symbol or type name as C++ spells it ("std::runtime_error" for typeid(...).name()); the
// name itself when it does not demangle.
std::string demangle(const char* name);

// The demangled dynamic type of the exception being handled ("int", "std::runtime_error");
// "unknown" when none is.
std::string current_exception_type_name();

// Turns capture on for every thread of this process (for the rest of its life).
void enable_throw_traces() noexcept;

// Called by the __cxa_throw interposer (lib/throw_hook.cpp) for every throw: records the
// throwing stack for `object`, the exception being thrown, when capture is on.
void note_throw(const void* object) noexcept;

// The symbolised stack of the last exception thrown on this thread since capture was enabled,
// most recent call first, one frame a line; empty when none was recorded.
std::string last_throw_trace();

}  // namespace shmkit::detail
