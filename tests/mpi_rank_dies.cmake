# test_mpi_pool --rank-dies under mpirun: a task kills its worker rank, mpirun ends the job, and
# rank 0 must have said so (in REPORT, where its stderr goes) instead of hanging.
# Arguments: -DMPIRUN= (a list) -DPOSTFLAGS= -DEXE= -DREPORT=
file(REMOVE ${REPORT})
execute_process(COMMAND ${MPIRUN} ${EXE} ${POSTFLAGS} --rank-dies ${REPORT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 280)
if(rc EQUAL 0)
  message(FATAL_ERROR "mpirun succeeded although a rank died:\n${out}\n${err}")
endif()
set(report "")
if(EXISTS ${REPORT})
  file(READ ${REPORT} report)
  file(REMOVE ${REPORT})
endif()
# Rank 0 reports when Open MPI ends it with SIGTERM; now and then Open MPI's daemon sends
# SIGKILL first, and then mpirun's own message must name the dead rank. Either way the job
# ended (no hang) and somebody said why.
if(report MATCHES "shmkit::mpi_pool: rank 0 got SIGTERM")
  message(STATUS "rank 0 reported: ${report}")
elseif("${out}${err}" MATCHES "exited on signal 9")
  message(STATUS "mpirun reported the dead rank (rank 0 was killed before it could):\n${err}")
else()
  message(FATAL_ERROR "neither rank 0 nor mpirun reported the end of the job (mpirun: ${rc}):\n"
                      "${report}\nmpirun said:\n${out}\n${err}")
endif()
