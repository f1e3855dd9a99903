// SPDX-License-Identifier: MIT
// Traces of thrown exceptions: see include/shmkit/detail/throw_trace.hpp.
#include "shmkit/detail/throw_trace.hpp"

#include <array>
#include <iterator>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <cxxabi.h>
#include <typeinfo>
#include <dlfcn.h>
#include <fmt/format.h>
#include <link.h>
#include <memory>
#include <unwind.h>

extern "C" const int shmkit_throw_hook_anchor;  // lib/throw_hook.cpp

namespace shmkit::detail {
namespace {

constexpr int max_frames = 40;

struct frames {
  std::array<std::uintptr_t, max_frames> pc{};
  int depth = 0;
};

// A switch read on its own (relaxed): no data is published through it.
std::atomic<bool> capture_enabled{false};

// The traces of this thread's last few throws, each with the exception object it belongs to,
// so that the catcher finds the trace of the exception it holds even when others were thrown
// (and caught) while it was in flight, e.g. by destructors during unwinding.
struct recent_throws {
  static constexpr int size = 4;
  std::array<const void*, size> object{};
  std::array<frames, size> trace{};
  unsigned next = 0;
};
thread_local recent_throws recent;

struct walk_state {
  frames* out;
  int skip;
};

_Unwind_Reason_Code walk_step(_Unwind_Context* ctx, void* arg) {
  auto* w = static_cast<walk_state*>(arg);
  const std::uintptr_t ip = _Unwind_GetIP(ctx);
  if (ip == 0) return _URC_END_OF_STACK;
  if (w->skip > 0) {
    --w->skip;
    return _URC_NO_REASON;
  }
  if (w->out->depth == max_frames) return _URC_END_OF_STACK;
  w->out->pc[static_cast<std::size_t>(w->out->depth++)] = ip;
  return _URC_NO_REASON;
}

// The return addresses of the calling stack, without the `skip` innermost frames.
[[gnu::noinline]] void walk(frames& f, int skip) noexcept {
  f.depth = 0;
  walk_state w{&f, skip};
  _Unwind_Backtrace(&walk_step, &w);
}

}  // namespace

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name);
}

std::string current_exception_type_name() {
  const std::type_info* t = abi::__cxa_current_exception_type();
  return t == nullptr ? "unknown" : demangle(t->name());
}

void enable_throw_traces() noexcept {
  // Nothing else here: a forked child calls this first thing, and the cost of each start()
  // matters. (The anchor only pulls lib/throw_hook.cpp into static links.)
  if (shmkit_throw_hook_anchor == 1) capture_enabled.store(true, std::memory_order_relaxed);
}

void note_throw(const void* object) noexcept {
  if (!capture_enabled.load(std::memory_order_relaxed)) return;
  const unsigned i = recent.next;
  recent.next = (i + 1) % recent_throws::size;
  recent.object[i] = object;
  walk(recent.trace[i], 2);  // not this function, not the __cxa_throw that called it
}

std::string last_throw_trace() {
  const frames* found = nullptr;
  const void* object = nullptr;
#ifdef __GLIBCXX__
  // libstdc++'s exception_ptr is exactly a pointer to the thrown object.
  const std::exception_ptr current = std::current_exception();
  static_assert(sizeof current == sizeof object);
  std::memcpy(&object, &current, sizeof object);
#endif
  for (int k = 1; k <= recent_throws::size && found == nullptr; ++k) {
    const unsigned i = (recent.next + recent_throws::size - k) % recent_throws::size;
    if (recent.trace[i].depth > 0 && (object == nullptr || recent.object[i] == object))
      found = &recent.trace[i];
  }
  if (found == nullptr) return {};
  const frames& t = *found;
  // Drop the frames the throw shares with the catcher's own stack (its callers): what is left
  // runs from the throw site down to the function that caught it.
  frames here;
  walk(here, 1);
  int keep = t.depth;
  int mine = here.depth;
  while (keep > 1 && mine > 0 && t.pc[static_cast<std::size_t>(keep - 1)] ==
                                     here.pc[static_cast<std::size_t>(mine - 1)]) {
    --keep;
    --mine;
  }
  std::string out = "Traceback of the throw (most recent call first):\n";
  for (int i = 0; i < keep; ++i) {
    // A return address points after its call: step back into the call for the right line.
    const std::uintptr_t pc = t.pc[static_cast<std::size_t>(i)] - 1;
    Dl_info info{};
    link_map* map = nullptr;
    if (::dladdr1(reinterpret_cast<void*>(pc), &info, reinterpret_cast<void**>(&map),
                  RTLD_DL_LINKMAP) == 0 ||
        map == nullptr) {
      fmt::format_to(std::back_inserter(out), "  #{} {:#x}\n", i, pc);
      continue;
    }
    const char* module = info.dli_fname != nullptr && *info.dli_fname ? info.dli_fname : "?";
    const std::uintptr_t offset = pc - map->l_addr;
    if (info.dli_sname != nullptr) {
      fmt::format_to(std::back_inserter(out), "  #{} {} + {:#x} ({} + {:#x})\n", i,
                     demangle(info.dli_sname), pc - reinterpret_cast<std::uintptr_t>(info.dli_saddr),
                     module, offset);
    } else {
      fmt::format_to(std::back_inserter(out), "  #{} {} + {:#x}\n", i, module, offset);
    }
  }
  if (keep == max_frames) out += "  ... (deeper frames not recorded)\n";
  return out;
}

}  // namespace shmkit::detail
