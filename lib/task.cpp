// SPDX-License-Identifier: MIT
#include "shmkit/detail/task.hpp"

#include <dlfcn.h>
#include <exception>
#include <fmt/format.h>
#include <link.h>
#include <typeinfo>
#include <unistd.h>

#include "shmkit/detail/throw_trace.hpp"
#include "shmkit/error.hpp"

namespace shmkit::detail {

bool run_task(task_entry entry, std::uint64_t fn_word, std::span<const std::byte> in,
              std::vector<std::byte>& out) noexcept {
  task_failure failure;
  // Tasks run in processes made to run them (pool workers, MPI ranks): trace their throws.
  enable_throw_traces();
  try {
    entry(fn_word, in, out);
    return true;
  } catch (const std::exception& e) {
    try {
      failure.type_name = demangle(typeid(e).name());
      failure.message = e.what();
      failure.traceback = last_throw_trace();
    } catch (...) {
      failure.type_name = "std::bad_alloc";
    }
  } catch (...) {
    try {
      failure.type_name = current_exception_type_name();
      failure.message = "(not a std::exception)";
      failure.traceback = last_throw_trace();
    } catch (...) {
      failure.type_name = "unknown";
    }
  }
  try {
    out = encode(failure);
  } catch (...) {
    out.clear();
  }
  return false;
}

namespace {

struct module_search {
  const char* name;          // in: module path ("" for the main program)
  std::uintptr_t base = 0;   // out
  bool found = false;
};

int find_module(dl_phdr_info* info, std::size_t, void* data) {
  auto* s = static_cast<module_search*>(data);
  const char* n = info->dlpi_name != nullptr ? info->dlpi_name : "";
  if (std::string_view(n) == s->name) {
    s->base = info->dlpi_addr;
    s->found = true;
    return 1;
  }
  return 0;
}

}  // namespace

portable_address to_portable(std::uint64_t address) {
  Dl_info info{};
  link_map* map = nullptr;
  if (::dladdr1(reinterpret_cast<void*>(static_cast<std::uintptr_t>(address)), &info,
                reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) == 0 ||
      map == nullptr)
    throw error(fmt::format("shmkit: address {:#x} is in no loaded module, so it cannot be sent "
                            "to another process",
                            address));
  portable_address a;
  a.module = map->l_name != nullptr ? map->l_name : "";
  a.offset = address - map->l_addr;
  return a;
}

std::uint64_t from_portable(const portable_address& a) {
  module_search s{a.module.c_str()};
  ::dl_iterate_phdr(&find_module, &s);
  if (!s.found)
    throw error(fmt::format("shmkit: module '{}' is not loaded in this process (pid {}), so a "
                            "task from it cannot run here",
                            a.module.empty() ? "(main program)" : a.module, ::getpid()));
  return s.base + a.offset;
}

}  // namespace shmkit::detail
