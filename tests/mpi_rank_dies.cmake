# test_mpi_pool --rank-dies under mpirun: a task kills its worker rank, mpirun ends the job, and
# rank 0 must have said so (in REPORT, where its stderr goes) instead of hanging.
# Arguments: -DMPIRUN= (a list) -DPOSTFLAGS= -DEXE= -DREPORT=
file(REMOVE ${REPORT})
execute_process(COMMAND ${MPIRUN} ${EXE} ${POSTFLAGS} --rank-dies ${REPORT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 280)
if(rc EQUAL 0)
  message(FATAL_ERROR "mpirun succeeded although a rank died:\n${out}\n${err}")
endif()
if(NOT EXISTS ${REPORT})
  message(FATAL_ERROR "rank 0 wrote no report (mpirun: ${rc}):\n${out}\n${err}")
endif()
file(READ ${REPORT} report)
file(REMOVE ${REPORT})
if(NOT report MATCHES "shmkit::mpi_pool: rank 0 got SIGTERM")
  message(FATAL_ERROR "rank 0 did not report the end of the job (mpirun: ${rc}):\n${report}\n"
                      "mpirun said:\n${out}\n${err}")
endif()
message(STATUS "rank 0 reported: ${report}")
