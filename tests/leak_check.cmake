# Runs after the whole suite (a CTest cleanup fixture): fails when a test left one of its
# shared-memory objects behind, names them, and removes them so the machine stays clean.
#
# Test names are "test-<pid>-<tag>-<n>" (tests/support.hpp, unique_name), <pid> being the test
# process that made the name. Only objects whose process is gone count: when this runs, every
# test of this suite has ended, so its leftovers are leaks; an object whose process still lives
# belongs to a test still running (another suite on the same machine, from another build tree)
# and is left alone: removing it would pull the name from under that test.
# SHM_DIR (default /dev/shm) lets tests/test_leak_check.cpp run this on a directory of its own.
if(NOT DEFINED SHM_DIR)
  set(SHM_DIR /dev/shm)
endif()
file(GLOB candidates LIST_DIRECTORIES false ${SHM_DIR}/shmkit.test-*)
set(leaked "")
set(running "")
foreach(path IN LISTS candidates)
  get_filename_component(file "${path}" NAME)
  set(pid "")
  if(file MATCHES "^shmkit\\.test-([0-9]+)-")
    set(pid "${CMAKE_MATCH_1}")  # ${} expands before if() matches: read it only afterwards
  endif()
  if(NOT pid STREQUAL "" AND IS_DIRECTORY "/proc/${pid}")
    list(APPEND running "${path}")
  else()
    list(APPEND leaked "${path}")
  endif()
endforeach()
if(running)
  list(LENGTH running n)
  message(STATUS "left alone: ${n} object(s) of test processes still running")
endif()
if(leaked)
  file(REMOVE ${leaked})
  string(REPLACE ";" "\n  " shown "${leaked}")
  message(FATAL_ERROR "tests left shared-memory objects behind (now removed):\n  ${shown}")
endif()
message(STATUS "no shmkit test objects left in ${SHM_DIR}")
