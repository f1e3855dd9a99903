// SPDX-License-Identifier: MIT
// The whole of shmkit: Python-style multiprocessing for C++, on shared memory.
#pragma once

#include "shmkit/codec.hpp"
#include "shmkit/error.hpp"
#include "shmkit/manager.hpp"
#include "shmkit/naming.hpp"
#include "shmkit/pipe.hpp"
#include "shmkit/shared.hpp"
#include "shmkit/shared_memory.hpp"
#include "shmkit/async_result.hpp"
#include "shmkit/pool.hpp"
#include "shmkit/process.hpp"
#include "shmkit/progress.hpp"
#include "shmkit/queue.hpp"
#include "shmkit/mpi_pool.hpp"
#include "shmkit/sync.hpp"
