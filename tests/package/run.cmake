# Installs the shmkit build tree into a scratch prefix, then builds and runs the consumer project
# against it (MODE=find_package), or builds the consumer with shmkit as a subdirectory
# (MODE=add_subdirectory). Arguments: -DBUILD_DIR= -DSOURCE_DIR= -DWORK_DIR= -DMODE=
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/package -B ${WORK_DIR}/build -G Ninja
      -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
  # pkg-config sees the installed shmkit.pc too.
  run(${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${WORK_DIR}/prefix/lib/pkgconfig
      pkg-config --exists --print-errors shmkit)
else()
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/package -B ${WORK_DIR}/build -G Ninja
      -DSHMKIT_SOURCE_DIR=${SOURCE_DIR} -DSHMKIT_BUILD_TOOLS=OFF)
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
run(${WORK_DIR}/build/api_contract)
if(EXISTS ${WORK_DIR}/build/consumer_mpi)  # built where shmkit has the mpi component
  run(${WORK_DIR}/build/consumer_mpi)
endif()
file(REMOVE_RECURSE ${WORK_DIR})
