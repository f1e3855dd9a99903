# Runs after the whole suite (a CTest cleanup fixture): fails when a test left one of its
# shared-memory objects behind, names them, and removes them so the machine stays clean.
file(GLOB leaked LIST_DIRECTORIES false /dev/shm/shmkit.test-*)
if(leaked)
  file(REMOVE ${leaked})
  string(REPLACE ";" "\n  " shown "${leaked}")
  message(FATAL_ERROR "tests left shared-memory objects behind (now removed):\n  ${shown}")
endif()
message(STATUS "no shmkit test objects left in /dev/shm")
