// SPDX-License-Identifier: MIT
// shmkit::mpi_pool: the pool API (map, imap, imap_unordered, starmap, apply, apply_async) over
// the ranks of an MPI job, like mpi4py.futures' MPIPoolExecutor. Library shmkit::mpi, built
// when MPI is found; this header does not include <mpi.h>.
//
// Contract
// - Every rank makes one mpi_pool(argc, argv), which initializes MPI (MPI_THREAD_MULTIPLE when
//   MPI offers it, SERIALIZED at least; if MPI is already initialized it is used as it is and
//   left initialized). Rank 0 is the root: it submits and gets results. Every other rank is a
//   worker: its constructor serves tasks and returns when the root's pool shuts down, so the
//   program's `if (pool.is_root())` block runs on rank 0 only. The destructor finalizes MPI on
//   every rank (when the pool initialized it). Launch: mpirun -np N ./app.
// - Each worker rank runs its tasks in a local shmkit::pool over its cores (one process per
//   node talks MPI, the others share memory with it): launch one rank per node, plus rank 0,
//   which mostly waits (on one machine: mpirun -np 2 --bind-to none; without --bind-to none
//   Open MPI binds a rank, and so its local pool, to one core when there are 2 ranks or
//   fewer). The local pool has options.local_processes workers; by default the node's CPUs
//   divided by the worker ranks on it (rank 0 does not count), at most the CPUs the rank may
//   run on (its affinity mask), at least 1. The local pool is forked before MPI_Init when the
//   launcher's environment names the rank (Open MPI's mpirun, MPICH's Hydra), so no MPI
//   thread or registered memory exists yet; otherwise (MPI already initialized, another
//   launcher) just after. The local workers die with their rank (parent-death signal). With
//   options.local_pool = false a worker rank runs its tasks itself, one at a time, as before:
//   then start a rank per core (mpirun -np cores+1 --oversubscribe), and a task that crashes
//   kills the rank (and with Open MPI the whole job). Tasks must not call MPI themselves.
// - One rank (no mpirun): there are no worker ranks; the root runs the tasks itself, one at a
//   time, on its result thread (processes() == 1, worker_ranks() == 0). Same results, same
//   exceptions, no parallelism; a task that crashes ends the program.
// - Producers:consumers: any thread of rank 0 may submit; one result thread on rank 0 does all
//   of the pool's MPI calls (on a duplicate of MPI_COMM_WORLD, so the program's own messages
//   never mix with the pool's). With SERIALIZED (not MULTIPLE) the program must make no MPI
//   call of its own on rank 0 while the pool is alive.
// - Tasks and results are codec bytes in MPI messages; what can be sent is what shmkit::pool
//   sends (function pointers, captureless lambdas, callables with serialize()); functions
//   travel as (module, offset) pairs, so every rank must run the same program. Each worker rank
//   holds at least tasks_in_flight tasks per local process (default 2: one running, one
//   waiting), so the next task is there when one ends; rank 0 learns each rank's capacity when
//   the pool starts. For tasks short next to the trip through MPI, rank 0 keeps more on a rank:
//   about 2 ms of the rank's work at its measured completion rate (at most 16384 tasks, and
//   beyond the capacity only while the rank holds under 16 MiB of them, and no more than a
//   fair share of what is pending), forgotten after 5 ms without tasks. Tasks travel in packs:
//   whatever is pending when a rank has room goes in one message (up to 256 KiB), so tasks
//   submitted one at a time (apply_async, imap's items) are packed as results come back in
//   groups, while a task submitted to an idle pool leaves at once, alone; results come back
//   packed the same way. map chunks as shmkit::pool does (n / (4 x processes())), imap makes
//   one task per item unless given a chunksize.
// - Idle ranks poll MPI with growing naps (up to 1 ms, as mpi4py.futures does) instead of
//   spinning in a blocking receive: an idle pool costs almost no CPU, and the first task after
//   an idle spell may wait up to that long. While tasks are out, rank 0's naps stop at an
//   eighth of a task's usual turnaround (16 us to 1 ms), and a worker rank's at 32 us for
//   2 ms after it sent a result (its next task is due); a worker rank waiting for its local
//   pool takes the pool's results itself for up to 100 us first. Short tasks are not held up,
//   long ones are not interrupted by thousands of polls. The polling threads set their timer
//   slack to 1 us, so a nap is not stretched by Linux's default 50 us.
// - Errors: an exception escaping f on a worker rank reaches the caller as shmkit::remote_error
//   (type name, message, the pid of the process that ran it) and the pool stays usable. A task
//   that kills its local worker (abort, segfault, kill -9) reaches the caller as
//   shmkit::worker_lost_error naming the rank and the signal (with the local pool's rules: tiny
//   tasks that worker had just finished and not yet reported fail with it, tasks it had taken
//   but not started run on its replacement); the local pool replaces the worker, the rank
//   lives on and later tasks run as usual (a task that kills the local
//   pool's supervisor fails the tasks that pool held, and the rank makes a new local pool).
//   An MPI call of the pool
//   that fails (the pool's communicator returns errors, MPI_ERRORS_RETURN) fails every pending
//   task with shmkit::worker_lost_error naming the MPI error, and the pool refuses new work;
//   its destructor then prints why and calls MPI_Abort, since MPI_Finalize could wait forever
//   for a lost rank. A rank that dies (crash, kill -9, exit()) is not reported by Open MPI 4
//   to the other ranks: mpirun stops the whole job (SIGTERM, then SIGKILL) and says which rank
//   died; rank 0 prints what the pool had pending when that SIGTERM arrives. Nothing waits
//   forever.
// - Callbacks (async_result::then) run on rank 0's result thread, in completion order.
// - close() stops new submissions; join() (after close()) waits for the work and releases the
//   worker ranks; terminate() fails what is pending at once with worker_lost_error and
//   releases the worker ranks, which terminate their local pools (without one, a rank drops
//   its queued tasks once its running task ends); the destructor terminates, as
//   shmkit::pool's does. A worker rank's local pool is gone when its constructor returns.
#pragma once

