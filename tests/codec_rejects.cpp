// SPDX-License-Identifier: MIT
// Compiled (syntax only) by CTest once per CASE: the codec must refuse each type with the
// static_assert message that says what to do. CASE ok must compile cleanly.
#include <string_view>
#include <vector>

#include "shmkit/codec.hpp"

struct no_serialize {
  no_serialize() {}  // not trivially copyable once it owns a vector
  std::vector<int> v;
};

struct holds_pointer {
  int* p = nullptr;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(p);
  }
};

int main() {
  [[maybe_unused]] int x = 0;
#if CASE_pointer
  (void)shmkit::encode(&x);
#elif CASE_nested_pointer
  (void)shmkit::decode<std::vector<const char*>>({});
#elif CASE_view
  (void)shmkit::encoded_size(std::string_view("abc"));
#elif CASE_unsupported
  (void)shmkit::encode(std::vector<no_serialize>{});
#elif CASE_field_pointer
  (void)shmkit::encode(holds_pointer{});
#elif CASE_ok
  (void)shmkit::decode<std::vector<int>>(shmkit::encode(std::vector<int>{x}));
#endif
}
