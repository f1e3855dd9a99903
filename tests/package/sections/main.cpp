// SPDX-License-Identifier: MIT
// Calls every section's functions (never run: the program only proves each section's header
// alone declares what its section spells).
void section_pool();
void section_queue();

int main(int argc, char**) {
  if (argc > 1000) {
    section_pool();
    section_queue();
  }
  return 0;
}