#include <cstdint>
#include <memory>
#include <sys/types.h>
#include <vector>

#include "shmkit/pool.hpp"

namespace shmkit {

struct mpi_pool_options {
  // Worker processes of each worker rank's local shmkit::pool; 0: the rank's CPUs shared among
  // the worker ranks on its node (see the contract), at least 1.
  int local_processes = 0;
  // false: no local pool; a worker rank runs its tasks itself, one at a time, and a task that
  // crashes kills the rank.
  bool local_pool = true;
  // Tasks (chunks) a worker rank holds at least per local process (per rank without a local
  // pool): one runs while the others wait. Rank 0 keeps more on a rank whose tasks are short
  // next to the trip through MPI (see the contract).
  int tasks_in_flight = 2;
};

namespace detail {

// The non-template heart of mpi_pool (lib/mpi_pool.cpp).
// submit() throws std::logic_error on a worker rank; close(), join() and terminate() do
// nothing there.
class mpi_runtime : public task_runtime {
 public:
  // Initializes MPI (when it is not yet) and, on rank 0, starts the result thread; on another
  // rank, serves tasks until rank 0 shuts the pool down. Throws shmkit::error when MPI cannot
  // give the thread support the pool needs.
  static std::shared_ptr<mpi_runtime> start(int* argc, char*** argv, mpi_pool_options options);
  ~mpi_runtime() override = default;

  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  virtual std::vector<pid_t> worker_pids() const = 0;
  // Terminates (rank 0), then MPI_Finalize if start() initialized MPI; MPI_Abort instead when
  // the pool's MPI communication failed.
  virtual void finalize() noexcept = 0;
};

}  // namespace detail

class mpi_pool : public detail::pool_front<detail::mpi_runtime> {
 public:
  // Collective: every rank of the job makes its pool at the same point. On a worker rank this
  // returns only when rank 0's pool has shut down. Throws shmkit::error when MPI lacks the
  // thread support the pool needs.
  mpi_pool(int& argc, char**& argv, mpi_pool_options options = {})
      : pool_front(detail::mpi_runtime::start(&argc, &argv, options)) {}
  explicit mpi_pool(mpi_pool_options options = {})
      : pool_front(detail::mpi_runtime::start(nullptr, nullptr, options)) {}
  mpi_pool(mpi_pool&&) noexcept = default;
  mpi_pool& operator=(mpi_pool&&) noexcept = default;
  mpi_pool(const mpi_pool&) = delete;
  mpi_pool& operator=(const mpi_pool&) = delete;
  // Rank 0: terminate(). Every rank: MPI_Finalize when the pool initialized MPI.
  ~mpi_pool() {
    if (rt_) rt_->finalize();
  }

  // True on rank 0, the rank that submits tasks.
  bool is_root() const noexcept { return rt_->rank() == 0; }
  // This process's rank and the number of ranks in the job.
  int rank() const noexcept { return rt_->rank(); }
  int size() const noexcept { return rt_->size(); }
  // Ranks that run tasks: size() - 1 (0 with one rank: rank 0 then runs them itself).
  // processes() is the number of processes that run tasks at once over all worker ranks (the
  // sum of their local pools' sizes).
  int worker_ranks() const noexcept { return rt_->size() - 1; }
  // On rank 0: the worker ranks' process ids, by rank (each on its own host); tasks run in
  // their local pools' workers, the children of each rank's local pool supervisor.
  std::vector<pid_t> worker_pids() const { return rt_->worker_pids(); }
};

}  // namespace shmkit
